"""The OpenAI-compatible HTTP API over an :class:`~groundup.infer.engine.Engine` (FastAPI).

Routes: ``/v1/completions`` (echo, logprobs of prompt and completion), ``/v1/chat/completions`` (the
model dir's chat template), both streaming as server-sent events that end with ``data: [DONE]``;
``/v1/models``, ``/health``, ``/metrics`` (Prometheus text), ``/tokenize``, ``/detokenize``.

Every error is answered in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, with a
4xx status for anything the client can fix: a body that is not JSON or has wrong types (400), a bad
parameter value (400), an unknown model (404), a body over the size limit (413), too many requests at
once (429), a missing or wrong API key (401). A client that disconnects cancels its request, which
frees its KV-cache slot at the next engine step. Each request has its own event queue, so no request
can see another's tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from groundup.infer.engine import Engine, Event, TokenLogprob, percentile
from groundup.infer.engine import Request as EngineRequest
from groundup.infer.sampling import SamplingParams
from groundup.infer.structured import GrammarFactory
from groundup.serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
    _Sampling,
)
from groundup.tokenizer.chat import END_OF_TURN, ChatFormatError, render_chat, validate_messages

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Limits:
    """What one request may ask for; anything beyond is answered with a 4xx."""

    max_request_bytes: int = 1 << 20
    """Largest request body in bytes (413 above)."""
    max_prompt_tokens: int | None = None
    """Longest prompt in tokens (None: the model's context minus one)."""
    max_tokens: int = 2048
    """Largest max_tokens a request may ask for."""
    default_max_tokens: int = 256
    """max_tokens when a chat request gives none (completions default to 16, as in OpenAI's API)."""
    max_concurrent_requests: int = 64
    """Requests handled at once; more are answered 429 at once rather than queued without bound."""
    max_n: int = 8
    """Most choices per request."""
    max_logprobs: int = 20
    """Most top alternatives per token."""


class APIError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code


def error_response(status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type, "param": param, "code": code}}, status_code=status)


class ServerState:
    """Everything the routes share: engine, tokenizer, template, limits and counters."""

    def __init__(self, engine: Engine, *, model_name: str, chat_template: str, limits: Limits,
                 api_key: str | None = None) -> None:
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.model_name = model_name
        self.chat_template = chat_template
        self.limits = limits
        self.api_key = api_key
        self.active = 0
        self.responses: Counter = Counter()
        self.created = int(time.time())
        self._grammars: GrammarFactory | None = None
        end = self.tokenizer.token_to_id(END_OF_TURN)
        self.end_of_turn = [end] if end is not None else []
        self.max_prompt = limits.max_prompt_tokens or engine.max_len - 1

    @property
    def grammars(self) -> GrammarFactory:
        if self._grammars is None:  # built on first use: it walks the whole vocabulary
            self._grammars = GrammarFactory(self.tokenizer, self.engine.config.vocab_size)
        return self._grammars


def create_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="groundup", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = state

    # ------------------------------------------------------------------ errors in OpenAI's shape

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return error_response(exc.status, exc.message, type=exc.type, param=exc.param, code=exc.code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        if first.get("type") == "json_invalid":
            return error_response(400, "the request body is not valid JSON", code="invalid_json")
        message = f"{where}: {first.get('msg', 'invalid value')}" if where else first.get("msg", "invalid request body")
        return error_response(400, message, param=where or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        kind = {401: "authentication_error", 404: "not_found_error", 405: "invalid_request_error"}
        return error_response(exc.status_code, str(exc.detail), type=kind.get(exc.status_code, "invalid_request_error"))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error")
        return error_response(500, f"internal error: {type(exc).__name__}", type="server_error")

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        path = request.url.path
        sent = request.headers.get("authorization", "").encode()
        if state.api_key and path not in ("/health", "/metrics") and \
                not hmac.compare_digest(sent, f"Bearer {state.api_key}".encode()):
            response = error_response(401, "missing or invalid API key (send 'Authorization: Bearer <key>')",
                                      type="authentication_error", code="invalid_api_key")
            state.responses[401] += 1
            return response
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > state.limits.max_request_bytes):
            response = error_response(413, f"request body over {state.limits.max_request_bytes} bytes",
                                      code="request_too_large")
            state.responses[413] += 1
            return response
        response = await call_next(request)
        state.responses[response.status_code] += 1
        return response

    # ------------------------------------------------------------------ small routes

    @app.get("/health")
    async def health():
        if not state.engine.alive:
            return error_response(503, "the engine thread has stopped", type="server_error")
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": state.model_name, "object": "model", "created": state.created,
                                            "owned_by": "groundup", "max_model_len": state.engine.max_len}]}

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(render_metrics(state), media_type="text/plain; version=0.0.4")

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest):
        check_model(state, body.model)
        if body.messages is not None:
            text = render_messages(state, body.messages, body.add_generation_prompt)
        elif body.prompt is not None:
            text = body.prompt
        else:
            raise APIError(400, "give 'prompt' or 'messages'", param="prompt")
        tokens = state.tokenizer.encode(text)
        return {"tokens": tokens, "count": len(tokens), "max_model_len": state.engine.max_len}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest):
        check_model(state, body.model)
        vocab = state.tokenizer.vocab_size
        if any(not 0 <= t < vocab for t in body.tokens):
            raise APIError(400, f"token ids must be in 0..{vocab - 1}", param="tokens")
        return {"prompt": state.tokenizer.decode(body.tokens)}

    # ------------------------------------------------------------------ completions

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        await check_body_size(state, request)
        check_model(state, body.model)
        if body.suffix:
            raise APIError(400, "suffix is not supported", param="suffix")
        if body.best_of is not None and body.best_of != body.n:
            raise APIError(400, "best_of is not supported (use n)", param="best_of")
        prompts = prompt_list(state, body.prompt)
        limit = state.limits.max_logprobs
        for name, value in (("logprobs", body.logprobs), ("prompt_logprobs", body.prompt_logprobs)):
            if value is not None and not 0 <= value <= limit:
                raise APIError(400, f"{name} must be in 0..{limit}", param=name)
        max_tokens = body.max_tokens if body.max_tokens is not None else 16
        params = sampling_params(state, body, max_tokens, extra_stop_ids=[])
        grammar = compile_grammar(state, body)
        want_prompt = body.prompt_logprobs if body.prompt_logprobs is not None else (
            body.logprobs if body.echo and body.logprobs is not None else None)
        reqs = [EngineRequest(prompt_ids=ids, params=params, n=body.n, logprobs=body.logprobs,
                              prompt_logprobs=want_prompt, grammar=grammar) for ids in prompts]
        rid = f"cmpl-{uuid.uuid4().hex}"
        if body.stream:
            return stream_response(state, request, reqs, lambda r, i, ev, pi: completion_chunk(
                state, rid, body, reqs, pi, i, ev), include_usage=bool(body.stream_options and
                                                                      body.stream_options.include_usage),
                usage_chunk=lambda usage: {"id": rid, "object": "text_completion", "created": int(time.time()),
                                           "model": state.model_name, "choices": [], "usage": usage})
        results = await run_requests(state, request, reqs)
        choices = []
        for pi, (req, merged) in enumerate(zip(reqs, results, strict=True)):
            for i, ev in enumerate(merged):
                check_failed(ev)
                text, lp = ev.text, ev.logprobs
                entries: list[TokenLogprob | None] = list(lp)
                prompt_text = ""
                if body.echo:
                    prompt_text = state.tokenizer.decode(req.prompt_ids)
                    entries = _prompt_entries(req) + entries
                choices.append({"index": pi * body.n + i, "text": prompt_text + text,
                                "logprobs": completion_logprobs(state, entries) if body.logprobs is not None else None,
                                "finish_reason": finish(ev), "stop_reason": ev.stop_reason})
        usage = usage_of(reqs, results)
        return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": state.model_name,
                "choices": choices, "usage": usage}

    # ------------------------------------------------------------------ chat

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        await check_body_size(state, request)
        check_model(state, body.model)
        text = render_messages(state, body.messages, body.add_generation_prompt)
        ids = encode_prompt(state, text)
        if body.top_logprobs is not None and not 0 <= body.top_logprobs <= state.limits.max_logprobs:
            raise APIError(400, f"top_logprobs must be in 0..{state.limits.max_logprobs}", param="top_logprobs")
        max_tokens = body.max_completion_tokens or body.max_tokens
        params = sampling_params(state, body, max_tokens if max_tokens is not None else state.limits.default_max_tokens,
                                 extra_stop_ids=state.end_of_turn)
        grammar = compile_grammar(state, body)
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        reqs = [EngineRequest(prompt_ids=ids, params=params, n=body.n, logprobs=logprobs, grammar=grammar)]
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if body.stream:
            return stream_response(state, request, reqs, lambda r, i, ev, pi: chat_chunk(
                state, rid, created, i, ev, logprobs is not None),
                include_usage=bool(body.stream_options and body.stream_options.include_usage),
                usage_chunk=lambda usage: {"id": rid, "object": "chat.completion.chunk", "created": created,
                                           "model": state.model_name, "choices": [], "usage": usage},
                first_chunks=[{"id": rid, "object": "chat.completion.chunk", "created": created,
                               "model": state.model_name,
                               "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                            "logprobs": None, "finish_reason": None} for i in range(body.n)]}])
        results = await run_requests(state, request, reqs)
        choices = []
        for i, ev in enumerate(results[0]):
            check_failed(ev)
            choices.append({"index": i, "message": {"role": "assistant", "content": ev.text},
                            "logprobs": chat_logprobs(state, ev.logprobs) if logprobs is not None else None,
                            "finish_reason": finish(ev), "stop_reason": ev.stop_reason})
        return {"id": rid, "object": "chat.completion", "created": created, "model": state.model_name,
                "choices": choices, "usage": usage_of(reqs, results)}

    return app


# ---------------------------------------------------------------------------- request handling


def _prompt_entries(req: EngineRequest) -> list[TokenLogprob | None]:
    if req.prompt_token_logprobs is not None:
        return list(req.prompt_token_logprobs)
    return [None] * len(req.prompt_ids)


async def check_body_size(state: ServerState, request: Request) -> None:
    # Content-Length was checked by the middleware; a chunked body has none, so measure what arrived.
    body = await request.body()
    if len(body) > state.limits.max_request_bytes:
        raise APIError(413, f"request body over {state.limits.max_request_bytes} bytes", code="request_too_large")


def check_model(state: ServerState, model: str | None) -> None:
    if model is not None and model != state.model_name:
        raise APIError(404, f"the model '{model}' does not exist; this server serves '{state.model_name}'",
                       param="model", code="model_not_found")


def check_failed(ev: Event) -> None:
    if ev.finish_reason == "error":
        raise APIError(400, ev.error or "generation failed", code="generation_failed")


def finish(ev: Event) -> str | None:
    return {"stop": "stop", "length": "length"}.get(ev.finish_reason or "", ev.finish_reason)


def encode_prompt(state: ServerState, text: str) -> list[int]:
    ids = state.tokenizer.encode(text)
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


def render_messages(state: ServerState, messages, add_generation_prompt: bool) -> str:
    plain = []
    for m in messages:
        content = m.content
        if isinstance(content, list):  # content parts: keep the text ones
            if any(part.get("type") != "text" for part in content):
                raise APIError(400, "only text content parts are supported", param="messages")
            content = "".join(str(part.get("text", "")) for part in content)
        plain.append({"role": m.role, "content": content or ""})
    try:
        return render_chat(validate_messages(plain), state.chat_template, add_generation_prompt=add_generation_prompt)
    except ChatFormatError as e:
        raise APIError(400, str(e), param="messages") from None
    except Exception as e:  # a template's raise_exception, say
        raise APIError(400, f"chat template: {e}", param="messages") from None


def sampling_params(state: ServerState, body: _Sampling, max_tokens: int, *, extra_stop_ids: list[int]) -> SamplingParams:
    limits = state.limits
    if max_tokens < 1 or max_tokens > limits.max_tokens:
        raise APIError(400, f"max_tokens must be in 1..{limits.max_tokens}, got {max_tokens}", param="max_tokens")
    if not 1 <= body.n <= limits.max_n:
        raise APIError(400, f"n must be in 1..{limits.max_n}, got {body.n}", param="n")
    bias = {}
    for key, value in (body.logit_bias or {}).items():
        try:
            token = int(key)
        except ValueError:
            raise APIError(400, f"logit_bias keys must be token ids, got {key!r}", param="logit_bias") from None
        if not 0 <= token < state.engine.config.vocab_size or not -100 <= value <= 100:
            raise APIError(400, f"logit_bias: token {token} or value {value} out of range", param="logit_bias")
        bias[token] = float(value)
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > 16 or any(not s for s in stop):
        raise APIError(400, "stop: up to 16 non-empty strings", param="stop")
    for name, value, lo, hi in (("presence_penalty", body.presence_penalty, -2, 2),
                                ("frequency_penalty", body.frequency_penalty, -2, 2)):
        if not lo <= value <= hi:
            raise APIError(400, f"{name} must be in {lo}..{hi}", param=name)
    stop_ids = list(body.stop_token_ids or []) + extra_stop_ids
    if any(not 0 <= t < state.engine.config.vocab_size for t in stop_ids):
        raise APIError(400, "stop_token_ids out of range", param="stop_token_ids")
    try:
        return SamplingParams(
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p, top_k=body.top_k if body.top_k not in (None, -1, 0) else None,
            min_p=body.min_p, repetition_penalty=body.repetition_penalty, presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty, logit_bias=bias, max_new_tokens=max_tokens, stop=stop,
            stop_token_ids=stop_ids, stop_at_eos=not body.ignore_eos, seed=body.seed, context_overflow="stop")
    except ValueError as e:
        raise APIError(400, str(e)) from None


def compile_grammar(state: ServerState, body: _Sampling):
    """The xgrammar grammar a request asks for (response_format or guided_*), or None."""
    fmt = body.response_format
    try:
        if fmt is not None and fmt.type == "json_schema":
            spec = fmt.json_schema or {}
            schema = spec.get("schema", spec.get("schema_"))
            if schema is None:
                raise APIError(400, "response_format.json_schema.schema is missing", param="response_format")
            return state.grammars.json_schema(schema)
        if fmt is not None and fmt.type == "json_object":
            return state.grammars.json_object()
        if fmt is not None and fmt.type == "regex":
            if not fmt.regex:
                raise APIError(400, "response_format.regex is missing", param="response_format")
            return state.grammars.regex(fmt.regex)
        if fmt is not None and fmt.type == "grammar":
            if not fmt.grammar:
                raise APIError(400, "response_format.grammar is missing", param="response_format")
            return state.grammars.grammar(fmt.grammar)
        if body.guided_json is not None:
            return state.grammars.json_schema(body.guided_json)
        if body.guided_regex is not None:
            return state.grammars.regex(body.guided_regex)
        if body.guided_grammar is not None:
            return state.grammars.grammar(body.guided_grammar)
    except APIError:
        raise
    except Exception as e:  # xgrammar rejects a schema, regex or grammar
        raise APIError(400, f"cannot compile the response format: {e}", param="response_format") from None
    return None


class _Slot:
    """Counts a request against the concurrency limit for as long as it runs."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    def __enter__(self):
        if self.state.active >= self.state.limits.max_concurrent_requests:
            raise APIError(429, f"server busy: {self.state.active} requests in progress, try again",
                           type="rate_limit_error", code="too_many_requests")
        self.state.active += 1
        return self

    def __exit__(self, *exc):
        self.state.active -= 1


async def run_requests(state: ServerState, http: Request, reqs: list[EngineRequest]) -> list[list[Event]]:
    """Run requests to the end; cancel them if the client disconnects. One merged event per choice."""
    loop = asyncio.get_running_loop()
    with _Slot(state):
        queues = [r.async_events(loop) for r in reqs]
        submit_all(state, reqs)
        try:
            out = []
            for req, q in zip(reqs, queues, strict=True):
                merged = [Event(index=i) for i in range(req.n)]
                remaining = req.n
                while remaining:
                    try:
                        ev = await asyncio.wait_for(q.get(), timeout=1.0)
                    except asyncio.TimeoutError:
                        if await http.is_disconnected():  # nobody reads the answer; the finally cancels
                            raise APIError(400, "client disconnected", code="client_disconnected") from None
                        continue
                    remaining -= merged[ev.index].absorb(ev)
                out.append(merged)
            return out
        finally:
            for r in reqs:  # no-op for finished requests
                state.engine.cancel(r.request_id)


def submit_all(state: ServerState, reqs: list[EngineRequest]) -> None:
    for r in reqs:
        try:
            state.engine.submit(r)
        except ValueError as e:
            for done in reqs:
                if done.request_id > 0:
                    state.engine.cancel(done.request_id)
            raise APIError(400, str(e)) from None


def stream_response(state: ServerState, http: Request, reqs: list[EngineRequest], make_chunk, *, include_usage: bool,
                    usage_chunk, first_chunks: list[dict] | None = None) -> StreamingResponse:
    """Server-sent events: one ``data:`` line per chunk, then ``data: [DONE]``. A disconnect cancels."""
    loop = asyncio.get_running_loop()
    slot = _Slot(state).__enter__()  # 429 is answered before the stream starts
    # The slot is given back when the engine has ended every choice (finished or cancelled), which happens
    # even if the response body never starts (a client gone before the first byte).
    unfinished = [sum(r.n for r in reqs)]

    def on_finished() -> None:
        unfinished[0] -= 1
        if unfinished[0] == 0:
            slot.__exit__()

    merged_q: asyncio.Queue = asyncio.Queue()  # (prompt index, event) of every request of this stream
    for pi, r in enumerate(reqs):
        r.on_event = _put_tagged(loop, merged_q, pi, on_finished)
    try:
        submit_all(state, reqs)
    except APIError:
        slot.__exit__()
        raise

    async def events() -> AsyncIterator[str]:
        try:
            for chunk in first_chunks or []:
                yield f"data: {json.dumps(chunk)}\n\n"
            remaining = sum(r.n for r in reqs)
            generated = [[Event(index=i) for i in range(r.n)] for r in reqs]
            while remaining:
                pi, ev = await merged_q.get()
                generated[pi][ev.index].token_ids += ev.token_ids
                if ev.finish_reason == "error":
                    err = {"error": {"message": ev.error, "type": "invalid_request_error", "param": None,
                                     "code": "generation_failed"}}
                    yield f"data: {json.dumps(err)}\n\n"
                chunk = make_chunk(reqs[pi], ev.index, ev, pi)
                if chunk is not None:
                    yield f"data: {json.dumps(chunk)}\n\n"
                if ev.finish_reason is not None:
                    remaining -= 1
            if include_usage:
                yield f"data: {json.dumps(usage_chunk(usage_of(reqs, generated)))}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            for r in reqs:  # a client that left: stop generating (no-op for finished requests)
                state.engine.cancel(r.request_id)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _put_tagged(loop: asyncio.AbstractEventLoop, q: asyncio.Queue, pi: int, on_finished):
    def on_event(ev: Event) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening any more
            loop.call_soon_threadsafe(q.put_nowait, (pi, ev))
            if ev.finish_reason is not None:
                loop.call_soon_threadsafe(on_finished)

    return on_event


def usage_of(reqs: list[EngineRequest], results: list[list[Event]]) -> dict:
    prompt = sum(len(r.prompt_ids) for r in reqs)
    completion = sum(len(ev.token_ids) for merged in results for ev in merged)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


# ---------------------------------------------------------------------------- response pieces


def completion_logprobs(state: ServerState, entries: list[TokenLogprob | None], text_offset: int = 0) -> dict:
    """OpenAI's legacy completions logprobs: tokens, token_logprobs, top_logprobs, text_offset."""
    tokens, token_logprobs, top, offsets = [], [], [], []
    pos = text_offset
    for entry in entries:
        if entry is None:
            tokens.append(None)
            token_logprobs.append(None)
            top.append(None)
            offsets.append(pos)
            continue
        text = state.engine.token_text(entry.token_id)
        tokens.append(text)
        token_logprobs.append(entry.logprob)
        alts: dict[str, float] = {}
        for t, lp in entry.top:
            alts.setdefault(state.engine.token_text(t), lp)
        top.append(alts)
        offsets.append(pos)
        pos += len(text)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets}


def chat_logprobs(state: ServerState, entries: list[TokenLogprob]) -> dict:
    def one(token_id: int, logprob: float) -> dict:
        data = state.tokenizer.decode_bytes([token_id])
        return {"token": data.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(data)}

    return {"content": [{**one(e.token_id, e.logprob), "top_logprobs": [one(t, lp) for t, lp in e.top]}
                        for e in entries]}


def completion_chunk(state: ServerState, rid: str, body: CompletionRequest, reqs, pi: int, i: int, ev: Event):
    if not ev.text and not ev.token_ids and ev.finish_reason is None:
        return None
    req = reqs[pi]
    text = ev.text
    entries: list[TokenLogprob | None] = list(ev.logprobs)
    if body.echo and not getattr(req, f"_echoed_{i}", False):
        setattr(req, f"_echoed_{i}", True)
        text = state.tokenizer.decode(req.prompt_ids) + text
        entries = _prompt_entries(req) + entries
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": state.model_name,
            "choices": [{"index": pi * body.n + i, "text": text,
                         "logprobs": completion_logprobs(state, entries) if body.logprobs is not None else None,
                         "finish_reason": finish(ev) if ev.finish_reason else None}]}


def chat_chunk(state: ServerState, rid: str, created: int, i: int, ev: Event, with_logprobs: bool):
    if not ev.text and not ev.token_ids and ev.finish_reason is None:
        return None
    delta = {"content": ev.text} if ev.text or ev.finish_reason is None else {}
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": state.model_name,
            "choices": [{"index": i, "delta": delta,
                         "logprobs": chat_logprobs(state, ev.logprobs) if with_logprobs and ev.logprobs else None,
                         "finish_reason": finish(ev) if ev.finish_reason else None}]}


# ---------------------------------------------------------------------------- metrics


def render_metrics(state: ServerState) -> str:
    """Prometheus text format: request and token counters, queue depth, time to first token, tokens/s."""
    s = state.engine.stats
    ttft = list(s.ttft_seconds)
    lines = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP groundup_{name} {help_text}")
        lines.append(f"# TYPE groundup_{name} {kind}")
        for labels, value in samples:
            lines.append(f"groundup_{name}{labels} {value}")

    metric("requests_total", "counter", "Requests accepted by the engine.", [("", s.requests_total)])
    metric("requests_finished_total", "counter", "Requests finished normally.", [("", s.requests_finished)])
    metric("requests_cancelled_total", "counter", "Requests cancelled (client disconnected).", [("", s.requests_cancelled)])
    metric("requests_failed_total", "counter", "Sequences that ended with an error.", [("", s.requests_failed)])
    metric("prompt_tokens_total", "counter", "Prompt tokens prefilled.", [("", s.prompt_tokens_total)])
    metric("generation_tokens_total", "counter", "Tokens generated.", [("", s.generation_tokens_total)])
    metric("num_requests_running", "gauge", "Sequences holding a KV-cache slot.", [("", s.running)])
    metric("num_requests_waiting", "gauge", "Sequences waiting for a slot (queue depth).", [("", s.waiting)])
    metric("http_requests_in_progress", "gauge", "HTTP generation requests in progress.", [("", state.active)])
    quantiles = [(f'{{quantile="{q}"}}', percentile(ttft, q * 100) if ttft else 0.0) for q in (0.5, 0.9, 0.99)]
    metric("time_to_first_token_seconds", "summary", "Time from arrival to first token (last 4096 requests).",
           quantiles + [("_sum", sum(ttft)), ("_count", len(ttft))])
    rate = s.generation_tokens_total / s.busy_seconds if s.busy_seconds > 0 else 0.0
    metric("generation_tokens_per_second", "gauge", "Generated tokens per second of engine busy time.", [("", rate)])
    metric("http_responses_total", "counter", "HTTP responses by status code.",
           [(f'{{code="{code}"}}', n) for code, n in sorted(state.responses.items())])
    return "\n".join(lines) + "\n"
