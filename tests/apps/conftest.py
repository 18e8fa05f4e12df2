"""The apps' tests' fixture: a scripted OpenAI-compatible server (fake_openai.py) per test."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fake_openai import FakeOpenAI


@pytest.fixture
def fake_openai():
    """``fake_openai(script, delay=0)`` starts a FakeOpenAI, closed after the test."""
    servers: list[FakeOpenAI] = []

    def make(script: Callable[[dict], Any], **kwargs) -> FakeOpenAI:
        servers.append(FakeOpenAI(script, **kwargs))
        return servers[-1]

    yield make
    for server in servers:
        server.close()
