"""The byte-level BPE trainer behind ``groundup tokenizer``: the same text and settings give the same merges.

The standard algorithm, with one fixed rule for ties:

1. :func:`count_pieces`: split every text with the tokenizer's own pre-tokenizer (the ``Split`` step of
   ``tokenizer.json``) and count each distinct piece once;
2. :func:`learn_merges`: over the distinct pieces as byte sequences, weighted by their counts, merge the
   most frequent adjacent pair, update the pair counts of the pieces that held it, and repeat until the
   vocabulary is full or the best pair is rarer than ``min_frequency``. Among pairs of equal count the
   smallest ``(left id, right id)`` wins, where a byte's id is its value and the k-th merge's is 256 + k:
   nanochat's ``rustbpe`` rule, so both learn the same merges from the same pieces;
3. :func:`assemble`: a ``tokenizers.Tokenizer`` in the layout ``tokenizers``' BpeTrainer writes (special
   tokens, then the 256 byte characters in code-point order, then one id per merged token), saved as
   ``tokenizer.json``.

Written by hand because neither library promises what this does. ``tokenizers``' BpeTrainer breaks ties
by its internal token ids, an order it does not document (some of those ids follow hash-map order, which
its maintainers track as non-deterministic training); ``rustbpe`` returns only the final ranks, without
the merge pairs that ``tokenizer.json`` lists or the counts that ``min_frequency`` needs, and counts
pairs in 32-bit integers.
"""

from __future__ import annotations

import heapq
import operator
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise

import tokenizers
from tokenizers import Regex, decoders, models, pre_tokenizers

from groundup.tokenizer import SPECIAL_TOKENS, bytes_to_unicode


@dataclass(frozen=True)
class Merge:
    """One learnt merge: two tokens (as bytes) joined into one, and how often the pair occurred then."""

    left: bytes
    right: bytes
    count: int


def build_tokenizer(pattern: str, model: models.Model | None = None) -> tokenizers.Tokenizer:
    """A byte-level BPE pipeline: split by ``pattern``, map bytes to characters, no prefix space.

    The split happens in a Split step (not inside ByteLevel) so that any regex can be used, and
    the same regex drives the tiktoken encoder. No normalizer: every byte survives the round trip.
    Without ``model``, an empty BPE.
    """
    tok = tokenizers.Tokenizer(model or models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        split_by(pattern),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def split_by(pattern: str) -> pre_tokenizers.Split:
    """The pre-tokenizer step that cuts text into the pieces merges never cross."""
    return pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False)


def count_pieces(texts: Iterable[str], pattern: str, *, progress: bool = False) -> Counter[str]:
    """How often each piece occurs when ``pattern`` splits ``texts``, exactly as ``tokenizer.json``'s Split does.

    The split runs in ``tokenizers`` itself, as when the file encodes, not in Python's ``regex``, whose
    newer Unicode tables split some recently assigned characters otherwise.
    """
    split = split_by(pattern)
    first = operator.itemgetter(0)
    counts: Counter[str] = Counter()
    if progress:
        from tqdm.auto import tqdm

        texts = tqdm(texts, desc="count pieces", unit="doc", disable=None)
    for text in texts:
        pieces = tokenizers.PreTokenizedString(text)
        split.pre_tokenize(pieces)
        counts.update(map(first, pieces.get_splits(offset_type="byte")))
    return counts


def learn_merges(piece_counts: Mapping[bytes, int], n_tokens: int, *, min_frequency: int = 2,
                 progress: bool = False) -> list[Merge]:
    """The merges, in order, until ``n_tokens`` distinct tokens exist (the 256 bytes included).

    ``piece_counts`` maps each distinct piece (bytes) to its count. Should a merge make bytes an earlier
    merge made (``ab+c`` after ``a+bc``), it is kept as a merge but adds no token, as in ``tokenizers``.
    Stops early when no pair occurs ``min_frequency`` times.
    """
    token_bytes = [bytes([b]) for b in range(256)]  # id -> bytes; merge k makes id 256 + k
    distinct = set(token_bytes)
    # Pieces of one byte hold no pair; the rest as lists of ids, weighted by their counts.
    words = [list(piece) for piece in piece_counts if len(piece) > 1]
    weights = [count for piece, count in piece_counts.items() if len(piece) > 1]
    pair_counts: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> words that held it (some no longer do)
    for i, (word, weight) in enumerate(zip(words, weights, strict=True)):
        for pair in pairwise(word):
            pair_counts[pair] += weight
            where[pair].add(i)
    # A max-heap on count, ties to the smallest pair. An entry's count may be stale (higher than now: a
    # pair's count only falls after the merge that creates it); a stale entry is pushed again when popped.
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[Merge] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max(n_tokens - len(distinct), 0), desc="merges", unit="merge", disable=None)
    while len(distinct) < n_tokens and heap:
        negative, pair = heapq.heappop(heap)
        count = pair_counts.get(pair, 0)
        if count != -negative:
            if count > 0:
                heapq.heappush(heap, (-count, pair))
            continue
        if count < min_frequency:
            break
        a, b = pair
        new = len(token_bytes)
        token_bytes.append(token_bytes[a] + token_bytes[b])
        merges.append(Merge(token_bytes[a], token_bytes[b], count))
        if token_bytes[new] not in distinct:
            distinct.add(token_bytes[new])
            if bar is not None:
                bar.update()
        created: set[tuple[int, int]] = set()
        for i in where.pop(pair):
            _merge_in_word(words, i, a, b, new, weights[i], pair_counts, where, created)
        del pair_counts[pair]  # every occurrence is merged: its count is 0 now
        for p in created:
            if pair_counts[p] > 0:
                heapq.heappush(heap, (-pair_counts[p], p))
    if bar is not None:
        bar.close()
    return merges


def _merge_in_word(words: list[list[int]], i: int, a: int, b: int, new: int, weight: int,
                   pair_counts: dict[tuple[int, int], int], where: dict[tuple[int, int], set[int]],
                   created: set[tuple[int, int]]) -> None:
    """Replace each ``a b`` of word ``i`` by ``new``, left to right, and move the pair counts with it."""
    word = words[i]
    n = len(word)
    out: list[int] = []
    j = 0
    while j < n:
        if word[j] == a and j + 1 < n and word[j + 1] == b:
            if out:  # the left neighbour now pairs with the new token
                left = out[-1]
                pair_counts[(left, a)] -= weight
                pair_counts[(left, new)] += weight
                where[(left, new)].add(i)
                created.add((left, new))
            if j + 2 < n:  # and so does the right one
                right = word[j + 2]
                pair_counts[(b, right)] -= weight
                pair_counts[(new, right)] += weight
                where[(new, right)].add(i)
                created.add((new, right))
            out.append(new)
            j += 2
        else:
            out.append(word[j])
            j += 1
    words[i] = out


def assemble(merges: Sequence[Merge], pattern: str,
             special_tokens: Sequence[str] = SPECIAL_TOKENS) -> tokenizers.Tokenizer:
    """A ``tokenizers.Tokenizer`` of the merges, in the layout ``tokenizers``' BpeTrainer writes.

    Ids: the special tokens first, then the 256 byte characters sorted by code point, then each merged
    token in merge order (so a token's id is its merge rank, which the tiktoken encoder relies on).
    """
    char = bytes_to_unicode()

    def text(token: bytes) -> str:
        return "".join(char[b] for b in token)

    vocab = {token: i for i, token in enumerate(special_tokens)}
    for c in sorted(char.values()):
        vocab[c] = len(vocab)
    pairs = []
    for merge in merges:
        left, right = text(merge.left), text(merge.right)
        pairs.append((left, right))
        vocab.setdefault(left + right, len(vocab))
    tok = build_tokenizer(pattern, models.BPE(vocab=vocab, merges=pairs, ignore_merges=True))
    tok.add_special_tokens(list(special_tokens))
    return tok


def train_tokenizer(texts: Iterable[str], *, pattern: str, vocab_size: int, min_frequency: int = 2,
                    special_tokens: Sequence[str] = SPECIAL_TOKENS, progress: bool = False) -> tokenizers.Tokenizer:
    """Train a byte-level BPE of ``vocab_size`` ids (special tokens and the 256 bytes included) on ``texts``."""
    pieces = count_pieces(texts, pattern, progress=progress)
    merges = learn_merges({piece.encode("utf-8"): count for piece, count in pieces.items()},
                          vocab_size - len(special_tokens), min_frequency=min_frequency, progress=progress)
    return assemble(merges, pattern, special_tokens)
