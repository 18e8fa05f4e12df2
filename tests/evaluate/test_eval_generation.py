"""Generation metrics against the libraries, pass@k against the closed form, and the candidate-code sandbox."""

from __future__ import annotations

import math
import time

import pytest

from groundup.evaluate import generation as gen

PREDS = ["the cat sat on the mat", "a quick brown fox jumps", "hello there", ""]
REFS = [["the cat is on the mat", "a cat sat on a mat"], ["the quick brown fox jumped"], ["hello there"], ["x"]]


def test_bleu_and_chrf_equal_sacrebleu():
    import sacrebleu

    score, signature = gen.bleu(PREDS, REFS)
    streams = [[r[0] for r in REFS], [r[1] if len(r) > 1 else None for r in REFS]]
    assert score == sacrebleu.corpus_bleu(PREDS, streams).score
    assert "nrefs:var" in signature and "tok:13a" in signature and "version:" in signature
    one_ref = [[r[0]] for r in REFS]
    assert gen.chrf(PREDS, one_ref)[0] == sacrebleu.corpus_chrf(PREDS, [[r[0] for r in REFS]]).score
    assert 0 < score < 100


def test_rouge_equals_rouge_score():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    ours = gen.rouge(PREDS, REFS)
    for i, (p, refs) in enumerate(zip(PREDS, REFS, strict=True)):
        for key in ("rouge1", "rouge2", "rougeL"):
            assert ours[key][i] == max(scorer.score(r, p)[key].fmeasure for r in refs)
    assert ours["rouge1"][2] == 1.0


def test_exact_match():
    assert gen.exact_match("  hi \n", ["hi"]) == 1.0
    assert gen.exact_match("hi there", ["hi"]) == 0.0


@pytest.mark.parametrize("n, c, k", [(10, 0, 1), (10, 3, 1), (10, 3, 5), (20, 19, 10), (5, 5, 5), (200, 7, 100)])
def test_pass_at_k_matches_the_closed_form(n, c, k):
    expected = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert gen.pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_averages_problems():
    scores = gen.pass_at_k_scores([[True, False, False, False], [False] * 4, [True] * 4], ks=[1, 2, 10])
    assert scores["pass@1"] == pytest.approx((0.25 + 0 + 1) / 3)
    assert scores["pass@2"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert "pass@10" not in scores  # needs 10 samples per problem


def test_sandbox_passes_and_fails():
    good = gen.code_program("def add(a, b):\n", "    return a + b\n",
                            "def check(f):\n    assert f(2, 3) == 5\n", "add")
    bad = gen.code_program("def add(a, b):\n", "    return a - b\n",
                           "def check(f):\n    assert f(2, 3) == 5\n", "add")
    out = gen.run_programs([good, bad])
    assert [o.passed for o in out] == [True, False]
    assert out[1].status == "failed" and "AssertionError" in out[1].detail


def test_infinite_loop_and_unbounded_allocation_are_killed():
    limits = gen.Limits(timeout_s=3.0, cpu_s=2, memory_mb=256)
    loop = "while True:\n    pass\n"
    hog = "x = []\nwhile True:\n    x.append(bytearray(10_000_000))\n"
    sleeper = "import time\ntime.sleep(60)\n"
    started = time.perf_counter()
    outcomes = gen.run_programs([loop, hog, sleeper], limits, workers=3)
    assert time.perf_counter() - started < 15
    assert [o.passed for o in outcomes] == [False, False, False]
    assert outcomes[0].status in ("killed", "timeout")
    assert outcomes[1].status == "killed"  # MemoryError under RLIMIT_AS, well before the machine's memory
    assert outcomes[2].status == "timeout"
    scores = gen.pass_at_k_scores([[o.passed] for o in outcomes], ks=[1])
    assert scores["pass@1"] == 0.0


def test_candidate_code_has_no_network():
    program = ("import socket\ntry:\n    socket.create_connection(('127.0.0.1', 9))\nexcept OSError as e:\n"
               "    assert 'disabled' in str(e), e\nelse:\n    raise SystemExit(1)\n")
    assert gen.run_program(program).passed


def test_generate_until_cuts_at_stop_sequence(eval_model):
    model, tokenizer = eval_model
    free = gen.generate_until(model, tokenizer, "the cat", max_new_tokens=40)
    assert len(free) > 3
    stop = free[2:4]
    cut = gen.generate_until(model, tokenizer, "the cat", until=[stop], max_new_tokens=40)
    assert cut == free[: free.index(stop)]


def test_code_task_counts_passing_samples(eval_model, tmp_path, monkeypatch):
    """The code path end to end with the completions fixed: 2 problems x 4 samples, pass@k from the outcomes."""
    import json

    from groundup.evaluate.suite import TaskSettings, evaluate_task, load_tasks

    path = tmp_path / "humaneval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [
        {"prompt": "def add(a, b):\n", "test": "def check(f):\n    assert f(1, 2) == 3\n", "entry_point": "add"},
        {"prompt": "def neg(a):\n", "test": "def check(f):\n    assert f(4) == -4\n", "entry_point": "neg"}]))
    answers = iter(["    return a + b\n", "    return a - b\n", "    while True: pass\n", "    return b + a\n",
                    "    return -a\n", "    return a\n", "    return 0 - a\n", "    x = [0] * 10**10\n"])
    # The completions in order (the code path generates every problem's samples in one batched call).
    monkeypatch.setattr(gen, "generate_until", lambda model, tokenizer, contexts, **kwargs: [next(answers)
                                                                                          for _ in contexts])
    settings = TaskSettings(code_samples=4, pass_k=[1, 2], code_limits=gen.Limits(timeout_s=2, cpu_s=1))
    results, samples = evaluate_task(*eval_model, load_tasks([path])[0], settings)
    scores = results["humaneval"]
    assert scores["pass@1"] == pytest.approx((2 / 4 + 2 / 4) / 2)
    assert scores["pass@2"] == pytest.approx(gen.pass_at_k(4, 2, 2))
    assert samples[0]["status"][2] in ("killed", "timeout") and samples[1]["status"][3] == "killed"
