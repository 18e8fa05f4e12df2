"""A local OpenAI-compatible server for the annotation tests: scores by a fixed rule, counts what it saw.

The score of a document is the number of distinct words of ``EDU_WORDS`` in it (0-5). A document with
``PROSE`` gets a reply with no score; with ``FAIL500`` a 500 on its first request; with ``SLOW`` a reply
after ``slow_seconds`` on its first request (a timeout for the client). ``reply(prompt)``, when given,
writes the reply instead of the scoring rule (the synth tests). Runs on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

EDU_WORDS = ("theorem", "experiment", "lesson", "equation", "photosynthesis")


def rule_score(text: str) -> int:
    words = set(text.lower().split())
    return sum(w in words for w in EDU_WORDS)


def document_of(prompt: str) -> str:
    if "The extract:\n" in prompt:
        prompt = prompt.split("The extract:\n", 1)[1]
    return prompt.split("\n\nAfter examining", 1)[0]


class FakeLLM:
    def __init__(self, delay: float = 0.0, slow_seconds: float = 2.0, reply=None):
        self.seen: Counter[str] = Counter()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                doc = document_of(body["messages"][0]["content"])
                with server.lock:
                    server.seen[doc] += 1
                    first = server.seen[doc] == 1
                if delay:
                    time.sleep(delay)
                if "FAIL500" in doc and first:
                    self.send_response(500)
                    self.end_headers()
                    return
                if "SLOW" in doc and first:
                    time.sleep(slow_seconds)
                if reply is not None:
                    text = reply(body["messages"][0]["content"])
                else:
                    text = ("What a lovely page." if "PROSE" in doc
                            else f"The page is fine. **Educational score: {rule_score(doc)}**")
                data = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}],
                                   "usage": {"prompt_tokens": 100, "completion_tokens": 10}}).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeLLM:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
