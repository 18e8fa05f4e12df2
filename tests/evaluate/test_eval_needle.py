"""Needle in a haystack: prompts of exact lengths with the needle at the asked depth, the scorer, a model that
copies the needle scoring 1 everywhere, the grid through `groundup evaluate`, and the report's heat map."""

from __future__ import annotations

import json
import re

import pytest
import torch

from groundup.evaluate import needle
from groundup.evaluate.needle import NeedleSettings


@pytest.fixture(scope="module")
def tokenizer(eval_model):
    return eval_model[1]


def copy_the_needle(tokenizer):
    """A stand-in model: reads the prompt and answers with the magic number it finds (or nothing)."""
    def generate(prompts: list[list[int]], max_new_tokens: int) -> list[str]:
        answers = []
        for ids in prompts:
            found = re.search(r"The special magic number is (\d+)\.", tokenizer.decode(ids))
            answers.append(f" {found.group(1)}." if found else " I do not know.")
        return answers

    return generate


@pytest.mark.parametrize("filler", ["essay", "corpus"])
def test_prompt_has_the_length_and_the_needle_at_the_depth(tokenizer, filler):
    settings = NeedleSettings(lengths=[300, 700, 1500], depths=[0.0, 0.1, 0.33, 0.5, 0.9, 1.0], samples=2,
                              filler=filler)
    sentences = needle.filler_sentences(filler)
    longest = max(len(tokenizer.encode(" " + s)) for s in sentences)
    prompts = needle.grid_prompts(tokenizer, settings, block_size=2048, seed=7)
    assert len(prompts) == 3 * 6 * 2
    intro = tokenizer.encode(needle.INTRO)
    for p in prompts:
        assert len(p.ids) == p.length
        needle_ids = tokenizer.encode(needle.NEEDLE.format(number=p.number))
        assert p.ids[p.needle_start:p.needle_start + len(needle_ids)] == needle_ids
        assert p.ids[:len(intro)] == intro and p.ids[-len(tokenizer.encode(needle.QUESTION)):] == \
            tokenizer.encode(needle.QUESTION)
        # the needle sits at the sentence boundary nearest the asked token position
        asked = len(intro) + p.depth * p.filler_tokens
        assert abs(p.needle_start - asked) <= longest / 2 + 1, (p.length, p.depth, p.needle_start, asked)
        assert abs(p.actual_depth - p.depth) <= (longest / 2 + 1) / p.filler_tokens
        text = tokenizer.decode(p.ids)
        assert text.count(p.number) == 1 and not re.search(r"\d", text.replace(p.number, ""))
    ends = [p for p in prompts if p.depth in (0.0, 1.0)]
    assert all(p.filler_before == (0 if p.depth == 0.0 else p.filler_tokens) for p in ends)
    # deterministic, and each sample of a cell has its own number
    again = needle.grid_prompts(tokenizer, settings, block_size=2048, seed=7)
    assert [p.ids for p in again] == [p.ids for p in prompts]
    assert prompts[0].number != prompts[1].number
    assert [p.ids for p in needle.grid_prompts(tokenizer, settings, block_size=2048, seed=8)] != [p.ids for p in prompts]


def test_lengths_beyond_the_block_size_are_refused(tokenizer):
    with pytest.raises(ValueError, match=r"needle\.lengths: \[600\] plus needle\.max_new_tokens \(16\) exceed the "
                                         r"model's block_size \(512\)"):
        needle.grid_prompts(tokenizer, NeedleSettings(lengths=[256, 600]), block_size=512)
    with pytest.raises(ValueError, match=r"needle\.lengths: 20 tokens is shorter than the prompt without filler"):
        needle.grid_prompts(tokenizer, NeedleSettings(lengths=[20]), block_size=512)
    with pytest.raises(ValueError, match=r"needle\.depths"):
        NeedleSettings(depths=[0.5, 1.5])
    assert needle.default_lengths(512, 16, shortest=100) == [199, 298, 397, 496]
    with pytest.raises(ValueError, match=r"needle: the model's block_size \(64\) less needle\.max_new_tokens \(16\) "
                                         r"leaves 48 tokens"):
        needle.grid_prompts(tokenizer, NeedleSettings(), block_size=64)
    assert [p.length for p in needle.grid_prompts(tokenizer, NeedleSettings(depths=[0.5]), block_size=1024)] == \
        needle.default_lengths(1024, 16, needle.fixed_tokens(tokenizer))


def test_scorer_reads_the_first_number():
    assert needle.retrieved(" 4817203.", "4817203")
    assert needle.retrieved("The number is 4,817,203 indeed", "4817203")
    assert not needle.retrieved(" 481720", "4817203")
    assert not needle.retrieved(" 1234 and then 4817203", "4817203")  # the first number is the answer
    assert not needle.retrieved(" no idea", "4817203")
    prompts = [needle.NeedlePrompt(ids=[], length=n, depth=d, number="1234567", needle_start=0, needle_tokens=1,
                                   filler_before=0, filler_tokens=10) for n in (100, 200) for d in (0.0, 1.0)]
    metrics, samples = needle.grid_scores(prompts, ["1234567", "7654321", "x 1234567", "1234567"])
    assert metrics["grid"] == {"lengths": [100, 200], "depths": [0.0, 1.0], "accuracy": [[1.0, 0.0], [1.0, 1.0]],
                               "samples_per_cell": 1}
    assert metrics["accuracy"] == 0.75 and metrics["n"] == 4
    assert [s["correct"] for s in samples] == [True, False, True, True]


def test_a_model_that_copies_the_needle_scores_one_everywhere(tokenizer):
    settings = NeedleSettings(lengths=[300, 700, 1500], depths=[0.0, 0.25, 0.5, 0.75, 1.0], samples=2)
    metrics, samples = needle.evaluate_needle(copy_the_needle(tokenizer), tokenizer, settings, block_size=2048)
    assert metrics["accuracy"] == 1.0
    assert metrics["grid"]["accuracy"] == [[1.0] * 5] * 3
    assert len(samples) == 30
    # and one that answers with another number scores 0
    wrong = needle.evaluate_needle(lambda prompts, n: [" 1000000."] * len(prompts), tokenizer, settings,
                                   block_size=2048)[0]
    assert wrong["accuracy"] == 0.0


def test_grid_through_the_stage_and_the_report(spine_tokenizer, tmp_path):
    """A tiny random model with a 512-token context: the grid runs, is recorded, and is drawn."""
    from groundup.evaluate import run as evaluate
    from groundup.model.config import ModelConfig
    from groundup.model.io import save_model_dir
    from groundup.model.transformer import Transformer
    from groundup.report import plots

    torch.manual_seed(0)
    config = ModelConfig.from_name("tiny-llama", n_layer=1, n_embd=32, n_head=2, n_kv_head=2, vocab_size=320,
                                   block_size=512)
    model_dir = save_model_dir(tmp_path / "model", Transformer(config), tokenizer_file=spine_tokenizer,
                               stage="test", config={})
    cfg = evaluate.Config(model=model_dir, tasks=["needle"], out=tmp_path / "eval", progress=False,
                          needle=NeedleSettings(lengths=[250, 500], depths=[0.0, 0.5, 1.0], max_new_tokens=4))
    out = evaluate.run(cfg)
    results = json.loads((out / "results.json").read_text())
    grid = results["results"]["needle"]["grid"]
    assert grid["lengths"] == [250, 500] and grid["depths"] == [0.0, 0.5, 1.0]
    assert len(grid["accuracy"]) == 2 and all(len(row) == 3 for row in grid["accuracy"])
    assert all(0.0 <= v <= 1.0 for row in grid["accuracy"] for v in row)
    assert results["results"]["needle"]["n"] == 6 and results["tasks"]["needle"]["kind"] == "needle"
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [(s["length"], s["depth"]) for s in samples] == [(n, d) for n in (250, 500) for d in (0.0, 0.5, 1.0)]
    assert all(s["correct"] == needle.retrieved(s["prediction"], s["number"]) for s in samples)

    png = plots.needle_figure([("run", "needle", grid)])
    assert png is not None and png.startswith(b"\x89PNG")
    assert plots.needle_figure([]) is None

    with pytest.raises(ValueError, match=r"needle\.lengths: \[510\] .*block_size \(512\)"):
        evaluate.run(evaluate.Config(model=model_dir, tasks=["needle"], out=tmp_path / "eval2", progress=False,
                                     needle=NeedleSettings(lengths=[510])))


def test_report_page_draws_the_grid(tmp_path):
    from groundup.report.collect import Run
    from groundup.report.page import eval_section

    run = Run(path=tmp_path, label="run")
    grid = {"lengths": [100, 200], "depths": [0.0, 1.0], "accuracy": [[1.0, 0.0], [0.5, 1.0]], "samples_per_cell": 2}
    run.evals.append((tmp_path / "eval", {"results": {"needle": {"accuracy": 0.625, "n": 8, "grid": grid}}}))
    html = eval_section([run])
    assert "needle in a haystack" in html.lower() and html.count("<img") == 2
