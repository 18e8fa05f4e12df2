"""Tiny random models in model dirs for the serving tests (the spine tokenizer, a few layers, fp32)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from groundup.artifacts import load_model_dir, save_model_dir
from groundup.model.config import ModelConfig
from groundup.model.transformer import Transformer


def make_model_dir(out: Path, tokenizer_dir: Path, *, seed: int = 0, **shape) -> Path:
    torch.manual_seed(seed)
    base = dict(vocab_size=384, block_size=256, n_layer=2, n_head=4, n_embd=64, init_std=0.2)
    model = Transformer(ModelConfig(**{**base, **shape}))
    return save_model_dir(out, model, tokenizer_file=tokenizer_dir, stage="test", config={})


@pytest.fixture(scope="session")
def serve_model_dir(spine_tokenizer, tmp_path_factory) -> Path:
    """GPT-2-style tiny random model; vocab padded to 384 above the tokenizer's 320."""
    return make_model_dir(tmp_path_factory.mktemp("serve") / "model", spine_tokenizer)


@pytest.fixture(scope="session")
def serve_llama_dir(spine_tokenizer, tmp_path_factory) -> Path:
    """Llama-style tiny random model (RoPE, RMSNorm, SwiGLU, grouped-query attention)."""
    return make_model_dir(tmp_path_factory.mktemp("serve") / "llama", spine_tokenizer, seed=1, norm="rmsnorm",
                          mlp="swiglu", position="rope", n_kv_head=2, bias=False, tie_embeddings=False)


@pytest.fixture(scope="session")
def serve_model(serve_model_dir):
    return load_model_dir(serve_model_dir)
