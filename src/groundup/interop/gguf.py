"""GGUF export for llama.cpp and ollama, written with the ``gguf`` package (llama.cpp's own writer).

Tensors go through the Hugging Face layout first (:func:`groundup.interop.hf.to_hf_state_dict`) and then
through ``gguf``'s own HF -> GGUF name map, the route llama.cpp's ``convert_hf_to_gguf.py`` takes:

- Llama family -> arch ``llama``. llama.cpp applies RoPE to interleaved pairs (GPT-J style), HF Llama and
  groundup to the two halves of each head, so q and k rows are permuted per head exactly as the
  converter's ``LlamaModel.permute`` does. Q/K/V (and output) biases are written as ``attn_q.bias`` etc.
- Mixture of experts in the Mixtral layout -> arch ``llama`` with llama.cpp's stacked expert tensors
  ``ffn_gate_exps`` / ``ffn_up_exps`` / ``ffn_down_exps`` ((E, H, C), (E, H, C), (E, C, H) in PyTorch order), the
  router ``ffn_gate_inp`` (kept f32, as the converter and ``llama-quantize`` keep it) and the keys
  ``llama.expert_count`` / ``llama.expert_used_count``: llama.cpp's llama graph routes by softmax over the
  experts and renormalizes the top k, which is Mixtral's (and groundup's ``moe_normalize``) routing. OLMoE and
  Qwen2-MoE shapes (llama.cpp's ``olmoe`` and ``qwen2moe`` archs) are not written yet.
- GPT-2 family -> arch ``gpt2`` (fused ``attn_qkv``, learned ``position_embd``, every bias, zeros where
  groundup has none; grouped k/v heads repeated, as for HF).

1-D tensors (norms, biases) stay float32, as in the converter; 2-D ones take the chosen type: f32, f16,
q8_0 or q4_0 (quantized by ``gguf.quants``; a tensor whose rows are not a multiple of 32 stays f16). With
q4_0 the embedding and the output head are q8_0, as llama.cpp's own quantizer keeps them at a higher type.
q4_k_m is llama.cpp's Q4_K_M mix (:func:`tensor_types`): Q4_K, with Q6_K for the head and some attn_v and
ffn_down layers, quantized by :mod:`groundup.interop.kquants` (byte for byte as ``llama-quantize`` does
from an f32 file); rows not a multiple of 256 fall back as llama.cpp's do (Q4_K -> Q5_0, Q6_K -> Q8_0).

The tokenizer is written as llama.cpp's byte-level BPE (``tokenizer.ggml.model = "gpt2"``) with an
explicit pre-tokenizer type naming the split regex, the tokens by id (padding rows of a model vocabulary
larger than the tokenizer's as unused ``[PAD{i}]`` tokens), token types (special tokens are control
tokens), merges, special ids (EOS, end of turn, padding) and the chat template.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from groundup.extras import import_extra
from groundup.interop import VerificationError, kquants
from groundup.interop.hf import (
    UnsupportedModelError,
    export_layout,
    from_hf_state_dict,
    hf_architecture,
    moe_family,
    to_hf_state_dict,
)
from groundup.model.config import ModelConfig
from groundup.model.transformer import Transformer

log = logging.getLogger(__name__)

GGUF_DTYPES = ("f32", "f16", "q8_0", "q4_0", "q4_k_m")
# Split regexes llama.cpp knows by name (its LLAMA_VOCAB_PRE_TYPE_*): groundup's two named patterns.
# groundup's gpt4 pattern (cl100k without its `\s++$` branch) splits as Llama 3's ("llama-bpe") does.
_PRE_TYPES = {"gpt4": "llama-bpe", "gpt2": "gpt-2", "digits": "qwen2"}  # qwen2: GPT-4's split, single digits
# The split regexes of imported tokenizers that llama.cpp names too (as their tokenizer.json spells them).
_PRE_TYPES_BY_REGEX = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",  # Llama 3
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",  # Qwen2
}
# HF names of GPT-2's Conv1D weights: the GGUF gpt2 arch wants nn.Linear's (out, in) layout back.
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _gguf():
    return import_extra("gguf", "interop")


# ---------------------------------------------------------------------------- tensors


def permute_qk(weights: torch.Tensor, n_head: int) -> torch.Tensor:
    """HF/groundup half-split RoPE rows -> llama.cpp's interleaved rows (``convert_hf_to_gguf``'s permute)."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def unpermute_qk(weights: torch.Tensor, n_head: int) -> torch.Tensor:
    """The inverse of :func:`permute_qk`."""
    return (weights.reshape(n_head, weights.shape[0] // n_head // 2, 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _arch(config: ModelConfig) -> str:
    arch = hf_architecture(config)
    if arch not in ("llama", "gpt2"):
        raise UnsupportedModelError(f"GGUF export writes the llama and gpt2 architectures, not {arch} "
                                    f"(attention={config.attention!r})")
    return arch


def _name_map(config: ModelConfig):
    gguf = _gguf()
    arch = gguf.MODEL_ARCH.LLAMA if _arch(config) == "llama" else gguf.MODEL_ARCH.GPT2
    return gguf.get_tensor_name_map(arch, config.n_layer)


def _qk_heads(hf_name: str, config: ModelConfig) -> int | None:
    if hf_name.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
        return config.n_head
    if hf_name.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias")):
        return config.kv_heads
    return None


_STACKED = (".mlp.experts.gate_up_proj", ".mlp.experts.down_proj")
"""transformers' stacked expert tensors (in-memory names), which GGUF keeps as three: gate, up, down."""


def split_experts(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stacked ``gate_up_proj`` (E, 2H, C) -> ``experts.gate_proj.weight`` and ``experts.up_proj.weight`` (E, H, C),
    ``down_proj`` -> ``experts.down_proj.weight``: the merged per-layer names ``gguf``'s name map knows."""
    out = {}
    for name, tensor in hf_state.items():
        if name.endswith(_STACKED[0]):
            stem = name.removesuffix("gate_up_proj")
            out[stem + "gate_proj.weight"], out[stem + "up_proj.weight"] = tensor.chunk(2, dim=1)
        elif name.endswith(_STACKED[1]):
            out[name + ".weight"] = tensor
        else:
            out[name] = tensor
    return out


def join_experts(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`split_experts`."""
    out = {}
    for name, tensor in hf_state.items():
        if name.endswith(".mlp.experts.gate_proj.weight"):
            stem = name.removesuffix("gate_proj.weight")
            out[stem + "gate_up_proj"] = torch.cat((tensor, hf_state[stem + "up_proj.weight"]), dim=1)
        elif name.endswith(".mlp.experts.down_proj.weight"):
            out[name.removesuffix(".weight")] = tensor
        elif not name.endswith(".mlp.experts.up_proj.weight"):
            out[name] = tensor
    return out


def check_gguf_moe(config: ModelConfig, dtype: str | None = None) -> None:
    """Refuse a mixture-of-experts shape GGUF export does not write (anything but the Mixtral layout), or the
    q4_k_m mix for one (llama.cpp's per-expert rules of that mix are not reproduced), naming the setting."""
    family = moe_family(config)
    if family not in (None, "mixtral"):
        raise UnsupportedModelError(f"GGUF export writes mixture-of-experts models in the Mixtral layout only "
                                    f"(llama.cpp's llama arch); this shape is {family} (shared experts or QK-norm "
                                    f"over whole projections: moe_shared_experts={config.moe_shared_experts}, "
                                    f"qk_norm={config.qk_norm})")
    if family and dtype == "q4_k_m":
        raise UnsupportedModelError("GGUF dtype 'q4_k_m' is written for dense models only; a mixture-of-experts "
                                    "model takes f32, f16, q8_0 or q4_0")


def gguf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """GGUF tensor name -> float32 tensor in llama.cpp's layout (q/k permuted for llama), before any quantization."""
    config = model.config
    check_gguf_moe(config)
    hf_state = split_experts(to_hf_state_dict(model.state_dict(), config))
    if config.tie_embeddings:
        hf_state.pop("lm_head.weight")  # llama.cpp falls back to token_embd for the output head
    name_map = _name_map(config)
    out: dict[str, torch.Tensor] = {}
    for hf_name, tensor in hf_state.items():
        name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UnsupportedModelError(f"no GGUF name for tensor {hf_name}")
        tensor = tensor.detach().float().cpu()
        if hf_name.endswith(_CONV1D):
            tensor = tensor.t()
        heads = _qk_heads(hf_name, config) if _arch(config) == "llama" else None
        if heads is not None:
            tensor = permute_qk(tensor, heads)
        out[name] = tensor.contiguous()
    return out


def model_from_gguf_state(tensors: dict[str, torch.Tensor], config: ModelConfig) -> Transformer:
    """A groundup Transformer from GGUF tensors (as :func:`gguf_state_dict` writes them): the inverse mapping."""
    name_map = _name_map(config)
    with torch.device("meta"):
        meta = Transformer(config)
    layout = export_layout(config)
    hf_names = split_experts(to_hf_state_dict(meta.state_dict(), config))
    hf: dict[str, torch.Tensor] = {}
    for hf_name in hf_names:
        name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name not in tensors:
            if hf_name == "lm_head.weight" and config.tie_embeddings:
                continue
            raise UnsupportedModelError(f"GGUF file lacks tensor {name}")
        t = tensors[name]
        heads = _qk_heads(hf_name, config) if _arch(config) == "llama" else None
        if heads is not None:
            t = unpermute_qk(t, heads)
        if hf_name.endswith(_CONV1D):
            t = t.t()
        hf[hf_name] = t
    if _arch(config) == "gpt2" and config.kv_heads != config.n_head:
        # The export repeated each key/value head; the file holds an equivalent multi-head model.
        config = dataclasses.replace(config, n_kv_head=None)
    model = Transformer(config)
    state = from_hf_state_dict(join_experts(hf), config, layout)
    if not config.bias:  # biases the export filled with zeros do not exist in groundup's model
        expected = set(model.state_dict())
        state = {k: v for k, v in state.items() if k in expected}
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=not config.tie_embeddings)
    return model.eval()


_HIGHER_TYPE = ("token_embd.weight", "output.weight")
"""Tensors a q4_0 file keeps at q8_0."""
# llama.cpp's replacement for a k-quant whose rows are not a multiple of its 256-value super-block
# (llama-quant.cpp's tensor_type_fallback); a row not a multiple of 32 either is stored f16.
_K_FALLBACK = {"Q4_K": "Q5_0", "Q6_K": "Q8_0"}


def _more_bits(i: int, n: int) -> bool:
    """llama.cpp's ``use_more_bits``: the first and last eighth of the layers and every third one between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _fits(qtype, row: int):
    """``qtype``, or llama.cpp's fallback when rows of ``row`` values do not fill its blocks."""
    gguf = _gguf()
    if row % gguf.GGML_QUANT_SIZES[qtype][0] and qtype.name in _K_FALLBACK:
        qtype = gguf.GGMLQuantizationType[_K_FALLBACK[qtype.name]]
    if row % gguf.GGML_QUANT_SIZES[qtype][0]:
        log.info("row size %d is not a multiple of %s's block: tensor kept in f16", row, qtype.name)
        return gguf.GGMLQuantizationType.F16
    return qtype


def _q4_k_m_types(tensors: dict[str, torch.Tensor], n_layer: int) -> dict[str, Any]:
    """llama.cpp's Q4_K_M mix (``llama_tensor_get_type`` without an importance matrix, for a dense model):
    Q4_K everywhere; Q6_K for the output head (the embedding when it is tied; Q8_0 when its rows are not
    a multiple of 256) and for attn_v (attn_qkv in gpt2) and ffn_down in the layers ``use_more_bits``
    picks; norms, biases and learned positions stay f32."""
    types_ = _gguf().GGMLQuantizationType
    tied = "output.weight" not in tensors
    n_attention_v = sum(("attn_v.weight" in n or "attn_qkv.weight" in n) for n in tensors)
    i_attention_v = i_ffn_down = 0
    types = {}
    for name, tensor in tensors.items():  # in file order: llama.cpp counts attn_v and ffn_down as it meets them
        if tensor.ndim < 2 or not name.endswith("weight") or "_norm.weight" in name or name == "position_embd.weight":
            types[name] = types_.F32
            continue
        qtype = types_.Q4_K
        if name == "output.weight" or (tied and name == "token_embd.weight"):
            qtype = types_.Q6_K if tensor.shape[-1] % 256 == 0 else types_.Q8_0
        elif "attn_v.weight" in name or "attn_qkv.weight" in name:
            qtype = types_.Q6_K if _more_bits(i_attention_v, n_attention_v) else qtype
            i_attention_v += 1
        elif "ffn_down" in name:
            qtype = types_.Q6_K if _more_bits(i_ffn_down, n_layer) else qtype
            i_ffn_down += 1
        types[name] = _fits(qtype, tensor.shape[-1])
    return types


def tensor_types(tensors: dict[str, torch.Tensor], dtype: str, n_layer: int) -> dict[str, Any]:
    """The GGML type of each tensor (GGUF name -> ``gguf.GGMLQuantizationType``) in a file written at
    ``dtype``: 1-D tensors stay f32; q4_0 keeps the embedding and head at q8_0, as llama.cpp's quantizer
    does; q4_k_m is llama.cpp's mix (:func:`_q4_k_m_types`); rows a block does not divide are f16."""
    types_ = _gguf().GGMLQuantizationType
    if dtype == "q4_k_m":
        return _q4_k_m_types(tensors, n_layer)
    types = {}
    for name, tensor in tensors.items():
        if tensor.ndim == 1 or dtype == "f32" or name.endswith("ffn_gate_inp.weight"):  # routers stay f32
            types[name] = types_.F32
        elif dtype == "f16":
            types[name] = types_.F16
        else:
            higher = dtype == "q8_0" or name in _HIGHER_TYPE
            types[name] = _fits(types_.Q8_0 if higher else types_.Q4_0, tensor.shape[-1])
    return types


def encode_tensor(tensor: torch.Tensor, qtype) -> np.ndarray:
    """The bytes (or f32/f16 values) ``gguf``'s writer takes for ``tensor`` stored as ``qtype``."""
    gguf = _gguf()
    array = tensor.numpy().astype(np.float32)
    if qtype == gguf.GGMLQuantizationType.Q4_K:  # the gguf package reads k-quants but cannot write them
        return kquants.quantize_q4_k(array)
    if qtype == gguf.GGMLQuantizationType.Q6_K:
        return kquants.quantize_q6_k(array)
    return gguf.quants.quantize(array, qtype)


def expected_readback(tensor: torch.Tensor, qtype) -> np.ndarray:
    """What a tensor stored as ``qtype`` reads back as (f16 rounding, a quantizer's round trip), as float32."""
    gguf = _gguf()
    data = encode_tensor(tensor, qtype)
    if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        return data.astype(np.float32)
    return gguf.quants.dequantize(data, qtype)


# ---------------------------------------------------------------------------- tokenizer


def pre_tokenizer_type(spec: dict[str, Any]) -> str:
    """llama.cpp's name for the split regex of a parsed tokenizer.json; ValueError if it has none."""
    from groundup.tokenizer import PATTERNS, split_pattern_of

    try:
        regex = split_pattern_of(spec)
    except ValueError as e:
        raise UnsupportedModelError(f"GGUF export needs a byte-level BPE tokenizer: this one {e}") from None
    for name, pattern in PATTERNS.items():
        if regex == pattern:
            return _PRE_TYPES[name]
    if regex in _PRE_TYPES_BY_REGEX:
        return _PRE_TYPES_BY_REGEX[regex]
    raise UnsupportedModelError(f"the tokenizer's split regex {regex!r} has no llama.cpp pre-tokenizer name; "
                                f"pass tokenizer_pre with the name llama.cpp should use")


def tokenizer_fields(spec: dict[str, Any], vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """Tokens by id, their GGUF token types, and merges ("a b") of a parsed byte-level BPE tokenizer.json."""
    gguf = _gguf()
    by_id: dict[int, str] = {int(i): t for t, i in spec["model"]["vocab"].items()}
    control = set()
    for added in spec.get("added_tokens") or []:
        by_id[int(added["id"])] = added["content"]
        if added.get("special"):
            control.add(int(added["id"]))
    n = max(by_id) + 1
    if n > vocab_size:
        raise UnsupportedModelError(f"the tokenizer has {n} ids but the model only {vocab_size} embedding rows")
    tokens, types = [], []
    for i in range(vocab_size):
        if i in by_id:
            tokens.append(by_id[i])
            types.append(int(gguf.TokenType.CONTROL if i in control else gguf.TokenType.NORMAL))
        else:  # padding rows (vocabulary rounded up to a multiple of 64) or a hole in the ids
            tokens.append(f"[PAD{i}]")
            types.append(int(gguf.TokenType.UNUSED))
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges") or []]
    return tokens, types, merges


# ---------------------------------------------------------------------------- writing


def write_gguf(model: Transformer, tokenizer_file: str | Path, path: str | Path, *, dtype: str = "f16",
               chat_template: str | None = None, name: str = "groundup", tokenizer_pre: str | None = None) -> Path:
    """Write ``model`` and its tokenizer as one GGUF file at ``path``."""
    from groundup.tokenizer import Tokenizer
    from groundup.tokenizer.chat import END_OF_TURN

    gguf = _gguf()
    if dtype not in GGUF_DTYPES:
        raise ValueError(f"GGUF dtype must be one of {', '.join(GGUF_DTYPES)}, got {dtype!r}")
    config = model.config
    check_gguf_moe(config, dtype)
    arch = _arch(config)
    spec = json.loads(Path(tokenizer_file).read_text(encoding="utf-8"))
    pre = tokenizer_pre or pre_tokenizer_type(spec)
    tokens, types, merges = tokenizer_fields(spec, config.vocab_size)
    tokenizer = Tokenizer.from_file(tokenizer_file, fast=False)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name)
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
                          "q4_k_m": gguf.LlamaFileType.MOSTLY_Q4_K_M}[dtype])
    writer.add_context_length(config.block_size)
    writer.add_embedding_length(config.n_embd)
    writer.add_block_count(config.n_layer)
    writer.add_feed_forward_length(config.moe_expert_hidden if config.moe_experts else config.mlp_hidden)
    writer.add_head_count(config.n_head)
    writer.add_vocab_size(config.vocab_size)
    if arch == "llama":
        writer.add_head_count_kv(config.kv_heads)
        writer.add_rope_freq_base(config.rope_theta)
        writer.add_rope_dimension_count(config.head_dim)
        writer.add_layer_norm_rms_eps(config.norm_eps)
        if config.moe_experts:
            writer.add_expert_count(config.moe_experts)
            writer.add_expert_used_count(config.moe_top_k)
    else:
        writer.add_layer_norm_eps(config.norm_eps)
    if dtype not in ("f32", "f16"):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    eos = tokenizer.eos_id
    if eos is not None:
        writer.add_bos_token_id(eos)
        writer.add_eos_token_id(eos)
        writer.add_pad_token_id(eos)
    end_of_turn = tokenizer.token_to_id(END_OF_TURN)
    if end_of_turn is not None:
        writer.add_eot_token_id(end_of_turn)
    writer.add_add_bos_token(False)  # groundup trains on text without a BOS token
    writer.add_add_eos_token(False)
    if chat_template:
        writer.add_chat_template(chat_template)

    tensors = gguf_state_dict(model)
    for tensor_name, qtype in tensor_types(tensors, dtype, config.n_layer).items():
        writer.add_tensor(tensor_name, encode_tensor(tensors[tensor_name], qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def modelfile_text(gguf_name: str, chat_template: str | None, stop_tokens: list[str], context_length: int) -> str:
    """An ollama Modelfile for the GGUF beside it; ChatML (groundup's default template) is spelled out in
    ollama's Go template syntax, any other template is left to ollama to read from the GGUF metadata."""
    from groundup.tokenizer.chat import DEFAULT_CHAT_TEMPLATE

    lines = [f"FROM ./{gguf_name}"]
    if chat_template is None:
        lines.append("# No chat template: a base model for plain completion.")
    elif chat_template == DEFAULT_CHAT_TEMPLATE:
        lines.append('TEMPLATE """{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n'
                     '{{ end }}<|im_start|>assistant\n"""')
    else:
        lines.append("# The chat template is stored in the GGUF (tokenizer.chat_template).")
    lines += [f'PARAMETER stop "{t}"' for t in stop_tokens]
    # ollama's default context is longer than a small model's; past block_size there are no positions.
    lines.append(f"PARAMETER num_ctx {context_length}")
    return "\n".join(lines) + "\n"


def export_gguf(model_dir: str | Path, out: str | Path, *, dtype: str = "f16",
                tokenizer_pre: str | None = None) -> Path:
    """Write ``model.gguf`` and an ollama ``Modelfile`` into the directory ``out`` (or the GGUF at ``out``
    when it ends in ``.gguf``, with the Modelfile beside it). Returns the GGUF file's path."""
    from groundup.artifacts import write_manifest
    from groundup.interop.hf import model_chat_template
    from groundup.model.io import load_model_dir
    from groundup.tokenizer.chat import END_OF_TURN

    model_dir, out = Path(model_dir), Path(out)
    model, tokenizer = load_model_dir(model_dir)
    _arch(model.config)
    unwritten = [f"{name}={getattr(model.config, name)!r}" for name in ("rope_scaling", "sliding_window", "head_size")
                 if getattr(model.config, name) is not None]
    if unwritten:  # llama.cpp has keys for them; groundup's GGUF writer does not write them yet
        raise UnsupportedModelError(f"{model_dir}: model settings {', '.join(unwritten)} are not written to GGUF")
    path = out if out.suffix == ".gguf" else out / "model.gguf"
    template = model_chat_template(model_dir, tokenizer)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write_gguf(model, model_dir / "tokenizer.json", tmp, dtype=dtype, chat_template=template,
                   name=model.config.name, tokenizer_pre=tokenizer_pre)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    eos = tokenizer.id_to_token(tokenizer.eos_id) if tokenizer.eos_id is not None else None
    stops = [t for t in (END_OF_TURN, eos) if t is not None and tokenizer.token_to_id(t) is not None]
    (path.parent / "Modelfile").write_text(modelfile_text(path.name, template, stops, model.config.block_size), encoding="utf-8")
    if out.suffix != ".gguf":
        write_manifest(out, stage="export", config={"format": "gguf", "dtype": dtype}, inputs={"model": model_dir})
    return path


# ---------------------------------------------------------------------------- reading back


def read_gguf(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Metadata (key -> value) and tensors (name -> float32 array in PyTorch layout, dequantized) of a GGUF file."""
    gguf = _gguf()
    reader = gguf.GGUFReader(str(path))
    metadata = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        metadata[key] = field.contents()
    tensors = {}
    for t in reader.tensors:
        data = np.asarray(t.data)
        if t.tensor_type not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            data = gguf.quants.dequantize(data, t.tensor_type)
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))  # GGML lists dimensions innermost first
        tensors[t.name] = data.astype(np.float32).reshape(shape)
    return metadata, tensors


def config_from_gguf(metadata: dict[str, Any], tensor_names: set[str] | None = None, name: str = "gguf") -> ModelConfig:
    """The groundup ModelConfig a GGUF written by :func:`write_gguf` describes (for rebuilding and checking).

    ``tensor_names`` (the file's tensors) tell a tied head (no ``output.weight``) and Llama biases apart.
    """
    arch = metadata["general.architecture"]
    names = tensor_names or set()
    a = lambda key, default=None: metadata.get(f"{arch}.{key}", default)  # noqa: E731
    common = dict(name=name, vocab_size=int(a("vocab_size", len(metadata["tokenizer.ggml.tokens"]))),
                  block_size=int(a("context_length")), n_layer=int(a("block_count")),
                  n_head=int(a("attention.head_count")), n_embd=int(a("embedding_length")),
                  intermediate_size=int(a("feed_forward_length")),
                  tie_embeddings="output.weight" not in names)
    if arch == "llama":
        bias = "blk.0.ffn_up.bias" in names
        moe = {"moe_experts": int(a("expert_count")), "moe_top_k": int(a("expert_used_count"))} \
            if a("expert_count") else {}
        return ModelConfig.llama(**common, **moe, n_kv_head=int(a("attention.head_count_kv")),
                                 rope_theta=float(a("rope.freq_base")),
                                 norm_eps=float(a("attention.layer_norm_rms_epsilon")),
                                 bias=bias, qkv_bias=not bias and "blk.0.attn_q.bias" in names)
    if arch == "gpt2":
        return ModelConfig.gpt2(**common, norm_eps=float(a("attention.layer_norm_epsilon")))
    raise UnsupportedModelError(f"GGUF architecture {arch!r} is not one groundup writes (llama, gpt2)")


def gguf_tensor_types(path: str | Path) -> dict[str, str]:
    """Tensor name -> GGML type name (``"Q4_K"``, ``"F32"``, ...) of a GGUF file, in file order."""
    return {t.name: t.tensor_type.name for t in _gguf().GGUFReader(str(path)).tensors}


def _check_tensors(source: dict[str, torch.Tensor], tensors: dict[str, np.ndarray], stored: dict[str, str],
                   dtype: str, n_layer: int, problems: list[str]) -> float:
    """Compare every tensor read back with the source after the type plan's rounding, and each stored type
    with the plan; append what differs to ``problems``. Returns the largest difference."""
    if set(source) != set(tensors):
        problems.append(f"tensor names differ: missing {sorted(set(source) - set(tensors))[:5]}, "
                        f"extra {sorted(set(tensors) - set(source))[:5]}")
    max_tensor_diff = 0.0
    for name, qtype in tensor_types(source, dtype, n_layer).items():
        if name not in tensors:
            continue
        if stored.get(name) != qtype.name:
            problems.append(f"tensor {name}: stored as {stored.get(name)}, expected {qtype.name}")
            continue
        want = expected_readback(source[name], qtype)
        got = tensors[name]
        if got.shape != want.shape:
            problems.append(f"tensor {name}: shape {got.shape}, expected {want.shape}")
            continue
        diff = float(np.abs(got - want).max()) if got.size else 0.0
        max_tensor_diff = max(max_tensor_diff, diff)
        if diff != 0.0:
            problems.append(f"tensor {name}: differs from the source by {diff:.3g}")
    return max_tensor_diff


def verify_gguf(model_dir: str | Path, path: str | Path, *, texts: list[str], dtype: str = "f16",
                tolerance: float | None = None) -> dict[str, float]:
    """Read the GGUF back and check it: metadata, every tensor against the source (exactly, after undoing the
    q/k permutation and applying the same rounding), and logits of a model rebuilt from the file.

    Returns ``{"max_tensor_diff", "max_logit_diff", "relative_logit_diff"}``; raises VerificationError on any
    mismatch. The logit difference is against the source model, so f16/q8_0 show their rounding there; for
    them ``tolerance`` bounds the difference relative to the largest logit (f32: the absolute difference).
    """
    from groundup.model.io import load_model_dir

    model, tokenizer = load_model_dir(model_dir)
    config = model.config
    metadata, tensors = read_gguf(path)
    problems = []
    arch = _arch(config)
    expected_meta = {"general.architecture": arch, f"{arch}.context_length": config.block_size,
                     f"{arch}.block_count": config.n_layer, f"{arch}.attention.head_count": config.n_head,
                     f"{arch}.embedding_length": config.n_embd, "tokenizer.ggml.model": "gpt2"}
    if arch == "llama":
        expected_meta |= {"llama.attention.head_count_kv": config.kv_heads, "llama.rope.freq_base": config.rope_theta,
                          "llama.attention.layer_norm_rms_epsilon": config.norm_eps}
        if config.moe_experts:
            expected_meta |= {"llama.expert_count": config.moe_experts, "llama.expert_used_count": config.moe_top_k}
    for key, value in expected_meta.items():
        got = metadata.get(key)
        ok = got == value if isinstance(value, str | int) and not isinstance(value, float) \
            else got is not None and abs(float(got) - value) <= 1e-6 * max(1.0, abs(value))
        if not ok:
            problems.append(f"metadata {key} = {got!r}, expected {value!r}")
    if len(metadata.get("tokenizer.ggml.tokens") or []) != config.vocab_size:
        problems.append("tokenizer.ggml.tokens does not hold one token per embedding row")
    max_tensor_diff = _check_tensors(gguf_state_dict(model), tensors, gguf_tensor_types(path), dtype, config.n_layer,
                                     problems)
    if problems:
        raise VerificationError(f"{path}: " + "; ".join(problems[:8]))

    rebuilt = model_from_gguf_state({k: torch.from_numpy(v.copy()) for k, v in tensors.items()}, config)
    worst, scale = 0.0, 0.0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer.encode(text)[: config.block_size] or [tokenizer.eos_id or 0]
            idx = torch.tensor([ids])
            reference = model(idx)
            worst = max(worst, (reference - rebuilt(idx)).abs().max().item())
            scale = max(scale, reference.abs().max().item())
    # 16-bit and 8-bit weights shift logits in proportion to their size: judge those relative to the largest.
    relative = worst / max(scale, 1.0)
    # Relative to the largest logit; q4_0 moves a random test model's logits by up to about 0.7, q4_k_m a
    # 256-wide one at its initialization by about 0.2 (the tensors themselves are checked exactly against
    # their round trip above).
    default_tolerance = {"f32": 1e-4, "f16": 2e-2, "q8_0": 2e-1, "q4_0": 1.0, "q4_k_m": 1.0}[dtype]
    if config.moe_experts and dtype in ("q8_0", "q4_0"):
        # Rounded weights flip a token's choice of experts where two scores nearly tie: its logits (and the later
        # tokens attending to it) jump. A random 4-expert test model at q8_0 moves by about 0.35 of the largest logit.
        default_tolerance = 1.0
    tolerance = default_tolerance if tolerance is None else tolerance
    measured = worst if dtype == "f32" else relative
    if not measured <= tolerance:
        kind = "" if dtype == "f32" else f" ({relative:.3g} of the largest logit {scale:.3g})"
        raise VerificationError(f"{path}: logits of the model read back differ by {worst:.3g}{kind}, "
                             f"more than the tolerance {tolerance:g}")
    return {"max_tensor_diff": max_tensor_diff, "max_logit_diff": worst, "relative_logit_diff": relative}
