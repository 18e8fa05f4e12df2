"""Multi-head latent attention and the DeepSeek-V3 preset: published counts, the planner's counts on MLA shapes,
causality, training, YaRN's softmax factor, bad settings named."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
import torch

from groundup.model.config import ModelConfig
from groundup.model.transformer import LatentAttention, Transformer, count_parameters
from groundup.plan.compute import flops_per_token
from groundup.plan.params import count_parameters as planned
from one_batch import train_on_one_batch

DEEPSEEK_V3_TOTAL = 671_026_419_200  # the routers' 58 x 256 score-correction biases counted, as DeepSeek does
DEEPSEEK_V3_ACTIVE = 37_552_297_472
TRANSFORMERS_META_COUNT = 671_026_404_352  # DeepseekV3ForCausalLM on the meta device: the biases are buffers there


def tiny(**changes) -> ModelConfig:
    return ModelConfig.llama(**{**dict(vocab_size=64, block_size=32, n_layer=2, n_head=4, n_embd=32,
                                       attention="mla", q_lora_rank=24, kv_lora_rank=16, qk_nope_head_dim=10,
                                       qk_rope_head_dim=8, v_head_dim=12), **changes})


def test_deepseek_v3_counts_exactly():
    cfg = ModelConfig.from_name("deepseek-v3")
    counts = planned(cfg)
    assert count_parameters(cfg) == counts.total == DEEPSEEK_V3_TOTAL  # built on the meta device
    assert counts.active == DEEPSEEK_V3_ACTIVE
    assert counts.router_biases == 58 * 256
    assert counts.total - counts.router_biases == TRANSFORMERS_META_COUNT
    # 6 x active per token (the attention products aside) is the training FLOPs' leading term
    assert flops_per_token(cfg, 1) == pytest.approx(6 * counts.matmul + 6 * 61 * 128 * (192 + 128))
    assert counts.active - counts.matmul == 129280 * 7168 + (2 * 61 + 1) * 7168 + 61 * (1536 + 512) + 58 * 256


def test_transformers_counts_deepseek_v3_without_the_biases():
    transformers = pytest.importorskip("transformers")
    with torch.device("meta"):
        model = transformers.DeepseekV3ForCausalLM(transformers.DeepseekV3Config())
    assert sum(p.numel() for p in model.parameters()) == TRANSFORMERS_META_COUNT
    biases = sum(b.numel() for name, b in model.named_buffers() if name.endswith("e_score_correction_bias"))
    assert TRANSFORMERS_META_COUNT + biases == DEEPSEEK_V3_TOTAL


def test_the_planner_counts_latent_attention_shapes_as_built():
    rng = random.Random(0)
    for _ in range(12):
        cfg = tiny(q_lora_rank=rng.choice([0, 8, 24]), kv_lora_rank=rng.choice([4, 16]),
                   qk_nope_head_dim=rng.choice([0, 6]), qk_rope_head_dim=rng.choice([2, 8]),
                   v_head_dim=rng.choice([4, 12]), n_head=rng.choice([1, 3, 4]), bias=rng.random() < 0.3,
                   norm_affine=rng.random() < 0.8, tie_embeddings=rng.random() < 0.5)
        assert planned(cfg).total == count_parameters(cfg), cfg


def test_the_preset_builds_latent_attention_with_deepseek_shapes():
    cfg = ModelConfig.from_name("deepseek-v3", n_layer=4)
    with torch.device("meta"):
        model = Transformer(cfg)
    attn = model.blocks[0].attn
    assert isinstance(attn, LatentAttention)
    assert tuple(attn.q_up.weight.shape) == (128 * 192, 1536)
    assert tuple(attn.kv_down.weight.shape) == (512 + 64, 7168)
    assert tuple(attn.kv_up.weight.shape) == (128 * (128 + 64 + 64), 512)
    assert tuple(attn.proj.weight.shape) == (7168, 128 * 128)
    # YaRN's mscale²: (0.1 ln 40 + 1)² on 1/sqrt(192)
    assert attn.scale == pytest.approx((0.1 * math.log(40) + 1) ** 2 / math.sqrt(192))
    assert cfg.kv_cache_entry == (1, 512, 64)
    assert model.rope_cos.shape == (163840, 64)


def test_latent_attention_is_causal_and_trains():
    torch.manual_seed(0)
    model = Transformer(tiny(q_lora_rank=0)).eval()
    x = torch.randint(0, 64, (2, 20))
    changed = x.clone()
    changed[:, 12:] = (changed[:, 12:] + 1) % 64
    with torch.no_grad():
        a, b = model(x), model(changed)
    torch.testing.assert_close(a[:, :12], b[:, :12])
    assert (a[:, 12:] - b[:, 12:]).abs().max() > 1e-3
    model.train()
    batch = torch.randint(0, 64, (4, 17))
    results = train_on_one_batch(model, (batch[:, :-1], batch[:, 1:]), 8)
    assert results[-1].loss < 0.8 * results[0].loss


@pytest.mark.parametrize(("changes", "named"), [
    ({"attention": "latent"}, "attention"),
    ({"position": "learned"}, "position='rope'"),
    ({"qk_rope_head_dim": 7}, "even"),
    ({"kv_lora_rank": 0}, "kv_lora_rank"),
    ({"qk_norm": True}, "qk_norm"),
    ({"value_embeddings": True}, "value_embeddings"),
    ({"n_kv_head": 2}, "n_kv_head"),
])
def test_bad_latent_attention_settings_are_named(changes, named):
    with pytest.raises(ValueError, match=named):
        tiny(**changes)


def test_moe_weights_into_a_dense_shape_name_the_setting(tmp_path):
    """A DeepSeek-V3-shaped checkpoint loaded into the same shape without experts, or without latent attention:
    the error names the setting that differs."""
    from groundup.model.io import load_model_weights, save_model_weights

    moe = tiny(moe_experts=4, moe_top_k=2, moe_score="sigmoid", moe_balance="bias", moe_dense_layers=1)
    save_model_weights(Transformer(moe), tmp_path / "moe.safetensors")
    with pytest.raises(ValueError, match=r"holds a mixture-of-experts model .* dense \(moe_experts=0\)"):
        load_model_weights(Transformer(dataclasses.replace(moe, moe_experts=0)), tmp_path / "moe.safetensors")
    with pytest.raises(ValueError, match=r"the file has latent attention .*\(attention='mha'\)"):
        load_model_weights(Transformer(dataclasses.replace(moe, attention="mha")), tmp_path / "moe.safetensors")


def test_tensor_parallelism_refuses_latent_attention_by_name():
    from groundup.parallel.apply_tp import check_tp

    with pytest.raises(ValueError, match="attention='mla'"):
        check_tp(tiny(), 2)
