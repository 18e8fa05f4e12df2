"""Fixtures shared by the spine's tests: a small corpus, a 320-token BPE trained on it, its token shards."""

from __future__ import annotations

import importlib
import itertools
import json
import sys
from pathlib import Path

import pytest

from groundup.corpus import stdlib_documents

SPINE_VAL_FRACTION = 0.2
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="session")
def import_benchmark():
    """``import_benchmark(name)``: a script of ``benchmarks/`` as a module (that folder is on sys.path only while
    it imports, so its own imports of its neighbours work)."""

    def load(name: str):
        sys.path.insert(0, str(BENCHMARKS))
        try:
            return importlib.import_module(name)
        finally:
            sys.path.remove(str(BENCHMARKS))

    return load


@pytest.fixture(scope="session", autouse=True)
def probe_cache(tmp_path_factory):
    """The probe cache (where pretraining keeps its matmul peak) in a session folder, not the user's home;
    processes the tests start inherit it."""
    import os

    folder = tmp_path_factory.mktemp("probe_cache")
    before = os.environ.get("GROUNDUP_CACHE_DIR")
    os.environ["GROUNDUP_CACHE_DIR"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("GROUNDUP_CACHE_DIR", None)
    else:
        os.environ["GROUNDUP_CACHE_DIR"] = before


@pytest.fixture(scope="session")
def spine_corpus(tmp_path_factory) -> Path:
    """A JSONL shard of 80 standard-library files cut to 3,000 characters each."""
    path = tmp_path_factory.mktemp("spine_corpus") / "shard.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for doc in itertools.islice(stdlib_documents(), 80):
            f.write(json.dumps({"text": doc.text[:3000]}) + "\n")
    return path


@pytest.fixture(scope="session")
def spine_tokenizer(spine_corpus, tmp_path_factory) -> Path:
    from groundup.tokenizer import run as tokenizer_stage

    cfg = tokenizer_stage.Config(data=str(spine_corpus), out=tmp_path_factory.mktemp("spine") / "tokenizer",
                                 vocab_size=320, val_fraction=SPINE_VAL_FRACTION)
    return tokenizer_stage.run(cfg)


@pytest.fixture(scope="session")
def spine_tokens(spine_corpus, spine_tokenizer, tmp_path_factory) -> Path:
    from groundup.tokens import tokenize as tokenize_stage

    cfg = tokenize_stage.Config(data=str(spine_corpus), tokenizer=spine_tokenizer, workers=1,
                                out=tmp_path_factory.mktemp("spine") / "tokens", val_fraction=SPINE_VAL_FRACTION)
    return tokenize_stage.run(cfg)


@pytest.fixture(scope="session")
def spine_model(spine_tokenizer, tmp_path_factory) -> Path:
    """A tiny random Llama-style model dir over the spine tokenizer."""
    import torch

    from groundup.model.config import ModelConfig
    from groundup.model.io import save_model_dir
    from groundup.model.transformer import Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("tiny-llama", n_layer=1, n_embd=32, n_head=4, n_kv_head=2,
                                              vocab_size=320, block_size=64))
    return save_model_dir(tmp_path_factory.mktemp("spine") / "model", model, tokenizer_file=spine_tokenizer,
                          stage="test", config={})
