"""Bin packing and the document-aligned training rows built with it (packing 'bestfit')."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from groundup.parallel.data import RankBatches
from groundup.tokens.datasets import (
    IGNORE_INDEX,
    PackedDocuments,
    document_pieces,
    eos_positions,
    segments_from_eos,
)
from groundup.tokens.packing import pack_bins

EOS = 0


def shard(lengths: list[int], trailing_eos: bool = True) -> np.ndarray:
    """Documents of the given lengths separated by EOS (0); every other token is its position + 1, so a token
    names the one place it comes from."""
    tokens = np.arange(1, sum(lengths) + len(lengths) + 1, dtype=np.uint32)
    tokens[np.cumsum(np.asarray(lengths) + 1) - 1] = EOS
    return tokens if trailing_eos else tokens[:-1]


def varied_shard(n_docs: int = 60, seed: int = 0) -> np.ndarray:
    lengths = np.random.default_rng(seed).integers(0, 70, size=n_docs)  # some empty, some over two rows of 16
    return shard(lengths.tolist())


def test_bins_hold_every_item_once_within_capacity():
    lengths = np.random.default_rng(1).integers(1, 50, size=300)
    for fit in ("best", "first"):
        bins = pack_bins(lengths, 64, fit=fit)
        assert sorted(i for b in bins for i in b) == list(range(300))
        assert all(lengths[b].sum() <= 64 for b in bins)
        assert bins == pack_bins(lengths, 64, fit=fit)  # deterministic
    with pytest.raises(ValueError, match="item 1 has length 65"):
        pack_bins([3, 65], 64)


def test_best_fit_wastes_less_than_first_fit_on_a_constructed_case():
    # first fit puts the 3 into the 12's row (room 4) and strands a 2; best fit puts it where the room is 3
    lengths = [12, 7, 6, 3, 2, 2]
    first, best = pack_bins(lengths, 16, fit="first"), pack_bins(lengths, 16, fit="best")
    assert len(first) == 3 and len(best) == 2
    waste = {name: len(bins) * 16 - sum(lengths) for name, bins in (("first", first), ("best", best))}
    assert waste == {"first": 16, "best": 0}


def test_pieces_start_at_the_eos_before_each_document_and_split_long_ones_with_one_token_overlap():
    tokens = shard([3, 0, 40, 5], trailing_eos=False)  # an empty document, one over two rows of 16, no final EOS
    assert eos_positions(tokens, EOS, chunk=7).tolist() == np.flatnonzero(tokens == EOS).tolist()
    p = document_pieces(tokens, EOS, block_size=16)
    assert p.documents == 3
    # doc 0 at -1 (its EOS is not in the file), 3 tokens; doc 2 from its EOS at 4: 41 tokens in rows of 17
    # overlapping by one (4..20, 20..36) and a remainder 36..45; doc 3 (after EOS 45) to the end of the file
    assert p.start.tolist() == [-1, 4, 20, 36, 45]
    assert p.length.tolist() == [4, 17, 17, 9, 6]
    assert p.opens_document.tolist() == [True, True, False, False, True]


def test_a_shard_without_eos_is_refused_by_name():
    with pytest.raises(ValueError, match=r"train\.bin: no EOS token \(id 0\).*packing 'random'"):
        PackedDocuments(np.arange(1, 200, dtype=np.uint16), 16, 2, EOS, where="train.bin")
    with pytest.raises(ValueError, match="train.bin: 40 EOS tokens .* no document"):
        PackedDocuments(np.zeros(40, dtype=np.uint16), 16, 2, EOS, where="train.bin")


def epoch_batches(sampler: PackedDocuments) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The batches of the sampler's first epoch (batch_size 1: a batch is a row)."""
    batches = []
    while not batches or sampler.state_dict()["epoch"] == 0:
        batches.append(sampler.next_batch())
    return batches[:-1]


def test_every_row_starts_a_document_or_continues_one_and_every_token_is_a_target_once_an_epoch():
    tokens = varied_shard()
    sampler = PackedDocuments(tokens, 16, 1, EOS, seed=3, group_size=25)
    batches = epoch_batches(sampler)
    pieces = sampler.pieces
    continuation_starts = {int(tokens[s]) for s in pieces.start[~pieces.opens_document]}
    targets, inputs = Counter(), Counter()
    for x, y, _ in batches:
        first = int(x[0, 0])
        assert first == EOS or first in continuation_starts
        trained = y[0] != IGNORE_INDEX
        used = min(int(torch.nonzero(trained)[-1, 0]) + 2, 16)  # the pieces' tokens in the row; then padding
        targets.update(t for t in y[0][trained].tolist() if t != EOS)
        inputs.update(t for t in x[0][:used].tolist() if t != EOS)
        # a target is the token after its input in the file: position + 1 names both
        pairs = [(a, b) for a, b in zip(x[0][trained].tolist(), y[0][trained].tolist(), strict=True) if a and b]
        assert all(b == a + 1 for a, b in pairs)
    document_tokens = [int(t) for t in tokens if t != EOS]
    assert sorted(targets) == document_tokens and set(targets.values()) == {1}  # none twice, none missed
    assert max(inputs.values()) == 1
    assert sampler.stats()["cropped_tokens"] == 0


def test_segments_number_the_pieces_of_a_row_and_the_padding_is_one_more():
    tokens = shard([2, 3, 1, 4, 2, 3, 1, 2])  # short documents: several to a row, each piece opens one
    x, y, segments = PackedDocuments(tokens, 16, 2, EOS, seed=0).next_batch()
    for xr, yr, sr in zip(x, y, segments, strict=True):
        used = min(int(torch.nonzero(yr != IGNORE_INDEX)[-1, 0]) + 2, 16)  # the pieces' tokens in the row
        # a segment begins exactly at each EOS (the one that opens the document) ...
        assert torch.equal(sr[:used], segments_from_eos(xr[None, :used], EOS)[0] - 1)
        # ... and the padding after the pieces is one segment more
        assert torch.equal(sr[used:], torch.full((16 - used,), int(sr[used - 1]) + 1))


def test_the_target_before_a_mid_document_piece_is_not_trained():
    # rows of 9 tokens: document 0 (with its EOS, 21 tokens) fills two rows and leaves a 5-token remainder
    # that starts mid-document; it shares a row with document 1 (EOS + 3 tokens)
    tokens = shard([20, 3])
    masked = 0
    for seed in range(8):
        for x, y, segments in [PackedDocuments(tokens, 8, 1, EOS, seed=seed).next_batch() for _ in range(3)]:
            boundaries = torch.nonzero(segments[0][1:] != segments[0][:-1])[:, 0].tolist()
            for b in boundaries:
                into_mid_document = int(x[0, b + 1]) != EOS
                assert (int(y[0, b]) == IGNORE_INDEX) == into_mid_document
                assert into_mid_document or int(y[0, b]) == EOS  # a document's end predicts the EOS after it
                masked += into_mid_document
    assert masked  # some seed put the remainder second


def test_batch_k_is_a_pure_function_of_seed_and_k():
    tokens = varied_shard(seed=1)
    straight = PackedDocuments(tokens, 16, 3, EOS, seed=5, group_size=20)
    batches = [straight.next_batch() for _ in range(12)]
    other = PackedDocuments(tokens, 16, 3, EOS, seed=5, group_size=20)
    for k in (9, 2, 11, 0):  # backwards and forwards, without moving the counter
        assert all(torch.equal(a, b) for a, b in zip(other.batch(k), batches[k], strict=True))
    assert other.batches == 0
    different = PackedDocuments(tokens, 16, 3, EOS, seed=6, group_size=20).next_batch()
    assert not torch.equal(different[0], batches[0][0])


@pytest.mark.parametrize("stop", [1, 7, 13])
def test_resume_from_the_state_is_bitwise_and_the_state_is_small(stop):
    tokens = varied_shard(n_docs=25, seed=2)
    straight = PackedDocuments(tokens, 16, 4, EOS, seed=9, group_size=16)
    expected = [straight.next_batch() for _ in range(20)]  # several groups and more than one epoch
    assert straight.state_dict()["epoch"] >= 1
    first = PackedDocuments(tokens, 16, 4, EOS, seed=9, group_size=16)
    for _ in range(stop):
        first.next_batch()
    state = json.loads(json.dumps(first.state_dict()))
    assert len(json.dumps(state)) < 300
    resumed = PackedDocuments(tokens, 16, 4, EOS, seed=9, group_size=16)
    resumed.load_state_dict(state)
    rest = [resumed.next_batch() for _ in range(20 - stop)]
    for a, b in zip(expected[stop:], rest, strict=True):
        assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert resumed.stats() == straight.stats()
    with pytest.raises(ValueError, match="pieces"):
        PackedDocuments(tokens, 8, 4, EOS, seed=9).load_state_dict(state)


def test_ranks_take_their_own_batches_of_one_stream_with_the_same_state():
    tokens = varied_shard(seed=4)
    one = PackedDocuments(tokens, 16, 2, EOS, seed=1, group_size=10)
    stream = [one.next_batch() for _ in range(13)]
    ranks = [RankBatches(PackedDocuments(tokens, 16, 2, EOS, seed=1, group_size=10), r, 2) for r in range(2)]
    for step in range(3):  # accumulation 2 per rank: batches 4s + (0, 2) on rank 0, 4s + (1, 3) on rank 1
        for micro in range(2):
            for rank, view in enumerate(ranks):
                got = view.next_batch()
                assert all(torch.equal(a, b) for a, b in zip(got, stream[4 * step + 2 * micro + rank], strict=True))
        assert ranks[0].state_dict() == ranks[1].state_dict()
    resumed = PackedDocuments(tokens, 16, 2, EOS, seed=1, group_size=10)
    resumed.load_state_dict(ranks[1].state_dict())
    assert all(torch.equal(a, b) for a, b in zip(resumed.next_batch(), stream[12], strict=True))


def test_efficiency_counts_padding_and_masked_targets():
    tokens = varied_shard(seed=5)
    sampler = PackedDocuments(tokens, 16, 4, EOS, seed=0)
    ys = [sampler.next_batch()[1] for _ in range(10)]
    stats = sampler.stats()
    assert stats["rows"] == 40
    assert stats["targets"] == sum(int((y != IGNORE_INDEX).sum()) for y in ys)
    assert stats["efficiency"] == pytest.approx(stats["targets"] / (40 * 16), abs=1e-6)
    assert 0.9 < stats["efficiency"] <= 1.0


def test_segments_from_eos_open_a_document_at_each_eos():
    x = torch.tensor([[5, 6, EOS, 7, 8, EOS, EOS, 9], [EOS, 1, 2, 3, 4, 5, 6, 7]])
    assert segments_from_eos(x, EOS).tolist() == [[0, 0, 1, 1, 1, 2, 3, 3], [1, 1, 1, 1, 1, 1, 1, 1]]
