"""How a run is spread over processes: the ``parallel`` option group of a training stage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(kw_only=True)
class ParallelConfig:
    """Data, sharded-data, tensor, pipeline, context and expert parallelism, activation checkpointing
    (used under torchrun). The ranks form a device mesh ('pp', 'dp', 'cp', 'tp'), outermost first:
    world_size = pipeline_parallel x dp x context_parallel x tensor_parallel, dp being what is left."""

    data_parallel: Literal["auto", "ddp", "fsdp"] = "auto"
    """How the data-parallel ranks hold the model: 'ddp' (a full replica per rank, gradients all-reduced),
    'fsdp' (FSDP2 fully_shard: parameters, gradients and optimizer state sharded, the ZeRO-3 equivalent),
    'auto' (ddp, or fsdp when tensor parallelism is on)."""
    tensor_parallel: int = 1
    """Ranks that split each attention and MLP layer (DTensor tensor parallelism); the data-parallel degree
    is world_size / tensor_parallel. Keep it within one node (it communicates inside every layer)."""
    pipeline_parallel: int = 1
    """Pipeline stages: the blocks are split into this many stages, each on its own ranks (outermost mesh
    dimension: stages may span nodes)."""
    pipeline_schedule: str = "1F1B"
    """The ``torch.distributed.pipelining`` schedule: 'GPipe', '1F1B' (one stage per rank), 'Interleaved1F1B',
    'LoopedBFS', or the zero-bubble 'InterleavedZeroBubble' and 'ZBVZeroBubble' (two stages per rank)."""
    pipeline_microbatches: int = 0
    """Micro-batches each pipeline step splits a data-parallel rank's rows (batch_size x grad_accum / dp) into
    (0: twice pipeline_parallel, or fewer, down to pipeline_parallel, where the rows do not divide)."""
    pipeline_split: list[int] | None = None
    """Blocks per stage (the user's plan; default: as even as possible, the earlier stages taking the rest).
    Sums to the model's n_layer; one entry per stage (pipeline_parallel x 2 for the two-stage schedules)."""
    context_parallel: int = 1
    """Ranks that split each sequence (ring attention over K/V, head-tail load balancing); the sequence
    length must be divisible by 2 x context_parallel."""
    expert_parallel: int = 1
    """Ranks that split a mixture-of-experts layer's experts (tokens move by all-to-all); the number of
    experts must be divisible by it."""
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
        for name in ("pipeline_parallel", "context_parallel", "expert_parallel"):
            if getattr(self, name) < 1:
                raise ValueError(f"parallel.{name} must be >= 1, got {getattr(self, name)}")
        if self.pipeline_microbatches < 0:
            raise ValueError(f"parallel.pipeline_microbatches must be >= 0, got {self.pipeline_microbatches}")
        if self.ac_every < 1:
            raise ValueError(f"parallel.ac_every must be >= 1, got {self.ac_every}")
