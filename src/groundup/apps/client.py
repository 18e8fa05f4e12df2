"""A client of any OpenAI-compatible chat endpoint (``groundup serve``, vLLM, llama.cpp, OpenAI itself).

Thin on purpose: one ``POST /v1/chat/completions`` per call through groundup's shared client
(:mod:`groundup.endpoint`): a timeout on every request, a bounded number of retries with exponential
backoff for 5xx answers, 429s (their Retry-After honoured), timeouts and refused or dropped connections,
and one trace record per call. An endpoint that keeps failing raises :class:`EndpointError` naming the
URL, the status and the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from groundup import endpoint
from groundup.apps.trace import AppError, Trace
from groundup.endpoint import api_base

__all__ = ["ChatModel", "EndpointError", "Reply", "ToolCall", "api_base", "parse_reply"]


class EndpointError(AppError):
    """The endpoint answered with an error, or not at all, after every retry."""


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str
    """The arguments as the model wrote them: a JSON object's text (parsed by the caller, who reports errors)."""

    def message(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class Reply:
    content: str | None
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def message(self) -> dict[str, Any]:
        """The assistant message to append to the conversation."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [call.message() for call in self.tool_calls]
        return message


class ChatModel:
    """Chat completions from one endpoint. Thread-safe (workflows call it from several threads)."""

    def __init__(self, url: str, *, model: str | None = None, api_key: str | None = None, timeout: float = 120.0,
                 retries: int = 2, retry_delay: float = 0.5, max_retry_after: float = 60.0,
                 trace: Trace | None = None, **defaults: Any) -> None:
        """``model``: the id to send (default: the first the endpoint lists); ``timeout``: seconds for each
        request; ``retries``: further tries after a 5xx or 429 answer, a timeout or a dropped connection,
        ``retry_delay`` seconds after the first failure and twice as long after each next one (a 429's
        Retry-After instead, up to ``max_retry_after``); ``defaults``: request fields sent with every call
        (``temperature``, ``max_tokens``, ...)."""
        self.base = api_base(url)
        self.timeout = timeout
        self.retries = retries
        self.retry_delay = retry_delay
        self.trace = trace if trace is not None else Trace()
        self.defaults = defaults
        self.client = endpoint.ChatClient(self.base, api_key=api_key, timeout=timeout, policy=endpoint.RetryPolicy(
            retries=retries, backoff_seconds=retry_delay, max_retry_after_seconds=max_retry_after))
        self._model = model

    @property
    def model(self) -> str:
        if self._model is None:
            data = self._request("GET", "/models", None, self.timeout)
            models = data.get("data") if isinstance(data, dict) else None
            if not models:
                raise EndpointError(f"{self.base}/models lists no model: name one with model=")
            self._model = str(models[0]["id"])
        return self._model

    def chat(self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None,
             tool_choice: str | dict | None = None, timeout: float | None = None, **params: Any) -> Reply:
        """One chat completion; ``tools`` are OpenAI function specs. Recorded in the trace either way."""
        body: dict[str, Any] = {"model": self.model, "messages": messages, **self.defaults, **params}
        if tools:
            body["tools"] = tools
            if tool_choice is not None:
                body["tool_choice"] = tool_choice
        with self.trace.span("model", self.model) as fields:
            data = self._request("POST", "/chat/completions", body, timeout or self.timeout, fields)
            reply = parse_reply(data, self.base)
            fields.update(prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens,
                          tool_calls=len(reply.tool_calls), finish_reason=reply.finish_reason)
        return reply

    def complete(self, prompt: str, *, system: str | None = None, **params: Any) -> str:
        """The text of one answer to ``prompt`` (no tools): what the workflows build on."""
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        return self.chat(messages, **params).content or ""

    def _request(self, method: str, path: str, body: dict | None, timeout: float,
                 fields: dict[str, Any] | None = None) -> Any:
        def attempt(n: int) -> None:
            if fields is not None:
                fields["attempts"] = n + 1

        try:
            return self.client.call(method, path, body, timeout=timeout, on_attempt=attempt)[0]
        except endpoint.EndpointError as e:
            raise EndpointError(str(e)) from None

    def close(self) -> None:
        """Nothing to release (each request opens its own connection); kept for ``with ChatModel(...)``."""

    def __enter__(self) -> ChatModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_reply(data: Any, where: str) -> Reply:
    """A chat completion's first choice; a malformed answer raises EndpointError naming what is missing."""
    try:
        reply = endpoint.parse_chat(data, f"{where}/chat/completions")
        calls = [ToolCall(id=str(c.get("id") or f"call_{i}"), name=c["function"]["name"],
                          arguments=c["function"].get("arguments") or "{}")
                 for i, c in enumerate(reply.message.get("tool_calls") or [])]
    except endpoint.EndpointError as e:
        raise EndpointError(str(e)) from None
    except (KeyError, IndexError, TypeError, AttributeError) as e:
        raise EndpointError(f"{where}/chat/completions: malformed answer (missing {e}): {str(data)[:200]}") from None
    return Reply(content=reply.content, tool_calls=calls, finish_reason=reply.finish_reason,
                 prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens)
