"""Fixtures for fine-tuning tests: tiny base model dirs (random weights) over the spine tokenizer, synthetic data."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from groundup.artifacts import save_model_dir
from groundup.model.config import ModelConfig
from groundup.model.transformer import Transformer

FRUITS = ["apple", "pear", "plum", "mango", "lemon", "grape", "melon", "peach"]
ANIMALS = ["cat", "dog", "horse", "mouse", "tiger", "sheep", "goat", "eagle"]


def tiny_config(family: str, vocab_size: int, **overrides) -> ModelConfig:
    shape = dict(vocab_size=vocab_size, block_size=64, n_layer=2, n_head=4, n_embd=64, **overrides)
    if family == "llama":
        return ModelConfig.llama(name="test-llama", n_kv_head=2, intermediate_size=128, tie_embeddings=True, **shape)
    return ModelConfig.gpt2(name="test-gpt2", **shape)


def make_base(out: Path, tokenizer_dir: Path, family: str = "llama", seed: int = 0, **overrides) -> Path:
    from groundup.tokenizer import Tokenizer

    vocab = Tokenizer.from_file(tokenizer_dir).vocab_size
    torch.manual_seed(seed)
    model = Transformer(tiny_config(family, vocab, **overrides))
    return save_model_dir(out, model, tokenizer_file=tokenizer_dir, stage="test-base", config={})


@pytest.fixture(scope="session")
def base_llama(spine_tokenizer, tmp_path_factory) -> Path:
    return make_base(tmp_path_factory.mktemp("ft") / "base-llama", spine_tokenizer, "llama")


@pytest.fixture(scope="session")
def base_gpt2(spine_tokenizer, tmp_path_factory) -> Path:
    return make_base(tmp_path_factory.mktemp("ft") / "base-gpt2", spine_tokenizer, "gpt2")


def write_jsonl(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def fruit_items(seed: int = 0) -> list[tuple[str, str]]:
    """Every (fruit, animal) pair in both orders as (question, answer): name the fruit. 128 items, shuffled."""
    items = [(f"fruit: {a} {b}", f) for f in FRUITS for an in ANIMALS
             for a, b in ((f, an), (an, f))]
    random.Random(seed).shuffle(items)
    return items
