"""Shared fixtures: a small corpus (standard-library files cut short, plus odd text) and a 512-token BPE trained on it."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from groundup.corpus import split_documents, stdlib_documents
from groundup.tokenizer import Tokenizer
from groundup.tokenizer import run as tokenizer_stage

VAL_FRACTION = 0.2

ODD_TEXTS = [
    "中文字符测试：你好，世界！这是一个测试。" * 3,
    "ภาษาไทยเป็นภาษาที่ไม่มีการเว้นวรรคระหว่างคำ สวัสดีครับ",
    "Emoji 👍🏽 👨\u200d👩\u200d👧 🇫🇷 🤖 and lone marks \u0301\u0308\u20dd, e\u0301 vs \u00e9.",
    "Numbers 0 1 22 333 4444 55555 1234567890 3.14159 1,000,000 ١٢٣ １２３",
    "Whitespace:\t\t\tTabs\n\n\n\nnewlines\r\n\r\n" + " " * 40 + "spaces\u00a0\u3000\u2028end",
    "Special strings are text: <|endoftext|> <|im_start|>user\nhi<|im_end|>",
]


def write_corpus(path: Path, n_stdlib: int, chars: int) -> Path:
    """A JSONL shard: the first ``n_stdlib`` standard-library files cut to ``chars`` characters, then odd text."""
    path.parent.mkdir(parents=True, exist_ok=True)
    texts = [doc.text[:chars] for doc in itertools.islice(stdlib_documents(), n_stdlib)] + ODD_TEXTS
    with open(path, "w", encoding="utf-8") as f:
        for text in texts:
            f.write(json.dumps({"text": text}) + "\n")
    return path


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "shard.jsonl", n_stdlib=120, chars=3000)


@pytest.fixture(scope="session")
def held_out_texts(corpus_file) -> list[str]:
    _, val = split_documents(str(corpus_file), val_fraction=VAL_FRACTION)
    assert len(val) >= 10  # enough held-out documents for the checks to mean something
    return [doc.text for doc in val]


@pytest.fixture(scope="session")
def tokenizer_dir(corpus_file, tmp_path_factory) -> Path:
    cfg = tokenizer_stage.Config(data=str(corpus_file), out=tmp_path_factory.mktemp("runs") / "tokenizer",
                                 vocab_size=512, val_fraction=VAL_FRACTION)
    return tokenizer_stage.run(cfg)


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir) -> Tokenizer:
    return Tokenizer.from_file(tokenizer_dir)
