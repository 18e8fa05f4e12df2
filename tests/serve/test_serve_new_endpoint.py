"""docs/serve.md's "Adding an endpoint", done as a newcomer would: a router module and one line in ROUTERS.

The toy endpoint lives in this file (standing in for ``src/groundup/serve/routes/count.py``); adding it to
``ROUTERS`` stands in for the one-line edit of ``routes/__init__.py``. Nothing else is touched, yet the
endpoint gets what every route gets: the API key, the size limit, request ids, OpenAI-shaped errors and
its responses counted in /metrics.
"""

from __future__ import annotations

import fastapi
import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from groundup.serve import routes
from groundup.serve.app import create_app
from groundup.serve.dispatch import run_requests
from groundup.serve.errors import APIError
from groundup.serve.run import Config, EngineSettings, build_state
from groundup.serve.state import State
from groundup.serve.validation import check_model, encode_prompt

# ---- what a newcomer writes in src/groundup/serve/routes/count.py ------------------------------------

router = fastapi.APIRouter()


class CountRequest(BaseModel):  # would go in protocol.py
    model: str | None = None
    text: str
    greedy_tokens: int = 0


@router.post("/v1/count")
async def count(body: CountRequest, http: fastapi.Request, state: State):
    """Tokens in a text, and optionally the greedy continuation's first tokens (through the engine)."""
    check_model(state, body.model)
    if not body.text.strip():
        raise APIError(400, "text is blank", param="text")
    ids = encode_prompt(state, body.text)
    answer = {"tokens": len(ids)}
    if body.greedy_tokens:
        from groundup.infer.engine import Request
        from groundup.infer.sampling import SamplingParams

        req = Request(prompt_ids=ids, params=SamplingParams(temperature=0, max_new_tokens=body.greedy_tokens))
        (merged,) = await run_requests(state, http, [req])
        answer["continuation"] = merged[0].token_ids
    return answer

# -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def state(serve_model_dir):
    state = build_state(Config(model=serve_model_dir, served_model_name="tiny", api_key="k",
                               engine=EngineSettings(max_seqs=2)))
    yield state
    state.engine.shutdown()


def test_serve_toy_endpoint_added_through_routers(state, monkeypatch):
    monkeypatch.setattr(routes, "ROUTERS", [*routes.ROUTERS, router])  # the one line in routes/__init__.py
    key = {"Authorization": "Bearer k"}
    with TestClient(create_app(state)) as client:
        r = client.post("/v1/count", json={"text": "hello world", "greedy_tokens": 3}, headers=key)
        assert r.status_code == 200, r.text
        assert r.json()["tokens"] == len(state.tokenizer.encode("hello world"))
        assert len(r.json()["continuation"]) == 3 and r.headers["x-request-id"]
        assert client.post("/v1/count", json={"text": "x"}).status_code == 401  # the API key applies
        bad = client.post("/v1/count", json={"text": "  "}, headers=key)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "text"
        assert client.post("/v1/count", json={"text": 3}, headers=key).json()["error"]["param"] == "text"
        assert client.post("/v1/count", json={"text": "x", "model": "m"}, headers=key).status_code == 404
        metrics = client.get("/metrics").text
        assert 'groundup_http_responses_total{code="401"}' in metrics
    monkeypatch.undo()
    with TestClient(create_app(state)) as client:  # without the line, no endpoint
        assert client.post("/v1/count", json={"text": "x"}, headers=key).status_code == 404
