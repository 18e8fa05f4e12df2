"""Tensor parallelism for attention and MLP with DTensor ``parallelize_module`` (Megatron-style).

Per block: the input projections (attention ``qkv``, MLP ``fc``) are split by output rows
(ColwiseParallel), the output projections (``proj``) by input columns (RowwiseParallel), so each block
costs one all-reduce in forward and one in backward per sub-layer. Embeddings, norms and the output head
stay replicated.

Fused projections need care. ``qkv`` stacks [q; k; v] rows and SwiGLU's ``fc`` stacks [gate; up]: cut
into contiguous pieces, rank 0 would get all of q and half of k. So before sharding we permute the rows
to [q_0 k_0 v_0 | q_1 k_1 v_1 | ...] (rank r's whole heads of q, k and v side by side), and each rank's
module is told its local head counts. The permutation is a property of the tensor-parallel degree: state
dicts of a TP model hold permuted rows, and :func:`to_plain_layout` / :func:`to_tp_layout` convert (the
checkpoint code does this; checkpoints record their tensor-parallel degree).
"""

from __future__ import annotations

import torch
from torch import nn

from groundup.model.config import ModelConfig


def fused_segments(config: ModelConfig) -> dict[str, list[int]]:
    """Parameter-name suffix -> row sizes of the segments stacked in that fused weight."""
    hd = config.head_dim
    segments = {"attn.qkv": [config.n_head * hd, config.kv_heads * hd, config.kv_heads * hd]}
    if config.mlp == "swiglu":
        segments["mlp.fc"] = [config.mlp_hidden, config.mlp_hidden]
    return segments


def interleave_order(sizes: list[int], tp: int) -> torch.Tensor:
    """Row order that puts piece r of every segment together, for r = 0..tp-1 (weight[order] is TP layout)."""
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    order = []
    for r in range(tp):
        for start, size in zip(starts, sizes, strict=True):
            piece = size // tp
            order.extend(range(start + r * piece, start + (r + 1) * piece))
    return torch.tensor(order, dtype=torch.long)


def _convert(state: dict, config: ModelConfig, tp: int, inverse: bool) -> dict:
    if tp == 1:
        return state
    out = dict(state)
    for suffix, sizes in fused_segments(config).items():
        order = interleave_order(sizes, tp)
        if inverse:
            order = torch.argsort(order)
        for name, value in state.items():
            stem = name.rsplit(".", 1)[0]
            if stem.endswith(suffix) and isinstance(value, torch.Tensor) and value.dim() >= 1:
                out[name] = value[order.to(value.device)]
    return out


def to_tp_layout(state: dict[str, torch.Tensor], config: ModelConfig, tp: int) -> dict[str, torch.Tensor]:
    """A full (plain-layout) state dict with fused rows permuted for ``tp`` ranks."""
    return _convert(state, config, tp, inverse=False)


def to_plain_layout(state: dict[str, torch.Tensor], config: ModelConfig, tp: int) -> dict[str, torch.Tensor]:
    """Undo :func:`to_tp_layout`: the state dict of a TP model, gathered, back in the model file's layout."""
    return _convert(state, config, tp, inverse=True)


def check_tp(config: ModelConfig, tp: int) -> None:
    if config.attention != "mha" and tp > 1:
        raise ValueError(f"tensor_parallel={tp} needs attention='mha': latent attention is not sharded "
                         f"(attention={config.attention!r})")
    problems = [f"{name}={value}" for name, value in (("n_head", config.n_head), ("n_kv_head", config.kv_heads),
                                                       ("mlp_hidden", config.mlp_hidden)) if value % tp]
    if problems:
        raise ValueError(f"tensor_parallel={tp} must divide {', '.join(problems)}")


@torch.no_grad()
def apply_tp(model: nn.Module, tp_mesh) -> nn.Module:
    """Shard every block's attention and MLP over ``tp_mesh`` (1-D); call before FSDP, AC and compile."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    config: ModelConfig = model.config
    tp = tp_mesh.size()
    check_tp(config, tp)
    segments = fused_segments(config)
    for block in model.blocks:
        for suffix, sizes in segments.items():
            module = block.get_submodule(suffix)
            order = interleave_order(sizes, tp).to(module.weight.device)
            module.weight.copy_(module.weight[order])
            if module.bias is not None:
                module.bias.copy_(module.bias[order])
        plan = {"attn.qkv": ColwiseParallel(), "attn.proj": RowwiseParallel(),
                "mlp.fc": ColwiseParallel(), "mlp.proj": RowwiseParallel()}
        parallelize_module(block, tp_mesh, plan)
        # Each rank now computes its own heads: the attention's view/reshape use the local counts.
        block.attn.n_head = config.n_head // tp
        block.attn.n_kv_head = config.kv_heads // tp
    model.tensor_parallel = tp  # read by the checkpoint code to convert layouts
    return model
