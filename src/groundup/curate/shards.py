"""Shard tasks: which input files each task reads, what it writes, and its done-marker.

Input files are grouped, in sorted order, into tasks of about ``task_bytes`` (a big file is
a task of its own), so the split depends only on the inputs, never on the number of
workers. A task reads its files, runs the chain, and writes ``work/filtered/NNNNN.parquet``
(and the documents it dropped, if asked), then its marker ``work/tasks/NNNNN.json`` holding
its statistics and a fingerprint of its inputs and settings. Every file is written to a
temporary name and renamed, the marker last, so a task with a valid marker is complete; a
re-run skips it and reuses its statistics.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from groundup import __version__
from groundup.artifacts import read_json, write_json
from groundup.config import to_dict
from groundup.corpus import ReadStats
from groundup.curate.readers import read_file
from groundup.curate.recipe import RecipeConfig
from groundup.curate.steps import Chain, Step
from groundup.curate.text import Document
from groundup.curate.writers import DROPPED_COLUMNS, ParquetShardWriter, document_row

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReaderSettings:
    """The reading part of the curate stage's Config, handed to each shard task (defaults live there)."""

    fmt: str | None
    text_field: str
    url_field: str
    warc_backend: str
    verify_digests: bool
    max_document_bytes: int


@dataclass(frozen=True)
class ShardTask:
    index: int
    files: tuple[str, ...]
    work_dir: str
    dropped_dir: str | None
    reader: ReaderSettings
    steps: tuple[Step, ...]
    """The recipe's steps, built once by the caller: a task carries the step objects (not their names), so
    a step registered in the calling process runs in any worker, spawned or on a Ray cluster."""
    fingerprint: str

    @property
    def name(self) -> str:
        return shard_name(self.index)


def shard_name(index: int) -> str:
    return f"{index:05d}"


def plan_tasks(files: list[Path], task_bytes: int) -> list[list[Path]]:
    """Consecutive files grouped up to ``task_bytes`` each (a file over it is a task alone)."""
    groups: list[list[Path]] = []
    current: list[Path] = []
    size = 0
    for path in files:
        n = path.stat().st_size
        if current and size + n > task_bytes:
            groups.append(current)
            current, size = [], 0
        current.append(path)
        size += n
    if current:
        groups.append(current)
    return groups


def fingerprint(files: list[Path], reader: ReaderSettings, recipe: RecipeConfig) -> str:
    """Identity of a task's work: its files (name, size, mtime), reader and recipe settings, version."""
    h = hashlib.sha256()
    for path in files:
        st = path.stat()
        h.update(f"{path}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    h.update(json.dumps([to_dict(reader), to_dict(recipe), __version__], sort_keys=True).encode())
    return h.hexdigest()[:20]


def filtered_path(work_dir: Path, index: int) -> Path:
    return Path(work_dir) / "filtered" / f"{shard_name(index)}.parquet"


def marker_path(work_dir: Path, index: int) -> Path:
    return Path(work_dir) / "tasks" / f"{shard_name(index)}.json"


def read_marker(work_dir: Path, index: int, expected: str) -> dict | None:
    """The task's result if it completed under the same fingerprint, else None."""
    path = marker_path(work_dir, index)
    if not path.is_file() or not filtered_path(work_dir, index).is_file():
        return None
    try:
        result = read_json(path)
    except (OSError, ValueError):
        return None
    return result if result.get("fingerprint") == expected else None


def process_shard(task: ShardTask) -> dict:
    """Read, filter and redact one task's files; write its filtered shard and marker; return its statistics."""
    work_dir = Path(task.work_dir)
    read_stats = ReadStats()
    chain = Chain(task.steps)
    out = filtered_path(work_dir, task.index)
    dropped_writer = None
    if task.dropped_dir is not None:
        dropped_writer = ParquetShardWriter(Path(task.dropped_dir) / f"{task.name}.parquet", DROPPED_COLUMNS)

    def on_drop(doc: Document, step: str, reason: str) -> None:
        if dropped_writer is not None:
            row = document_row(doc)
            row.update(step=step, reason=reason)
            dropped_writer.write(row)

    rows = 0
    nbytes = 0
    try:
        with ParquetShardWriter(out) as writer:
            for name in task.files:
                path = Path(name)
                r = task.reader
                docs = read_file(path, read_stats, fmt=r.fmt, text_field=r.text_field, url_field=r.url_field,
                                 warc_backend=r.warc_backend, verify_digests=r.verify_digests,
                                 max_document_bytes=r.max_document_bytes)
                for doc in chain.run(docs, on_drop):
                    writer.write(document_row(doc))
                    rows += 1
                    nbytes += doc.nbytes
        if dropped_writer is not None:
            dropped_writer.close()
    except BaseException:
        if dropped_writer is not None:
            dropped_writer.abort()
        raise
    result = {
        "index": task.index,
        "files": list(task.files),
        "fingerprint": task.fingerprint,
        "read": read_stats.as_dict(),
        "steps": chain.stats.as_dict(),
        "documents": rows,
        "bytes": nbytes,
    }
    marker = marker_path(work_dir, task.index)
    marker.parent.mkdir(parents=True, exist_ok=True)
    write_json(marker, result)
    return result
