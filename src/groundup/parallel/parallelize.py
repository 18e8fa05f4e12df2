"""Apply the parallel techniques to a model, in the one order that composes (as torchtitan does).

1. tensor parallelism (DTensor ``parallelize_module``): changes the modules' parameters to DTensors
   over the 'tp' mesh dimension, so it must see the plain model first; context parallelism (hooks on the
   model's forward that split each sequence over 'cp', see :mod:`groundup.parallel.apply_cp`);
2. activation checkpointing: wraps blocks, whatever their parameters are;
3. ``torch.compile`` per block: compiles the (possibly TP, possibly checkpointed) block code;
4. data parallelism last: FSDP2 shards over 'dp' on top of TP's DTensors (2-D), or DDP wraps the whole
   model (1-D only: DDP does not compose with DTensor TP); under context parallelism over 'dp' x 'cp'.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from groundup.parallel.apply_ac import apply_ac
from groundup.parallel.apply_compile import apply_compile
from groundup.parallel.config import ParallelConfig
from groundup.parallel.env import DistEnv, ParallelState, build_mesh

log = logging.getLogger(__name__)


def parallelize(model: nn.Module, cfg: ParallelConfig, env: DistEnv, *, compile: bool = False,
                param_dtype: torch.dtype | None = None) -> tuple[nn.Module, ParallelState]:
    """The model to train (maybe wrapped) and the parallel layout; a single process gets AC/compile only."""
    if not env.distributed:
        if cfg.tensor_parallel > 1:
            raise ValueError("parallel.tensor_parallel > 1 needs several processes: launch with torchrun")
        if cfg.context_parallel > 1:
            raise ValueError("parallel.context_parallel > 1 needs several processes: launch with torchrun")
        model = apply_ac(model, cfg.activation_checkpointing, cfg.ac_every)
        if compile:
            model = apply_compile(model)
        return model, ParallelState(env=env)

    tp, cp = cfg.tensor_parallel, cfg.context_parallel
    mesh = build_mesh(env, tp, context_parallel=cp)
    dp_mesh = mesh["dp"]
    strategy = cfg.data_parallel
    if strategy == "auto":
        strategy = "fsdp" if tp > 1 else "ddp"
    if strategy == "ddp" and tp > 1 and dp_mesh.size() * cp > 1:
        raise ValueError("DDP does not compose with tensor parallelism; use parallel.data_parallel=fsdp")

    if tp > 1:  # 1
        from groundup.parallel.apply_tp import apply_tp

        apply_tp(model, mesh["tp"])
    if cp > 1:
        from groundup.parallel.apply_cp import apply_cp

        apply_cp(model, mesh)
    model = apply_ac(model, cfg.activation_checkpointing, cfg.ac_every)  # 2
    if compile:  # 3
        model = apply_compile(model)
    if dp_mesh.size() * cp == 1:  # 4: nothing to replicate over (pure TP)
        strategy = "none"
    elif strategy == "fsdp":
        from groundup.parallel.apply_fsdp import apply_fsdp

        model = apply_fsdp(model, mesh, param_dtype=param_dtype, reshard_after_forward=cfg.fsdp_reshard_after_forward,
                           cpu_offload=cfg.fsdp_cpu_offload)
    else:
        from groundup.parallel.apply_ddp import apply_ddp

        model = apply_ddp(model, mesh, env.device)
    state = ParallelState(env=env, dp_rank=dp_mesh.get_local_rank(), dp_size=dp_mesh.size(), tp_size=tp,
                          cp_size=cp, cp_rank=mesh["cp"].get_local_rank() if cp > 1 else 0,
                          mesh=mesh, data_parallel=strategy)
    log.info("parallel layout: %s x dp=%d, cp=%d, tp=%d", strategy, state.dp_size, cp, tp)
    return model, state


def unwrap(model: nn.Module) -> nn.Module:
    """The Transformer inside a DDP wrapper (FSDP2 and TP modify the module in place)."""
    return model.module if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel) else model
