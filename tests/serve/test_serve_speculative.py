"""Speculative decoding: greedy output identical to the target model alone, whatever the draft."""

from __future__ import annotations

import pytest

from groundup.artifacts import load_model_dir
from groundup.infer.generate import generate_tokens
from groundup.infer.sampling import SamplingParams
from groundup.infer.speculative import speculative_generate


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
