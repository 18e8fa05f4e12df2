"""Each data-parallel rank reads its own micro-batches of one global stream.

The global stream is :class:`~groundup.tokens.datasets.RandomWindows`'s numbered batches. At each
micro-batch, data-parallel rank r of R takes batch ``position + r`` and every rank advances the shared
position by R. One process with accumulation k and R processes with accumulation k / R therefore train
on exactly the same batches per optimizer step, and the sampler's state is the global position alone,
so a checkpoint taken on 4 ranks resumes on 2 (or 1) in the same place of the stream. Under context
parallelism the ranks of one data-parallel index read the same batches, and each keeps its share of every
sequence (:mod:`groundup.parallel.apply_cp`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class RankBatches:
    """A view of a numbered-batch sampler (``batch(k)``, ``batches``) for data-parallel rank ``rank`` of ``size``."""

    def __init__(self, sampler, rank: int, size: int) -> None:
        if not 0 <= rank < size:
            raise ValueError(f"rank {rank} is outside 0..{size - 1}")
        self.sampler, self.rank, self.size = sampler, rank, size

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.sampler.batch(self.sampler.batches + self.rank)
        self.sampler.batches += self.size
        return batch

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()  # the global position: the same on every rank

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)


def spread_batches(parallel, sizes: list[int], compute: Callable[[int], torch.Tensor],
                   dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """``[compute(k).to(dtype) for k in range(len(sizes))]``, each 1-D of ``sizes[k]`` numbers, with the work
    shared by the data-parallel ranks: rank r computes batches r, r + dp, ... and one sum over the ranks
    hands every rank all the results (each entry is one rank's value plus zeros: exactly that value).

    For scoring a fixed set (held-out data, DPO's reference) once rather than on every rank. Every rank
    runs the same number of forwards (a rank short of a batch recomputes batch 0 and drops it), as FSDP2
    and tensor parallelism need all ranks of a group in each forward. ``parallel`` None or one rank:
    a plain loop.
    """
    if parallel is None or not parallel.distributed or parallel.dp_size == 1:
        return [compute(k).detach().cpu().to(dtype) for k in range(len(sizes))]
    if not sizes:
        return []
    import torch.distributed as dist

    dp, rank = parallel.dp_size, parallel.dp_rank
    offsets = [0]
    for size in sizes:
        offsets.append(offsets[-1] + size)
    device = parallel.env.device if parallel.env.device.type == "cuda" else torch.device("cpu")
    flat = torch.zeros(offsets[-1], dtype=torch.float64, device=device)  # float64 holds float32 values exactly
    for first in range(0, len(sizes), dp):
        k = first + rank
        if k >= len(sizes):
            compute(0)
            continue
        value = compute(k)
        if value.shape != (sizes[k],):
            raise ValueError(f"batch {k}: expected {sizes[k]} values, got shape {tuple(value.shape)}")
        flat[offsets[k]:offsets[k + 1]] = value.detach().to(dtype).to(device, torch.float64)
    group = parallel.mesh["dp"].get_group() if parallel.mesh is not None else None
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    return [flat[offsets[k]:offsets[k + 1]].cpu().to(dtype) for k in range(len(sizes))]
