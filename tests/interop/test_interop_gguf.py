"""GGUF export: every tensor and the metadata read back with the gguf reader; llama.cpp's RoPE layout."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from interop_helpers import MIXED_TEXT

from groundup import cli
from groundup.interop import VerificationError, kquants
from groundup.interop.gguf import (
    config_from_gguf,
    export_gguf,
    gguf_state_dict,
    gguf_tensor_types,
    model_from_gguf_state,
    permute_qk,
    pre_tokenizer_type,
    read_gguf,
    tensor_types,
    unpermute_qk,
    verify_gguf,
)
from groundup.model.config import ModelConfig
from groundup.model.io import load_model_dir, save_model_dir
from groundup.model.transformer import Transformer, apply_rope, rope_table

gguf = pytest.importorskip("gguf")


def interleaved_rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """llama.cpp's RoPE for the llama arch: rotate adjacent pairs (x[2i], x[2i+1]) by pos * theta^(-2i/d)."""
    T, hd = x.shape[-2], x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
    angles = torch.outer(torch.arange(T, dtype=torch.float32), inv_freq)  # (T, hd/2)
    cos, sin = angles.cos(), angles.sin()
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)



def test_named_split_patterns_map_to_llama_cpp_pre_tokenizers():
    from groundup.tokenizer import PATTERNS

    def spec(pattern):
        return {"model": {"type": "BPE"}, "normalizer": None, "decoder": {"type": "ByteLevel"},
                "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
                    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}}

    names = {name: pre_tokenizer_type(spec(pattern)) for name, pattern in PATTERNS.items() if name != "gpt2"}
    assert names == {"gpt4": "llama-bpe", "digits": "qwen2"}  # qwen2's split: GPT-4's with single digits
    with pytest.raises(Exception, match="no llama.cpp pre-tokenizer name"):
        pre_tokenizer_type(spec(r"\p{L}+|\p{N}+|\s+"))

def test_qk_permutation_turns_half_split_rope_into_llama_cpp_rope(interop_model_dirs):
    model, _ = load_model_dir(interop_model_dirs["llama"])
    config = model.config
    nh, hd = config.n_head, config.head_dim
    wq = model.blocks[0].attn.qkv.weight[: nh * hd].detach()
    x = torch.randn(5, config.n_embd)
    cos, sin = rope_table(config)
    ours = apply_rope((x @ wq.t()).view(5, nh, hd).transpose(0, 1), cos[:5], sin[:5])  # (nh, T, hd)
    theirs = interleaved_rope((x @ permute_qk(wq, nh).t()).view(5, nh, hd).transpose(0, 1), config.rope_theta)
    # Same rotated vectors, the elements of each head in llama.cpp's interleaved order.
    permuted_ours = permute_qk(ours.transpose(0, 1).reshape(5, nh * hd).t(), nh).t().reshape(5, nh, hd)
    assert torch.allclose(theirs.transpose(0, 1), permuted_ours, atol=1e-5)
    assert torch.equal(unpermute_qk(permute_qk(wq, nh), nh), wq)


@pytest.mark.parametrize("name", ["llama", "gpt2", "llama-qkv-bias", "gpt2-gqa-nobias"])
def test_f32_gguf_reads_back_exactly(name, interop_model_dirs, tmp_path):
    model_dir = interop_model_dirs[name]
    path = export_gguf(model_dir, tmp_path / "out", dtype="f32")
    model, tokenizer = load_model_dir(model_dir)
    modelfile = (path.parent / "Modelfile").read_text()
    assert path.name == "model.gguf" and modelfile.startswith("FROM ./model.gguf")
    assert f"PARAMETER num_ctx {model.config.block_size}" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    config = model.config
    metadata, tensors = read_gguf(path)

    arch = "llama" if config.family == "llama" else "gpt2"
    assert metadata["general.architecture"] == arch
    assert metadata[f"{arch}.context_length"] == config.block_size
    assert metadata[f"{arch}.block_count"] == config.n_layer
    assert metadata[f"{arch}.attention.head_count"] == config.n_head
    assert metadata[f"{arch}.embedding_length"] == config.n_embd
    assert metadata[f"{arch}.feed_forward_length"] == config.mlp_hidden
    if arch == "llama":
        assert metadata["llama.attention.head_count_kv"] == config.kv_heads
        assert metadata["llama.rope.freq_base"] == pytest.approx(config.rope_theta)
        assert metadata["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(config.norm_eps)
    else:
        assert metadata["gpt2.attention.layer_norm_epsilon"] == pytest.approx(config.norm_eps)

    spec = json.loads((model_dir / "tokenizer.json").read_text())
    assert metadata["tokenizer.ggml.model"] == "gpt2"
    assert metadata["tokenizer.ggml.pre"] == "llama-bpe"  # groundup's default split regex
    tokens = metadata["tokenizer.ggml.tokens"]
    assert len(tokens) == config.vocab_size
    assert all(tokens[i] == t for t, i in spec["model"]["vocab"].items())
    assert metadata["tokenizer.ggml.merges"] == [m if isinstance(m, str) else " ".join(m)
                                                 for m in spec["model"]["merges"]]
    assert metadata["tokenizer.ggml.token_type"][tokenizer.eos_id] == gguf.TokenType.CONTROL
    assert metadata["tokenizer.ggml.eos_token_id"] == tokenizer.eos_id
    assert metadata["tokenizer.ggml.eot_token_id"] == tokenizer.token_to_id("<|im_end|>")
    assert "<|im_start|>" in metadata["tokenizer.chat_template"]

    # Every tensor equals the source's, in llama.cpp's layout...
    source = gguf_state_dict(model)
    assert set(tensors) == set(source)
    for tensor_name, tensor in source.items():
        np.testing.assert_array_equal(tensors[tensor_name], tensor.numpy(), err_msg=tensor_name)
    # ... and, undoing the permutation and the fusion, the model read back is the source model.
    rebuilt = model_from_gguf_state({k: torch.from_numpy(v) for k, v in tensors.items()},
                                    config_from_gguf(metadata, set(tensors)))
    idx = torch.tensor([tokenizer.encode(MIXED_TEXT)[: config.block_size]])
    with torch.no_grad():
        assert (model(idx) - rebuilt(idx)).abs().max().item() <= 1e-5


def test_f16_and_q8_0_read_back_as_rounded(interop_model_dirs, tmp_path):
    model_dir = interop_model_dirs["llama"]
    model, _ = load_model_dir(model_dir)
    source = gguf_state_dict(model)
    for dtype, qtype in (("f16", gguf.GGMLQuantizationType.F16), ("q8_0", gguf.GGMLQuantizationType.Q8_0)):
        path = export_gguf(model_dir, tmp_path / f"model-{dtype}.gguf", dtype=dtype)
        reader = gguf.GGUFReader(str(path))
        types = {t.name: t.tensor_type for t in reader.tensors}
        assert types["blk.0.attn_q.weight"] == qtype and types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
        _, tensors = read_gguf(path)
        if dtype == "f16":
            for name, tensor in source.items():
                np.testing.assert_array_equal(tensors[name], tensor.numpy().astype(np.float16 if tensor.ndim > 1
                                                                                   else np.float32), err_msg=name)
        else:  # q8_0: per block of 32 values one f16 scale d = max|x| / 127 and int8 q = round(x / d)
            for name, tensor in source.items():
                x = tensor.numpy()
                if x.ndim == 1:  # norms stay f32
                    np.testing.assert_array_equal(tensors[name], x, err_msg=name)
                    continue
                blocks = x.reshape(-1, 32)
                amax = np.abs(blocks).max(axis=1, keepdims=True)
                err = np.abs(tensors[name].reshape(-1, 32) - blocks)
                assert (err <= amax / 127 / 2 + amax * 2.0**-10 + 1e-8).all(), name  # rounding + f16 scale
        result = verify_gguf(model_dir, path, texts=[MIXED_TEXT], dtype=dtype)
        assert result["max_tensor_diff"] == 0.0 and 0.0 < result["relative_logit_diff"] < 2e-1


def test_q4_0_reads_back_within_its_bound_with_a_q8_0_head(interop_model_dirs, tmp_path):
    """q4_0: blocks of 32 values, one f16 scale d = max / -8 (the signed extreme) and q in 0..15, so a value
    is off by at most |d| / 2, or |d| at the far end (q clamped to 15); the embedding and output head are
    q8_0, as llama.cpp's quantizer keeps them."""
    model_dir = interop_model_dirs["llama"]
    model, _ = load_model_dir(model_dir)
    source = gguf_state_dict(model)
    path = export_gguf(model_dir, tmp_path / "model-q4_0.gguf", dtype="q4_0")
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(str(path)).tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q4_0
    assert types["output.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    _, tensors = read_gguf(path)
    for name, tensor in source.items():
        if types[name] != gguf.GGMLQuantizationType.Q4_0:
            continue
        blocks = tensor.numpy().reshape(-1, 32)
        amax = np.abs(blocks).max(axis=1, keepdims=True)
        err = np.abs(tensors[name].reshape(-1, 32) - blocks)
        assert (err <= amax / 8 * (1 + 2.0**-9) + 1e-8).all(), name  # one step of d at most, plus the f16 scale
        assert np.median(err / amax) <= 1 / 16  # most values within half a step
    result = verify_gguf(model_dir, path, texts=[MIXED_TEXT], dtype="q4_0")
    assert result["max_tensor_diff"] == 0.0 and 0.0 < result["relative_logit_diff"] < 1.0


def kquant_input() -> np.ndarray:
    """64 rows of 512 values from integer hashing and exact float32 arithmetic (the same bits on every machine),
    cubed for heavy tails, with an all-zero row, a constant half row, a row a million times smaller and an
    all-positive half row."""
    i = np.arange(64 * 512, dtype=np.uint64)
    u = ((i * np.uint64(2654435761)) % np.uint64(1 << 24)).astype(np.float32) / np.float32(1 << 23) - np.float32(1)
    x = (u * u * u * np.float32(0.05)).reshape(64, 512)
    x[3] = 0
    x[5, :256] = np.float32(0.25)
    x[7] *= np.float32(1e-6)
    x[9, 256:] = np.abs(x[9, 256:])
    return x


# sha256 of llama.cpp's own bytes for kquant_input(): ggml_quantize_chunk (ggml-base, llama-cpp-python 0.3.36's
# vendored llama.cpp), the call llama-quantize makes without an importance matrix.
LLAMA_CPP_Q4_K = "a8dfaa93e1d5877f1d7e467c6466e83cb85bf7225225b65a9bfcd57688dbdd6e"
LLAMA_CPP_Q6_K = "b751f583a413bf13e36afe6565e3ddad5f8d64a7fba8c4da7523336542d75053"


def test_k_quants_write_llama_cpp_s_bytes():
    x = kquant_input()
    q4, q6 = kquants.quantize_q4_k(x), kquants.quantize_q6_k(x)
    assert q4.shape == (64, 2 * 144) and q4.dtype == np.uint8 and q6.shape == (64, 2 * 210)
    assert hashlib.sha256(q4.tobytes()).hexdigest() == LLAMA_CPP_Q4_K
    assert hashlib.sha256(q6.tobytes()).hexdigest() == LLAMA_CPP_Q6_K
    with pytest.raises(ValueError, match="multiple of 256"):
        kquants.quantize_q4_k(np.zeros((2, 896), np.float32))


@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K"])
def test_k_quants_round_trip_through_gguf_within_their_bound(qtype):
    """Q4_K: each sub-block of 32 is ``scale * q - min`` with q in 0..15, so its step is at most 2/15 of the
    super-block's largest |x| (range up to twice that): no value is off by more than one step. Q6_K: groups of
    16 symmetric around 0, q in -32..31, the step at most 1/32 of the super-block's largest |x|. Most values
    are within half a step, and a zero block reads back as zeros. The super-block factors are f16: a block
    whose values are all below about 1e-7 (row 7) has no f16 scale small enough and reads back as zeros."""
    rng = np.random.default_rng(0)
    x = np.concatenate([kquant_input(), rng.standard_normal((64, 512), dtype=np.float32),
                        rng.uniform(-1, 1, (64, 512)).astype(np.float32)])
    quantize = kquants.quantize_q4_k if qtype == "Q4_K" else kquants.quantize_q6_k
    back = gguf.quants.dequantize(quantize(x), gguf.GGMLQuantizationType[qtype])
    assert back.shape == x.shape and back.dtype == np.float32
    amax = np.abs(x).reshape(-1, 256).max(axis=1, keepdims=True)
    step = amax * (2 / 15 if qtype == "Q4_K" else 1 / 32)
    # The f16 factor's rounding: relative 2**-11, or half f16's smallest step (2**-25) times the largest
    # multiplier (6-bit scale times level: 63 * 16 for Q4_K, int8 scale times level: 128 * 32 for Q6_K).
    slack = step * 2.0**-9 + 2.0**-25 * (63 * 16 if qtype == "Q4_K" else 128 * 32)
    err = np.abs(back - x).reshape(-1, 256)
    checked = amax[:, 0] >= 1e-3
    assert checked.sum() == len(checked) - 4  # all but rows 3 and 7 (two super-blocks each)
    assert (err[checked] <= (step + slack)[checked]).all()
    assert np.median(err[checked] / step[checked]) <= 0.25
    assert (back[3] == 0).all() and (back[7] == 0).all()
    rmse = np.sqrt(np.mean((back[64:128] - x[64:128]) ** 2))  # the normal rows
    assert rmse <= (0.08 if qtype == "Q4_K" else 0.02)


def test_q4_k_m_types_follow_llama_cpp_s_recipe():
    """As llama-quantize Q4_K_M chooses (checked against llama.cpp on 24- and 5-layer models, 256 and 896 wide,
    tied and untied, llama and gpt2): Q6_K for attn_v and ffn_down in the first and last eighth of the layers
    and every third between, for the head (the tied embedding), Q4_K elsewhere; rows not a multiple of 256
    fall back to Q5_0 (Q4_K) and Q8_0 (Q6_K), rows not a multiple of 32 to F16."""
    def layer(width, inner):
        return {"attn_norm.weight": (width,), "attn_q.weight": (width, width), "attn_k.weight": (64, width),
                "attn_v.weight": (64, width), "attn_output.weight": (width, width), "ffn_gate.weight": (inner, width),
                "ffn_up.weight": (inner, width), "ffn_down.weight": (width, inner), "ffn_norm.weight": (width,)}

    def model(n_layer, width, inner, tied):
        shapes = {"token_embd.weight": (100, width)}
        for i in range(n_layer):
            shapes |= {f"blk.{i}.{k}": v for k, v in layer(width, inner).items()}
        shapes |= {"output_norm.weight": (width,)} | ({} if tied else {"output.weight": (100, width)})
        return tensor_types({k: torch.empty(v) for k, v in shapes.items()}, "q4_k_m", n_layer)

    types = {k: v.name for k, v in model(24, 256, 512, tied=True).items()}
    more_bits = [0, 1, 2, 5, 8, 11, 14, 17, 20, 21, 22, 23]
    for i in range(24):
        for kind in ("attn_v", "ffn_down"):
            assert types[f"blk.{i}.{kind}.weight"] == ("Q6_K" if i in more_bits else "Q4_K")
        assert types[f"blk.{i}.attn_q.weight"] == types[f"blk.{i}.ffn_up.weight"] == "Q4_K"
        assert types[f"blk.{i}.attn_norm.weight"] == "F32"
    assert types["token_embd.weight"] == "Q6_K" and "output.weight" not in types
    types = {k: v.name for k, v in model(5, 896, 4864, tied=False).items()}
    assert types["token_embd.weight"] == "Q5_0" and types["output.weight"] == "Q8_0"
    assert [types[f"blk.{i}.attn_v.weight"] for i in range(5)] == ["Q5_0", "Q5_0", "Q8_0", "Q5_0", "Q8_0"]
    assert [types[f"blk.{i}.ffn_down.weight"] for i in range(5)] == ["Q4_K", "Q4_K", "Q6_K", "Q4_K", "Q6_K"]
    types = {k: v.name for k, v in model(2, 48, 256, tied=True).items()}
    assert types["blk.0.attn_q.weight"] == "F16" and types["blk.0.ffn_down.weight"] == "Q4_K"


def test_q4_k_m_export_stores_the_recipe_and_verifies(spine_tokenizer, tmp_path, capsys):
    config = ModelConfig.llama(vocab_size=384, block_size=64, n_layer=4, n_head=4, n_kv_head=2, n_embd=256,
                               intermediate_size=512, tie_embeddings=False)
    torch.manual_seed(7)
    model = Transformer(config)  # the model's own initialization: weights of a trainable scale
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:  # norm scales away from 1, so a mismapped one shows
                p.add_(torch.randn_like(p) * 0.1)
    model_dir = save_model_dir(tmp_path / "model", model, tokenizer_file=spine_tokenizer, stage="test",
                               config={"test": "q4_k_m"})
    assert cli.main(["export", "--model", str(model_dir), "--out", str(tmp_path / "g"), "--to", "gguf",
                     "--dtype", "Q4_K_M", "--verify"]) == 0
    assert "max abs diff" in capsys.readouterr().err
    path = tmp_path / "g" / "model.gguf"
    types = gguf_tensor_types(path)
    assert types["token_embd.weight"] == "Q4_K" and types["output.weight"] == "Q6_K"
    assert [types[f"blk.{i}.attn_v.weight"] for i in range(4)] == ["Q4_K", "Q4_K", "Q6_K", "Q6_K"]
    assert [types[f"blk.{i}.ffn_down.weight"] for i in range(4)] == ["Q4_K", "Q4_K", "Q6_K", "Q6_K"]
    assert types["blk.0.ffn_gate.weight"] == types["blk.3.attn_q.weight"] == "Q4_K"
    assert types["blk.0.attn_norm.weight"] == "F32"
    metadata, _ = read_gguf(path)
    assert metadata["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    result = verify_gguf(model_dir, path, texts=[MIXED_TEXT], dtype="q4_k_m")
    assert result["max_tensor_diff"] == 0.0 and 0.0 < result["relative_logit_diff"] < 1.0
    # A file whose types are not the recipe's fails verification, naming the tensor.
    export_gguf(model_dir, tmp_path / "q4_0.gguf", dtype="q4_0")
    with pytest.raises(VerificationError, match="blk.0.attn_q.weight: stored as Q4_0, expected Q4_K"):
        verify_gguf(model_dir, tmp_path / "q4_0.gguf", texts=[MIXED_TEXT], dtype="q4_k_m")


def test_export_cli_verify_passes_and_fails(interop_model_dirs, tmp_path, capsys):
    model_dir = str(interop_model_dirs["llama"])
    assert cli.main(["export", "--model", model_dir, "--out", str(tmp_path / "g"), "--to", "gguf",
                     "--dtype", "f16", "--verify"]) == 0
    assert "max abs diff" in capsys.readouterr().err
    # A tolerance no f16 file can meet: the verification reports the difference and exits non-zero.
    assert cli.main(["export", "--model", model_dir, "--out", str(tmp_path / "g"), "--format", "gguf",
                     "--dtype", "f16", "--verify", "--tolerance", "1e-9"]) == 1
    assert "verification failed" in capsys.readouterr().err
    assert cli.main(["export", "--model", model_dir, "--out", str(tmp_path / "hf"), "--verify"]) == 0
    assert cli.main(["import", "--from", str(tmp_path / "hf"), "--out", str(tmp_path / "back"), "--verify"]) == 0


def test_llama_cpp_runs_the_export(interop_model_dirs, tmp_path):
    """Where llama-cpp-python is installed: llama.cpp tokenizes like groundup and its logits match."""
    llama_cpp = pytest.importorskip("llama_cpp")
    model_dir = interop_model_dirs["llama"]
    model, tokenizer = load_model_dir(model_dir)
    path = export_gguf(model_dir, tmp_path / "model.gguf", dtype="f32")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=0, logits_all=True, verbose=False, n_threads=1,
                          type_k=0, type_v=0)  # an f32 KV cache (llama.cpp defaults to f16)
    ids = llm.tokenize(MIXED_TEXT.encode(), add_bos=False, special=False)
    assert ids == tokenizer.encode(MIXED_TEXT)
    ids = ids[: model.config.block_size]
    llm.eval(ids)
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0].numpy()
    diff = np.abs(np.array(llm.scores[: len(ids)]) - ours).max()
    assert diff <= 1e-4 * max(1.0, np.abs(ours).max())
