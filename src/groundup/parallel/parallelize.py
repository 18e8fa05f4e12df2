"""Apply the parallel techniques to a model, in the one order that composes (as torchtitan does).

1. tensor parallelism (DTensor ``parallelize_module``): changes the modules' parameters to DTensors
   over the 'tp' mesh dimension, so it must see the plain model first; context parallelism (hooks on the
   model's forward that split each sequence over 'cp', see :mod:`groundup.parallel.apply_cp`); expert
   parallelism (the MoE experts as DTensors split over the 'ep' ranks within 'dp', tokens moved by
   all-to-all), whose parameters data parallelism leaves alone;
2. activation checkpointing: wraps blocks, whatever their parameters are;
3. ``torch.compile`` per block: compiles the (possibly TP, possibly checkpointed) block code;
4. data parallelism last: FSDP2 shards over 'dp' on top of TP's DTensors (2-D), or DDP wraps the whole
   model (1-D only: DDP does not compose with DTensor TP); under context parallelism over 'dp' x 'cp'.

Pipeline parallelism comes first of all (0): each rank keeps only its stages' part of the model (see
:mod:`groundup.parallel.apply_pp`), 1-3 apply to that part, and FSDP2 shards each stage's module over 'dp'
(the 'pp' dimension is outermost: stages exchange activations only). The pipeline (its stages and schedule) is
``ParallelState.pipeline``; the returned model is the rank's part, whose parameter names are the full model's.
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
        if cfg.expert_parallel > 1:
            raise ValueError(f"parallel.expert_parallel={cfg.expert_parallel} needs several processes: "
                             "launch with torchrun")
        if cfg.pipeline_parallel > 1:
            raise ValueError("parallel.pipeline_parallel > 1 needs several processes: launch with torchrun")
        model = apply_ac(model, cfg.activation_checkpointing, cfg.ac_every)
        if compile:
            model = apply_compile(model)
        return model, ParallelState(env=env)

    tp, cp, pp = cfg.tensor_parallel, cfg.context_parallel, cfg.pipeline_parallel
    mesh = build_mesh(env, tp, context_parallel=cp, pipeline_parallel=pp)
    dp_mesh = mesh["dp"]
    strategy = cfg.data_parallel
    if strategy == "auto":
        strategy = "fsdp" if tp > 1 or pp > 1 else "ddp"
    if strategy == "ddp" and tp > 1 and dp_mesh.size() * cp > 1:
        raise ValueError("DDP does not compose with tensor parallelism; use parallel.data_parallel=fsdp")
    if strategy == "ddp" and pp > 1 and dp_mesh.size() > 1:
        raise ValueError("parallel.data_parallel=ddp does not compose with pipeline parallelism here; use "
                         "parallel.data_parallel=fsdp")

    pipeline, stages = None, [model]
    if pp > 1:  # 0
        from groundup.parallel.apply_pp import Pipeline, needs_tokens, rank_part, stage_layout

        layout = stage_layout(model.config, pp, mesh["pp"].get_local_rank(), cfg.pipeline_schedule,
                              cfg.pipeline_split)
        model = rank_part(model, layout)
        pipeline = Pipeline(layout=layout, modules=[], group=mesh["pp"].get_group(), device=env.device,
                            microbatches=cfg.pipeline_microbatches, pass_tokens=needs_tokens(model.config))
    if tp > 1:  # 1
        from groundup.parallel.apply_tp import apply_tp

        apply_tp(model, mesh["tp"])
    if cp > 1:
        from groundup.parallel.apply_cp import apply_cp

        apply_cp(model, mesh)
    ep, ep_mesh, ignored = cfg.expert_parallel, None, []
    if ep > 1:  # 1b
        from groundup.parallel.apply_ep import apply_ep, check_ep, expert_parameters
        from groundup.parallel.apply_ep import ep_mesh as build_ep_mesh

        check_ep(model.config, ep, dp_mesh.size())
        if len(mesh.mesh_dim_names) > 1:
            raise ValueError(f"parallel.expert_parallel={ep} composes with data parallelism only (DDP or FSDP2), "
                             f"not with the mesh {dict(zip(mesh.mesh_dim_names, mesh.shape, strict=True))}")
        ep_mesh = build_ep_mesh(mesh, ep)
        apply_ep(model, ep_mesh["ep"])
        ignored = expert_parameters(model)
    model = apply_ac(model, cfg.activation_checkpointing, cfg.ac_every)  # 2
    if compile:  # 3
        model = apply_compile(model)
    if pipeline is not None:  # 1-3 replaced the rank's blocks (AC wrappers): the stages take them again
        from groundup.parallel.apply_pp import stage_modules

        stages = stage_modules(model, pipeline.layout)
    if dp_mesh.size() * cp == 1:  # 4: nothing to replicate over (pure TP)
        strategy = "none"
    elif strategy == "fsdp":
        from groundup.parallel.apply_fsdp import apply_fsdp

        stages = [apply_fsdp(stage, mesh, param_dtype=param_dtype, reshard_after_forward=cfg.fsdp_reshard_after_forward,
                             cpu_offload=cfg.fsdp_cpu_offload, ignored_params=ignored) for stage in stages]
        if pipeline is None:
            model = stages[0]
    else:
        from groundup.parallel.apply_ddp import apply_ddp

        model = apply_ddp(model, mesh, env.device, ignored_params=ignored)
    if pipeline is not None:
        pipeline.modules = stages
    state = ParallelState(env=env, dp_rank=dp_mesh.get_local_rank(), dp_size=dp_mesh.size(), tp_size=tp,
                          cp_size=cp, cp_rank=mesh["cp"].get_local_rank() if cp > 1 else 0,
                          ep_size=ep, ep_mesh=ep_mesh, mesh=mesh, data_parallel=strategy, pipeline=pipeline,
                          pp_size=pp, pp_rank=mesh["pp"].get_local_rank() if pp > 1 else 0)
    log.info("parallel layout: %s x dp=%d, cp=%d, tp=%d, pp=%d, ep=%d", strategy, state.dp_size, cp, tp, pp, ep)
    return model, state


def unwrap(model: nn.Module) -> nn.Module:
    """The Transformer inside a DDP wrapper (FSDP2 and TP modify the module in place)."""
    return model.module if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel) else model
