"""The mixture-of-experts feed-forward block: a router, routed experts, shared experts, dropless dispatch.

Shapes: N tokens (B * T flattened), C = n_embd, E routed experts, k experts per token, H an expert's hidden
width. Each token's router scores (softmax or sigmoid of C -> E logits) pick its top k experts, optionally
only among the best ``moe_group_top_k`` of ``moe_groups`` expert groups (DeepSeek-V3); the chosen experts'
outputs are summed with the scores as weights, renormalized over the k where configured. Shared experts
(DeepSeek, Qwen-MoE) see every token.

Dispatch is dropless: the N * k (token, expert) pairs are sorted by expert, each expert multiplies its
contiguous run of tokens (one grouped matrix product over all experts where the kernel takes the shape: CUDA on
Hopper in bfloat16, the CPU in float32 or 16 bits with rows of a multiple of 16 bytes; else a loop over the
experts that got tokens, with its own backward), and the results are scattered back. No token is dropped for
capacity. The sorted tokens reach the experts through the block's ``dispatcher``: None runs every expert here;
expert parallelism (``groundup.parallel.apply_ep``) puts in one that sends each token to the process holding its
expert and brings the results back, so this file holds no distributed code. Inference on the CPU (no gradient)
keeps the plain loop with each expert's rows padded to a probed multiple, which is batch-invariant.

Load balancing: a Switch/GShard auxiliary loss (E * sum_e f_e * P_e over k, 1 when balanced) or DeepSeek-V3's
auxiliary-loss-free bias, added to the scores for the choice only and moved by :func:`update_expert_bias`
after each optimizer step towards the under-loaded experts; an optional router z-loss keeps the logits small.
The block keeps this forward's losses and each expert's token count for the training loop to read; the
model knows nothing of training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from groundup.model.config import ModelConfig


def activate(h: torch.Tensor, kind: str) -> torch.Tensor:
    """The MLP nonlinearity on ``h`` (..., up): SwiGLU (``h`` is [gate; up]), ReLU², or GELU (tanh)."""
    if kind == "swiglu":
        gate, up = h.chunk(2, dim=-1)
        return F.silu(gate) * up
    if kind == "relu2":
        return F.relu(h).square()
    return F.gelu(h, approximate="tanh")


def _grouped_mm_ok(x: torch.Tensor, *weights: torch.Tensor) -> bool:
    # CUDA: the fused kernel on Hopper and later in bfloat16. CPU: PyTorch's grouped_mm (2.10 and later) in
    # float32, bfloat16 or float16 when every row is a multiple of 16 bytes (its kernel's alignment), on plain
    # tensors. Elsewhere the loop over experts runs.
    if x.is_cuda:
        return (hasattr(torch, "_grouped_mm") and x.dtype == torch.bfloat16
                and torch.cuda.get_device_capability(x.device)[0] >= 9)
    return (x.device.type == "cpu" and hasattr(F, "grouped_mm")
            and x.dtype in (torch.float32, torch.bfloat16, torch.float16)
            and all(type(w) in (torch.Tensor, nn.Parameter) and w.dtype == x.dtype for w in (x, *weights))
            and all(d * x.element_size() % 16 == 0 for w in weights for d in w.shape[1:]))


def grouped_linear(x: torch.Tensor, w: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Each expert's rows of ``x`` (M, in), sorted by expert with ``counts`` (E,) rows each, times its weight:
    row block e of the result is ``x_e @ w[e].T`` for ``w`` (E, out, in). One ``torch._grouped_mm`` where the
    kernel runs, else a loop over the experts with rows (LoRA's expert adapters run through it)."""
    if _grouped_mm_ok(x, w):
        grouped_mm = torch._grouped_mm if x.is_cuda else F.grouped_mm
        return grouped_mm(x, w.transpose(-2, -1), offs=counts.cumsum(0).to(torch.int32))
    out = x.new_empty(x.shape[0], w.shape[1])
    start = 0
    for e, n in enumerate(counts.tolist()):
        if n:
            out[start:start + n] = x[start:start + n] @ w[e].t()
            start += n
    return out


def sigmoid_by_rows(logits: torch.Tensor) -> torch.Tensor:
    """sigmoid of ``logits`` (N, E) with each row's bits independent of N: PyTorch's elementwise CPU kernels
    compute the values past their last whole pair of SIMD vectors (32 floats with AVX-512) by a scalar path whose
    bits may differ, and which values those are depends on N·E; rows padded to a multiple of 64 values all take
    the vector path (decoding's batch invariance)."""
    E = logits.shape[-1]
    if E % 64 == 0:
        return logits.sigmoid()
    return F.pad(logits, (0, -E % 64)).sigmoid()[:, :E]


class Experts(nn.Module):
    """E feed-forward experts with stacked weights: ``fc`` (E, up, C) with up = 2H for SwiGLU ([gate; up],
    the layout of transformers' Mixtral), ``proj`` (E, C, H)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        E, C, H = config.moe_experts, config.n_embd, config.moe_expert_hidden
        self.kind = config.mlp
        self.fc = nn.Parameter(torch.empty(E, 2 * H if self.kind == "swiglu" else H, C))
        self.proj = nn.Parameter(torch.empty(E, C, H))
        # Inference pads each expert's rows to a multiple of this (set by ``groundup.infer.weights``' probe), so that
        # a token's result does not depend on how many others chose the same expert (the engine's batch invariance).
        self.row_multiple = 1

    def forward(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """``x`` (M, C) the tokens sorted by expert, ``counts`` (E,) how many each expert has: (M, C)."""
        if not x.is_cuda and not torch.is_grad_enabled():
            return self._padded_loop(x, counts)
        if _grouped_mm_ok(x, self.fc, self.proj):
            grouped_mm = torch._grouped_mm if x.is_cuda else F.grouped_mm
            offsets = counts.cumsum(0).to(torch.int32)
            h = grouped_mm(x, self.fc.transpose(-2, -1), offs=offsets)  # (M, up)
            return grouped_mm(activate(h, self.kind), self.proj.transpose(-2, -1), offs=offsets)
        return expert_loop(x, counts, self.fc, self.proj, self.kind)

    @torch.no_grad()
    def _padded_loop(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Inference's loop: each expert's rows padded to ``row_multiple`` (its result does not depend on how
        many other tokens chose the same expert)."""
        out = torch.empty_like(x)
        start, m = 0, self.row_multiple
        for e, n in enumerate(counts.tolist()):  # the experts that got tokens; one host sync per layer
            if n:
                rows = x[start:start + n]
                if m > 1 and n % m:
                    rows = F.pad(rows, (0, 0, 0, m - n % m))
                out[start:start + n] = (activate(rows @ self.fc[e].t(), self.kind) @ self.proj[e].t())[:n]
                start += n
        return out


@torch.compiler.disable  # data-dependent group sizes: compiled, every new split of the tokens would recompile
def expert_loop(x: torch.Tensor, counts: torch.Tensor, fc: torch.Tensor, proj: torch.Tensor, kind: str) -> torch.Tensor:
    """The experts one after another on their contiguous runs of ``x`` (M, C) sorted by expert: (M, C).

    Plain tensors go through :class:`_ExpertLoop`, whose backward writes each expert's weight gradient into its
    slice of one stacked gradient; autograd through ``fc[e]`` gives every expert a zero-filled gradient of the
    whole stack to add up (E full-size fills and adds per weight and layer: a third of one MoE layer's forward
    and backward on the CPU at 8 experts, in a profile). Tensor subclasses (DTensor) and autocast regions (whose
    casts the function's ``out=`` products would skip) take the same loop through autograd."""
    sizes = counts.tolist()  # the experts that got tokens; one host sync per layer
    plain = all(type(t) in (torch.Tensor, nn.Parameter) for t in (x, fc, proj))
    if plain and not torch.is_autocast_enabled(x.device.type):
        return _ExpertLoop.apply(x, fc, proj, sizes, kind)
    out, start = torch.empty_like(x), 0
    for e, n in enumerate(sizes):
        if n:
            rows = slice(start, start + n)
            out[rows] = activate(x[rows] @ fc[e].t(), kind) @ proj[e].t()
            start += n
    return out


class _ExpertLoop(torch.autograd.Function):
    """y[rows_e] = act(x[rows_e] fc[e]^T) proj[e]^T for each expert e, with a hand-written backward (see
    :func:`expert_loop`). Saves x and the pre-activations h (M, up); the activation is recomputed."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, fc: torch.Tensor, proj: torch.Tensor, sizes: list[int], kind: str):
        out = x.new_empty(x.shape[0], proj.shape[1])
        h = x.new_empty(x.shape[0], fc.shape[1])
        start = 0
        for e, n in enumerate(sizes):
            if n:
                rows = slice(start, start + n)
                torch.mm(x[rows], fc[e].t(), out=h[rows])
                torch.mm(activate(h[rows], kind), proj[e].t(), out=out[rows])
                start += n
        ctx.save_for_backward(x, fc, proj, h)
        ctx.sizes, ctx.kind = sizes, kind
        return out

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, fc, proj, h = ctx.saved_tensors
        dy = dy.contiguous()
        dx, dh = torch.empty_like(x), torch.empty_like(h)
        dfc, dproj = torch.zeros_like(fc), torch.zeros_like(proj)  # experts without tokens: zero gradients
        start = 0
        for e, n in enumerate(ctx.sizes):
            if not n:
                continue
            rows = slice(start, start + n)
            a, grad_act = _activation_and_grad(h[rows], ctx.kind)
            torch.mm(dy[rows].t(), a, out=dproj[e])
            grad_act(dy[rows] @ proj[e], dh[rows])  # dL/dh into dh[rows]
            torch.mm(dh[rows].t(), x[rows], out=dfc[e])
            torch.mm(dh[rows], fc[e], out=dx[rows])
            start += n
        return dx, dfc, dproj, None, None


def _activation_and_grad(h: torch.Tensor, kind: str):
    """act(h) and a function writing dL/dh into ``out`` from dL/d act(h): SwiGLU by hand, the others by autograd."""
    if kind == "swiglu":
        gate, up = h.chunk(2, dim=-1)
        silu = F.silu(gate)

        def grad(da: torch.Tensor, out: torch.Tensor) -> None:
            H = gate.shape[-1]
            torch.ops.aten.silu_backward.grad_input(da * up, gate, grad_input=out[:, :H])
            torch.mul(da, silu, out=out[:, H:])

        return silu * up, grad
    with torch.enable_grad():
        leaf = h.detach().requires_grad_()
        a = activate(leaf, kind)

    def grad(da: torch.Tensor, out: torch.Tensor) -> None:
        out.copy_(torch.autograd.grad(a, leaf, da)[0])

    return a.detach(), grad


class MoE(nn.Module):
    """Router, routed experts and shared experts in place of one MLP."""

    def __init__(self, config: ModelConfig, shared: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        E = config.moe_experts
        self.router = nn.Linear(config.n_embd, E, bias=False)
        self.experts = Experts(config)
        self.shared = shared  # an MLP of moe_shared_experts * H hidden units, built by the block
        self.shared_gate = nn.Linear(config.n_embd, 1, bias=False) if config.moe_shared_gate else None
        # DeepSeek-V3's score correction: added to the scores for the choice of experts, never to the weights.
        self.register_buffer("expert_bias", torch.zeros(E), persistent=config.moe_balance == "bias")
        # What the training loop reads after a forward (and resets): losses of the last forward, token counts
        # per expert since the last reset.
        self.register_buffer("expert_load", torch.zeros(E), persistent=False)
        self.aux_loss: torch.Tensor | None = None
        self.z_loss: torch.Tensor | None = None
        # ``dispatcher(experts, x, counts)`` in place of ``experts(x, counts)`` on the tokens sorted by expert
        # (same shapes in and out): None here; expert parallelism sets one that runs them where they live.
        self.dispatcher = None

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router on ``x`` (N, C): chosen experts (N, k), their weights (N, k), and the scores (N, E)."""
        cfg = self.config
        logits = self.router(x).float()  # (N, E)
        scores = logits.softmax(dim=-1) if cfg.moe_score == "softmax" else sigmoid_by_rows(logits)
        choice = scores + self.expert_bias if cfg.moe_balance == "bias" else scores
        if cfg.moe_groups > 1:  # group-limited routing: only the best groups' experts compete
            N, E, G = choice.shape[0], choice.shape[1], cfg.moe_groups
            grouped = choice.view(N, G, E // G)
            # DeepSeek-V3 ranks a group by the sum of its top-2 scores (its best one when groups hold one expert)
            group_score = grouped.topk(min(2, E // G), dim=-1).values.sum(-1)  # (N, G)
            keep = torch.zeros_like(group_score, dtype=torch.bool)
            keep.scatter_(1, group_score.topk(cfg.moe_group_top_k, dim=-1).indices, True)
            choice = grouped.masked_fill(~keep[..., None], float("-inf")).view(N, E)
        chosen = choice.topk(cfg.moe_top_k, dim=-1).indices  # (N, k)
        weights = scores.gather(1, chosen)  # (N, k)
        if cfg.moe_normalize:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        if torch.is_grad_enabled():  # training: losses and loads for the loop (inference keeps no state)
            self._losses(logits, scores, chosen)
        return chosen, weights * cfg.moe_routed_scale, scores

    def _losses(self, logits: torch.Tensor, scores: torch.Tensor, chosen: torch.Tensor) -> None:
        cfg = self.config
        N, E, k = scores.shape[0], scores.shape[1], cfg.moe_top_k
        counts = torch.bincount(chosen.flatten(), minlength=E)
        if torch._C._current_graph_task_id() == -1:  # not activation checkpointing's recompute inside backward
            with torch.no_grad():
                self.expert_load += counts.to(self.expert_load.dtype)
        probs = scores / scores.sum(dim=-1, keepdim=True) if cfg.moe_score == "sigmoid" else scores
        # Switch/GShard: E * sum_e (tokens to e / (N k)) * (mean probability of e); 1 when perfectly balanced.
        self.aux_loss = E * (counts.to(probs.dtype) / (N * k) * probs.mean(dim=0)).sum()
        self.z_loss = torch.logsumexp(logits, dim=-1).square().mean()  # ST-MoE's router z-loss

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        flat = x.reshape(-1, C)  # (N, C)
        chosen, weights, _ = self.route(flat)  # (N, k), (N, k)
        k = chosen.shape[1]
        expert_of = chosen.flatten()  # (N k,)
        order = expert_of.argsort(stable=True)  # the (token, expert) pairs sorted by expert
        token_of = order // k
        counts = torch.bincount(expert_of, minlength=self.config.moe_experts)  # (E,)
        if self.dispatcher is None:
            y = self.experts(flat[token_of], counts)  # (N k, C)
        else:
            y = self.dispatcher(self.experts, flat[token_of], counts)
        y = y * weights.flatten()[order, None].to(y.dtype)
        out = torch.zeros_like(flat).index_add_(0, token_of, y)  # (N, C)
        if self.shared is not None:
            shared = self.shared(flat)
            if self.shared_gate is not None:  # Qwen-MoE: a sigmoid gate per token on the shared experts
                shared = torch.sigmoid(self.shared_gate(flat)) * shared
            out = out + shared
        return out.view(B, T, C)


def moe_layers(model: nn.Module) -> list[MoE]:
    return [m for m in model.modules() if isinstance(m, MoE)]


def moe_loss(model: nn.Module) -> torch.Tensor | None:
    """The configured auxiliary and z losses of the last forward, summed over layers (None: no MoE layer ran)."""
    layers = [m for m in moe_layers(model) if m.aux_loss is not None]
    if not layers:
        return None
    cfg = layers[0].config
    total = 0.0
    for m in layers:
        if cfg.moe_balance == "aux_loss" and cfg.moe_aux_loss_coef:
            total = total + cfg.moe_aux_loss_coef * m.aux_loss
        if cfg.moe_z_loss_coef:
            total = total + cfg.moe_z_loss_coef * m.z_loss
    return total if isinstance(total, torch.Tensor) else None


@torch.no_grad()
def moe_stats(model: nn.Module, *, reset: bool = True, group=None) -> dict[str, float | list[float]]:
    """Auxiliary loss, z-loss (means over layers, of the last forward), and each expert's share of the routed
    tokens since the last reset, summed over layers; max/mean load (1 is perfect balance) of that sum and of the
    worst layer on its own (summing layers can hide one layer's imbalance). Empty without MoE.

    ``group``: the pipeline's 'pp' process group, whose ranks hold different layers; the figures are then the
    whole model's, on every rank (a collective: every rank of the group calls it)."""
    layers = moe_layers(model)
    experts = getattr(getattr(model, "config", None), "moe_experts", 0) or (
        layers[0].expert_load.numel() if layers else 0)
    if not experts or (group is None and not layers):
        return {}
    device = layers[0].expert_load.device if layers else next(model.parameters()).device
    with_losses = [m for m in layers if m.aux_loss is not None]
    # one vector to reduce: the load summed over this rank's layers, then layers, aux and z sums, worst layer
    local = torch.zeros(experts + 4, dtype=torch.float64, device=device)
    if layers:
        local[:experts] = torch.stack([m.expert_load for m in layers]).sum(0).double()
    local[experts] = len(with_losses)
    if with_losses:
        local[experts + 1] = torch.stack([m.aux_loss.detach() for m in with_losses]).double().sum()
        local[experts + 2] = torch.stack([m.z_loss.detach() for m in with_losses]).double().sum()
    worst = [float(m.expert_load.max() / m.expert_load.mean()) for m in layers if m.expert_load.sum() > 0]
    local[experts + 3] = max(worst, default=0.0)
    if group is not None:
        import torch.distributed as dist

        worst_all = local[experts + 3:].clone()
        dist.all_reduce(local, group=group)
        dist.all_reduce(worst_all, op=dist.ReduceOp.MAX, group=group)
        local[experts + 3] = worst_all[0]
    load, counted = local[:experts], int(local[experts])
    stats: dict[str, float | list[float]] = {}
    if counted:
        stats["moe_aux_loss"] = float(local[experts + 1] / counted)
        stats["moe_z_loss"] = float(local[experts + 2] / counted)
    if load.sum() > 0:
        stats["moe_load_max_over_mean"] = float(load.max() / load.mean())
        stats["moe_layer_load_max_over_mean"] = float(local[experts + 3])
        stats["moe_expert_load"] = (load / load.sum()).tolist()
    if reset:
        for m in layers:
            m.expert_load.zero_()
    return stats


@torch.no_grad()
def update_expert_bias(model: nn.Module) -> None:
    """DeepSeek-V3's auxiliary-loss-free balancing, after an optimizer step: each layer's bias moves by
    ``moe_bias_rate`` towards the experts that got fewer tokens than the mean (sign of the gap), from the
    loads counted since the loads were last reset (:func:`moe_stats` resets them: call this first)."""
    for m in moe_layers(model):
        if m.config.moe_balance == "bias" and m.expert_load.sum() > 0:
            m.expert_bias += m.config.moe_bias_rate * torch.sign(m.expert_load.mean() - m.expert_load)
