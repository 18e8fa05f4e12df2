"""A client of any OpenAI-compatible chat endpoint (``groundup serve``, vLLM, llama.cpp, OpenAI itself).

Thin on purpose: one ``POST /v1/chat/completions`` per call over httpx, with a timeout on every request,
a bounded number of retries for 5xx answers and dropped connections, and one trace record per call.
An endpoint that keeps failing raises :class:`EndpointError` naming the URL, the status and the reason.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from groundup.apps.trace import AppError, Trace


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


def api_base(url: str) -> str:
    """``http://host:port`` or ``http://host:port/v1`` (with or without a trailing slash) -> ``.../v1``."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


class ChatModel:
    """Chat completions from one endpoint. Thread-safe (workflows call it from several threads)."""

    def __init__(self, url: str, *, model: str | None = None, api_key: str | None = None, timeout: float = 120.0,
                 retries: int = 2, retry_delay: float = 0.5, trace: Trace | None = None,
                 **defaults: Any) -> None:
        """``model``: the id to send (default: the first the endpoint lists); ``timeout``: seconds for each
        request; ``retries``: further tries after a 5xx answer or a dropped connection; ``defaults``:
        request fields sent with every call (``temperature``, ``max_tokens``, ...)."""
        self.base = api_base(url)
        self.timeout = timeout
        self.retries = retries
        self.retry_delay = retry_delay
        self.trace = trace if trace is not None else Trace()
        self.defaults = defaults
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(headers=headers, timeout=timeout)
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
        url = self.base + path
        problem = ""
        for attempt in range(self.retries + 1):
            if fields is not None:
                fields["attempts"] = attempt + 1
            if attempt:
                time.sleep(self.retry_delay * 2 ** (attempt - 1))
            try:
                response = self.http.request(method, url, json=body, timeout=timeout)
            except httpx.TimeoutException:
                problem = f"no answer within {timeout:g} s"
                continue
            except httpx.TransportError as e:
                problem = f"connection failed ({type(e).__name__}: {e})"
                continue
            if response.status_code >= 500:
                problem = f"HTTP {response.status_code}: {_error_text(response)}"
                continue
            if response.status_code >= 400:  # the request itself is wrong: retrying changes nothing
                raise EndpointError(f"{method} {url}: HTTP {response.status_code}: {_error_text(response)}")
            try:
                return response.json()
            except json.JSONDecodeError:
                raise EndpointError(f"{method} {url}: the answer is not JSON: {response.text[:200]!r}") from None
        raise EndpointError(f"{method} {url}: {problem} (after {self.retries + 1} tries)")

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ChatModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _error_text(response: httpx.Response) -> str:
    try:
        error = response.json().get("error")
        message = error.get("message") if isinstance(error, dict) else error
    except (json.JSONDecodeError, AttributeError):
        message = None
    return " ".join(str(message or response.text or response.reason_phrase).split())[:300]


def parse_reply(data: Any, where: str) -> Reply:
    """A chat completion's first choice; a malformed answer raises EndpointError naming what is missing."""
    try:
        choice = data["choices"][0]
        message = choice["message"]
        calls = [ToolCall(id=str(c.get("id") or f"call_{i}"), name=c["function"]["name"],
                          arguments=c["function"].get("arguments") or "{}")
                 for i, c in enumerate(message.get("tool_calls") or [])]
    except (KeyError, IndexError, TypeError) as e:
        raise EndpointError(f"{where}/chat/completions: malformed answer (missing {e}): {str(data)[:200]}") from None
    usage = data.get("usage") or {}
    return Reply(content=message.get("content"), tool_calls=calls, finish_reason=choice.get("finish_reason"),
                 prompt_tokens=usage.get("prompt_tokens"), completion_tokens=usage.get("completion_tokens"))
