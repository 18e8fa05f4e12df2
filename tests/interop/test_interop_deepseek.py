"""DeepSeek-V3 (latent attention with experts) to and from transformers' DeepseekV3ForCausalLM at a tiny size:
logits within 1e-4 both ways, interleaved RoPE rows, experts saved one by one, the multi-token-prediction layer
skipped, and what does not map refused by name."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from groundup.interop.hf import (
    UnsupportedModelError,
    export_hf,
    from_transformers,
    hf_architecture,
    hf_param_names,
    import_hf,
    load_hf_folder,
    to_transformers,
    verify_hf,
)
from groundup.model.config import ModelConfig
from groundup.model.io import load_model_dir, save_model_dir
from groundup.model.transformer import Transformer

transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-4
SHAPE = dict(vocab_size=320, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=3,
             num_attention_heads=4, n_shared_experts=1, n_routed_experts=8, n_group=4, topk_group=2,
             num_experts_per_tok=2, first_k_dense_replace=1, kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8,
             v_head_dim=12, qk_nope_head_dim=10, routed_scaling_factor=2.5, max_position_embeddings=128,
             rms_norm_eps=1e-6, tie_word_embeddings=False,
             rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
                              "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0,
                              "rope_theta": 10000.0})


def random_hf(**changes):
    """A tiny DeepseekV3ForCausalLM whose every weight, norm and score-correction bias is randomized."""
    torch.manual_seed(0)
    model = transformers.DeepseekV3ForCausalLM(transformers.DeepseekV3Config(**{**SHAPE, **changes}))
    with torch.no_grad():
        for tensor in [*model.parameters(), *(b for n, b in model.named_buffers() if "e_score" in n)]:
            tensor.add_(torch.randn_like(tensor) * 0.2)
    return model.eval()


def max_diff(ours, theirs, T: int = 48) -> float:
    """Past the original context (32) of the YaRN scaling."""
    idx = torch.randint(0, 320, (2, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return (ours(idx) - theirs(input_ids=idx).logits).abs().max().item()


@pytest.mark.parametrize("changes", [{}, {"rope_interleave": False}, {"q_lora_rank": None},
                                     {"first_k_dense_replace": 3}],
                         ids=["deepseek-v3", "rope-halves", "no-query-latent", "dense"])
def test_import_from_a_saved_folder_and_export_back(changes, tmp_path):
    """save_pretrained writes the experts one by one; import reads them, and export gives transformers a model
    that computes the same logits (in memory and saved and loaded again)."""
    hf = random_hf(**changes)
    hf.save_pretrained(tmp_path / "hf")
    model = load_hf_folder(tmp_path / "hf")
    cfg = model.config
    assert cfg.attention == "mla" and cfg.q_lora_rank == (changes.get("q_lora_rank", 24) or 0)
    assert cfg.moe_experts == (0 if "first_k_dense_replace" in changes else 8)
    assert max_diff(model, hf) <= TOLERANCE
    back = to_transformers(model)
    assert back.config.rope_interleave and max_diff(model, back) <= TOLERANCE
    back.save_pretrained(tmp_path / "back")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back", dtype=torch.float32).eval()
    assert type(loaded).__name__ == "DeepseekV3ForCausalLM" and max_diff(model, loaded) <= TOLERANCE


def test_every_tensor_has_its_hf_name():
    hf = random_hf(q_lora_rank=None)
    model = from_transformers(hf)
    names = hf_param_names(model.config)
    theirs = set(hf.state_dict())
    assert set(names) == set(model.state_dict()) - {"rope_cos", "rope_sin"}
    assert {n for joined in names.values() for n in joined.split("+")} == theirs


def test_the_rope_layout_and_the_bias_are_applied():
    """The same weights read without the interleaving, or without the score-correction bias, compute other
    logits: neither the row permutation nor the bias is a no-op these tests could miss."""
    model = from_transformers(random_hf())  # (shares the tensors of that model: compare with fresh copies)
    assert max_diff(model, random_hf()) <= TOLERANCE
    assert max_diff(model, random_hf(rope_interleave=False)) > 1e-3
    for block in model.blocks[1:]:
        block.mlp.expert_bias.zero_()
    assert max_diff(model, random_hf()) > 1e-3


def test_the_multi_token_prediction_layer_is_skipped_and_fp8_refused(tmp_path):
    hf = random_hf()
    hf.save_pretrained(tmp_path / "hf")
    weights = tmp_path / "hf" / "model.safetensors"
    tensors = load_file(weights)
    tensors["model.layers.3.eh_proj.weight"] = torch.zeros(32, 64)  # DeepSeek-V3's MTP module (layer 61 there)
    tensors["model.layers.3.self_attn.o_proj.weight"] = torch.zeros(32, 48)
    save_file(tensors, weights, metadata={"format": "pt"})
    assert max_diff(load_hf_folder(tmp_path / "hf"), hf) <= TOLERANCE
    tensors["model.layers.0.self_attn.o_proj.weight_scale_inv"] = torch.ones(1, 1)
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(UnsupportedModelError, match="weight_scale_inv"):
        load_hf_folder(tmp_path / "hf")


def test_a_model_dir_exports_imports_and_verifies(spine_tokenizer, tmp_path):
    """groundup export --format hf of a DeepSeek-V3-shaped model dir, verified by transformers; import of the
    folder gives the same logits."""
    config = ModelConfig.from_name(
        "deepseek-v3", vocab_size=320, block_size=64, n_layer=2, n_head=4, n_embd=32, intermediate_size=48,
        q_lora_rank=24, kv_lora_rank=16, qk_nope_head_dim=10, qk_rope_head_dim=8, v_head_dim=12, moe_experts=4,
        moe_top_k=2, moe_hidden=16, moe_groups=2, moe_group_top_k=1, moe_dense_layers=1,
        rope_scaling={"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 32,
                      "mscale": 1.0, "mscale_all_dim": 1.0})
    torch.manual_seed(0)
    model = Transformer(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
        model.blocks[1].mlp.expert_bias.normal_(0, 0.1)
    model_dir = save_model_dir(tmp_path / "model", model.eval(), tokenizer_file=spine_tokenizer, stage="test",
                               config={})
    out = export_hf(model_dir, tmp_path / "hf")
    fields = json.loads((out / "config.json").read_text())
    assert fields["model_type"] == "deepseek_v3" and fields["n_routed_experts"] == 4
    assert fields["rope_interleave"] is True and fields["first_k_dense_replace"] == 1
    assert verify_hf(model_dir, out, texts=["def mean(xs):\n    return sum(xs) / len(xs)"]) <= TOLERANCE
    imported, _ = load_model_dir(import_hf(out, tmp_path / "back"))
    idx = torch.randint(0, 320, (1, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(imported(idx), model(idx), atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize(("changes", "named"), [
    ({"moe_score": "softmax"}, "moe_score"),
    ({"moe_balance": "aux_loss"}, "moe_balance"),
    ({"sliding_window": 16}, "sliding_window"),
])
def test_shapes_deepseek_v3_cannot_express_are_refused_by_name(changes, named):
    config = ModelConfig.from_name("deepseek-v3", n_layer=2, n_embd=64, n_head=4, vocab_size=64, block_size=64,
                                   moe_experts=4, moe_top_k=2, moe_groups=1, moe_group_top_k=1, moe_dense_layers=1,
                                   **changes)
    with pytest.raises(UnsupportedModelError, match=named):
        hf_architecture(config)


def test_gguf_refuses_latent_attention_by_name():
    from groundup.interop.gguf import _arch

    with pytest.raises(UnsupportedModelError, match="attention='mla'"):
        _arch(ModelConfig.from_name("deepseek-v3", n_layer=4, vocab_size=64, block_size=64))
