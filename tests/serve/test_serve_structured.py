"""Structured output: xgrammar token masks make even a random model's output valid every time."""

from __future__ import annotations

import json
import re

import pytest
import torch

from groundup.infer.engine import Engine
from groundup.infer.sampling import SamplingParams
from groundup.infer.structured import GrammarFactory
from groundup.model.io import load_model_dir

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["id", "tags", "kind"],
          "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 999},
                         "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 3},
                         "kind": {"enum": ["a", "bb", "ccc"]}}}


@pytest.fixture(scope="module")
def engine_and_grammars(serve_llama_dir):
    model, tokenizer = load_model_dir(serve_llama_dir)
    engine = Engine(model, tokenizer, max_seqs=8)
    yield engine, GrammarFactory(tokenizer, model.config.vocab_size)
    engine.shutdown()


def _valid(record) -> bool:
    return (set(record) == {"id", "tags", "kind"} and isinstance(record["id"], int) and 0 <= record["id"] <= 999
            and isinstance(record["tags"], list) and len(record["tags"]) <= 3
            and all(isinstance(t, str) and len(t) <= 4 for t in record["tags"]) and record["kind"] in ("a", "bb", "ccc"))


def test_serve_json_schema_always_valid(engine_and_grammars):
    engine, grammars = engine_and_grammars
    grammar = grammars.json_schema(SCHEMA)
    ids = engine.tokenizer.encode("Output: ")
    params = SamplingParams(temperature=1.0, seed=0, max_new_tokens=120)
    events = engine.generate(ids, params, n=8, grammar=grammar)  # eight sampled choices at once
    for event in events:
        assert event.finish_reason == "stop", event
        assert _valid(json.loads(event.text)), event.text
    free = engine.generate(ids, params, n=8)
    assert not all(_is_json(e.text) for e in free)  # without the mask, the random model writes no JSON


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


def test_serve_regex_grammar_and_json_object(engine_and_grammars):
    engine, grammars = engine_and_grammars
    ids = engine.tokenizer.encode("x")
    params = SamplingParams(temperature=1.0, seed=1, max_new_tokens=40)
    for event in engine.generate(ids, params, n=4, grammar=grammars.regex(r"[a-f]{2,5}-[0-9]{3}")):
        assert re.fullmatch(r"[a-f]{2,5}-[0-9]{3}", event.text) and event.finish_reason == "stop"
    ebnf = 'root ::= "yes" | "no" | "maybe"'
    for event in engine.generate(ids, params, n=4, grammar=grammars.grammar(ebnf)):
        assert event.text in ("yes", "no", "maybe")
    for event in engine.generate(ids, SamplingParams(temperature=0.7, seed=2, max_new_tokens=200), n=2,
                                 grammar=grammars.json_object()):
        if event.finish_reason == "stop":
            assert isinstance(json.loads(event.text), dict)
        else:  # cut by max_new_tokens: still a valid prefix of an object
            assert event.text.startswith("{")


def test_banned_tokens_pack_into_xgrammar_bitmask_words():
    """A banned set (bit 31 of a word included, where int32 turns negative) masks exactly those tokens."""
    import xgrammar

    from groundup.infer.structured import StructuredOutput

    vocab = 70
    banned = torch.zeros(vocab, dtype=torch.bool)
    banned[[0, 5, 31, 32, 63, 69]] = True
    logits = torch.zeros(2, vocab)
    words = StructuredOutput(compiled=None, banned=banned).allowed_words(vocab)
    xgrammar.apply_token_bitmask_inplace(logits, words.expand(2, -1).contiguous(), indices=[1])
    assert torch.isinf(logits[1]).nonzero().flatten().tolist() == [0, 5, 31, 32, 63, 69]
    assert torch.isfinite(logits[0]).all()
