"""Context parallelism: each training sequence is split over the mesh's 'cp' ranks.

**Layout (head-tail load balancing).** A sequence of T tokens is cut into 2 x cp chunks of s = T / (2 cp);
rank r holds chunks r and 2 cp - 1 - r. Under causal attention an early chunk is cheap (few keys) and a late
one dear, so pairing the r-th from the front with the r-th from the back gives every rank the same work.
Every rank of one data-parallel index reads the same batch (:class:`groundup.parallel.data.RankBatches`
numbers batches by the 'dp' rank alone) and keeps its 2 s columns of it.

**Attention.** Queries stay local; each layer's keys and values are all-gathered over the 'cp' group (one
collective for K and V together, the key heads only under GQA) and put back in sequence order, and the
local queries attend to them under a mask built from *global* positions: causal, the sliding window where
the model has one, document-causal under ``doc_mask``. Backward is autograd through the gather: the
gradients of the whole K/V are reduce-scattered back to the ranks that computed them. Per layer and
micro-batch that moves (cp - 1) / cp of the sequence's K/V in forward and as much in backward (what a ring
moves too), and each rank holds the whole sequence's K/V for backward (O(T) per layer; a ring with online
softmax would hold two chunks, at the price of a hand-written backward). Attention's FLOPs are split evenly.

The model file stays free of distributed code: the model's own KV-cache interface
(:class:`groundup.model.transformer.KVCacheStep`: each token at its own position, attending to the keys and
values the object hands back under its mask) is exactly what a CP rank needs, so :class:`SequenceShard`
implements it and a forward pre-hook on the model splits the batch and passes one in. RoPE (and learned
positions) read the global positions from it. The attention scores are (2 s) x T per rank: 1 / cp of them.

**Loss.** Rank r's forward returns ``cp x (sum of its tokens' losses) / (targets of the whole batch)``: the
mean over the cp ranks (what the step logs, and what DDP/FSDP's gradient averaging over dp x cp computes) is
the whole sequence's mean loss and gradient, ignored (-100) targets included.

**What runs whole.** Forwards without targets, in eval mode or with a KV cache (evaluation, generation, a
loss computed from logits outside the model) are not split: every CP rank runs them whole, which is exact
(parameters are whole, or gathered by FSDP on every rank alike) and costs cp x the compute.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

IGNORE_INDEX = -100
"""Targets the model's loss ignores."""


def check_sequence_length(seq_len: int, context_parallel: int) -> None:
    """A clear error unless ``seq_len`` splits into 2 x context_parallel equal chunks."""
    if context_parallel > 1 and seq_len % (2 * context_parallel):
        raise ValueError(f"seq_len {seq_len} must be divisible by 2 x parallel.context_parallel = "
                         f"{2 * context_parallel} (head-tail load balancing cuts each sequence into that many chunks)")


def check_model(config) -> None:
    """Refuse the model options context parallelism does not compute exactly, naming the option."""
    if config.attention_dropout:
        raise ValueError(f"parallel.context_parallel > 1 does not apply attention_dropout "
                         f"({config.attention_dropout}); set model.attention_dropout=0")
    if config.moe_experts:
        raise ValueError(f"parallel.context_parallel > 1 does not support a mixture of experts (model.moe_experts="
                         f"{config.moe_experts}): its balancing (auxiliary and z losses, bias updates) would see each "
                         "rank's share of the sequence, not the sequence")


def check_mesh(mesh) -> None:
    """Refuse the layouts context parallelism does not compose with, naming the setting."""
    if "pp" in mesh.mesh_dim_names:
        raise ValueError("parallel.context_parallel > 1 does not compose with parallel.pipeline_parallel > 1 "
                         "(the sequence is split at the model's forward, which a pipeline stage does not run)")


def local_positions(seq_len: int, cp: int, rank: int, device: torch.device | None = None) -> torch.Tensor:
    """The global positions rank ``rank`` of ``cp`` holds: chunks ``rank`` and ``2 cp - 1 - rank`` of 2 cp."""
    check_sequence_length(seq_len, cp)
    s = seq_len // (2 * cp)
    head = torch.arange(rank * s, (rank + 1) * s, device=device)
    tail = torch.arange((2 * cp - 1 - rank) * s, (2 * cp - rank) * s, device=device)
    return torch.cat((head, tail))


def to_sequence_order(parts: torch.Tensor) -> torch.Tensor:
    """(cp, ..., 2 s, d), rank-major head-tail pieces -> (..., 2 cp s, d) in sequence order."""
    cp, s = parts.shape[0], parts.shape[-2] // 2
    heads = [parts[j, ..., :s, :] for j in range(cp)]
    tails = [parts[j, ..., s:, :] for j in reversed(range(cp))]
    return torch.cat(heads + tails, dim=-2)


def to_rank_order(full: torch.Tensor, cp: int) -> torch.Tensor:
    """Inverse of :func:`to_sequence_order`: (..., T, d) -> (cp, ..., 2 s, d)."""
    s = full.shape[-2] // (2 * cp)
    pieces = [torch.cat((full[..., j * s:(j + 1) * s, :], full[..., (2 * cp - 1 - j) * s:(2 * cp - j) * s, :]), dim=-2)
              for j in range(cp)]
    return torch.stack(pieces)


class _GatherSequence(torch.autograd.Function):
    """All-gather of each rank's head-tail share (..., 2 s, d) into the whole sequence (..., T, d); backward
    reduce-scatters the gradient (every rank's queries contributed to every key's gradient)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group, cp: int) -> torch.Tensor:
        ctx.group, ctx.cp, ctx.shape = group, cp, x.shape
        x = x.contiguous()
        out = torch.empty((cp * x.numel(),), dtype=x.dtype, device=x.device)
        dist.all_gather_into_tensor(out, x.view(-1), group=group)
        return to_sequence_order(out.view(cp, *x.shape))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        parts = to_rank_order(grad, ctx.cp).contiguous()
        out = torch.empty(ctx.shape, dtype=grad.dtype, device=grad.device)
        dist.reduce_scatter_tensor(out.view(-1), parts.view(-1), op=dist.ReduceOp.SUM, group=ctx.group)
        return out, None, None


def gather_sequence(x: torch.Tensor, group, cp: int) -> torch.Tensor:
    """This rank's head-tail share of a sequence (..., 2 s, d) -> the whole sequence (..., T, d), differentiably."""
    return _GatherSequence.apply(x, group, cp)


class SequenceShard:
    """One forward's view of the sequence on a CP rank, in the model's KV-cache interface
    (:class:`groundup.model.transformer.KVCacheStep`).

    ``positions`` (B, 2 s): the global positions of the local tokens. :meth:`update` returns the whole
    sequence's keys and values, gathered over the group, and the mask (1 or B, 1, 2 s, T) of the ones each
    local query sees: causal by global position, within the sliding window, within its document.
    """

    def __init__(self, positions: torch.Tensor, batch: int, seq_len: int, group, cp: int, *,
                 window: int | None = None, segments: torch.Tensor | None = None) -> None:
        self.group, self.cp = group, cp
        self.positions = positions.expand(batch, -1)
        keys = torch.arange(seq_len, device=positions.device)
        distance = positions[:, None] - keys[None, :]  # (2 s, T)
        mask = distance >= 0
        if window is not None and window < seq_len:
            mask = mask & (distance < window)
        if segments is not None:  # (B, T): the document of each position
            mask = mask & (segments[:, positions, None] == segments[:, None, :])  # (B, 2 s, T)
        self.mask = mask[None, None] if mask.dim() == 2 else mask[:, None]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        kv = gather_sequence(torch.stack((k, v)), self.group, self.cp)  # one collective for both
        return kv[0], kv[1], self.mask


class ContextParallel:
    """The hooks :func:`apply_cp` puts on the model: split a training forward's batch, scale its loss."""

    def __init__(self, model: nn.Module, cp_mesh) -> None:
        self.model, self.group = model, cp_mesh.get_group()
        self.size, self.rank = cp_mesh.size(), cp_mesh.get_local_rank()
        self.scale: float | None = None

    def pre_forward(self, module: nn.Module, args: tuple, kwargs: dict):
        names = ("idx", "targets")
        given = {**dict(zip(names, args, strict=False)), **kwargs}
        idx, targets = given.get("idx"), given.get("targets")
        self.scale = None
        if not module.training or targets is None or given.get("cache") is not None:
            return None  # run whole on every CP rank (see the module's docstring)
        B, T = idx.shape
        if T % (2 * self.size):
            raise ValueError(f"a sequence of {T} tokens must be divisible by 2 x parallel.context_parallel = "
                             f"{2 * self.size} (head-tail load balancing cuts each sequence into that many chunks)")
        positions = local_positions(T, self.size, self.rank, idx.device)
        segments = given.pop("segments", None)
        shard = SequenceShard(positions, B, T, self.group, self.size, window=module.config.sliding_window,
                              segments=segments)
        local_targets = targets[:, positions]
        mine = (local_targets != IGNORE_INDEX).sum()
        total = mine.clone()
        dist.all_reduce(total, group=self.group)  # the batch's targets, over the sequence's ranks
        mine, total = int(mine), int(total)
        if mine == 0 and total > 0:
            # A rank without a target still runs (its K/V serve the others, and backward's collectives need
            # it): one stand-in target keeps its loss finite, and a zero weight takes it out.
            local_targets = local_targets.clone()
            local_targets[0, 0] = 0
        # Equal shares (every target counted): exactly 1, and the loss is left bit for bit as computed.
        self.scale = self.size * mine / total if total else float("nan")
        rest = {key: value for key, value in given.items() if key not in names}
        return (idx[:, positions],), {**rest, "targets": local_targets, "cache": shard}

    def post_forward(self, module: nn.Module, args: tuple, kwargs: dict, output):
        scale, self.scale = self.scale, None
        if scale is None or scale == 1.0:
            return output
        return output * scale


def apply_cp(model: nn.Module, mesh) -> nn.Module:
    """Split the model's training forwards over the mesh's 'cp' dimension (in place; call before DDP/FSDP
    wrap the model). Also flattens 'dp' x 'cp' into 'dp_cp', the ranks that replicate (DDP) or shard (FSDP)
    the parameters: CP ranks hold the same parameters and their gradients are averaged with the dp ranks'."""
    check_model(model.config)
    check_mesh(mesh)
    mesh["dp", "cp"]._flatten("dp_cp")
    cp = ContextParallel(model, mesh["cp"])
    model.register_forward_pre_hook(cp.pre_forward, with_kwargs=True)
    model.register_forward_hook(cp.post_forward, with_kwargs=True)
    return model


def data_mesh(mesh):
    """The ranks a model is replicated or sharded over: 'dp', or 'dp' x 'cp' flattened under context parallelism."""
    if mesh is None or not mesh.mesh_dim_names:
        return mesh
    return mesh["dp_cp"] if "cp" in mesh.mesh_dim_names else mesh["dp"]
