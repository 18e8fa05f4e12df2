"""Hugging Face interop for DeepSeek-V3 (``DeepseekV3ForCausalLM``): latent attention with mixtures of experts.

groundup's ``attention='mla'`` with DeepSeek's routing (sigmoid scores, score-correction bias, groups, a routed
scale, shared experts, dense first layers) is this architecture; :mod:`groundup.interop.hf` hands every
DeepSeek-V3 config, tensor layout and folder to this module.

- RoPE layout: DeepSeek's checkpoints rotate interleaved pairs (x0, x1), (x2, x3), ... of the RoPE features
  (``rope_interleave``, on in DeepSeek-V3's config); groundup rotates halves (x_i, x_{i+d/2}) as Llama does.
  The rotation of a pair is the same, so permuting the RoPE rows of the query projection (``q_b_proj`` or
  ``q_proj``, per head) and of ``kv_a_proj_with_mqa`` (evens first, then odds) gives the same attention scores:
  import permutes, export permutes back and writes ``rope_interleave: true``.
- Experts: transformers keeps each layer's experts stacked (``experts.gate_up_proj`` (E, 2H, C), ``down_proj``
  (E, C, H): groundup's ``experts.fc``/``proj``); its ``save_pretrained`` writes them one per expert
  (``experts.{e}.gate_proj.weight`` ...), as DeepSeek's checkpoints do. Import reads either.
- The multi-token-prediction module (DeepSeek-V3's layer 61) is not part of groundup's model: its tensors are
  skipped on import, as transformers skips them. FP8 checkpoints (``weight_scale_inv``) are refused: convert
  them to bfloat16 first.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import torch

from groundup.model.config import ModelConfig

log = logging.getLogger(__name__)

ARCH = "deepseek_v3"


def _unsupported(message: str):
    from groundup.interop.hf import UnsupportedModelError

    return UnsupportedModelError(message)


# ---------------------------------------------------------------------------- which shapes map


def check_exportable(config: ModelConfig) -> str:
    """``'deepseek_v3'`` when ``DeepseekV3ForCausalLM`` computes what ``config`` (attention='mla') does; else
    UnsupportedModelError naming every setting it cannot express."""
    need = {"norm": "rmsnorm", "mlp": "swiglu", "position": "rope", "bias": False, "sliding_window": None}
    if config.moe_experts:
        need |= {"moe_score": "sigmoid", "moe_balance": "bias", "moe_shared_gate": False}
    off = [f"{name}={getattr(config, name)!r} (needs {want!r})" for name, want in need.items()
           if getattr(config, name) != want]
    if off:
        raise _unsupported(f"model settings {', '.join(off)} map onto no Hugging Face architecture with latent "
                           "attention (DeepseekV3ForCausalLM)")
    return ARCH


# ---------------------------------------------------------------------------- RoPE rows


def _deinterleave(dr: int) -> torch.Tensor:
    """Row order taking interleaved RoPE pairs to groundup's halves: evens, then odds."""
    return torch.cat((torch.arange(0, dr, 2), torch.arange(1, dr, 2)))


def _permute_query_rope(w: torch.Tensor, config: ModelConfig, order: torch.Tensor) -> torch.Tensor:
    """The query projection (nh * (dn + dr), in) with each head's last dr rows reordered by ``order``."""
    dn = config.qk_nope_head_dim
    heads = w.unflatten(0, (config.n_head, dn + config.qk_rope_head_dim))
    return torch.cat((heads[:, :dn], heads[:, dn:][:, order]), dim=1).flatten(0, 1)


def _permute_kv_rope(w: torch.Tensor, config: ModelConfig, order: torch.Tensor) -> torch.Tensor:
    """``kv_a_proj_with_mqa`` (r + dr, C) (or its bias) with the last dr rows (the RoPE key) reordered."""
    r = config.kv_lora_rank
    return torch.cat((w[:r], w[r:][order]))


# ---------------------------------------------------------------------------- names


def hf_param_names(config: ModelConfig) -> dict[str, str]:
    """groundup parameter (and score-correction bias) name -> DeepseekV3ForCausalLM's; fused SwiGLU ``fc`` -> the
    ``+``-joined gate and up projections; the query and kv projections' RoPE rows are permuted on the way."""
    names = {"tok_embeddings.weight": "model.embed_tokens.weight", "final_norm.weight": "model.norm.weight",
             "lm_head.weight": "lm_head.weight"}
    for i in range(config.n_layer):
        p, h = f"blocks.{i}.", f"model.layers.{i}."
        pairs = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm",
                 "attn.kv_down": "self_attn.kv_a_proj_with_mqa", "attn.kv_latent_norm": "self_attn.kv_a_layernorm",
                 "attn.kv_up": "self_attn.kv_b_proj", "attn.proj": "self_attn.o_proj"}
        if config.q_lora_rank:
            pairs |= {"attn.q_down": "self_attn.q_a_proj", "attn.q_latent_norm": "self_attn.q_a_layernorm",
                      "attn.q_up": "self_attn.q_b_proj"}
        else:
            pairs["attn.q"] = "self_attn.q_proj"
        names |= {f"{p}{ours}.weight": f"{h}{theirs}.weight" for ours, theirs in pairs.items()}
        if not config.is_moe_layer(i):
            names[p + "mlp.fc.weight"] = f"{h}mlp.gate_proj.weight+{h}mlp.up_proj.weight"
            names[p + "mlp.proj.weight"] = h + "mlp.down_proj.weight"
            continue
        names |= {p + "mlp.router.weight": h + "mlp.gate.weight",
                  p + "mlp.expert_bias": h + "mlp.gate.e_score_correction_bias",
                  p + "mlp.experts.fc": h + "mlp.experts.gate_up_proj",
                  p + "mlp.experts.proj": h + "mlp.experts.down_proj"}
        if config.moe_shared_experts:
            names[p + "mlp.shared.fc.weight"] = (f"{h}mlp.shared_experts.gate_proj.weight+"
                                                 f"{h}mlp.shared_experts.up_proj.weight")
            names[p + "mlp.shared.proj.weight"] = h + "mlp.shared_experts.down_proj.weight"
    return names


# ---------------------------------------------------------------------------- state dicts, both ways


def _rope_rows(name: str, w: torch.Tensor, config: ModelConfig, order: torch.Tensor) -> torch.Tensor:
    """``w`` (the groundup parameter ``name`` or its transformers twin) with its RoPE rows put in ``order``:
    the query projection's per head, the kv down-projection's shared key; any other tensor as it is."""
    if name.endswith(("attn.q.weight", "attn.q_up.weight")):
        return _permute_query_rope(w, config, order)
    if name.endswith("attn.kv_down.weight"):
        return _permute_kv_rope(w, config, order)
    return w


def to_hf_state_dict(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """groundup state dict -> DeepseekV3ForCausalLM's (stacked experts, interleaved RoPE rows), by
    :func:`hf_param_names`."""
    interleave = torch.argsort(_deinterleave(config.qk_rope_head_dim))
    ref = state["tok_embeddings.weight"]
    out = {}
    for ours, theirs in hf_param_names(config).items():
        if ours == "lm_head.weight":
            out[theirs] = state.get(ours, ref)  # a tied head is the embedding
            continue
        tensor = _rope_rows(ours, state[ours], config, interleave)
        if "+" in theirs:  # the fused SwiGLU fc: gate rows, then up rows
            gate, up = theirs.split("+")
            out[gate], out[up] = tensor.chunk(2)
        else:
            out[theirs] = tensor
    if not config.moe_shared_experts:  # transformers always builds the shared MLP: with none it is 0 units wide
        C = config.n_embd
        for i in filter(config.is_moe_layer, range(config.n_layer)):
            m = f"model.layers.{i}.mlp.shared_experts."
            out[m + "gate_proj.weight"], out[m + "up_proj.weight"] = ref.new_zeros(0, C), ref.new_zeros(0, C)
            out[m + "down_proj.weight"] = ref.new_zeros(C, 0)
    return out


def from_hf_state_dict(t: dict[str, torch.Tensor], config: ModelConfig, interleaved: bool) -> dict[str, torch.Tensor]:
    """DeepseekV3ForCausalLM's state dict (stacked experts, checked) -> groundup's, by :func:`hf_param_names`;
    ``interleaved``: the checkpoint's RoPE rows are in pairs (``rope_interleave``)."""
    order = _deinterleave(config.qk_rope_head_dim) if interleaved else torch.arange(config.qk_rope_head_dim)
    out = {}
    for ours, theirs in hf_param_names(config).items():
        if ours == "lm_head.weight" and config.tie_embeddings:
            continue
        tensor = torch.cat([t[name] for name in theirs.split("+")]) if "+" in theirs else t[theirs]
        out[ours] = _rope_rows(ours, tensor, config, order)
    return out


_EXPERT = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate|up|down)_proj\.weight$")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def normalize_tensors(tensors: dict[str, Any], config: ModelConfig, where: str) -> dict[str, Any]:
    """A DeepSeek-V3 checkpoint's tensors as transformers' model holds them: experts saved one per expert stacked
    into ``gate_up_proj``/``down_proj``, the multi-token-prediction layers (past ``n_layer``) left out."""
    if any(k.endswith("weight_scale_inv") for k in tensors):
        raise _unsupported(f"{where}: FP8 block-quantized weights (weight_scale_inv) are not supported; convert the "
                           "checkpoint to bfloat16 first")
    out: dict[str, Any] = {}
    experts: dict[str, dict[int, dict[str, Any]]] = {}
    skipped = 0
    for name, tensor in tensors.items():
        layer = _LAYER.match(name)
        if layer and int(layer.group(1)) >= config.n_layer:
            skipped += 1
            continue
        found = _EXPERT.match(name)
        if found:
            experts.setdefault(found.group(1), {}).setdefault(int(found.group(2)), {})[found.group(3)] = tensor
        else:
            out[name] = tensor
    if skipped:
        log.info("%s: skipped %d tensors of the multi-token-prediction layers (not part of the model)", where, skipped)
    for prefix, by_expert in experts.items():
        ids = sorted(by_expert)
        parts = [by_expert[e] for e in ids]
        if ids != list(range(len(ids))) or any(set(part) != {"gate", "up", "down"} for part in parts):
            raise _unsupported(f"{where}: {prefix} has an incomplete set of experts (ids {ids[:4]}...)")
        out[prefix + ".gate_up_proj"] = torch.stack([torch.cat((q["gate"][:], q["up"][:])) for q in parts])
        out[prefix + ".down_proj"] = torch.stack([q["down"][:] for q in parts])
    return out


# ---------------------------------------------------------------------------- configs, both ways


def hf_config_dict(config: ModelConfig, common: dict[str, Any]) -> dict[str, Any]:
    """DeepseekV3Config's fields for ``config`` (``common``: the vocabulary, tying and special ids)."""
    moe = config.moe_experts > 0
    rope = {"rope_type": "default", "rope_theta": config.rope_theta}
    if config.rope_scaling is not None:
        rope = {**config.rope_scaling, "rope_theta": config.rope_theta}
    return {"architectures": ["DeepseekV3ForCausalLM"], "model_type": ARCH, **common,
            "hidden_size": config.n_embd, "intermediate_size": config.mlp_hidden,
            "num_hidden_layers": config.n_layer, "num_attention_heads": config.n_head,
            "num_key_value_heads": config.n_head, "hidden_act": "silu",
            "q_lora_rank": config.q_lora_rank or None, "kv_lora_rank": config.kv_lora_rank,
            "qk_nope_head_dim": config.qk_nope_head_dim, "qk_rope_head_dim": config.qk_rope_head_dim,
            "v_head_dim": config.v_head_dim, "rope_interleave": True,
            # a dense model: every layer before first_k_dense_replace
            "first_k_dense_replace": config.moe_dense_layers if moe else config.n_layer,
            "n_routed_experts": config.moe_experts if moe else 1,
            "num_experts_per_tok": config.moe_top_k if moe else 1,
            "moe_intermediate_size": config.moe_expert_hidden,
            "n_shared_experts": config.moe_shared_experts,
            "n_group": config.moe_groups if moe else 1, "topk_group": config.moe_group_top_k if moe else 1,
            "norm_topk_prob": config.moe_normalize, "routed_scaling_factor": config.moe_routed_scale,
            "max_position_embeddings": config.block_size, "rms_norm_eps": config.norm_eps,
            "rope_theta": config.rope_theta, "rope_parameters": rope,
            "attention_bias": False, "attention_dropout": config.attention_dropout}


def config_from_hf(hf: dict[str, Any], where: str) -> tuple[ModelConfig, bool]:
    """groundup's ModelConfig from a DeepSeek-V3 ``config.json``, and whether its RoPE rows are interleaved."""
    from groundup.interop.hf import _rope

    def need(key: str):
        if hf.get(key) is None:
            raise _unsupported(f"{where}: missing key {key!r}")
        return hf[key]

    if hf.get("hidden_act", "silu") != "silu":
        raise _unsupported(f"{where}: hidden_act {hf['hidden_act']!r} is not supported (SwiGLU needs 'silu')")
    if hf.get("attention_bias"):
        raise _unsupported(f"{where}: attention_bias=true is not supported with latent attention")
    if hf.get("scoring_func", "sigmoid") != "sigmoid":
        raise _unsupported(f"{where}: scoring_func {hf['scoring_func']!r} is not supported (DeepSeek-V3 routes by "
                           "sigmoid scores)")
    n_layer = int(need("num_hidden_layers"))
    experts = int(hf.get("n_routed_experts") or 0)
    dense = min(int(hf.get("first_k_dense_replace") or 0), n_layer)
    moe = experts > 0 and dense < n_layer
    theta, scaling, block_size = _rope(hf, where)
    moe_fields: dict[str, Any] = {}
    if moe:
        moe_fields = dict(moe_experts=experts, moe_top_k=int(need("num_experts_per_tok")),
                          moe_hidden=int(need("moe_intermediate_size")),
                          moe_shared_experts=int(hf.get("n_shared_experts") or 0), moe_score="sigmoid",
                          moe_normalize=bool(hf.get("norm_topk_prob", True)),
                          moe_routed_scale=float(hf.get("routed_scaling_factor", 1.0)),
                          moe_groups=int(hf.get("n_group") or 1), moe_group_top_k=int(hf.get("topk_group") or 1),
                          moe_dense_layers=dense, moe_balance="bias")
    config = ModelConfig.llama(
        name=str(hf.get("_name_or_path") or ARCH), vocab_size=int(need("vocab_size")), block_size=block_size,
        n_layer=n_layer, n_head=int(need("num_attention_heads")), n_embd=int(need("hidden_size")),
        intermediate_size=int(need("intermediate_size")), norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=theta, rope_scaling=scaling, tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attention="mla", q_lora_rank=int(hf.get("q_lora_rank") or 0), kv_lora_rank=int(need("kv_lora_rank")),
        qk_nope_head_dim=int(need("qk_nope_head_dim")), qk_rope_head_dim=int(need("qk_rope_head_dim")),
        v_head_dim=int(need("v_head_dim")), **moe_fields)
    return config, bool(hf.get("rope_interleave", True))
