"""Gopher's rules (Rae et al. 2021, table A1): repetition (duplicated lines, paragraphs and n-grams) and quality.

Thresholds, order of checks and drop reasons are those of the FineWeb reference implementation
(datatrove), so the two can be compared document by document. What makes the repetition rules
fast: n-gram statistics are computed on integer hashes with numpy (a rolling hash of word hashes,
:mod:`~groundup.curate.hashing`); cheap upper bounds (a bucketed count, the words covered by
repeats) settle most documents before any sort, and only the positions of repeated n-grams are
walked in Python. Each shortcut is checked against plain loops in the tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from groundup.curate.hashing import extend_ngram_hashes, next_ngram_hashes
from groundup.curate.steps import KEEP, Filter
from groundup.curate.text import Document, duplicates

# ---------------------------------------------------------------------------- n-gram statistics


def top_ngram_characters(ngram_hashes: np.ndarray, ngram_chars: np.ndarray) -> int:
    """Characters in the most frequent n-gram times its count (ties: the one seen first)."""
    if len(ngram_hashes) == 0:
        return 0
    order = np.argsort(ngram_hashes, kind="stable")
    ordered = ngram_hashes[order]
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    if len(starts) == len(ordered):  # every n-gram occurs once: the first one is "the most common"
        return int(ngram_chars[0])
    counts = np.diff(np.append(starts, len(ordered)))
    top = counts.max()
    position = int(order[starts[counts == top]].min())  # a stable sort puts each group's first position first
    return int(ngram_chars[position]) * int(top)


def _sorted_repeats(ngram_hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    empty = np.zeros(0, dtype=np.int64)
    if len(ngram_hashes) < 2:
        return empty, empty
    order = np.argsort(ngram_hashes, kind="stable")  # equal n-grams in order of position
    ordered = ngram_hashes[order]
    same = ordered[1:] == ordered[:-1]
    if not same.any():
        return empty, empty
    repeated = np.zeros(len(ordered), dtype=bool)
    repeated[1:] |= same
    repeated[:-1] |= same
    return np.sort(order[repeated]), np.sort(order[1:][same])


def repeats(ngram_hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted positions whose n-gram occurs more than once, and those whose n-gram occurred before.

    In ordinary text few longer n-grams repeat, so the sort is spared most of them: counted into
    8-16 times as many buckets as n-grams, only those sharing a bucket can repeat (every
    occurrence of a repeated n-gram lands in the same bucket, so the order of first and later
    occurrences is kept among them).
    """
    m = len(ngram_hashes)
    if m > 64:
        buckets = ngram_hashes.view(np.int64) & ((1 << (8 * m).bit_length()) - 1)
        candidates = np.flatnonzero(np.bincount(buckets)[buckets] > 1)
        if len(candidates) < m // 2:
            repeated, later = _sorted_repeats(ngram_hashes[candidates])
            return candidates[repeated], candidates[later]
    return _sorted_repeats(ngram_hashes)


def repeated_positions(ngram_hashes: np.ndarray) -> np.ndarray:
    """Sorted positions whose n-gram occurs more than once."""
    return repeats(ngram_hashes)[0]


def top_ngram_bound(ngram_hashes: np.ndarray, ngram_chars: np.ndarray) -> float:
    """An upper bound on :func:`top_ngram_characters` from two linear passes instead of a sort.

    The n-grams are counted into 2-4 times as many buckets as there are n-grams, each bucket
    summing the characters of its n-grams: every occurrence of the most frequent n-gram falls
    into the same bucket, so that bucket's sum is at least its characters times its count
    (collisions only add). On ordinary text the bound is a fraction of the Gopher thresholds, so
    the exact count is needed only for repetitive pages.
    """
    m = len(ngram_hashes)
    if m == 0:
        return 0.0
    buckets = ngram_hashes.view(np.int64) & ((1 << (2 * m).bit_length()) - 1)
    return float(np.bincount(buckets, weights=ngram_chars).max())


def covered_characters(positions: np.ndarray, n: int, prefix: np.ndarray) -> int:
    """Characters of the words that n-grams starting at sorted ``positions`` cover (their union).

    Over the positions whose n-gram occurred before, an upper bound on
    :func:`duplicate_ngram_characters`, which counts only such n-grams and never two that overlap.
    It holds for every longer n too: an (n+1)-gram seen before at ``p`` makes the n-grams at ``p``
    and ``p + 1`` seen before, so the words covered only shrink as n grows. ``prefix`` holds the
    cumulative word lengths (``prefix[i]``: characters of the first i words).
    """
    if len(positions) == 0:
        return 0
    ends = positions + n
    starts = np.maximum(positions, np.concatenate(([0], ends[:-1])))  # ends grow with the positions
    return int((prefix[ends] - prefix[starts]).sum())


def duplicate_ngram_characters(positions: np.ndarray, ngram_hashes: np.ndarray, ngram_chars: np.ndarray,
                               n: int) -> int:
    """Characters in repeated n-grams, counted as Gopher's reference does.

    Walking left to right, an n-gram seen before adds its characters and the walk jumps past
    it (so overlapping repeats are not counted twice); any other n-gram is remembered. Only
    the ``positions`` of n-grams that occur more than once can change the result, so the
    walk visits just those (``ngram_hashes`` and ``ngram_chars`` are given at those positions).
    """
    seen: set[int] = set()
    next_visit = 0
    total = 0
    for position, h, c in zip(positions.tolist(), ngram_hashes.tolist(), ngram_chars.tolist(), strict=True):
        if position < next_visit:
            continue
        if h in seen:
            total += c
            next_visit = position + n
        else:
            seen.add(h)
    return total


_PARAGRAPH_SPLIT = re.compile(r"\n{2,}")


def split_paragraphs(text: str) -> list[str]:
    """``re.split(r"\\n{2,}", text.strip())``, with ``str.split`` when no run of 3+ newlines (the usual case)."""
    text = text.strip()
    return _PARAGRAPH_SPLIT.split(text) if "\n\n\n" in text else text.split("\n\n")


def split_lines(text: str) -> list[str]:
    """``re.split(r"\\n+", text)`` (empty first/last pieces kept, as ``re.split`` does) with ``str.split``:
    a regex split scans every character in Python's engine, several times slower."""
    lines = text.split("\n")
    if len(lines) > 2 and "\n\n" in text:
        return [lines[0], *filter(None, lines[1:-1]), lines[-1]]
    return lines


@dataclass
class GopherRepetitionFilter(Filter):
    """Gopher's repetition rules: duplicated lines and paragraphs, top n-grams, duplicated n-grams.

    Each threshold is a maximum fraction of the document (None or 0: the rule is off).
    """

    name = "gopher_repetition"

    dup_line_frac: float | None = 0.3
    """Maximum fraction of lines that repeat an earlier line."""
    dup_para_frac: float | None = 0.3
    """Maximum fraction of paragraphs that repeat an earlier paragraph."""
    dup_line_char_frac: float | None = 0.2
    """Maximum fraction of characters in repeated lines."""
    dup_para_char_frac: float | None = 0.2
    """Maximum fraction of characters in repeated paragraphs."""
    top_n_grams: tuple[tuple[int, float], ...] = ((2, 0.2), (3, 0.18), (4, 0.16))
    """(n, fraction): the most frequent n-gram may cover at most this fraction of the characters."""
    dup_n_grams: tuple[tuple[int, float], ...] = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11),
                                                  (10, 0.10))
    """(n, fraction): n-grams seen before may cover at most this fraction of the characters."""

    def __post_init__(self) -> None:
        self.top_n_grams = tuple(sorted((int(n), float(f)) for n, f in self.top_n_grams))
        self.dup_n_grams = tuple(sorted((int(n), float(f)) for n, f in self.dup_n_grams))

    def filter(self, doc: Document) -> tuple[bool, str]:
        text = doc.text
        if not text:
            return False, "empty"
        size = len(text)
        paragraphs = split_paragraphs(text)
        repeated, chars = duplicates(paragraphs)
        if self.dup_para_frac and repeated / len(paragraphs) > self.dup_para_frac:
            return False, "dup_para_frac"
        if self.dup_para_char_frac and chars / size > self.dup_para_char_frac:
            return False, "dup_para_char_frac"
        lines = split_lines(text)
        repeated, chars = duplicates(lines)
        if self.dup_line_frac and repeated / len(lines) > self.dup_line_frac:
            return False, "dup_line_frac"
        if self.dup_line_char_frac and chars / size > self.dup_line_char_frac:
            return False, "dup_line_char_frac"

        words = doc.word_arrays
        if len(words) < 2:
            return KEEP
        hashes = words.hashes
        prefix = np.zeros(len(words) + 1, dtype=np.int64)
        np.cumsum(words.lengths, out=prefix[1:])
        top = dict(self.top_n_grams)
        dup = dict(self.dup_n_grams)
        last_top = max(top, default=1)
        largest = min(max(last_top, max(dup, default=1)), len(words))
        ngrams = hashes
        # Past the top-n-gram sizes, from the first duplicated-n-gram size on, only positions whose
        # (n-1)-gram repeats can hold a repeated n-gram, so the arrays shrink to those positions.
        positions: np.ndarray | None = None
        for n in range(2, largest + 1):
            if positions is None:
                ngrams = next_ngram_hashes(ngrams, hashes, n)
                chars = prefix[n:] - prefix[:-n]  # characters of the n words, without separators
            else:
                fits = positions + n <= len(words)
                positions = positions[fits]
                ngrams = extend_ngram_hashes(ngrams[fits], hashes[positions + n - 1])
                chars = prefix[positions + n] - prefix[positions]
            if n in top:
                spaced = chars + (n - 1)  # the n-gram as text: its words joined by single spaces
                # the exact count (a sort) only when the cheap upper bound does not already pass
                if top_ngram_bound(ngrams, spaced) / size > top[n] and \
                        top_ngram_characters(ngrams, spaced) / size > top[n]:
                    return False, f"top_{n}_gram"
            if n in dup:
                local, later = repeats(ngrams)
                absolute = local if positions is None else positions[local]
                covered = covered_characters(later if positions is None else positions[later], n, prefix) / size
                if n >= last_top and all(covered <= f for m, f in dup.items() if m >= n):
                    return KEEP  # no top-n-gram check left, and no duplicated n-gram check can fail
                if covered > dup[n] and \
                        duplicate_ngram_characters(absolute, ngrams[local], chars[local], n) / size > dup[n]:
                    return False, f"duplicated_{n}_n_grams"
                if n >= last_top:
                    if len(local) == 0:
                        break  # no n-gram repeats, so no longer one does: every later check passes
                    ngrams, positions = ngrams[local], absolute
        return KEEP


# ---------------------------------------------------------------------------- Gopher quality

STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")


@dataclass
class GopherQualityFilter(Filter):
    """Gopher's quality rules: word count, mean word length, symbols, bullets, ellipses, letters, stop words.

    Words are counted without "symbol words" (nothing but punctuation). None or 0 turns a rule off.
    """

    name = "gopher_quality"

    min_doc_words: int | None = 50
    """Minimum number of words."""
    max_doc_words: int | None = 100_000
    """Maximum number of words."""
    min_avg_word_length: float | None = 3
    """Minimum mean word length (characters)."""
    max_avg_word_length: float | None = 10
    """Maximum mean word length (characters)."""
    max_symbol_word_ratio: float | None = 0.1
    """Maximum number of `#` and of ellipses, each, per word."""
    max_bullet_lines_ratio: float | None = 0.9
    """Maximum fraction of lines starting with a bullet or a dash."""
    max_ellipsis_lines_ratio: float | None = 0.3
    """Maximum fraction of lines ending in an ellipsis."""
    max_non_alpha_words_ratio: float | None = 0.8
    """Minimum fraction of words holding a letter (the name is the reference's)."""
    min_stop_words: int | None = 2
    """Minimum number of distinct stop words present."""
    stop_words: tuple[str, ...] = STOP_WORDS
    """The stop words."""

    def __post_init__(self) -> None:
        self._stop_words = frozenset(self.stop_words)

    def filter(self, doc: Document) -> tuple[bool, str]:
        text = doc.text
        words = doc.word_arrays
        n_words = len(words)
        # a "symbol word" is nothing but punctuation: with this tokenizer, a lone mark or "..."
        symbols = words.symbols()
        n_real = n_words - int(np.count_nonzero(symbols))
        if self.min_doc_words and n_real < self.min_doc_words:
            return False, "gopher_short_doc"
        if self.max_doc_words and n_real > self.max_doc_words:
            return False, "gopher_long_doc"
        real_chars = int(words.lengths.sum()) - int(words.lengths[symbols].sum())
        mean_length = real_chars / n_real if n_real else float("nan")
        if self.min_avg_word_length and mean_length < self.min_avg_word_length:
            return False, "gopher_below_avg_threshold"
        if self.max_avg_word_length and mean_length > self.max_avg_word_length:
            return False, "gopher_above_avg_threshold"
        if n_words == 0:
            return False, "gopher_short_doc"
        if self.max_symbol_word_ratio and text.count("#") / n_words > self.max_symbol_word_ratio:
            return False, "gopher_too_many_hashes"
        ellipses = text.count("...") + text.count("\u2026")
        if self.max_symbol_word_ratio and ellipses / n_words > self.max_symbol_word_ratio:
            return False, "gopher_too_many_ellipsis"
        lines = text.splitlines() or [""]
        # A bullet line holds a bullet or a dash, an ellipsis line an ellipsis, so those counts bound the
        # line counts: the lines are walked only when a bound does not already pass.
        if self.max_bullet_lines_ratio and \
                (text.count("-") + text.count("\u2022")) / len(lines) > self.max_bullet_lines_ratio:
            bullets = sum(1 for s in lines if s.lstrip().startswith(("\u2022", "-")))
            if bullets / len(lines) > self.max_bullet_lines_ratio:
                return False, "gopher_too_many_bullets"
        if self.max_ellipsis_lines_ratio and ellipses / len(lines) > self.max_ellipsis_lines_ratio:
            ellipsis_lines = sum(1 for s in lines if s.rstrip().endswith(("...", "\u2026")))
            if ellipsis_lines / len(lines) > self.max_ellipsis_lines_ratio:
                return False, "gopher_too_many_end_ellipsis"
        if self.max_non_alpha_words_ratio and words.with_letter() / n_words < self.max_non_alpha_words_ratio:
            return False, "gopher_below_alpha_threshold"
        if self.min_stop_words and words.count_distinct(self._stop_words) < self.min_stop_words:
            return False, "gopher_enough_stop_words"
        return KEEP
