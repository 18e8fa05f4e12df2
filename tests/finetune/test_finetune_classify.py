"""Classifier fine-tuning: held-out accuracy far above the majority class, the classifier dir, inference, resume."""

from __future__ import annotations

import json
import random

import pytest
import torch
from finetune_helpers import ANIMALS, FRUITS, assert_same_weights, interrupted_then_resumed, loop, write_jsonl

from groundup.finetune import classify
from groundup.finetune.data import DataError, ExampleBatches
from groundup.infer import classify as classify_stage
from groundup.model.io import load_model_dir
from groundup.model.lora import LoRAConfig
from groundup.train.optim import OptimConfig

COLORS = ["red", "blue", "green", "black", "white", "brown"]
FILLER = ["the", "a", "on", "big", "small", "very", "and", "of", "near", "old", "is", "we"]
CLASSES = {"fruit": FRUITS, "animal": ANIMALS, "color": COLORS}


def texts(n: int, seed: int) -> list[dict]:
    """Six filler words with one keyword at a random place; the label is the keyword's class (50/30/20)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.choices(list(CLASSES), weights=[5, 3, 2])[0]
        words = rng.choices(FILLER, k=6)
        words.insert(rng.randrange(7), rng.choice(CLASSES[label]))
        out.append({"text": " ".join(words), "label": label})
    return out


def config(base, data, val, out, resume=None, steps=None, **kw):
    settings = dict(model=base, data=data, val_data=val, out=out, batch_size=16, device="cpu",
                    optim=OptimConfig(lr=3e-3, warmup_steps=5, weight_decay=0.0),
                    train=loop(resume=resume, **(steps or {})))
    return classify.Config(**{**settings, **kw})


@pytest.mark.parametrize("lora", [False, True])
def test_classifier_beats_the_majority_class_on_held_out_texts(base_llama, tmp_path, lora):
    train = write_jsonl(tmp_path / "train.jsonl", texts(320, seed=0))
    held_out = texts(100, seed=1)
    val = write_jsonl(tmp_path / "val.jsonl", held_out)
    # LoRA over a frozen random base learns more slowly (and diverges at full fine-tuning's rates)
    steps = {"max_steps": 200 if lora else 120, "log_every": 20, "eval_every": 50, "checkpoint_every": 0}
    out = classify.run(config(base_llama, train, val, tmp_path / "clf", steps=steps,
                              lora=LoRAConfig(enabled=lora, rank=8, alpha=8),
                              optim=OptimConfig(lr=5e-3 if lora else 3e-3, warmup_steps=5, weight_decay=0.0)))
    result = json.loads((out / "result.json").read_text())
    majority = sum(t["label"] == "fruit" for t in held_out) / len(held_out)
    assert result["val_accuracy"] >= (0.8 if lora else 0.85) and majority < 0.55
    assert result["labels"] == ["animal", "color", "fruit"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_accuracy"] for r in records if "val_accuracy" in r][-1] == result["val_accuracy"]
    assert "accuracy" in [r for r in records if "loss" in r][-1]

    # the classifier dir: inference through `groundup classify` agrees with the held-out accuracy
    preds = classify_stage.run(classify_stage.Config(model=out, input=val, out=tmp_path / "preds.jsonl"))
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    accuracy = sum(r["label"] == t["label"] for r, t in zip(rows, held_out, strict=True)) / len(held_out)
    assert accuracy == pytest.approx(result["val_accuracy"], abs=1e-6)
    assert abs(sum(rows[0]["probabilities"].values()) - 1) < 1e-4
    with pytest.raises(ValueError, match="lm_head.weight"):
        load_model_dir(out)  # a classifier dir is not a language model: say so rather than load garbage
    if lora:
        adapter = (out / "adapter" / "adapter.safetensors").stat().st_size
        assert adapter < (out / "model.safetensors").stat().st_size / 5


def test_padding_does_not_change_a_prediction(base_gpt2):
    model, _ = load_model_dir(base_gpt2)
    classify.add_class_head(model, 3)
    seqs = [[5, 6, 7, 8, 9], [5, 6, 7]]
    x, lengths = classify.pad_texts(seqs, pad_id=0)
    with torch.no_grad():
        batched = classify.class_logits(model, x, lengths)
        alone = classify.class_logits(model, torch.tensor([seqs[1]]), torch.tensor([3]))
    assert torch.allclose(batched[1], alone[0], atol=1e-5)


def test_classifier_resume_is_exact(base_gpt2, tmp_path, monkeypatch):
    train = write_jsonl(tmp_path / "train.jsonl", texts(64, seed=3))
    val = write_jsonl(tmp_path / "val.jsonl", texts(16, seed=4))
    straight, resumed = interrupted_then_resumed(
        classify.run, lambda out, resume: config(base_gpt2, train, val, out, resume), tmp_path, monkeypatch,
        ExampleBatches)
    assert_same_weights(straight, resumed)


def test_unknown_held_out_label_and_one_class_are_errors(base_gpt2, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", texts(30, seed=5))
    val = write_jsonl(tmp_path / "val.jsonl", [{"text": "x", "label": "mineral"}])
    with pytest.raises(DataError, match=r"val\.jsonl: held-out labels \['mineral'\]"):
        classify.run(config(base_gpt2, train, val, tmp_path / "a"))
    one = write_jsonl(tmp_path / "one.jsonl", [{"text": "x", "label": 1}, {"text": "y", "label": 1}])
    with pytest.raises(DataError, match="at least two classes"):
        classify.run(config(base_gpt2, one, None, tmp_path / "b"))
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "x", "label": 1}, {"txt": "y", "label": 0}])
    with pytest.raises(DataError, match=r"bad\.jsonl:2: expected keys 'text' and 'label'"):
        classify.run(config(base_gpt2, bad, None, tmp_path / "c"))


def scored_texts(n: int, seed: int) -> list[dict]:
    """Six filler words and 0-3 fruit names; the score is the number of fruit names (annotate's record shape)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        score = rng.randint(0, 3)
        words = rng.choices(FILLER, k=6)
        for _ in range(score):
            words.insert(rng.randrange(len(words) + 1), rng.choice(FRUITS))
        out.append({"hash": f"{rng.getrandbits(64):016x}", "text": " ".join(words), "score": score})
    return out


@pytest.mark.parametrize("pooling", ["mean", "last_token"])
def test_regression_head_learns_a_score_and_classify_reports_it(base_llama, tmp_path, pooling):
    train = write_jsonl(tmp_path / "train.jsonl", scored_texts(320, seed=0))
    held_out = scored_texts(80, seed=1)
    val = write_jsonl(tmp_path / "val.jsonl", held_out)
    out = classify.run(config(base_llama, train, val, tmp_path / "reg", task="regression", pooling=pooling,
                              steps={"max_steps": 120, "log_every": 20, "eval_every": 60, "checkpoint_every": 0}))
    result = json.loads((out / "result.json").read_text())
    meta = json.loads((out / "classifier.json").read_text())
    assert meta["task"] == "regression" and meta["labels"] == ["score"] and meta["pooling"] == pooling
    assert result["val_loss"] < 0.35 * result["mean_baseline_val_loss"], result  # far better than the mean
    # `groundup classify` gives the score in the score's units, agreeing with the held-out error
    preds = classify_stage.run(classify_stage.Config(model=out, input=val, out=tmp_path / "preds.jsonl"))
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    mse = sum((r["score"] - t["score"]) ** 2 for r, t in zip(rows, held_out, strict=True)) / len(held_out)
    assert mse == pytest.approx(result["val_loss"], rel=1e-3, abs=1e-4)


def test_regression_needs_numbers_that_differ(base_gpt2, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "x", "score": 1}, {"text": "y", "score": "high"}])
    with pytest.raises(DataError, match=r"bad\.jsonl:2: 'score' must be a number, got 'high'"):
        classify.run(config(base_gpt2, bad, None, tmp_path / "a", task="regression"))
    same = write_jsonl(tmp_path / "same.jsonl", [{"text": "x", "score": 2}, {"text": "y", "score": 2}])
    with pytest.raises(DataError, match="every training score is 2"):
        classify.run(config(base_gpt2, same, None, tmp_path / "b", task="regression", val_fraction=0))
