"""Server faults are 5xx with a request id (body, x-request-id header, log line); client mistakes stay 4xx."""

from __future__ import annotations

import logging
import sys

import pytest
from fastapi.testclient import TestClient

from groundup.serve.app import create_app
from groundup.serve.run import Config, EngineSettings, build_state

SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}


@pytest.fixture(scope="module")
def state(serve_model_dir):
    state = build_state(Config(model=serve_model_dir, served_model_name="tiny", engine=EngineSettings(max_seqs=2)))
    yield state
    state.engine.shutdown()


@pytest.fixture
def client(state):
    with TestClient(create_app(state)) as client:
        yield client


def test_serve_engine_fault_is_500_with_request_id(state, client, monkeypatch, caplog):
    def broken_prefill(seq):
        raise RuntimeError("boom")

    monkeypatch.setattr(state.engine, "_prefill", broken_prefill)
    with caplog.at_level(logging.ERROR, logger="groundup.serve"):
        r = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 3})
    assert r.status_code == 500, r.text
    rid = r.headers["x-request-id"]
    body = r.json()
    assert body["request_id"] == rid and rid in body["error"]["message"] and "boom" in body["error"]["message"]
    assert body["error"]["type"] == "server_error" and body["error"]["code"] == "engine_error"
    assert any(rid in rec.getMessage() and "boom" in rec.getMessage() for rec in caplog.records)
    # a client's own id is kept; streamed, the fault comes as an error event naming the request
    with client.stream("POST", "/v1/completions", json={"prompt": "x", "max_tokens": 3, "stream": True},
                       headers={"x-request-id": "mine-42"}) as r:
        lines = [line for line in r.iter_lines() if line]
    assert r.headers["x-request-id"] == "mine-42"
    assert any('"engine_error"' in line and "mine-42" in line for line in lines) and lines[-1] == "data: [DONE]"


def test_serve_unexpected_exception_is_500_with_request_id(client, monkeypatch, caplog):
    from groundup.serve.routes import chat

    def buggy(state, body):
        raise KeyError("oops")

    monkeypatch.setattr(chat, "chat_request", buggy)
    with caplog.at_level(logging.ERROR, logger="groundup.serve"):
        r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 500
    rid = r.headers["x-request-id"]
    assert r.json()["request_id"] == rid and "KeyError" in r.json()["error"]["message"]
    assert any(rid in rec.getMessage() and rec.exc_info for rec in caplog.records)  # with the traceback


def test_serve_missing_xgrammar_is_501_naming_the_extra(state, client, monkeypatch):
    monkeypatch.setattr(state, "_grammars", None)
    monkeypatch.setitem(sys.modules, "xgrammar", None)  # `import xgrammar` raises ImportError
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                  "response_format": SCHEMA_FORMAT})
    assert r.status_code == 501, r.text
    assert "groundup[serve]" in r.json()["error"]["message"] and r.json()["error"]["type"] == "server_error"
    free = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert free.status_code == 200  # what needs no grammar still works


def test_serve_rejected_schema_stays_400(client):
    bad = {"type": "json_schema", "json_schema": {"schema": {"type": "nope"}}}
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                  "response_format": bad})
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"
    assert "nope" in r.json()["error"]["message"] and "/project/" not in r.json()["error"]["message"]
    assert r.headers["x-request-id"].startswith("req-")


def test_serve_nested_config_sections(serve_model_dir, tmp_path):
    """Every limit and the engine's prefill budget are settable as flags and in YAML; defaults live once."""
    from groundup import config
    from groundup.serve import run as server
    from groundup.serve.settings import RequestLimits

    cfg = config.parse(server.Config, ["--model", str(serve_model_dir), "--limits.max_n", "4",
                                       "--limits.max_logprobs", "3", "--engine.max_prefill_tokens", "1024"])
    assert cfg.limits.max_n == 4 and cfg.limits.max_logprobs == 3 and cfg.engine.max_prefill_tokens == 1024
    assert cfg.limits.max_tokens == RequestLimits().max_tokens  # untouched fields keep the dataclass default
    (tmp_path / "serve.yaml").write_text(f"model: {serve_model_dir}\nengine: {{max_seqs: 3, max_prefill_tokens: 512}}\n"
                                         "limits: {max_n: 2}\n")
    cfg = config.parse(server.Config, ["--config", str(tmp_path / "serve.yaml"), "--served_model_name", "tiny"])
    assert (cfg.engine.max_seqs, cfg.engine.max_prefill_tokens, cfg.limits.max_n) == (3, 512, 2)
    state = server.build_state(cfg)
    try:
        assert state.engine.max_prefill_tokens == 512 and state.engine.max_seqs == 3
        with TestClient(create_app(state)) as client:
            r = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2, "n": 3})
            assert r.status_code == 400 and r.json()["error"]["param"] == "n"
            assert client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2, "n": 2}).status_code == 200
    finally:
        state.engine.shutdown()
