"""Math answer extraction against lm-eval's gsm8k filters, pass@k / pass^k exact values, CORE centring."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from groundup.evaluate import answers
from groundup.evaluate import generation as gen
from groundup.evaluate.multiple_choice import centered, core_score

OUTPUTS = [
    "Natalia sold 48/2 = 24 clips in May.\nShe sold 48+24 = 72 clips.\n#### 72",
    "The total is $1,234.\n#### 1,234",
    "So she pays 18 - 5 = 13 dollars.\n#### -13",
    "He has 5 apples. Then 3 more, so the answer is 8.",
    "#### 7.5\nQuestion: next",
    "The answer is \\boxed{42}.",
    "We get 3.14 and then 2,000 people.",
    "No number here at all.",
    "Two answers: #### 3 and later #### 4",
    "It costs $12.50.",
    "####12 (no space after the hashes)",
    "-5 degrees",
]


@pytest.fixture(scope="module")
def lm_eval_filters():
    pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'groundup[eval]')")
    from lm_eval.filters.extraction import RegexFilter

    strict = RegexFilter(regex_pattern=r"#### (\-?[0-9\.\,]+)")
    flexible = RegexFilter(regex_pattern=r"(-?[$0-9.,]{2,})|(-?[0-9]+)", group_select=-1)
    return strict, flexible


def test_extraction_agrees_with_lm_eval_gsm8k_filters(lm_eval_filters):
    strict, flexible = lm_eval_filters
    theirs_strict = [r[0] for r in strict.apply([[o] for o in OUTPUTS], [{}] * len(OUTPUTS))]
    theirs_flexible = [r[0] for r in flexible.apply([[o] for o in OUTPUTS], [{}] * len(OUTPUTS))]
    assert [answers.strict_answer(o) for o in OUTPUTS] == theirs_strict
    assert [answers.flexible_answer(o) for o in OUTPUTS] == theirs_flexible
    assert theirs_strict[0] == "72" and theirs_strict[3] == answers.FALLBACK  # the set exercises both branches


def test_exact_match_agrees_with_lm_eval_metric():
    pytest.importorskip("lm_eval")
    from lm_eval.api.metrics import exact_match_hf_evaluate

    refs = ["Natalia sold ... #### 72", "#### 1,234", "x #### -13", "8", "7.5", "$12.50."]
    preds = ["72", "1234", "-13", "8.", "7.50", "12.50"]
    for p, r in zip(preds, refs, strict=True):
        theirs = exact_match_hf_evaluate([r], [p], regexes_to_ignore=[",", "\\$", "(?s).*#### ", "\\.$"],
                                         ignore_case=True, ignore_punctuation=False)["exact_match"]
        assert answers.lm_eval_exact_match(p, r) == theirs


@pytest.mark.parametrize(("text", "want"), [
    ("so #### 1,234.", "1234"),
    ("the answer is \\boxed{\\frac{1}{2}} or \\boxed{1,000}", "1000"),
    ("It costs $12.50 dollars.", "12.5"),
    ("about 3.0 km", "3"),
    ("#### -7\n", "-7"),
    ("He walks 5 km, then 3 km. Total: 8 km.", "8"),
    ("nothing", None),
    ("\\boxed{unclosed 5", "5"),
])
def test_final_answer_normalisations(text, want):
    assert answers.final_answer(text) == want


def test_answers_match_numbers_not_strings():
    assert answers.answers_match("The total is 1,000 dollars.", "...\n#### 1000")
    assert answers.answers_match("\\boxed{0.50}", "0.5")
    assert not answers.answers_match("#### 12", "#### 13")
    assert not answers.answers_match("#### 12", "no number")


def test_pass_at_k_exact_values():
    # 1 - C(n-c, k) / C(n, k) as exact fractions
    for n, c, k in [(10, 3, 1), (10, 3, 5), (10, 0, 3), (5, 5, 2), (20, 1, 10), (200, 13, 100), (4, 2, 4)]:
        exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
        assert gen.pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12)
    assert gen.pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)


def test_pass_hat_k_both_forms_exact_values():
    for n, c, k in [(10, 3, 1), (10, 3, 2), (10, 7, 5), (8, 8, 8), (8, 2, 3), (100, 60, 10)]:
        assert gen.pass_hat_k(n, c, k) == pytest.approx(math.comb(c, k) / math.comb(n, k), abs=1e-12)
        assert gen.pass_power_k(n, c, k) == pytest.approx((c / n) ** k, abs=1e-15)
    assert gen.pass_hat_k(10, 7, 2) == pytest.approx(21 / 45)
    assert gen.pass_power_k(10, 7, 2) == pytest.approx(0.49)
    with pytest.raises(ValueError, match="at least 3 samples"):
        gen.pass_hat_k(2, 1, 3)
    scores = gen.pass_at_k_scores([[True, True, False, False], [True] * 4], ks=[1, 2])
    assert scores["pass^2"] == pytest.approx((1 / 6 + 1) / 2)
    assert scores["pass^2_power"] == pytest.approx((0.25 + 1) / 2)
    assert "pass^1" not in scores  # equal to pass@1


def test_core_centring_and_aggregate():
    assert centered(0.25, 0.25) == 0.0 and centered(1.0, 0.25) == 1.0
    assert centered(0.625, 0.25) == pytest.approx(0.5)
    assert centered(0.0, 0.5) == -1.0  # below chance is negative
    results = {"a": {"acc_centered": 0.5}, "a/sub": {"acc_centered": 0.9}, "b": {"acc_centered": -0.1},
               "ppl": {"bits_per_byte": 1.0}}
    assert core_score(results) == {"core": pytest.approx(0.2), "n": 2, "tasks": ["a", "b"]}
    assert core_score({"ppl": {"bits_per_byte": 1.0}}) is None
    with pytest.raises(ValueError, match="baseline"):
        centered(0.5, 1.0)
