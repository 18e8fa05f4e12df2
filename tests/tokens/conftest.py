"""Shared fixtures: a small JSONL corpus, a 300-token BPE trained on it, and its tokens dir."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from groundup.corpus import stdlib_documents
from groundup.tokenizer import run as tokenizer_stage
from groundup.tokens import tokenize as tokenize_stage

VAL_FRACTION = 0.2

EXTRA_TEXTS = [
    "中文 ภาษาไทย 👍🏽 e\u0301 <|endoftext|> is plain text here.",
    "",  # an empty document: dropped, not written as a lone EOS
    "x = 1234567\n\n\n\t\tdone  ",
]


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "shard.jsonl"
    texts = [doc.text[:2000] for doc in itertools.islice(stdlib_documents(), 60)] + EXTRA_TEXTS
    with open(path, "w", encoding="utf-8") as f:
        for text in texts:
            f.write(json.dumps({"text": text}) + "\n")
    return path


@pytest.fixture(scope="session")
def tokenizer_dir(corpus_file, tmp_path_factory) -> Path:
    cfg = tokenizer_stage.Config(data=str(corpus_file), out=tmp_path_factory.mktemp("runs") / "tokenizer",
                                 vocab_size=300, val_fraction=VAL_FRACTION)
    return tokenizer_stage.run(cfg)


@pytest.fixture(scope="session")
def tokenize_config(corpus_file, tokenizer_dir):
    """A factory of tokenize configs over the shared corpus and tokenizer (one worker unless changed)."""

    def make(out: Path, **changes) -> tokenize_stage.Config:
        settings = {"data": str(corpus_file), "tokenizer": tokenizer_dir, "out": out, "val_fraction": VAL_FRACTION,
                    "workers": 1, **changes}
        return tokenize_stage.Config(**settings)

    return make


@pytest.fixture(scope="session")
def tokens_dir(tokenize_config, tmp_path_factory) -> Path:
    return tokenize_stage.run(tokenize_config(tmp_path_factory.mktemp("runs") / "tokens"))
