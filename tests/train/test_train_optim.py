"""Learning-rate schedules and parameter groups."""

from __future__ import annotations

import math

import pytest

from groundup.model.config import ModelConfig
from groundup.model.transformer import Transformer
from groundup.train.optim import OptimConfig, build_optimizer, lr_at, param_groups


def test_warmup_is_linear_in_steps():
    cfg = OptimConfig(lr=1.0, warmup_steps=4)
    assert [lr_at(s, 0.0, cfg) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]


def test_cosine_runs_from_peak_to_floor():
    cfg = OptimConfig(lr=2.0, min_lr_ratio=0.1, warmup_steps=0, schedule="cosine")
    assert lr_at(0, 0.0, cfg) == pytest.approx(2.0)
    assert lr_at(50, 0.5, cfg) == pytest.approx(0.2 + 0.9)
    assert lr_at(100, 1.0, cfg) == pytest.approx(0.2)
    assert lr_at(200, 1.7, cfg) == pytest.approx(0.2)  # progress past the end stays at the floor


def test_warmup_stable_decay():
    cfg = OptimConfig(lr=1.0, min_lr_ratio=0.0, warmup_steps=0, schedule="wsd", decay_fraction=0.2)
    assert lr_at(10, 0.5, cfg) == 1.0 and lr_at(10, 0.8, cfg) == 1.0
    assert lr_at(10, 0.9, cfg) == pytest.approx(0.5)
    assert lr_at(10, 1.0, cfg) == pytest.approx(0.0)


@pytest.mark.parametrize(("field", "value"), [("lr", 0.0), ("min_lr_ratio", 2.0), ("warmup_steps", -1),
                                              ("decay_fraction", 0.0), ("schedule", "linear")])
def test_bad_settings_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        OptimConfig(**{field: value})


def test_weight_decay_applies_to_matrices_only():
    model = Transformer(ModelConfig.from_name("tiny-gpt2", n_layer=1, n_embd=32, n_head=2, vocab_size=50,
                                              block_size=8))
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    total = sum(p.numel() for g in (decay, no_decay) for p in g["params"])
    assert total == model.num_parameters()  # the tied head is counted once
    optimizer = build_optimizer(model, OptimConfig(), "cpu")
    assert math.isclose(optimizer.param_groups[0]["weight_decay"], 0.1)
