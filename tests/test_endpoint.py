"""The shared HTTP client's retry rules, against a scripted server on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from groundup.endpoint import (
    ChatClient,
    EndpointError,
    EndpointSettings,
    RequestCounts,
    RetryPolicy,
    map_unordered,
    parse_retry_after,
    request,
)


class Scripted:
    """Answers the n-th request with ``script[n]`` (the last one repeats): an int status, ``(status,
    headers)``, ``"drop"`` (close the connection without an answer), ``("slow", s)`` or a reply text."""

    def __init__(self, *script):
        self.script = list(script)
        self.requests: list[dict] = []
        self.times: list[float] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append({"path": self.path, "body": body,
                                            "auth": self.headers.get("Authorization")})
                    server.times.append(time.monotonic())
                    step = server.script[min(len(server.requests), len(server.script)) - 1]
                if step == "drop":
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                headers = {}
                if isinstance(step, tuple) and step[0] == "slow":
                    time.sleep(step[1])
                    step = "late"
                if isinstance(step, tuple):
                    step, headers = step
                if isinstance(step, int):
                    data = json.dumps({"error": {"message": f"scripted {step}\nsecond line"}}).encode()
                    status = step
                else:
                    status = 200
                    data = json.dumps({"choices": [{"message": {"role": "assistant", "content": step},
                                                    "finish_reason": "stop"}],
                                       "usage": {"prompt_tokens": 11, "completion_tokens": 3}}).encode()
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def scripted():
    servers = []

    def make(*script):
        servers.append(Scripted(*script))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def fast(retries=3, **kw):
    return RetryPolicy(retries=retries, backoff_seconds=0.01, **kw)


def test_5xx_then_success_returns_the_reply_and_usage(scripted):
    server = scripted(503, 500, "hello")
    attempts = []
    reply = ChatClient(server.url, api_key="k", policy=fast()).complete("hi", model="m", max_tokens=5,
                                                                        on_attempt=attempts.append)
    assert (reply.content, reply.prompt_tokens, reply.completion_tokens, reply.attempts) == ("hello", 11, 3, 3)
    assert attempts == [0, 1, 2]
    assert server.requests[0]["path"] == "/v1/chat/completions" and server.requests[0]["auth"] == "Bearer k"
    assert server.requests[0]["body"]["max_tokens"] == 5 and server.requests[0]["body"]["model"] == "m"


def test_429_honours_retry_after_and_caps_it(scripted):
    server = scripted((429, {"Retry-After": "1"}), "ok")
    start = time.monotonic()
    assert ChatClient(server.url, policy=fast()).complete("hi", model="m").content == "ok"
    gap = server.times[1] - server.times[0]
    assert 0.9 <= gap < 3, gap  # the server's second, not the 0.01 s backoff
    # a Retry-After over the cap waits the cap
    server = scripted((429, {"Retry-After": "3600"}), "ok")
    start = time.monotonic()
    assert ChatClient(server.url, policy=fast(max_retry_after_seconds=0.2)).complete("x", model="m").content == "ok"
    assert time.monotonic() - start < 2


def test_a_4xx_fails_at_once_in_one_line_naming_url_status_and_message(scripted):
    server = scripted(400, "never")
    with pytest.raises(EndpointError) as info:
        ChatClient(server.url, policy=fast()).complete("hi", model="m")
    message = str(info.value)
    assert message == f"POST {server.url}/chat/completions: HTTP 400: scripted 400 second line"
    assert info.value.status == 400 and info.value.attempts == 1 and len(server.requests) == 1


def test_retries_are_bounded_and_the_error_says_how_many(scripted):
    server = scripted(502)
    with pytest.raises(EndpointError, match=r"HTTP 502: scripted 502 second line \(after 3 tries\)") as info:
        ChatClient(server.url, policy=fast(retries=2)).complete("hi", model="m")
    assert len(server.requests) == 3 and info.value.reason == "HTTP 502"


def test_timeouts_and_dropped_connections_are_retried(scripted):
    server = scripted(("slow", 1.0), "drop", "ok")
    reply = ChatClient(server.url, timeout=0.3, policy=fast()).complete("hi", model="m")
    assert reply.content == "ok" and reply.attempts == 3
    server = scripted(("slow", 1.0))
    with pytest.raises(EndpointError, match=r"no answer within 0.2 s \(after 2 tries\)") as info:
        ChatClient(server.url, timeout=0.2, policy=fast(retries=1)).complete("hi", model="m")
    assert info.value.reason == "timeout"


def test_a_refused_connection_is_retried_then_named():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(EndpointError, match=rf"127.0.0.1:{port}/v1/chat/completions: connection failed .*2 tries"):
        ChatClient(f"http://127.0.0.1:{port}/v1", policy=fast(retries=1)).complete("hi", model="m")


def test_backoff_doubles_and_is_capped():
    policy = RetryPolicy(retries=9, backoff_seconds=0.5, max_backoff_seconds=3)
    assert [policy.delay(i) for i in range(5)] == [0.5, 1, 2, 3, 3]
    assert policy.delay(0, "7") == 7 and RetryPolicy(max_retry_after_seconds=5).delay(0, "100") == 5
    assert parse_retry_after("2.5") == 2.5 and parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    now = time.time()
    assert parse_retry_after(formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    with pytest.raises(ValueError, match="retries must be an integer >= 0"):
        RetryPolicy(retries=-1)


def test_one_client_is_shared_by_threads(scripted):
    server = scripted(500, "ok")  # only the very first request fails
    client = ChatClient(server.url, policy=fast())
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(client.complete("q", model="m").content))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["ok"] * 8 and len(server.requests) == 9


def test_request_returns_any_2xx_as_is_with_its_headers(scripted):
    server = scripted("x")
    response = request("POST", server.url + "/chat/completions", body=b"{}", policy=fast())
    assert response.status == 200 and response.headers["Content-Type"] == "application/json"
    assert json.loads(response.body)["usage"]["prompt_tokens"] == 11


def test_the_judge_retries_through_the_shared_client(scripted):
    from groundup.evaluate.judge import Judge, JudgeConfig

    server = scripted((429, {"Retry-After": "0"}), 503, "Fair. Rating: [[7]]")
    judge = Judge(JudgeConfig(url=server.url, model="m", backoff_s=0.01))
    assert judge.score("Sky?", "blue")[0] == 7.0 and len(server.requests) == 3
    server = scripted(401)
    with pytest.raises(EndpointError, match=r"^POST .*/v1/chat/completions: HTTP 401: scripted 401 second line$"):
        Judge(JudgeConfig(url=server.url, model="m")).score("Sky?", "blue")
    assert len(server.requests) == 1


def test_the_stages_share_one_set_of_endpoint_settings_and_build_their_client_from_it(scripted):
    from groundup.curate import annotate, synth

    for stage in (annotate, synth):
        assert issubclass(stage.Config, EndpointSettings)
    assert synth.Config().timeout_seconds == 120.0 and annotate.Config().timeout_seconds == 60.0
    server = scripted(503, "x")
    cfg = annotate.Config(url=server.url, api_key="k", retries=1, backoff_seconds=0.01, timeout_seconds=7.0)
    client = cfg.client()
    assert client.timeout == 7.0 and client.policy.retries == 1 and client.headers["Authorization"] == "Bearer k"
    assert client.complete("Hi", model="m").attempts == 2
    with pytest.raises(ValueError, match="must start with http"):
        synth.Config(url="localhost:8000").client()


def test_request_counts_add_up_tries_tokens_and_failures_by_reason(scripted):
    good, bad = scripted(500, "hello"), scripted(502)
    counts = RequestCounts(stage="test")
    assert counts.complete(ChatClient(good.url, policy=fast()), "hi", "doc:1", model="m").content == "hello"
    assert counts.complete(ChatClient(bad.url, policy=fast(retries=1)), "hi", "doc:2", model="m") is None
    stats = counts.as_dict()
    assert (stats["requests"], stats["retries"], stats["prompt_tokens"], stats["completion_tokens"]) == (4, 2, 11, 3)
    assert stats["failed"] == {"HTTP 502 after 2 tries": 1}
    assert stats["failed_examples"] == ["doc:2: HTTP 502 after 2 tries"]


def test_map_unordered_yields_every_result_with_a_bounded_number_in_flight():
    lock, state = threading.Lock(), {"running": 0, "most": 0, "read": 0}

    def items():
        for i in range(40):
            state["read"] += 1
            yield i

    def work(i):
        with lock:
            state["running"] += 1
            state["most"] = max(state["most"], state["running"])
        time.sleep(0.002 * (i % 3))
        with lock:
            state["running"] -= 1
        return i * i

    results = []
    for r in map_unordered(work, items(), 3):
        results.append(r)
        assert state["read"] - len(results) <= 2 * 3 + 1  # items are read lazily, not all at once
    assert sorted(results) == [i * i for i in range(40)] and 1 < state["most"] <= 3

    def boom(i):
        if i == 5:
            raise ValueError("item 5 is bad")
        return i

    with pytest.raises(ValueError, match="item 5 is bad"):
        list(map_unordered(boom, range(10), 2))
