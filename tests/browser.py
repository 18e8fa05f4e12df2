"""Headless Chromium for the browser tests (Debian's package, driven by playwright; .ci/run installs it)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
"""Screenshots and figures a person (or CI's artifact upload) can look at."""


def chromium_or_skip() -> str:
    pytest.importorskip("playwright.sync_api", reason="playwright (python) is not installed: pip install playwright")
    path = CHROMIUM if CHROMIUM.is_file() else shutil.which("chromium")
    if not path:
        pytest.skip("no Chromium at /usr/bin/chromium (`apt-get install chromium`; .ci/run installs it)")
    return str(path)
