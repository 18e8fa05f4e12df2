"""The optimizer (AdamW, or Muon for the blocks' matrices with AdamW for the rest) and learning-rate
schedules as pure functions of progress."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from groundup.train.muon import MuonConfig, MuonWithAdamW, hidden_matrices, muon_groups


@dataclass(kw_only=True)
class OptimConfig:
    """The optimizer and its learning-rate schedule."""

    optimizer: Literal["adamw", "muon"] = "adamw"
    """adamw: AdamW for every parameter; muon: Muon for the transformer blocks' linear weights (attention
    and MLP matrices) with AdamW for the embeddings, output head, norms and biases (settings: optim.muon)."""
    lr: float = 3e-4
    """Peak learning rate (AdamW's; Muon's is optim.muon.lr, on the same schedule)."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak (cosine decays to it; WSD decays to it)."""
    weight_decay: float = 0.1
    """Decoupled weight decay, applied to matrices (linear weights, embeddings) only, never to norms or biases."""
    betas: tuple[float, float] = (0.9, 0.95)
    """Adam's beta1 and beta2."""
    eps: float = 1e-8
    """Adam's epsilon."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 disables clipping)."""
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    """cosine: warmup then cosine decay; wsd: warmup, stable, then linear decay over the last `decay_fraction`."""
    warmup_steps: int = 100
    """Linear warmup from 0 to the peak over this many optimizer steps."""
    decay_fraction: float = 0.2
    """WSD only: the share of training spent decaying at the end."""
    embedding_lr_ratio: float = 1.0
    """Learning rate of the embedding tables (token, position and value embeddings; a tied output head shares
    the token table) as a multiple of the schedule's: their rows are updated only where their tokens occur."""
    fused: bool | None = None
    """Use the fused AdamW kernel (None: where the device supports it)."""
    muon: MuonConfig = field(default_factory=MuonConfig)
    """Muon's settings, used when optimizer is 'muon'."""

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be positive, got {self.lr}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not self.embedding_lr_ratio > 0:
            raise ValueError(f"optim.embedding_lr_ratio must be positive, got {self.embedding_lr_ratio}")
        if not 0.0 < self.decay_fraction <= 1.0:
            raise ValueError(f"optim.decay_fraction must be in (0, 1], got {self.decay_fraction}")
        if self.schedule not in ("cosine", "wsd", "constant"):
            raise ValueError(f"optim.schedule must be cosine, wsd or constant, got {self.schedule!r}")
        if self.optimizer not in ("adamw", "muon"):
            raise ValueError(f"optim.optimizer must be adamw or muon, got {self.optimizer!r}")


def lr_at(step: int, progress: float, cfg: OptimConfig) -> float:
    """Learning rate at optimizer step ``step`` with ``progress`` in [0, 1] of the run done.

    Warmup is counted in steps (it protects the first updates whatever the run's length);
    the decay follows ``progress``, which is steps done / total steps, or time spent / time
    budget when training is bounded by the clock.
    """
    peak, floor = cfg.lr, cfg.lr * cfg.min_lr_ratio
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    progress = min(max(progress, 0.0), 1.0)
    if cfg.schedule == "constant":
        return peak
    if cfg.schedule == "wsd":
        start = 1.0 - cfg.decay_fraction
        if progress <= start:
            return peak
        return peak + (floor - peak) * (progress - start) / cfg.decay_fraction
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, weight_decay: float, exclude: frozenset[int] = frozenset(),
                 embedding_lr_ratio: float = 1.0) -> list[dict]:
    """Two groups: matrices (decayed) and vectors: norms and biases (not decayed), each only if it has a
    parameter; ``exclude``: ids of
    parameters another optimizer trains. With ``embedding_lr_ratio`` other than 1, the embedding tables
    (decayed) form a third group whose learning rate keeps that ratio to the schedule's (see :func:`set_lr`)."""
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)} if embedding_lr_ratio != 1.0 \
        else set()
    decay, no_decay, embeddings, seen = [], [], [], set(exclude)
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (embeddings if id(p) in tables else decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0},
              {"params": embeddings, "weight_decay": weight_decay, "lr_ratio": embedding_lr_ratio}]
    # An empty group (LoRA trains no vector) would be a hole in a checkpoint's flat optimizer state.
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: OptimConfig, device_type: str) -> torch.optim.Optimizer:
    """torch's AdamW over every trainable parameter, or :class:`~groundup.train.muon.MuonWithAdamW`."""
    fused = cfg.fused if cfg.fused is not None else device_type in ("cuda", "cpu")
    adamw = {"lr": cfg.lr, "betas": cfg.betas, "eps": cfg.eps, "fused": fused}
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(param_groups(model, cfg.weight_decay, embedding_lr_ratio=cfg.embedding_lr_ratio),
                                 **adamw)
    hidden = hidden_matrices(model)
    if not hidden:
        raise ValueError("optim.optimizer=muon: the model trains no hidden matrix (nn.Linear weight in its blocks); "
                         "LoRA adapters train with AdamW: use optim.optimizer=adamw")
    matrices = [p for p in model.parameters() if id(p) in hidden]
    muon = muon_groups(matrices, cfg.muon, lr=cfg.lr, weight_decay=cfg.weight_decay, device_type=device_type)
    return MuonWithAdamW(muon, param_groups(model, cfg.weight_decay, exclude=frozenset(hidden),
                                                     embedding_lr_ratio=cfg.embedding_lr_ratio), adamw=adamw)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate from the schedule's ``lr``: a group with its own peak (Muon's) keeps
    its ``lr_ratio`` to optim.lr."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_ratio"] if "lr_ratio" in group else lr
