"""``GET /health`` (503 once the engine thread has stopped) and ``GET /metrics`` (Prometheus text); no API key."""

from __future__ import annotations

import fastapi
from fastapi.responses import PlainTextResponse

from groundup.serve.errors import APIError
from groundup.serve.metrics import render_metrics
from groundup.serve.state import State

router = fastapi.APIRouter()
OPEN_PATHS = ("/health", "/metrics", "/")
"""Routes answered without the API key: load balancers and scrapers have none, and the chat page (``/``)
asks the user for it."""


@router.get("/health")
async def health(state: State):
    if not state.engine.alive:
        raise APIError(503, "the engine thread has stopped", code="engine_stopped")
    return {"status": "ok"}


@router.get("/metrics")
async def metrics(state: State):
    return PlainTextResponse(render_metrics(state), media_type="text/plain; version=0.0.4")
