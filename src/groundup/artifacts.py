"""The directory contracts between stages: what each stage writes, a manifest, atomic writes.

Every stage writes one directory that describes itself: a fixed set of files plus
``manifest.json`` (stage, config, inputs and their fingerprints, library and
Python versions, time). A stage never reaches into another stage's internals; it
reads the files named here.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator
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
    on_skip: Callable[[str, str], None] | None = field(default=None, repr=False, compare=False)
    """Called with ``(path:line, reason)`` of each skipped line as it is met (a stage's own counts)."""

    def skip(self, where: str, reason: str) -> None:
        self.skipped += 1
        if len(self.examples) < 20:
            self.examples.append(f"{where}: {reason}")
        if self.on_skip is not None:
            self.on_skip(where, reason)

    def warn(self, log: logging.Logger) -> None:
        """Log what was skipped, for a reader whose output has no place to count it."""
        if self.skipped:
            log.warning("%d bad JSONL line(s) skipped: %s%s", self.skipped, "; ".join(self.examples[:3]),
                        " ..." if self.skipped > 3 else "")


class JsonlError(ValueError):
    """A bad line of a JSONL file read strictly; the message is ``path:line: reason``."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


def parse_jsonl_line(raw: bytes, *, objects: bool = True) -> tuple[Any, str | None]:
    """``(value, None)`` for a good JSONL line, ``(None, reason)`` for a bad one: the rules of every reader."""
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "invalid UTF-8"
    except json.JSONDecodeError as e:
        return None, f"not JSON ({e.msg})"  # no column: reasons are counted by their text
    except RecursionError:
        return None, "nested too deep"
    if objects and not isinstance(value, dict):
        return None, f"a JSON {type(value).__name__}, not an object"
    return value, None


def _open_jsonl(path: Path):
    """The file's bytes; ``.gz`` files decompressed."""
    if path.suffix == ".gz":
        import gzip

        return gzip.open(path, "rb")
    return open(path, "rb")  # noqa: SIM115 (the caller closes it)


def _skip_line(stats: JsonlStats, where: str, reason: str, raw: bytes) -> None:
    torn = not raw.endswith(b"\n")  # only the last line can lack its newline
    stats.torn_tail = stats.torn_tail or torn
    stats.skip(where, reason + (" (an unfinished last line)" if torn else ""))


def read_jsonl(path: str | Path, *, stats: JsonlStats | None = None, strict: bool = False,
               objects: bool = True) -> Iterator[tuple[int, Any]]:
    """Yield ``(line number, value)`` for each non-blank line of a JSONL file (``.gz`` too).

    A bad line (not JSON, invalid UTF-8, or not an object when ``objects``) is skipped and counted in
    ``stats``, or with ``strict`` raises :class:`JsonlError` naming ``path:line``. An unfinished last line (no
    newline and not JSON: a writer killed mid-line) is always skipped and counted, never raised: every reader
    of files that a running or killed job appends to (metrics, samples) must survive it.
    """
    path = Path(path)
    stats = stats if stats is not None else JsonlStats()
    with _open_jsonl(path) as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            stats.lines += 1
            value, reason = parse_jsonl_line(raw, objects=objects)
            if reason is None:
                stats.records += 1
                yield lineno, value
            elif strict and raw.endswith(b"\n"):
                raise JsonlError(f"{path}:{lineno}", reason)
            else:
                _skip_line(stats, f"{path}:{lineno}", reason, raw)


def read_jsonl_batches(path: str | Path, *, stats: JsonlStats | None = None, objects: bool = True,
                       batch_bytes: int = 8 << 20) -> Iterator[list[Any]]:
    """The values of a JSONL file in lists of about ``batch_bytes`` of lines, by :func:`read_jsonl`'s rules
    (bad lines skipped and counted in ``stats``, an unfinished last line too), for files of millions of
    lines: a batch of good lines is parsed by one ``json.loads``, and only a batch holding a bad line is
    parsed line by line."""
    path = Path(path)
    stats = stats if stats is not None else JsonlStats()
    first = 1
    with _open_jsonl(path) as f:
        while lines := f.readlines(batch_bytes):
            body = [raw for raw in lines if raw.strip()]
            stats.lines += len(body)
            values = _parse_batch(body, objects)
            if values is None:
                values = []
                for offset, raw in enumerate(lines):
                    if not raw.strip():
                        continue
                    value, reason = parse_jsonl_line(raw, objects=objects)
                    if reason is None:
                        values.append(value)
                    else:
                        _skip_line(stats, f"{path}:{first + offset}", reason, raw)
            stats.records += len(values)
            first += len(lines)
            yield values


def _parse_batch(body: list[bytes], objects: bool) -> list[Any] | None:
    """Every line of ``body`` parsed by one ``json.loads``; None when some line is bad (or two halves of broken
    lines joined into one value: the count of values must be the count of lines)."""
    if not body:
        return []
    try:
        values = json.loads(b"[" + b",".join(body) + b"]")
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    if len(values) != len(body) or (objects and not all(type(v) is dict for v in values)):
        return None
    return values


def first_record_has(path: str | Path, keys: Collection[str]) -> bool:
    """Whether the first record of the JSONL file ``path`` is an object holding ``keys`` (how a stage that
    writes one JSONL file recognizes its earlier output). Only the first line is read: the file may be large
    and not JSONL at all."""
    try:
        with _open_jsonl(Path(path)) as f:
            value, reason = parse_jsonl_line(f.readline(1 << 20))
    except OSError:
        return False
    return reason is None and set(keys) <= value.keys()


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


OVERWRITE_HINT = "pass --overwrite true to write into it anyway (entries with this stage's names are replaced, " \
                 "nothing else is removed)"

MODEL_DIR_NAMES = ("model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja", "train.yaml",
                   "metrics.jsonl", MANIFEST, ".*.tmp")
"""Entries of a model dir as :func:`groundup.model.io.save_model_dir` writes it (``.*.tmp``: its temporary files)."""

TRAINING_RUN_NAMES = (*MODEL_DIR_NAMES, "checkpoints", "tensorboard", "telemetry.jsonl", "report.html", "result.json",
                      "data_stats.json", "adapter", "classifier.json", "reference_logps.safetensors",
                      "samples.jsonl")
"""Entries a training stage (pretrain, finetune) writes into its model dir, finished or not."""


def _matches(name: str, patterns: Collection[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _manifest_stage(path: Path) -> str | None:
    """The stage a directory's manifest names (None: no manifest, or an unreadable one)."""
    try:
        stage = read_json(path / MANIFEST).get("stage") if (path / MANIFEST).is_file() else None
    except (ValueError, OSError, AttributeError):
        return None
    return stage if isinstance(stage, str) else None


def _describe(path: Path, entries: list[str]) -> str:
    """What a folder holds, in a few words: whose output it is, and its first entries."""
    shown = [e + ("/" if (path / e).is_dir() else "") for e in entries[:4]]
    more = f" and {len(entries) - 4} more" if len(entries) > 4 else ""
    stage = _manifest_stage(path)
    owner = f"a {stage} output: " if stage else ""
    return owner + ", ".join(shown) + more


def _overlap(out: Path, path: Path) -> str | None:
    """How ``out`` and an input ``path`` (both resolved) overlap, in words; None when they are apart."""
    if out == path:
        return "is"
    if path.is_relative_to(out):
        return "contains"
    if out.is_relative_to(path):
        return "is inside"
    return None


def prepare_out(out: str | Path, *, stage: str, inputs: Iterable[str | Path | None] = (), overwrite: bool = False,
                unfinished: Collection[str] = (), written_by: Callable[[Path], bool] | None = None) -> bool:
    """Check, before a stage writes anything, that ``out`` may receive its output; True when ``out`` holds this
    stage's own earlier output (which the stage may replace or resume).

    The one rule every stage follows, so that no stage deletes what it did not write:

    - ``out`` never is, contains or lies inside one of the stage's ``inputs`` (ValueError, even with
      ``overwrite``): a stage never writes over what it reads.
    - A new or empty ``out`` is fine. So is this stage's own earlier output: its manifest names ``stage``, or,
      before the manifest is written, it holds nothing but ``unfinished`` (name patterns an interrupted run
      leaves: ``train.yaml``, ``checkpoints`` ...).
    - Anything else (a user's folder, another stage's output) is refused with FileExistsError naming the
      folder and what it holds, unless ``overwrite``: then the stage writes into it, replacing entries of its
      own names and nothing else.

    With ``written_by`` the output is one file, not a folder, and the predicate says whether an existing file
    is this stage's earlier output. The file may be new in an input's folder (``report`` writes
    ``RUN/report.html``), but never replaces an input or a file inside one that the stage did not write.
    """
    out = Path(out)
    where = out.resolve()
    overlaps = [(given, relation) for given in inputs if given is not None
                and (relation := _overlap(where, Path(given).resolve())) is not None]
    if written_by is not None:
        return _prepare_file(out, stage, overlaps, overwrite, written_by)
    for given, relation in overlaps:
        raise ValueError(f"out {out} {relation} the {stage} input {given}; choose another folder "
                         f"(a stage never writes over its input, even with --overwrite)")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"out {out} is a file, not a folder")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not entries:
        return False
    recorded = _manifest_stage(out)
    if recorded == stage or (recorded is None and unfinished and all(_matches(e, unfinished) for e in entries)):
        return True
    if overwrite:
        return False
    raise FileExistsError(f"out {out} is not empty and is not an earlier {stage} output (it holds "
                          f"{_describe(out, entries)}); choose a new or empty folder, or {OVERWRITE_HINT}")


def _prepare_file(out: Path, stage: str, overlaps: list[tuple[str | Path, str]], overwrite: bool,
                  written_by: Callable[[Path], bool]) -> bool:
    """:func:`prepare_out` for a stage whose output is one file."""
    if out.is_dir():
        raise FileExistsError(f"out {out} is a folder; give the path of the file to write")
    previous = out.is_file() and written_by(out)
    for given, relation in overlaps:
        if relation == "is" or (out.exists() and not previous):  # the input, or a file of it this stage did not write
            raise ValueError(f"out {out} {'is' if relation == 'is' else 'is a file of'} the {stage} input {given}; "
                             f"choose another file (a stage never writes over its input, even with --overwrite)")
    if previous:
        return True
    if not out.exists() or overwrite or out.stat().st_size == 0:
        return False
    raise FileExistsError(f"out {out} exists and is not an earlier {stage} output; choose another file, "
                          f"or pass --overwrite true to replace it")


@contextlib.contextmanager
def atomic_dir(final: str | Path, *, previous: bool = False, names: Collection[str] = ()) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success its entries land in ``final``.

    ``previous`` says ``final`` is the stage's own earlier output (:func:`prepare_out` returned True, or a
    checkpoint of the run's own): when it holds nothing but ``names`` (or ``names`` is empty) it is replaced
    in one rename and deleted. Otherwise nothing in ``final`` the stage did not write is removed: the new
    entries are moved in one by one, replacing those of the same names (and, in an earlier output, stale
    entries matching ``names``), and everything else stays. A crash inside the block leaves ``final`` as it
    was (a stale ``.tmp-*`` sibling at worst, which the next call cleans up).
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
        entries = [p.name for p in final.iterdir()] if final.is_dir() else []
        if not entries:
            if final.is_dir():
                final.rmdir()  # empty: nothing of anyone's is lost
            os.replace(tmp, final)
        elif previous and (not names or all(_matches(e, names) for e in entries)):
            trash = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            _move_entries(tmp, final, stale=[e for e in entries if _matches(e, names)] if previous else [])
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _move_entries(src: Path, dest: Path, *, stale: list[str]) -> None:
    """Move every entry of ``src`` into ``dest`` (replacing those of the same names), remove ``stale`` entries
    of ``dest`` that ``src`` does not bring, then ``src`` itself (empty by then)."""
    brought = {p.name for p in src.iterdir()}
    for name in sorted(brought):
        _remove(dest / name)
        os.replace(src / name, dest / name)
    for name in stale:
        if name not in brought:
            _remove(dest / name)
    src.rmdir()
    fsync_dir(dest)


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
