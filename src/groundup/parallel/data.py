"""Each data-parallel rank reads its own micro-batches of one global stream.

The global stream is :class:`~groundup.tokens.datasets.RandomWindows`'s numbered batches. At each
micro-batch, data-parallel rank r of R takes batch ``position + r`` and every rank advances the shared
position by R. One process with accumulation k and R processes with accumulation k / R therefore train
on exactly the same batches per optimizer step, and the sampler's state is the global position alone,
so a checkpoint taken on 4 ranks resumes on 2 (or 1) in the same place of the stream.
"""

from __future__ import annotations

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
