"""A scripted OpenAI-compatible server on a free loopback port, and helpers to script it: the apps' tests need
no model. (A module of its own: several test folders have a conftest.py, so `from conftest import` is ambiguous.)"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any


def call(name: str, arguments: dict | str, id: str | None = None) -> dict:
    """A tool call as a script returns it."""
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": id or f"call_{name}", "type": "function", "function": {"name": name, "arguments": args}}


class FakeOpenAI:
    """``script(body) -> reply``: a str (content), a dict (the message: content and/or tool_calls), or an
    int (answer with that HTTP status), or ``(status, headers)`` (an error with headers, e.g. Retry-After). ``delay``: seconds each answer takes (to see concurrency)."""

    def __init__(self, script: Callable[[dict], Any], *, delay: float = 0.0) -> None:
        import uvicorn
        from fastapi import FastAPI
        from fastapi.responses import JSONResponse

        self.script = script
        self.delay = delay
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        app = FastAPI()

        @app.get("/v1/models")
        async def models() -> dict:
            return {"object": "list", "data": [{"id": "fake", "object": "model"}]}

        @app.post("/v1/chat/completions")
        async def chat(body: dict) -> Any:
            with self._lock:
                self.requests.append(body)
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                await asyncio.sleep(self.delay)
                reply = self.script(body)
            finally:
                with self._lock:
                    self.in_flight -= 1
            if isinstance(reply, tuple):
                return JSONResponse({"error": {"message": "scripted failure", "type": "server_error"}},
                                    status_code=reply[0], headers=reply[1])
            if isinstance(reply, int):
                return JSONResponse({"error": {"message": "scripted failure", "type": "server_error"}},
                                    status_code=reply)
            message = {"role": "assistant", "content": reply} if isinstance(reply, str) else \
                {"role": "assistant", "content": None, **reply}
            return {"id": "chatcmpl-1", "object": "chat.completion", "model": body.get("model"),
                    "choices": [{"index": 0, "message": message,
                                 "finish_reason": "tool_calls" if message.get("tool_calls") else "stop"}],
                    "usage": {"prompt_tokens": 10 * len(body["messages"]), "completion_tokens": 7,
                              "total_tokens": 10 * len(body["messages"]) + 7}}

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("the fake server did not start")
            time.sleep(0.01)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def last_user(body: dict) -> str:
    return next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")


def tool_results(body: dict) -> list[dict]:
    return [m for m in body["messages"] if m["role"] == "tool"]
