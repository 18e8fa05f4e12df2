"""Expert parallelism: a mixture-of-experts layer's routed experts split over data-parallel ranks.

As in torchtitan, the expert-parallel (EP) group borrows the data-parallel dimension: with dp ranks and EP
degree e (e divides dp), the dp ranks form dp / e groups of e neighbours; rank i of a group holds experts
``[i E/e, (i+1) E/e)`` of every MoE layer, and the groups hold the same experts ('dp_mod_ep' replicas).
Everything else stays replicated (DDP) or FSDP2-sharded over all dp ranks as before.

One MoE forward under EP (:class:`AllToAllDispatch`, the block's ``dispatcher``): the router picks each
token's experts locally and the block sorts the (token, expert) pairs by expert, which also sorts them by
the rank that owns the expert; the ranks swap their per-expert counts (one small all-to-all), the tokens go
to their experts' ranks (``all_to_all_single`` with uneven splits), each rank regroups what it received by
local expert and runs its experts (the block's own grouped-matmul or loop path, on the local shards), and
the results travel back by the reverse all-to-all. Both all-to-alls are differentiable, so backward sends
the gradients of the results to the experts' ranks and those of the inputs back to the tokens' ranks; a
rank whose experts got no token still takes part in both (its empty result stays in the autograd graph).

Parameters: each expert tensor becomes a DTensor ``Shard(0)`` over the 'ep' mesh, so state dicts and DCP
checkpoints see the whole (E, ...) tensor: a checkpoint written at one EP degree loads at another or in one
process, and the gathered model dir is the plain model's. DDP and FSDP2 leave them alone (DDP's ignore
list, FSDP2's ``ignored_params``). Their gradients are finished once per optimizer step by
:func:`finish_moe_step`: summed over the 'dp_mod_ep' replicas and divided by dp. Why 1/dp: each rank's loss is
the mean over its own batch and DDP/FSDP average the other gradients over the dp ranks, while the expert's
gradient arrives already summed over the tokens of every rank of its EP group (the all-to-all's backward);
sum over the replicas and divide by dp, and it is the one-process gradient, as for every other weight.

The loads that DeepSeek-V3's bias balancing reads are counted on each rank's own tokens; the same function
sums them over the data-parallel ranks before the bias moves (with or without EP), so every rank moves its
bias alike and the logged load is that of the global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from groundup.model.moe import Experts, moe_layers


def check_ep(model_cfg, ep: int, dp: int) -> None:
    """Errors naming the setting for an EP degree that cannot split this model over these ranks."""
    if ep == 1:
        return
    if not model_cfg.moe_experts:
        raise ValueError(f"parallel.expert_parallel={ep} needs a mixture-of-experts model (model.moe_experts > 0)")
    if model_cfg.moe_experts % ep:
        raise ValueError(f"model.moe_experts={model_cfg.moe_experts} is not divisible by "
                         f"parallel.expert_parallel={ep}")
    if dp % ep:
        raise ValueError(f"parallel.expert_parallel={ep} must divide the data-parallel degree {dp} "
                         "(world size / (pipeline x context x tensor parallel))")


def ep_mesh(mesh, ep: int):
    """The mesh's 'dp' dimension unflattened into ('dp_mod_ep', 'ep'): EP groups of ``ep`` neighbouring dp
    ranks, and across them the replicas of the same experts."""
    dp = mesh["dp"].size()
    return mesh["dp"]._unflatten(0, (dp // ep, ep), ("dp_mod_ep", "ep"))


class _AllToAll(torch.autograd.Function):
    """``all_to_all_single`` of rows, differentiable: backward sends the gradients back the way they came."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, send: list[int], recv: list[int], group) -> torch.Tensor:
        ctx.send, ctx.recv, ctx.group = send, recv, group
        out = x.new_empty(sum(recv), *x.shape[1:])
        dist.all_to_all_single(out, x.contiguous(), recv, send, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        back = grad.new_empty(sum(ctx.send), *grad.shape[1:])
        dist.all_to_all_single(back, grad.contiguous(), ctx.send, ctx.recv, group=ctx.group)
        return back, None, None, None


def _all_to_all(x: torch.Tensor, send: list[int], recv: list[int], group) -> torch.Tensor:
    """``send[r]`` rows of ``x`` to rank r, ``recv[r]`` rows from it (a collective of ``group``)."""
    return _AllToAll.apply(x, send, recv, group)


class AllToAllDispatch:
    """The MoE block's dispatcher under expert parallelism (see the module docstring)."""

    def __init__(self, group, ep: int, experts: int) -> None:
        self.group, self.ep, self.local = group, ep, experts // ep

    def __call__(self, experts: Experts, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        from torch.distributed.tensor import DTensor
        from torch.func import functional_call

        ep, local = self.ep, self.local
        with torch.no_grad():
            got = torch.empty_like(counts)
            dist.all_to_all_single(got, counts.contiguous(), group=self.group)  # (ep * local,): by source rank
            got = got.view(ep, local)  # got[s, j]: tokens rank s sends to my expert j
            send = counts.view(ep, local).sum(1).tolist()
            recv = got.sum(1).tolist()
            # what arrives is by source rank, then by expert: regroup by local expert (stable: by source within)
            expert_of = torch.arange(local, device=counts.device).repeat(ep).repeat_interleave(got.flatten())
            order = expert_of.argsort(stable=True)
            back = order.argsort()
        received = _all_to_all(x, send, recv, self.group)
        weights = {name: p.to_local() if isinstance(p, DTensor) else p for name, p in experts.named_parameters()}
        y = functional_call(experts, weights, (received[order], got.sum(0)))
        if y.shape[0] == 0:
            # No token for this rank's experts (the router sent them all elsewhere): the experts' loop made y
            # out of nothing. Tie it to the inputs and weights, as on the ranks that got tokens, so that every
            # rank runs the same all-to-alls in backward (a rank skipping one would hang or garble the others).
            y = y + 0 * (received.sum() + sum(w.sum() for w in weights.values()))
        return _all_to_all(y[back], recv, send, self.group)


def expert_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of every MoE layer's routed experts (what expert parallelism shards)."""
    return [p for m in moe_layers(model) for p in m.experts.parameters()]


@torch.no_grad()
def apply_ep(model: nn.Module, mesh) -> nn.Module:
    """Split every MoE layer's experts over ``mesh`` (1-D, the 'ep' dimension) in place; call after tensor
    parallelism and before AC, compile and DDP/FSDP2 (which must then ignore :func:`expert_parameters`)."""
    from torch.distributed.tensor import Shard, distribute_tensor

    ep = mesh.size()
    layers = moe_layers(model)
    if not layers:
        raise ValueError(f"parallel.expert_parallel={ep} needs a mixture-of-experts model (model.moe_experts > 0)")
    for moe in layers:
        E = moe.config.moe_experts
        if E % ep:
            raise ValueError(f"model.moe_experts={E} is not divisible by parallel.expert_parallel={ep}")
        for name, p in list(moe.experts.named_parameters(recurse=False)):
            sharded = distribute_tensor(p.detach(), mesh, [Shard(0)])
            setattr(moe.experts, name, nn.Parameter(sharded, requires_grad=p.requires_grad))
        moe.dispatcher = AllToAllDispatch(mesh.get_group(), ep, E)
    model.expert_parallel = ep
    return model


def _data_groups(parallel) -> list:
    """The process groups over which ranks see different tokens: 'dp', and 'cp' where the mesh has it."""
    names = parallel.mesh.mesh_dim_names or ()
    return [parallel.mesh[name].get_group() for name in ("dp", "cp") if name in names and parallel.mesh[name].size() > 1]


@torch.no_grad()
def finish_moe_step(model: nn.Module, parallel) -> None:
    """After a step's backward passes, before clipping: the MoE loads summed over the ranks that saw different
    tokens, and (under EP) the expert gradients summed over their replicas and scaled by 1/dp. A collective:
    every rank calls it; a no-op for a dense model or one process."""
    if parallel is None or not parallel.distributed or parallel.mesh is None:
        return
    layers = moe_layers(model)
    if not layers:
        return
    loads = torch.stack([m.expert_load for m in layers])
    for group in _data_groups(parallel):
        dist.all_reduce(loads, group=group)
    for m, load in zip(layers, loads, strict=True):
        m.expert_load.copy_(load)
    if parallel.ep_size == 1:
        return
    replicas = parallel.ep_mesh["dp_mod_ep"]
    for p in expert_parameters(model):
        if not p.requires_grad:
            continue
        if p.grad is None:  # this rank's experts got no token all step: a zero gradient, as in one process
            p.grad = torch.zeros_like(p)
        local = p.grad.to_local()
        if replicas.size() > 1:
            dist.all_reduce(local, group=replicas.get_group())
        local.div_(parallel.dp_size)
