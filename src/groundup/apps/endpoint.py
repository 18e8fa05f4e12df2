"""Where the model is: a URL of an OpenAI-compatible endpoint as given, or a model dir served for the
duration by ``groundup serve`` in a child process on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from groundup.apps.trace import AppError


def is_url(model: str) -> bool:
    return model.startswith(("http://", "https://"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def endpoint(model: str | Path, *, start_timeout: float = 120.0, device: str = "cpu") -> Iterator[str]:
    """Yield a base URL for ``model``: the URL itself, or that of a ``groundup serve`` started on the
    model dir (stopped on exit). A server that exits or is not healthy within ``start_timeout`` seconds
    raises AppError with the end of its log."""
    text = str(model)
    if is_url(text):
        yield text
        return
    if not (Path(text) / "config.json").is_file():
        raise AppError(f"--model {text}: neither an http(s) URL nor a model dir (no config.json there)")
    port = free_port()
    command = [sys.executable, "-m", "groundup", "serve", "--model", text, "--port", str(port),
               "--device", device, "--log_level", "warning"]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_healthy(process, url, start_timeout, log)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_healthy(process: subprocess.Popen, url: str, timeout: float, log) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AppError(f"groundup serve exited with status {process.returncode} before it was ready: "
                           f"{_tail(log)}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AppError(f"groundup serve at {url} was not healthy within {timeout:g} s: {_tail(log)}")


def _tail(log) -> str:
    log.seek(0)
    lines = log.read().decode("utf-8", "replace").strip().splitlines()
    return " | ".join(lines[-3:]) or "(no output)"
