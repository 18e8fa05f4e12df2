"""Decontamination: drop training documents that share a word 13-gram with an evaluation item (GPT-3's rule).

Text is normalized the same way on both sides: lower case, words are runs of ASCII letters and digits
and of non-ASCII characters, everything else separates words. Each word is hashed, each run of ``ngram``
words is hashed (64-bit polynomial hashes computed with numpy cumulative sums, so a batch of documents
costs a few array passes and no Python loop per word), and a document is dropped when any of its n-grams
is among the evaluation items' n-grams. Those are a sorted array of hashes with two helpers: a bitmap of
their top bits (16 or more bits per hash) that turns away nearly every n-gram of a clean document in one
lookup, and a directory of buckets (about one hash each) in which the few candidates left are compared.

Nothing is missed: equal normalized n-grams have equal hashes. A false positive needs two different
n-grams with one 64-bit hash: with ``k`` evaluation n-grams each n-gram looked up has a chance of about
``k / 2**64`` (10,000 items of 60 words: 5e5 n-grams, 3e-14 per n-gram, so a document of 1,000 words is
dropped wrongly once in about 3e10). An evaluation item shorter than ``ngram`` words cannot be matched
this way; such items are counted (``short_items``) and left out of the check, as in GPT-3's own analysis.

The evaluation files are JSONL (``.gz``/``.zst``: each line one item, the text being every string value
in it, nested ones included, so any task format works), Parquet (each row, its string columns) or text
(each paragraph, separated by a blank line, one item). A dropped document's reason names the first
evaluation file (in the order given) that it overlaps, so ``stats.json`` reports the documents removed
per evaluation file; :func:`overlap_report` gives the evaluation items hit per file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from groundup.curate.steps import KEEP, Filter
from groundup.curate.text import Document

_WORD_BYTES = bytes(range(ord("a"), ord("z") + 1)) + b"0123456789" + bytes(range(128, 256))
# bytes.translate table: 1 for a word byte (ASCII letters and digits, and every byte of a non-ASCII character,
# so letters of other scripts are words), 0 for the rest
_IS_WORD = bytes(1 if c in _WORD_BYTES else 0 for c in range(256))

_BYTE_BASE = 0x100000001B3  # odd, so it has an inverse modulo 2**64
_WORD_BASE = 0x9E3779B97F4A7C15


class _Powers:
    """base**i and base**-i modulo 2**64 for i < n, grown on demand (uint64 arithmetic wraps modulo 2**64)."""

    def __init__(self, base: int):
        self.base, self.inverse = base, pow(base, -1, 1 << 64)
        self.up = self.down = np.ones(0, dtype=np.uint64)

    def get(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if n > len(self.up):
            size = max(n, 2 * len(self.up), 1 << 16)
            self.up = _geometric(self.base, size)
            self.down = _geometric(self.inverse, size)
        return self.up[:n], self.down[:n]


def _geometric(base: int, n: int) -> np.ndarray:
    out = np.empty(n, dtype=np.uint64)
    out[0] = 1
    block = 1
    # doubling: out[k:2k] = out[:k] * base**k, so n powers cost log2(n) array multiplies
    while block < n:
        step = np.uint64(pow(base, block, 1 << 64))
        end = min(2 * block, n)
        np.multiply(out[: end - block], step, out=out[block:end])
        block = end
    return out


_BYTE_POWERS = _Powers(_BYTE_BASE)
_WORD_POWERS = _Powers(_WORD_BASE)


def _lowered(text: str) -> bytes:
    return text.lower().encode("utf-8", errors="surrogatepass")


def _word_hashes(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Each word's hash and start offset in lower-cased UTF-8 bytes.

    A handful of passes over the bytes, each in C: ``bytes.translate`` marks word bytes, one difference
    finds where words start and end, one cumulative sum of ``byte * base**position`` gives every word's
    polynomial hash as a difference of two prefix sums, moved back to position 0 by ``base**-start``.
    """
    n = len(data)
    if n == 0:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
    # a non-word byte on either side, so the word flags start and end at 0
    flags = np.frombuffer(b"\0" + data.translate(_IS_WORD) + b"\0", dtype=np.int8)
    edges = np.flatnonzero(flags[1:] != flags[:-1])  # alternately a word's start and its end (exclusive)
    if edges.size == 0:
        return np.zeros(0, dtype=np.uint64), edges
    starts, ends = edges[0::2], edges[1::2]
    up, down = _BYTE_POWERS.get(n)
    prefix = np.empty(n + 1, dtype=np.uint64)  # prefix[i] = sum of byte j * base**j for j < i
    prefix[0] = 0
    np.multiply(np.frombuffer(data, dtype=np.uint8), up, out=prefix[1:])
    np.cumsum(prefix[1:], out=prefix[1:])
    hashes = prefix[ends]
    hashes -= prefix[starts]
    hashes *= down[starts]
    return hashes, starts


def word_hashes(text: str) -> tuple[np.ndarray, np.ndarray]:
    """A 64-bit hash of each normalized word of ``text``, in order, and each word's byte offset in the
    lower-cased UTF-8 text."""
    return _word_hashes(_lowered(text))


def _ngrams(words: np.ndarray, n: int) -> np.ndarray:
    m = words.size
    if m < n:
        return np.zeros(0, dtype=np.uint64)
    up, down = _WORD_POWERS.get(m)
    running = np.multiply(words, up)
    np.cumsum(running, out=running)
    window = running[n - 1:].copy()
    window[1:] -= running[: m - n]
    return window * down[: m - n + 1]  # each n-gram's hash, moved back to position 0


def ngram_hashes(text: str, n: int = 13) -> np.ndarray:
    """A 64-bit hash of every run of ``n`` consecutive normalized words of ``text`` (empty if fewer words)."""
    return _ngrams(word_hashes(text)[0], n)


def _joined(texts: list[str]) -> tuple[bytes, np.ndarray]:
    """The texts lower-cased, UTF-8, joined by newlines, and the end of each (its newline included)."""
    pieces = [_lowered(t) for t in texts]
    return b"\n".join(pieces), np.cumsum([len(p) + 1 for p in pieces])


def batch_ngram_hashes(texts: list[str], n: int = 13) -> tuple[np.ndarray, np.ndarray]:
    """The n-gram hashes of many texts at once (few numpy calls for the whole batch) and the text of each:
    the texts are joined by a newline and the n-grams that cross from one text into the next are left out."""
    data, bounds = _joined(texts)
    words, starts = _word_hashes(data)
    grams = _ngrams(words, n)
    if grams.size == 0:
        return grams, np.zeros(0, dtype=np.int64)
    text_of_word = np.searchsorted(bounds, starts, side="right")
    text_of_gram = text_of_word[: grams.size]
    inside = text_of_gram == text_of_word[n - 1:]
    return grams[inside], text_of_gram[inside]


def _strings(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def eval_items(path: Path) -> Iterator[tuple[str, str]]:
    """(where, text) of each item of an evaluation file; a line that is not JSON is an error naming it."""
    from groundup.curate.readers import detect_format, open_binary

    fmt = detect_format(path)
    if fmt == "jsonl":
        with open_binary(path) as f:
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw)
                except ValueError as e:
                    raise ValueError(f"{path}:{lineno}: evaluation item is not JSON ({e.msg})") from None
                yield f"{path}:{lineno}", "\n".join(_strings(record))
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        for row, record in enumerate(table.to_pylist()):
            yield f"{path}:{row}", "\n".join(_strings(record))
    else:
        with open_binary(path) as f:
            text = f.read().decode("utf-8", errors="replace")
        for i, paragraph in enumerate(p for p in text.split("\n\n") if p.strip()):
            yield f"{path}:paragraph {i + 1}", paragraph


@dataclass
class EvalIndex:
    """The n-grams of every evaluation item: sorted hashes, and for each the file and item it came from."""

    files: list[str]
    ngram: int
    hashes: np.ndarray
    file_of: np.ndarray
    item_of: np.ndarray
    items: list[int] = field(default_factory=list)
    """Items per file."""
    short_items: list[int] = field(default_factory=list)
    """Items per file with fewer than ``ngram`` words (not checked)."""

    def __post_init__(self) -> None:
        # a bitmap of the hashes' top bits, 16+ bits per hash: it answers "absent" for nearly every n-gram of a
        # clean document with one cached lookup, so only the few candidates are looked up in the table
        bits = max(20, min(33, int(self.hashes.size * 16).bit_length()))
        self._shift = np.uint64(64 - bits)
        self._bitmap = np.zeros(1 << (bits - 3), dtype=np.uint8)
        top = (self.hashes >> self._shift).astype(np.int64)
        np.bitwise_or.at(self._bitmap, top >> 3, np.left_shift(1, top & 7).astype(np.uint8))
        # the sorted hashes cut into 2**k buckets by their top k bits, about one hash per bucket: a candidate
        # is compared with its bucket's few hashes (a gather or two) instead of a binary search of the whole
        k = max(1, int(self.hashes.size).bit_length())
        self._bucket_shift = np.uint64(64 - k)
        offsets = np.searchsorted(self.hashes >> self._bucket_shift, np.arange((1 << k) + 1, dtype=np.uint64))
        self._offsets = offsets.astype(np.int32) if self.hashes.size < 2**31 else offsets  # 2 to 4 bytes a hash

    def matches(self, text: str) -> np.ndarray:
        """Positions in the index of the n-grams of ``text`` found there (an empty array: no overlap)."""
        return self.lookup(ngram_hashes(text, self.ngram))[0]

    def lookup(self, grams: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions in the index of the n-gram hashes found there, and which of ``grams`` they are."""
        if grams.size == 0 or self.hashes.size == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        top = (grams >> self._shift).astype(np.int64)
        which = np.flatnonzero((self._bitmap[top >> 3] >> (top & 7).astype(np.uint8)) & 1)
        wanted = grams[which]
        bucket = (wanted >> self._bucket_shift).astype(np.int64)
        at, end = self._offsets[bucket], self._offsets[bucket + 1]
        hits_at, hits_which = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
        live = at < end
        while True:  # walk each candidate's bucket (sorted) until its hash, a greater one or the bucket's end
            which, wanted, at, end = which[live], wanted[live], at[live], end[live]
            if which.size == 0:
                break
            seen = self.hashes[at]
            equal = seen == wanted
            hits_at.append(at[equal])
            hits_which.append(which[equal])
            live = (seen < wanted) & (at + 1 < end)
            at = at + 1
        at, which = np.concatenate(hits_at), np.concatenate(hits_which)
        order = np.argsort(which, kind="stable")
        return at[order], which[order]

    def first_file_per_text(self, texts: list[str]) -> list[int | None]:
        """For each text, the index of the first evaluation file it shares an n-gram with (None: none).

        The texts are hashed as one (see :func:`batch_ngram_hashes`); which text an n-gram belongs to, and
        whether it crosses from one text into the next, is worked out for the n-grams found only."""
        none = len(self.files)
        first = np.full(len(texts), none, dtype=np.int64)
        data, bounds = _joined(texts)
        words, starts = _word_hashes(data)
        at, found = self.lookup(_ngrams(words, self.ngram))
        if found.size:
            text_of = np.searchsorted(bounds, starts[found], side="right")
            inside = text_of == np.searchsorted(bounds, starts[found + self.ngram - 1], side="right")
            np.minimum.at(first, text_of[inside], self.file_of[at[inside]])
        return [None if f == none else f for f in first.tolist()]


def build_index(files: list[str | Path], ngram: int = 13) -> EvalIndex:
    """The n-gram index of evaluation files; equal n-grams keep the first file's (files in the order given)."""
    if ngram < 1:
        raise ValueError(f"ngram must be at least 1, got {ngram}")
    hashes, file_of, item_of = [], [], []
    items, short = [], []
    for f_index, name in enumerate(files):
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"evaluation file not found: {path}")
        count = n_short = 0
        for i, (_, text) in enumerate(eval_items(path)):
            grams = np.unique(ngram_hashes(text, ngram))
            count += 1
            if grams.size == 0:
                n_short += 1
                continue
            hashes.append(grams)
            file_of.append(np.full(grams.size, f_index, dtype=np.int32))
            item_of.append(np.full(grams.size, i, dtype=np.int32))
        items.append(count)
        short.append(n_short)
    if hashes:
        all_hashes, all_files, all_items = np.concatenate(hashes), np.concatenate(file_of), np.concatenate(item_of)
        order = np.lexsort((all_items, all_files, all_hashes))  # by hash, then the first file and item
        all_hashes, all_files, all_items = all_hashes[order], all_files[order], all_items[order]
        first = np.ones(all_hashes.size, dtype=bool)
        first[1:] = all_hashes[1:] != all_hashes[:-1]
        all_hashes, all_files, all_items = all_hashes[first], all_files[first], all_items[first]
    else:
        all_hashes = np.zeros(0, dtype=np.uint64)
        all_files = all_items = np.zeros(0, dtype=np.int32)
    return EvalIndex([str(f) for f in files], ngram, all_hashes, all_files, all_items, items, short)


def overlap_report(texts, index: EvalIndex) -> dict[str, dict]:
    """Per evaluation file: items, items too short to check, training documents overlapping it and its items hit."""
    documents = [0] * len(index.files)
    hit: list[set[int]] = [set() for _ in index.files]
    for text in texts:
        found = index.matches(text)
        if found.size == 0:
            continue
        files = index.file_of[found]
        for f_index in np.unique(files):
            documents[f_index] += 1
            hit[f_index].update(index.item_of[found[files == f_index]].tolist())
    return {name: {"items": index.items[i], "short_items": index.short_items[i], "documents": documents[i],
                   "items_hit": len(hit[i])} for i, name in enumerate(index.files)}


@dataclass
class Decontaminate(Filter):
    """Drop documents that share a word n-gram (13 by default, GPT-3's choice) with an item of an evaluation file."""

    name = "decontaminate"

    files: list[str] = field(default_factory=list)
    """Evaluation files: JSONL (each line an item), Parquet (each row) or text (each paragraph)."""
    ngram: int = 13
    """Words in an n-gram."""

    def __post_init__(self) -> None:
        if not self.files:
            raise ValueError("decontaminate needs the evaluation files (files: [a.jsonl, ...])")
        self._index = build_index(self.files, self.ngram)
        self._names = [Path(f).name for f in self.files]

    def filter(self, doc: Document) -> tuple[bool, str]:
        return self.filter_batch([doc])[0]

    def filter_batch(self, docs: list[Document]) -> list[tuple[bool, str]]:
        """:meth:`filter` of each document, in a few numpy calls for the whole batch."""
        return [KEEP if f is None else (False, f"{self.ngram}-gram overlap with {self._names[f]}")
                for f in self._index.first_file_per_text([d.text for d in docs])]
