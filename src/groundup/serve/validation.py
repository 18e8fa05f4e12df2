"""Request bodies in, engine :class:`~groundup.infer.engine.Request` objects out: every check a client can fail.

Each function raises :class:`~groundup.serve.errors.APIError` (a 4xx naming the parameter) for what
the client sent wrong; nothing here talks to the engine thread. The checks follow OpenAI's API where
it says something (a prompt and its ``max_tokens`` must fit in the context, else 400; ``max_tokens=0``
with ``echo`` scores the prompt without generating, as lm-evaluation-harness asks) and vLLM's where it
adds fields (``top_k``, ``min_p``, ``prompt_logprobs``, ``guided_*``).
"""

from __future__ import annotations

import re
from typing import Any

import fastapi

from groundup.infer.engine import Request
from groundup.infer.sampling import SamplingParams
from groundup.infer.structured import StructuredOutput
from groundup.serve.errors import APIError
from groundup.serve.protocol import ChatCompletionRequest, ChatMessage, CompletionRequest, SamplingFields
from groundup.serve.state import ServerState
from groundup.tokenizer.chat import ChatFormatError, render_chat, validate_messages

COMPLETIONS_DEFAULT_MAX_TOKENS = 16
"""max_tokens of a completions request that gives none (OpenAI's API default)."""


# ---------------------------------------------------------------------------- the request as a whole


async def check_body_size(state: ServerState, http: fastapi.Request) -> None:
    # Content-Length was checked by the middleware; a chunked body has none, so measure what arrived.
    body = await http.body()
    if len(body) > state.limits.max_request_bytes:
        raise APIError(413, f"request body over {state.limits.max_request_bytes} bytes", code="request_too_large")


def check_model(state: ServerState, model: str | None) -> None:
    if model is not None and model != state.model_name:
        raise APIError(404, f"the model '{model}' does not exist; this server serves '{state.model_name}'",
                       param="model", code="model_not_found")


def check_logprobs(name: str, value: int | None, limit: int) -> None:
    if value is not None and not 0 <= value <= limit:
        raise APIError(400, f"{name} must be in 0..{limit}", param=name)


def completion_requests(state: ServerState, body: CompletionRequest) -> list[Request]:
    """One engine request per prompt of a /v1/completions body (``n`` choices each)."""
    if body.suffix:
        raise APIError(400, "suffix is not supported", param="suffix")
    if body.best_of is not None and body.best_of != body.n:
        raise APIError(400, "best_of is not supported (use n)", param="best_of")
    prompts = prompt_list(state, body.prompt)
    check_logprobs("logprobs", body.logprobs, state.limits.max_logprobs)
    check_logprobs("prompt_logprobs", body.prompt_logprobs, state.limits.max_logprobs)
    max_tokens = max_tokens_for(state, body.max_tokens, prompts, default=COMPLETIONS_DEFAULT_MAX_TOKENS,
                                allow_zero=True)
    score_only = max_tokens == 0
    if score_only and not body.echo:
        raise APIError(400, "max_tokens=0 generates nothing: set echo=true to get the prompt back (with logprobs, "
                            "each prompt token's log-probability)", param="max_tokens")
    params = sampling_params(state, body, max(max_tokens, 1), extra_stop_ids=[])
    grammar = None if score_only else compile_grammar(state, body)
    want_prompt = body.prompt_logprobs if body.prompt_logprobs is not None else (
        body.logprobs if body.echo and body.logprobs is not None else None)
    if score_only and want_prompt is None:
        want_prompt = 0  # a scoring request returns what its prefill computes
    return [Request(prompt_ids=ids, params=params, n=body.n, logprobs=body.logprobs, prompt_logprobs=want_prompt,
                    score_only=score_only, grammar=grammar) for ids in prompts]


def chat_request(state: ServerState, body: ChatCompletionRequest) -> tuple[Request, bool]:
    """The engine request of a /v1/chat/completions body: the conversation (and its tools) through the chat
    template; and whether the answer may hold tool calls (to be parsed out of its text)."""
    tools, choice = check_tools(body)
    # the rendered template's special-token strings become their ids, as fine-tuning trained on them
    ids = encode_prompt(state, render_messages(state, body.messages, body.add_generation_prompt, tools), specials=True)
    check_logprobs("top_logprobs", body.top_logprobs, state.limits.max_logprobs)
    asked = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    max_tokens = max_tokens_for(state, asked, [ids], default=state.limits.default_max_tokens, allow_zero=False)
    params = sampling_params(state, body, max_tokens, extra_stop_ids=state.end_of_turn)
    grammar = compile_grammar(state, body)
    calls = bool(tools) and choice != "none"
    if calls:
        if grammar is not None:
            raise APIError(400, "response_format (or guided_*) cannot be combined with tools unless tool_choice "
                                "is 'none'", param="response_format")
        functions = [{"name": t.function.name, "parameters": t.function.parameters} for t in body.tools or []]
        try:
            grammar = state.grammars.tool_calls(functions, choice, parallel=body.parallel_tool_calls)
        except (RuntimeError, ValueError, TypeError) as e:  # a schema valid for jsonschema that xgrammar rejects
            reason = _XGRAMMAR_PREFIX.sub("", str(e).strip())
            raise APIError(400, f"cannot compile the tools' schemas: {reason}", param="tools") from None
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    return Request(prompt_ids=ids, params=params, n=body.n, logprobs=logprobs, grammar=grammar), calls


_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_tools(body: ChatCompletionRequest) -> tuple[list[dict], str]:
    """The tools as the chat template receives them (OpenAI's objects) and the tool choice: ``none``, ``auto``,
    ``required`` or a tool's name. Each tool's parameters must be a valid JSON Schema (checked with jsonschema)."""
    import jsonschema

    tools = body.tools or []
    names: set[str] = set()
    for i, tool in enumerate(tools):
        name = tool.function.name
        if not _TOOL_NAME.fullmatch(name) or name in names:
            raise APIError(400, f"tools[{i}].function.name: {name!r} must be 1 to 64 letters, digits, '_' or '-', "
                                "and unique", param=f"tools[{i}].function.name")
        names.add(name)
        schema = tool.function.parameters
        if schema is not None:
            try:
                jsonschema.validators.validator_for(schema).check_schema(schema)
            except jsonschema.SchemaError as e:
                where = "".join(f"[{p!r}]" for p in e.path)
                raise APIError(400, f"tools[{i}].function.parameters{where} is not valid JSON Schema: {e.message}",
                               param=f"tools[{i}].function.parameters") from None
    choice = body.tool_choice
    if choice is None:
        return [t.model_dump(exclude_none=True) for t in tools], "auto" if tools else "none"
    if not isinstance(choice, str):
        choice = choice.function.name
        if choice not in names:
            raise APIError(400, f"tool_choice names the function {choice!r}, which is not in tools",
                           param="tool_choice")
    elif choice != "none" and not tools:
        raise APIError(400, f"tool_choice {choice!r} needs tools", param="tool_choice")
    return [t.model_dump(exclude_none=True) for t in tools], choice


# ---------------------------------------------------------------------------- prompts


def encode_prompt(state: ServerState, text: str, *, specials: bool = False) -> list[int]:
    """Ids of a prompt: a completion's text as ordinary text, a rendered chat template (``specials``) with its
    special-token strings as their ids."""
    ids = state.tokenizer.encode_with_specials(text) if specials else state.tokenizer.encode(text)
    if not ids:
        eos = state.tokenizer.eos_id
        if eos is None:
            raise APIError(400, "the prompt is empty", param="prompt")
        ids = [eos]  # an empty prompt starts a new document
    return check_prompt_length(state, ids)


def check_prompt_length(state: ServerState, ids: list[int]) -> list[int]:
    if len(ids) > state.max_prompt:
        raise APIError(400, f"the prompt has {len(ids)} tokens; at most {state.max_prompt} are allowed",
                       param="prompt", code="context_length_exceeded")
    return ids


def prompt_list(state: ServerState, prompt: Any) -> list[list[int]]:
    """OpenAI's four prompt shapes (text, texts, token ids, lists of token ids) as lists of token ids."""
    if isinstance(prompt, str):
        return [encode_prompt(state, prompt)]
    if not prompt:
        raise APIError(400, "the prompt is empty", param="prompt")
    if all(isinstance(p, str) for p in prompt):
        prompts = [encode_prompt(state, p) for p in prompt]
    elif all(isinstance(p, int) for p in prompt):
        prompts = [check_prompt_length(state, list(prompt))]
    else:
        prompts = [check_prompt_length(state, list(p)) for p in prompt]
    vocab = state.engine.config.vocab_size
    for ids in prompts:
        if not ids:
            raise APIError(400, "a prompt is empty", param="prompt")
        if any(not 0 <= t < vocab for t in ids):
            raise APIError(400, f"prompt token ids must be in 0..{vocab - 1}", param="prompt")
    if len(prompts) > state.limits.max_n:
        raise APIError(400, f"at most {state.limits.max_n} prompts per request", param="prompt")
    return prompts


def render_messages(state: ServerState, messages: list[ChatMessage], add_generation_prompt: bool,
                    tools: list[dict] | None = None) -> str:
    plain = []
    for m in messages:
        content = m.content
        if isinstance(content, list):  # content parts: keep the text ones
            if any(part.get("type") != "text" for part in content):
                raise APIError(400, "only text content parts are supported", param="messages")
            content = "".join(str(part.get("text", "")) for part in content)
        message = {"role": m.role, "content": content or ""}
        if m.tool_calls:
            message["tool_calls"] = m.tool_calls
        if m.tool_call_id is not None or m.role == "tool":
            message["tool_call_id"] = m.tool_call_id
        plain.append(message)
    try:
        return render_chat(validate_messages(plain), state.chat_template, add_generation_prompt=add_generation_prompt,
                           tools=tools)
    except ChatFormatError as e:
        raise APIError(400, str(e), param="messages") from None
    except Exception as e:  # a template's raise_exception, say
        raise APIError(400, f"chat template: {e}", param="messages") from None


# ---------------------------------------------------------------------------- sampling and stopping


def max_tokens_for(state: ServerState, asked: int | None, prompts: list[list[int]], *, default: int,
                   allow_zero: bool) -> int:
    """The max_tokens a request runs with: the one asked for, if it is in range and every prompt leaves room for
    it in the context (OpenAI and vLLM answer 400 otherwise); else ``default``, cut to the room left."""
    context = state.engine.max_len
    longest = max(len(p) for p in prompts)
    room = context - longest
    if asked is None:
        if room < 1:
            raise APIError(400, f"the prompt has {longest} tokens and fills this model's context of {context}: "
                                "no room to generate", param="prompt", code="context_length_exceeded")
        return min(default, room)
    low = 0 if allow_zero else 1
    if not low <= asked <= state.limits.max_tokens:
        raise APIError(400, f"max_tokens must be in {low}..{state.limits.max_tokens}, got {asked}", param="max_tokens")
    if asked > room:
        raise APIError(400, f"this model's context holds {context} tokens: the prompt has {longest} and max_tokens "
                            f"asks for {asked} more (at most {room})", param="max_tokens",
                       code="context_length_exceeded")
    return asked


def sampling_params(state: ServerState, body: SamplingFields, max_tokens: int, *,
                    extra_stop_ids: list[int]) -> SamplingParams:
    limits, vocab = state.limits, state.engine.config.vocab_size
    if not 1 <= body.n <= limits.max_n:
        raise APIError(400, f"n must be in 1..{limits.max_n}, got {body.n}", param="n")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > 16 or any(not s for s in stop):
        raise APIError(400, "stop: up to 16 non-empty strings", param="stop")
    for name, value in (("presence_penalty", body.presence_penalty), ("frequency_penalty", body.frequency_penalty)):
        if not -2 <= value <= 2:
            raise APIError(400, f"{name} must be in -2..2", param=name)
    stop_ids = list(body.stop_token_ids or []) + extra_stop_ids
    if any(not 0 <= t < vocab for t in stop_ids):
        raise APIError(400, "stop_token_ids out of range", param="stop_token_ids")
    try:
        return SamplingParams(
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p, top_k=body.top_k if body.top_k not in (None, -1, 0) else None,
            min_p=body.min_p, repetition_penalty=body.repetition_penalty, presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty, logit_bias=logit_bias(body.logit_bias, vocab),
            max_new_tokens=max_tokens, stop=stop, stop_token_ids=stop_ids, stop_at_eos=not body.ignore_eos,
            seed=body.seed, context_overflow="stop")
    except ValueError as e:
        raise APIError(400, str(e)) from None


def logit_bias(sent: dict[str, float] | None, vocab: int) -> dict[int, float]:
    bias = {}
    for key, value in (sent or {}).items():
        try:
            token = int(key)
        except ValueError:
            raise APIError(400, f"logit_bias keys must be token ids, got {key!r}", param="logit_bias") from None
        if not 0 <= token < vocab or not -100 <= value <= 100:
            raise APIError(400, f"logit_bias: token {token} or value {value} out of range", param="logit_bias")
        bias[token] = float(value)
    return bias


# ---------------------------------------------------------------------------- structured output

_XGRAMMAR_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")  # "[12:00:00] /project/cpp/file.cc:94: "


def compile_grammar(state: ServerState, body: SamplingFields) -> StructuredOutput | None:
    """The grammar a request asks for (``response_format`` or ``guided_*``), compiled; None for free text.

    A format xgrammar rejects is the client's mistake (400); xgrammar missing is the server's (501)."""
    fmt = body.response_format
    if fmt is not None and fmt.type in ("json_schema", "regex", "grammar"):
        spec = (fmt.json_schema or {}) if fmt.type == "json_schema" else None
        source = spec.get("schema", spec.get("schema_")) if spec is not None else getattr(fmt, fmt.type)
        if (source is None) if fmt.type == "json_schema" else not source:  # {} is a schema: any JSON value
            field = "json_schema.schema" if fmt.type == "json_schema" else fmt.type
            raise APIError(400, f"response_format.{field} is missing", param="response_format")
        kind = fmt.type
    elif fmt is not None and fmt.type == "json_object":
        kind, source = "json_object", None
    elif body.guided_json is not None:
        kind, source = "json_schema", body.guided_json
    elif body.guided_regex is not None:
        kind, source = "regex", body.guided_regex
    elif body.guided_grammar is not None:
        kind, source = "grammar", body.guided_grammar
    else:
        return None
    grammars = state.grammars  # 501 here when xgrammar is not installed
    try:
        if kind == "json_object":
            return grammars.json_object()
        return getattr(grammars, kind)(source)
    except (RuntimeError, ValueError, TypeError) as e:  # xgrammar rejects a schema, regex or grammar
        reason = _XGRAMMAR_PREFIX.sub("", str(e).strip())
        raise APIError(400, f"cannot compile the response format: {reason}", param="response_format") from None
