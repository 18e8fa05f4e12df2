"""ModelConfig: the shape of the one transformer, and named presets with published parameter counts."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from groundup.model.rope import check_rope_scaling


@dataclass(kw_only=True)
class ModelConfig:
    """Shape of a decoder-only transformer: GPT-2 style, Llama style, or any mix the switches allow."""

    name: str = "custom"
    """A label for the shape (a preset's name, or 'custom')."""
    vocab_size: int = 8192
    """Rows of the embedding and of the output head (the tokenizer's vocabulary size, or a multiple of 64 above it)."""
    block_size: int = 256
    """Longest context in tokens (the size of learned position embeddings, or of the RoPE table)."""
    n_layer: int = 4
    """Number of transformer blocks."""
    n_head: int = 4
    """Query heads per attention layer."""
    n_kv_head: int | None = None
    """Key/value heads (grouped-query attention); None means n_head (multi-head attention)."""
    n_embd: int = 256
    """Width of the residual stream."""
    intermediate_size: int | None = None
    """Hidden width of the MLP; None means 4 * n_embd for GELU, the Llama rule (8/3 * n_embd rounded up to 256) for SwiGLU."""
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    """LayerNorm (scale and shift) as in GPT-2, or RMSNorm as in Llama."""
    norm_eps: float = 1e-5
    """Epsilon of the normalization layers."""
    mlp: Literal["gelu", "swiglu", "relu2"] = "gelu"
    """GELU MLP (GPT-2, tanh approximation), SwiGLU (Llama), or ReLU² (relu(x)², as in modded-nanogpt)."""
    position: Literal["learned", "rope"] = "learned"
    """Learned absolute position embeddings (GPT-2) or rotary embeddings (Llama)."""
    rope_theta: float = 10000.0
    """RoPE base frequency."""
    bias: bool = True
    """Biases in every linear layer and in LayerNorm (GPT-2 has them, Llama does not)."""
    qkv_bias: bool = False
    """Biases on the query/key/value projection only (Qwen2 style), when ``bias`` is off."""
    tie_embeddings: bool = True
    """Share the token embedding with the output head."""
    dropout: float = 0.0
    """Dropout on embeddings and residual branches (for fine-tuning; 0 for pretraining)."""
    attention_dropout: float = 0.0
    """Dropout on attention weights."""
    init_std: float = 0.02
    """Standard deviation of the normal weight initialization."""
    qk_norm: bool = False
    """RMSNorm on each head's queries and keys before RoPE (QK-norm, as in OLMo 2, Qwen3 and modded-nanogpt)."""
    norm_affine: bool = True
    """Normalization layers with a learned scale (and LayerNorm's shift); False: parameter-free norms."""
    zero_init_proj: bool = False
    """Initialize the output projections of attention and MLP to zero (each block starts as the identity)."""
    logit_softcap: float | None = None
    """Cap the output logits smoothly to (-c, c) with c * tanh(logits / c) (Gemma 2, modded-nanogpt); None: off."""
    value_embeddings: bool = False
    """Value embeddings (ResFormer, modded-nanogpt, nanochat): on alternating layers, the last included, a
    per-layer token embedding added to the attention values through a learned per-head gate (starting at 1)."""
    head_size: int | None = None
    """Features per attention head; None means n_embd // n_head (Qwen3 and Gemma choose their own)."""
    rope_scaling: dict[str, Any] | None = None
    """RoPE scaling for contexts past the pretraining length, as Hugging Face's rope_parameters write it:
    {"rope_type": "linear" | "dynamic" | "yarn" | "llama3", "factor": ..., and that type's own keys
    (original_max_position_embeddings, low_freq_factor, high_freq_factor, beta_fast, ...)}; None: plain RoPE."""
    sliding_window: int | None = None
    """Sliding-window attention (Mistral): each token sees itself and the sliding_window - 1 tokens before it;
    None: the whole context."""
    qk_norm_scope: Literal["head", "all"] = "head"
    """QK-norm over each head's features ('head': Qwen3, OLMo 2) or over all heads' queries and all keys
    together ('all': OLMoE)."""
    moe_experts: int = 0
    """Routed experts of a mixture-of-experts MLP (model/moe.py); 0: a dense MLP in every layer."""
    moe_top_k: int = 2
    """Experts each token is routed to."""
    moe_hidden: int | None = None
    """Hidden width of each expert; None means intermediate_size (the dense MLP's width)."""
    moe_shared_experts: int = 0
    """Shared experts every token passes through (DeepSeek, Qwen-MoE): one MLP of moe_shared_experts * moe_hidden."""
    moe_shared_gate: bool = False
    """A per-token sigmoid gate on the shared experts' output (Qwen-MoE)."""
    moe_score: Literal["softmax", "sigmoid"] = "softmax"
    """Router scores: softmax over the experts (Mixtral, OLMoE, Qwen-MoE) or a sigmoid per expert (DeepSeek-V3)."""
    moe_normalize: bool = True
    """Renormalize the chosen experts' scores to sum to 1 (Mixtral, DeepSeek-V3; OLMoE and Qwen1.5-MoE do not)."""
    moe_routed_scale: float = 1.0
    """Factor on the routed experts' weights (DeepSeek-V3's routed_scaling_factor, 2.5)."""
    moe_groups: int = 1
    """Expert groups for group-limited routing (DeepSeek-V3: 8); 1: no grouping."""
    moe_group_top_k: int = 1
    """Groups a token's experts may come from, with moe_groups > 1 (DeepSeek-V3: 4)."""
    moe_dense_layers: int = 0
    """The first this many layers keep a dense MLP (DeepSeek-V3: 3)."""
    moe_balance: Literal["aux_loss", "bias"] = "aux_loss"
    """Load balancing: the Switch/GShard auxiliary loss, or DeepSeek-V3's auxiliary-loss-free bias update."""
    moe_aux_loss_coef: float = 0.01
    """Weight of the auxiliary balancing loss in the training loss (with moe_balance='aux_loss')."""
    moe_z_loss_coef: float = 0.0
    """Weight of the router z-loss (ST-MoE: 1e-3); 0: logged, not trained on."""
    moe_bias_rate: float = 1e-3
    """Step of the auxiliary-loss-free bias update per optimizer step (DeepSeek-V3's gamma)."""
    attention: Literal["mha", "mla"] = "mha"
    """Multi-head attention (grouped-query with n_kv_head), or multi-head latent attention ('mla', DeepSeek-V2/V3):
    queries and keys/values pass through low-rank latents, a RoPE key of qk_rope_head_dim is shared by the heads,
    and the KV cache keeps only the kv latent and that key. Needs position='rope'."""
    q_lora_rank: int = 0
    """MLA: rank of the query latent (DeepSeek-V3: 1536); 0: queries straight from the residual (DeepSeek-V2-Lite)."""
    kv_lora_rank: int = 512
    """MLA: rank of the key/value latent, what the KV cache keeps per token and layer besides the RoPE key."""
    qk_nope_head_dim: int = 128
    """MLA: each head's query/key features without rotary position (decompressed from the latent)."""
    qk_rope_head_dim: int = 64
    """MLA: each head's query features with RoPE, and the one RoPE key all heads share."""
    v_head_dim: int = 128
    """MLA: each head's value features."""

    def __post_init__(self) -> None:
        problems = []
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_head > 0 and self.head_size is None and self.n_embd % self.n_head and self.attention != "mla":
            problems.append(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.n_kv_head is not None and (self.n_kv_head <= 0 or self.n_head % self.n_kv_head):
            problems.append(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        if self.head_size is not None and self.head_size <= 0:
            problems.append(f"head_size must be positive or None, got {self.head_size}")
        elif self.position == "rope" and self.n_head > 0 and self.rope_dim % 2:
            problems.append(f"RoPE needs an even head size, got {self.rope_dim}")
        if self.sliding_window is not None and self.sliding_window < 1:
            problems.append(f"sliding_window must be >= 1 or None, got {self.sliding_window}")
        problems += check_rope_scaling(self.rope_scaling)
        problems += self._moe_problems()
        problems += self._mla_problems()
        if self.rope_scaling is not None and self.position != "rope":
            problems.append("rope_scaling needs position='rope'")
        if self.norm not in ("layernorm", "rmsnorm"):
            problems.append(f"norm must be 'layernorm' or 'rmsnorm', got {self.norm!r}")
        if self.mlp not in ("gelu", "swiglu", "relu2"):
            problems.append(f"mlp must be 'gelu', 'swiglu' or 'relu2', got {self.mlp!r}")
        if self.position not in ("learned", "rope"):
            problems.append(f"position must be 'learned' or 'rope', got {self.position!r}")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.logit_softcap is not None and not self.logit_softcap > 0:
            problems.append(f"logit_softcap must be positive or None, got {self.logit_softcap}")
        if problems:
            raise ValueError("invalid model config: " + "; ".join(problems))

    def _moe_problems(self) -> list[str]:
        if self.qk_norm_scope not in ("head", "all"):
            return [f"qk_norm_scope must be 'head' or 'all', got {self.qk_norm_scope!r}"]
        if self.moe_experts == 0:
            return []
        problems = []
        if self.moe_experts < 0:
            problems.append(f"moe_experts must be >= 0, got {self.moe_experts}")
        if not 1 <= self.moe_top_k <= self.moe_experts:
            problems.append(f"moe_top_k ({self.moe_top_k}) must be between 1 and moe_experts ({self.moe_experts})")
        if self.moe_score not in ("softmax", "sigmoid"):
            problems.append(f"moe_score must be 'softmax' or 'sigmoid', got {self.moe_score!r}")
        if self.moe_balance not in ("aux_loss", "bias"):
            problems.append(f"moe_balance must be 'aux_loss' or 'bias', got {self.moe_balance!r}")
        if self.moe_groups < 1 or self.moe_experts % self.moe_groups:
            problems.append(f"moe_groups ({self.moe_groups}) must divide moe_experts ({self.moe_experts})")
        elif not 1 <= self.moe_group_top_k <= self.moe_groups:
            problems.append(f"moe_group_top_k ({self.moe_group_top_k}) must be between 1 and moe_groups "
                            f"({self.moe_groups})")
        elif self.moe_top_k > self.moe_group_top_k * self.moe_experts // self.moe_groups:
            problems.append(f"moe_top_k ({self.moe_top_k}) exceeds the experts of moe_group_top_k groups")
        if not 0 <= self.moe_dense_layers <= self.n_layer:
            problems.append(f"moe_dense_layers ({self.moe_dense_layers}) must be between 0 and n_layer")
        if self.moe_shared_experts < 0:
            problems.append(f"moe_shared_experts must be >= 0, got {self.moe_shared_experts}")
        if self.moe_shared_gate and not self.moe_shared_experts:
            problems.append("moe_shared_gate needs moe_shared_experts > 0")
        if self.bias:
            problems.append("moe_experts needs bias=False (experts have no biases)")
        return problems

    def _mla_problems(self) -> list[str]:
        if self.attention not in ("mha", "mla"):
            return [f"attention must be 'mha' or 'mla', got {self.attention!r}"]
        if self.attention == "mha":
            return []
        problems = [f"{name} must be positive with attention='mla', got {getattr(self, name)}"
                    for name in ("kv_lora_rank", "qk_rope_head_dim", "v_head_dim") if getattr(self, name) <= 0]
        problems += [f"{name} must be >= 0, got {getattr(self, name)}" for name in ("q_lora_rank", "qk_nope_head_dim")
                     if getattr(self, name) < 0]
        if self.position != "rope":
            problems.append(f"attention='mla' needs position='rope' (its decoupled RoPE key), got {self.position!r}")
        if self.n_kv_head not in (None, self.n_head):
            problems.append(f"n_kv_head={self.n_kv_head} does not apply to attention='mla' (every head reads the "
                            "one latent)")
        # Switches of the grouped-query attention that latent attention has no place for.
        problems += [f"{name}={getattr(self, name)!r} does not apply to attention='mla'"
                     for name, off in (("qk_norm", False), ("value_embeddings", False), ("qkv_bias", False),
                                       ("head_size", None)) if getattr(self, name) != off]
        return problems

    def is_moe_layer(self, layer: int) -> bool:
        """Whether block ``layer`` has a mixture-of-experts MLP (every layer after the first moe_dense_layers)."""
        return self.moe_experts > 0 and layer >= self.moe_dense_layers

    @property
    def moe_expert_hidden(self) -> int:
        return self.moe_hidden or self.mlp_hidden

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def head_dim(self) -> int:
        return self.head_size or self.n_embd // self.n_head

    @property
    def rope_dim(self) -> int:
        """Features of a head that RoPE rotates: the whole head, or MLA's qk_rope_head_dim."""
        return self.qk_rope_head_dim if self.attention == "mla" else self.head_dim

    @property
    def query_key_dim(self) -> int:
        """Features of a head's query and key (their dot product): head_dim, or MLA's nope plus rope features."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim if self.attention == "mla" else self.head_dim

    @property
    def value_dim(self) -> int:
        """Features of a head's value (and attention output): head_dim, or MLA's v_head_dim."""
        return self.v_head_dim if self.attention == "mla" else self.head_dim

    @property
    def kv_cache_entry(self) -> tuple[int, int, int]:
        """What the KV cache keeps per token and layer: (heads, key features, value features). Grouped-query
        attention: (n_kv_head, head_dim, head_dim); latent attention: one entry of the kv latent
        (kv_lora_rank) and the shared RoPE key (qk_rope_head_dim), in the places of the key and the value."""
        if self.attention == "mla":
            return 1, self.kv_lora_rank, self.qk_rope_head_dim
        return self.kv_heads, self.head_dim, self.head_dim

    @property
    def mlp_hidden(self) -> int:
        if self.intermediate_size is not None:
            return self.intermediate_size
        if self.mlp in ("gelu", "relu2"):
            return 4 * self.n_embd
        hidden = int(2 * 4 * self.n_embd / 3)
        return 256 * ((hidden + 255) // 256)

    def has_value_embedding(self, layer: int) -> bool:
        """Whether block ``layer`` adds a value embedding: every other layer, counting back from the last."""
        return self.value_embeddings and (self.n_layer - 1 - layer) % 2 == 0

    @property
    def family(self) -> str:
        """'gpt2' or 'llama' when the shape is one of them (what interop can export), else 'custom'."""
        if self.norm == "layernorm" and self.mlp == "gelu" and self.position == "learned":
            return "gpt2"
        if self.norm == "rmsnorm" and self.mlp == "swiglu" and self.position == "rope":
            return "llama"
        return "custom"

    @classmethod
    def gpt2(cls, **kwargs) -> ModelConfig:
        base = dict(norm="layernorm", mlp="gelu", position="learned", bias=True, tie_embeddings=True,
                    vocab_size=50257, block_size=1024)
        return cls(**{**base, **kwargs})

    @classmethod
    def llama(cls, **kwargs) -> ModelConfig:
        base = dict(norm="rmsnorm", mlp="swiglu", position="rope", bias=False, tie_embeddings=False,
                    vocab_size=32000, block_size=4096)
        return cls(**{**base, **kwargs})

    @classmethod
    def from_name(cls, name: str, **overrides) -> ModelConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}")
        return dataclasses.replace(PRESETS[name](), **overrides)


PRESETS = {
    # GPT-2 family (Radford et al. 2019): tied head, 1024 positions, 50257 tokens.
    "gpt2-124m": lambda: ModelConfig.gpt2(name="gpt2-124m", n_layer=12, n_head=12, n_embd=768),
    "gpt2-355m": lambda: ModelConfig.gpt2(name="gpt2-355m", n_layer=24, n_head=16, n_embd=1024),
    "gpt2-774m": lambda: ModelConfig.gpt2(name="gpt2-774m", n_layer=36, n_head=20, n_embd=1280),
    "gpt2-1.5b": lambda: ModelConfig.gpt2(name="gpt2-1.5b", n_layer=48, n_head=25, n_embd=1600),
    # Llama family.
    "tinyllama-1.1b": lambda: ModelConfig.llama(name="tinyllama-1.1b", n_layer=22, n_head=32, n_kv_head=4,
                                                n_embd=2048, intermediate_size=5632, block_size=2048),
    "llama-2-7b": lambda: ModelConfig.llama(name="llama-2-7b", n_layer=32, n_head=32, n_embd=4096,
                                            intermediate_size=11008),
    "llama-3-8b": lambda: ModelConfig.llama(name="llama-3-8b", vocab_size=128256, n_layer=32, n_head=32,
                                            n_kv_head=8, n_embd=4096, intermediate_size=14336,
                                            block_size=8192, rope_theta=500000.0),
    # Mixtures of experts (counts on the meta device agree with transformers'; DeepSeek-V3's adds the routers'
    # score-correction biases, as DeepSeek's own code counts them).
    "mixtral-8x7b": lambda: ModelConfig.llama(name="mixtral-8x7b", n_layer=32, n_head=32, n_kv_head=8, n_embd=4096,
                                              intermediate_size=14336, block_size=32768, rope_theta=1e6,
                                              moe_experts=8, moe_top_k=2, moe_aux_loss_coef=0.02),
    "olmoe-1b-7b": lambda: ModelConfig.llama(name="olmoe-1b-7b", vocab_size=50304, n_layer=16, n_head=16,
                                             n_embd=2048, intermediate_size=1024, block_size=4096,
                                             qk_norm=True, qk_norm_scope="all", moe_experts=64, moe_top_k=8,
                                             moe_normalize=False, moe_z_loss_coef=1e-3),
    "qwen1.5-moe-a2.7b": lambda: ModelConfig.llama(name="qwen1.5-moe-a2.7b", vocab_size=151936, n_layer=24,
                                                   n_head=16, n_embd=2048, intermediate_size=5632, moe_hidden=1408,
                                                   block_size=8192, rope_theta=1e6, norm_eps=1e-6, qkv_bias=True,
                                                   moe_experts=60, moe_top_k=4, moe_shared_experts=4,
                                                   moe_shared_gate=True, moe_normalize=False,
                                                   moe_aux_loss_coef=1e-3),
    # DeepSeek-V3 (DeepSeek-AI 2024): latent attention, 3 dense layers then 58 of 256 routed experts (top 8 from the
    # best 4 of 8 groups, sigmoid scores, bias balancing) and one shared expert; YaRN to 128K positions. The
    # multi-token prediction module (layer 61 of the checkpoint) is not part of the model.
    "deepseek-v3": lambda: ModelConfig.llama(
        name="deepseek-v3", vocab_size=129280, n_layer=61, n_head=128, n_embd=7168, intermediate_size=18432,
        block_size=163840, norm_eps=1e-6, rope_theta=10000.0,
        rope_scaling={"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096,
                      "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
        attention="mla", q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
        v_head_dim=128, moe_experts=256, moe_top_k=8, moe_hidden=2048, moe_shared_experts=1, moe_score="sigmoid",
        moe_routed_scale=2.5, moe_groups=8, moe_group_top_k=4, moe_dense_layers=3, moe_balance="bias"),
    # Small shapes for laptops and tests.
    "tiny-gpt2": lambda: ModelConfig.gpt2(name="tiny-gpt2", vocab_size=8192, block_size=256, n_layer=4,
                                          n_head=4, n_embd=256),
    "tiny-llama": lambda: ModelConfig.llama(name="tiny-llama", vocab_size=8192, block_size=256, n_layer=4,
                                            n_head=4, n_kv_head=2, n_embd=256, tie_embeddings=True),
}
