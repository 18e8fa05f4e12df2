"""The OpenAI request bodies the server accepts, as pydantic models (wrong types become 400 answers).

Fields follow the OpenAI API; extras that vLLM also accepts (top_k, min_p, repetition_penalty,
stop_token_ids, ignore_eos, prompt_logprobs, guided_json / guided_regex / guided_grammar) are read
too, so clients written for vLLM work unchanged. A field the server does not know is answered 400
naming it, as OpenAI answers: a setting is never dropped silently.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Body):
    include_usage: bool = False


class ResponseFormat(_Body):
    """``text``, ``json_object``, ``json_schema`` (OpenAI), or groundup's ``regex`` and ``grammar`` (EBNF)."""

    type: Literal["text", "json_object", "json_schema", "regex", "grammar"] = "text"
    json_schema: dict[str, Any] | None = None
    regex: str | None = None
    grammar: str | None = None


class SamplingFields(_Body):
    """The fields completions and chat requests share: model, sampling, stopping, structured output."""

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # vLLM-style extras
    top_k: int | None = None
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    response_format: ResponseFormat | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: str | None = None
    guided_grammar: str | None = None


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(...)
    echo: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None


class ChatMessage(_Body):
    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    """An assistant message's calls: OpenAI's ``{id, type: "function", function: {name, arguments}}``."""
    tool_call_id: str | None = None
    """A tool message: the id of the call it answers."""
    refusal: str | None = None


class FunctionDefinition(_Body):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    """The arguments' JSON schema (None: any JSON object)."""
    strict: bool | None = None


class Tool(_Body):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class FunctionName(_Body):
    name: str


class NamedToolChoice(_Body):
    type: Literal["function"] = "function"
    function: FunctionName


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    add_generation_prompt: bool = True
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    """``none``, ``auto`` (the default with tools), ``required``, or ``{"type": "function", "function":
    {"name": ...}}``."""
    parallel_tool_calls: bool = True


class TokenizeRequest(_Body):
    """vLLM's /tokenize body (its ``add_special_tokens`` is accepted and has nothing to add here)."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_generation_prompt: bool = True
    add_special_tokens: bool = True
    tools: list[Tool] | None = None


class DetokenizeRequest(_Body):
    model: str | None = None
    tokens: list[int]
