"""Speculative decoding: greedy output identical to the target model alone, whatever the draft."""

from __future__ import annotations

import pytest

from groundup.infer.generate import generate_tokens
from groundup.infer.sampling import SamplingParams
from groundup.infer.speculative import speculative_generate
from groundup.model.io import load_model_dir


@pytest.mark.parametrize("k", [1, 4])
def test_serve_speculative_equals_target(serve_model_dir, serve_draft_dir, k):
    target, tokenizer = load_model_dir(serve_model_dir)
    draft, _ = load_model_dir(serve_draft_dir)
    limit = tokenizer.vocab_size
    for text in ("def foo(x):",):
        ids = tokenizer.encode(text)
        expected = list(generate_tokens(target, ids, SamplingParams(temperature=0, max_new_tokens=24,
                                                                    stop_at_eos=False), vocab_limit=limit))
        weak = speculative_generate(target, draft, ids, max_new_tokens=24, k=k, vocab_limit=limit)
        assert weak.token_ids == expected
        # the target as its own draft: every guess is accepted, so rounds shrink to ~24 / (k + 1)
        same = speculative_generate(target, target, ids, max_new_tokens=24, k=k, vocab_limit=limit)
        assert same.token_ids == expected
        assert same.acceptance_rate == 1.0 and same.rounds <= -(-24 // (k + 1)) + 1


def test_generate_stage_with_a_draft_prints_the_target_greedy_text(serve_model_dir, serve_draft_dir, capsys):
    """`groundup generate --draft DIR`: the text is the target's own greedy continuation; sampling is refused."""
    from groundup import cli
    from groundup.infer.generate import generate

    target, tokenizer = load_model_dir(serve_model_dir)
    params = SamplingParams(temperature=0, max_new_tokens=20, stop_at_eos=False)
    expected = generate(target, tokenizer, "def foo(x):", params).text
    assert cli.main(["generate", "--model", str(serve_model_dir), "--draft", str(serve_draft_dir),
                     "--prompt", "def foo(x):", "--echo", "false", "--sampling.temperature", "0",
                     "--sampling.max_new_tokens", "20", "--sampling.stop_at_eos", "false"]) == 0
    captured = capsys.readouterr()
    assert captured.out == expected + "\n"
    assert "draft accepted" in captured.err
    with pytest.raises(ValueError, match="greedy"):
        generate(target, tokenizer, "x", SamplingParams(temperature=0.7), draft=load_model_dir(serve_draft_dir)[0])
