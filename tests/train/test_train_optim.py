"""Learning-rate schedules and parameter groups."""

from __future__ import annotations

import math

import pytest
import torch

from groundup.model.config import ModelConfig
from groundup.model.transformer import Transformer
from groundup.train.optim import OptimConfig, build_optimizer, lr_at, param_groups, set_lr


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
                                              ("decay_fraction", 0.0), ("schedule", "linear"),
                                              ("embedding_lr_ratio", 0.0)])
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


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_embedding_tables_can_learn_at_their_own_rate(optimizer):
    """optim.embedding_lr_ratio: the token and value-embedding tables (the tied head with the token table) get
    their own group, whose learning rate keeps the ratio to the schedule's; everything else is unchanged."""
    model = Transformer(ModelConfig.from_name("tiny-llama", n_layer=2, n_embd=32, n_head=2, n_kv_head=2,
                                              vocab_size=50, block_size=8, value_embeddings=True))
    tables = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    assert len(tables) == 2  # the token table and one value-embedding table (on the last layer)
    opt = build_optimizer(model, OptimConfig(optimizer=optimizer, lr=1e-3, embedding_lr_ratio=4.0), "cpu")
    set_lr(opt, 5e-4)
    groups = [g for g in opt.param_groups if g.get("lr_ratio") == 4.0]
    assert len(groups) == 1 and {id(p) for p in groups[0]["params"]} == tables
    assert groups[0]["lr"] == pytest.approx(2e-3) and groups[0]["weight_decay"] == 0.1
    others = {id(p) for g in opt.param_groups if g is not groups[0] for p in g["params"]}
    assert not others & tables and len(others) + len(tables) == len(list(model.parameters()))
    assert all(g["lr"] == pytest.approx(5e-4) for g in opt.param_groups if "lr_ratio" not in g)
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randint(0, 50, (2, 8)), targets=torch.randint(0, 50, (2, 8))).backward()
    opt.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True) if id(p) in tables)
    # the default keeps the two groups (and the optimizer states saved by earlier runs)
    assert len(param_groups(model, 0.1)) == 2
