"""What every route shares: the engine, the tokenizer, the chat template, the request limits, the counters."""

from __future__ import annotations

import time
from collections import Counter
from typing import Annotated

import fastapi

from groundup.infer.engine import Engine
from groundup.infer.structured import GrammarFactory
from groundup.serve.errors import APIError, missing_extra
from groundup.serve.settings import RequestLimits
from groundup.tokenizer.chat import END_OF_TURN


class ServerState:
    """Everything the routes share: engine, tokenizer, template, limits and counters."""

    def __init__(self, engine: Engine, *, model_name: str, chat_template: str, limits: RequestLimits,
                 api_key: str | None = None) -> None:
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.model_name = model_name
        self.chat_template = chat_template
        self.limits = limits
        self.api_key = api_key
        self.active = 0
        """HTTP generation requests in progress (each holds a :class:`ConcurrencyPermit`)."""
        self.responses: Counter = Counter()
        self.created = int(time.time())
        self._grammars: GrammarFactory | None = None
        end = self.tokenizer.token_to_id(END_OF_TURN)
        self.end_of_turn = [end] if end is not None else []
        self.max_prompt = limits.max_prompt_tokens or engine.max_len

    @property
    def grammars(self) -> GrammarFactory:
        if self._grammars is None:  # built on first use: it walks the whole vocabulary
            try:
                self._grammars = GrammarFactory(self.tokenizer, self.engine.config.vocab_size)
            except ImportError:  # xgrammar is in the serve extra; without it no grammar can be compiled
                raise missing_extra("structured output (response_format, guided_*)", "xgrammar") from None
        return self._grammars


class ConcurrencyPermit:
    """Counts one HTTP request against ``max_concurrent_requests`` while it runs (not a KV-cache slot:
    the engine queues sequences for those). ``acquire`` answers 429 when none is left."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.held = False

    def acquire(self) -> ConcurrencyPermit:
        if self.state.active >= self.state.limits.max_concurrent_requests:
            raise APIError(429, f"server busy: {self.state.active} requests in progress, try again",
                           code="too_many_requests")
        self.state.active += 1
        self.held = True
        return self

    def release(self) -> None:
        if self.held:
            self.held = False
            self.state.active -= 1

    def __enter__(self) -> ConcurrencyPermit:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def server_state(http: fastapi.Request) -> ServerState:
    return http.app.state.server


State = Annotated[ServerState, fastapi.Depends(server_state)]
"""A route parameter annotated ``State`` receives the app's :class:`ServerState`."""
