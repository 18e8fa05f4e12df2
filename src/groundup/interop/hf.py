"""Hugging Face transformers interop: groundup's Transformer <-> GPT2LMHeadModel / LlamaForCausalLM.

The two model families groundup's one transformer can be map onto the two architectures every
runtime knows (transformers, vLLM, TGI, llama.cpp's converter):

- GPT-2 family (LayerNorm, learned positions, GELU-tanh MLP) -> ``GPT2LMHeadModel``. HF GPT-2 keeps
  its linear weights as ``Conv1D`` ((in, out), the transpose of ``nn.Linear``), always has biases (an
  export without biases writes zeros, which computes the same function) and has no grouped-query
  attention (an export repeats each key/value head for the query heads it serves, which is exact).
- Llama family (RMSNorm, RoPE, SwiGLU) -> ``LlamaForCausalLM``. groundup fuses q/k/v into one
  ``qkv`` matrix and gate/up into one ``fc`` matrix; HF keeps them apart. groundup's RoPE already
  uses the half-split layout HF Llama checkpoints use, so no row permutation is needed. Q/K/V biases
  without other biases (Qwen2 style) export as ``attention_bias=True`` with a zero output bias.

Latent attention (``attention='mla'``) maps onto ``DeepseekV3ForCausalLM``: see
:mod:`groundup.interop.hf_deepseek`, which this module hands those shapes, tensors and configs to.
Mixtures of experts map onto ``MixtralForCausalLM``, ``OlmoeForCausalLM`` and ``Qwen2MoeForCausalLM`` (see
:data:`MOE_MODEL_TYPES`), both ways.

Import reads the same layouts plus Mistral, Qwen2 and Qwen3 (Llama-shaped) from a local folder's
safetensors (one file or sharded with an index) or ``pytorch_model.bin`` (``weights_only`` loading),
checking every tensor's name and shape against the expected layout before anything is loaded.

Everything here works on state dicts, so the conversion can be tested without ``transformers``;
``to_transformers``/``from_transformers`` and the folder writers import it lazily (interop extra).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from groundup.extras import import_extra
from groundup.interop import VerificationError
from groundup.model.config import ModelConfig
from groundup.model.transformer import Transformer

log = logging.getLogger(__name__)

IMPORTABLE = ("gpt2", "llama", "mistral", "qwen2", "qwen3", "mixtral", "olmoe", "qwen2_moe", "deepseek_v3")
"""HF ``model_type`` values ``import`` reads."""
# Non-parameter buffers some checkpoints carry (GPT-2's causal mask, old Llama's RoPE frequencies).
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")
_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


class UnsupportedModelError(ValueError):
    """A model shape or checkpoint that does not map between groundup and transformers; says what does not."""


# ---------------------------------------------------------------------------- which HF architecture


NO_HF_EQUIVALENT = {"qk_norm": False, "norm_affine": True, "logit_softcap": None, "value_embeddings": False}
"""Block switches that the architectures groundup exports cannot express, with the value they need
(``mlp='relu2'`` is refused by the family check below; a sliding window and RoPE scaling export as Llama-family
options: MistralForCausalLM, ``rope_parameters``)."""


def hf_architecture(config: ModelConfig) -> str:
    """``'gpt2'`` or ``'llama'``: the HF architecture that computes exactly what ``config`` does.

    Raises UnsupportedModelError naming every switch that neither GPT2LMHeadModel nor LlamaForCausalLM
    can express (say LayerNorm with RoPE).
    """
    # OLMoE's QK-norm over whole projections exports with the mixture-of-experts families (moe_family)
    moe_qk_norm = {"qk_norm"} if config.moe_experts and config.qk_norm_scope == "all" else set()
    unmapped = [f"{name}={getattr(config, name)!r} (needs {want!r})" for name, want in NO_HF_EQUIVALENT.items()
                if getattr(config, name) != want and name not in moe_qk_norm]
    if unmapped:
        raise UnsupportedModelError(f"model switches {', '.join(unmapped)} map onto no Hugging Face or GGUF "
                                    "architecture groundup exports")
    if config.attention == "mla":
        from groundup.interop import hf_deepseek

        return hf_deepseek.check_exportable(config)
    family = config.family
    if family == "llama" and config.sliding_window is not None and (config.bias or config.qkv_bias):
        raise UnsupportedModelError("model switches sliding_window with biases map onto no Hugging Face "
                                    "architecture groundup exports (MistralForCausalLM has no biases)")
    if family == "gpt2" and config.sliding_window is not None:
        raise UnsupportedModelError("model switch sliding_window needs the Llama family (GPT2LMHeadModel has none)")
    if family == "gpt2" and config.moe_experts:
        raise UnsupportedModelError(f"model switch moe_experts={config.moe_experts} needs the Llama family "
                                    "(RMSNorm, RoPE, SwiGLU): the Hugging Face MoE architectures are Llama-shaped")
    if family == "llama" and config.moe_experts:
        moe_family(config)  # refuses an MoE layout that no HF class computes, naming the setting
    if family in ("gpt2", "llama"):
        return family
    gpt2 = {"norm": "layernorm", "position": "learned", "mlp": "gelu"}
    llama = {"norm": "rmsnorm", "position": "rope", "mlp": "swiglu"}

    def off(target: dict[str, str]) -> str:
        return ", ".join(f"{k}={getattr(config, k)!r} (needs {v!r})" for k, v in target.items()
                         if getattr(config, k) != v)

    raise UnsupportedModelError(
        f"model shape norm={config.norm!r}, position={config.position!r}, mlp={config.mlp!r} maps onto no "
        f"Hugging Face architecture: as GPT2LMHeadModel {off(gpt2)}; as LlamaForCausalLM {off(llama)}")


@dataclasses.dataclass(frozen=True)
class HFLayout:
    """Which optional tensors the HF side has (they may be absent, or present where groundup has none)."""

    arch: str
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    """RMSNorm on queries and keys (``self_attn.q_norm``/``k_norm``: per head in Qwen3, whole projections in OLMoE)."""
    moe: str | None = None
    """The mixture-of-experts family (``'mixtral'``, ``'olmoe'``, ``'qwen2_moe'``), None for a dense model."""
    rope_interleave: bool = False
    """RoPE on interleaved pairs of features (DeepSeek-V3's checkpoints): rows are permuted on the way in."""


def export_layout(config: ModelConfig) -> HFLayout:
    arch = hf_architecture(config)
    if arch == "gpt2":
        return HFLayout("gpt2", True, True, True)  # HF GPT-2 always has every bias
    if arch == "deepseek_v3":
        return HFLayout(arch, rope_interleave=True)
    attention_bias = config.bias or config.qkv_bias  # HF Llama's attention_bias covers q, k, v and o together
    if config.moe_experts:
        return moe_export_layout(config)
    return HFLayout("llama", attention_bias, attention_bias, config.bias)


def hf_param_names(config: ModelConfig) -> dict[str, str]:
    """groundup parameter name -> HF parameter name, for the architecture ``config`` exports to.

    A fused groundup tensor maps onto several HF tensors joined with ``+`` in concatenation order
    (dim 0): Llama ``qkv`` -> ``q_proj+k_proj+v_proj`` (``n_head``, ``n_kv_head``, ``n_kv_head`` heads of
    ``head_dim`` rows), Llama ``mlp.fc`` -> ``gate_proj+up_proj``. GPT-2's ``Conv1D`` weights (attn
    c_attn/c_proj, mlp c_fc/c_proj) are the transposes of groundup's. A tied ``lm_head.weight`` is listed
    too (HF ties it the same way).
    """
    layout = export_layout(config)
    if layout.arch == "deepseek_v3":
        from groundup.interop import hf_deepseek

        return hf_deepseek.hf_param_names(config)
    names: dict[str, str] = {}
    if layout.arch == "gpt2":
        names["tok_embeddings.weight"] = "transformer.wte.weight"
        names["pos_embeddings.weight"] = "transformer.wpe.weight"
        for i in range(config.n_layer):
            p, h = f"blocks.{i}.", f"transformer.h.{i}."
            pairs = {"attn_norm": "ln_1", "attn.qkv": "attn.c_attn", "attn.proj": "attn.c_proj",
                     "mlp_norm": "ln_2", "mlp.fc": "mlp.c_fc", "mlp.proj": "mlp.c_proj"}
            for ours, theirs in pairs.items():
                names[f"{p}{ours}.weight"] = f"{h}{theirs}.weight"
                if config.bias or (ours == "attn.qkv" and config.qkv_bias):
                    names[f"{p}{ours}.bias"] = f"{h}{theirs}.bias"
        names["final_norm.weight"] = "transformer.ln_f.weight"
        if config.bias:
            names["final_norm.bias"] = "transformer.ln_f.bias"
    else:
        names["tok_embeddings.weight"] = "model.embed_tokens.weight"
        for i in range(config.n_layer):
            p, h = f"blocks.{i}.", f"model.layers.{i}."
            names[f"{p}attn_norm.weight"] = f"{h}input_layernorm.weight"
            names[f"{p}mlp_norm.weight"] = f"{h}post_attention_layernorm.weight"
            for kind in ("weight", "bias"):
                if kind == "weight" or config.bias or config.qkv_bias:
                    names[f"{p}attn.qkv.{kind}"] = "+".join(f"{h}self_attn.{x}_proj.{kind}" for x in "qkv")
                if kind == "weight" or config.bias:
                    names[f"{p}attn.proj.{kind}"] = f"{h}self_attn.o_proj.{kind}"
                if (kind == "weight" or config.bias) and not config.is_moe_layer(i):
                    names[f"{p}mlp.fc.{kind}"] = f"{h}mlp.gate_proj.{kind}+{h}mlp.up_proj.{kind}"
                    names[f"{p}mlp.proj.{kind}"] = f"{h}mlp.down_proj.{kind}"
            if config.is_moe_layer(i):
                names.update(moe_param_names(config, p, h))
            if config.qk_norm:
                names[f"{p}attn.q_norm.weight"] = f"{h}self_attn.q_norm.weight"
                names[f"{p}attn.k_norm.weight"] = f"{h}self_attn.k_norm.weight"
        names["final_norm.weight"] = "model.norm.weight"
    names["lm_head.weight"] = "lm_head.weight"
    return names


# ---------------------------------------------------------------------------- state dicts, both ways


def _expand_kv(t: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """A fused qkv weight (rows) or bias with grouped k/v heads -> the same with one k/v head per query head."""
    nh, nkv, hd = config.n_head, config.kv_heads, config.head_dim
    if nkv == nh:
        return t
    q, k, v = t.split((nh * hd, nkv * hd, nkv * hd), dim=0)
    g = nh // nkv
    k = k.unflatten(0, (nkv, hd)).repeat_interleave(g, dim=0).flatten(0, 1)
    v = v.unflatten(0, (nkv, hd)).repeat_interleave(g, dim=0).flatten(0, 1)
    return torch.cat((q, k, v), dim=0)


def to_hf_state_dict(state: dict[str, torch.Tensor], config: ModelConfig,
                     layout: HFLayout | None = None) -> dict[str, torch.Tensor]:
    """groundup state dict -> HF state dict (``lm_head.weight`` included, even when tied)."""
    layout = layout or export_layout(config)
    if layout.arch == "deepseek_v3":
        from groundup.interop import hf_deepseek

        return hf_deepseek.to_hf_state_dict(state, config)
    ref = state["tok_embeddings.weight"]

    def get(name: str, size: int) -> torch.Tensor:
        # A bias groundup does not have but HF does: zeros compute the same function.
        return state[name] if name in state else torch.zeros(size, dtype=ref.dtype, device=ref.device)

    C, nh, nkv, hd, hidden = config.n_embd, config.n_head, config.kv_heads, config.head_dim, config.mlp_hidden
    out: dict[str, torch.Tensor] = {}
    if layout.arch == "gpt2":
        out["transformer.wte.weight"] = state["tok_embeddings.weight"]
        out["transformer.wpe.weight"] = state["pos_embeddings.weight"]
        for i in range(config.n_layer):
            p, h = f"blocks.{i}.", f"transformer.h.{i}."
            out[h + "ln_1.weight"] = state[p + "attn_norm.weight"]
            out[h + "ln_1.bias"] = get(p + "attn_norm.bias", C)
            out[h + "attn.c_attn.weight"] = _expand_kv(state[p + "attn.qkv.weight"], config).t()
            out[h + "attn.c_attn.bias"] = _expand_kv(get(p + "attn.qkv.bias", (nh + 2 * nkv) * hd), config)
            out[h + "attn.c_proj.weight"] = state[p + "attn.proj.weight"].t()
            out[h + "attn.c_proj.bias"] = get(p + "attn.proj.bias", C)
            out[h + "ln_2.weight"] = state[p + "mlp_norm.weight"]
            out[h + "ln_2.bias"] = get(p + "mlp_norm.bias", C)
            out[h + "mlp.c_fc.weight"] = state[p + "mlp.fc.weight"].t()
            out[h + "mlp.c_fc.bias"] = get(p + "mlp.fc.bias", hidden)
            out[h + "mlp.c_proj.weight"] = state[p + "mlp.proj.weight"].t()
            out[h + "mlp.c_proj.bias"] = get(p + "mlp.proj.bias", C)
        out["transformer.ln_f.weight"] = state["final_norm.weight"]
        out["transformer.ln_f.bias"] = get("final_norm.bias", C)
    else:
        out["model.embed_tokens.weight"] = state["tok_embeddings.weight"]
        for i in range(config.n_layer):
            p, h = f"blocks.{i}.", f"model.layers.{i}."
            out[h + "input_layernorm.weight"] = state[p + "attn_norm.weight"]
            q, k, v = state[p + "attn.qkv.weight"].split((nh * hd, nkv * hd, nkv * hd), dim=0)
            out[h + "self_attn.q_proj.weight"], out[h + "self_attn.k_proj.weight"] = q, k
            out[h + "self_attn.v_proj.weight"] = v
            if layout.qkv_bias:
                qb, kb, vb = get(p + "attn.qkv.bias", (nh + 2 * nkv) * hd).split((nh * hd, nkv * hd, nkv * hd))
                out[h + "self_attn.q_proj.bias"], out[h + "self_attn.k_proj.bias"] = qb, kb
                out[h + "self_attn.v_proj.bias"] = vb
            out[h + "self_attn.o_proj.weight"] = state[p + "attn.proj.weight"]
            if layout.o_bias:
                out[h + "self_attn.o_proj.bias"] = get(p + "attn.proj.bias", C)
            if layout.qk_norm:
                out[h + "self_attn.q_norm.weight"] = state[p + "attn.q_norm.weight"]
                out[h + "self_attn.k_norm.weight"] = state[p + "attn.k_norm.weight"]
            out[h + "post_attention_layernorm.weight"] = state[p + "mlp_norm.weight"]
            if config.is_moe_layer(i):
                out.update(moe_layer_to_hf(state, config, p, h))
                continue
            gate, up = state[p + "mlp.fc.weight"].chunk(2, dim=0)
            out[h + "mlp.gate_proj.weight"], out[h + "mlp.up_proj.weight"] = gate, up
            out[h + "mlp.down_proj.weight"] = state[p + "mlp.proj.weight"]
            if layout.mlp_bias:
                gate_b, up_b = get(p + "mlp.fc.bias", 2 * hidden).chunk(2)
                out[h + "mlp.gate_proj.bias"], out[h + "mlp.up_proj.bias"] = gate_b, up_b
                out[h + "mlp.down_proj.bias"] = get(p + "mlp.proj.bias", C)
        out["model.norm.weight"] = state["final_norm.weight"]
    out["lm_head.weight"] = state["lm_head.weight"] if "lm_head.weight" in state else state["tok_embeddings.weight"]
    return out


def from_hf_state_dict(tensors: dict[str, torch.Tensor], config: ModelConfig,
                       layout: HFLayout) -> dict[str, torch.Tensor]:
    """HF state dict (already checked by :func:`check_hf_tensors`) -> groundup state dict for ``config``."""
    if layout.arch == "deepseek_v3":
        from groundup.interop import hf_deepseek

        return hf_deepseek.from_hf_state_dict(tensors, config, layout.rope_interleave)
    C, hidden = config.n_embd, config.mlp_hidden
    t = tensors

    def get(name: str, size: int) -> torch.Tensor:
        ref = t[next(iter(t))]
        return t[name] if name in t else torch.zeros(size, dtype=ref.dtype)

    out: dict[str, torch.Tensor] = {}
    if layout.arch == "gpt2":
        out["tok_embeddings.weight"] = t["transformer.wte.weight"]
        out["pos_embeddings.weight"] = t["transformer.wpe.weight"]
        for i in range(config.n_layer):
            p, h = f"blocks.{i}.", f"transformer.h.{i}."
            out[p + "attn_norm.weight"], out[p + "attn_norm.bias"] = t[h + "ln_1.weight"], t[h + "ln_1.bias"]
            out[p + "attn.qkv.weight"] = t[h + "attn.c_attn.weight"].t()
            out[p + "attn.qkv.bias"] = t[h + "attn.c_attn.bias"]
            out[p + "attn.proj.weight"] = t[h + "attn.c_proj.weight"].t()
            out[p + "attn.proj.bias"] = t[h + "attn.c_proj.bias"]
            out[p + "mlp_norm.weight"], out[p + "mlp_norm.bias"] = t[h + "ln_2.weight"], t[h + "ln_2.bias"]
            out[p + "mlp.fc.weight"], out[p + "mlp.fc.bias"] = t[h + "mlp.c_fc.weight"].t(), t[h + "mlp.c_fc.bias"]
            out[p + "mlp.proj.weight"] = t[h + "mlp.c_proj.weight"].t()
            out[p + "mlp.proj.bias"] = t[h + "mlp.c_proj.bias"]
        out["final_norm.weight"], out["final_norm.bias"] = t["transformer.ln_f.weight"], t["transformer.ln_f.bias"]
    else:
        out["tok_embeddings.weight"] = t["model.embed_tokens.weight"]
        for i in range(config.n_layer):
            p, h = f"blocks.{i}.", f"model.layers.{i}."
            a = h + "self_attn."
            out[p + "attn_norm.weight"] = t[h + "input_layernorm.weight"]
            out[p + "attn.qkv.weight"] = torch.cat([t[f"{a}{x}_proj.weight"] for x in "qkv"])
            if config.bias or config.qkv_bias:  # absent (an MLP bias only): zeros
                out[p + "attn.qkv.bias"] = torch.cat([get(f"{a}{x}_proj.bias", t[f"{a}{x}_proj.weight"].shape[0])
                                                      for x in "qkv"])
            if layout.qk_norm:
                out[p + "attn.q_norm.weight"] = t[a + "q_norm.weight"]
                out[p + "attn.k_norm.weight"] = t[a + "k_norm.weight"]
            out[p + "attn.proj.weight"] = t[a + "o_proj.weight"]
            out[p + "mlp_norm.weight"] = t[h + "post_attention_layernorm.weight"]
            if config.is_moe_layer(i):
                out.update(moe_layer_from_hf(t, config, p, h))
                continue
            out[p + "mlp.fc.weight"] = torch.cat((t[h + "mlp.gate_proj.weight"], t[h + "mlp.up_proj.weight"]))
            out[p + "mlp.proj.weight"] = t[h + "mlp.down_proj.weight"]
            if config.bias:  # HF may have attention biases without MLP biases (or o_proj without): zeros
                out[p + "attn.proj.bias"] = get(a + "o_proj.bias", C)
                out[p + "mlp.fc.bias"] = torch.cat((get(h + "mlp.gate_proj.bias", hidden),
                                                    get(h + "mlp.up_proj.bias", hidden)))
                out[p + "mlp.proj.bias"] = get(h + "mlp.down_proj.bias", C)
        out["final_norm.weight"] = t["model.norm.weight"]
    if not config.tie_embeddings:
        out["lm_head.weight"] = t["lm_head.weight"]
    return out


def check_hf_tensors(tensors: dict[str, Any], config: ModelConfig, layout: HFLayout, where: str) -> None:
    """Check a checkpoint's tensor names and shapes against what ``config`` expects; name every misfit.

    ``tensors`` maps names to anything with a ``.shape`` (a tensor, or a safetensors slice).
    """
    with torch.device("meta"):
        meta = Transformer(config)
    expected = {k: tuple(v.shape) for k, v in to_hf_state_dict(meta.state_dict(), config, layout).items()}
    optional = {"lm_head.weight"} if config.tie_embeddings else set()
    if layout.arch == "llama" and config.bias:  # see from_hf_state_dict: absent biases are zeros
        optional |= {k for k in expected if k.endswith(".bias") and ".mlp." in k or "o_proj.bias" in k}
    missing = sorted(k for k in expected if k not in tensors and k not in optional)
    unexpected = sorted(k for k in tensors if k not in expected and not k.endswith(_IGNORED_SUFFIXES))
    wrong = [f"{k}: {tuple(tensors[k].shape)} in the file, {expected[k]} expected" for k in expected
             if k in tensors and tuple(tensors[k].shape) != expected[k]]
    problems = []
    if missing:
        problems.append(f"missing tensors {_few(missing)}")
    if wrong:
        problems.append(f"shape mismatch {_few(wrong)}")
    if unexpected:
        problems.append(f"unexpected tensors {_few(unexpected)} (a feature groundup's model does not have)")
    if problems:
        raise UnsupportedModelError(f"{where}: checkpoint does not match its config.json: " + "; ".join(problems))


def _few(items: Sequence[str], n: int = 6) -> str:
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


# ---------------------------------------------------------------------------- configs, both ways


def hf_config_dict(config: ModelConfig, *, bos_token_id: int | None = None, eos_token_id: int | None = None,
                   pad_token_id: int | None = None) -> dict[str, Any]:
    """The ``config.json`` fields of the HF architecture that computes what ``config`` does."""
    layout = export_layout(config)
    common = {"vocab_size": config.vocab_size, "tie_word_embeddings": config.tie_embeddings,
              "initializer_range": config.init_std, "bos_token_id": bos_token_id,
              "eos_token_id": eos_token_id, "pad_token_id": pad_token_id, "use_cache": True}
    if layout.arch == "deepseek_v3":
        from groundup.interop import hf_deepseek

        return hf_deepseek.hf_config_dict(config, common)
    if layout.arch == "gpt2":
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", **common,
                "n_positions": config.block_size, "n_embd": config.n_embd, "n_layer": config.n_layer,
                "n_head": config.n_head, "n_inner": config.mlp_hidden,
                "activation_function": "gelu_new",  # the tanh approximation groundup's MLP uses
                "layer_norm_epsilon": config.norm_eps, "resid_pdrop": config.dropout,
                "embd_pdrop": config.dropout, "attn_pdrop": config.attention_dropout,
                "scale_attn_weights": True}
    model_type, arch = "llama", "LlamaForCausalLM"
    extra: dict[str, Any] = {}
    if config.sliding_window is not None:
        model_type, arch = "mistral", "MistralForCausalLM"
        extra = {"sliding_window": config.sliding_window}
    rope = {"rope_type": "default", "rope_theta": config.rope_theta}
    max_positions = config.block_size
    if config.rope_scaling is not None:
        rope = {**config.rope_scaling, "rope_theta": config.rope_theta}
        if rope["rope_type"] == "dynamic":  # HF's dynamic scaling reads its original context here
            max_positions = int(rope.pop("original_max_position_embeddings"))
    fields = {"architectures": [arch], "model_type": model_type, **common,
              "hidden_size": config.n_embd, "intermediate_size": config.mlp_hidden,
              "num_hidden_layers": config.n_layer, "num_attention_heads": config.n_head,
              "num_key_value_heads": config.kv_heads, "head_dim": config.head_dim, "hidden_act": "silu",
              "max_position_embeddings": max_positions, "rms_norm_eps": config.norm_eps,
              "rope_theta": config.rope_theta,  # transformers < 5, vLLM and llama.cpp's converter read this
              "rope_parameters": rope,
              "attention_bias": layout.qkv_bias, "mlp_bias": layout.mlp_bias,
              "attention_dropout": config.attention_dropout, **extra}
    return moe_hf_config(config, layout, fields) if layout.moe else fields


def _rope(hf: dict[str, Any], where: str) -> tuple[float, dict[str, Any] | None, int]:
    """RoPE base, scaling (groundup's ``rope_scaling``) and the context length of an HF Llama-shaped config.

    Dynamic NTK scaling stretches past ``max_position_embeddings`` (its original context), so the model's
    block_size is that times the factor; the other types name their original context themselves.
    """
    from groundup.model.rope import ROPE_SCALING_KEYS, check_rope_scaling

    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = float(params.pop("rope_theta", hf.get("rope_theta", 10000.0)))
    block_size = int(hf["max_position_embeddings"])
    rope_type = params.pop("rope_type", params.pop("type", "default"))
    if params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) != 1.0:
        raise UnsupportedModelError(f"{where}: partial_rotary_factor "
                                    f"{params.get('partial_rotary_factor', hf.get('partial_rotary_factor'))} is "
                                    "not supported (groundup rotates every feature of a head)")
    params.pop("partial_rotary_factor", None)
    if rope_type in ("default", None):
        return theta, None, block_size
    if rope_type not in ROPE_SCALING_KEYS:
        raise UnsupportedModelError(f"{where}: rope_parameters.rope_type {rope_type!r} is not supported "
                                    f"(groundup computes default, {', '.join(ROPE_SCALING_KEYS)})")
    scaling = {"rope_type": rope_type, **{k: v for k, v in params.items() if v is not None}}
    if rope_type == "dynamic":
        scaling["original_max_position_embeddings"] = block_size
        block_size = int(block_size * float(scaling.get("factor", 1.0)))
    if rope_type == "yarn":
        scaling.setdefault("original_max_position_embeddings", block_size)
        scaling.setdefault("factor", block_size / scaling["original_max_position_embeddings"])
    if rope_type == "llama3":
        scaling.setdefault("original_max_position_embeddings", block_size)
    problems = check_rope_scaling(scaling)
    if problems:
        raise UnsupportedModelError(f"{where}: " + "; ".join(problems))
    return theta, scaling, block_size


def _sliding_window(hf: dict[str, Any], block_size: int, where: str) -> int | None:
    """The one sliding window every layer uses, or None (full attention); a mix of layer kinds is refused."""
    model_type, window = hf.get("model_type"), hf.get("sliding_window")
    kinds = hf.get("layer_types")
    if model_type not in ("mistral", "mixtral") and not hf.get("use_sliding_window"):
        window = None
    if window is not None and not kinds and model_type not in ("mistral", "mixtral"):  # Qwen: from max_window_layers
        first = int(hf.get("max_window_layers", 0))
        kinds = ["sliding_attention" if i >= first else "full_attention" for i in range(hf["num_hidden_layers"])]
    if kinds and len(set(kinds)) > 1:
        raise UnsupportedModelError(f"{where}: layer_types mixes {', '.join(sorted(set(kinds)))}; groundup's "
                                    "model gives every layer the same attention")
    if kinds and set(kinds) != {"sliding_attention"}:
        if set(kinds) != {"full_attention"}:
            raise UnsupportedModelError(f"{where}: layer_types {sorted(set(kinds))} is not supported")
        return None
    return int(window) if window is not None and int(window) < block_size else None


def config_from_hf(hf: dict[str, Any], where: str = "config.json") -> tuple[ModelConfig, HFLayout]:
    """groundup ModelConfig (and the HF tensor layout) from an HF ``config.json``; refuse what does not map."""
    model_type = hf.get("model_type")
    if model_type not in IMPORTABLE:
        arch = ", ".join(hf.get("architectures") or []) or "?"
        raise UnsupportedModelError(f"{where}: model_type {model_type!r} ({arch}) is not supported; "
                                    f"groundup imports {', '.join(IMPORTABLE)}")

    def need(key: str, *alternatives: str):
        for k in (key, *alternatives):
            if hf.get(k) is not None:
                return hf[k]
        raise UnsupportedModelError(f"{where}: missing key {key!r}")

    name = str(hf.get("_name_or_path") or model_type)
    if model_type == "deepseek_v3":
        from groundup.interop import hf_deepseek

        config, interleaved = hf_deepseek.config_from_hf(hf, where)
        return config, HFLayout("deepseek_v3", rope_interleave=interleaved)
    if model_type == "gpt2":
        act = hf.get("activation_function", "gelu_new")
        if act not in _TANH_GELUS:
            raise UnsupportedModelError(f"{where}: activation_function {act!r} is not supported "
                                        f"(groundup's GELU is the tanh approximation: {', '.join(_TANH_GELUS)})")
        for key in ("scale_attn_by_inverse_layer_idx", "add_cross_attention"):
            if hf.get(key):
                raise UnsupportedModelError(f"{where}: {key}=true is not supported")
        if hf.get("scale_attn_weights") is False:
            raise UnsupportedModelError(f"{where}: scale_attn_weights=false is not supported")
        n_embd = int(need("n_embd", "hidden_size"))
        config = ModelConfig.gpt2(
            name=name, vocab_size=int(need("vocab_size")), block_size=int(need("n_positions", "n_ctx")),
            n_layer=int(need("n_layer")), n_head=int(need("n_head")), n_embd=n_embd,
            intermediate_size=int(hf.get("n_inner") or 4 * n_embd),
            norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
            tie_embeddings=bool(hf.get("tie_word_embeddings", True)))
        return config, HFLayout("gpt2", True, True, True)

    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise UnsupportedModelError(f"{where}: hidden_act {act!r} is not supported (SwiGLU needs 'silu')")
    n_embd, n_head = int(need("hidden_size")), int(need("num_attention_heads"))
    need("max_position_embeddings")
    need("num_hidden_layers")
    head_dim = hf.get("head_dim")
    theta, scaling, block_size = _rope(hf, where)
    moe: dict[str, Any] = {}
    if model_type == "qwen2":
        layout = HFLayout("llama", qkv_bias=True)
        bias, qkv_bias = False, True
    elif model_type in MOE_MODEL_TYPES:
        layout, moe = moe_config_from_hf(hf, where)
        bias, qkv_bias = False, layout.qkv_bias
    else:
        attention_bias, mlp_bias = bool(hf.get("attention_bias")), bool(hf.get("mlp_bias"))
        layout = HFLayout("llama", attention_bias, attention_bias, mlp_bias, qk_norm=model_type == "qwen3")
        # groundup's ``bias`` covers every linear layer: an MLP bias alone imports with zero attention biases
        # (the same function), see from_hf_state_dict.
        bias, qkv_bias = attention_bias or mlp_bias, False
    config = ModelConfig.llama(
        name=name, vocab_size=int(need("vocab_size")), block_size=block_size,
        n_layer=int(need("num_hidden_layers")), n_head=n_head,
        n_kv_head=int(hf.get("num_key_value_heads") or n_head), n_embd=n_embd,
        head_size=None if head_dim in (None, n_embd // n_head) else int(head_dim),
        intermediate_size=int(need("intermediate_size")), norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=theta, rope_scaling=scaling, bias=bias, qkv_bias=qkv_bias, qk_norm=layout.qk_norm,
        sliding_window=_sliding_window(hf, block_size, where),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), **moe)
    return config, layout


# ---------------------------------------------------------------------------- mixture-of-experts families


MOE_MODEL_TYPES = {"mixtral": "MixtralForCausalLM", "olmoe": "OlmoeForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM"}
"""The HF mixture-of-experts classes groundup imports and exports (Qwen1.5-MoE is ``qwen2_moe``), by model_type.

All three are Llama-shaped (RMSNorm, RoPE, SwiGLU experts) with a softmax router over the experts and the
top k chosen per token; they differ in what groundup's switches say:

- Mixtral: renormalizes the k weights (``moe_normalize``), no shared experts, no QK-norm; sliding window allowed.
- OLMoE: RMSNorm over the whole query and key projections (``qk_norm_scope='all'``), ``norm_topk_prob``.
- Qwen2-MoE: one shared expert behind a per-token sigmoid gate (``moe_shared_gate``), ``norm_topk_prob``, q/k/v
  biases, dense layers first (``mlp_only_layers`` = ``moe_dense_layers``).

In memory, transformers keeps each layer's experts stacked (``mlp.experts.gate_up_proj`` (E, 2H, C) with gate
rows first, ``mlp.experts.down_proj`` (E, C, H)): the layout of groundup's ``experts.fc`` and ``experts.proj``.
On disk (and in older versions) every expert is its own tensor (``experts.{e}.gate_proj`` ... or Mixtral's
``block_sparse_moe.experts.{e}.w1`` (gate), ``w3`` (up), ``w2`` (down)); :func:`fuse_hf_experts` stacks them.
"""

_DEEPSEEK_ONLY = {"moe_score": "softmax", "moe_groups": 1, "moe_routed_scale": 1.0, "moe_balance": "aux_loss"}
"""MoE settings the three families cannot express, with the value they need (DeepSeek-V3 uses the others)."""


def moe_family(config: ModelConfig) -> str | None:
    """The HF ``model_type`` whose MoE computes what ``config``'s does: ``'mixtral'``, ``'olmoe'`` or
    ``'qwen2_moe'``; None for a dense model. UnsupportedModelError names the settings no family expresses."""
    if not config.moe_experts:
        return None
    off = [f"{k}={getattr(config, k)!r} (needs {v!r})" for k, v in _DEEPSEEK_ONLY.items() if getattr(config, k) != v]
    if off:
        raise UnsupportedModelError(f"model settings {', '.join(off)} map onto no Hugging Face MoE architecture "
                                    f"groundup exports ({', '.join(MOE_MODEL_TYPES.values())})")
    if config.qk_norm and config.qk_norm_scope != "all":
        raise UnsupportedModelError("model settings moe_experts with qk_norm_scope='head' map onto no Hugging Face "
                                    "MoE architecture groundup exports (OLMoE's QK-norm is qk_norm_scope='all')")
    if config.moe_shared_experts:
        family, needs = "qwen2_moe", {"moe_shared_gate": True, "qk_norm": False, "head_size": None,
                                     "sliding_window": None}
    elif config.qk_norm:
        family, needs = "olmoe", {"moe_dense_layers": 0, "qkv_bias": False, "head_size": None,
                                  "sliding_window": None}
    else:
        family, needs = "mixtral", {"moe_normalize": True, "moe_dense_layers": 0, "qkv_bias": False}
    off = [f"{k}={getattr(config, k)!r} (needs {v!r})" for k, v in needs.items() if getattr(config, k) != v]
    if off:
        why = {"qwen2_moe": "shared experts are Qwen2-MoE's", "olmoe": "QK-norm over whole projections is OLMoE's",
               "mixtral": "without shared experts or QK-norm the family is Mixtral"}[family]
        raise UnsupportedModelError(f"model settings {', '.join(off)} map onto no Hugging Face MoE architecture "
                                    f"({why}: {MOE_MODEL_TYPES[family]})")
    return family


def moe_export_layout(config: ModelConfig) -> HFLayout:
    family = moe_family(config)
    # Qwen2-MoE's q/k/v biases are written always (zeros where groundup has none): readers without the
    # qkv_bias switch (transformers < 5) build them regardless.
    qkv_bias = family == "qwen2_moe"
    return HFLayout("llama", qkv_bias=qkv_bias, qk_norm=family == "olmoe", moe=family)


def moe_param_names(config: ModelConfig, p: str, h: str) -> dict[str, str]:
    """groundup -> HF (in-memory, stacked experts) names of MoE layer ``p`` (groundup) / ``h`` (HF) prefixes."""
    names = {f"{p}mlp.router.weight": f"{h}mlp.gate.weight", f"{p}mlp.experts.fc": f"{h}mlp.experts.gate_up_proj",
             f"{p}mlp.experts.proj": f"{h}mlp.experts.down_proj"}
    if config.moe_shared_experts:
        s = f"{h}mlp.shared_expert."
        names |= {f"{p}mlp.shared.fc.weight": f"{s}gate_proj.weight+{s}up_proj.weight",
                  f"{p}mlp.shared.proj.weight": f"{s}down_proj.weight",
                  f"{p}mlp.shared_gate.weight": f"{h}mlp.shared_expert_gate.weight"}
    return names


def moe_layer_to_hf(state: dict[str, torch.Tensor], config: ModelConfig, p: str, h: str) -> dict[str, torch.Tensor]:
    out = {f"{h}mlp.gate.weight": state[f"{p}mlp.router.weight"],
           f"{h}mlp.experts.gate_up_proj": state[f"{p}mlp.experts.fc"],
           f"{h}mlp.experts.down_proj": state[f"{p}mlp.experts.proj"]}
    if config.moe_shared_experts:
        s = f"{h}mlp.shared_expert."
        out[f"{s}gate_proj.weight"], out[f"{s}up_proj.weight"] = state[f"{p}mlp.shared.fc.weight"].chunk(2, dim=0)
        out[f"{s}down_proj.weight"] = state[f"{p}mlp.shared.proj.weight"]
        out[f"{h}mlp.shared_expert_gate.weight"] = state[f"{p}mlp.shared_gate.weight"]
    return out


def moe_layer_from_hf(t: dict[str, torch.Tensor], config: ModelConfig, p: str, h: str) -> dict[str, torch.Tensor]:
    out = {f"{p}mlp.router.weight": t[f"{h}mlp.gate.weight"], f"{p}mlp.experts.fc": t[f"{h}mlp.experts.gate_up_proj"],
           f"{p}mlp.experts.proj": t[f"{h}mlp.experts.down_proj"]}
    if config.moe_shared_experts:
        s = f"{h}mlp.shared_expert."
        out[f"{p}mlp.shared.fc.weight"] = torch.cat((t[f"{s}gate_proj.weight"], t[f"{s}up_proj.weight"]))
        out[f"{p}mlp.shared.proj.weight"] = t[f"{s}down_proj.weight"]
        out[f"{p}mlp.shared_gate.weight"] = t[f"{h}mlp.shared_expert_gate.weight"]
    return out


_PER_EXPERT = re.compile(r"^(model\.layers\.\d+)\.(?:mlp|block_sparse_moe)\.experts\.(\d+)\."
                         r"(gate_proj|up_proj|down_proj|w1|w3|w2)\.weight$")
_W_NAMES = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}  # Mixtral's original names


def fuse_hf_experts(tensors: dict[str, Any], config: ModelConfig, where: str) -> dict[str, Any]:
    """Checkpoint tensors with one tensor per expert (the on-disk layout; Mixtral's ``block_sparse_moe`` names
    too) -> the stacked in-memory layout ``mlp.experts.gate_up_proj`` / ``down_proj``; stacked ones pass.
    A layer missing some of its ``moe_experts`` experts' tensors is refused, naming them."""
    out: dict[str, Any] = {}
    layers: dict[str, dict[tuple[int, str], Any]] = {}
    for name, tensor in tensors.items():
        m = _PER_EXPERT.match(name)
        if m is None:
            out[name.replace(".block_sparse_moe.", ".mlp.")] = tensor
        else:
            layers.setdefault(m[1], {})[(int(m[2]), _W_NAMES.get(m[3], m[3]))] = tensor
    E = config.moe_experts
    for layer, parts in layers.items():
        absent = [f"{layer}.mlp.experts.{e}.{w}.weight" for e in range(E) for w in ("gate_proj", "up_proj", "down_proj")
                  if (e, w) not in parts]
        if absent:
            raise UnsupportedModelError(f"{where}: {layer} has {len({e for e, _ in parts})} experts' tensors, "
                                        f"num_experts is {E}: missing {_few(absent)}")
        extra = sorted({e for e, _ in parts if e >= E})
        if extra:
            raise UnsupportedModelError(f"{where}: {layer} has tensors of experts {extra[:6]} beyond num_experts {E}")
        gate = torch.stack([parts.pop((e, "gate_proj")) for e in range(E)])
        up = torch.stack([parts.pop((e, "up_proj")) for e in range(E)])
        out[f"{layer}.mlp.experts.gate_up_proj"] = torch.cat((gate, up), dim=1)  # (E, 2H, C): gate rows first
        out[f"{layer}.mlp.experts.down_proj"] = torch.stack([parts.pop((e, "down_proj")) for e in range(E)])
    return out


def _moe_dense_layers(hf: dict[str, Any], n_layer: int, where: str) -> int:
    """Qwen2-MoE's dense layers (``mlp_only_layers``, and the layers ``decoder_sparse_step`` skips) as a count
    of first layers: groundup's ``moe_dense_layers``. Any other pattern is refused, naming the field."""
    only = [int(i) for i in hf.get("mlp_only_layers") or []]
    step = int(hf.get("decoder_sparse_step") or 1)
    dense = sorted({i for i in range(n_layer) if i in only or (i + 1) % step})
    if dense != list(range(len(dense))):
        field = f"decoder_sparse_step={step}" if step > 1 else f"mlp_only_layers={only}"
        raise UnsupportedModelError(f"{where}: {field} makes layers {dense[:8]} dense; groundup's model has "
                                    "its dense layers first only (moe_dense_layers)")
    return len(dense)


def moe_config_from_hf(hf: dict[str, Any], where: str) -> tuple[HFLayout, dict[str, Any]]:
    """The HF layout and groundup's MoE settings (ModelConfig keywords) of a Mixtral, OLMoE or Qwen2-MoE config."""
    model_type = hf["model_type"]

    def need(key: str, *alternatives: str) -> Any:
        for k in (key, *alternatives):
            if hf.get(k) is not None:
                return hf[k]
        raise UnsupportedModelError(f"{where}: missing key {key!r}")

    experts = int(need("num_local_experts", "num_experts") if model_type == "mixtral"
                  else need("num_experts", "num_local_experts"))
    moe = {"moe_experts": experts, "moe_top_k": int(need("num_experts_per_tok")), "moe_score": "softmax",
           "moe_normalize": model_type == "mixtral" or bool(hf.get("norm_topk_prob", False))}
    if hf.get("router_aux_loss_coef") is not None:
        moe["moe_aux_loss_coef"] = float(hf["router_aux_loss_coef"])
    if model_type == "mixtral":
        return HFLayout("llama", moe="mixtral"), moe
    if model_type == "olmoe":
        for key in ("clip_qkv", "attention_bias"):
            if hf.get(key):
                raise UnsupportedModelError(f"{where}: {key}={hf[key]!r} is not supported (groundup's OLMoE "
                                            "attention has no clipping and no biases)")
        head_dim = hf.get("head_dim")
        if head_dim not in (None, int(need("hidden_size")) // int(need("num_attention_heads"))):
            raise UnsupportedModelError(f"{where}: head_dim {head_dim} is not supported for OLMoE (hidden_size / "
                                        "num_attention_heads only: its QK-norm spans hidden_size features)")
        return HFLayout("llama", qk_norm=True, moe="olmoe"), moe | {"qk_norm_scope": "all"}
    # qwen2_moe
    hidden = int(need("moe_intermediate_size"))
    shared = int(hf.get("shared_expert_intermediate_size") or 0)
    if shared <= 0 or shared % hidden:
        raise UnsupportedModelError(f"{where}: shared_expert_intermediate_size {shared} is not a positive multiple "
                                    f"of moe_intermediate_size {hidden} (groundup's shared experts are "
                                    "moe_shared_experts experts of that width)")
    moe |= {"moe_hidden": hidden, "moe_shared_experts": shared // hidden, "moe_shared_gate": True,
            "moe_dense_layers": _moe_dense_layers(hf, int(need("num_hidden_layers")), where)}
    if experts == 0:  # every layer dense: a plain Qwen2 shape
        moe = {}
    return HFLayout("llama", qkv_bias=bool(hf.get("qkv_bias", True)), moe="qwen2_moe" if experts else None), moe


def moe_hf_config(config: ModelConfig, layout: HFLayout, fields: dict[str, Any]) -> dict[str, Any]:
    """The Llama-shaped ``config.json`` fields made those of ``layout.moe``'s class."""
    family = layout.moe
    fields = {k: v for k, v in fields.items() if k not in ("attention_bias", "mlp_bias", "sliding_window")}
    fields |= {"architectures": [MOE_MODEL_TYPES[family]], "model_type": family,
               "num_experts_per_tok": config.moe_top_k, "router_aux_loss_coef": config.moe_aux_loss_coef,
               "output_router_logits": False}
    if family == "mixtral":
        return fields | {"num_local_experts": config.moe_experts, "intermediate_size": config.moe_expert_hidden,
                         "sliding_window": config.sliding_window, "router_jitter_noise": 0.0}
    fields |= {"num_experts": config.moe_experts, "norm_topk_prob": config.moe_normalize}
    if family == "olmoe":
        fields.pop("head_dim", None)
        return fields | {"intermediate_size": config.moe_expert_hidden, "attention_bias": False, "clip_qkv": None}
    return fields | {"intermediate_size": config.mlp_hidden, "moe_intermediate_size": config.moe_expert_hidden,
                     "shared_expert_intermediate_size": config.moe_shared_experts * config.moe_expert_hidden,
                     "decoder_sparse_step": 1, "mlp_only_layers": list(range(config.moe_dense_layers)),
                     "qkv_bias": layout.qkv_bias, "use_sliding_window": False, "sliding_window": None}


# ---------------------------------------------------------------------------- in-memory models


def to_transformers(model: Transformer):
    """A transformers ``PreTrainedModel`` (GPT2LMHeadModel or LlamaForCausalLM) with ``model``'s weights, eval mode."""
    transformers = import_extra("transformers", "interop")
    config = model.config
    fields = hf_config_dict(config)
    hf_config = transformers.AutoConfig.for_model(
        fields.pop("model_type"), **{k: v for k, v in fields.items() if k not in ("architectures", "rope_theta")})
    dtype = model.tok_embeddings.weight.dtype
    # Every parameter is overwritten below: skip transformers' random initialization (most of the time of
    # an export otherwise). Buffers (RoPE frequencies, masks) are made in __init__, not there.
    no_init = getattr(getattr(transformers, "initialization", None), "no_init_weights", contextlib.nullcontext)
    with no_init():
        hf_model = transformers.AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    state = to_hf_state_dict(model.state_dict(), config)
    hf_state_keys = set(hf_model.state_dict())
    result = hf_model.load_state_dict({k: v for k, v in state.items() if k in hf_state_keys}, strict=False)
    missing = [k for k in result.missing_keys if not (config.tie_embeddings and k == "lm_head.weight")]
    if missing or set(state) - hf_state_keys - {"lm_head.weight"}:
        raise RuntimeError(f"transformers' {type(hf_model).__name__} has a different layout than expected: "
                           f"missing {missing[:5]}, extra {sorted(set(state) - hf_state_keys)[:5]}")
    if config.tie_embeddings:
        hf_model.tie_weights()
    return hf_model.to(model.tok_embeddings.weight.device).eval()


def from_transformers(hf_model, *, share: bool = False) -> Transformer:
    """A groundup Transformer (eval mode, float32) with the weights of a transformers GPT-2/Llama/Mistral/Qwen2 model.

    The weights are copied, so training one model leaves the other as it was; ``share=True`` keeps a float32
    model's tensors in the same storage instead (one copy in memory: a change to either shows in both)."""
    hf = hf_model.config.to_dict()
    config, layout = config_from_hf(hf, where=f"{type(hf_model).__name__} config")
    tensors = {k: v.detach() if share or v.dtype != torch.float32 else v.detach().clone()  # .to(fp32) copies the rest
               for k, v in hf_model.state_dict().items()}
    return _build(tensors, config, layout, where=type(hf_model).__name__)


def _build(tensors: dict[str, torch.Tensor], config: ModelConfig, layout: HFLayout, where: str) -> Transformer:
    """The model, float32, built on the meta device and given the converted tensors: a 7B import holds one
    copy of the weights, not a random initialization beside them."""
    from groundup.model.transformer import finish_meta_load

    if layout.moe:
        tensors = fuse_hf_experts(tensors, config, where)
    check_hf_tensors(tensors, config, layout, where)
    state = {k: v.to(torch.float32).contiguous() for k, v in from_hf_state_dict(tensors, config, layout).items()}
    with torch.device("meta"):
        model = Transformer(config)
    model.load_state_dict(state, strict=not config.tie_embeddings, assign=True)
    return finish_meta_load(model, f"{where} after conversion").eval()


# ---------------------------------------------------------------------------- folders


def read_hf_config(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Hugging Face folder not found: {folder} is not a directory")
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a Hugging Face model folder: missing config.json")
    from groundup.artifacts import read_json

    return read_json(path)


def _normalize_names(tensors: dict[str, Any], arch: str) -> dict[str, Any]:
    """Original GPT-2 checkpoints were saved from ``GPT2Model``: names without the ``transformer.`` prefix."""
    if arch == "gpt2" and not any(k.startswith("transformer.") for k in tensors):
        return {(k if k == "lm_head.weight" else "transformer." + k): v for k, v in tensors.items()}
    return tensors


def read_hf_tensors(folder: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of an HF folder: ``model.safetensors``, sharded safetensors with an index, or ``pytorch_model.bin``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    files: list[Path]
    index = folder / "model.safetensors.index.json"
    if (folder / "model.safetensors").is_file():
        files = [folder / "model.safetensors"]
    elif index.is_file():
        from groundup.artifacts import read_json

        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: missing key 'weight_map'")
        files = [folder / name for name in sorted(set(weight_map.values()))]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise FileNotFoundError(f"{index} names shard files that are missing: {_few(absent)}")
    elif (folder / "pytorch_model.bin").is_file():
        path = folder / "pytorch_model.bin"
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{path}: unreadable PyTorch checkpoint ({e})") from e
    else:
        raise FileNotFoundError(f"{folder}: no weights (expected model.safetensors, model.safetensors.index.json "
                                f"with its shards, or pytorch_model.bin)")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            tensors.update(load_file(str(f)))
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{f}: unreadable safetensors file ({e})") from e
    return tensors


def load_hf_folder(folder: str | Path) -> Transformer:
    """A groundup Transformer from a local HF folder, every tensor's name and shape checked first."""
    folder = Path(folder)
    config, layout = config_from_hf(read_hf_config(folder), where=str(folder / "config.json"))
    tensors = _normalize_names(read_hf_tensors(folder), layout.arch)
    if layout.arch == "deepseek_v3":  # experts saved one by one; the multi-token-prediction layers
        from groundup.interop import hf_deepseek

        tensors = hf_deepseek.normalize_tensors(tensors, config, str(folder))
    return _build(tensors, config, layout, where=str(folder))


# ---------------------------------------------------------------------------- tokenizer files


def _special_ids(tokenizer) -> dict[str, int | None]:
    """bos/eos/pad ids of a groundup Tokenizer: EOS doubles as BOS and padding (GPT-2's convention)."""
    eos = tokenizer.eos_id
    return {"bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos}


def write_hf_tokenizer(model_dir: Path, out: Path, tokenizer, block_size: int) -> None:
    """tokenizer.json, tokenizer_config.json (PreTrainedTokenizerFast), chat template, in the HF folder ``out``."""
    from groundup.tokenizer.chat import CHAT_TEMPLATE_FILE, END_OF_TURN

    shutil.copyfile(model_dir / "tokenizer.json", out / "tokenizer.json")
    template = model_chat_template(model_dir, tokenizer)
    eos = tokenizer.id_to_token(tokenizer.eos_id) if tokenizer.eos_id is not None else None
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": eos, "eos_token": eos, "pad_token": eos, "unk_token": None,
        "add_bos_token": False, "add_eos_token": False,  # groundup encodes text without added specials
        "clean_up_tokenization_spaces": False,
        "model_max_length": block_size,
        "chat_template": template,
    }
    if template is None:
        del config["chat_template"]
    if tokenizer.token_to_id(END_OF_TURN) is not None:
        config["additional_special_tokens"] = [t for t in tokenizer.special_tokens if t != eos]
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                               encoding="utf-8")
    if template is not None:
        (out / CHAT_TEMPLATE_FILE).write_text(template, encoding="utf-8")


def model_chat_template(model_dir: Path, tokenizer) -> str | None:
    """The model dir's chat template; the default (ChatML) only when the vocabulary has its tokens, since a
    template over tokens the model does not know would be rendered as plain text."""
    from groundup.tokenizer.chat import CHAT_TEMPLATE_FILE, DEFAULT_CHAT_TEMPLATE

    if (model_dir / CHAT_TEMPLATE_FILE).is_file():
        return (model_dir / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    if all(tokenizer.token_to_id(t) is not None for t in ("<|im_start|>", "<|im_end|>")):
        return DEFAULT_CHAT_TEMPLATE
    return None


def _stop_ids(tokenizer) -> list[int]:
    """EOS and, when the vocabulary has it, the chat template's end of turn: both end a generation."""
    from groundup.tokenizer.chat import END_OF_TURN

    ids = [tokenizer.eos_id, tokenizer.token_to_id(END_OF_TURN)]
    return list(dict.fromkeys(i for i in ids if i is not None))


# ---------------------------------------------------------------------------- export / import


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


HF_FOLDER_NAMES = ("config.json", "generation_config.json", "model*.safetensors", "model.safetensors.index.json",
                   "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "manifest.json")
"""Entries of the Hugging Face folder :func:`export_hf` writes."""


def export_hf(model_dir: str | Path, out_dir: str | Path, *, dtype: str = "float32",
              max_shard_size: str | int = "5GB", previous: bool = False) -> Path:
    """Write a transformers folder for the model dir ``model_dir``: config, safetensors (sharded above
    ``max_shard_size``), generation config, tokenizer files and chat template. Returns ``out_dir``.

    ``previous``: ``out_dir`` is an earlier export (see :func:`groundup.artifacts.prepare_out`), replaced whole;
    otherwise whatever else ``out_dir`` holds stays.
    """
    from groundup.artifacts import atomic_dir, write_manifest
    from groundup.model.io import load_model_dir

    transformers = import_extra("transformers", "interop")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    model_dir = Path(model_dir)
    model, tokenizer = load_model_dir(model_dir)
    hf_architecture(model.config)  # refuse unmappable shapes before writing anything
    hf_model = to_transformers(model).to(DTYPES[dtype])
    ids = _special_ids(tokenizer)
    for key, value in ids.items():
        setattr(hf_model.config, key, value)
    stops = _stop_ids(tokenizer)
    hf_model.generation_config = transformers.GenerationConfig(
        bos_token_id=ids["bos_token_id"], eos_token_id=stops if len(stops) > 1 else ids["eos_token_id"],
        pad_token_id=ids["pad_token_id"])
    with atomic_dir(out_dir, previous=previous, names=HF_FOLDER_NAMES) as tmp:
        hf_model.save_pretrained(tmp, max_shard_size=max_shard_size)
        config_path = tmp / "config.json"
        fields = json.loads(config_path.read_text(encoding="utf-8"))
        if hf_model.config.model_type in ("llama", *MOE_MODEL_TYPES):
            fields.setdefault("rope_theta", model.config.rope_theta)  # for readers older than transformers 5
        config_path.write_text(json.dumps(fields, indent=2) + "\n", encoding="utf-8")
        write_hf_tokenizer(model_dir, tmp, tokenizer, model.config.block_size)
        write_manifest(tmp, stage="export", config={"format": "hf", "dtype": dtype,
                                                    "max_shard_size": str(max_shard_size)},
                       inputs={"model": model_dir})
    return Path(out_dir)


def _read_chat_template(folder: Path) -> str | None:
    """An HF folder's chat template: ``chat_template.jinja``, else ``tokenizer_config.json``'s ``chat_template``."""
    from groundup.artifacts import read_json

    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return None
    template = read_json(path).get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    return template if isinstance(template, str) else None


def _tokenizer_json(folder: Path, out: Path) -> Path:
    """Put the folder's ``tokenizer.json`` at ``out``; a folder with only slow-tokenizer files is converted
    by transformers (which needs sentencepiece for ``tokenizer.model``)."""
    if (folder / "tokenizer.json").is_file():
        shutil.copyfile(folder / "tokenizer.json", out)
        return out
    try:
        fast = import_extra("transformers", "interop").AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        fast.backend_tokenizer.save(str(out))
        return out
    except Exception as e:
        raise FileNotFoundError(f"{folder}: no tokenizer.json, and transformers could not build one from the "
                                f"folder's tokenizer files ({e})") from e


def import_hf(hf_dir: str | Path, out_dir: str | Path, *, previous: bool = False) -> Path:
    """A groundup model dir (weights, config, tokenizer.json, chat template) from a local HF folder.

    ``previous``: ``out_dir`` is an earlier import (see :func:`groundup.artifacts.prepare_out`), replaced whole;
    otherwise whatever else ``out_dir`` holds stays.
    """
    from groundup.artifacts import MODEL_DIR_NAMES, atomic_dir
    from groundup.model.io import save_model_dir
    from groundup.tokenizer import Tokenizer
    from groundup.tokenizer.chat import write_chat_template

    hf_dir = Path(hf_dir)
    model = load_hf_folder(hf_dir)
    with atomic_dir(out_dir, previous=previous, names=MODEL_DIR_NAMES) as tmp:
        staging = tmp / ".hf-tokenizer"
        staging.mkdir()
        tokenizer_file = _tokenizer_json(hf_dir, staging / "tokenizer.json")
        try:
            tokenizer = Tokenizer.from_file(tokenizer_file)
        except Exception as e:
            raise ValueError(f"{hf_dir / 'tokenizer.json'}: groundup cannot load this tokenizer ({e})") from e
        if tokenizer.vocab_size > model.config.vocab_size:
            raise UnsupportedModelError(f"{hf_dir}: the tokenizer has {tokenizer.vocab_size} ids but the model's "
                                        f"embedding only {model.config.vocab_size} rows")
        save_model_dir(tmp, model, tokenizer_file=tokenizer_file, stage="import",
                       config={"source": str(hf_dir), "model_type": read_hf_config(hf_dir).get("model_type")},
                       inputs={"hf": hf_dir})
        shutil.rmtree(staging)
        template = _read_chat_template(hf_dir)
        if template is not None:
            write_chat_template(tmp, template)
    return Path(out_dir)


# ---------------------------------------------------------------------------- parity checks


@torch.no_grad()
def max_logit_diff(model: Transformer, hf_model, prompts: Iterable[Sequence[int]]) -> float:
    """Largest absolute difference between groundup's and the HF model's logits over ``prompts`` (token ids)."""
    worst = 0.0
    device = model.lm_head.weight.device
    for ids in prompts:
        idx = torch.tensor([list(ids)], dtype=torch.long, device=device)
        ours = model(idx).float()
        theirs = hf_model(input_ids=idx).logits.float()
        worst = max(worst, (ours - theirs).abs().max().item())
    return worst


def verify_hf(model_dir: str | Path, out_dir: str | Path, *, texts: Sequence[str], dtype: str = "float32",
              tolerance: float | None = None) -> float:
    """Load the export back with transformers (AutoModelForCausalLM, AutoTokenizer) and compare with groundup.

    Returns the largest logit difference; raises VerificationError when it exceeds ``tolerance`` or when the
    exported tokenizer encodes ``texts`` differently. The groundup side runs with its weights rounded to
    ``dtype``, both sides compute in float32, so the difference measures the conversion, not the rounding.
    """
    from groundup.model.io import load_model_dir

    transformers = import_extra("transformers", "interop")
    model, tokenizer = load_model_dir(model_dir)
    if dtype != "float32":
        model = model.to(DTYPES[dtype]).float()
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(out_dir), dtype=torch.float32,
                                                                 local_files_only=True).eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(out_dir), local_files_only=True)
    prompts = []
    for text in texts:
        ours = tokenizer.encode(text)
        theirs = hf_tokenizer(text, add_special_tokens=False)["input_ids"]
        if ours != theirs:
            raise VerificationError(f"exported tokenizer encodes {text[:40]!r} differently from groundup's")
        prompts.append(ours[: model.config.block_size] or [tokenizer.eos_id or 0])
    diff = max_logit_diff(model, hf_model, prompts)
    tolerance = 1e-4 if tolerance is None else tolerance
    if not diff <= tolerance:
        raise VerificationError(f"logits differ by up to {diff:.3g} (> {tolerance:g}) between groundup and the export")
    return diff


def verify_import(hf_dir: str | Path, model_dir: str | Path, *, texts: Sequence[str],
                  tolerance: float = 1e-4) -> float:
    """Compare an imported model dir with transformers' own loading of the HF folder; largest logit difference."""
    from groundup.model.io import load_model_dir

    transformers = import_extra("transformers", "interop")
    model, tokenizer = load_model_dir(model_dir)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32,
                                                                 local_files_only=True).eval()
    prompts = [tokenizer.encode(t)[: model.config.block_size] or [tokenizer.eos_id or 0] for t in texts]
    diff = max_logit_diff(model, hf_model, prompts)
    if not diff <= tolerance:
        raise VerificationError(f"logits differ by up to {diff:.3g} (> {tolerance:g}) between groundup and transformers")
    return diff
