"""The trace of an application run: one JSON line per model call and per tool call.

Every record has ``kind`` (``model`` or ``tool``), ``name`` (the model id or the tool's name), ``start``
(seconds since the epoch), ``latency_s``, ``ok`` and, when not ok, ``error`` (one line). Model calls add
``prompt_tokens``, ``completion_tokens`` (the endpoint's own ``usage``) and ``attempts``; tool calls add
``call_id`` and ``result_chars``. ``groundup report`` draws a run dir's ``trace.jsonl`` files.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TRACE_FILE = "trace.jsonl"
"""The file name ``groundup agent`` writes and ``groundup report`` looks for."""


class Trace:
    """Appends records to a JSONL file (flushed line by line, so a killed run keeps what it did) and keeps
    them in ``records``. Thread-safe: parallel workflows share one trace."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._file = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())

    def record(self, kind: str, name: str, *, start: float, latency_s: float, ok: bool, error: str | None = None,
               **fields: Any) -> dict[str, Any]:
        record = {"kind": kind, "name": name, "start": round(start, 6), "latency_s": round(latency_s, 6), "ok": ok,
                  **({"error": error} if error is not None else {}), **fields}
        line = json.dumps(record, ensure_ascii=False, default=str)
        with self._lock:
            self.records.append(record)
            if self._file is not None:
                self._file.write(line + "\n")
                self._file.flush()
        return record

    @contextmanager
    def span(self, kind: str, name: str, **fields: Any) -> Iterator[dict[str, Any]]:
        """Time the body and record it; the body may add fields to the yielded dict. An exception is
        recorded as ``ok: false`` with its one-line message, then raised again."""
        extra: dict[str, Any] = dict(fields)
        start, clock = time.time(), time.perf_counter()
        try:
            yield extra
        except BaseException as e:
            self.record(kind, name, start=start, latency_s=time.perf_counter() - clock, ok=False,
                        error=one_line(e), **extra)
            raise
        self.record(kind, name, start=start, latency_s=time.perf_counter() - clock, ok=True, **extra)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> Trace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def one_line(error: BaseException) -> str:
    """An error as one line: its message, with its type where the message alone says little."""
    message = " ".join(str(error).split())
    return message if message and isinstance(error, AppError) else f"{type(error).__name__}: {message}".rstrip(": ")


class AppError(RuntimeError):
    """An error of an application run whose message already names what failed and where."""
