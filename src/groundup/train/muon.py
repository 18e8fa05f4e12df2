"""Muon for the transformer blocks' matrices, AdamW for everything else, in one optimizer.

Muon (Jordan et al. 2024) takes SGD momentum and replaces each matrix's update by the nearest
semi-orthogonal matrix, computed by a few Newton–Schulz iterations. The arithmetic is
``torch.optim.Muon``'s (its coefficients, its momentum and Nesterov form, its decoupled weight decay
and its learning-rate adjustments); :func:`orthogonalize` adds what that class lacks here: a choice
of dtype (torch always casts to bf16, which CPUs compute no faster than fp32), the cheaper Gram form of
the same iteration for long matrices in fp32, and whole matrices under FSDP2 and tensor parallelism.

**Which parameters.** :func:`hidden_matrices`: the weight of every ``nn.Linear`` inside
``blocks`` that is trained (attention ``qkv``/``proj``, MLP ``fc``/``proj``), found by module type and
name, so that an ``nn.Embedding`` inside a block (value embeddings), the output head (tied or not, a
classifier's too), norms, biases and LoRA's adapters stay with AdamW; the value embeddings' small gate
is a linear layer in a block, so Muon's (as in nanochat). LoRA's ``lora_A``/``lora_B`` are rank-r
factors whose scale conventions are Adam's, and a LoRA run trains no full matrix, so Muon has nothing
to do there and refuses (naming the setting).

**One optimizer.** :class:`MuonWithAdamW` is one ``torch.optim.Optimizer``: its parameter groups carry
``use_muon``; the AdamW groups are stepped by a ``torch.optim.AdamW`` that shares this optimizer's
groups and state. ``state_dict``, ``load_state_dict`` and torch.distributed.checkpoint's
``get_state_dict``/``set_optimizer_state_dict`` see a plain optimizer, so checkpoints and resume work
unchanged.

**Sharded matrices.** Newton–Schulz needs the whole matrix. Under FSDP2 (and tensor parallelism)
parameters, gradients and the momentum buffer are DTensors: the momentum update runs on the local
shards, the Nesterov update is gathered whole (``full_tensor``), orthogonalised on every rank, and each
rank keeps its own shard. Under tensor parallelism the fused ``qkv``/``fc`` rows are permuted (see
:mod:`groundup.parallel.apply_tp`); orthogonalisation commutes with a row permutation, so the result is
the one-process update in the permuted layout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.optim._muon import DEFAULT_A, DEFAULT_B, DEFAULT_C, EPS, _adjust_lr

from groundup.train.checkpoint import clean_name

NS_COEFFICIENTS = (DEFAULT_A, DEFAULT_B, DEFAULT_C)
"""Keller Jordan's quintic Newton–Schulz coefficients (torch.optim.Muon's), the same at every step."""

POLAR_EXPRESS = (
    (8.47032882, -25.10807537, 18.62927623),
    (4.18283564, -3.10870262, 0.58060699),
    (3.9618622, -2.95406749, 0.56297662),
    (3.2865985, -2.46472946, 0.50735879),
    (2.27376019, -1.64466969, 0.41619198),
    (1.888717, -1.26515795, 0.37651887),
    (1.875, -1.25, 0.375),
)
"""Polar Express coefficients (Amsel, Persson, Musco and Gower 2025), one odd quintic a step, for fp32.

Step k's polynomial is the minimax approximation of 1 on the interval that the steps before it map
[1e-3, 1] into (solved as a linear program on a 20,000-point geometric grid of that interval, in the
paper's greedy order, without the bf16 safety factor; the tests check that no nearby quintic does better). Greedy, so a shorter sequence is the start of a longer one;
from the 7th step on, the classical quintic (15, -10, 3)/8, which keeps values near 1. Singular values
in [1e-3, 1] end in [0.45, 1.55] after 4 steps and [0.89, 1.11] after 5; Jordan's coefficients give
[0.14, 1.20] and [0.47, 1.20]."""

NS_SCHEDULES = ("jordan", "polar_express")

DEFAULT_NS_STEPS = {"jordan": 5, "polar_express": 4}
"""Steps when optim.muon.ns_steps is null. Polar Express's 4 steps cost a fifth less than Jordan's 5 and
trained the tiny recipe's shape to a lower held-out loss in 400 steps (docs/pretrain.md, "Muon")."""

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(kw_only=True)
class MuonConfig:
    """Muon's settings for the hidden matrices (used when optim.optimizer is 'muon')."""

    lr: float | None = None
    """Muon's peak learning rate (the schedule scales it as it scales optim.lr); None: optim.lr, which with
    adjust_lr 'match_rms_adamw' gives updates of AdamW's size."""
    momentum: float = 0.95
    """Momentum of the gradient average that is orthogonalised."""
    nesterov: bool = True
    """Orthogonalise the Nesterov look-ahead (gradient plus momentum) rather than the momentum alone."""
    ns_steps: int | None = None
    """Newton–Schulz iterations per update (each costs about 4 x rows x columns x min(rows, columns) FLOPs);
    None: 4 with Polar Express's coefficients, 5 with Jordan's (torch.optim.Muon's)."""
    ns_coefficients: Literal["auto", "jordan", "polar_express"] = "auto"
    """The iteration's polynomials: 'jordan' (torch.optim.Muon's, the same each step), 'polar_express' (a
    minimax polynomial a step: closer to orthogonal in as many steps; fp32 only) or 'auto' (polar_express
    where the iteration runs in fp32, jordan in bf16)."""
    weight_decay: float | None = None
    """Decoupled weight decay of the hidden matrices (multiplied by the current Muon learning rate);
    None: optim.weight_decay."""
    adjust_lr: Literal["original", "match_rms_adamw"] = "match_rms_adamw"
    """How a matrix's shape scales its update: 'original' (Keller Jordan: lr x sqrt(max(1, rows/cols)),
    with lr around 0.02) or 'match_rms_adamw' (Moonshot: lr x 0.2 x sqrt(max(rows, cols)), the RMS of an
    AdamW update, so AdamW's lr and weight decay carry over)."""
    ns_dtype: Literal["auto", "fp32", "bf16"] = "auto"
    """Precision of the Newton–Schulz iteration: 'auto' is bf16 on CUDA (as torch.optim.Muon), fp32 elsewhere."""

    def __post_init__(self) -> None:
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"optim.muon.lr must be positive (or null for optim.lr), got {self.lr}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"optim.muon.momentum must be in [0, 1), got {self.momentum}")
        if self.ns_steps is not None and not 1 <= self.ns_steps < 100:
            raise ValueError(f"optim.muon.ns_steps must be in [1, 99], got {self.ns_steps}")
        if self.weight_decay is not None and not self.weight_decay >= 0:
            raise ValueError(f"optim.muon.weight_decay must be >= 0 (or null for optim.weight_decay), "
                             f"got {self.weight_decay}")
        if self.adjust_lr not in ("original", "match_rms_adamw"):
            raise ValueError(f"optim.muon.adjust_lr must be original or match_rms_adamw, got {self.adjust_lr!r}")
        if self.ns_dtype not in ("auto", "fp32", "bf16"):
            raise ValueError(f"optim.muon.ns_dtype must be auto, fp32 or bf16, got {self.ns_dtype!r}")
        if self.ns_coefficients not in ("auto", *NS_SCHEDULES):
            raise ValueError(f"optim.muon.ns_coefficients must be auto, {', '.join(NS_SCHEDULES)}, "
                             f"got {self.ns_coefficients!r}")


def hidden_matrices(model: nn.Module) -> dict[int, str]:
    """``id(parameter) -> name`` of the matrices Muon trains: the trainable weights of the ``nn.Linear``
    layers inside ``blocks`` (names without DDP's, activation checkpointing's or compile's wrapper parts).

    By module type, not by shape: an ``nn.Embedding`` inside a block, the output head and a weight shared
    with an embedding stay with AdamW."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    found = {}
    for module_name, module in model.named_modules():
        name = clean_name(module_name)
        if not isinstance(module, nn.Linear) or not name.startswith("blocks."):
            continue
        weight = module.weight
        if weight.requires_grad and weight.dim() == 2 and id(weight) not in embeddings:
            found[id(weight)] = f"{name}.weight"
    return found


def _is_dtensor(t: torch.Tensor) -> bool:
    return type(t).__name__ == "DTensor"


def ns_schedule(name: str, steps: int) -> list[tuple[float, float, float]]:
    """The (a, b, c) of each of ``steps`` Newton–Schulz steps: x <- a x + b (x xᵀ) x + c (x xᵀ)² x."""
    if name == "jordan":
        return [NS_COEFFICIENTS] * steps
    if name == "polar_express":
        return [POLAR_EXPRESS[min(k, len(POLAR_EXPRESS) - 1)] for k in range(steps)]
    raise ValueError(f"Newton–Schulz coefficients must be one of {', '.join(NS_SCHEDULES)}, got {name!r}")


def orthogonalize(update: torch.Tensor, *, steps: int, dtype: torch.dtype, eps: float = EPS,
                  coefficients: str = "jordan") -> torch.Tensor:
    """The Newton–Schulz approximation of U V^T for the matrix ``update`` = U S V^T, in ``dtype``; a stack
    of matrices (..., rows, cols) is orthogonalised matrix by matrix in batched products.

    torch.optim.Muon's iteration (in bf16 the same bits); in fp32 a matrix at least about twice as long as
    wide iterates in its Gram form (:func:`_gram_newton_schulz`), which costs fewer FLOPs. ``coefficients``:
    the polynomials of :func:`ns_schedule` ('polar_express' in fp32 only: its first steps are steep, and
    bf16's rounding of the norm would push singular values past the interval they are designed for)."""
    if coefficients != "jordan" and dtype != torch.float32:
        raise ValueError(f"optim.muon.ns_coefficients={coefficients} runs in fp32, not {dtype}: set "
                         "optim.muon.ns_dtype fp32")
    schedule = ns_schedule(coefficients, steps)
    x = update.to(dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the smaller Gram matrix
        x = x.mT
    if x.dim() == 2:
        x = x.div(x.norm().clamp(min=eps))  # spectral norm at most 1
    else:
        x = x.div(torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True).clamp(min=eps))
    m, n = x.shape[-2:]
    # FLOPs a step: the plain iteration 2m²n + 2m³ + 2m²n; the Gram form 8m³, plus 2m²n twice in all (less 6m³)
    if dtype == torch.float32 and 4 * m * m * n + (8 * steps - 6) * m**3 < steps * (4 * m * m * n + 2 * m**3):
        x = _gram_newton_schulz(x, schedule)
    else:
        x = _newton_schulz(x, schedule)
    return x.mT if tall else x


def _addmm(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, beta: float, alpha: float = 1.0) -> torch.Tensor:
    """``beta * bias + alpha * a @ b`` for matrices or stacks of them."""
    if a.dim() == 2:
        return torch.addmm(bias, a, b, beta=beta, alpha=alpha)
    return torch.baddbmm(bias, a, b, beta=beta, alpha=alpha)


def _newton_schulz(x: torch.Tensor, schedule: list[tuple[float, float, float]]) -> torch.Tensor:
    """torch.optim.Muon's quintic iteration on a wide ``x`` (rows <= cols) of spectral norm at most 1, one
    step for each (a, b, c) of ``schedule``."""
    for a, b, c in schedule:
        gram = x @ x.mT
        poly = _addmm(gram, gram, gram, beta=b, alpha=c)
        x = _addmm(x, poly, x, beta=a)
    return x


def _gram_newton_schulz(x: torch.Tensor, schedule: list[tuple[float, float, float]]) -> torch.Tensor:
    """The same iteration in rows x rows matrices: what a wide ``x`` (rows <= cols) ends up multiplied by.

    Step k maps x_k to P_k x_k with P_k = aI + bA_k + cA_k², A_k = x_k x_kᵀ. So x_K = Q x_0 with
    Q = P_{K-1}···P_0, and A_{k+1} = P_k A_k P_k; every P and A is a polynomial in A_0, so they commute.
    Only A_0 and the final Q x_0 touch the long side: for a 256 x 1536 matrix, half the FLOPs of the plain
    iteration. The same in exact arithmetic; in fp32 it agrees with the plain iteration to about 1e-5
    relative with Jordan's coefficients (tested), about 3e-4 with Polar Express's steeper first steps. In bf16 the Gram form drifts, so bf16 keeps the plain iteration."""
    gram = x @ x.mT
    q = None
    for k, (a, b, c) in enumerate(schedule):
        poly = _addmm(gram, gram, gram, beta=b, alpha=c)
        poly.diagonal(dim1=-2, dim2=-1).add_(a)  # P_k
        q = poly if q is None else poly @ q
        if k < len(schedule) - 1:
            gram = poly @ (poly @ gram)  # A_{k+1} = P_k² A_k
    return q @ x


def orthogonalize_all(updates: list[torch.Tensor], *, steps: int, dtype: torch.dtype,
                      coefficients: str = "jordan") -> list[torch.Tensor]:
    """:func:`orthogonalize` of each update; a DTensor update is gathered whole first and its result handed
    back in the same placements (this rank's shard).

    In fp32, plain matrices of one shape (the same projection of every block) are stacked and iterated
    together in batched products: on a CPU, small products cost more than their FLOPs, and a stack of a
    model's blocks takes about half the time of one product after the other. bf16 keeps one matrix at a
    time, bit for bit torch.optim.Muon's."""
    out: list[torch.Tensor | None] = [None] * len(updates)
    stacks: dict[tuple, list[int]] = {}
    for i, update in enumerate(updates):
        if _is_dtensor(update):
            out[i] = _orthogonalize_sharded(update, steps=steps, dtype=dtype, coefficients=coefficients)
        elif dtype == torch.float32:
            stacks.setdefault((tuple(update.shape), update.dtype, update.device), []).append(i)
        else:
            out[i] = orthogonalize(update, steps=steps, dtype=dtype, coefficients=coefficients)
    for members in stacks.values():
        if len(members) == 1:
            out[members[0]] = orthogonalize(updates[members[0]], steps=steps, dtype=dtype, coefficients=coefficients)
            continue
        results = orthogonalize(torch.stack([updates[i] for i in members]), steps=steps, dtype=dtype,
                                coefficients=coefficients)
        for i, result in zip(members, results.unbind(0), strict=True):
            out[i] = result
    return out  # type: ignore[return-value]


def _orthogonalize_sharded(update: torch.Tensor, *, steps: int, dtype: torch.dtype,
                           coefficients: str) -> torch.Tensor:
    from torch.distributed.tensor import distribute_tensor

    if update.device.type != update.device_mesh.device_type:
        raise ValueError(f"optim.optimizer=muon gathers each sharded matrix on the {update.device_mesh.device_type} "
                         f"mesh, but its update is on {update.device.type} (parallel.fsdp_cpu_offload): "
                         "turn the offload off or use optim.optimizer=adamw")
    whole = orthogonalize(update.full_tensor(), steps=steps, dtype=dtype, coefficients=coefficients)
    # every rank holds the same whole result: each keeps its shard, without communication
    return distribute_tensor(whole.contiguous(), update.device_mesh, update.placements, src_data_rank=None)


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon on the groups with ``use_muon``, AdamW on the others: one optimizer, one state dict.

    A Muon group has ``lr``, ``weight_decay``, ``momentum``, ``nesterov``, ``ns_steps``, ``adjust_lr_fn``,
    ``ns_dtype`` and ``ns_coefficients`` (absent from states saved before it existed: 'jordan'); an AdamW
    group has torch.optim.AdamW's settings (filled in from ``adamw``)."""

    def __init__(self, muon_groups: list[dict], adamw_groups: list[dict], *, adamw: dict) -> None:
        adamw_groups = [g for g in adamw_groups if g["params"]]
        # AdamW fills each of its groups with its settings (betas, eps, fused, ...); the groups are shared.
        self._adamw = torch.optim.AdamW(adamw_groups, **adamw) if adamw_groups else None
        for group in muon_groups:
            group["use_muon"] = True
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"Muon trains matrices only, got a parameter of shape {tuple(p.shape)}")
        for group in adamw_groups:
            group["use_muon"] = False
        super().__init__([*muon_groups, *adamw_groups], defaults={})

    def load_state_dict(self, state_dict: dict) -> None:
        if any("use_muon" not in group for group in state_dict["param_groups"]):
            raise ValueError("the optimizer state to load is not Muon's (it was saved by optim.optimizer=adamw); "
                             "resume with the optimizer it was trained with")
        super().load_state_dict(state_dict)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon_step(group)
        adamw_groups = [g for g in self.param_groups if not g["use_muon"]]
        if adamw_groups and self._adamw is not None:
            # load_state_dict replaces groups and state: point the AdamW at the current ones
            self._adamw.param_groups = adamw_groups
            self._adamw.state = self.state
            self._adamw.step()
        return loss

    def _muon_step(self, group: dict) -> None:
        lr, momentum = group["lr"], group["momentum"]
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        for p in params:
            if "momentum_buffer" not in self.state[p]:
                self.state[p]["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
        grads = [p.grad for p in params]
        bufs = [self.state[p]["momentum_buffer"] for p in params]
        # one kernel launch per list rather than per matrix (foreach); the same arithmetic as one at a time
        torch._foreach_lerp_(bufs, grads, 1 - momentum)
        updates = torch._foreach_lerp(grads, bufs, momentum) if group["nesterov"] else bufs
        ortho = orthogonalize_all(updates, steps=group["ns_steps"], dtype=DTYPES[group["ns_dtype"]],
                                  coefficients=group.get("ns_coefficients", "jordan"))
        torch._foreach_mul_(params, 1 - lr * group["weight_decay"])
        by_scale: dict[float, tuple[list, list]] = {}
        for p, update in zip(params, ortho, strict=True):
            members = by_scale.setdefault(_adjust_lr(lr, group["adjust_lr_fn"], p.shape), ([], []))
            members[0].append(p)
            members[1].append(update.to(p.dtype))
        for scale, (ps, us) in by_scale.items():
            torch._foreach_add_(ps, us, alpha=-scale)


def muon_groups(params: Iterable[nn.Parameter], cfg: MuonConfig, *, lr: float, weight_decay: float,
                device_type: str) -> list[dict]:
    """The one Muon parameter group; ``lr_ratio`` (its peak over optim.lr) lets the schedule scale it."""
    muon_lr = cfg.lr if cfg.lr is not None else lr
    ns_dtype = cfg.ns_dtype if cfg.ns_dtype != "auto" else ("bf16" if device_type == "cuda" else "fp32")
    coefficients = cfg.ns_coefficients
    if coefficients == "auto":
        coefficients = "polar_express" if ns_dtype == "fp32" else "jordan"
    if coefficients != "jordan" and ns_dtype != "fp32":
        raise ValueError(f"optim.muon.ns_coefficients={coefficients} runs in fp32, but optim.muon.ns_dtype is "
                         f"{ns_dtype} on {device_type}: set optim.muon.ns_dtype fp32")
    ns_steps = cfg.ns_steps if cfg.ns_steps is not None else DEFAULT_NS_STEPS[coefficients]
    return [{"params": list(params), "lr": muon_lr, "lr_ratio": muon_lr / lr,
             "weight_decay": cfg.weight_decay if cfg.weight_decay is not None else weight_decay,
             "momentum": cfg.momentum, "nesterov": cfg.nesterov, "ns_steps": ns_steps,
             "adjust_lr_fn": cfg.adjust_lr, "ns_dtype": ns_dtype, "ns_coefficients": coefficients}]

