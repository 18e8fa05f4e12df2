"""The directory contracts between stages: what each stage writes, a manifest, atomic writes.

Every stage writes one directory that describes itself: a fixed set of files plus
``manifest.json`` (stage, config, inputs and their fingerprints, library and
Python versions, time). A stage never reaches into another stage's internals; it
reads the files named here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from groundup import __version__

MANIFEST = "manifest.json"

TOKENIZER_FILES = {"tokenizer.json", "stats.json", "config.yaml", MANIFEST}
TOKENS_FILES = {"train.bin", "val.bin", "meta.json", "config.yaml", MANIFEST}


def fingerprint(path: str | Path) -> str:
    """A cheap identity of an input: its manifest's hash for a stage directory, else names, sizes and mtimes."""
    path = Path(path)
    h = hashlib.sha256()
    if (path / MANIFEST).is_file():
        h.update((path / MANIFEST).read_bytes())
    elif path.is_file():
        st = path.stat()
        h.update(f"{path.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    elif path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file():
                st = p.stat()
                h.update(f"{p.relative_to(path)}:{st.st_size}:{int(st.st_mtime)}".encode())
    else:
        h.update(str(path).encode())
    return h.hexdigest()[:16]


def write_json(path: str | Path, data: Any) -> Path:
    """Write JSON atomically (temporary file, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)
    return path


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from e


@dataclass
class JsonlStats:
    """What :func:`read_jsonl` passed over: counted, with the first few places, so nothing is lost silently."""

    lines: int = 0
    """Non-blank lines read."""
    records: int = 0
    """Lines parsed and yielded."""
    skipped: int = 0
    """Lines skipped: not JSON, invalid UTF-8, or not the expected type."""
    torn_tail: bool = False
    """The file ended in an unfinished line (a writer stopped mid-line); it was skipped and counted."""
    examples: list[str] = field(default_factory=list)
    """``path:line: reason`` of the first skipped lines."""

    def skip(self, where: str, reason: str) -> None:
        self.skipped += 1
        if len(self.examples) < 20:
            self.examples.append(f"{where}: {reason}")


def read_jsonl(path: str | Path, *, stats: JsonlStats | None = None, strict: bool = False,
               objects: bool = True) -> Iterator[tuple[int, Any]]:
    """Yield ``(line number, value)`` for each non-blank line of a JSONL file.

    A bad line (not JSON, invalid UTF-8, or not an object when ``objects``) is skipped and counted in
    ``stats``, or with ``strict`` raises ValueError naming ``path:line``. An unfinished last line (no newline
    and not JSON: a writer killed mid-line) is always skipped and counted, never raised: every reader of
    files that a running or killed job appends to (metrics, samples) must survive it.
    """
    path = Path(path)
    stats = stats if stats is not None else JsonlStats()
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            stats.lines += 1
            try:
                value = json.loads(raw.decode("utf-8"))
                reason = None if not objects or isinstance(value, dict) else f"a JSON {type(value).__name__}, not an object"
            except UnicodeDecodeError as e:
                reason = f"invalid UTF-8 at byte {e.start}"
            except (json.JSONDecodeError, RecursionError) as e:
                reason = f"not JSON ({e.msg})" if isinstance(e, json.JSONDecodeError) else "nested too deep"
            if reason is None:
                stats.records += 1
                yield lineno, value
                continue
            torn = not raw.endswith(b"\n")
            if strict and not torn:
                raise ValueError(f"{path}:{lineno}: {reason}")
            stats.torn_tail = stats.torn_tail or torn
            stats.skip(f"{path}:{lineno}", reason + (" (an unfinished last line)" if torn else ""))


def write_manifest(out: str | Path, *, stage: str, config: dict, inputs: dict[str, str | Path] | None = None,
                   extra: dict | None = None) -> Path:
    out = Path(out)
    manifest = {
        "stage": stage,
        "groundup_version": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "inputs": {name: {"path": str(p), "fingerprint": fingerprint(p)} for name, p in (inputs or {}).items()},
        "config": config,
    }
    if extra:
        manifest.update(extra)
    return write_json(out / MANIFEST, manifest)


def read_manifest(path: str | Path) -> dict:
    return read_json(Path(path) / MANIFEST)


def require_files(path: str | Path, files: set[str], what: str) -> Path:
    """Check that ``path`` is a directory holding ``files``; say which are missing if not."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found: {path} is not a directory")
    missing = sorted(f for f in files if not (path / f).is_file())
    if missing:
        raise FileNotFoundError(f"{path} is not a complete {what}: missing {', '.join(missing)}")
    return path


def find_tokenizer_file(path: str | Path) -> Path:
    """``tokenizer.json`` inside a tokenizer dir or model dir, or the file itself."""
    path = Path(path)
    candidate = path / "tokenizer.json" if path.is_dir() else path
    if not candidate.is_file():
        raise FileNotFoundError(f"no tokenizer at {path}: expected a tokenizer.json file or a directory holding one "
                                f"(run `groundup tokenizer` first)")
    return candidate


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``final`` in one rename.

    A crash inside the block leaves ``final`` as it was (a stale ``.tmp-*`` sibling at worst,
    which the next call cleans up).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".tmp-{final.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        fsync_dir(tmp)
        if final.exists():
            trash = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
