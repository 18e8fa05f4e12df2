"""Fixtures for fine-tuning tests: tiny base model dirs over the spine tokenizer, one torch thread."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from finetune_helpers import make_base


@pytest.fixture(scope="session")
def base_llama(spine_tokenizer, tmp_path_factory) -> Path:
    return make_base(tmp_path_factory.mktemp("ft") / "base-llama", spine_tokenizer, "llama")


@pytest.fixture(scope="session")
def base_gpt2(spine_tokenizer, tmp_path_factory) -> Path:
    return make_base(tmp_path_factory.mktemp("ft") / "base-gpt2", spine_tokenizer, "gpt2")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train fastest on one thread, and other processes share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
