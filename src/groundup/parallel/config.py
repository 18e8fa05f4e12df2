"""How a run is spread over processes: the ``parallel`` option group of a training stage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(kw_only=True)
class ParallelConfig:
    """Data, sharded-data and tensor parallelism, activation checkpointing (used under torchrun)."""

    data_parallel: Literal["auto", "ddp", "fsdp"] = "auto"
    """How the data-parallel ranks hold the model: 'ddp' (a full replica per rank, gradients all-reduced),
    'fsdp' (FSDP2 fully_shard: parameters, gradients and optimizer state sharded, the ZeRO-3 equivalent),
    'auto' (ddp, or fsdp when tensor parallelism is on)."""
    tensor_parallel: int = 1
    """Ranks that split each attention and MLP layer (DTensor tensor parallelism); the data-parallel degree
    is world_size / tensor_parallel. Keep it within one node (it communicates inside every layer)."""
    fsdp_reshard_after_forward: bool = True
    """FSDP2: free the gathered parameters after forward (ZeRO-3) or keep them until backward (ZeRO-2-like)."""
    fsdp_cpu_offload: bool = False
    """FSDP2: keep sharded parameters, gradients and optimizer state in CPU memory (CPUOffloadPolicy)."""
    mixed_precision: Literal["auto", "fp32", "bf16"] = "auto"
    """FSDP2 MixedPrecisionPolicy: bf16 parameters in compute with fp32 gradient reduction ('auto': bf16 on
    CUDA when the run's precision is bf16, fp32 on CPU)."""
    activation_checkpointing: Literal["none", "full", "selective"] = "none"
    """Recompute activations in backward: 'full' every block, 'selective' every `ac_every`-th block."""
    ac_every: int = 2
    """Selective activation checkpointing: checkpoint one block in this many."""
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """Process-group backend: 'auto' is nccl on CUDA, gloo on CPU."""

    def __post_init__(self) -> None:
        if self.tensor_parallel < 1:
            raise ValueError(f"parallel.tensor_parallel must be >= 1, got {self.tensor_parallel}")
        if self.ac_every < 1:
            raise ValueError(f"parallel.ac_every must be >= 1, got {self.ac_every}")
