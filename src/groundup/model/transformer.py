"""The one decoder-only transformer, GPT-2 style or Llama style, read top to bottom.

Shapes: B batch, T time (tokens), C = n_embd, nh query heads, nkv key/value heads,
hd = C // nh head size, V vocabulary. No distributed code lives here: parallelism,
activation checkpointing and compilation are applied from outside.
"""

from __future__ import annotations

import itertools
import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from groundup.model.config import ModelConfig
from groundup.model.fused_loss import linear_cross_entropy_fused
from groundup.model.moe import Experts, MoE, activate, moe_loss
from groundup.model.rope import rope_frequencies, yarn_softmax_factor


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, affine: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class HeadsRMSNorm(RMSNorm):
    """RMSNorm over all heads' features of a (B, h, T, hd) tensor at once: OLMoE's QK-norm on whole projections."""

    def __init__(self, heads: int, head_dim: int, eps: float, affine: bool = True) -> None:
        super().__init__(heads * head_dim, eps, affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, h, T, hd = x.shape
        flat = x.transpose(1, 2).reshape(B, T, h * hd)
        return super().forward(flat).view(B, T, h, hd).transpose(1, 2)


def make_norm(config: ModelConfig, dim: int | None = None) -> nn.Module:
    """The model's normalization over ``dim`` features (the residual width by default)."""
    dim = dim or config.n_embd
    if config.norm == "rmsnorm":
        return RMSNorm(dim, config.norm_eps, affine=config.norm_affine)
    return nn.LayerNorm(dim, eps=config.norm_eps, elementwise_affine=config.norm_affine,
                        bias=config.bias and config.norm_affine)


def rope_table(config: ModelConfig, device: torch.device | None = None,
               length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles, (length or block_size, hd), in the half-split layout Llama checkpoints
    use, with the config's RoPE scaling (see :mod:`groundup.model.rope`); hd is the rotated features
    (``config.rope_dim``: MLA rotates qk_rope_head_dim of them)."""
    # Dynamic NTK's base depends on the length a forward reaches (``length``); the fixed table is unscaled.
    inv_freq, attention_factor = rope_frequencies(config.rope_dim, config.rope_theta, config.rope_scaling,
                                                  seq_len=length, device=device)
    t = torch.arange(length or config.block_size, device=device, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)  # (T, hd/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, hd)
    if attention_factor != 1.0:  # YaRN's magnitude correction
        return emb.cos() * attention_factor, emb.sin() * attention_factor
    return emb.cos(), emb.sin()


def dynamic_rope_length(config: ModelConfig, positions: torch.Tensor | None, T: int) -> int | None:
    """With dynamic NTK scaling, the length a forward's RoPE table is computed for when it reaches past the
    original context (the base grows with it, as transformers computes it); else None (the fixed table)."""
    scaling = config.rope_scaling
    if scaling is None or scaling["rope_type"] != "dynamic":
        return None
    top = T if positions is None else int(positions.max()) + 1
    return top if top > int(scaling["original_max_position_embeddings"]) else None


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, h, T, hd); cos, sin: (T, hd)
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return x * cos + rotated * sin


class KVCacheStep(Protocol):
    """The KV cache as one forward sees it (``groundup.infer`` keeps the storage and schedules the slots).

    ``positions`` (B, T) is each token's position in its sequence. ``update(layer, k, v)`` stores this
    forward's keys and values (B, nkv, T, hd) for ``layer`` and returns the keys and values each row may
    attend to, (B, nkv, L, hd), with the mask (B, 1, T, L) of the ones each query sees. Latent attention
    stores its kv latent (B, 1, T, kv_lora_rank) and RoPE key (B, 1, T, qk_rope_head_dim) in their places
    (``ModelConfig.kv_cache_entry``).
    """

    positions: torch.Tensor

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


VE_GATE_CHANNELS = 32
"""Residual channels a value-embedding gate reads (nanochat's choice: a cheap, per-token signal)."""


class ValueEmbedding(nn.Module):
    """A per-layer token embedding added to the attention values, through a per-head gate 2 * sigmoid(W x[:32])
    that starts at 1 (W is zero)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.channels = min(VE_GATE_CHANNELS, config.n_embd)
        self.embedding = nn.Embedding(config.vocab_size, config.kv_heads * config.head_dim)
        self.gate = nn.Linear(self.channels, config.kv_heads, bias=False)

    def forward(self, x: torch.Tensor, idx: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # x: (B, T, C) the block's normalized input; idx: (B, T); v: (B, nkv, T, hd)
        B, nkv, T, hd = v.shape
        ve = self.embedding(idx).view(B, T, nkv, hd).transpose(1, 2)  # (B, nkv, T, hd)
        gate = 2.0 * torch.sigmoid(self.gate(x[..., : self.channels]))  # (B, T, nkv)
        return v + gate.transpose(1, 2)[..., None] * ve


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.layer = layer
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.kv_heads, config.head_dim
        qkv_out = (self.n_head + 2 * self.n_kv_head) * self.head_dim
        # One fused projection: a single matmul for queries, keys and values.
        self.qkv = nn.Linear(config.n_embd, qkv_out, bias=config.bias or config.qkv_bias)
        self.proj = nn.Linear(self.n_head * self.head_dim, config.n_embd, bias=config.bias)
        self.attention_dropout = config.attention_dropout
        self.resid_dropout = nn.Dropout(config.dropout)
        if config.qk_norm and config.qk_norm_scope == "all":  # over all heads together (OLMoE), before RoPE
            self.q_norm = HeadsRMSNorm(self.n_head, self.head_dim, config.norm_eps, affine=config.norm_affine)
            self.k_norm = HeadsRMSNorm(self.n_kv_head, self.head_dim, config.norm_eps, affine=config.norm_affine)
        elif config.qk_norm:  # over each head's features, before RoPE
            self.q_norm = RMSNorm(self.head_dim, config.norm_eps, affine=config.norm_affine)
            self.k_norm = RMSNorm(self.head_dim, config.norm_eps, affine=config.norm_affine)
        else:
            self.q_norm = self.k_norm = None
        self.value_embedding = ValueEmbedding(config) if config.has_value_embedding(layer) else None

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                cache: KVCacheStep | None = None, *, idx: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """``idx`` (B, T) the token ids (read by a value embedding); ``mask`` (B, 1, T, T) True where a query
        may attend (document-causal training), else causal."""
        B, T, C = x.shape
        nh, nkv, hd = self.n_head, self.n_kv_head, self.head_dim
        q, k, v = self.qkv(x).split((nh * hd, nkv * hd, nkv * hd), dim=-1)
        q = q.view(B, T, nh, hd).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, nkv, hd).transpose(1, 2)  # (B, nkv, T, hd)
        v = v.view(B, T, nkv, hd).transpose(1, 2)  # (B, nkv, T, hd)
        if self.value_embedding is not None:
            v = self.value_embedding(x, idx, v)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v, mask = cache.update(self.layer, k, v)  # (B, nkv, L, hd), (B, 1, T, L)
            # Each (row, head) pair is its own attention problem: a row's result does not depend on the other
            # rows of the batch (the engine's batch invariance; checked on the machine's kernels by the tests).
            if q.device.type == "cpu" and T <= CPU_MATMUL_ATTENTION_ROWS:
                y = attend_by_matmul(q, k, v, mask)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=nkv != nh)  # (B, nh, T, hd)
        else:
            if nkv != nh:
                # Grouped-query attention: each key/value head serves nh // nkv query heads.
                k = k.repeat_interleave(nh // nkv, dim=1)
                v = v.repeat_interleave(nh // nkv, dim=1)
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None and T > 1,
                dropout_p=self.attention_dropout if self.training else 0.0,
            )  # (B, nh, T, hd)
        y = y.transpose(1, 2).reshape(B, T, nh * hd)
        return self.resid_dropout(self.proj(y))


class LatentAttention(nn.Module):
    """Multi-head latent attention (DeepSeek-V2, section 2.1; V3 keeps it): low-rank queries and keys/values, and
    a decoupled RoPE key.

    Shapes: r = kv_lora_rank, rq = q_lora_rank, dn = qk_nope_head_dim, dr = qk_rope_head_dim, dv = v_head_dim.
    A token's keys and values come from one latent c (r features, RMS-normalized) and one RoPE key (dr
    features, shared by every head): k = [W_UK c ; rope(k_r)] per head, v = W_UV c. Queries come from their own
    latent (rq features, normalized) or, with q_lora_rank 0, straight from x; each head's query is
    [q_nope ; rope(q_rope)]. The KV cache keeps c and rope(k_r): r + dr values per token and layer, against
    2 * nh * hd for multi-head attention.

    With a KV cache, a forward of up to ``ABSORBED_ROWS`` tokens a row (decode steps, speculative verification)
    runs the absorbed form (DeepSeek-V2, appendix C): W_UK folded into the queries, W_UV applied after the
    weighted sum, so attention reads the cached latents directly, one product for all heads (they share the
    latent), and the latents are never decompressed; per step and layer that is about nh·L·(2r + dr)
    multiply-adds against L·r·nh·(dn + dv) to decompress L cached tokens. Longer forwards (prefill) and
    training decompress: ``kv_up`` turns the latents into every head's keys and values and attention runs as
    usual. Both compute the same function (to rounding).

    Parameter names: ``q_down``/``q_latent_norm``/``q_up`` (or ``q``), ``kv_down`` (C -> r + dr: the latent and
    the RoPE key), ``kv_latent_norm``, ``kv_up`` (r -> nh * (dn + dv), each head's key part then value part),
    ``proj`` (HF DeepseekV3's q_a_proj, q_a_layernorm, q_b_proj or q_proj, kv_a_proj_with_mqa, kv_a_layernorm,
    kv_b_proj, o_proj). Biases (``bias``) on q_down, kv_down and proj, where DeepSeek's attention_bias puts them.
    """

    def __init__(self, config: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.layer = layer
        self.n_head, self.q_lora_rank = config.n_head, config.q_lora_rank
        self.rank, self.nope, self.rope_dim, self.v_dim = (config.kv_lora_rank, config.qk_nope_head_dim,
                                                           config.qk_rope_head_dim, config.v_head_dim)
        C, nh, qk = config.n_embd, config.n_head, config.query_key_dim
        if config.q_lora_rank:
            self.q_down = nn.Linear(C, config.q_lora_rank, bias=config.bias)
            self.q_latent_norm = RMSNorm(config.q_lora_rank, config.norm_eps, affine=config.norm_affine)
            self.q_up = nn.Linear(config.q_lora_rank, nh * qk, bias=False)
        else:
            self.q = nn.Linear(C, nh * qk, bias=False)
        self.kv_down = nn.Linear(C, self.rank + self.rope_dim, bias=config.bias)
        self.kv_latent_norm = RMSNorm(self.rank, config.norm_eps, affine=config.norm_affine)
        self.kv_up = nn.Linear(self.rank, nh * (self.nope + self.v_dim), bias=False)
        self.proj = nn.Linear(nh * self.v_dim, C, bias=config.bias)
        # 1/sqrt(dn + dr), times YaRN's mscale² where the scaling sets mscale_all_dim (DeepSeek-V3 does)
        self.scale = qk ** -0.5 * yarn_softmax_factor(config.rope_scaling)
        self.attention_dropout = config.attention_dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                cache: KVCacheStep | None = None, *, idx: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape
        nh, dn, dr, dv = self.n_head, self.nope, self.rope_dim, self.v_dim
        q = self.q_up(self.q_latent_norm(self.q_down(x))) if self.q_lora_rank else self.q(x)
        q_nope, q_rope = q.view(B, T, nh, dn + dr).transpose(1, 2).split((dn, dr), dim=-1)  # (B, nh, T, dn|dr)
        latent, k_rope = self.kv_down(x).split((self.rank, dr), dim=-1)  # (B, T, r), (B, T, dr)
        latent = self.kv_latent_norm(latent)[:, None]  # (B, 1, T, r)
        k_rope = k_rope[:, None]  # (B, 1, T, dr): one RoPE key for every head
        q_rope, k_rope = apply_rope(q_rope, *rope), apply_rope(k_rope, *rope)
        if cache is not None:
            latent, k_rope, mask = cache.update(self.layer, latent, k_rope)  # (B, 1, L, r), (B, 1, L, dr)
            w_up = linear_weight(self.kv_up) if T <= ABSORBED_ROWS else None
            if w_up is not None:
                y = self.absorbed(q_nope, q_rope, latent, k_rope, mask, w_up)  # (B, nh, T, dv)
                return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(B, T, nh * dv)))
        L = latent.shape[2]
        kv = self.kv_up(latent[:, 0]).view(B, L, nh, dn + dv).transpose(1, 2)  # (B, nh, L, dn + dv)
        k_nope, v = kv.split((dn, dv), dim=-1)
        q = torch.cat((q_nope, q_rope), dim=-1)  # (B, nh, T, dn + dr)
        k = torch.cat((k_nope, k_rope.expand(B, nh, L, dr)), dim=-1)  # (B, nh, L, dn + dr)
        if cache is not None and q.device.type == "cpu" and T <= CPU_MATMUL_ATTENTION_ROWS:
            y = attend_by_matmul(q, k, v, mask, scale=self.scale)  # batch-invariant, see Attention
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None and T > 1, scale=self.scale,
                dropout_p=self.attention_dropout if self.training and cache is None else 0.0,
            )  # (B, nh, T, dv)
        y = y.transpose(1, 2).reshape(B, T, nh * dv)
        return self.resid_dropout(self.proj(y))


    def absorbed(self, q_nope: torch.Tensor, q_rope: torch.Tensor, latent: torch.Tensor, k_rope: torch.Tensor,
                 mask: torch.Tensor, w_up: torch.Tensor) -> torch.Tensor:
        """Attention over the cached latents without decompressing them: q_nope (B, nh, T, dn), q_rope
        (B, nh, T, dr), latent (B, 1, L, r), k_rope (B, 1, L, dr), mask (B, 1, T, L), w_up the (nh·(dn + dv), r)
        weight of ``kv_up``; returns (B, nh, T, dv). Each row is its own products (batch invariance)."""
        B, nh, T, dn = q_nope.shape
        L, r, dr, dv = latent.shape[2], self.rank, self.rope_dim, self.v_dim
        w_uk, w_uv = w_up.view(nh, dn + dv, r).split((dn, dv), dim=1)  # (nh, dn, r), (nh, dv, r)
        q_latent = torch.matmul(q_nope, w_uk)  # (B, nh, T, r): q_nope·W_UK is what q·k_nope reads of the latent
        # Every head attends to the same latents and RoPE keys: one product of all heads' rows per sequence.
        scores = (torch.matmul(q_latent.reshape(B, nh * T, r), latent[:, 0].transpose(1, 2))
                  + torch.matmul(q_rope.reshape(B, nh * T, dr), k_rope[:, 0].transpose(1, 2)))  # (B, nh*T, L)
        scores = (scores * self.scale).view(B, nh, T, L).masked_fill(~mask, float("-inf"))
        out_latent = torch.matmul(scores.softmax(-1).view(B, nh * T, L), latent[:, 0])  # (B, nh*T, r)
        return torch.matmul(out_latent.view(B, nh, T, r), w_uv.transpose(1, 2))  # (B, nh, T, dv)


ABSORBED_ROWS = 64
"""Tokens per row up to which latent attention over a KV cache runs absorbed (decode steps, verification)."""


def linear_weight(module: nn.Module) -> torch.Tensor | None:
    """The (out, in) floating-point weight of a linear layer, as it is or as a decode view holds it (a transposed
    copy ``weight_t``, or ``source_weight`` beside a packed one); None for other layers (quantized, LoRA)."""
    if type(module) is nn.Linear:
        return module.weight
    if getattr(module, "weight_t", None) is not None:
        return module.weight_t.t()
    return getattr(module, "source_weight", None)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig, hidden: int | None = None) -> None:
        super().__init__()
        self.kind = config.mlp
        hidden = hidden or config.mlp_hidden
        # SwiGLU's gate and up projections are fused into one matmul: fc = [gate; up].
        self.fc = nn.Linear(config.n_embd, 2 * hidden if self.kind == "swiglu" else hidden, bias=config.bias)
        self.proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(activate(self.fc(x), self.kind)))


CPU_MATMUL_ATTENTION_ROWS = 64
"""Queries per row up to which attention over the cache runs as two batched matmuls on the CPU (decode steps
and speculative verification). PyTorch's fused CPU kernel gave a row other bits in a batch of three than
alone on two threads (the same bits on one thread; an AMD EPYC), which breaks the engine's batch invariance."""


def attend_by_matmul(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, *,
                     scale: float | None = None) -> torch.Tensor:
    """softmax(q kᵀ · scale, where ``mask``) v for q (B, nh, T, hd), k (B, nkv, L, hd), v (B, nkv, L, dv), mask
    (B, 1, T, L) True where a query may attend; ``scale`` defaults to 1/√hd. Each (row, key head) is one
    product, so a row's bits do not depend on the batch. Query heads are grouped under their key head as
    ``enable_gqa`` groups them."""
    B, nh, T, hd = q.shape
    nkv, L, dv = k.shape[1], k.shape[2], v.shape[-1]
    g = nh // nkv
    scale = hd ** -0.5 if scale is None else scale
    scores = torch.matmul(q.reshape(B, nkv, g * T, hd), k.transpose(-1, -2)) * scale  # (B, nkv, g*T, L)
    scores = scores.view(B, nkv, g, T, L).masked_fill(~mask.unsqueeze(2), float("-inf"))
    return torch.matmul(scores.softmax(-1).view(B, nkv, g * T, L), v).view(B, nh, T, dv)


def make_mlp(config: ModelConfig, layer: int) -> nn.Module:
    """Block ``layer``'s feed-forward: a dense MLP, or a mixture of experts (with its shared experts' MLP)."""
    if not config.is_moe_layer(layer):
        return MLP(config)
    shared = MLP(config, config.moe_shared_experts * config.moe_expert_hidden) if config.moe_shared_experts else None
    return MoE(config, shared)


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.attn_norm = make_norm(config)
        self.attn = LatentAttention(config, layer) if config.attention == "mla" else Attention(config, layer)
        self.mlp_norm = make_norm(config)
        self.mlp = make_mlp(config, layer)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                cache: KVCacheStep | None = None, *, idx: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), rope, cache, idx=idx, mask=mask)
        x = x + self.mlp(self.mlp_norm(x))
        return x


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_embeddings = nn.Embedding(config.block_size, config.n_embd) if config.position == "learned" else None
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, layer) for layer in range(config.n_layer))
        self.final_norm = make_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_embeddings.weight
        if config.position == "rope":
            cos, sin = rope_table(config)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    # ------------------------------------------------------------------ initialization

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """GPT-2 initialization: N(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layer)."""
        std = self.config.init_std
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                scale = 1.0 / math.sqrt(2 * self.config.n_layer) if name.endswith(".proj") else 1.0
                if name.endswith(".proj") and self.config.zero_init_proj:
                    nn.init.zeros_(module.weight)
                else:
                    nn.init.normal_(module.weight, mean=0.0, std=std * scale)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, (nn.LayerNorm, RMSNorm)) and module.weight is not None:
                nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        for module in self.modules():
            if isinstance(module, ValueEmbedding):
                nn.init.zeros_(module.gate.weight)  # the gate starts at 2 * sigmoid(0) = 1
            if isinstance(module, Experts):  # stacked weights: fc like any linear, proj like a residual projection
                nn.init.normal_(module.fc, mean=0.0, std=std)
                if self.config.zero_init_proj:
                    nn.init.zeros_(module.proj)
                else:
                    nn.init.normal_(module.proj, mean=0.0, std=std / math.sqrt(2 * self.config.n_layer))
        if self.config.position == "rope" and self.rope_cos.device.type != "meta":
            cos, sin = rope_table(self.config, self.rope_cos.device)
            self.rope_cos.copy_(cos)
            self.rope_sin.copy_(sin)

    # ------------------------------------------------------------------ forward

    def hidden_states(self, idx: torch.Tensor, cache: KVCacheStep | None = None, *,
                      segments: torch.Tensor | None = None, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Final-normalized hidden states (B, T, C) for token ids ``idx`` (B, T).

        Without ``cache`` the tokens are positions 0..T-1 of each sequence (training, scoring). With one,
        each token is at its own position ``cache.positions`` (B, T), and attends to the keys and values the
        cache holds for its sequence (prefill, decoding, speculative verification). ``segments`` (B, T), the
        document each position belongs to within its row (packed training rows), makes attention
        document-causal: a token sees the earlier tokens of its own document only.

        A part of the model (a pipeline stage: some of the blocks, the others removed) runs what it holds:
        without ``tok_embeddings``, ``idx`` is the hidden states (B, T, C) of the part before it and
        ``tokens`` (B, T) the ids (for value embeddings); without ``final_norm``, the last block's output
        comes back un-normalized.
        """
        B, T = idx.shape[:2]
        positions = None if cache is None else cache.positions  # (B, T)
        if cache is None and idx.shape[1] > self.config.block_size:
            raise ValueError(f"sequence of {T} positions exceeds block_size {self.config.block_size}")
        device = idx.device
        if self.tok_embeddings is None:  # a later part of the model: the hidden states come in
            x = idx
        else:
            x = self.tok_embeddings(idx)  # (B, T, C)
            tokens = idx
            if self.pos_embeddings is not None:
                x = x + self.pos_embeddings(torch.arange(T, device=device) if positions is None else positions)
            x = self.dropout(x)
        rope = None
        if self.config.position == "rope":
            rope_cos, rope_sin = self.rope_cos, self.rope_sin
            if (length := dynamic_rope_length(self.config, positions, T)) is not None:
                rope_cos, rope_sin = rope_table(self.config, device, length)
            if positions is None:
                rope = (rope_cos[:T], rope_sin[:T])  # (T, hd)
            else:
                rope = (rope_cos[positions][:, None], rope_sin[positions][:, None])  # (B, 1, T, hd)
        mask = None
        if segments is not None:
            if cache is not None or segments.shape != (B, T):
                raise ValueError(f"segments {tuple(segments.shape)} must match the tokens {(B, T)}, "
                                 "without a KV cache")
            mask = document_causal_mask(segments)
        window = self.config.sliding_window
        if cache is None and window is not None and window < T:  # with a cache, the cache's mask has the window
            band = sliding_window_mask(T, window, device)  # (T, T)
            mask = band if mask is None else mask & band
        for block in self.blocks:
            x = block(x, rope, cache, idx=tokens, mask=mask)
        return x if self.final_norm is None else self.final_norm(x)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """The output head on hidden states ``h`` (..., C): logits (..., V), soft-capped where configured."""
        return softcap(self.lm_head(h), self.config.logit_softcap)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *,
                cache: KVCacheStep | None = None, segments: torch.Tensor | None = None,
                tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, V) or, given ``targets`` (B, T) with -100 for ignored positions, the mean loss.
        ``segments`` and ``tokens``: see :meth:`hidden_states`; a part of the model without the head returns
        its hidden states (B, T, C)."""
        h = self.hidden_states(idx, cache, segments=segments, tokens=tokens)  # (B, T, C)
        if self.lm_head is None:  # a pipeline stage before the last
            return h
        if targets is None:
            return self.logits(h)
        loss = linear_cross_entropy(h.flatten(0, 1), self.lm_head.weight, targets.flatten(),
                                    cap=self.config.logit_softcap)
        if self.config.moe_experts and (balance := moe_loss(self)) is not None:
            loss = loss + balance  # the routers' auxiliary and z losses, as configured
        return loss

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Parameters, a tied weight once; with bias balancing (moe_balance='bias') the routers' score-correction
        biases count too, as DeepSeek-V3's own count does (a buffer here: no gradient, moved by its own rule)."""
        n = sum(p.numel() for p in self.parameters())  # .parameters() yields a tied weight once
        if self.config.moe_balance == "bias":
            n += sum(m.expert_bias.numel() for m in self.modules() if isinstance(m, MoE))
        if exclude_embeddings:
            n -= self.tok_embeddings.weight.numel()
            if self.pos_embeddings is not None:
                n -= self.pos_embeddings.weight.numel()
            n -= sum(m.embedding.weight.numel() for m in self.modules() if isinstance(m, ValueEmbedding))
        return n


def softcap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """``cap * tanh(logits / cap)``: logits bounded smoothly to (-cap, cap); unchanged when ``cap`` is None."""
    return logits if cap is None else cap * torch.tanh(logits / cap)


def document_causal_mask(segments: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) attention mask, True where query i may see key j: j <= i within the same segment."""
    T = segments.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()
    return ((segments[:, :, None] == segments[:, None, :]) & causal)[:, None]


def sliding_window_mask(T: int, window: int, device: torch.device | None = None) -> torch.Tensor:
    """(T, T) attention mask, True where query i may see key j: i - window < j <= i."""
    i = torch.arange(T, device=device)
    distance = i[:, None] - i[None, :]
    return (distance >= 0) & (distance < window)


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                         cap: float | None = None) -> torch.Tensor:
    """Mean cross-entropy of the logits ``h @ weight.T`` (N, V), soft-capped by ``cap`` where set (see
    :func:`softcap`), against ``targets`` (N,), ignoring -100."""
    if h.device.type == "cpu" and h.dtype == torch.float32 and weight.dtype == torch.float32:
        # Vocabulary-sliced head + loss: no N x V gradient is ever allocated (see fused_loss.py).
        return linear_cross_entropy_fused(h, weight, targets, cap=cap)
    logits = softcap(h @ weight.t(), cap)  # (N, V)
    return F.cross_entropy(logits.float(), targets, ignore_index=-100)


def count_parameters(config: ModelConfig) -> int:
    """Exact parameter count of ``config``, on the meta device: no memory is spent."""
    with torch.device("meta"):
        model = Transformer(config)
    return model.num_parameters()


def first_tensor(module: nn.Module) -> torch.Tensor:
    """The module's first parameter, or its first buffer where it has none (a quantized model with
    parameter-free norms holds only buffers): where its device and dtype can be read."""
    return next(itertools.chain(module.parameters(), module.buffers()))


def finish_meta_load(model: Transformer, where: str = "weights") -> Transformer:
    """Complete a model built on the meta device whose parameters were loaded with ``assign=True``: tie the
    head to the embeddings where configured, compute the RoPE tables (non-persistent buffers), and refuse
    any tensor left without a value."""
    if model.config.tie_embeddings:
        model.lm_head.weight = model.tok_embeddings.weight
    if model.config.position == "rope":
        model.rope_cos, model.rope_sin = rope_table(model.config)
    device = model.tok_embeddings.weight.device
    for module in model.modules():  # an MoE block's routing state the file does not hold starts at zero
        if isinstance(module, MoE):
            for name in ("expert_bias", "expert_load"):
                if getattr(module, name).is_meta:
                    setattr(module, name, torch.zeros(module.config.moe_experts, device=device))
    leftover = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftover:
        raise RuntimeError(f"{where}: no value for {leftover[:5]}")
    return model
