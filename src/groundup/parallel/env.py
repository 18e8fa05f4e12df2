"""The process group and device mesh from torchrun's environment, and the little the loop needs of them."""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass
class DistEnv:
    """Where this process stands: rank, world size, local rank (the GPU index on its node), device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or (dist.is_available() and dist.is_initialized())

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True under torchrun / torch.distributed.run / srun with the variables set (RANK, WORLD_SIZE, ...)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: torch.device, backend: str = "auto", timeout_minutes: float = 30.0) -> DistEnv:
    """Join the process group torchrun describes (env:// rendezvous); a no-op for a plain single process.

    On CUDA each process takes GPU ``LOCAL_RANK`` and the backend is NCCL; on CPU it is gloo. A group
    someone already initialized (a test, a notebook) is reused as it is.
    """
    if not dist.is_available() or not (launched_by_torchrun() or dist.is_initialized()):
        return DistEnv(device=device)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        chosen = backend if backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
        kwargs: dict[str, Any] = {"backend": chosen, "timeout": datetime.timedelta(minutes=timeout_minutes)}
        if device.type == "cuda":
            kwargs["device_id"] = device  # eager NCCL communicator creation, bound to this GPU
        dist.init_process_group(**kwargs)
    env = DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=device)
    log.info("rank %d of %d on %s (%s)", env.rank, env.world_size, device, dist.get_backend())
    return env


@dataclass
class ParallelState:
    """What the training loop needs to know of the parallel layout: the data-parallel rank and size (ranks of
    one tensor-parallel group see the same data), how to skip the gradient sync of a micro-batch, and the mesh."""

    env: DistEnv
    dp_rank: int = 0
    dp_size: int = 1
    tp_size: int = 1
    pp_size: int = 1
    pp_rank: int = 0
    cp_size: int = 1
    cp_rank: int = 0
    ep_size: int = 1
    ep_mesh: Any = None
    """Expert parallelism: the 'dp' ranks as ('dp_mod_ep', 'ep') (see :mod:`groundup.parallel.apply_ep`)."""
    mesh: Any = None
    """The DeviceMesh, dims a subsequence of ('pp', 'dp', 'cp', 'tp') ('dp' always); None for one process."""
    data_parallel: str = "none"
    """'ddp', 'fsdp' or 'none' (what wraps the model)."""
    pipeline: Any = None
    """Under pipeline parallelism, this rank's stages and their schedule (:class:`groundup.parallel.apply_pp.Pipeline`)."""

    @property
    def distributed(self) -> bool:
        return self.env.distributed

    @property
    def is_main(self) -> bool:
        return self.env.is_main

    def sync_gradients(self, model: torch.nn.Module, last_micro_batch: bool):
        """A context for one micro-batch's backward: gradient communication only on the last one of a step."""
        if self.data_parallel == "ddp" and not last_micro_batch:
            return model.no_sync()
        if self.data_parallel == "fsdp":
            # FSDP2 keeps unsharded gradients between micro-batches when the sync is off: less communication,
            # more memory. Reduce-scatter on the last one only.
            model.set_requires_gradient_sync(last_micro_batch)
        return contextlib.nullcontext()

    def mean(self, value: float) -> float:
        """The mean of a float over all ranks (the same on every rank afterwards)."""
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=_collective_device(self.env.device))
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item()) / dist.get_world_size()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def _collective_device(device: torch.device) -> torch.device:
    return device if device.type == "cuda" else torch.device("cpu")


def mesh_shape(world_size: int, *, pipeline_parallel: int = 1, context_parallel: int = 1,
               tensor_parallel: int = 1) -> dict[str, int]:
    """The mesh's dimensions, outermost first: 'pp', 'dp', 'cp', 'tp' (those of size 1 left out, but 'dp').

    The data-parallel degree is what the others leave of the world; a product that does not divide the
    world size is an error naming the settings."""
    inner = pipeline_parallel * context_parallel * tensor_parallel
    if world_size % inner:
        raise ValueError(
            f"parallel: pipeline_parallel={pipeline_parallel} x context_parallel={context_parallel} x "
            f"tensor_parallel={tensor_parallel} = {inner} does not divide the world size {world_size}")
    dims = {"pp": pipeline_parallel, "dp": world_size // inner, "cp": context_parallel, "tp": tensor_parallel}
    return {name: size for name, size in dims.items() if size > 1 or name == "dp"}


def build_mesh(env: DistEnv, tensor_parallel: int = 1, *, pipeline_parallel: int = 1, context_parallel: int = 1):
    """A DeviceMesh of world_size ranks with dims ('pp', 'dp', 'cp', 'tp') (see :func:`mesh_shape`), tp
    innermost so the ranks of a tensor-parallel group are neighbours (the same node under torchrun's rank
    order), pp outermost (stages exchange only activations, so they may span nodes)."""
    from torch.distributed.device_mesh import init_device_mesh

    dims = mesh_shape(env.world_size, pipeline_parallel=pipeline_parallel, context_parallel=context_parallel,
                      tensor_parallel=tensor_parallel)
    return init_device_mesh(env.device.type, tuple(dims.values()), mesh_dim_names=tuple(dims))
