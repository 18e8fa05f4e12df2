"""Negative log-likelihood of a token stream with sliding windows; perplexity and bits per byte.

Definitions follow lm-evaluation-harness: perplexity = exp(total NLL / tokens), bits per
byte = total NLL / (ln 2 * UTF-8 bytes of the text). With a stride below the window, every
window after the first scores only its last ``stride`` targets, so each token is scored once
and with at least ``seq_len - stride`` tokens of context.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def window_starts(n_tokens: int, seq_len: int, stride: int) -> list[int]:
    """Window starts covering targets 1..n_tokens-1; the last window is aligned to the end."""
    if seq_len <= 0 or not 0 < stride <= seq_len:
        raise ValueError(f"need 0 < stride <= seq_len, got stride={stride}, seq_len={seq_len}")
    last = max(n_tokens - 1 - seq_len, 0)
    starts = list(range(0, last + 1, stride))
    if starts[-1] != last:
        starts.append(last)
    return starts


def scored_windows(tokens: np.ndarray, seq_len: int, stride: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(inputs, targets) per window; targets already scored by an earlier window are -100."""
    n = len(tokens)
    if n < 2:
        raise ValueError(f"need at least 2 tokens to score, got {n}")
    scored_until = 0  # targets at positions < scored_until (in the token stream) are done
    for start in window_starts(n, seq_len, stride):
        end = min(start + seq_len, n - 1)
        x = np.asarray(tokens[start:end], dtype=np.int64)
        y = np.asarray(tokens[start + 1 : end + 1], dtype=np.int64).copy()
        first_new = max(scored_until - (start + 1), 0)
        y[:first_new] = -100
        scored_until = end + 1
        yield x, y


@dataclass
class NLL:
    total: float
    """Summed negative log-likelihood in nats."""
    tokens: int
    """Tokens scored."""

    @property
    def loss(self) -> float:
        return self.total / max(self.tokens, 1)

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    def bits_per_byte(self, n_bytes: int) -> float:
        return self.total / (math.log(2) * n_bytes)


@torch.no_grad()
def token_nll(model: nn.Module, tokens: np.ndarray, *, seq_len: int, stride: int | None = None,
              batch_size: int = 8, max_windows: int | None = None, device: str | torch.device = "cpu") -> NLL:
    """Summed NLL of ``tokens`` under ``model`` (logits from ``model(x)``), each target scored once."""
    stride = stride or seq_len
    total, count = 0.0, 0
    batch_x: list[np.ndarray] = []
    batch_y: list[np.ndarray] = []

    def flush() -> None:
        nonlocal total, count
        width = max(len(x) for x in batch_x)
        xs = torch.zeros(len(batch_x), width, dtype=torch.long)
        ys = torch.full((len(batch_x), width), -100, dtype=torch.long)
        for i, (x, y) in enumerate(zip(batch_x, batch_y, strict=True)):
            xs[i, : len(x)] = torch.from_numpy(x)
            ys[i, : len(y)] = torch.from_numpy(y)
        xs, ys = xs.to(device), ys.to(device)
        logits = model(xs).float()  # (B, T, V)
        nll = F.cross_entropy(logits.flatten(0, 1), ys.flatten(), ignore_index=-100, reduction="sum")
        total += float(nll)
        count += int((ys != -100).sum())
        batch_x.clear()
        batch_y.clear()

    for i, (x, y) in enumerate(scored_windows(tokens, seq_len, stride)):
        if max_windows is not None and i >= max_windows:
            break
        batch_x.append(x)
        batch_y.append(y)
        if len(batch_x) == batch_size:
            flush()
    if batch_x:
        flush()
    return NLL(total, count)
