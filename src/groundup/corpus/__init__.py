"""The embedded corpus and the readers of text shards.

Every Python installation carries a real corpus: the standard library's source
(code, comments, docstrings) and the ``pydoc_data`` topics (the language
reference in English). :func:`stdlib_documents` gathers it deterministically
(sorted paths), and :func:`split_of` holds files out by a hash of their path, so
the held-out text is whole files the model never saw.

:func:`load_documents` is what the tokenizer and tokenize stages read: the
embedded corpus (``"stdlib"``), or local text shards: Parquet with a ``text``
column (what ``groundup curate`` writes), JSONL (optionally gzip), or plain text
files. Unreadable records are skipped, counted and reported, never silently lost.
"""

from __future__ import annotations

import json
import logging
import sys
import sysconfig
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from groundup.artifacts import JsonlStats, read_jsonl

log = logging.getLogger(__name__)

STDLIB = "stdlib"
"""The name of the embedded corpus, the default ``data`` of every stage."""

# Test suites are mostly fixtures and repeated boilerplate; the library proper is the corpus.
_EXCLUDED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
TEXT_SUFFIXES = {".txt", ".md", ".rst", ".py", ".text"}


@dataclass(frozen=True)
class Document:
    id: str
    """Where the text came from, relative to what was read: ``stdlib:json/decoder.py``, ``shard.jsonl:17``
    (a shard's path below the folder given, or the file's name, and the line or row). The held-out split
    hashes it, so it never holds the folder's own location."""
    text: str


@dataclass
class ReadStats:
    """What a reader saw: documents read, records skipped (with the reason and place of each skip) and
    bytes replaced in documents that were kept (by reason, with the place of the first few)."""

    documents: int = 0
    bytes: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    replaced_bytes: dict[str, int] = field(default_factory=dict)

    def replace(self, reason: str, where: str, count: int) -> None:
        """``count`` bytes of a kept document could not be read as they were and were replaced."""
        self.replaced_bytes[reason] = self.replaced_bytes.get(reason, 0) + count
        if len(self.examples) < 20:
            self.examples.append(f"{where}: {count} byte(s) replaced: {reason}")
        log.warning("replaced %d byte(s) at %s: %s", count, where, reason)

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if len(self.examples) < 20:
            self.examples.append(f"{where}: {reason}")
        log.warning("skipped %s: %s", where, reason)

    def as_dict(self) -> dict:
        return {"documents": self.documents, "bytes": self.bytes, "skipped": dict(self.skipped),
                "replaced_bytes": dict(self.replaced_bytes), "skip_examples": list(self.examples)}


def split_of(doc_id: str, val_fraction: float) -> str:
    """``"val"`` for a stable ``val_fraction`` of document ids (by CRC32 of the id), else ``"train"``."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    return "val" if zlib.crc32(doc_id.encode("utf-8")) % 100_000 < val_fraction * 100_000 else "train"


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[Path]:
    """The standard library's ``.py`` files, sorted, without test suites or installed packages."""
    root = stdlib_root()
    files = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if _EXCLUDED_DIRS.intersection(rel.parts[:-1]):
            continue
        if rel.as_posix() == "pydoc_data/topics.py":  # read as topics below, not as a 500 KB dict literal
            continue
        files.append(path)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def stdlib_documents(stats: ReadStats | None = None) -> Iterator[Document]:
    """The embedded corpus in a fixed order: every source file, then every ``pydoc_data`` topic."""
    stats = stats if stats is not None else ReadStats()
    root = stdlib_root()
    for path in stdlib_files():
        rel = path.relative_to(root).as_posix()
        try:
            text = path.read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            stats.skip(type(e).__name__, f"stdlib:{rel}")
            continue
        if text.strip():
            stats.documents += 1
            stats.bytes += len(text.encode("utf-8"))
            yield Document(f"stdlib:{rel}", text)
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip pydoc_data
        topics = {}
    for name in sorted(topics):
        text = topics[name]
        stats.documents += 1
        stats.bytes += len(text.encode("utf-8"))
        yield Document(f"stdlib:pydoc_data/topics/{name}", text)


def describe_stdlib() -> dict:
    """Identity of the embedded corpus: it depends on the running Python."""
    return {"name": STDLIB, "python": sys.version.split()[0], "root": str(stdlib_root()),
            "files": len(stdlib_files())}


# ---------------------------------------------------------------------------- local shards


def parse_json_line(raw: bytes, text_field: str, stats: ReadStats, where: str) -> tuple[dict, str] | None:
    """A JSONL line's record and its text, or None after counting why the line was skipped."""
    try:
        record = json.loads(raw)
    except UnicodeDecodeError:
        stats.skip("invalid UTF-8", where)
        return None
    except json.JSONDecodeError as e:
        stats.skip(f"malformed JSON ({e.msg})", where)
        return None
    text = record.get(text_field) if isinstance(record, dict) else None
    if not isinstance(text, str):
        stats.skip(f"no string field {text_field!r}", where)
        return None
    return record, text


def _read_jsonl(path: Path, name: str, text_field: str, stats: ReadStats) -> Iterator[Document]:
    """Documents of a JSONL(.gz) shard, read by :func:`groundup.artifacts.read_jsonl` (bad lines and an
    unfinished last one skipped and counted in ``stats``)."""
    lines = JsonlStats(on_skip=lambda where, reason: stats.skip(reason, where))
    for lineno, record in read_jsonl(path, stats=lines):
        text = record.get(text_field)
        if not isinstance(text, str):
            stats.skip(f"no string field {text_field!r}", f"{path}:{lineno}")
            continue
        stats.documents += 1
        stats.bytes += len(text.encode("utf-8"))
        yield Document(f"{name}:{lineno}", text)


def _read_parquet(path: Path, name: str, text_field: str, stats: ReadStats) -> Iterator[Document]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError("reading Parquet shards needs pyarrow: pip install 'groundup[data]'") from e
    parquet = pq.ParquetFile(path)
    if text_field not in parquet.schema_arrow.names:
        raise ValueError(f"{path}: no column {text_field!r} (columns: {parquet.schema_arrow.names})")
    row = 0
    for batch in parquet.iter_batches(columns=[text_field], batch_size=4096):
        for text in batch.column(0).to_pylist():
            index, row = row, row + 1
            if not isinstance(text, str):
                stats.skip("null text", f"{path}:{index}")
                continue
            stats.documents += 1
            stats.bytes += len(text.encode("utf-8"))
            yield Document(f"{name}:{index}", text)


def _read_text(path: Path, name: str, stats: ReadStats) -> Iterator[Document]:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        stats.skip(f"invalid UTF-8 at byte {e.start}", str(path))
        return
    stats.documents += 1
    stats.bytes += len(text.encode("utf-8"))
    yield Document(name, text)


def _shard_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    files = [p for p in root.rglob("*") if p.is_file() and _kind(p) is not None]
    return sorted(files)


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".json.gz", ".ndjson")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    if path.suffix.lower() in TEXT_SUFFIXES:
        return "text"
    return None


def load_documents(
    source: str | Path | None = STDLIB,
    *,
    text_field: str = "text",
    stats: ReadStats | None = None,
) -> Iterator[Document]:
    """Documents from the embedded corpus (``"stdlib"`` or ``None``) or a local file or folder of shards."""
    stats = stats if stats is not None else ReadStats()
    if source is None or str(source) == STDLIB:
        yield from stdlib_documents(stats)
        return
    root = Path(source)
    if not root.exists():
        raise FileNotFoundError(f"data not found: {root} (give a file or folder of .parquet/.jsonl/.txt shards, "
                                f"or '{STDLIB}' for the embedded corpus)")
    for path in _shard_files(root):
        # Ids (and so the held-out split) name the shard relative to `source`, never where `source` lies:
        # the same data copied elsewhere splits the same way. Skip messages keep the full path.
        name = path.name if path == root else path.relative_to(root).as_posix()
        kind = _kind(path)
        if kind == "jsonl":
            yield from _read_jsonl(path, name, text_field, stats)
        elif kind == "parquet":
            yield from _read_parquet(path, name, text_field, stats)
        elif kind == "text":
            yield from _read_text(path, name, stats)
        else:
            raise ValueError(f"{path}: unknown shard format (expected .parquet, .jsonl[.gz] or text)")


def split_documents(
    source: str | Path | None = STDLIB,
    *,
    val_fraction: float = 0.05,
    text_field: str = "text",
    stats: ReadStats | None = None,
) -> tuple[list[Document], list[Document]]:
    """All documents of ``source`` in order, split into (train, held-out) by :func:`split_of`."""
    train, val = [], []
    for doc in load_documents(source, text_field=text_field, stats=stats):
        (val if split_of(doc.id, val_fraction) == "val" else train).append(doc)
    return train, val
