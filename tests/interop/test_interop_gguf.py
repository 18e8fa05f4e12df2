"""GGUF export: every tensor and the metadata read back with the gguf reader; llama.cpp's RoPE layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from interop_helpers import MIXED_TEXT

from groundup import cli
from groundup.interop.gguf import (
    config_from_gguf,
    export_gguf,
    gguf_state_dict,
    model_from_gguf_state,
    permute_qk,
    read_gguf,
    unpermute_qk,
    verify_gguf,
)
from groundup.model.io import load_model_dir
from groundup.model.transformer import apply_rope, rope_table

gguf = pytest.importorskip("gguf")


def interleaved_rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """llama.cpp's RoPE for the llama arch: rotate adjacent pairs (x[2i], x[2i+1]) by pos * theta^(-2i/d)."""
    T, hd = x.shape[-2], x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
    angles = torch.outer(torch.arange(T, dtype=torch.float32), inv_freq)  # (T, hd/2)
    cos, sin = angles.cos(), angles.sin()
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1).flatten(-2)


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
