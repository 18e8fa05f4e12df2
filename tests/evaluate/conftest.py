"""Shared by the evaluation tests: a tiny random model dir and small task files written on the spot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from groundup.model.config import ModelConfig
from groundup.model.io import load_model_dir, save_model_dir
from groundup.model.transformer import Transformer

EVAL_MODEL = ModelConfig.from_name("tiny-llama", n_layer=2, n_embd=32, n_head=4, n_kv_head=2, vocab_size=320,
                                   block_size=64)

WORDS = ["the", "cat", "dog", "sat", "ran", "on", "a", "mat", "log", "quickly", "slowly", "red", "blue", "green", "big", "small", "house", "tree", "river", "stone", "bird", "flew", "over", "under", "across", "near", "far", "and", "but", "or", "because", "while"]


@pytest.fixture(scope="session")
def eval_model_dir(spine_tokenizer, tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = Transformer(EVAL_MODEL)
    with torch.no_grad():  # larger weights than the init: a random model with opinions, so choices differ
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8)
    out = tmp_path_factory.mktemp("eval") / "model"
    return save_model_dir(out, model, tokenizer_file=spine_tokenizer, stage="test", config={})


@pytest.fixture(scope="session")
def eval_model(eval_model_dir):
    return load_model_dir(eval_model_dir)


def sentence(rng, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


@pytest.fixture(scope="session")
def mc_file(tmp_path_factory) -> Path:
    """40 generic multiple-choice items with 2 to 5 choices of varied lengths, some of them multi-line."""
    import random

    rng = random.Random(0)
    path = tmp_path_factory.mktemp("tasks") / "tiny_mc.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(40):
            choices = [sentence(rng, rng.randint(1, 6)) for _ in range(rng.randint(2, 5))]
            question = sentence(rng, rng.randint(3, 30)) + ("\n" + sentence(rng, 4) if i % 5 == 0 else "")
            f.write(json.dumps({"question": question, "choices": choices, "answer": rng.randrange(len(choices))})
                    + "\n")
    return path


@pytest.fixture(scope="session")
def text_file(tmp_path_factory) -> Path:
    """12 documents, a few longer than the model's 64-token window, so rolling windows are exercised."""
    import random

    rng = random.Random(1)
    path = tmp_path_factory.mktemp("tasks") / "tiny_text.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(12):
            text = sentence(rng, rng.randint(5, 120 if i % 3 == 0 else 25)) + ("\n\nÉté café " if i % 4 == 0 else "")
            f.write(json.dumps({"text": text}) + "\n")
    return path
