"""Output head and cross-entropy in one pass over the vocabulary, for training on CPU.

With a 50k vocabulary the head's logits (N x V floats, 400 MB for 2048 tokens) dominate memory
traffic: the usual path writes them, reads them three times for log-softmax, fills a zero
gradient of the same size, and reads it again for the backward, all through fresh allocations.
Here the vocabulary is walked in slices small enough to stay in the CPU's cache:

1. For each slice, ``logits[:, slice] = h @ W[slice].T`` and its log-sum-exp while the slice is hot.
2. For each slice again, ``g = softmax - onehot`` from the stored logits, then ``grad_h += g @ W[slice]``
   and ``grad_W[slice] = g.T @ h`` while ``g`` is hot: each gradient row is written once.

With a logit soft-cap ``z = c * tanh(x / c)`` the slices hold ``z``, and the gradient through the cap,
``1 - (z / c)^2``, multiplies ``g`` slice by slice.

The gradients are computed in the forward and handed back (scaled) in the backward, as
fused linear cross-entropy kernels do on GPU. No library offers this for CPU tensors, hence
this file. The result equals ``F.cross_entropy(h @ W.T, targets)`` to float rounding (tested).
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


class _Workspace:
    """A reused buffer for the logits, so that no 100 MB allocation (and its page faults) recurs each step."""

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None

    def get(self, rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
        numel = rows * cols
        buf = self.buffer
        if buf is None or buf.numel() < numel or buf.dtype != like.dtype or buf.device != like.device:
            buf = self.buffer = torch.empty(numel, dtype=like.dtype, device=like.device)
        return buf[:numel].view(rows, cols)


_workspace = _Workspace()


def _slice_width(rows: int, vocab: int, cache_bytes: int = 8 << 20) -> int:
    # A slice of rows x width floats should fit comfortably in the last-level cache; keep it a
    # multiple of 64 so the matmuls stay efficient.
    width = max(64, (cache_bytes // (4 * max(rows, 1))) // 64 * 64)
    return min(width, vocab)


class LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, cap: float | None) -> torch.Tensor:
        # h: (N, C), weight: (V, C), targets: (N,) with IGNORE_INDEX for positions not scored
        N, _ = h.shape
        V = weight.shape[0]
        valid = targets != IGNORE_INDEX
        n_valid = int(valid.sum())
        safe_targets = torch.where(valid, targets, 0)
        rows = torch.arange(N, device=h.device)
        width = _slice_width(N, V)
        buffer = _workspace.get(1, N * V, h)[0]
        # Slice k of the logits is stored contiguously as (N, width): buffer[N*lo : N*hi].
        slices = [(lo, min(lo + width, V)) for lo in range(0, V, width)]

        lse = torch.full((N,), float("-inf"), dtype=h.dtype, device=h.device)
        target_logits = torch.zeros(N, dtype=h.dtype, device=h.device)
        for lo, hi in slices:
            chunk = buffer[N * lo : N * hi].view(N, hi - lo)
            torch.mm(h, weight[lo:hi].t(), out=chunk)  # (N, w)
            if cap is not None:
                chunk.div_(cap).tanh_().mul_(cap)
            lse = torch.logaddexp(lse, torch.logsumexp(chunk, dim=-1))
            hit = (safe_targets >= lo) & (safe_targets < hi)
            target_logits[hit] = chunk[rows[hit], safe_targets[hit] - lo]
        loss_sum = ((lse - target_logits) * valid).sum()

        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            scale = 1.0 / max(n_valid, 1)
            grad_h = torch.zeros_like(h)
            grad_w = torch.empty_like(weight)
            for lo, hi in slices:
                g = buffer[N * lo : N * hi].view(N, hi - lo)
                through_cap = 1.0 - (g / cap).square() if cap is not None else None  # dz/dx, from z
                g.sub_(lse[:, None]).exp_()  # this slice of the softmax over the full vocabulary
                hit = valid & (safe_targets >= lo) & (safe_targets < hi)
                g[rows[hit], safe_targets[hit] - lo] -= 1.0
                if n_valid < N:
                    g[~valid] = 0.0
                if through_cap is not None:
                    g.mul_(through_cap)
                grad_h.addmm_(g, weight[lo:hi], alpha=scale)  # (N, C)
                torch.mm(g.t(), h, out=grad_w[lo:hi]).mul_(scale)  # (w, C)
            ctx.save_for_backward(grad_h, grad_w)
        return loss_sum / max(n_valid, 1)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_output, grad_w * grad_output, None, None


def linear_cross_entropy_fused(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                               cap: float | None = None) -> torch.Tensor:
    """Mean cross-entropy of ``h @ weight.T`` (soft-capped by ``cap`` where set) against ``targets`` (ignoring
    -100), never holding a logits gradient."""
    return LinearCrossEntropy.apply(h, weight, targets, cap)
