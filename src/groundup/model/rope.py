"""RoPE frequencies, plain or scaled for contexts past the pretraining length (linear, dynamic NTK, YaRN, Llama 3).

The scaling types and their keys are Hugging Face's ``rope_parameters`` (``rope_type``, ``factor``,
``original_max_position_embeddings``, ...), and each formula follows ``transformers.modeling_rope_utils``
term by term, so an imported Llama 3.1 or a YaRN-extended model computes what transformers computes. Scaling
changes only the inverse frequencies (and, for YaRN, one factor on cos and sin); how they are applied to
queries and keys is the model's business.
"""

from __future__ import annotations

import math
from typing import Any

import torch

ROPE_SCALING_KEYS: dict[str, tuple[str, ...]] = {
    "linear": ("factor",),
    "dynamic": ("factor", "original_max_position_embeddings"),
    "yarn": ("factor", "original_max_position_embeddings"),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}
"""The RoPE scaling types groundup computes, with the keys each one needs."""

_YARN_OPTIONAL = ("attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "truncate")


def check_rope_scaling(scaling: dict[str, Any] | None) -> list[str]:
    """Problems with a ``rope_scaling`` setting, each naming the key; empty when it is usable (or None)."""
    if scaling is None:
        return []
    if not isinstance(scaling, dict):
        return [f"rope_scaling must be a mapping or None, got {scaling!r}"]
    kind = scaling.get("rope_type")
    if kind not in ROPE_SCALING_KEYS:
        return [f"rope_scaling.rope_type {kind!r} is not supported (groundup computes "
                f"{', '.join(ROPE_SCALING_KEYS)})"]
    problems = [f"rope_scaling.{key} is required for rope_type {kind!r}" for key in ROPE_SCALING_KEYS[kind]
                if scaling.get(key) is None]
    allowed = {"rope_type", *ROPE_SCALING_KEYS[kind], *(_YARN_OPTIONAL if kind == "yarn" else ())}
    problems += [f"rope_scaling.{key} is not a setting of rope_type {kind!r}" for key in scaling if key not in allowed]
    if not problems and not float(scaling["factor"]) > 0:
        problems.append(f"rope_scaling.factor must be positive, got {scaling['factor']}")
    return problems


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn(inv_freq: torch.Tensor, base: float, dim: int, s: dict[str, Any]) -> tuple[torch.Tensor, float]:
    """YaRN (Peng et al. 2023): interpolate the low frequencies, keep the high ones, ramp between them."""
    factor, original = float(s["factor"]), float(s["original_max_position_embeddings"])
    attention_factor = s.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = s.get("mscale"), s.get("mscale_all_dim")
        attention_factor = (_yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim)
                            if mscale and mscale_all_dim else _yarn_mscale(factor))
    beta_fast, beta_slow = s.get("beta_fast") or 32, s.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # as transformers does: no division by zero
    ramp = ((torch.arange(dim // 2, dtype=torch.float32, device=inv_freq.device) - low) / (high - low)).clamp(0, 1)
    extrapolation = 1 - ramp  # 1 where a frequency is kept as trained
    interpolated = inv_freq / factor
    return interpolated * (1 - extrapolation) + inv_freq * extrapolation, float(attention_factor)


def yarn_softmax_factor(scaling: dict[str, Any] | None) -> float:
    """The factor on the attention softmax scale that DeepSeek's latent attention takes from YaRN: mscale² with
    ``mscale_all_dim`` set (DeepSeek-V3: 0.1·ln(40) + 1 squared), else 1. transformers applies it in its MLA
    models only (``yarn_apply_mscale``), as groundup does."""
    if scaling is None or scaling.get("rope_type") in (None, "default") or not scaling.get("mscale_all_dim"):
        return 1.0
    return _yarn_mscale(float(scaling["factor"]), float(scaling["mscale_all_dim"])) ** 2


def _llama3(inv_freq: torch.Tensor, s: dict[str, Any]) -> torch.Tensor:
    """Llama 3.1: long wavelengths divided by ``factor``, short ones kept, a smooth blend between."""
    factor, low, high = float(s["factor"]), float(s["low_freq_factor"]), float(s["high_freq_factor"])
    original = float(s["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > original / low, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < original / high) & ~(wavelen > original / low)
    return torch.where(medium, smoothed, scaled)


def rope_frequencies(head_dim: int, theta: float, scaling: dict[str, Any] | None, *, seq_len: int | None = None,
                     device: torch.device | None = None) -> tuple[torch.Tensor, float]:
    """Inverse frequencies (head_dim / 2,) and the factor cos and sin are multiplied by.

    ``seq_len``: the longest position + 1 a forward uses; only dynamic NTK scaling reads it (its base grows
    with the length past ``original_max_position_embeddings``).
    """
    dim = head_dim
    base = theta
    kind = None if scaling is None else scaling["rope_type"]
    if kind == "dynamic":
        original = int(scaling["original_max_position_embeddings"])
        length = max(seq_len or original, original)
        factor = float(scaling["factor"])
        base = theta * ((factor * length / original) - (factor - 1)) ** (dim / (dim - 2))
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, device=device, dtype=torch.int64).float() / dim))
    if kind == "linear":
        return inv_freq / float(scaling["factor"]), 1.0
    if kind == "llama3":
        return _llama3(inv_freq, scaling), 1.0
    if kind == "yarn":
        return _yarn(inv_freq, theta, dim, scaling)
    return inv_freq, 1.0
