"""The chat page at ``/``: served without the key and without outside assets, and used in headless Chromium.

In the browser: a message is sent and its tokens stream onto the page, a generation is stopped, a tool call
is rendered and its result sent back. The delay from the server writing a chunk to the page showing it is
measured for every streamed chunk and written to ``test-artifacts/chat_page_latency.json`` (p50, p99).
"""

from __future__ import annotations

import json
import re
import statistics
import threading
import time

import httpx
import pytest

from browser import ARTIFACTS, CHROMIUM_ARGS, chromium_or_skip
from groundup.serve import streaming

CALC = [{"type": "function", "function": {"name": "calc", "description": "Evaluate an arithmetic expression",
                                          "parameters": {"type": "object", "required": ["expression"],
                                                         "properties": {"expression": {"type": "string",
                                                                                       "maxLength": 8}}}}}]


def test_page_is_served_without_the_key_and_loads_nothing_from_elsewhere(keyed_server):
    page = httpx.get(keyed_server.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    html = page.text
    assert "<title>groundup chat</title>" in html
    # no script, style, font or image from another origin: every src/href is absent or a link the model wrote
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "@import" not in html and "url(" not in html
    # the API itself still needs the key
    assert httpx.get(keyed_server.url + "/v1/models").status_code == 401


@pytest.fixture(scope="module")
def page_server(make_live_server, serve_tools_dir):
    """A server whose engine steps at most every 15 ms, so that a generation lasts long enough to be stopped."""
    server = make_live_server(serve_tools_dir, served_model_name="tiny", engine={"max_seqs": 4})
    engine = server.state.engine
    step = engine._decode_step

    def slow_step():
        time.sleep(0.015)
        step()

    engine._decode_step = slow_step
    return server


@pytest.fixture
def sent_chunks(monkeypatch):
    """(epoch seconds, data) of every server-sent event, taken as the server writes it."""
    sent: list[tuple[float, str]] = []
    lock = threading.Lock()
    real = streaming.sse

    def timed(data):
        line = real(data)
        with lock:
            sent.append((time.time(), line))
        return line

    monkeypatch.setattr(streaming, "sse", timed)
    return sent


def open_page(p, url: str):
    browser = p.chromium.launch(executable_path=chromium_or_skip(), args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": 1200, "height": 850})
    problems: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(url + "/", wait_until="load")
    wait_until(page, "document.getElementById('model').textContent === 'tiny'")
    return browser, page, problems, requests


def wait_until(page, js: str, timeout: float = 30.0) -> None:
    """Poll ``js`` in the page until it is true (the page's Content-Security-Policy forbids
    playwright's eval-based ``wait_for_function``, and the test keeps that policy on)."""
    deadline = time.time() + timeout
    while not page.evaluate(js):
        if time.time() > deadline:
            raise AssertionError(f"not true after {timeout} s: {js}")
        time.sleep(0.02)


def streamed_text(line: str) -> str:
    """The text a server-sent event adds to the answer ('' for role, tool-call, usage and [DONE] events)."""
    data = line.removeprefix("data: ").strip()
    if not data.startswith("{"):
        return ""
    choices = json.loads(data).get("choices") or [{}]
    return (choices[0].get("delta") or {}).get("content") or ""


def test_chat_page_streams_stops_and_renders_tool_calls(page_server, sent_chunks):
    chromium_or_skip()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser, page, problems, requests = open_page(p, page_server.url)
        try:
            # 1. a message: tokens stream onto the page (greedy: a random model that ends its turn early in
            # a sampled answer would leave nothing to stop below)
            page.fill("#temperature", "0")
            page.fill("#max_tokens", "120")
            page.fill("#input", "Tell me about **bold** things.")
            page.press("#input", "Enter")
            wait_until(page, "document.querySelectorAll('.msg.assistant').length === 1")
            wait_until(page, "document.querySelector('.msg.assistant').dataset.state === 'done'")
            assert page.inner_text(".msg.user .body") == "Tell me about **bold** things."  # the user's text is not markdown
            assert len(page.inner_text(".msg.assistant .body")) > 0
            shown = page.evaluate("window.groundupChat.shown")
            contents = [s for s in shown if s["kind"] == "content"]
            assert len(contents) >= 10
            assert contents[-1]["t"] - contents[0]["t"] > 100  # arrived over time, not all at once (15 ms steps)
            # the delay from the server writing each content chunk to the page showing it
            written = [t for t, line in sent_chunks if streamed_text(line)]
            assert len(written) == len(contents)
            delays = sorted(s["t"] - w * 1000 for s, w in zip(contents, written, strict=True))
            assert delays[0] > -50  # same clock on both sides (a little slack for its resolution)
            figures = {"chunks": len(delays), "p50_ms": round(statistics.median(delays), 2),
                       "p99_ms": round(delays[min(len(delays) - 1, int(0.99 * len(delays)))], 2),
                       "max_ms": round(delays[-1], 2)}
            ARTIFACTS.mkdir(exist_ok=True)
            (ARTIFACTS / "chat_page_latency.json").write_text(json.dumps(figures, indent=1))
            print("chat page: server chunk -> shown on the page", figures)

            # 2. stop: the stream ends, the text stops growing, and the server cancels the request
            cancelled = page_server.state.engine.stats.requests_cancelled
            page.fill("#max_tokens", "1000")
            page.fill("#input", "Go on for a long time.")
            page.press("#input", "Enter")
            wait_until(page, """() => { const m = document.querySelectorAll('.msg.assistant');
                                              return m.length === 2 && m[1].querySelector('.body').textContent.length > 20; }""")
            assert page.is_enabled("#stop") and not page.is_enabled("#send")
            page.click("#stop")
            wait_until(page, "document.querySelectorAll('.msg.assistant')[1].dataset.state === 'stopped'")
            stopped_at = page.evaluate("document.querySelectorAll('.msg.assistant')[1].querySelector('.body').textContent")
            time.sleep(0.3)
            assert page.evaluate("document.querySelectorAll('.msg.assistant')[1].querySelector('.body').textContent") \
                == stopped_at
            assert page.evaluate("document.querySelectorAll('.msg.assistant')[1].querySelector('.meta').textContent") \
                .startswith("stopped")
            assert page.is_enabled("#send") and not page.is_enabled("#stop")
            deadline = time.time() + 10
            while page_server.state.engine.stats.requests_cancelled == cancelled and time.time() < deadline:
                time.sleep(0.05)
            assert page_server.state.engine.stats.requests_cancelled == cancelled + 1

            # 3. tools: a required call is rendered with its arguments, and its result goes back to the model
            page.click("#clear")
            page.fill("#tools", json.dumps(CALC))
            page.select_option("#tool_choice", "required")
            page.fill("#max_tokens", "200")
            page.fill("#input", "What is 6*7?")
            page.press("#input", "Enter")
            wait_until(page, "document.querySelector('.msg.assistant .tool-call form') !== null")
            assert page.inner_text(".tool-call .name") == "calc"
            arguments = json.loads(page.inner_text(".tool-call pre"))
            assert set(arguments) == {"expression"} and isinstance(arguments["expression"], str)
            page.select_option("#tool_choice", "none")
            page.fill(".tool-call input.result", "42")
            page.click(".tool-call form button")
            wait_until(page, "document.querySelector('.msg.tool') !== null")
            assert page.inner_text(".msg.tool .body") == "42"
            wait_until(page, """() => { const m = document.querySelectorAll('.msg.assistant');
                                              return m.length === 2 && m[1].dataset.state === 'done'; }""")
            # the second request carried the call and its result, as OpenAI's API takes them
            history = page.evaluate("window.groundupChat.lastBody.messages")
            assert [m["role"] for m in history] == ["user", "assistant", "tool"]
            assert history[1]["tool_calls"][0]["function"]["name"] == "calc"
            assert history[2] == {"role": "tool", "tool_call_id": history[1]["tool_calls"][0]["id"], "content": "42"}
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "chat-page.png"), full_page=True)

            # 4. markdown: code kept verbatim, model text never becomes HTML
            html = page.evaluate("window.groundupChat.renderMarkdown('# Title\\n**b** `x<y`\\n```py\\nif a<b:\\n  "
                                 "pass\\n```\\n- one\\n- two\\n<script>alert(1)</script>')")
            assert "<h1>Title</h1>" in html and "<strong>b</strong>" in html and "<code>x&lt;y</code>" in html
            assert '<pre><code class="language-py">if a&lt;b:\n  pass</code></pre>' in html
            assert "<ul><li>one</li><li>two</li></ul>" in html
            assert "<script>" not in html and "&lt;script&gt;" in html
        finally:
            browser.close()
    assert problems == []
    assert all(u.startswith(page_server.url) for u in requests), requests
