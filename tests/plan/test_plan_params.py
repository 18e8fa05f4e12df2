"""Parameter counts: analytic, by component, equal to the built model and to transformers' models."""

from __future__ import annotations

import random

import pytest
import torch

from groundup.model.config import PRESETS, ModelConfig
from groundup.model.transformer import count_parameters as built_count
from groundup.plan.params import count_parameters


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_match_the_built_model(name):
    cfg = ModelConfig.from_name(name)
    assert count_parameters(cfg).total == built_count(cfg)


def random_config(rng: random.Random) -> ModelConfig:
    n_head = rng.choice([1, 2, 4, 6, 8])
    n_kv_head = rng.choice([h for h in range(1, n_head + 1) if n_head % h == 0])
    head_dim = rng.choice([2, 4, 8, 16])
    return ModelConfig(
        vocab_size=rng.randint(1, 300), block_size=rng.randint(1, 64), n_layer=rng.randint(1, 3),
        n_head=n_head, n_kv_head=rng.choice([None, n_kv_head]), n_embd=n_head * head_dim,
        intermediate_size=rng.choice([None, rng.randint(1, 100)]),
        norm=rng.choice(["layernorm", "rmsnorm"]), mlp=rng.choice(["gelu", "swiglu"]),
        position=rng.choice(["learned", "rope"]), bias=rng.random() < 0.5, qkv_bias=rng.random() < 0.5,
        tie_embeddings=rng.random() < 0.5,
    )


def test_random_shapes_match_the_built_model():
    rng = random.Random(0)
    for _ in range(40):
        cfg = random_config(rng)
        assert count_parameters(cfg).total == built_count(cfg), cfg


def test_components_add_up_and_name_the_parts():
    p = count_parameters(ModelConfig.from_name("gpt2-124m"))
    assert p.total == 124_439_808
    assert p.token_embeddings == 50257 * 768 and p.position_embeddings == 1024 * 768
    assert p.lm_head == 0  # tied
    assert p.attention == 12 * (768 * 3 * 768 + 3 * 768 + 768 * 768 + 768)
    assert p.mlp == 12 * (768 * 3072 + 3072 + 3072 * 768 + 768)
    assert p.norms == 25 * 2 * 768
    assert p.per_layer == 7_087_872  # the well-known GPT-2 small block
    assert p.non_embedding == p.total - p.embeddings
    llama = count_parameters(ModelConfig.from_name("llama-2-7b"))
    assert llama.biases == 0 and llama.position_embeddings == 0 and llama.lm_head == 32000 * 4096
    assert llama.mlp == 32 * 3 * 4096 * 11008


# ---------------------------------------------------------------- against transformers, on the meta device


def hf_count(model_cls, config) -> int:
    with torch.device("meta"):
        model = model_cls(config)
    return sum(p.numel() for p in model.parameters())  # a tied weight is yielded once


@pytest.mark.parametrize("name", ["gpt2-124m", "gpt2-355m", "gpt2-774m", "gpt2-1.5b"])
def test_gpt2_sizes_match_transformers(name):
    transformers = pytest.importorskip("transformers")
    cfg = ModelConfig.from_name(name)
    hf = transformers.GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd,
                                 n_layer=cfg.n_layer, n_head=cfg.n_head)
    assert count_parameters(cfg).total == hf_count(transformers.GPT2LMHeadModel, hf)


def llama_hf_config(transformers, cfg: ModelConfig):
    return transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, intermediate_size=cfg.mlp_hidden,
        num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=cfg.block_size, tie_word_embeddings=cfg.tie_embeddings)


@pytest.mark.parametrize("cfg", [
    ModelConfig.from_name("tinyllama-1.1b"),
    ModelConfig.from_name("llama-2-7b"),
    ModelConfig.from_name("llama-3-8b"),
    # A small grouped-query model with an untied head.
    ModelConfig.llama(name="gqa-untied", vocab_size=1000, n_layer=3, n_head=8, n_kv_head=2, n_embd=128,
                      intermediate_size=344, tie_embeddings=False),
], ids=lambda c: c.name)
def test_llama_shapes_match_transformers(cfg):
    transformers = pytest.importorskip("transformers")
    hf = hf_count(transformers.LlamaForCausalLM, llama_hf_config(transformers, cfg))
    assert count_parameters(cfg).total == hf


def test_published_llama_counts():
    assert count_parameters(ModelConfig.from_name("llama-2-7b")).total == 6_738_415_616
    assert count_parameters(ModelConfig.from_name("llama-3-8b")).total == 8_030_261_248
    assert count_parameters(ModelConfig.from_name("tinyllama-1.1b")).total == 1_100_048_384


def test_qkv_bias_matches_transformers_qwen2():
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "Qwen2ForCausalLM"):
        pytest.skip("transformers has no Qwen2")
    cfg = ModelConfig.llama(name="qwen2-like", vocab_size=500, n_layer=2, n_head=4, n_kv_head=2, n_embd=64,
                            intermediate_size=160, qkv_bias=True, tie_embeddings=True)
    hf = transformers.Qwen2Config(vocab_size=500, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    assert count_parameters(cfg).total == hf_count(transformers.Qwen2ForCausalLM, hf)
