"""Tiny random models of both families, written as model dirs, for the interop tests."""

from __future__ import annotations

from pathlib import Path

import torch

from groundup.model.config import ModelConfig
from groundup.model.io import save_model_dir
from groundup.model.transformer import Transformer

MIXED_TEXT = (
    "def add(a, b):\n    return a + b  # sum\n\n"
    "The quick brown fox can't jump 12345 times; it's 3.14 o'clock.\n"
    "中文字符测试，日本語のテキスト、한국어.\n"
    "Emoji 👍🏽 👨\u200d👩\u200d👧 🇫🇷!\n"
    "runs   of    spaces\t\t\ttabs\n\n\n\nand newlines  \n"
)

CONFIGS = {
    # GPT-2: biases, tied head, learned positions.
    "gpt2": dict(family="gpt2", vocab_size=320, block_size=64, n_layer=2, n_head=4, n_embd=32),
    # GPT-2 shape without biases, untied head and grouped k/v heads: exported with zero biases, repeated heads.
    "gpt2-gqa-nobias": dict(family="gpt2", vocab_size=384, block_size=64, n_layer=2, n_head=4, n_kv_head=2,
                            n_embd=32, bias=False, tie_embeddings=False),
    # Llama: GQA, untied head.
    "llama": dict(family="llama", vocab_size=384, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                  intermediate_size=64, rope_theta=50000.0, norm_eps=1e-6),
    # Qwen2-style q/k/v biases, tied head.
    "llama-qkv-bias": dict(family="llama", vocab_size=320, block_size=64, n_layer=2, n_head=4, n_embd=32,
                           intermediate_size=48, qkv_bias=True, tie_embeddings=True),
}


def make_config(name: str) -> ModelConfig:
    kwargs = dict(CONFIGS[name])
    family = kwargs.pop("family")
    return ModelConfig.gpt2(**kwargs) if family == "gpt2" else ModelConfig.llama(**kwargs)


def random_model(config: ModelConfig, seed: int = 0) -> Transformer:
    """A model whose every parameter (norm scales and biases included) is randomized, so no mapping hides."""
    torch.manual_seed(seed)
    model = Transformer(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def write_model_dir(path: Path, name: str, tokenizer: Path, seed: int = 0) -> Path:
    return save_model_dir(path, random_model(make_config(name), seed), tokenizer_file=tokenizer, stage="test",
                          config={"test": name})
