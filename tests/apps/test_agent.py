import json
import time

import pytest
from fake_openai import call, last_user, tool_results

from groundup.apps import Agent, ChatModel, EndpointError, Trace


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def fail(reason: str) -> str:
    """Always fails."""
    raise RuntimeError(reason)


def hang() -> str:
    """Never answers."""
    time.sleep(60)
    return "late"


def scripted(*turns):
    """A script answering the n-th model call of the run with ``turns[n]``."""
    state = {"n": 0}

    def script(body):
        state["n"] += 1
        turn = turns[min(state["n"], len(turns)) - 1]
        return turn(body) if callable(turn) else turn

    return script


def test_the_agent_calls_a_tool_and_answers_with_its_result(fake_openai, tmp_path):
    server = fake_openai(scripted({"tool_calls": [call("add", {"a": 2, "b": 40})]},
                                  lambda body: f"The sum is {tool_results(body)[-1]['content']}."))
    with Trace(tmp_path / "trace.jsonl") as trace, ChatModel(server.url, trace=trace) as model:
        result = Agent(model, [add]).run("What is 2 + 40?")
    assert (result.answer, result.stopped, result.steps) == ("The sum is 42.", "answer", 2)
    assert result.tool_calls == [{"id": "call_add", "name": "add", "arguments": '{"a": 2, "b": 40}', "result": "42"}]
    # the request carried the tool specs and the model id the endpoint lists
    first = server.requests[0]
    assert first["model"] == "fake" and first["tool_choice"] == "auto"
    assert {t["function"]["name"] for t in first["tools"]} == {"add", "scratchpad"}
    # the second request carried the assistant's call and the tool's answer, as OpenAI's format has them
    second = server.requests[1]["messages"]
    assert second[-2]["tool_calls"][0]["function"]["name"] == "add"
    assert second[-1] == {"role": "tool", "tool_call_id": "call_add", "content": "42"}
    lines = [json.loads(line) for line in (tmp_path / "trace.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["name"], r["ok"]) for r in lines] == [("model", "fake", True), ("tool", "add", True),
                                                               ("model", "fake", True)]
    assert lines[0]["prompt_tokens"] == 20 and lines[0]["completion_tokens"] == 7 and lines[0]["tool_calls"] == 1
    assert all(r["latency_s"] >= 0 and r["start"] > 0 for r in lines)
    assert lines[1]["call_id"] == "call_add" and lines[1]["result_chars"] == 2


@pytest.mark.parametrize("bad_call, error", [
    (call("nope", {}), "no tool named 'nope'"),
    (call("fail", {"reason": "disk on fire"}), "tool fail raised RuntimeError: disk on fire"),
    (call("add", '{"a": 1,'), "tool add: arguments are not valid JSON"),
    (call("add", {"a": 1}), "tool add: arguments: 'b' is a required property"),
    (call("hang", {}), "tool hang: no result within 0.5 s (timed out)"),
])
def test_a_failing_tool_call_goes_back_to_the_model_and_into_the_trace(fake_openai, bad_call, error):
    server = fake_openai(scripted({"tool_calls": [bad_call]}, lambda body: "recovered: " + tool_results(body)[0]["content"]))
    start = time.monotonic()
    with ChatModel(server.url) as model:
        result = Agent(model, [add, fail, hang], tool_timeout=0.5).run("go")
    assert time.monotonic() - start < 5
    assert result.stopped == "answer" and result.answer.startswith(f"recovered: error: {error}")
    assert result.tool_calls[0]["error"].startswith(error)
    record = [r for r in model.trace.records if r["kind"] == "tool"][0]
    assert record["ok"] is False and record["error"].startswith(error)


def test_an_endpoint_returning_500s_ends_the_loop_with_a_clear_error(fake_openai, tmp_path):
    server = fake_openai(lambda body: 500)
    start = time.monotonic()
    with Trace(tmp_path / "trace.jsonl") as trace, ChatModel(server.url, trace=trace, retries=2,
                                                            retry_delay=0.01) as model:
        result = Agent(model, [add]).run("go")
    assert time.monotonic() - start < 5
    assert result.stopped == "error" and result.answer is None
    assert "/v1/chat/completions: HTTP 500: scripted failure (after 3 tries)" in result.error
    assert len(server.requests) == 3
    record = json.loads((tmp_path / "trace.jsonl").read_text())
    assert record["ok"] is False and record["attempts"] == 3 and "HTTP 500" in record["error"]


def test_a_429_is_retried_after_the_servers_retry_after(fake_openai, tmp_path):
    # A rate limit is a reason to wait, not to fail: the apps' client retries a 429 like a 5xx (it did not
    # before the clients were one), waiting the server's Retry-After rather than its own backoff.
    server = fake_openai(scripted((429, {"Retry-After": "1"}), "fine"))
    with Trace(tmp_path / "trace.jsonl") as trace, ChatModel(server.url, trace=trace, retries=2,
                                                            retry_delay=0.01) as model:
        start = time.monotonic()
        assert model.complete("hi") == "fine"
        waited = time.monotonic() - start
    assert 0.9 <= waited < 4 and len(server.requests) == 2
    record = json.loads((tmp_path / "trace.jsonl").read_text())
    assert record["ok"] is True and record["attempts"] == 2
    # a 429 on every try ends with the one-line error, after the tries allowed
    server = fake_openai(lambda body: (429, {"Retry-After": "0"}))
    with ChatModel(server.url, retries=1, retry_delay=0.01) as model, \
            pytest.raises(EndpointError, match=r"HTTP 429: scripted failure \(after 2 tries\)"):
        model.complete("hi")
    assert len(server.requests) == 2


def test_a_4xx_is_not_retried_and_an_unreachable_endpoint_is_named(fake_openai):
    server = fake_openai(lambda body: 400)
    with ChatModel(server.url, retry_delay=0.01) as model, pytest.raises(EndpointError, match="HTTP 400"):
        model.complete("hi")
    assert len(server.requests) == 1
    with ChatModel("http://127.0.0.1:9", model="m", retries=1, retry_delay=0.01, timeout=2) as model, \
            pytest.raises(EndpointError, match=r"127.0.0.1:9/v1/chat/completions: connection failed .*2 tries"):
        model.complete("hi")


def test_a_slow_endpoint_times_out(fake_openai):
    server = fake_openai(lambda body: "late", delay=2)
    start = time.monotonic()
    with ChatModel(server.url, model="fake", timeout=0.3, retries=0) as model:
        result = Agent(model).run("go")
    assert time.monotonic() - start < 2.5
    assert result.stopped == "error" and "no answer within 0.3 s" in result.error


def test_step_limit_and_task_timeout_end_the_loop(fake_openai):
    server = fake_openai(lambda body: {"tool_calls": [call("add", {"a": 1, "b": 1})]})
    with ChatModel(server.url) as model:
        result = Agent(model, [add], max_steps=3).run("loop forever")
    assert (result.stopped, result.steps, len(result.tool_calls)) == ("max_steps", 3, 3)
    assert len(server.requests) == 3

    server = fake_openai(lambda body: {"tool_calls": [call("hang", {})]})
    start = time.monotonic()
    with ChatModel(server.url) as model:
        result = Agent(model, [hang], timeout=1.0, tool_timeout=30, max_steps=50).run("hang")
    assert time.monotonic() - start < 3
    assert result.stopped == "timeout" and "over 1 s" in result.error
    assert "no result within" in result.tool_calls[0]["error"]


def test_memory_keeps_the_conversation_and_the_scratchpad_is_bounded(fake_openai):
    server = fake_openai(scripted({"tool_calls": [call("scratchpad", {"note": "user likes 7"})]},
                                  "ok", lambda body: "seen: " + body["messages"][0]["content"]))
    with ChatModel(server.url) as model:
        agent = Agent(model, scratchpad_chars=30)
        assert agent.run("remember 7").answer == "ok"
        assert agent.run("what do I like?").answer.endswith("Your scratchpad:\n- user likes 7")
    third = server.requests[2]["messages"]
    assert [m["role"] for m in third] == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert last_user(server.requests[2]) == "what do I like?"
    pad = agent.scratchpad
    pad.write("a" * 20)
    pad.write("b" * 20)
    assert list(pad.notes) == ["b" * 20] and sum(map(len, pad.notes)) <= 30
