"""Structured output: response formats compiled into xgrammar grammars, applied as token masks by the engine.

JSON schemas, any JSON object, regular expressions, EBNF grammars and tool calls become xgrammar grammars
over the model's vocabulary (:class:`GrammarFactory`); the engine keeps one ``GrammarMatcher`` per sequence
and masks the tokens it forbids before each draw.

Tool calls are written in the Hermes/Qwen format of the default chat template
(:data:`groundup.tokenizer.chat.TOOL_CALL_OPEN`)::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

``required`` and a named tool are constrained from the first token; ``auto`` leaves the text free and
constrains from the moment the model writes the opening tag (xgrammar's triggered structural tags).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class StructuredOutput:
    """A compiled xgrammar grammar, and tokens banned on top of it (a bool mask over the vocabulary)."""

    compiled: Any
    banned: torch.Tensor | None = None
    _allowed: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def allowed_words(self, vocab_size: int) -> torch.Tensor | None:
        """``~banned`` as xgrammar's bitmask words (int32, bit ``i % 32`` of word ``i // 32``), or None."""
        if self.banned is None:
            return None
        if vocab_size not in self._allowed:
            words = -(-vocab_size // 32)
            allowed = torch.ones(words * 32, dtype=torch.int64)
            n = min(vocab_size, self.banned.numel())
            allowed[:n] = (~self.banned[:n]).long()
            packed = (allowed.view(words, 32) << torch.arange(32)).sum(-1)
            self._allowed[vocab_size] = torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)
        return self._allowed[vocab_size]


def make_matcher(compiled, stop_ids: set[int]):
    """A matcher that walks ``compiled`` token by token, ending at any of ``stop_ids``."""
    import xgrammar

    return xgrammar.GrammarMatcher(compiled, override_stop_tokens=sorted(stop_ids) or None)


class GrammarFactory:
    """Compiles response formats into xgrammar grammars for one tokenizer (compilations are cached).

    The vocabulary is given to xgrammar as the raw bytes of each token (groundup's tokenizers are
    byte-level BPE). Special tokens are given as empty strings, which xgrammar never allows inside
    structured text; the end-of-text token is the grammar's stop token, allowed only once the text is
    complete. JSON formats also ban tokens with raw control characters (see ``__init__``).
    """

    def __init__(self, tokenizer, model_vocab_size: int) -> None:
        import xgrammar

        special = set(tokenizer.special_tokens.values())
        vocab = [b"" if i in special else tokenizer.decode_bytes([i]) for i in range(tokenizer.vocab_size)]
        stop = [tokenizer.eos_id] if tokenizer.eos_id is not None else None
        info = xgrammar.TokenizerInfo(vocab, xgrammar.VocabType.RAW, vocab_size=model_vocab_size,
                                      stop_token_ids=stop)
        self.compiler = xgrammar.GrammarCompiler(info, max_threads=2)
        # xgrammar's JSON strings admit raw control characters, which JSON (RFC 8259) does not; the JSON
        # formats ban every token holding a byte below 0x20 (whitespace between values is spaces then).
        control = torch.zeros(model_vocab_size, dtype=torch.bool)
        for i, data in enumerate(vocab):
            if any(b < 0x20 for b in data):
                control[i] = True
        self.control_tokens = control

    def json_schema(self, schema: dict | str) -> StructuredOutput:
        import json

        # Compact JSON (no free whitespace between tokens), as OpenAI's structured outputs write it: a
        # weak model cannot then spend its whole budget on whitespace.
        text = schema if isinstance(schema, str) else json.dumps(schema)
        return StructuredOutput(self.compiler.compile_json_schema(text, any_whitespace=False), self.control_tokens)

    def json_object(self) -> StructuredOutput:
        """Any JSON object (OpenAI's ``json_object`` mode; xgrammar's built-in JSON grammar admits any value)."""
        return self.json_schema({"type": "object"})

    def tool_calls(self, tools: list[dict], choice: str, *, parallel: bool = True) -> StructuredOutput:
        """Calls of ``tools`` (each ``{"name", "parameters"}``, parameters a JSON schema) in the chat template's
        format. ``choice``: ``"auto"`` (free text; a call, once opened, follows its tool's schema),
        ``"required"`` (only calls, at least one) or a tool's name (exactly one call of it). With ``parallel``
        false, at most one call. No control-character ban here: the tags and free text need newlines."""
        from xgrammar.structural_tag import (
            StructuralTag,
            TagFormat,
            TagsWithSeparatorFormat,
            TriggeredTagsFormat,
        )

        from groundup.tokenizer.chat import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

        def tag(tool: dict) -> TagFormat:
            # At most one whitespace character between JSON tokens: a weak model cannot spend its budget on it.
            return TagFormat(begin=f'{TOOL_CALL_OPEN}\n{{"name": "{tool["name"]}", "arguments": ',
                             content=_arguments_json(tool.get("parameters")), end=f"}}\n{TOOL_CALL_CLOSE}")

        if choice == "auto":
            fmt = TriggeredTagsFormat(triggers=[TOOL_CALL_OPEN], tags=[tag(t) for t in tools],
                                      stop_after_first=not parallel)
        elif choice == "required":
            fmt = TagsWithSeparatorFormat(tags=[tag(t) for t in tools], separator="\n", at_least_one=True,
                                          stop_after_first=not parallel)
        else:
            (named,) = [t for t in tools if t["name"] == choice]
            fmt = tag(named)
        return StructuredOutput(self.compiler.compile_structural_tag(StructuralTag(format=fmt)))

    def regex(self, pattern: str) -> StructuredOutput:
        return StructuredOutput(self.compiler.compile_regex(pattern))

    def grammar(self, ebnf: str) -> StructuredOutput:
        return StructuredOutput(self.compiler.compile_grammar(ebnf))


def _arguments_json(schema: dict | None):
    """xgrammar's JSON-schema content, at most one whitespace character in a row (None: any JSON object)."""
    from xgrammar.structural_tag import JSONSchemaFormat

    return JSONSchemaFormat(json_schema=schema if schema is not None else {"type": "object"}, max_whitespace_cnt=1)


def apply_grammars(logits: torch.Tensor, matchers: list, grammars: list[StructuredOutput], rows: list[int]) -> None:
    """Mask, in place, the tokens each constrained row's grammar (and its banned set) forbids: one bitmask for
    the batch, one masking call. ``matchers[i]`` and ``grammars[i]`` belong to ``rows[i]`` of ``logits`` (B, V)."""
    import xgrammar

    bitmask = xgrammar.allocate_token_bitmask(logits.shape[0], logits.shape[-1])
    for b, matcher, grammar in zip(rows, matchers, grammars, strict=True):
        matcher.fill_next_token_bitmask(bitmask, b)
        allowed = grammar.allowed_words(logits.shape[-1])
        if allowed is not None:
            bitmask[b] &= allowed
    xgrammar.apply_token_bitmask_inplace(logits, bitmask, indices=rows)
