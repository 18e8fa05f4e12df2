"""Inference: weight memory by precision, KV cache, decode and prefill speed bounds, the largest batch.

Decoding one token reads every weight once and the whole KV cache, and does little arithmetic per
byte, so at small batch its speed is bounded by memory bandwidth: tokens/s ≤ bandwidth / bytes read
per token (the roofline argument gpt-fast's write-up makes; it measured 105 tokens/s for Llama-2-7B in
bf16 on an A100 against a bound near 127). Prefill processes the whole prompt in one pass and is
bounded by compute instead.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from groundup.model.config import ModelConfig
from groundup.plan.compute import attention_flops_per_token
from groundup.plan.params import count_parameters

WEIGHT_BYTES: dict[str, float] = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "int8": 1.0, "int4": 0.5}
"""Bytes per weight at each inference precision (quantization scales not included)."""

RULE_OF_THUMB = 1.2
"""VRAM ≈ 1.2 × params × bytes: the seeds' inference rule (section 6), 20% over the weights for the
CUDA context, activations and allocator slack."""


def weight_bytes_per_value(precision: str) -> float:
    if precision not in WEIGHT_BYTES:
        raise ValueError(f"unknown inference precision {precision!r}; known: {', '.join(WEIGHT_BYTES)}")
    return WEIGHT_BYTES[precision]


def kv_bytes_per_value(precision: str) -> int:
    """The KV cache stays in 16 bits when weights are quantized to int8/int4; fp32 weights keep fp32."""
    return 4 if precision == "fp32" else 2


@dataclass(kw_only=True, frozen=True)
class WeightMemory:
    """Memory the weights of a model take at one precision."""

    precision: str
    """Key of WEIGHT_BYTES."""
    exact: float
    """Parameters × bytes per weight, in bytes."""
    rule_of_thumb: float
    """1.2 × the exact figure, in bytes."""


def weight_memory(cfg: ModelConfig, precision: str = "bf16") -> WeightMemory:
    """Exact weight bytes (parameters × bytes per weight) and the ×1.2 rule of thumb."""
    exact = count_parameters(cfg).total * weight_bytes_per_value(precision)
    return WeightMemory(precision=precision, exact=exact, rule_of_thumb=RULE_OF_THUMB * exact)


def kv_cache_bytes_per_token(cfg: ModelConfig, bytes_per_value: int = 2) -> int:
    """Keys and values of one token in every layer: 2·n_layer·n_kv_head·head_dim·bytes; with latent attention
    the kv latent and the shared RoPE key, n_layer·(kv_lora_rank + qk_rope_head_dim)·bytes (what the engine's
    cache holds: ``ModelConfig.kv_cache_entry``).

    Llama-2-7B in fp16: 2·32·32·128·2 = 512 KiB per token, 2 GiB for 4096 tokens. DeepSeek-V3 in bf16:
    61·(512 + 64)·2 = 70,272 bytes (68.6 KiB) per token."""
    heads, key_features, value_features = cfg.kv_cache_entry
    return cfg.n_layer * heads * (key_features + value_features) * bytes_per_value


def kv_cache_bytes(cfg: ModelConfig, *, batch: int, context: int, bytes_per_value: int = 2) -> int:
    """The KV cache of ``batch`` sequences of ``context`` tokens."""
    if batch <= 0 or context <= 0:
        raise ValueError(f"batch and context must be positive, got {batch}, {context}")
    return batch * context * kv_cache_bytes_per_token(cfg, bytes_per_value)


def bytes_read_per_step(cfg: ModelConfig, *, precision: str = "bf16", batch: int = 1, context: int = 0) -> float:
    """Bytes one decode step reads: every weight except the embedding tables (a lookup reads one row;
    a tied table is read whole as the output head), plus the KV cache of every sequence. Of a mixture of
    experts' routed experts, a step reads those its ``batch`` tokens are sent to: the expected number of
    distinct experts among batch x k uniform choices, E·(1 - (1 - k/E)^batch) per layer."""
    count = count_parameters(cfg)
    read = count.total - count.position_embeddings - (0 if cfg.tie_embeddings else count.token_embeddings)
    if count.routed_experts:
        E, k = cfg.moe_experts, cfg.moe_top_k
        share = 1.0 - (1.0 - k / E) ** batch  # of the routed experts a step touches
        read -= count.routed_experts * (1.0 - share)
    kv = batch * context * kv_cache_bytes_per_token(cfg, kv_bytes_per_value(precision))
    return read * weight_bytes_per_value(precision) + kv


@dataclass(kw_only=True, frozen=True)
class DecodeBound:
    """Upper bound on decode speed from memory bandwidth and peak compute (a roofline)."""

    tokens_per_s: float
    """Per sequence: 1 / step time."""
    aggregate_tokens_per_s: float
    """All sequences of the batch together."""
    step_seconds: float
    """The slower of reading the bytes and doing the FLOPs of one step."""
    bytes_per_step: float
    """Weights and KV cache read per step."""
    flops_per_step: float
    """FLOPs of one step for the whole batch."""
    bound: str
    """'memory' or 'compute': which of the two sets the step time."""


def decode_bound(cfg: ModelConfig, *, bandwidth: float, peak_flops: float | None = None, precision: str = "bf16",
                 batch: int = 1, context: int = 0) -> DecodeBound:
    """tokens/s ≤ bandwidth / bytes read per token, and ≤ peak / FLOPs per token when compute binds.

    ``context`` is the tokens already in the cache (0: the weights alone, the usual headline figure).
    FLOPs per step: batch·(2·matmul weights + 2·n_layer·context·n_head·(qk + v head dims)), 4·...·head_dim
    for multi-head attention (latent attention is counted decompressed, as groundup decodes it)."""
    if bandwidth <= 0 or batch <= 0 or context < 0:
        raise ValueError(f"bandwidth and batch must be positive and context >= 0, got {bandwidth}, {batch}, "
                         f"{context}")
    read = bytes_read_per_step(cfg, precision=precision, batch=batch, context=context)
    attention = attention_flops_per_token(cfg, context) if context else 0.0
    flops = batch * (2.0 * count_parameters(cfg).matmul + attention)
    memory_seconds = read / bandwidth
    compute_seconds = flops / peak_flops if peak_flops else 0.0
    step = max(memory_seconds, compute_seconds)
    return DecodeBound(tokens_per_s=1.0 / step, aggregate_tokens_per_s=batch / step, step_seconds=step,
                       bytes_per_step=read, flops_per_step=flops,
                       bound="memory" if memory_seconds >= compute_seconds else "compute")


@dataclass(kw_only=True, frozen=True)
class PrefillBound:
    """Lower bound on the time to process a prompt (time to first token)."""

    seconds: float
    """The slower of the prompt's FLOPs at peak and one read of the weights."""
    tokens_per_s: float
    """Prompt tokens per second at that bound."""
    flops: float
    """FLOPs of the prompt's forward pass."""
    bound: str
    """'compute' or 'memory'."""


def prefill_bound(cfg: ModelConfig, *, prompt_tokens: int, peak_flops: float, bandwidth: float,
                  precision: str = "bf16", batch: int = 1) -> PrefillBound:
    """Prefill is compute bound: seconds ≥ batch·prompt·(2·matmul weights + 4·l·prompt·d_attn) / peak."""
    if prompt_tokens <= 0 or peak_flops <= 0 or batch <= 0:
        raise ValueError(f"prompt_tokens, peak_flops and batch must be positive, got {prompt_tokens}, "
                         f"{peak_flops}, {batch}")
    per_token = 2.0 * count_parameters(cfg).matmul + attention_flops_per_token(cfg, prompt_tokens)
    flops = batch * prompt_tokens * per_token
    compute_seconds = flops / peak_flops
    memory_seconds = bytes_read_per_step(cfg, precision=precision) / bandwidth
    seconds = max(compute_seconds, memory_seconds)
    return PrefillBound(seconds=seconds, tokens_per_s=batch * prompt_tokens / seconds, flops=flops,
                        bound="compute" if compute_seconds >= memory_seconds else "memory")


def max_batch(cfg: ModelConfig, *, device_memory: float, context: int, precision: str = "bf16",
              reserve_bytes: float = 0.0) -> int:
    """The most sequences of ``context`` tokens whose KV cache fits beside the weights (0: none fits)."""
    free = device_memory - reserve_bytes - weight_memory(cfg, precision).exact
    per_sequence = kv_cache_bytes(cfg, batch=1, context=context, bytes_per_value=kv_bytes_per_value(precision))
    return max(0, math.floor(free / per_sequence))


def as_dict(obj) -> dict:
    return asdict(obj)
