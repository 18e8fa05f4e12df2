"""Sampling: each logit processor on hand-made logits, the greedy/seeded draw, parameter validation."""

from __future__ import annotations

import math

import pytest
import torch

from groundup.infer.sampling import (
    SamplingParams,
    apply_logit_bias,
    apply_min_p,
    apply_presence_frequency_penalty,
    apply_repetition_penalty,
    apply_temperature,
    apply_top_k,
    apply_top_p,
    make_generator,
    process_logits,
    sample_next,
)

PROBS = [0.5, 0.3, 0.15, 0.05]


def log_probs(probs: list[float], order: list[int] | None = None) -> torch.Tensor:
    """Logits (1, V) whose softmax is ``probs``, optionally permuted so that sorting is exercised."""
    logits = torch.tensor([[math.log(p) for p in probs]])
    return logits[:, order] if order is not None else logits


def kept(logits: torch.Tensor) -> set[int]:
    return set(torch.isfinite(logits[0]).nonzero().flatten().tolist())


# ---------------------------------------------------------------------------- filters


def test_top_k_keeps_the_k_largest_per_row():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [4.0, -1.0, 0.5, 2.0]])
    out = apply_top_k(logits, 2)
    assert torch.isfinite(out).tolist() == [[False, True, True, False], [True, False, False, True]]
    assert torch.equal(out[torch.isfinite(out)], logits[torch.isfinite(out)])  # kept values untouched
    assert torch.equal(apply_top_k(logits, None), logits)
    assert torch.equal(apply_top_k(logits, 10), logits)
    assert kept(apply_top_k(logits[:1], 1)) == {1}


def test_top_p_keeps_the_smallest_nucleus():
    order = [2, 0, 3, 1]  # positions of PROBS scrambled: id j holds PROBS[order[j]]
    logits = log_probs(PROBS, order)
    ids_by_rank = [order.index(r) for r in range(4)]  # id of the most likely, second, ...
    assert kept(apply_top_p(logits, 0.4)) == set(ids_by_rank[:1])
    assert kept(apply_top_p(logits, 0.7)) == set(ids_by_rank[:2])  # 0.5 < 0.7 <= 0.8
    assert kept(apply_top_p(logits, 0.9)) == set(ids_by_rank[:3])
    assert kept(apply_top_p(logits, 1e-9)) == set(ids_by_rank[:1])  # never empty
    assert torch.equal(apply_top_p(logits, 1.0), logits)


def test_min_p_keeps_tokens_relative_to_the_most_likely():
    logits = log_probs(PROBS)
    assert kept(apply_min_p(logits, 0.2)) == {0, 1, 2}  # threshold 0.1
    assert kept(apply_min_p(logits, 0.5)) == {0, 1}  # threshold 0.25
    assert kept(apply_min_p(logits, 1.0)) == {0}
    assert torch.equal(apply_min_p(logits, 0.0), logits)
    # Scaling logits by a temperature changes which tokens pass: min-p acts on the tempered distribution.
    assert kept(apply_min_p(logits / 0.5, 0.2)) == {0, 1}  # probs ~ p^2: 0.09/0.25 = 0.36, 0.0225/0.25 < 0.2


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    before = logits.clone()
    out = apply_repetition_penalty(logits, torch.tensor([[0, 1, 1]]), 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5, 3.0]]  # token 1 seen twice, penalized once
    assert torch.equal(logits, before)  # pure: the input is left alone
    assert torch.equal(apply_repetition_penalty(logits, torch.tensor([[0]]), 1.0), logits)
    assert torch.equal(apply_repetition_penalty(logits, torch.empty(1, 0, dtype=torch.long), 2.0), logits)


def test_presence_and_frequency_penalties_count_output_tokens():
    logits = torch.zeros(1, 4)
    out = apply_presence_frequency_penalty(logits, torch.tensor([[2, 2, 0]]), presence=0.5, frequency=1.0)
    assert out.tolist() == [[-1.5, 0.0, -2.5, 0.0]]


def test_logit_bias_adds_to_every_row():
    logits = torch.zeros(2, 4)
    out = apply_logit_bias(logits, {1: 5.0, 3: -100.0})
    assert out.tolist() == [[0.0, 5.0, 0.0, -100.0]] * 2
    assert apply_logit_bias(logits, {}) is logits


def test_temperature_scales_and_rejects_zero():
    logits = torch.tensor([[1.0, 2.0]])
    assert apply_temperature(logits, 0.5).tolist() == [[2.0, 4.0]]
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(logits, 0.0)


# ---------------------------------------------------------------------------- drawing


def test_greedy_is_the_argmax_of_the_penalized_logits():
    logits = torch.tensor([[1.0, 3.0, 2.9, 0.0], [0.0, 0.0, 0.0, 5.0]])
    greedy = SamplingParams(temperature=0)
    assert sample_next(logits, greedy).tolist() == [1, 3]
    # Token 1 already seen: the penalty hands the lead to token 2 in row 0; row 3 keeps its large margin.
    penalized = SamplingParams(temperature=0, repetition_penalty=1.5)
    assert sample_next(logits, penalized, prompt_ids=torch.tensor([[1], [3]])).tolist() == [2, 3]
    presence = SamplingParams(temperature=0, presence_penalty=2.0)
    assert sample_next(logits, presence, output_ids=torch.tensor([[1], [0]])).tolist() == [2, 3]


def test_seeded_draws_repeat_and_follow_the_filters():
    logits = log_probs(PROBS).expand(64, -1)  # (64, 4): 64 independent rows
    params = SamplingParams(temperature=1.0, top_k=2)
    a = sample_next(logits, params, make_generator(7))
    b = sample_next(logits, params, make_generator(7))
    c = sample_next(logits, params, make_generator(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert set(a.tolist()) == {0, 1}  # top-k 2 leaves only the two most likely


def test_draws_follow_the_distribution():
    logits = log_probs([0.7, 0.2, 0.1]).expand(4000, -1)
    draws = sample_next(logits, SamplingParams(temperature=1.0), make_generator(0))
    freq = torch.bincount(draws, minlength=3).float() / len(draws)
    assert torch.allclose(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.03)
    # A low temperature sharpens the distribution toward the most likely token.
    cold = sample_next(logits, SamplingParams(temperature=0.1), make_generator(0))
    assert (cold == 0).float().mean() > 0.99


def test_process_logits_applies_temperature_before_top_p():
    # At temperature 1 the nucleus 0.6 needs two tokens; at 0.25 the top token alone has > 0.6 of the mass.
    logits = log_probs(PROBS)
    assert kept(process_logits(logits, SamplingParams(temperature=1.0, top_p=0.6))) == {0, 1}
    assert kept(process_logits(logits, SamplingParams(temperature=0.25, top_p=0.6))) == {0}


# ---------------------------------------------------------------------------- validation


@pytest.mark.parametrize(("field", "value"), [
    ("temperature", -0.1), ("temperature", float("nan")), ("top_k", 0), ("top_k", -3), ("top_p", 0.0),
    ("top_p", 1.5), ("min_p", -0.1), ("min_p", 1.1), ("repetition_penalty", 0.0),
    ("presence_penalty", float("inf")), ("max_new_tokens", 0), ("stop", [""]), ("logit_bias", {-1: 1.0}),
    ("context_overflow", "wrap"),
])
def test_invalid_params_raise_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_defaults_are_valid_and_a_single_stop_string_is_a_list():
    params = SamplingParams()
    assert params.temperature == 0.8 and params.top_k is None and params.stop == []
    assert SamplingParams(stop="\n\n").stop == ["\n\n"]


def test_draw_rows_gives_the_tokens_and_generator_states_of_row_by_row_draws():
    from groundup.infer.sampling import draw, draw_rows

    torch.manual_seed(0)
    logits = torch.randn(64, 301) * 4
    logits[3, 200:] = float("-inf")  # a masked vocabulary tail
    temps = [1.0 if i % 3 else 0.7 for i in range(64)]
    for round_ in range(3):  # the generators' states stay in step over several draws
        mine = [torch.Generator().manual_seed(i) for i in range(64)]
        ref = [torch.Generator().manual_seed(i) for i in range(64)]
        for _ in range(round_):
            draw_rows(logits, temps, mine)
            for i in range(64):
                draw(process_logits(logits[i: i + 1], SamplingParams(temperature=temps[i])), SamplingParams(), ref[i])
        batched = draw_rows(logits, temps, mine)
        single = [int(draw(process_logits(logits[i: i + 1], SamplingParams(temperature=temps[i])),
                           SamplingParams(temperature=temps[i]), ref[i])) for i in range(64)]
        assert batched == single
    bad = logits[:2].clone()
    bad[1, 0] = float("nan")
    assert draw_rows(bad, [1.0, 1.0], [torch.Generator(), torch.Generator()])[1] is None
