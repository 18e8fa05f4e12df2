"""The `groundup serve` stage: an OpenAI-compatible HTTP server over a model dir (FastAPI + uvicorn).

Binds 127.0.0.1 unless told otherwise; with ``api_key`` (or ``GROUNDUP_API_KEY`` in the environment)
every route but ``/health`` and ``/metrics`` needs ``Authorization: Bearer <key>``. Settings come in
sections: ``engine`` (how the model runs) and ``limits`` (what one request may ask for), as flags
(``--engine.max_seqs 32``, ``--limits.max_n 4``) or YAML (``--config serve.yaml``)::

    model: runs/x/model
    engine: {max_seqs: 32, max_prefill_tokens: 1024}
    limits: {max_tokens: 512, max_n: 4}
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from groundup.extras import require_extra
from groundup.infer.engine import Engine
from groundup.infer.speculative import load_draft
from groundup.model.io import load_model_dir
from groundup.serve.settings import EngineSettings, RequestLimits
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
    device: str = "cpu"
    """'cpu', 'cuda', 'cuda:N', or 'auto'."""
    log_level: str = "info"
    """uvicorn's log level."""
    engine: EngineSettings = field(default_factory=EngineSettings)
    """How the engine runs the model."""
    limits: RequestLimits = field(default_factory=RequestLimits)
    """What one request may ask for (4xx above)."""


def build_engine(model, tokenizer, settings: EngineSettings, device: str = "cpu") -> Engine:
    draft = load_draft(settings.draft, tokenizer, device=device) if settings.draft is not None else None
    return Engine(model, tokenizer, max_seqs=settings.max_seqs, max_len=settings.max_len,
                  min_rows=None if settings.batch_invariant else 1, max_prefill_tokens=settings.max_prefill_tokens,
                  draft=draft, draft_tokens=settings.draft_tokens)


def build_state(cfg: Config):
    """The engine over the model dir, and what the routes share (a ``ServerState``)."""
    from groundup.serve.state import ServerState

    model_dir = Path(cfg.model)
    model, tokenizer = load_model_dir(model_dir, device=cfg.device)
    return ServerState(build_engine(model, tokenizer, cfg.engine, cfg.device),
                       model_name=cfg.served_model_name or model_dir.resolve().name,
                       chat_template=read_chat_template(model_dir), limits=cfg.limits,
                       api_key=cfg.api_key or os.environ.get("GROUNDUP_API_KEY") or None)


def run(cfg: Config) -> Path:
    """Serve until interrupted; returns the model dir."""
    require_extra("serve", "fastapi", "uvicorn", purpose="groundup serve")
    import uvicorn

    from groundup.serve.app import create_app

    state = build_state(cfg)
    app = create_app(state)
    log.info("serving %s as %r on http://%s:%d", cfg.model, state.model_name, cfg.host, cfg.port)
    try:
        uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level, timeout_graceful_shutdown=5)
    finally:
        state.engine.shutdown()
    return Path(cfg.model)
