"""The runtime every training stage sets up alike: threads, device and process group, TF32, precision,
the parallel layout, the optimizer, peak FLOP/s for MFU, and the whole model gathered back at the end.

``groundup pretrain`` and every ``groundup finetune`` method call :func:`init_runtime` before building
the model and :func:`parallelize_model` after, so a method never reaches into another stage's module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from groundup.model.config import ModelConfig
from groundup.model.io import resolve_device
from groundup.model.transformer import Transformer
from groundup.parallel.config import ParallelConfig
from groundup.parallel.env import DistEnv, ParallelState, init_distributed
from groundup.parallel.parallelize import parallelize
from groundup.train.optim import OptimConfig, build_optimizer

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Where this process trains and in which precision."""

    env: DistEnv
    """Rank, world size and device (under torchrun the device is this rank's GPU)."""
    bf16: bool
    """Autocast to bf16 ('auto' precision: on CUDA only)."""
    autocast: Callable[[], contextlib.AbstractContextManager]
    """A factory of the forward passes' autocast contexts."""

    @property
    def device(self) -> torch.device:
        return self.env.device

    @property
    def is_main(self) -> bool:
        """The process that writes files (the only one, without torchrun)."""
        return self.env.is_main


def uses_bf16(device: torch.device, precision: str) -> bool:
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def autocast_for(device: torch.device, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of autocast contexts: bf16 on CUDA unless fp32 is asked for; fp32 (no autocast) on CPU."""
    if not uses_bf16(device, precision):
        return lambda: contextlib.nullcontext()
    if device.type == "cpu":
        log.warning("bf16 on CPU: matmuls run far slower than fp32 on CPUs without bf16 units")
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def init_runtime(*, device: str, precision: str, threads: int | None, backend: str = "auto") -> Runtime:
    """Set torch's threads, join torchrun's process group (a no-op for one process), allow TF32 on CUDA."""
    if threads:
        torch.set_num_threads(threads)
    env = init_distributed(resolve_device(device), backend)
    if env.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Runtime(env=env, bf16=uses_bf16(env.device, precision), autocast=autocast_for(env.device, precision))


def parallelize_model(model: nn.Module, rt: Runtime, cfg: ParallelConfig, *,
                      compile: bool = False) -> tuple[nn.Module, ParallelState]:
    """The model spread over torchrun's ranks (DDP, FSDP2, TP; AC and compile for one process too) and the layout.

    FSDP2 keeps its parameters in bf16 when the run autocasts to bf16, unless ``mixed_precision`` says otherwise."""
    fsdp_bf16 = cfg.mixed_precision == "bf16" or (cfg.mixed_precision == "auto" and rt.bf16)
    return parallelize(model, cfg, rt.env, compile=compile, param_dtype=torch.bfloat16 if fsdp_bf16 else None)


def optimizer_for(model: nn.Module, cfg: OptimConfig, parallel: ParallelState) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; foreach, not fused, under tensor or expert parallelism: fused
    AdamW has no DTensor kernel for mixed plain/DTensor parameter lists."""
    plain = parallel.tp_size == 1 and parallel.ep_size == 1
    optim_cfg = cfg if plain else dataclasses.replace(cfg, fused=False)
    return build_optimizer(model, optim_cfg, parallel.env.device.type)


def peak_flops_for(device: torch.device) -> float | None:
    """Peak FLOP/s for MFU: the datasheet's dense bf16 figure of a known GPU; else (a CPU, a GPU not in the
    table) the matmul peak of this machine's cached probe, or one timed now and cached for the next start."""
    from groundup.plan import hardware
    from groundup.probe.cache import measured_peak

    if device.type == "cuda":
        peak = hardware.cuda_peak_flops(torch.cuda.get_device_name(device))
        if peak is not None:
            return peak
    try:
        flops, source = measured_peak(str(device))
    except (RuntimeError, ValueError) as e:  # a format this device cannot run: no MFU rather than a made-up one
        log.warning("no matmul peak for %s (%s): metrics carry no MFU", device, e)
        return None
    log.info("peak for MFU: %.3g FLOP/s, %s", flops, source)
    return flops


def gather_full_model(model: nn.Module, model_cfg: ModelConfig,
                      build: Callable[[], nn.Module] | None = None, *,
                      parallel: ParallelState | None = None) -> nn.Module | None:
    """The whole model, in the model file's layout, on rank 0's CPU (a collective: every rank calls it).

    ``build()`` makes the plain model to load it into (default ``Transformer(model_cfg)``); fine-tuning
    passes one with its classifier head and LoRA adapters. Under pipeline parallelism (``parallel.pipeline``)
    every stage's part is gathered over the 'pp' group."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from groundup.parallel.apply_tp import to_plain_layout
    from groundup.parallel.parallelize import unwrap

    pipeline = parallel.pipeline if parallel is not None else None
    if pipeline is not None:
        from groundup.parallel.apply_pp import gather_stage_states

        part = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
        full = gather_stage_states(part, pipeline.group)  # a collective of each 'pp' group
        if not parallel.is_main:
            full = {}
    else:
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not full:  # ranks other than 0 receive nothing
        return None
    full = to_plain_layout(full, model_cfg, int(getattr(unwrap(model), "tensor_parallel", 1)))
    plain = build() if build is not None else Transformer(model_cfg)
    plain.load_state_dict(full)
    return plain
