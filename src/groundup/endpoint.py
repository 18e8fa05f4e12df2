"""HTTP with one set of retry rules, and a client of OpenAI-compatible chat endpoints built on it.

Every caller of an HTTP service in groundup goes through :func:`request`: the annotator and ``groundup
synth`` (curate), the LLM judge (evaluate), the apps' :class:`~groundup.apps.ChatModel`, and the Common Crawl
range fetcher. The rules, in one place:

- every request has a timeout (seconds without progress on the socket);
- a 5xx answer, a 429, a timeout and a refused or dropped connection are retried, ``retries`` times at
  most, after ``backoff_seconds``, then twice that, and so on (capped at ``max_backoff_seconds``); a 429
  or 503 with ``Retry-After`` (seconds or an HTTP date) waits that long instead, capped at
  ``max_retry_after_seconds``;
- any other 4xx fails at once: retrying an invalid request changes nothing;
- a failure raises :class:`EndpointError`, one line naming the method, the URL, the status and the
  server's own message, and how many tries were made.

The standard library's ``urllib`` does the HTTP: curation (the ``data`` extra) has no httpx, and a
stdlib client keeps this bottom layer free of dependencies (and of torch). Each call opens its own
connection, so a client is safe to share between threads; an LLM call's time is the model's, not the
connection's.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import logging
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, BinaryIO, TypeVar

log = logging.getLogger(__name__)


class EndpointError(RuntimeError):
    """A request failed: a 4xx answer, or a retryable failure on every try. The message is one line."""

    def __init__(self, message: str, *, reason: str, status: int | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.reason = reason
        """Short and stable, for counting: ``HTTP 503``, ``timeout``, ``connection``, ``not JSON``..."""
        self.status = status
        self.attempts = attempts


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How often and how long to retry a request that failed in a way a later try may not."""

    retries: int = 4
    """Further tries after a 5xx, a 429, a timeout or a refused or dropped connection."""
    backoff_seconds: float = 1.0
    """The first retry waits this long, each next one twice as long."""
    max_backoff_seconds: float = 60.0
    """No wait between tries is longer than this."""
    max_retry_after_seconds: float = 120.0
    """A server's Retry-After is honoured up to this many seconds."""

    def __post_init__(self) -> None:
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"retries must be an integer >= 0, got {self.retries!r}")
        for name in ("backoff_seconds", "max_backoff_seconds", "max_retry_after_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait before try ``attempt + 1`` (``attempt`` from 0) after a failure."""
        asked = parse_retry_after(retry_after)
        if asked is not None:
            return min(asked, self.max_retry_after_seconds)
        return min(self.backoff_seconds * 2 ** attempt, self.max_backoff_seconds)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """A Retry-After header's wait in seconds: a number of seconds or an HTTP date; None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


@dataclass
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes
    url: str
    attempts: int = 1


def error_message(body: bytes, fallback: str = "") -> str:
    """The server's message in an error body: OpenAI's ``{"error": {"message": ...}}``, ``{"error": "..."}``,
    ``{"detail": ...}`` (FastAPI), or the body's text; one line, at most 300 characters."""
    message: Any = None
    try:
        data = json.loads(body)
        if isinstance(data, dict):
            error = data.get("error", data.get("detail"))
            message = error.get("message") if isinstance(error, dict) else error
    except ValueError:
        pass
    if message is None:
        message = body.decode("utf-8", "replace")
    return " ".join(str(message or fallback).split())[:300]


_OPENER = urllib.request.build_opener()


def _read_up_to(stream, size: int) -> bytes:
    parts, left = [], size
    while left > 0 and (chunk := stream.read(min(left, 1 << 20))):
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _timed_out(error: BaseException) -> bool:
    reason = getattr(error, "reason", error)
    return isinstance(reason, TimeoutError) or "timed out" in str(reason)


def request(method: str, url: str, *, body: bytes | None = None, headers: Mapping[str, str] | None = None,
            timeout: float = 60.0, policy: RetryPolicy | None = None,
            on_attempt: Callable[[int], None] | None = None, sleep: Callable[[float], None] = time.sleep,
            max_bytes: int | None = None, into: BinaryIO | None = None) -> Response:
    """One HTTP request with :class:`RetryPolicy`'s retries; any 2xx or 3xx answer is returned as it is.

    ``on_attempt(n)`` is called before each try (n from 0). The whole body is read inside the try, so
    a connection dropped mid-body is retried like one dropped before the answer. ``max_bytes``: read at
    most this many bytes of the body and close the connection (a server that ignores a Range header
    sends the whole file). ``into``: stream the body into this file (emptied before each try) instead of
    memory; the response's ``body`` is then empty.
    """
    policy = policy or RetryPolicy()
    problem, reason, status = "", "", None
    for attempt in range(policy.retries + 1):
        if on_attempt is not None:
            on_attempt(attempt)
        retry_after = None
        try:
            req = urllib.request.Request(url, data=body, headers=dict(headers or {}), method=method)
            with _OPENER.open(req, timeout=timeout) as answer:
                if into is not None:
                    into.seek(0)
                    into.truncate()
                    shutil.copyfileobj(answer, into, 1 << 20)
                    data = b""
                else:
                    data = answer.read() if max_bytes is None else _read_up_to(answer, max_bytes)
                return Response(answer.status, answer.headers, data, url, attempt + 1)
        except urllib.error.HTTPError as e:
            status = e.code
            try:
                text = error_message(e.read(), e.reason or "")
            except (OSError, http.client.HTTPException):
                text = str(e.reason or "")
            problem, reason = f"HTTP {e.code}: {text}".rstrip(": "), f"HTTP {e.code}"
            if e.code != 429 and e.code < 500:  # the request itself is wrong: retrying changes nothing
                raise EndpointError(f"{method} {url}: {problem}", reason=reason, status=e.code,
                                    attempts=attempt + 1) from None
            retry_after = e.headers.get("Retry-After") if e.headers is not None else None
        except TimeoutError:
            problem, reason, status = f"no answer within {timeout:g} s", "timeout", None
        except (urllib.error.URLError, ConnectionError, http.client.HTTPException, OSError) as e:
            status = None
            if _timed_out(e):
                problem, reason = f"no answer within {timeout:g} s", "timeout"
            else:
                cause = getattr(e, "reason", e)
                cause_text = " ".join(str(cause).split())
                problem = f"connection failed ({type(cause).__name__}: {cause_text})".replace(": )", ")")
                reason = "connection"
        if attempt < policy.retries:
            sleep(policy.delay(attempt, retry_after))
    tries = policy.retries + 1
    raise EndpointError(f"{method} {url}: {problem} (after {tries} {'try' if tries == 1 else 'tries'})",
                        reason=reason, status=status, attempts=tries)


def api_base(url: str) -> str:
    """``http://host:port`` or ``http://host:port/v1`` (with or without a trailing slash) -> ``.../v1``."""
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


@dataclass
class ChatReply:
    """A chat completion: the first choice's message, the usage the server reported, the whole answer."""

    content: str | None
    message: dict[str, Any]
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    data: dict[str, Any] = field(repr=False)
    attempts: int = 1


class ChatClient:
    """Chat completions from one OpenAI-compatible endpoint (``groundup serve``, vLLM, llama.cpp, a hosted API).

    ``base`` is used as given (``http://host:8000/v1``): paths such as ``/chat/completions`` are appended
    to it (:func:`api_base` adds a missing ``/v1``). Thread-safe: no state changes after construction.
    """

    def __init__(self, base: str, *, api_key: str | None = None, timeout: float = 60.0,
                 policy: RetryPolicy | None = None) -> None:
        if not base or not base.startswith(("http://", "https://")):
            raise ValueError(f"endpoint URL must start with http:// or https://, got {base!r}")
        self.base = base.rstrip("/")
        self.timeout = timeout
        self.policy = policy or RetryPolicy()
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, *, timeout: float | None = None,
             on_attempt: Callable[[int], None] | None = None) -> tuple[Any, int]:
        """The JSON answer to one request (retried by the policy) and the tries it took."""
        data = None if body is None else json.dumps(body).encode("utf-8")
        response = request(method, self.base + path, body=data, headers=self.headers,
                           timeout=self.timeout if timeout is None else timeout, policy=self.policy,
                           on_attempt=on_attempt)
        try:
            return json.loads(response.body), response.attempts
        except ValueError:
            raise EndpointError(f"{method} {response.url}: the answer is not JSON: {response.body[:200]!r}",
                                reason="not JSON", status=response.status, attempts=response.attempts) from None

    def chat(self, messages: list[dict[str, Any]], *, model: str, timeout: float | None = None,
             on_attempt: Callable[[int], None] | None = None, **params: Any) -> ChatReply:
        """One ``POST /chat/completions``; ``params`` go into the body (``max_tokens``, ``temperature``, ``tools``...)."""
        data, attempts = self.call("POST", "/chat/completions", {"model": model, "messages": messages, **params},
                                   timeout=timeout, on_attempt=on_attempt)
        return parse_chat(data, f"{self.base}/chat/completions", attempts)

    def complete(self, prompt: str, *, model: str, **params: Any) -> ChatReply:
        """The reply to one user message."""
        return self.chat([{"role": "user", "content": prompt}], model=model, **params)


@dataclass(kw_only=True)
class EndpointSettings:
    """Where a stage sends its chat requests and how it treats the endpoint: the fields a stage's ``Config``
    shares by inheriting them (``annotate``, ``synth``), so each flag means the same in every stage."""

    url: str = "http://127.0.0.1:8000/v1"
    """Base URL of an OpenAI-compatible server (`groundup serve`, vLLM, a hosted API)."""
    model: str = "default"
    """Model name sent with each request."""
    api_key: str | None = None
    """Sent as `Authorization: Bearer` (None: no header)."""
    concurrency: int = 8
    """Requests in flight at once."""
    retries: int = 4
    """Retries of a request after a 5xx, a 429, a timeout or a refused connection (with exponential backoff)."""
    backoff_seconds: float = 1.0
    """The first retry waits this long, each next one twice as long."""
    timeout_seconds: float = 60.0
    """A request without an answer after this long is a timeout."""

    def client(self) -> ChatClient:
        """A :class:`ChatClient` of ``url`` with these settings."""
        return ChatClient(self.url, api_key=self.api_key, timeout=self.timeout_seconds,
                          policy=RetryPolicy(retries=self.retries, backoff_seconds=self.backoff_seconds))


def failure_reason(error: EndpointError) -> str:
    """A failed request's reason as a stage's stats count it: short, the same for every item it hit."""
    reason = "malformed response" if error.reason in ("malformed answer", "not JSON") else error.reason
    return f"{reason} after {error.attempts} tries" if error.attempts > 1 else reason


@dataclass
class RequestCounts:
    """What many completions from one endpoint, sent from several threads, cost and how they failed: the
    requests and retries made, the tokens the server reported, and failures by reason with the first 20
    examples (``where: reason``). The annotator's and ``groundup synth``'s stats.json report it."""

    stage: str = "endpoint"
    """The name failures are logged under."""
    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def complete(self, client: ChatClient, prompt: str, where: str, **params: Any) -> ChatReply | None:
        """The reply to one user message, counted; None when the endpoint failed (counted under its reason)."""

        def attempt(n: int) -> None:
            with self.lock:
                self.requests += 1
                self.retries += n > 0

        try:
            reply = client.complete(prompt, on_attempt=attempt, **params)
        except EndpointError as e:
            self.fail(failure_reason(e), where)
            return None
        with self.lock:
            self.prompt_tokens += int(reply.prompt_tokens or 0)
            self.completion_tokens += int(reply.completion_tokens or 0)
        return reply

    def fail(self, reason: str, where: str) -> None:
        with self.lock:
            self.failed[reason] = self.failed.get(reason, 0) + 1
            if len(self.examples) < 20:
                self.examples.append(f"{where}: {reason}")
        log.warning("%s %s: %s", self.stage, where, reason)

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "retries": self.retries, "failed": dict(sorted(self.failed.items())),
                "failed_examples": list(self.examples), "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens}


T = TypeVar("T")
R = TypeVar("R")


def map_unordered(fn: Callable[[T], R], items: Iterable[T], concurrency: int) -> Iterator[R]:
    """``fn(item)`` for every item on ``concurrency`` threads, yielded as each finishes (not in order).

    ``items`` is read lazily, with at most ``2 * concurrency`` calls submitted and not yet yielded, so a
    stage writing each result as it arrives loses only the calls in flight to a kill. An exception from
    ``fn`` is raised here, at its result."""
    with ThreadPoolExecutor(concurrency) as pool:
        pending: set = set()
        for item in items:
            pending.add(pool.submit(fn, item))
            while len(pending) > 2 * concurrency:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (future.result() for future in finished)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            yield from (future.result() for future in finished)


def parse_chat(data: Any, where: str, attempts: int = 1) -> ChatReply:
    """A chat completion's first choice; a malformed answer raises EndpointError naming what is missing."""
    try:
        choice = data["choices"][0]
        message = choice["message"]
        if not isinstance(message, dict):
            raise TypeError("message is not an object")
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            raise TypeError("content is not a string")
    except (KeyError, IndexError, TypeError) as e:
        raise EndpointError(f"{where}: malformed answer (missing {e}): {str(data)[:200]}",
                            reason="malformed answer", attempts=attempts) from None
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    return ChatReply(content=content, message=message, finish_reason=choice.get("finish_reason"),
                     prompt_tokens=usage.get("prompt_tokens"), completion_tokens=usage.get("completion_tokens"),
                     data=data, attempts=attempts)
