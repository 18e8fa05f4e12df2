"""Model dirs of every interop test shape, written once per session (tiny random weights, the spine tokenizer)."""

from __future__ import annotations

import pytest
from interop_helpers import CONFIGS, write_model_dir


@pytest.fixture(scope="session")
def interop_model_dirs(spine_tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("interop_models")
    return {name: write_model_dir(root / name, name, spine_tokenizer, seed=i) for i, name in enumerate(CONFIGS)}
