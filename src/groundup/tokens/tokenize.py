"""The tokenize stage: text shards and a tokenizer in, flat token files out.

Writes ``train.bin`` and ``val.bin`` (token ids as one flat array, uint16 when the vocabulary
fits, else uint32, with the EOS id after every document), ``meta.json`` (dtype, counts, the
UTF-8 bytes behind each split for bits per byte, the tokenizer's fingerprint), ``config.yaml``
and ``manifest.json``. The held-out split is chosen by document id exactly as the tokenizer
stage chose it, so held-out text is unseen by both.

Documents are grouped into chunks of about ``chunk_bytes``, encoded by a pool of processes
and written in input order as they come back, so the files are the same for any number of
workers and memory stays bounded by a few chunks.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from groundup import config as configlib
from groundup.artifacts import (
    TOKENS_FILES,
    atomic_dir,
    find_tokenizer_file,
    prepare_out,
    write_json,
    write_manifest,
)
from groundup.corpus import STDLIB, Document, ReadStats, load_documents, split_of
from groundup.processes import pool_context
from groundup.tokenizer import Tokenizer

log = logging.getLogger(__name__)

SPLITS = ("train", "val")


@dataclass(kw_only=True)
class Config:
    """Tokenize text shards into train.bin / val.bin (flat token ids, documents separated by EOS)."""

    data: str = STDLIB
    """Text to tokenize: 'stdlib' (the embedded corpus) or a file or folder of .parquet/.jsonl/.txt shards."""
    tokenizer: Path = Path("runs/tokenizer")
    """Tokenizer dir (from `groundup tokenizer`), model dir, or tokenizer.json."""
    out: Path = Path("runs/tokens")
    """Output directory (train.bin, val.bin, meta.json, config.yaml, manifest.json)."""
    val_fraction: float = 0.05
    """Share of documents (by a hash of their id) written to val.bin; use the tokenizer stage's value."""
    workers: int | None = None
    """Encoding processes (None: one per CPU core; 1: encode in this process)."""
    chunk_bytes: int = 1 << 20
    """Documents are handed to workers in chunks of about this many characters."""
    text_field: str = "text"
    """Field (JSONL) or column (Parquet) that holds the text."""
    overwrite: bool = False
    """Write into a non-empty `out` that is not an earlier output of this stage (entries with this stage's names
    are replaced, nothing else is removed; `out` may never hold or lie inside the stage's input)."""


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits in 16 bits (half the disk and memory), else uint32."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    if vocab_size > 2**32:
        raise ValueError(f"vocab_size {vocab_size} does not fit in uint32")
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def chunk_documents(documents: Iterable[Document], *, val_fraction: float,
                    chunk_bytes: int) -> Iterator[list[tuple[str, str]]]:
    """Lists of ``(split, text)`` of about ``chunk_bytes`` characters each, in corpus order; empty texts dropped."""
    chunk: list[tuple[str, str]] = []
    size = 0
    for doc in documents:
        if not doc.text:
            continue
        chunk.append((split_of(doc.id, val_fraction), doc.text))
        size += len(doc.text)
        if size >= chunk_bytes:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


@dataclass
class ChunkResult:
    """One chunk's tokens per split (EOS after each document) with its document and byte counts."""

    tokens: dict[str, np.ndarray]
    documents: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))
    bytes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SPLITS, 0))


def encode_documents(tokenizer: Tokenizer, chunk: list[tuple[str, str]], *, eos_id: int,
                     dtype: np.dtype) -> ChunkResult:
    """Encode a chunk: each split's documents as one array, ``eos_id`` after each document."""
    ids: dict[str, list[int]] = {split: [] for split in SPLITS}
    result = ChunkResult(tokens={})
    for split, text in chunk:
        ids[split] += tokenizer.encode(text)
        ids[split].append(eos_id)
        result.documents[split] += 1
        result.bytes[split] += len(text.encode("utf-8"))
    result.tokens = {split: np.array(ids[split], dtype=dtype) for split in SPLITS}
    return result


# Per-process encoder, built once by the pool's initializer (and in-process when workers == 1).
_worker: dict[str, Any] = {}


def _init_worker(tokenizer_file: str) -> None:
    tokenizer = Tokenizer.from_file(tokenizer_file)
    _worker.update(tokenizer=tokenizer, eos_id=tokenizer.eos_id, dtype=token_dtype(tokenizer.vocab_size))


def _encode_chunk(chunk: list[tuple[str, str]]) -> ChunkResult:
    return encode_documents(_worker["tokenizer"], chunk, eos_id=_worker["eos_id"], dtype=_worker["dtype"])


T = TypeVar("T")
R = TypeVar("R")


def ordered_map(fn: Callable[[T], R], items: Iterable[T], *, workers: int, initializer: Callable[..., None],
                initargs: tuple = (), max_pending: int | None = None) -> Iterator[R]:
    """``fn`` over ``items`` in a process pool, results in input order, at most ``max_pending`` in flight.

    ``Pool.imap`` would also keep order, but its feeder thread reads the whole input ahead of the
    workers; bounding the tasks in flight keeps memory at a few chunks for any corpus size.
    """
    if workers <= 1:
        initializer(*initargs)
        for item in items:
            yield fn(item)
        return
    ctx = pool_context()
    max_pending = max_pending or 2 * workers
    with ctx.Pool(workers, initializer=initializer, initargs=initargs) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.apply_async(fn, (item,)))
            if len(pending) >= max_pending:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(cfg: Config) -> Path:
    tokenizer_file = find_tokenizer_file(cfg.tokenizer)
    previous = prepare_out(cfg.out, stage="tokenize", overwrite=cfg.overwrite,
                           inputs=[cfg.tokenizer, None if cfg.data == STDLIB else cfg.data])
    tokenizer = Tokenizer.from_file(tokenizer_file)
    eos_id = tokenizer.eos_id
    if eos_id is None:
        raise ValueError(f"{tokenizer_file}: the vocabulary has no end-of-text token (<|endoftext|>) "
                         f"to separate documents")
    dtype = token_dtype(tokenizer.vocab_size)
    split_of("", cfg.val_fraction)  # raises on a fraction outside [0, 1)
    if cfg.chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be positive, got {cfg.chunk_bytes}")
    workers = cfg.workers or os.cpu_count() or 1
    log.info("tokenizing %s with %s (%s, %d ids, %s) in %d processes", cfg.data, tokenizer_file,
             tokenizer.backend, tokenizer.vocab_size, dtype.name, workers)

    from tqdm.auto import tqdm

    read_stats = ReadStats()
    chunks = chunk_documents(load_documents(cfg.data, text_field=cfg.text_field, stats=read_stats),
                             val_fraction=cfg.val_fraction, chunk_bytes=cfg.chunk_bytes)
    tokens = dict.fromkeys(SPLITS, 0)
    documents = dict.fromkeys(SPLITS, 0)
    n_bytes = dict.fromkeys(SPLITS, 0)
    t0 = time.perf_counter()
    with atomic_dir(cfg.out, previous=previous, names=TOKENS_FILES) as tmp:
        files = {split: open(tmp / f"{split}.bin", "wb") for split in SPLITS}  # noqa: SIM115 (closed below)
        try:
            with tqdm(desc="tokenize", unit="B", unit_scale=True, unit_divisor=1024, disable=None) as bar:
                for result in ordered_map(_encode_chunk, chunks, workers=workers, initializer=_init_worker,
                                          initargs=(str(tokenizer_file),)):
                    for split in SPLITS:
                        result.tokens[split].tofile(files[split])
                        tokens[split] += len(result.tokens[split])
                        documents[split] += result.documents[split]
                        n_bytes[split] += result.bytes[split]
                    bar.update(sum(result.bytes.values()))
        finally:
            for f in files.values():
                f.close()
        seconds = time.perf_counter() - t0
        if sum(n_bytes.values()) == 0:
            raise ValueError(f"no text to tokenize in {cfg.data!r}: {read_stats.documents} documents read, "
                             f"{sum(read_stats.skipped.values())} records skipped")
        if documents["val"] == 0 and cfg.val_fraction > 0:
            log.warning("no document of %s fell in the held-out split (val_fraction=%s): val.bin is empty",
                        cfg.data, cfg.val_fraction)
        meta = {
            "dtype": dtype.name,
            "vocab_size": tokenizer.vocab_size,
            "eos_id": eos_id,
            "tokens": tokens,
            "documents": documents,
            "bytes": n_bytes,
            "note": "tokens include one EOS after each document; bytes are the documents' UTF-8 bytes",
            "tokenizer": str(tokenizer_file),
            "tokenizer_sha256": file_sha256(tokenizer_file),
            "encoder": tokenizer.backend,
            "data": cfg.data,
            "val_fraction": cfg.val_fraction,
            "read": read_stats.as_dict(),
            "workers": workers,
            "seconds": round(seconds, 3),
            "megabytes_per_second": round(sum(n_bytes.values()) / 1e6 / max(seconds, 1e-9), 3),
        }
        write_json(tmp / "meta.json", meta)
        configlib.save(cfg, tmp / "config.yaml")
        inputs: dict[str, str | Path] = {"tokenizer": Path(cfg.tokenizer)}
        if cfg.data != STDLIB:
            inputs["data"] = cfg.data
        # The embedded corpus is identified by the Python version the manifest records (describe_stdlib()
        # would walk the whole standard library again, a large share of this stage's time).
        write_manifest(tmp, stage="tokenize", config=configlib.to_dict(cfg), inputs=inputs)
    log.info("wrote %s: %s train and %s held-out tokens (%.1f MB/s)", cfg.out, f"{tokens['train']:,}",
             f"{tokens['val']:,}", meta["megabytes_per_second"])
    return Path(cfg.out)
