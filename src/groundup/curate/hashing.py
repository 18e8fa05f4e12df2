"""The 64-bit hashes curation computes on words and word n-grams, in one place for the filters and dedup.

Two n-gram forms, for two jobs:

- :func:`next_ngram_hashes`, a rolling polynomial ``h_n[i] = h_{n-1}[i] * M + w[i + n - 1]``
  (mod 2**64): Gopher's repetition rules look at every n from 2 to 10, and each size is one
  array operation on the one before. Only equality within one document matters, so the word
  hashes may come from anywhere (:class:`~groundup.curate.text.Words`, :func:`word_hashes`).
- :func:`shingles_from_words`, a fixed-size ``fmix64(sum_j w[i + j] * odd_j)`` over many documents at
  once: MinHash (:mod:`~groundup.curate.dedup`) needs well-mixed 64-bit values that are the same
  in every process, so the words are hashed with xxh3 there and the sum goes through murmur3's
  finalizer (:func:`fmix64`), which the LSH band keys use too.

Both use the same odd multiplier :data:`GOLDEN`. numpy's uint64 arithmetic wraps silently, which is
the modulus wanted here.
"""

from __future__ import annotations

import numpy as np

MASK64 = (1 << 64) - 1
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
"""An odd 64-bit constant (2**64 / the golden ratio): the rolling n-gram multiplier and the band-key salt."""
# murmur3's / splitmix64's finalizer constants
_FMIX1 = np.uint64(0xFF51AFD7ED558CCD)
_FMIX2 = np.uint64(0xC4CEB9FE1A85EC53)
_SHIFT = np.uint64(33)


def fmix64(x: np.ndarray) -> np.ndarray:
    """murmur3's 64-bit finalizer, in place: every input bit affects every output bit."""
    x ^= x >> _SHIFT
    x *= _FMIX1
    x ^= x >> _SHIFT
    x *= _FMIX2
    x ^= x >> _SHIFT
    return x


def word_hashes(words: list[str]) -> np.ndarray:
    """64-bit hashes of words (Python's ``hash``), as uint64. Only equality within one process matters."""
    return np.fromiter(map(hash, words), dtype=np.int64, count=len(words)).view(np.uint64)


def extend_ngram_hashes(previous: np.ndarray, next_words: np.ndarray) -> np.ndarray:
    """Hashes of n-grams from those of their first n-1 words and the hash of their last word."""
    return previous * GOLDEN + next_words


def next_ngram_hashes(previous: np.ndarray, hashes: np.ndarray, n: int) -> np.ndarray:
    """Hashes of every n-gram from those of the (n-1)-grams: ``h_n[i] = h_{n-1}[i] * M + w[i + n - 1]``."""
    return extend_ngram_hashes(previous[:-1], hashes[n - 1:])


def _position_multipliers(n: int) -> np.ndarray:
    # Fixed (not seeded): shingle hashes only need to tell word sequences apart; the seed goes to MinHash.
    return np.random.default_rng(0x5EED).integers(0, 1 << 63, size=n, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


def shingles_from_words(word_hash: np.ndarray, counts: np.ndarray, ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every word ``ngram``-gram of many documents, flat, and row offsets into them.

    ``word_hash`` holds the documents' word hashes one document after another, ``counts`` the words
    of each. Returns ``(hashes, offsets)``: document i's shingles are ``hashes[offsets[i]:offsets[i + 1]]``
    in text order. A document with 1 to ngram - 1 words is one shingle; one with no words has none.
    """
    multipliers = _position_multipliers(ngram)
    n_docs = len(counts)
    word_end = np.cumsum(counts)
    word_start = word_end - counts
    long_doc = counts >= ngram
    short_doc = (counts > 0) & ~long_doc
    per_doc = np.where(long_doc, counts - ngram + 1, short_doc.astype(np.int64))
    offsets = np.zeros(n_docs + 1, dtype=np.uint64)
    np.cumsum(per_doc, out=offsets[1:])
    out = np.empty(int(offsets[-1]), dtype=np.uint64)
    total = len(word_hash)
    if long_doc.any():
        windows = total - ngram + 1
        h = word_hash[:windows] * multipliers[0]
        for j in range(1, ngram):
            h += word_hash[j:j + windows] * multipliers[j]
        # A window is a shingle when it ends inside the document it starts in: drop the ngram - 1
        # windows that start before each document's end and run past it.
        valid = np.ones(windows, dtype=bool)
        crossing = (word_end[:, None] - np.arange(1, ngram)).ravel()
        valid[crossing[(crossing >= 0) & (crossing < windows)]] = False
        if short_doc.any():
            out[np.repeat(long_doc, per_doc)] = h[valid]
        else:
            out = h[valid]
    if short_doc.any():
        starts, lengths = word_start[short_doc], counts[short_doc]
        j = np.arange(ngram)
        index = np.minimum(starts[:, None] + j, total - 1)
        present = j < lengths[:, None]
        short = (np.where(present, word_hash[index], np.uint64(0)) * multipliers).sum(axis=1, dtype=np.uint64)
        out[np.repeat(short_doc, per_doc)] = short
    return fmix64(out), offsets
