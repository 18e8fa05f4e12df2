"""The BPE trainer's pure functions: the tie rule, the incremental counts against a plain recount, the
layout of tokenizers' own trainer, and pieces split as tokenizer.json splits them."""

from __future__ import annotations

import json
import random
from itertools import pairwise

from tokenizers import pre_tokenizers, trainers

from groundup.tokenizer import GPT4_PATTERN, SPECIAL_TOKENS, token_bytes
from groundup.tokenizer.train import Merge, assemble, build_tokenizer, count_pieces, learn_merges


def recount_merges(pieces: dict[bytes, int], n_tokens: int, min_frequency: int) -> list[Merge]:
    """The textbook loop, counting every pair afresh before each merge; ties to the smallest pair of ids."""
    words = {piece: list(piece) for piece in pieces}
    token = [bytes([b]) for b in range(256)]
    merges: list[Merge] = []
    while len(token) < n_tokens:
        counts: dict[tuple[int, int], int] = {}
        for piece, word in words.items():
            for pair in pairwise(word):
                counts[pair] = counts.get(pair, 0) + pieces[piece]
        if not counts:
            break
        pair = min(counts, key=lambda p: (-counts[p], p))
        if counts[pair] < min_frequency:
            break
        merges.append(Merge(token[pair[0]], token[pair[1]], counts[pair]))
        token.append(token[pair[0]] + token[pair[1]])
        for piece, word in words.items():
            out, j = [], 0
            while j < len(word):
                if tuple(word[j:j + 2]) == pair:
                    out.append(len(token) - 1)
                    j += 2
                else:
                    out.append(word[j])
                    j += 1
            words[piece] = out
    return merges


def test_equal_counts_go_to_the_smallest_pair_whatever_the_order_of_pieces():
    pieces = {b"cd": 3, b"ab": 3, b"xy": 5, b"ba": 3}
    merges = learn_merges(pieces, 260, min_frequency=1)
    assert [(m.left + m.right, m.count) for m in merges] == [(b"xy", 5), (b"ab", 3), (b"ba", 3), (b"cd", 3)]
    assert learn_merges(dict(reversed(pieces.items())), 260, min_frequency=1) == merges


def test_incremental_counts_equal_a_recount_at_every_merge():
    # Few letters and repeats ("aaaa", "abab") make overlapping pairs and many ties.
    for seed in range(40):
        rng = random.Random(seed)
        pieces: dict[bytes, int] = {}
        for _ in range(rng.randint(1, 40)):
            piece = "".join(rng.choice("aab c") for _ in range(rng.randint(1, 12))).encode()
            pieces[piece] = pieces.get(piece, 0) + rng.randint(1, 9)
        for min_frequency in (1, 3):
            assert learn_merges(pieces, 300, min_frequency=min_frequency) == \
                recount_merges(pieces, 300, min_frequency), seed


def test_min_frequency_and_the_vocabulary_size_stop_the_merges():
    pieces = {b"abcd": 5, b"xyz": 1}
    assert [m.left + m.right for m in learn_merges(pieces, 1000, min_frequency=2)] == [b"ab", b"cd", b"abcd"]
    assert len(learn_merges(pieces, 1000, min_frequency=1)) == 5
    assert len(learn_merges(pieces, 258, min_frequency=1)) == 2
    assert learn_merges({b"a": 10}, 1000) == []


def test_assemble_writes_the_layout_of_tokenizers_own_trainer():
    """tokenizers' BpeTrainer (used here only as the reference format) and assemble() on its merges give the
    same tokenizer.json, to the byte: ids, merges, pre-tokenizer, decoder and special tokens."""
    texts = ["def f(x):\n    return x  # the same text, héllo wörld, 1234567 \u4e2d\u6587"] * 3 + \
            [f"line {i}: {'ab' * i} {i * 7919}" for i in range(60)]
    hf = build_tokenizer(GPT4_PATTERN)
    hf.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=400, min_frequency=2, show_progress=False, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    merges = [Merge(token_bytes(a), token_bytes(b), 0) for a, b in json.loads(hf.to_str())["model"]["merges"]]
    assert len(merges) > 50
    assert assemble(merges, GPT4_PATTERN).to_str() == hf.to_str()


def test_pieces_are_what_tokenizer_json_splits_text_into():
    text = "It's 3.14159 o'clock\n\n    x = 1  # 中文 👍🏽\r\n"
    pipeline = [piece for piece, _ in build_tokenizer(GPT4_PATTERN).pre_tokenizer.pre_tokenize_str(text)]
    counts = count_pieces([text, text], GPT4_PATTERN)
    assert sorted(piece.encode("utf-8") for piece in counts.elements()) == \
        sorted(token_bytes(piece) for piece in pipeline * 2)  # the pipeline's pieces are byte characters
