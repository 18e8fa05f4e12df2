"""The tokenizer stage: train a byte-level BPE on the training split of a corpus.

Training is :mod:`groundup.tokenizer.train`'s deterministic trainer: the same text and settings give a
byte-identical ``tokenizer.json`` in any process. Writes ``tokenizer.json`` (Hugging Face ``tokenizers``
format), ``stats.json`` (compression and round-trip checks on the held-out split, which training never
sees), ``config.yaml`` and ``manifest.json``, all into one directory that appears atomically.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import tokenizers
from tokenizers import Regex

from groundup import config as configlib
from groundup.artifacts import TOKENIZER_FILES, atomic_dir, prepare_out, write_json, write_manifest
from groundup.corpus import STDLIB, Document, ReadStats, describe_stdlib, load_documents, split_of
from groundup.tokenizer import SPECIAL_TOKENS, Tokenizer, build_tiktoken, bytes_to_unicode, resolve_pattern
from groundup.tokenizer.metrics import tokenizer_stats
from groundup.tokenizer.train import train_tokenizer

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Config:
    """Train a byte-level BPE tokenizer on the training split of a corpus (deterministic: the same text and
    settings give the same tokenizer.json, in the Hugging Face tokenizers format)."""

    data: str = STDLIB
    """Text to train on: 'stdlib' (the embedded corpus) or a file or folder of .parquet/.jsonl/.txt shards."""
    out: Path = Path("runs/tokenizer")
    """Output directory (tokenizer.json, stats.json, config.yaml, manifest.json)."""
    vocab_size: int = 8192
    """Vocabulary size, the 256 byte tokens and the special tokens included."""
    pattern: str = "gpt4"
    """Pre-tokenization split: 'gpt4' (cl100k's regex: digits in groups of at most 3), 'gpt2', 'digits' (gpt4 with one digit a piece), or a regex."""
    val_fraction: float = 0.05
    """Share of documents (by a hash of their id) held out: never trained on, used for stats.json."""
    max_bytes: int | None = None
    """Train on at most this many bytes of text (the first ones, in corpus order); None: all of it."""
    min_frequency: int = 2
    """A pair must occur at least this often to be merged (training stops before the vocabulary is full otherwise)."""
    text_field: str = "text"
    """Field (JSONL) or column (Parquet) that holds the text."""
    overwrite: bool = False
    """Write into a non-empty `out` that is not an earlier output of this stage (entries with this stage's names
    are replaced, nothing else is removed; `out` may never hold or lie inside the stage's input)."""


def check_config(cfg: Config) -> str:
    """Validate ``cfg`` before any reading; returns the split regex."""
    smallest = 256 + len(SPECIAL_TOKENS)
    if cfg.vocab_size <= smallest:
        raise ValueError(f"vocab_size must exceed {smallest} (256 bytes + {len(SPECIAL_TOKENS)} special tokens), "
                         f"got {cfg.vocab_size}")
    if cfg.max_bytes is not None and cfg.max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive or None, got {cfg.max_bytes}")
    if cfg.min_frequency < 1:
        raise ValueError(f"min_frequency must be at least 1, got {cfg.min_frequency}")
    split_of("", cfg.val_fraction)  # raises on a fraction outside [0, 1)
    pattern = resolve_pattern(cfg.pattern)
    try:
        Regex(pattern)
    except Exception as e:
        raise ValueError(f"pattern {cfg.pattern!r} is not a regex tokenizers accepts: {e}") from e
    # tiktoken must read the regex the same way, or the fast encoder cannot be used.
    spec = {"model": {"type": "BPE", "vocab": {}},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}]}}
    spec["model"]["vocab"] = {c: b for b, c in bytes_to_unicode().items()}
    try:
        build_tiktoken(spec)
    except ValueError as e:
        raise ValueError(f"pattern {cfg.pattern!r} is not usable by tiktoken: {e}") from e
    return pattern


HELD_OUT_STATS_BYTES = 64_000_000
"""stats.json measures at most this much held-out text (the first documents), so memory stays bounded."""


def training_texts(documents: Iterator[Document], *, val_fraction: float, max_bytes: int | None,
                   held_out: list[str], counts: dict[str, int],
                   held_out_limit: int = HELD_OUT_STATS_BYTES) -> Iterator[str]:
    """Texts of the training split (up to ``max_bytes``); held-out texts go to ``held_out`` instead.

    A generator, so training streams over the corpus; ``counts`` gathers documents and bytes.
    """
    budget, held_out_bytes = max_bytes, 0
    for doc in documents:
        if split_of(doc.id, val_fraction) == "val":
            if held_out_bytes < held_out_limit:
                held_out.append(doc.text)
                held_out_bytes += len(doc.text.encode("utf-8"))
            continue
        text, size = doc.text, len(doc.text.encode("utf-8"))
        if budget is not None:
            if budget <= 0:
                continue  # keep reading: the held-out split is still wanted whole
            if size > budget:
                # The last document is cut at the budget, back to a whole character.
                text = doc.text.encode("utf-8")[:budget].decode("utf-8", errors="ignore")
                size, budget = len(text.encode("utf-8")), 0
            else:
                budget -= size
        counts["documents"] += 1
        counts["bytes"] += size
        yield text


def run(cfg: Config) -> Path:
    pattern = check_config(cfg)
    previous = prepare_out(cfg.out, stage="tokenizer", inputs=[None if cfg.data == STDLIB else cfg.data],
                           overwrite=cfg.overwrite)
    read_stats = ReadStats()
    held_out: list[str] = []
    counts = {"documents": 0, "bytes": 0}
    texts = training_texts(load_documents(cfg.data, text_field=cfg.text_field, stats=read_stats),
                           val_fraction=cfg.val_fraction, max_bytes=cfg.max_bytes, held_out=held_out, counts=counts)
    t0 = time.perf_counter()
    hf = train_tokenizer(texts, pattern=pattern, vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency,
                         progress=True)
    train_seconds = time.perf_counter() - t0
    if counts["bytes"] == 0:
        raise ValueError(f"no text to train a tokenizer on in {cfg.data!r}: {read_stats.documents} documents read "
                         f"({len(held_out)} held out), {sum(read_stats.skipped.values())} records skipped")
    log.info("trained a %d-token BPE on %s documents (%.1f MB) in %.1f s", hf.get_vocab_size(),
             f"{counts['documents']:,}", counts["bytes"] / 1e6, train_seconds)

    tokenizer = Tokenizer(tokenizers.Tokenizer.from_str(hf.to_str()), name=str(cfg.out))
    stats = {
        **tokenizer_stats(tokenizer, held_out),
        "pattern": cfg.pattern,
        "train": {**counts, "seconds": round(train_seconds, 2)},
        "read": read_stats.as_dict(),
    }
    if tokenizer.backend != "tiktoken":
        log.warning("the fast encoder could not be built; encoding will use tokenizers")

    with atomic_dir(cfg.out, previous=previous, names=TOKENIZER_FILES) as tmp:
        hf.save(str(tmp / "tokenizer.json"))
        write_json(tmp / "stats.json", stats)
        configlib.save(cfg, tmp / "config.yaml")
        data_input = {} if cfg.data == STDLIB else {"data": cfg.data}
        write_manifest(tmp, stage="tokenizer", config=configlib.to_dict(cfg), inputs=data_input,
                       extra={"corpus": describe_stdlib()} if cfg.data == STDLIB else None)
    held = stats["held_out"]
    log.info("tokenizer written to %s: %s bytes/token, %s tokens/word on held-out text", cfg.out,
             held["bytes_per_token"], held["tokens_per_word"])
    return Path(cfg.out)
