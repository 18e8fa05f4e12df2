"""Token files as arrays, random training windows and sliding evaluation windows."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from groundup.tokens.datasets import (
    IGNORE_INDEX,
    RandomWindows,
    SlidingWindows,
    load_tokens,
    scored_from,
    sliding_starts,
)


def write_tokens_dir(path, tokens: np.ndarray):
    path.mkdir()
    tokens.tofile(path / "train.bin")
    np.zeros(0, dtype=tokens.dtype).tofile(path / "val.bin")
    meta = {"dtype": tokens.dtype.name, "tokens": {"train": len(tokens), "val": 0}}
    (path / "meta.json").write_text(json.dumps(meta))
    return path


def test_load_tokens_is_a_read_only_map_of_the_right_dtype(tokens_dir, tmp_path):
    train = load_tokens(tokens_dir, "train")
    assert train.dtype == np.uint16
    assert np.array_equal(train, np.fromfile(tokens_dir / "train.bin", dtype=np.uint16))
    with pytest.raises((ValueError, RuntimeError)):
        train[0] = 1
    empty = load_tokens(write_tokens_dir(tmp_path / "d", np.arange(10, dtype=np.uint32)), "val")
    assert len(empty) == 0 and empty.dtype == np.uint32


def test_truncated_or_missing_files_are_refused(tmp_path):
    tokens_dir = write_tokens_dir(tmp_path / "d", np.arange(100, dtype=np.uint16))
    with open(tokens_dir / "train.bin", "r+b") as f:
        f.truncate(150)
    with pytest.raises(ValueError, match="truncated") as info:
        load_tokens(tokens_dir, "train")
    assert "train.bin" in str(info.value)
    with pytest.raises(FileNotFoundError, match="test.bin"):
        load_tokens(tokens_dir, "test")
    with pytest.raises(FileNotFoundError, match="groundup tokenize"):
        load_tokens(tmp_path / "nowhere", "train")


def test_random_windows_are_contiguous_with_targets_shifted_by_one():
    tokens = np.arange(1000, dtype=np.uint16)
    sampler = RandomWindows(tokens, block_size=16, batch_size=8, seed=3)
    for _ in range(20):
        x, y = sampler.next_batch()
        assert x.shape == y.shape == (8, 16) and x.dtype == y.dtype == torch.int64
        assert torch.equal(y, x + 1)  # on arange, "shifted by one" is "+1"
        assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(8, 15, dtype=torch.int64))
        assert x.min() >= 0 and y.max() <= 999


def test_random_windows_reach_both_ends_and_fit_a_minimal_array():
    tokens = np.arange(17, dtype=np.uint16)
    x, y = RandomWindows(tokens, block_size=16, batch_size=4, seed=0).next_batch()
    assert torch.equal(x[0], torch.arange(16)) and torch.equal(y[0], torch.arange(1, 17))
    starts = {int(s) for k in range(50) for s in RandomWindows(np.arange(20), 16, 4, seed=k).next_batch()[0][:, 0]}
    assert starts == {0, 1, 2, 3}  # every valid start (0..n-T-1), none past it
    with pytest.raises(ValueError, match="too few"):
        RandomWindows(np.arange(16), block_size=16, batch_size=1)


def test_random_windows_are_deterministic_and_resumable():
    tokens = np.arange(5000, dtype=np.uint16)
    straight = RandomWindows(tokens, 32, 4, seed=7)
    batches = [straight.next_batch() for _ in range(8)]
    same = RandomWindows(tokens, 32, 4, seed=7)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, (same.next_batch() for _ in range(8)), strict=True))
    other = RandomWindows(tokens, 32, 4, seed=8).next_batch()
    assert not torch.equal(other[0], batches[0][0])

    interrupted = RandomWindows(tokens, 32, 4, seed=7)
    for _ in range(5):
        interrupted.next_batch()
    state = json.loads(json.dumps(interrupted.state_dict()))  # survives a JSON checkpoint
    resumed = RandomWindows(tokens, 32, 4, seed=7)
    resumed.load_state_dict(state)
    for expected in batches[5:]:
        x, y = resumed.next_batch()
        assert torch.equal(x, expected[0]) and torch.equal(y, expected[1])
    with pytest.raises(ValueError, match="seed"):
        RandomWindows(tokens, 32, 4, seed=9).load_state_dict(state)


def test_sliding_windows_stride_and_shifted_targets():
    tokens = np.arange(20, dtype=np.uint16)
    windows = SlidingWindows(tokens, block_size=4, stride=4, batch_size=2)
    assert list(windows.starts) == [0, 4, 8, 12, 15]  # the last one aligned to the end
    assert len(windows) == 5 and windows.num_batches == 3
    batches = list(windows)
    assert [b[0].shape[0] for b in batches] == [2, 2, 1]
    x, y = batches[0]
    assert x.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]] and y.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert batches[2][1].tolist() == [[16, 17, 18, 19]]
    with pytest.raises(StopIteration):
        windows.next_batch()
    assert list(sliding_starts(21, 4, 2)) == [0, 2, 4, 6, 8, 10, 12, 14, 16]  # already ends at the last target


@pytest.mark.parametrize(("n", "block_size", "stride"), [(20, 4, 4), (20, 4, 2), (37, 8, 3), (9, 8, 1), (100, 16, 16)])
def test_score_once_counts_every_target_exactly_once(n, block_size, stride):
    tokens = np.arange(n, dtype=np.uint16)
    windows = SlidingWindows(tokens, block_size, stride, batch_size=3, score_once=True)
    scored = Counter()
    for x, y in windows:
        assert torch.equal(x[y != IGNORE_INDEX] + 1, y[y != IGNORE_INDEX])
        scored.update(y[y != IGNORE_INDEX].tolist())
    assert scored == Counter(range(1, n))  # each target (token 1..n-1) once


def test_score_once_keeps_only_the_last_stride_targets_after_the_first_window():
    windows = SlidingWindows(np.arange(40, dtype=np.uint16), block_size=8, stride=2, batch_size=4, score_once=True)
    x, y = windows.next_batch()
    counted = (y != IGNORE_INDEX).sum(dim=1).tolist()
    assert counted == [8, 2, 2, 2]
    assert (y[1, :6] == IGNORE_INDEX).all() and y[1, 6:].tolist() == [9, 10]  # window 2..9 scores 9, 10
    assert list(scored_from(np.array([0, 2, 4]), 8)) == [0, 6, 6]


def test_sliding_windows_resume_from_state():
    tokens = np.arange(200, dtype=np.uint16)
    full = list(SlidingWindows(tokens, 10, 5, batch_size=3))
    first = SlidingWindows(tokens, 10, 5, batch_size=3)
    first.next_batch()
    first.next_batch()
    resumed = SlidingWindows(tokens, 10, 5, batch_size=3)
    resumed.load_state_dict(first.state_dict())
    rest = list(resumed)
    assert len(rest) == len(full) - 2
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(rest, full[2:], strict=True))
    with pytest.raises(ValueError):
        resumed.load_state_dict({"position": 10_000})
    with pytest.raises(ValueError, match="too few"):
        SlidingWindows(np.arange(10), block_size=10)
