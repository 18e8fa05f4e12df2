"""The one scorer: log-probabilities of tokens given their prefix, batch-invariant.

Everything that scores text by likelihood ends here: multiple choice, rolling perplexity and the
lm-evaluation-harness adapter (``groundup.evaluate.lm``), pretraining's held-out loss and bits per byte,
and the server's prompt log-probabilities (``echo`` with ``logprobs``, the way lm-eval's
``local-completions`` scores), so a text gets the same numbers through every one of them.

A request ``(context, continuation)`` is run as ``(context + continuation)[-(max_length + 1):][:-1]`` and
the log-probabilities of the continuation tokens are summed (lm-eval's ``HFLM._loglikelihood_tokens``),
over the model's whole vocabulary.

Batch invariance: a request's score must not depend on which other requests share its batch. Each
sequence is right-padded to a length that depends on its own length only (a multiple of
``PAD_MULTIPLE``), only sequences of the same padded length share a batch, the output head runs on blocks
of exactly ``HEAD_ROWS`` positions, and each request's log-probabilities are summed on their own in
float64. Causal attention means padding on the right never reaches the scored positions. Tests check
equality at batch sizes 1, 7 and 32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from groundup.model.transformer import Transformer, first_tensor

PAD_MULTIPLE = 32
"""Sequences are right-padded to a multiple of this many tokens; equal padded lengths share a batch."""
HEAD_ROWS = 64
"""The output head runs on blocks of exactly this many positions."""


@dataclass(frozen=True)
class ScoreRequest:
    """Score ``continuation`` given ``context`` (token ids); ``context`` must hold at least one token."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]


@dataclass(frozen=True)
class Score:
    """The score of one request."""

    loglikelihood: float
    """Summed natural-log probability of the continuation's tokens."""
    is_greedy: bool
    """Whether every continuation token is the argmax of its distribution (lm-eval's second field)."""
    tokens: int
    """Continuation tokens scored."""


def padded_length(n: int, max_length: int) -> int:
    return min(-(-n // PAD_MULTIPLE) * PAD_MULTIPLE, max_length)


def model_max_length(model: nn.Module) -> int:
    config = getattr(model, "config", None) or model.module.config  # a DDP wrapper holds the model
    return int(config.block_size)


@torch.no_grad()
def score_requests(model: nn.Module, requests: Sequence[ScoreRequest], *, batch_size: int = 16,
                   max_length: int | None = None, device: str | torch.device | None = None,
                   progress: bool = False) -> list[Score]:
    """Log-likelihood of each request's continuation, in the order given; independent of ``batch_size``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    block = model_max_length(model)
    max_length = max_length or block
    if device is None:
        device = first_tensor(model).device
    inputs: list[list[int]] = []
    for i, req in enumerate(requests):
        if not req.context:
            raise ValueError(f"request {i}: empty context (use the EOS token as context to score from the start)")
        if not req.continuation:
            raise ValueError(f"request {i}: empty continuation")
        if len(req.continuation) > max_length:
            raise ValueError(f"request {i}: continuation of {len(req.continuation)} tokens exceeds "
                             f"max_length {max_length}")
        inputs.append(list(req.context + req.continuation)[-(max_length + 1):][:-1])

    # Longest first within each padded length (so a batch's memory peak shows up at once); ties by index.
    # Padded widths depend on the model's context, not on max_length: a sequence gets the same shapes (and so
    # the same bits) whatever window length a caller scores with.
    order = sorted(range(len(requests)), key=lambda i: (-padded_length(len(inputs[i]), block), -len(inputs[i]), i))
    results: list[Score | None] = [None] * len(requests)
    batches: list[list[int]] = []
    for i in order:
        width = padded_length(len(inputs[i]), block)
        if batches and len(batches[-1]) < batch_size and padded_length(len(inputs[batches[-1][0]]), block) == width:
            batches[-1].append(i)
        else:
            batches.append([i])

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(requests), desc="log-likelihood requests", unit="req")
    for batch in batches:
        width = padded_length(len(inputs[batch[0]]), block)
        x = torch.zeros(len(batch), width, dtype=torch.long)
        for row, i in enumerate(batch):
            x[row, : len(inputs[i])] = torch.tensor(inputs[i])
        x = x.to(device)
        rows, cols, targets, owner = [], [], [], []
        for row, i in enumerate(batch):
            n_cont, n_in = len(requests[i].continuation), len(inputs[i])
            rows += [row] * n_cont
            cols += range(n_in - n_cont, n_in)
            targets += requests[i].continuation
            owner += [row] * n_cont
        logprobs = position_logprobs(model, x, torch.tensor(rows), torch.tensor(cols))  # (N, V)
        target_t = torch.tensor(targets, device=logprobs.device)
        picked = logprobs.gather(1, target_t[:, None])[:, 0].double().cpu().numpy()
        greedy = (logprobs.argmax(-1) == target_t).cpu().numpy()
        owner_np = np.asarray(owner)
        for row, i in enumerate(batch):
            mine = owner_np == row
            # math.fsum: the sum of a request's log-probs is exact, so it cannot depend on the batch.
            results[i] = Score(loglikelihood=math.fsum(picked[mine].tolist()), is_greedy=bool(greedy[mine].all()),
                               tokens=int(mine.sum()))
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    return results  # type: ignore[return-value]


def position_logprobs(model: nn.Module, x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the vocabulary at the (row, col) positions only: the head is the costly part."""
    if type(model) is Transformer:  # not wrapped or sharded (FSDP's hooks run on forward only)
        h = model.hidden_states(x)  # (B, T, C)
        picked = h[rows.to(h.device), cols.to(h.device)]  # (N, C)
        # The head runs on fixed blocks of HEAD_ROWS rows (the last one zero-padded): how many rows a
        # batch gathers must not change a row's logits, and a matmul of one row takes another kernel
        # (a matrix-vector product) than a matmul of many, with different rounding.
        n = picked.shape[0]
        padded = picked.new_zeros(-(-n // HEAD_ROWS) * HEAD_ROWS, picked.shape[1])
        padded[:n] = picked
        logits = torch.cat([model.logits(block) for block in padded.split(HEAD_ROWS)])[:n]  # (N, V)
    else:  # any module whose forward gives logits (B, T, V)
        logits = model(x)[rows, cols]
    return F.log_softmax(logits.float(), dim=-1)


@torch.no_grad()
def prompt_logprobs(model: nn.Module, ids: Sequence[int]) -> torch.Tensor:
    """Log-softmax (T - 1, V) of each prompt token's distribution given its prefix: what :func:`score_requests`
    computes for the request ``(ids[:1], ids[1:])``, row for row."""
    n = len(ids) - 1
    width = padded_length(n, model_max_length(model))
    if n < 1 or width < n:
        raise ValueError(f"a prompt of {len(ids)} tokens cannot be scored in a context of {model_max_length(model)}")
    device = first_tensor(model).device
    x = torch.zeros(1, width, dtype=torch.long)
    x[0, :n] = torch.tensor(ids[:-1])
    return position_logprobs(model, x.to(device), torch.zeros(n, dtype=torch.long), torch.arange(n))
