"""The HTTP server under real uvicorn on loopback, driven by the official `openai` client and raw httpx."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "ok", "size"],
          "properties": {"name": {"type": "string", "maxLength": 6}, "ok": {"type": "boolean"},
                         "size": {"enum": ["small", "large"]}}}


@pytest.fixture(scope="module")
def client(live_server):
    return openai.OpenAI(base_url=live_server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_serve_openai_completions_echo_logprobs(client, live_server):
    out = client.completions.create(model="tiny", prompt="def foo(x):", max_tokens=6, temperature=0, echo=True,
                                    logprobs=2)
    choice = out.choices[0]
    assert choice.text.startswith("def foo(x):") and len(choice.text) > len("def foo(x):")
    n_prompt = out.usage.prompt_tokens
    lp = choice.logprobs
    assert len(lp.tokens) == n_prompt + out.usage.completion_tokens == n_prompt + 6
    assert lp.token_logprobs[0] is None and all(v <= 0 for v in lp.token_logprobs[1:])
    assert "".join(lp.tokens[1:]) == choice.text[len(lp.tokens[0] or ""):] or lp.tokens[0] is None
    assert all(len(top) <= 2 for top in lp.top_logprobs[1:])
    # greedy and batch-invariant: the same request twice gives the same text
    again = client.completions.create(model="tiny", prompt="def foo(x):", max_tokens=6, temperature=0)
    assert again.choices[0].text == choice.text[len("def foo(x):"):]
    assert choice.finish_reason == "length"


def test_serve_openai_chat_and_streaming(client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]
    full = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0, seed=1,
                                          logprobs=True, top_logprobs=3)
    text = full.choices[0].message.content
    assert full.choices[0].message.role == "assistant" and full.choices[0].finish_reason in ("stop", "length")
    assert len(full.choices[0].logprobs.content) == full.usage.completion_tokens
    stream = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            pieces.append(c.delta.content or "")
            finish = c.finish_reason or finish
    assert "".join(pieces) == text and finish == full.choices[0].finish_reason
    assert usage.completion_tokens == full.usage.completion_tokens
    many = client.chat.completions.create(model="tiny", messages=messages, max_tokens=5, temperature=1.0, n=3, seed=3)
    assert sorted(c.index for c in many.choices) == [0, 1, 2]


def test_serve_sse_wire_format(live_server):
    body = {"model": "tiny", "prompt": "x", "max_tokens": 4, "stream": True, "temperature": 0}
    with httpx.stream("POST", live_server.url + "/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_serve_openai_json_schema(client):
    for seed in range(3):
        out = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "a record"}], max_tokens=60, temperature=1.0,
            seed=seed, response_format={"type": "json_schema", "json_schema": {"name": "rec", "schema": SCHEMA}})
        record = json.loads(out.choices[0].message.content)  # a random model, yet valid JSON every time
        assert set(record) == {"name", "ok", "size"} and isinstance(record["ok"], bool)
        assert record["size"] in ("small", "large") and len(record["name"]) <= 6
        assert out.choices[0].finish_reason == "stop"


def test_serve_models_health_metrics_tokenize(live_server, client):
    assert [m.id for m in client.models.list().data] == ["tiny"]
    assert httpx.get(live_server.url + "/health").json() == {"status": "ok"}
    ids = httpx.post(live_server.url + "/tokenize", json={"prompt": "hello world"}).json()["tokens"]
    assert httpx.post(live_server.url + "/detokenize", json={"tokens": ids}).json()["prompt"] == "hello world"
    chat_ids = httpx.post(live_server.url + "/tokenize", json={"messages": [{"role": "user", "content": "hi"}]}).json()
    assert chat_ids["count"] > len(ids) - 2
    text = httpx.get(live_server.url + "/metrics").text
    for name in ("groundup_requests_total", "groundup_generation_tokens_total", "groundup_num_requests_waiting",
                 'groundup_time_to_first_token_seconds{quantile="0.5"}', "groundup_generation_tokens_per_second"):
        assert name in text
    total = next(float(line.split()[-1]) for line in text.splitlines() if line.startswith("groundup_requests_total"))
    assert total >= 1


@pytest.mark.parametrize(("body", "status", "param"), [
    ('{"prompt": "x"', 400, None),  # malformed JSON
    ('{"prompt": 3}', 400, "prompt"),  # wrong type
    ('{"prompt": "x", "max_tokens": -1}', 400, "max_tokens"),
    ('{"prompt": "x", "max_tokens": 100000}', 400, "max_tokens"),
    ('{"prompt": "x", "temperature": "hot"}', 400, "temperature"),
    ('{"prompt": "x", "model": "gpt-4"}', 404, "model"),
    ('{"prompt": "x", "n": 99}', 400, "n"),
    ('{"prompt": "x", "logit_bias": {"abc": 1}}', 400, "logit_bias"),
    ('{"prompt": "' + "word " * 600 + '"}', 400, "prompt"),  # over max_prompt_tokens
    ('{"prompt": "' + "x" * 30_000 + '"}', 413, None),  # over max_request_bytes
    ('{"prompt": "x", "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "nope"}}}}',
     400, "response_format"),
])
def test_serve_errors_are_4xx_in_openai_shape(live_server, body, status, param):
    r = httpx.post(live_server.url + "/v1/completions", content=body, headers={"content-type": "application/json"},
                   timeout=60)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"].startswith(param)
    assert httpx.get(live_server.url + "/health").status_code == 200


def test_serve_client_error_types(client):
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="other", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=[{"role": "robot", "content": "x"}], max_tokens=2)


def test_serve_api_key(keyed_server):
    url = keyed_server.url
    assert httpx.get(url + "/v1/models").status_code == 401
    assert httpx.get(url + "/v1/models", headers={"Authorization": "Bearer wrong"}).json()["error"]["type"] == \
        "authentication_error"
    assert httpx.get(url + "/health").status_code == 200
    good = openai.OpenAI(base_url=url + "/v1", api_key="sekret", max_retries=0)
    assert good.completions.create(model="tiny", prompt="a", max_tokens=2).usage.completion_tokens == 2
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0).models.list()


def test_serve_disconnect_cancels(live_server, monkeypatch):
    """A client that leaves mid-stream cancels its request, freeing the slot; the server stays healthy."""
    import time

    engine = live_server.state.engine
    step = engine._decode_step

    def slow_step():  # the tiny model decodes 64 tokens faster than a disconnect is noticed; slow it down
        time.sleep(0.05)
        step()

    monkeypatch.setattr(engine, "_decode_step", slow_step)
    before = engine.stats.requests_cancelled
    body = {"model": "tiny", "prompt": "x", "max_tokens": 64, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", live_server.url + "/v1/completions", json=body, timeout=60) as r:
        for _ in zip(range(3), r.iter_lines(), strict=False):
            pass
    deadline = time.time() + 20
    while engine.stats.requests_cancelled == before and time.time() < deadline:
        time.sleep(0.05)
    assert engine.stats.requests_cancelled > before
    while live_server.state.active and time.time() < deadline:  # its concurrency slot is given back
        time.sleep(0.05)
    assert live_server.state.active == 0
    assert httpx.get(live_server.url + "/health").status_code == 200
