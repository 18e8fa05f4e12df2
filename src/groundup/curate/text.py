"""The document record that flows through curation, and the text analyses the rules share.

A :class:`Document` carries its text and where it came from (file, offset, URL). Its words
are computed once and cached until the text changes, so a chain of rules that all look at
words tokenizes each document once: as strings (:attr:`Document.words`) or as arrays of
lengths and hashes (:attr:`Document.word_arrays`, :class:`Words`), which the rules use.

Words are cut by one regular expression, close to the English tokenizer the FineWeb
reference implementation uses (spaCy's): runs of word characters (keeping ``3.14``,
``1,000`` and ``don't`` whole) and each punctuation mark on its own (``...`` as one).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from groundup.curate.hashing import word_hashes

WORD_RE = re.compile(r"\w+(?:[.,'\u2019]\w+)*|\.\.\.|[^\w\s]")
"""A word: a run of word characters (with inner ``. , '``), ``...``, or any other single non-space character."""

_WORD_SCAN = re.compile(r"\s*(\w+(?:[.,'\u2019]\w+)*|\.\.\.|[^\w\s])")
_ASCII_WORD_SCAN = re.compile(r"\s*([A-Za-z0-9_]+(?:[.,'][A-Za-z0-9_]+)*|\.\.\.|[^A-Za-z0-9_\s])")
r"""Faster forms of :data:`WORD_RE` with the same words: the whitespace before each word is taken into
the match (no word holds a space, and every other character starts one), so the engine no longer
tries three branches at every space; on ASCII text (``str.isascii`` is O(1)), where ``\w`` is
``[A-Za-z0-9_]``, a character class replaces the Unicode property lookups. Together about 1.5x
faster than ``WORD_RE.findall``."""


TERMINAL_PUNCTUATION = frozenset(
    "!.?\u0589\u061d\u061e\u061f\u06d4\u0700\u0701\u0702\u07f9\u0837\u0839\u083d\u083e\u0964"
    "\u0965\u104a\u104b\u1362\u1367\u1368\u166e\u1735\u1736\u17d4\u17d5\u17d6\u17d9\u17da\u1803"
    "\u1809\u1944\u1945\u1aa8\u1aa9\u1aaa\u1aab\u1b5a\u1b5b\u1b5e\u1b5f\u1b7d\u1b7e\u1c3b\u1c3c"
    "\u1c7e\u1c7f\u203c\u203d\u2047\u2048\u2049\u2e2e\u2e3c\u2e53\u2e54\u3002\ua4ff\ua60e\ua60f"
    "\ua6f3\ua6f7\ua876\ua877\ua8ce\ua8cf\ua92f\ua9c8\ua9c9\uaa5d\uaa5e\uaa5f\uaaf0\uaaf1\uabeb"
    "\ufe52\ufe56\ufe57\uff01\uff0e\uff1f\uff61\U00010a56\U00010a57\U00010f55\U00010f56"
    "\U00010f57\U00010f58\U00010f59\U00010f86\U00010f87\U00010f88\U00010f89\U00011047\U00011048"
    "\U000110be\U000110bf\U000110c0\U000110c1\U00011141\U00011142\U00011143\U000111c5\U000111c6"
    "\U000111cd\U000111de\U000111df\U00011238\U00011239\U0001123b\U0001123c\U000112a9\U0001144b"
    "\U0001144c\U000115c2\U000115c3\U000115c9\U000115ca\U000115cb\U000115cc\U000115cd\U000115ce"
    "\U000115cf\U000115d0\U000115d1\U000115d2\U000115d3\U000115d4\U000115d5\U000115d6\U000115d7"
    "\U00011641\U00011642\U0001173c\U0001173d\U0001173e\U00011944\U00011946\U00011a42\U00011a43"
    "\U00011a9b\U00011a9c\U00011c41\U00011c42\U00011ef7\U00011ef8\U00011f43\U00011f44\U00016a6e"
    "\U00016a6f\U00016af5\U00016b37\U00016b38\U00016b44\U00016e98\U0001bc9f\U0001da88"
)
"""Sentence-ending punctuation in every script (the FineWeb reference list), for "line ends in punctuation"."""

PUNCTUATION = (
    "!/\u2014\u201d:\uff05\uff11\u3008&(\u3001\u2501\\\u3010#%\u300c\u300d\uff0c\u3011\uff1b+^]"
    "~\u201c\u300a\u201e';\u2019{|\u2236\xb4[=-`*\uff0e\uff08\u2013\uff1f\uff01\uff1a$\uff5e"
    "\xab\u3009,><\u300b)?\uff09\u3002\u2026@_.\"}\u25ba\xbb\x00\x01\x02\x03\x04\x05\x06\x07\x08"
    "\x0b\x0c\r\x0e\x0f\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a\x1b\x1c\x1d\x1e\x1f\x7f\x80"
    "\x81\x82\x83\x84\x85\x86\x87\x88\x89\x8a\x8b\x8c\x8d\x8e\x8f\x90\x91\x92\x93\x94\x95\x96"
    "\x97\x98\x99\x9a\x9b\x9c\x9d\x9e\x9f"
) + "".join(sorted(TERMINAL_PUNCTUATION))
"""Characters that make a word a "symbol" (Gopher quality counts words with anything else)."""


def split_words(text: str) -> list[str]:
    """``WORD_RE.findall(text)``."""
    return (_ASCII_WORD_SCAN if text.isascii() else _WORD_SCAN).findall(text)


def utf8_length(text: str) -> int:
    """UTF-8 byte length without encoding when the text is ASCII (``isascii`` is O(1) in CPython)."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def duplicates(items: list[str]) -> tuple[int, int]:
    """(repeated elements, characters in them): every occurrence after the first counts.

    Equal to counting with a set in a loop, done with two C-level passes instead.
    """
    unique = set(items)
    if len(unique) == len(items):
        return 0, 0
    return len(items) - len(unique), sum(map(len, items)) - sum(map(len, unique))


# ---------------------------------------------------------------------------- words as arrays

_HASH_BASE = secrets.randbits(64) | 1
"""Odd base of the polynomial word hash, drawn per process (equal words hash equally within one document
only, which is all the rules compare), so no one can prepare words whose hashes collide."""
_HASH_TABLE_LIMIT = 1 << 18
"""Texts of up to this many characters are hashed with the power tables below (2 x 2 MiB); longer ones
(rare: web pages average a few KB) hash each word with Python's ``hash``."""
_hash_tables: tuple[np.ndarray, np.ndarray] | None = None


def _powers(base: int, n: int) -> np.ndarray:
    out = np.full(n, base, dtype=np.uint64)
    out[0] = 1
    return np.cumprod(out, out=out)  # wraps modulo 2**64


def _tables() -> tuple[np.ndarray, np.ndarray]:
    """B**i and B**-i modulo 2**64, for i below the table limit."""
    global _hash_tables
    if _hash_tables is None:
        _hash_tables = (_powers(_HASH_BASE, _HASH_TABLE_LIMIT),
                        _powers(pow(_HASH_BASE, -1, 1 << 64), _HASH_TABLE_LIMIT))
    return _hash_tables


def _span_hashes(codes: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Polynomial hashes of ``codes[s:s + n]`` for every span, position-independent, in a few passes.

    With prefix sums ``G[k] = sum(c[j] * B**-j for j < k)`` (mod 2**64), a span's hash is
    ``(G[s + n] - G[s]) * B**s = sum(c[s + i] * B**-i)``; equal spans hash equally wherever they are.
    """
    power, inverse = _tables()
    n = len(codes)
    prefix = np.zeros(n + 1, dtype=np.uint64)
    np.cumsum((codes.astype(np.uint64) + np.uint64(1)) * inverse[:n], out=prefix[1:])
    return (prefix[starts + lengths] - prefix[starts]) * power[starts]


def _ascii_classes() -> np.ndarray:
    r"""Per ASCII code: 0 space (``str.isspace``), 1 word character (``\w``), 2 joiner (``. , '``), 3 other."""
    classes = np.full(128, 3, dtype=np.uint8)
    for code in range(128):
        char = chr(code)
        if char.isspace():
            classes[code] = 0
        elif char.isalnum() or char == "_":
            classes[code] = 1
        elif char in ".,'":
            classes[code] = 2
    return classes


_ASCII_CLASS = _ascii_classes()
_ASCII_LETTER = np.array([chr(c).isalpha() for c in range(128)])
_BMP = 0x10000
_bmp_tables: tuple[np.ndarray, np.ndarray] | None = None


def _unicode_tables() -> tuple[np.ndarray, np.ndarray]:
    r"""Classes (as :func:`_ascii_classes`, with ``’`` a joiner too) and letters (``[^\W\d_]``) of every
    code point of the Basic Multilingual Plane, from ``str`` methods, as ``re`` defines them; built on
    the first non-ASCII text (tens of milliseconds, once per process)."""
    global _bmp_tables
    if _bmp_tables is None:
        chars = [chr(c) for c in range(_BMP)]
        space = np.fromiter(map(str.isspace, chars), dtype=bool, count=_BMP)
        alnum = np.fromiter(map(str.isalnum, chars), dtype=bool, count=_BMP)
        decimal = np.fromiter(map(str.isdecimal, chars), dtype=bool, count=_BMP)
        classes = np.full(_BMP, 3, dtype=np.uint8)
        classes[alnum] = 1
        classes[ord("_")] = 1
        classes[[ord(c) for c in ".,'\u2019"]] = 2
        classes[space] = 0
        _bmp_tables = classes, alnum & ~decimal
    return _bmp_tables
_PUNCTUATION_CODES = np.zeros(0x110000, dtype=bool)
_PUNCTUATION_CODES[[ord(c) for c in PUNCTUATION]] = True
_DOT = ord(".")


def _spans(codes: np.ndarray, class_table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and length of every word of a text, as ``WORD_RE`` cuts it, from character classes.

    A joiner between two word characters belongs to the word; runs of word characters and such
    joiners are words; a run of k other dots gives k // 3 ``...`` and then k % 3 ``.``; any other
    character that is not a space is a word of its own.
    """
    n = len(codes)
    classes = class_table[codes]
    inside = np.zeros(n + 2, dtype=bool)  # padded with a non-word position at each end
    inside[1:-1] = classes == 1
    joined = (classes == 2) & inside[:-2] & inside[2:]
    inside[1:-1] |= joined
    bounds = np.flatnonzero(inside[1:] != inside[:-1])  # the start and the end of each word, in turn
    starts = bounds[0::2]
    lengths = np.zeros(n, dtype=np.int64)  # the length of the word starting at each position, else 0
    lengths[starts] = bounds[1::2] - starts
    lone = (classes >= 2) & ~joined
    lengths[lone] = 1
    dots = lone & (codes == _DOT)
    if dots.any():
        padded = np.zeros(n + 2, dtype=bool)
        padded[1:-1] = dots
        bounds = np.flatnonzero(padded[1:] != padded[:-1])
        run_starts, run_lengths = bounds[0::2], bounds[1::2] - bounds[0::2]
        runs = run_lengths > 2
        for start, k in zip(run_starts[runs].tolist(), run_lengths[runs].tolist(), strict=True):
            end = start + 3 * (k // 3)
            lengths[start:end] = 0
            lengths[start:end:3] = 3
    starts = np.flatnonzero(lengths)
    return starts, lengths[starts]


class Words:
    """A document's words as arrays: what the repetition and quality rules need, computed once.

    ``lengths`` (characters) and ``hashes`` (uint64, equal words hash equally) of the words in
    order, as ``WORD_RE`` cuts them. The words are found from character classes with numpy
    (tables of what ``re`` calls a word character and a space) and hashed from the code points,
    so no string is made per word: about twice as fast as the regular expression and a ``hash``
    per word, and several times faster on non-ASCII text, where the regular expression looks up
    Unicode properties character by character. Text with characters beyond the Basic
    Multilingual Plane (emoji) is cut by the regular expression instead and hashed the same way
    from its words joined by newlines.
    """

    __slots__ = ("source", "codes", "starts", "lengths", "hashes", "words", "_letters")

    def __init__(self, text: str, words: list[str] | None = None):
        codes = None
        if words is None:
            if text.isascii():
                codes, (classes, self._letters) = np.frombuffer(text.encode("ascii"), dtype=np.uint8), \
                    (_ASCII_CLASS, _ASCII_LETTER)
            else:
                codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
                if codes.max() < _BMP:
                    classes, self._letters = _unicode_tables()
                else:
                    codes = None
        if codes is not None:
            source = text
            starts, lengths = _spans(codes, classes)
        else:
            self._letters = None
            words = split_words(text) if words is None else words
            source = "\n".join(words)
            codes = np.frombuffer(source.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
            starts = np.zeros(len(words), dtype=np.int64)
            if len(words) > 1:
                starts[1:] = np.flatnonzero(codes == 10) + 1  # no word holds a newline
            lengths = np.diff(starts, append=len(codes) + 1) - 1
        self.source, self.codes, self.starts, self.lengths, self.words = source, codes, starts, lengths, words
        if len(codes) < _HASH_TABLE_LIMIT:
            self.hashes = _span_hashes(codes, starts, lengths)
        else:
            tokens = self.words if self.words is not None else self.strings()
            self.hashes = word_hashes(tokens)

    def __len__(self) -> int:
        return len(self.starts)

    def strings(self) -> list[str]:
        """The words as strings."""
        if self.words is None:
            source = self.source
            self.words = [source[s:s + n] for s, n in zip(self.starts.tolist(), self.lengths.tolist(), strict=True)]
        return self.words

    def symbols(self) -> np.ndarray:
        """Which words are nothing but punctuation: a lone mark of :data:`PUNCTUATION`, or ``...``."""
        first = self.codes[self.starts]
        return ((self.lengths == 1) & _PUNCTUATION_CODES[first]) | ((self.lengths == 3) & (first == _DOT))

    def with_letter(self) -> int:
        r"""How many words hold a letter (a word character that is not a digit or ``_``, as ``[^\W\d_]``)."""
        if self._letters is None:
            return len(_LETTER_TO_LINE_END.findall(self.source))  # one match per word (line) with a letter
        letters = np.zeros(len(self.codes) + 1, dtype=np.int32)
        np.cumsum(self._letters[self.codes], out=letters[1:])
        return int(np.count_nonzero(letters[self.starts + self.lengths] > letters[self.starts]))

    def count_distinct(self, vocabulary: frozenset[str]) -> int:
        """How many words of ``vocabulary`` occur at least once."""
        if not vocabulary or not len(self):
            return 0
        if len(self.codes) >= _HASH_TABLE_LIMIT:  # hashed by Python: compare the strings themselves
            return len(vocabulary.intersection(self.strings()))
        wanted = _vocabulary_hashes.get(vocabulary)
        if wanted is None:
            wanted = np.fromiter(map(_string_hash, vocabulary), dtype=np.uint64, count=len(vocabulary))
            if len(_vocabulary_hashes) < 64:
                _vocabulary_hashes[vocabulary] = wanted
        found = np.flatnonzero(np.isin(self.hashes, wanted))
        # one occurrence of each hash found, checked against the text (a hash match is not proof)
        _, first = np.unique(self.hashes[found], return_index=True)
        positions = found[first]
        source = self.source
        return sum(source[s:s + n] in vocabulary
                   for s, n in zip(self.starts[positions].tolist(), self.lengths[positions].tolist(), strict=True))


_LETTER_TO_LINE_END = re.compile(r"[^\W\d_][^\n]*")


_string_hashes: dict[str, int] = {}
_vocabulary_hashes: dict[frozenset[str], np.ndarray] = {}


def _string_hash(word: str) -> int:
    """:class:`Words`' hash of one word (for texts under the table limit), remembered."""
    value = _string_hashes.get(word)
    if value is None:
        codes = np.frombuffer(word.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        value = int(_span_hashes(codes, np.zeros(1, dtype=np.int64), np.array([len(codes)]))[0])
        if len(_string_hashes) < 100_000:
            _string_hashes[word] = value
    return value


@dataclass(eq=False)
class Document:
    """One document: its text (HTML until extraction) and where it came from."""

    text: str
    source: str = ""
    """The input file."""
    offset: int = 0
    """Where in ``source``: the WARC record's byte offset, the JSONL line number, the Parquet row."""
    url: str | None = None
    html: bool = False
    """True while ``text`` is still HTML (before extraction)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Columns written beside the text (language, language_score, date, ...)."""
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)
    _cached_text: str | None = field(default=None, repr=False)

    def _fresh(self) -> dict[str, Any]:
        if self._cached_text is not self.text:
            self._cache.clear()
            self._cached_text = self.text
        return self._cache

    @property
    def words(self) -> list[str]:
        cache = self._fresh()
        if "words" not in cache:
            cache["words"] = split_words(self.text)
        return cache["words"]

    @property
    def word_arrays(self) -> Words:
        """The words as arrays (:class:`Words`), for the rules that count and compare words."""
        cache = self._fresh()
        if "word_arrays" not in cache:
            cache["word_arrays"] = Words(self.text, cache.get("words"))
        return cache["word_arrays"]

    @property
    def nbytes(self) -> int:
        cache = self._fresh()
        if "nbytes" not in cache:
            cache["nbytes"] = utf8_length(self.text)
        return cache["nbytes"]

    @property
    def where(self) -> str:
        return f"{self.source}:{self.offset}"
