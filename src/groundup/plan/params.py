"""Exact parameter counts from a model config, by component, without building the model.

The count follows the module layout of :mod:`groundup.model.transformer` term by term (fused
query/key/value projection, SwiGLU's gate and up fused in ``fc``, a tied head counted once) and must
agree exactly with :func:`groundup.model.transformer.count_parameters`; the tests hold it to that on
every preset, on random shapes, and on the counts ``transformers`` instantiates for GPT-2 and Llama.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from groundup.model.config import ModelConfig


@dataclass(kw_only=True, frozen=True)
class ParameterCount:
    """Parameters of one model shape, by component. ``total`` counts a tied embedding/head once."""

    token_embeddings: int
    """The token embedding table, V x C."""
    position_embeddings: int
    """Learned absolute positions, block_size x C (0 with RoPE, which has no parameters)."""
    attention: int
    """Every layer's fused query/key/value projection and output projection, biases included."""
    mlp: int
    """Every layer's MLP: up (GELU) or fused gate+up (SwiGLU) and down projections, biases included."""
    norms: int
    """Two norms per layer plus the final norm (scale, and shift for a LayerNorm with bias)."""
    lm_head: int
    """The output head, V x C; 0 when it is tied to the token embedding."""
    linear_biases: int
    """How many of the attention and MLP parameters are biases (a subset of those, not an extra term)."""
    norm_shifts: int
    """How many of the norm parameters are LayerNorm shifts (a subset of ``norms``)."""
    n_layer: int
    """Number of blocks, to express the per-layer figure."""
    value_embeddings: int = 0
    """The value-embedding tables of the layers that have one, V x (nkv * hd) each (looked up, not multiplied)."""
    value_gates: int = 0
    """Their per-head gates, min(32, C) x nkv each (multiplied per token)."""
    routed_experts: int = 0
    """The routed experts' weights of every MoE layer (a subset of ``mlp``): all resident, k of E used per token."""
    active_routed_experts: int = 0
    """The routed experts' weights one token passes through: moe_top_k of them per MoE layer."""
    router_biases: int = 0
    """DeepSeek-V3's score-correction biases (E per MoE layer, with moe_balance='bias'), counted as its own code
    counts them: added to the router's scores, never multiplied."""
    latent_norms: int = 0
    """Multi-head latent attention's RMSNorms on the query and kv latents (a subset of ``attention``)."""

    @property
    def active(self) -> int:
        """Parameters one token uses: the total less the routed experts it is not sent to."""
        return self.total - self.routed_experts + self.active_routed_experts

    @property
    def total(self) -> int:
        return (self.token_embeddings + self.position_embeddings + self.attention + self.mlp + self.norms
                + self.lm_head + self.value_embeddings + self.value_gates + self.router_biases)

    @property
    def embeddings(self) -> int:
        """Tables looked up rather than multiplied: tokens, learned positions, value embeddings."""
        return self.token_embeddings + self.position_embeddings + self.value_embeddings

    @property
    def non_embedding(self) -> int:
        """Parameters outside the embedding tables (Kaplan et al. 2020's N); an untied head counts here."""
        return self.total - self.embeddings

    @property
    def biases(self) -> int:
        return self.linear_biases + self.norm_shifts

    @property
    def final_norm(self) -> int:
        return self.norms // (2 * self.n_layer + 1)

    @property
    def per_layer(self) -> int:
        """One transformer block: attention, MLP and its two norms (value embeddings, on some layers only,
        are left out)."""
        return (self.attention + self.mlp + self.norms - self.final_norm) // self.n_layer

    @property
    def matmul(self) -> int:
        """Weights multiplied per token: attention and MLP weight matrices and the head (a tied head is a
        product with the embedding matrix); not the embedding lookups, norms or biases."""
        head = self.lm_head or self.token_embeddings
        # Only the routed experts a token is sent to multiply it (the router and the shared experts always do).
        routed_unused = self.routed_experts - self.active_routed_experts
        return (self.attention - self.latent_norms + self.mlp - routed_unused - self.linear_biases + head
                + self.value_gates)

    def as_dict(self) -> dict[str, int]:
        data = asdict(self)
        data.update(total=self.total, embeddings=self.embeddings, non_embedding=self.non_embedding,
                    biases=self.biases, per_layer=self.per_layer, matmul=self.matmul, active=self.active)
        return data


def count_parameters(cfg: ModelConfig) -> ParameterCount:
    """Count the parameters of ``cfg`` analytically, by component.

    With C = n_embd, nh query heads, nkv key/value heads, hd = C / nh, H = MLP hidden width, L layers:

    - attention per layer: C·(nh + 2·nkv)·hd (fused qkv) + nh·hd·C (output), plus (nh + 2·nkv)·hd
      qkv biases when ``bias`` or ``qkv_bias``, and C output biases when ``bias``;
    - MLP per layer: C·H·k + H·C with k = 2 for SwiGLU (gate and up fused), 1 for GELU, plus k·H + C
      biases when ``bias``;
    - norms: 2·L + 1 of them, each C (RMSNorm, or LayerNorm without bias) or 2·C (LayerNorm with shift), none
      when ``norm_affine`` is off; with ``qk_norm``, 2·L more of hd each;
    - embeddings V·C, learned positions block_size·C, untied head V·C;
    - value embeddings: on each layer that has one (:meth:`ModelConfig.has_value_embedding`), a V·nkv·hd
      table and a min(32, C)·nkv gate;
    - latent attention (``attention='mla'``) in place of the first term, with rq = q_lora_rank, r =
      kv_lora_rank, dn, dr, dv the nope, rope and value head dims: queries C·rq + rq (norm) + rq·nh·(dn + dr),
      or C·nh·(dn + dr) with rq = 0; kv C·(r + dr) + r (norm) + r·nh·(dn + dv); output nh·dv·C; biases rq,
      r + dr and C when ``bias``;
    - with ``moe_balance='bias'``, E score-correction biases per MoE layer (DeepSeek-V3 counts them).
    """
    C, L, V = cfg.n_embd, cfg.n_layer, cfg.vocab_size
    nh, nkv, hd, H = cfg.n_head, cfg.kv_heads, cfg.head_dim, cfg.mlp_hidden
    qkv_out = (nh + 2 * nkv) * hd

    qkv_bias = qkv_out if (cfg.bias or cfg.qkv_bias) else 0
    out_bias = C if cfg.bias else 0
    attention = L * (C * qkv_out + qkv_bias + nh * hd * C + out_bias)
    latent_norms = 0
    if cfg.attention == "mla":
        rq, r, dr = cfg.q_lora_rank, cfg.kv_lora_rank, cfg.qk_rope_head_dim
        qk, dv, norm = cfg.query_key_dim, cfg.value_dim, 1 if cfg.norm_affine else 0
        latent_norms = L * norm * ((rq if rq else 0) + r)
        queries = C * rq + rq * nh * qk if rq else C * nh * qk
        qkv_bias = ((rq if rq else 0) + r + dr) if cfg.bias else 0  # on the two down projections
        attention = L * (queries + C * (r + dr) + r * nh * (cfg.qk_nope_head_dim + dv) + nh * dv * C
                         + qkv_bias + out_bias) + latent_norms

    up = 2 * H if cfg.mlp == "swiglu" else H
    mlp_bias = (up + C) if cfg.bias else 0
    n_moe = sum(cfg.is_moe_layer(layer) for layer in range(L))
    mlp = (L - n_moe) * (C * up + H * C + mlp_bias)
    routed = active_routed = 0
    if n_moe:  # per MoE layer: router C·E, E experts, shared experts (one MLP), the shared gate C
        He = cfg.moe_expert_hidden
        expert = C * (2 * He if cfg.mlp == "swiglu" else He) + He * C
        shared = cfg.moe_shared_experts * expert + (C if cfg.moe_shared_gate else 0)
        mlp += n_moe * (C * cfg.moe_experts + cfg.moe_experts * expert + shared)
        routed = n_moe * cfg.moe_experts * expert
        active_routed = n_moe * cfg.moe_top_k * expert

    # LayerNorm carries a shift exactly when the model has biases (nn.LayerNorm(bias=cfg.bias)); parameter-free
    # norms (norm_affine off) carry nothing. QK-norm adds a query and a key norm of hd per layer (RMSNorm).
    shift = C if (cfg.norm == "layernorm" and cfg.bias and cfg.norm_affine) else 0
    scale = C if cfg.norm_affine else 0
    per_layer_qk = (nh + nkv) * hd if cfg.qk_norm_scope == "all" else 2 * hd
    qk_norms = L * per_layer_qk if (cfg.qk_norm and cfg.norm_affine) else 0
    norms = (2 * L + 1) * (scale + shift) + qk_norms
    n_ve = sum(cfg.has_value_embedding(layer) for layer in range(L))

    return ParameterCount(
        token_embeddings=V * C,
        position_embeddings=cfg.block_size * C if cfg.position == "learned" else 0,
        attention=attention,
        mlp=mlp,
        norms=norms,
        lm_head=0 if cfg.tie_embeddings else V * C,
        linear_biases=L * (qkv_bias + out_bias + mlp_bias),
        norm_shifts=(2 * L + 1) * shift,
        n_layer=L,
        value_embeddings=n_ve * V * nkv * hd,
        value_gates=n_ve * min(32, C) * nkv,
        routed_experts=routed,
        active_routed_experts=active_routed,
        router_biases=n_moe * cfg.moe_experts if cfg.moe_balance == "bias" else 0,
        latent_norms=latent_norms,
    )
