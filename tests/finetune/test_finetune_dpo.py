"""DPO: held-out preference accuracy rises well above chance, the reference stays as it was, resume is exact."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from finetune_helpers import (
    ANIMALS,
    assert_same_weights,
    fruit_items,
    interrupted_then_resumed,
    loop,
    write_jsonl,
)
from safetensors.torch import load_file

from groundup.finetune import dpo
from groundup.finetune.data import DataError, ExampleBatches
from groundup.model.io import load_model_dir
from groundup.model.lora import LoRAConfig
from groundup.tokenizer import Tokenizer
from groundup.tokenizer.chat import DEFAULT_CHAT_TEMPLATE
from groundup.train.optim import OptimConfig


def pairs(items):
    """Prompt 'fruit: x y'; the chosen answer names the fruit, the rejected one the animal."""
    out = []
    for question, fruit in items:
        animal = next(w for w in question.split() if w in ANIMALS)
        out.append({"prompt": question, "chosen": fruit, "rejected": animal})
    return out


def config(base, data, val, out, resume=None, steps=None, **kw):
    settings = dict(model=base, data=data, val_data=val, out=out, batch_size=8, device="cpu", beta=0.5,
                    optim=OptimConfig(lr=3e-3, warmup_steps=2, weight_decay=0.0),
                    train=loop(resume=resume, **(steps or {})))
    return dpo.Config(**{**settings, **kw})


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("lora", [False, True])
def test_dpo_raises_held_out_preference_accuracy(base_llama, tmp_path, lora):
    items = fruit_items(seed=1)
    train = write_jsonl(tmp_path / "train.jsonl", pairs(items[:96]))
    val = write_jsonl(tmp_path / "val.jsonl", pairs(items[96:]))
    before = digest(base_llama / "model.safetensors")
    out = dpo.run(config(base_llama, train, val, tmp_path / "dpo", lora=LoRAConfig(enabled=lora, rank=8, alpha=16),
                         optim=OptimConfig(lr=1e-2 if lora else 3e-3, warmup_steps=2, weight_decay=0.0),
                         steps={"max_steps": 30, "log_every": 10, "eval_every": 15, "checkpoint_every": 0}))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_preference_accuracy" in r]
    assert evals[-1]["val_preference_accuracy"] >= 0.85  # held-out pairs, chance is 0.5
    assert evals[-1]["val_reward_margin"] > 0
    logged = [r for r in records if "loss" in r]
    assert {"reward_margin", "preference_accuracy", "reward_chosen", "reward_rejected"} <= logged[-1].keys()
    assert logged[-1]["reward_margin"] > logged[0]["reward_margin"]

    # the reference is untouched: the base dir's weights are unchanged, and the cached reference
    # log-probabilities are the base model's own
    assert digest(base_llama / "model.safetensors") == before
    cached = load_file(str(out / dpo.REFERENCE_FILE))
    model, tokenizer = load_model_dir(base_llama)
    val_pairs = dpo.load_pairs(val, tokenizer, DEFAULT_CHAT_TEMPLATE, 64, dpo.DataStats(), False)
    chosen, rejected = dpo.all_logps(model, val_pairs, tokenizer.eos_id, 8, "cpu")
    assert torch.allclose(cached["val_chosen"], chosen, atol=1e-5)
    assert torch.allclose(cached["val_rejected"], rejected, atol=1e-5)


def test_dpo_resume_is_exact(base_gpt2, tmp_path, monkeypatch):
    items = fruit_items(seed=2)
    train = write_jsonl(tmp_path / "train.jsonl", pairs(items[:40]))
    val = write_jsonl(tmp_path / "val.jsonl", pairs(items[40:48]))
    straight, resumed = interrupted_then_resumed(
        dpo.run, lambda out, resume: config(base_gpt2, train, val, out, resume), tmp_path, monkeypatch,
        ExampleBatches)
    assert_same_weights(straight, resumed)
    lines = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert [r.get("reward_margin") for r in lines(straight)] == [r.get("reward_margin") for r in lines(resumed)]


def test_dpo_bad_pairs_name_their_line(base_gpt2, tmp_path, spine_tokenizer):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"},
                                                {"prompt": "p", "chosen": "a"}])
    tokenizer = Tokenizer.from_file(spine_tokenizer)
    with pytest.raises(DataError, match=r"bad\.jsonl:2: missing key\(s\) 'rejected'"):
        dpo.load_pairs(path, tokenizer, DEFAULT_CHAT_TEMPLATE, 64, dpo.DataStats(), False)
    stats = dpo.DataStats()
    assert len(dpo.load_pairs(path, tokenizer, DEFAULT_CHAT_TEMPLATE, 64, stats, True)) == 1 and stats.skipped == 1
    with pytest.raises(ValueError, match="beta must be positive"):
        dpo.Config(beta=0)
