"""The model: published parameter counts, shape errors, loss paths, learning on one batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from groundup.model.config import PRESETS, ModelConfig
from groundup.model.fused_loss import linear_cross_entropy_fused
from groundup.model.transformer import Transformer, count_parameters

PUBLISHED = {
    "gpt2-124m": 124_439_808,
    "gpt2-355m": 354_823_168,
    "gpt2-774m": 774_030_080,
    "gpt2-1.5b": 1_557_611_200,
    "tinyllama-1.1b": 1_100_048_384,
    "llama-2-7b": 6_738_415_616,
    "llama-3-8b": 8_030_261_248,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_presets_reproduce_published_parameter_counts(name):
    assert name in PRESETS
    assert count_parameters(ModelConfig.from_name(name)) == PUBLISHED[name]


def test_gpt2_small_is_tied_with_1024_positions():
    cfg = ModelConfig.from_name("gpt2-124m")
    assert cfg.tie_embeddings and cfg.block_size == 1024 and cfg.position == "learned"
    with torch.device("meta"):
        model = Transformer(cfg)
    assert model.lm_head.weight is model.tok_embeddings.weight


@pytest.mark.parametrize(("changes", "message"), [
    ({"n_embd": 250, "n_head": 4}, "n_embd"),
    ({"n_head": 4, "n_kv_head": 3}, "n_kv_head"),
    ({"vocab_size": 0}, "vocab_size"),
    ({"n_layer": 0}, "n_layer"),
    ({"dropout": 1.5}, "dropout"),
])
def test_bad_shapes_are_refused_with_the_field_named(changes, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**changes)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="gpt2-124m"):
        ModelConfig.from_name("gpt5-nano")


def small(family: str, **changes) -> Transformer:
    torch.manual_seed(0)
    name = "tiny-gpt2" if family == "gpt2" else "tiny-llama"
    return Transformer(ModelConfig.from_name(name, n_layer=2, n_embd=64, n_head=4, vocab_size=97, block_size=32,
                                             **changes))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_sequence_longer_than_block_size_is_refused(family):
    with pytest.raises(ValueError, match="block_size"):
        small(family)(torch.zeros(1, 33, dtype=torch.long))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_tiny_model_overfits_one_batch(family):
    model = small(family)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 97, (4, 32), generator=g)
    y = torch.randint(0, 97, (4, 32), generator=g)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    first = None
    for _ in range(150):
        loss = model(x, targets=y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 4.0  # about ln(97) = 4.57 at the start
    assert loss.item() < 0.1, loss.item()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_loss_from_targets_equals_cross_entropy_of_logits(family):
    model = small(family)
    x = torch.randint(0, 97, (3, 32))
    y = torch.randint(0, 97, (3, 32))
    y[0, :5] = -100
    expected = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=-100)
    torch.testing.assert_close(model(x, targets=y), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("n", "vocab", "ignored"), [(37, 1000, 0), (64, 50304, 9), (5, 3, 2)])
def test_fused_linear_cross_entropy_matches_the_plain_path(n, vocab, ignored):
    g = torch.Generator().manual_seed(n)
    h = torch.randn(n, 24, generator=g, requires_grad=True)
    w = (0.3 * torch.randn(vocab, 24, generator=g)).requires_grad_()
    t = torch.randint(0, vocab, (n,), generator=g)
    t[:ignored] = -100
    loss = linear_cross_entropy_fused(h, w, t)
    (2.5 * loss).backward()
    h2, w2 = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    ref = F.cross_entropy(h2 @ w2.t(), t, ignore_index=-100)
    (2.5 * ref).backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h.grad, h2.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(w.grad, w2.grad, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy_fused(h, w, t), ref, rtol=1e-5, atol=1e-6)


def test_dropout_acts_in_training_only():
    model = small("gpt2", dropout=0.3, attention_dropout=0.3)
    x = torch.randint(0, 97, (2, 16))
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


def test_grouped_query_attention_shrinks_key_value_projections():
    full = small("llama", n_kv_head=4)
    grouped = small("llama", n_kv_head=1)
    assert grouped.num_parameters() < full.num_parameters()
    assert grouped(torch.zeros(1, 8, dtype=torch.long)).shape == (1, 8, 97)
