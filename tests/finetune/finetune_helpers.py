"""Helpers for fine-tuning tests: tiny base model dirs (random weights), synthetic data, resume checks."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from groundup.model.config import ModelConfig
from groundup.model.io import save_model_dir
from groundup.model.transformer import Transformer

FRUITS = ["apple", "pear", "plum", "mango", "lemon", "grape", "melon", "peach"]
ANIMALS = ["cat", "dog", "horse", "mouse", "tiger", "sheep", "goat", "eagle"]


def tiny_config(family: str, vocab_size: int, **overrides) -> ModelConfig:
    shape = {"vocab_size": vocab_size, "block_size": 64, "n_layer": 2, "n_head": 4, "n_embd": 64, **overrides}
    if family == "llama":
        return ModelConfig.llama(name="test-llama", n_kv_head=2, intermediate_size=128, tie_embeddings=True, **shape)
    return ModelConfig.gpt2(name="test-gpt2", **shape)


def make_base(out: Path, tokenizer_dir: Path, family: str = "llama", seed: int = 0, **overrides) -> Path:
    from groundup.tokenizer import Tokenizer

    vocab = Tokenizer.from_file(tokenizer_dir).vocab_size
    torch.manual_seed(seed)
    model = Transformer(tiny_config(family, vocab, **overrides))
    return save_model_dir(out, model, tokenizer_file=tokenizer_dir, stage="test-base", config={})


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


def loop(**overrides):
    from groundup.train.loop import LoopConfig

    return LoopConfig(**{"max_steps": 6, "log_every": 1, "eval_every": 3, "checkpoint_every": 3,
                         "progress_bar": False, **overrides})


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


def interrupted_then_resumed(run, make_cfg, tmp_path: Path, monkeypatch, sampler_cls, stop_at_batch: int = 4):
    """Run once straight and once stopped mid-run (after the step-3 checkpoint) then resumed; return both dirs."""
    straight = run(make_cfg(tmp_path / "straight", None))
    original = sampler_cls.next_batch
    calls = {"n": 0}

    def stopping(self):
        calls["n"] += 1
        if calls["n"] > stop_at_batch:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(sampler_cls, "next_batch", stopping)
    with pytest.raises(KeyboardInterrupt):
        run(make_cfg(tmp_path / "stopped", None))
    monkeypatch.setattr(sampler_cls, "next_batch", original)
    resumed = run(make_cfg(tmp_path / "stopped", "auto"))
    return straight, resumed

