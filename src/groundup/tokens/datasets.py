"""Reading token files and cutting them into (input, target) windows.

- :func:`load_tokens`: a split of a tokens dir as a read-only memory map.
- :class:`RandomWindows`: training batches at random offsets. Batch ``k`` depends on
  ``(seed, k)`` alone, so the sampler's whole state is a counter and a resumed run sees the
  same batches as an uninterrupted one.
- :class:`SlidingWindows`: windows at ``0, stride, 2*stride, ...`` (the last one aligned to the
  end), for evaluation or epoch-style passes; with ``score_once`` every target is counted once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from groundup.artifacts import read_json

IGNORE_INDEX = -100
"""Target value that cross-entropy skips (PyTorch's default ``ignore_index``)."""


def load_tokens(tokens_dir: str | Path, split: str) -> np.ndarray:
    """``train.bin`` or ``val.bin`` of a tokens dir as a read-only memmap of the dtype ``meta.json`` names.

    The file's size must match the token count in ``meta.json``: a short file (an interrupted copy)
    or a file from another run is refused rather than read as garbage.
    """
    tokens_dir = Path(tokens_dir)
    meta_path, path = tokens_dir / "meta.json", tokens_dir / f"{split}.bin"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found: {tokens_dir} is not a tokens dir (run `groundup tokenize`)")
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (splits of a tokens dir: train, val)")
    meta = read_json(meta_path)
    try:
        dtype = np.dtype(meta["dtype"])
        count = int(meta["tokens"][split])
    except (KeyError, TypeError) as e:
        raise ValueError(f"{meta_path}: no dtype or token count for split {split!r}") from e
    size, expected = path.stat().st_size, count * dtype.itemsize
    if size != expected:
        raise ValueError(f"{path} holds {size:,} bytes but meta.json records {count:,} {dtype.name} tokens "
                         f"({expected:,} bytes): the file is truncated or from another run; re-run `groundup tokenize`")
    if count == 0:
        return np.zeros(0, dtype=dtype)  # np.memmap cannot map an empty file
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))


def _check_length(tokens: np.ndarray, block_size: int) -> None:
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    if len(tokens) < block_size + 1:
        raise ValueError(f"{len(tokens):,} tokens are too few for windows of {block_size} (+1 for the targets)")


def _windows(tokens: np.ndarray, starts: np.ndarray, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``tokens[s : s+T]`` and targets ``tokens[s+1 : s+T+1]`` for each start, as int64 (B, T)."""
    index = starts[:, None] + np.arange(block_size + 1)  # (B, T+1)
    window = torch.from_numpy(np.asarray(tokens[index], dtype=np.int64))
    return window[:, :-1], window[:, 1:]


def random_starts(n_tokens: int, block_size: int, batch_size: int, seed: int, batch: int) -> np.ndarray:
    """Window starts of batch number ``batch``: a pure function of its arguments."""
    rng = np.random.default_rng([seed, batch])
    return rng.integers(0, n_tokens - block_size, size=batch_size)


class RandomWindows:
    """Batches of ``batch_size`` windows of ``block_size`` tokens at random offsets; y is x shifted by one."""

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int = 0) -> None:
        _check_length(tokens, block_size)
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.tokens, self.block_size, self.batch_size, self.seed = tokens, block_size, batch_size, seed
        self.batches = 0
        """Batches handed out so far: the next batch is number ``batches``."""

    def batch(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch number ``k`` (x, y), each int64 (B, T), without moving the counter."""
        starts = random_starts(len(self.tokens), self.block_size, self.batch_size, self.seed, k)
        return _windows(self.tokens, starts, self.block_size)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.batch(self.batches)
        self.batches += 1
        return x, y

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"sampler state is for seed {state['seed']}, this sampler has seed {self.seed}")
        self.batches = int(state["batches"])


def sliding_starts(n_tokens: int, block_size: int, stride: int) -> np.ndarray:
    """Starts ``0, stride, 2*stride, ...`` of full windows, plus one aligned to the end if the last target
    would otherwise be missed."""
    if not 0 < stride <= block_size:
        raise ValueError(f"need 0 < stride <= block_size, got stride={stride}, block_size={block_size}")
    last = n_tokens - 1 - block_size  # the start whose window ends at the last target
    starts = np.arange(0, last + 1, stride)
    if starts[-1] != last:
        starts = np.append(starts, last)
    return starts


def scored_from(starts: np.ndarray, block_size: int) -> np.ndarray:
    """For each window, the first position whose target no earlier window scored (0 for the first window).

    With ``stride < block_size`` a window after the first scores only its last ``stride`` targets;
    the rest are context. Together the windows score every target exactly once.
    """
    # Window i's targets are tokens[starts[i] + 1 : starts[i] + block_size + 1], so window i - 1 has
    # already scored the first starts[i - 1] + block_size - starts[i] targets of window i.
    first = np.zeros(len(starts), dtype=np.int64)
    first[1:] = np.clip(starts[:-1] + block_size - starts[1:], 0, block_size)
    return first


class SlidingWindows:
    """Deterministic windows at ``0, stride, 2*stride, ...`` (and one aligned to the end), in batches.

    ``score_once=True`` sets to -100 each target an earlier window already scored, so a loss summed
    over all batches counts every token once: the evaluation of a whole token stream.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, stride: int | None = None, batch_size: int = 1,
                 *, score_once: bool = False) -> None:
        _check_length(tokens, block_size)
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.tokens, self.block_size, self.batch_size = tokens, block_size, batch_size
        self.stride = block_size if stride is None else stride
        self.score_once = score_once
        self.starts = sliding_starts(len(tokens), block_size, self.stride)
        self.first_scored = scored_from(self.starts, block_size)
        self.position = 0
        """Index of the next window to hand out."""

    def __len__(self) -> int:
        """Number of windows."""
        return len(self.starts)

    @property
    def num_batches(self) -> int:
        return -(-len(self.starts) // self.batch_size)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (x, y), int64 (B, T); the last batch may be smaller. StopIteration after the last window."""
        if self.position >= len(self.starts):
            raise StopIteration
        span = slice(self.position, self.position + self.batch_size)
        x, y = _windows(self.tokens, self.starts[span], self.block_size)
        if self.score_once:
            context = torch.arange(self.block_size)[None, :] < torch.from_numpy(self.first_scored[span])[:, None]
            y = y.masked_fill(context, IGNORE_INDEX)
        self.position = min(self.position + self.batch_size, len(self.starts))
        return x, y

    def __iter__(self):
        while self.position < len(self.starts):
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        position = int(state["position"])
        if not 0 <= position <= len(self.starts):
            raise ValueError(f"sampler position {position} is outside 0..{len(self.starts)}")
        self.position = position
