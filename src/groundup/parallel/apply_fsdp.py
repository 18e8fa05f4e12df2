"""Sharded data parallelism with FSDP2 (``fully_shard``): the ZeRO-3 equivalent on DTensor.

Every transformer block is its own FSDP unit (its parameters are gathered just before it runs and
freed after), then the root takes what is left (embeddings, final norm, head). Runs on CPU with gloo
in torch 2.13 (tested) as on CUDA with NCCL.

LoRA (and any partly frozen model): FSDP2 flattens nothing, each parameter stays its own DTensor, so
frozen and trainable weights in one unit do not share a flat buffer the way FSDP1's did (the memory
blow-up of litgpt #1538: gradients allocated for the whole flat buffer). groundup's ``LoRALinear`` keeps
``lora_A`` / ``lora_B`` as parameters beside its frozen ``weight``, so they are sharded in their block's
unit: one all-gather brings a block's base weights and adapters, only the adapters get gradients to
reduce-scatter, and the optimizer only sees (and keeps state for) parameters with ``requires_grad``
(tested by ``tests/parallel/test_parallel_finetune.py``). An implementation with adapter *modules* can
shard them as units of their own first (:func:`lora_units` finds them by the hook below), keeping their
small collectives apart from the big frozen gathers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

LORA_MODULE_HOOK: Callable[[nn.Module], bool] | None = None
"""Set by a LoRA implementation: returns True for a module holding only trainable adapter weights
(e.g. ``lambda m: isinstance(m, LoRALinear)``). Such modules become FSDP units of their own."""


def lora_units(model: nn.Module) -> list[nn.Module]:
    """Modules that hold trainable adapter weights (by :data:`LORA_MODULE_HOOK`, else by name 'lora_')."""
    found = []
    for name, module in model.named_modules():
        if LORA_MODULE_HOOK is not None:
            if LORA_MODULE_HOOK(module):
                found.append(module)
        elif name.rsplit(".", 1)[-1].startswith("lora_") and any(p.requires_grad for p in module.parameters()):
            found.append(module)
    return found


def mixed_precision_policy(param_dtype: torch.dtype | None):
    """bf16 parameters for compute, fp32 gradient reduction (summing many bf16 gradients loses bits)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if param_dtype is None:
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)


def apply_fsdp(model: nn.Module, mesh, *, param_dtype: torch.dtype | None = None, reshard_after_forward: bool = True,
               cpu_offload: bool = False, ignored_params=()) -> nn.Module:
    """Shard ``model`` over the mesh's 'dp' dimension in place (blocks, adapters, then the root); over 'dp' x
    'cp' under context parallelism (its ranks hold the same parameters). All but ``ignored_params`` (expert
    parallelism's sharded experts, left as they are)."""
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    from groundup.parallel.apply_cp import data_mesh

    dp_mesh = data_mesh(mesh) if mesh is not None and mesh.mesh_dim_names and "dp" in mesh.mesh_dim_names else mesh
    kwargs = {"mesh": dp_mesh, "mp_policy": mixed_precision_policy(param_dtype),
              "offload_policy": CPUOffloadPolicy() if cpu_offload else OffloadPolicy()}
    if ignored_params:
        kwargs["ignored_params"] = set(ignored_params)
    for unit in lora_units(model):
        fully_shard(unit, reshard_after_forward=reshard_after_forward, **kwargs)
    blocks = list(model.blocks)
    for i, block in enumerate(blocks):
        # The last block's parameters are needed again right away by backward: keep them gathered.
        fully_shard(block, reshard_after_forward=reshard_after_forward and i < len(blocks) - 1, **kwargs)
    fully_shard(model, reshard_after_forward=reshard_after_forward, **kwargs)
    return model
