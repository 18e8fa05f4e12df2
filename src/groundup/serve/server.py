"""The `groundup serve` stage: an OpenAI-compatible HTTP server over a model dir (FastAPI + uvicorn).

Binds 127.0.0.1 unless told otherwise; with ``api_key`` (or ``GROUNDUP_API_KEY`` in the environment)
every route but ``/health`` and ``/metrics`` needs ``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from groundup.infer.engine import Engine
from groundup.model.io import load_model_dir
from groundup.serve.app import Limits, ServerState, create_app
from groundup.tokenizer.chat import read_chat_template

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Config:
    """Serve a model dir over an OpenAI-compatible HTTP API."""

    model: Path = Path("runs/tiny/model")
    """Model dir to serve (its chat_template.jinja, if any, formats chat requests)."""
    host: str = "127.0.0.1"
    """Address to bind; the default answers only this machine. Use 0.0.0.0 to listen on every interface."""
    port: int = 8000
    """TCP port."""
    api_key: str | None = None
    """Require 'Authorization: Bearer <key>' (default: the GROUNDUP_API_KEY environment variable, else none)."""
    served_model_name: str | None = None
    """The model id clients send and /v1/models lists (default: the model dir's name)."""
    max_seqs: int = 16
    """Sequences decoded together (KV-cache slots)."""
    max_len: int | None = None
    """Positions per KV-cache slot, prompt and completion together (default: the model's block_size)."""
    max_request_bytes: int = 1 << 20
    """Largest request body in bytes (413 above)."""
    max_prompt_tokens: int | None = None
    """Longest prompt in tokens (default: the context minus one)."""
    max_tokens: int = 2048
    """Largest max_tokens a request may ask for (400 above)."""
    default_max_tokens: int = 256
    """max_tokens of a chat request that gives none."""
    max_concurrent_requests: int = 64
    """Requests in progress at once; more are answered 429."""
    batch_invariant: bool = True
    """Run a decode batch of one as two rows (oneDNN-packed CPU weights; four with the fallback layout) so that
    greedy output and logprobs do not depend on the batch; false runs one row (a matrix-vector kernel)."""
    device: str = "cpu"
    """'cpu', 'cuda', 'cuda:N', or 'auto'."""
    log_level: str = "info"
    """uvicorn's log level."""


def build_state(cfg: Config) -> ServerState:
    model_dir = Path(cfg.model)
    model, tokenizer = load_model_dir(model_dir, device=cfg.device)
    engine = Engine(model, tokenizer, max_seqs=cfg.max_seqs, max_len=cfg.max_len,
                    min_rows=None if cfg.batch_invariant else 1)
    limits = Limits(max_request_bytes=cfg.max_request_bytes, max_prompt_tokens=cfg.max_prompt_tokens,
                    max_tokens=cfg.max_tokens, default_max_tokens=cfg.default_max_tokens,
                    max_concurrent_requests=cfg.max_concurrent_requests)
    return ServerState(engine, model_name=cfg.served_model_name or model_dir.resolve().name,
                       chat_template=read_chat_template(model_dir), limits=limits,
                       api_key=cfg.api_key or os.environ.get("GROUNDUP_API_KEY") or None)


def run(cfg: Config) -> Path:
    """Serve until interrupted; returns the model dir."""
    import uvicorn

    state = build_state(cfg)
    app = create_app(state)
    log.info("serving %s as %r on http://%s:%d", cfg.model, state.model_name, cfg.host, cfg.port)
    try:
        uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level, timeout_graceful_shutdown=5)
    finally:
        state.engine.shutdown()
    return Path(cfg.model)
