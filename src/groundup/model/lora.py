"""LoRA (Hu et al. 2021): low-rank adapters on chosen ``nn.Linear`` layers of a frozen model.

A wrapped layer computes ``W x + b + (alpha / r) * B A dropout(x)`` with ``A`` (r, in) initialized
like a Kaiming-uniform linear layer and ``B`` (out, r) at zero, so training starts from the base
model exactly. :class:`LoRALinear` *is* an ``nn.Linear`` that keeps the base ``weight`` and ``bias``
under their own names and adds ``lora_A`` / ``lora_B``: the base model's parameter names do not
change, so checkpoints, the fused loss head and the model-dir loaders keep working.

A mixture of experts keeps its experts' weights stacked, ``fc`` (E, up, C) and ``proj`` (E, C, H), not as
linear layers: a target pattern that names the experts module (``*.experts``) or one of its weights
(``*.experts.fc``) gives those weights :class:`LoRAExperts`' batched adapters, ``fc_lora_A`` (E, r, C) and
``fc_lora_B`` (E, up, r): one low-rank update per expert, applied to each expert's own tokens.

An adapter file (``adapter.safetensors`` + ``adapter.json``) holds only ``lora_A`` / ``lora_B`` (and
any fully trained extra tensors, such as a classifier head); :func:`load_adapter` puts it over a
freshly loaded base model dir. :func:`merge_lora` folds the adapters into the base weights.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from groundup.artifacts import read_json, write_json
from groundup.model.moe import Experts, activate, grouped_linear

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter.json"


@dataclass(kw_only=True)
class LoRAConfig:
    """Low-rank adapters: which linear layers get them, their rank, scale and dropout."""

    enabled: bool = False
    """Train LoRA adapters on a frozen base model instead of every weight."""
    rank: int = 8
    """Rank r of each adapter (B A has shape out x in with A: r x in, B: out x r)."""
    alpha: float = 16.0
    """Scale numerator: the update is (alpha / rank) * B A."""
    dropout: float = 0.0
    """Dropout on the adapter's input (the base path sees no dropout)."""
    targets: list[str] = field(default_factory=lambda: ["*.attn.qkv", "*.attn.proj", "*.mlp.fc", "*.mlp.proj"])
    """Glob patterns over module names (e.g. blocks.0.attn.qkv); every nn.Linear matching one gets an adapter.
    Default: attention (fused qkv and output) and MLP projections. A mixture of experts' routed experts get
    batched adapters when a pattern names their module (`*.mlp.experts`: both weights) or one weight
    (`*.mlp.experts.fc`, `*.mlp.experts.proj`); its shared experts are linear layers (`*.mlp.shared.fc`)."""

    def __post_init__(self) -> None:
        if self.rank <= 0:
            raise ValueError(f"lora.rank must be positive, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.targets:
            raise ValueError("lora.targets is empty: name at least one module pattern")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


class LoRALinear(nn.Linear):
    """An ``nn.Linear`` with a frozen base (``weight``, ``bias``) plus a trainable low-rank update."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        nn.Module.__init__(self)  # adopt the base's parameters instead of allocating new ones
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        device, dtype = base.weight.device, base.weight.dtype
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear (and PEFT) initialize A
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = nn.functional.linear(x, self.weight, self.bias)
        update = nn.functional.linear(nn.functional.linear(self.lora_dropout(x), self.lora_A), self.lora_B)
        return base + update * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """The adapter as a dense weight update (out, in)."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha}"


class LoRAExperts(Experts):
    """Stacked experts (:class:`~groundup.model.moe.Experts`) with a frozen base and, for each adapted weight
    ``w`` (E, out, in), a low-rank update per expert: ``w_lora_A`` (E, r, in), ``w_lora_B`` (E, out, r) at zero.
    Expert e's rows get ``x w[e]^T + (alpha / r) x A[e]^T B[e]^T``, computed by the experts' own grouped
    matmul (or loop), never as a dense (E, out, in) update."""

    def __init__(self, base: Experts, weights: tuple[str, ...], rank: int, alpha: float, dropout: float = 0.0) -> None:
        nn.Module.__init__(self)  # adopt the base's parameters instead of allocating new ones
        self.kind = base.kind
        self.fc, self.proj = base.fc, base.proj
        self.row_multiple = base.row_multiple  # read by inference's probe; the adapted experts do not pad rows
        self.adapted = tuple(w for w in ("fc", "proj") if w in weights)
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        for w in self.adapted:
            weight = getattr(base, w)
            E, out, inp = weight.shape
            A = torch.empty(E, rank, inp, device=weight.device, dtype=weight.dtype)
            for e in range(E):  # each expert's A as a linear layer's (fan-in is the input width, not rank x in)
                nn.init.kaiming_uniform_(A[e], a=math.sqrt(5))
            setattr(self, f"{w}_lora_A", nn.Parameter(A))
            setattr(self, f"{w}_lora_B", nn.Parameter(torch.zeros(E, out, rank, device=weight.device,
                                                                  dtype=weight.dtype)))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """As :meth:`Experts.forward`: ``x`` (M, C) sorted by expert, ``counts`` (E,) rows each: (M, C)."""
        h = self.linear("fc", x, counts)  # (M, up)
        return self.linear("proj", activate(h, self.kind), counts)

    def linear(self, name: str, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Weight ``name`` ('fc' or 'proj') of each expert, with its adapter, on the expert's rows of ``x``."""
        out = grouped_linear(x, getattr(self, name), counts)
        if name not in self.adapted:
            return out
        low = grouped_linear(self.lora_dropout(x), getattr(self, f"{name}_lora_A"), counts)  # (M, r)
        return out + grouped_linear(low, getattr(self, f"{name}_lora_B"), counts) * self.scaling

    def delta_weight(self, name: str) -> torch.Tensor:
        """The adapter of weight ``name`` as a dense update (E, out, in)."""
        return torch.bmm(getattr(self, f"{name}_lora_B"), getattr(self, f"{name}_lora_A")) * self.scaling

    def extra_repr(self) -> str:
        return f"adapted={self.adapted}, rank={self.rank}, alpha={self.alpha}"


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


def target_names(model: nn.Module, patterns: list[str]) -> list[str]:
    """Names of the ``nn.Linear`` modules that match any glob pattern."""
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and not isinstance(module, LoRALinear)
            and any(fnmatch.fnmatchcase(name, p) for p in patterns)]


def expert_targets(model: nn.Module, patterns: list[str]) -> dict[str, tuple[str, ...]]:
    """Experts modules that a pattern names -> their weights to adapt: both when the module's name matches,
    else those whose ``<module>.fc`` / ``<module>.proj`` matches."""
    found = {}
    for name, module in model.named_modules():
        if not isinstance(module, Experts) or isinstance(module, LoRAExperts):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            found[name] = ("fc", "proj")
        elif weights := tuple(w for w in ("fc", "proj") if any(fnmatch.fnmatchcase(f"{name}.{w}", p) for p in patterns)):
            found[name] = weights
    return found


def apply_lora(model: nn.Module, cfg: LoRAConfig, *, trainable: tuple[str, ...] = ()) -> list[str]:
    """Freeze ``model``, wrap the matching linear layers in :class:`LoRALinear` and the matching experts in
    :class:`LoRAExperts`; return the adapted names (an experts module's as ``<module>.fc`` / ``.proj``).

    ``trainable`` names parameters (exact names, e.g. ``lm_head.weight`` of a classifier head) that stay
    trainable in full beside the adapters (PEFT's ``modules_to_save``).
    """
    names = target_names(model, cfg.targets)
    experts = expert_targets(model, cfg.targets)
    if not names and not experts:
        linear = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, Experts))]
        raise ValueError(f"lora.targets {cfg.targets} match no linear layer or experts; they are e.g. {linear[:6]}")
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        _set_module(model, name, LoRALinear(model.get_submodule(name), cfg.rank, cfg.alpha, cfg.dropout))
    for name, weights in experts.items():
        _set_module(model, name, LoRAExperts(model.get_submodule(name), weights, cfg.rank, cfg.alpha, cfg.dropout))
        names += [f"{name}.{w}" for w in weights]
    params = dict(model.named_parameters())
    for name in trainable:
        params[name].requires_grad_(True)
    return names


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    """The adapted linear layers (not the experts: :func:`expert_lora_modules`)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def expert_lora_modules(model: nn.Module) -> dict[str, LoRAExperts]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRAExperts)}


def adapted_names(model: nn.Module) -> list[str]:
    """Every adapted linear layer's name and every adapted expert weight's (``<experts>.fc``)."""
    return sorted([*lora_modules(model), *(f"{name}.{w}" for name, m in expert_lora_modules(model).items()
                                           for w in m.adapted)])


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a tied weight counts once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def adapter_state(model: nn.Module, extra: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Only the adapter tensors (``*.lora_A``, ``*.lora_B``) and the named ``extra`` parameters."""
    state = {}
    for name, module in lora_modules(model).items():
        state[f"{name}.lora_A"] = module.lora_A.detach().cpu().contiguous()
        state[f"{name}.lora_B"] = module.lora_B.detach().cpu().contiguous()
    for name, module in expert_lora_modules(model).items():
        for w in module.adapted:
            for part in ("lora_A", "lora_B"):
                state[f"{name}.{w}_{part}"] = getattr(module, f"{w}_{part}").detach().cpu().contiguous()
    params = dict(model.named_parameters())
    for name in extra:
        state[name] = params[name].detach().cpu().contiguous()
    return state


def save_adapter(out: str | Path, model: nn.Module, cfg: LoRAConfig, *, extra: tuple[str, ...] = (),
                 base_model: str | Path | None = None) -> Path:
    """Write ``adapter.safetensors`` (adapters only) and ``adapter.json`` (how to put them back) into ``out``."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state(model, extra), str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    write_json(out / ADAPTER_CONFIG, {
        "rank": cfg.rank, "alpha": cfg.alpha, "dropout": cfg.dropout, "targets": list(cfg.targets),
        "modules": adapted_names(model), "extra": list(extra),
        "base_model": str(base_model) if base_model else None,
    })
    return out


def load_adapter(model: nn.Module, adapter_dir: str | Path) -> nn.Module:
    """Wrap ``model`` (a freshly loaded base) with the adapters of ``adapter_dir`` and load their weights."""
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    meta = read_json(adapter_dir / ADAPTER_CONFIG)
    cfg = LoRAConfig(enabled=True, rank=meta["rank"], alpha=meta["alpha"], dropout=meta["dropout"],
                     targets=meta["modules"])  # exact names are valid glob patterns
    state = load_file(str(adapter_dir / ADAPTER_WEIGHTS))
    apply_lora(model, cfg, trainable=tuple(meta.get("extra") or ()))
    expected = {k: v for k, v in model.state_dict().items() if k in state or k.endswith(("lora_A", "lora_B"))}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(model.state_dict()))
    if missing or unexpected:
        raise ValueError(f"{adapter_dir / ADAPTER_WEIGHTS} does not fit this model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise ValueError(f"{adapter_dir / ADAPTER_WEIGHTS}: {k} has shape {tuple(v.shape)}, "
                             f"the model expects {tuple(expected[k].shape)}")
    model.load_state_dict(state, strict=False)
    return model


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put back plain ``nn.Linear`` layers and experts (in place)."""
    for name, module in lora_modules(model).items():
        plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                          device="meta")
        module.weight.add_(module.delta_weight().to(module.weight.dtype))
        plain.weight = module.weight
        plain.bias = module.bias
        _set_module(model, name, plain)
    for name, module in expert_lora_modules(model).items():
        plain = Experts.__new__(Experts)
        nn.Module.__init__(plain)
        plain.kind, plain.row_multiple = module.kind, module.row_multiple
        for w in module.adapted:
            getattr(module, w).add_(module.delta_weight(w).to(getattr(module, w).dtype))
        plain.fc, plain.proj = module.fc, module.proj
        _set_module(model, name, plain)
    return model
