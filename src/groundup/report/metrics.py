"""Read a ``metrics.jsonl`` of any length into a few thousand points per curve, in bounded memory.

A long run logs millions of lines; a plot needs a few thousand points per curve. The file is read
in chunks, and every numeric key becomes a series of ``(step, tokens, elapsed_s, value)`` points.
Whenever a series holds more than ``4 * max_points`` points, it is compacted: the points are cut
into ``max_points`` buckets by their position in the series and each bucket keeps its first, last,
smallest and largest point. So memory stays at O(chunk + keys * max_points) whatever the file's
length, and spikes (a loss blow-up, a gradient-norm burst) survive downsampling, which a stride
or an average would hide.

A line that is not a JSON object (a run killed mid-write leaves a truncated last line) is
skipped and counted, never fatal; lines with an ``event`` (a skipped non-finite update) are
counted by event name.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from groundup.artifacts import JsonlStats, read_jsonl_batches

AXES = ("step", "tokens", "elapsed_s")
"""The keys every record may carry that are x-axes of the curves, not curves themselves."""

_NUMBER = (int, float)


@dataclass
class Series:
    """One metric's points, in the order they were logged; ``index`` is their position in the full series."""

    index: np.ndarray
    step: np.ndarray
    tokens: np.ndarray
    elapsed_s: np.ndarray
    value: np.ndarray
    count: int
    """Points logged in the file (before downsampling)."""

    def __len__(self) -> int:
        return len(self.value)

    def x(self, axis: str) -> np.ndarray:
        return {"step": self.step, "tokens": self.tokens, "elapsed_s": self.elapsed_s}[axis]

    @property
    def last(self) -> float:
        return float(self.value[-1])


@dataclass
class Metrics:
    """Every series of one ``metrics.jsonl``, plus what was skipped."""

    path: Path
    series: dict[str, Series] = field(default_factory=dict)
    lines: int = 0
    """Records read (every non-empty line that parsed)."""
    bad_lines: int = 0
    """Lines that were not a JSON object (truncated or malformed), skipped."""
    bad_examples: list[str] = field(default_factory=list)
    """``file:line: reason`` for the first few skipped lines."""
    events: dict[str, int] = field(default_factory=dict)
    """Count of records carrying an ``event`` (e.g. skipped_non_finite)."""
    non_finite: int = 0
    """NaN or infinite values, left out of the curves."""

    def __contains__(self, key: str) -> bool:
        return key in self.series

    def get(self, key: str) -> Series | None:
        return self.series.get(key)

    def __iter__(self):
        return iter(list(self.series))


class _Builder:
    """The points of one series, appended chunk by chunk and compacted when they exceed the bound."""

    __slots__ = ("parts", "held", "count", "max_points")

    def __init__(self, max_points: int) -> None:
        self.parts: list[np.ndarray] = []  # each (5, n): index, step, tokens, elapsed_s, value
        self.held = 0
        self.count = 0
        self.max_points = max_points

    def add(self, block: np.ndarray) -> None:
        self.parts.append(block)
        self.held += block.shape[1]
        self.count += block.shape[1]
        if self.held > 4 * self.max_points:
            self.parts = [compact(np.concatenate(self.parts, axis=1), self.max_points)]
            self.held = self.parts[0].shape[1]

    def finish(self) -> Series:
        data = np.concatenate(self.parts, axis=1) if self.parts else np.zeros((5, 0))
        if data.shape[1] > 4 * self.max_points:
            data = compact(data, self.max_points)
        return Series(index=data[0].astype(np.int64), step=data[1], tokens=data[2], elapsed_s=data[3],
                      value=data[4], count=self.count)


def compact(data: np.ndarray, buckets: int) -> np.ndarray:
    """Keep, in each of ``buckets`` equal spans of the series' positions, the first, last, min and max point.

    ``data`` is (5, n) with the positions in row 0, increasing. The result keeps at most 4 points per
    bucket, in position order; the series' global minimum and maximum are always among them.
    """
    n = data.shape[1]
    if n <= 4 * buckets:
        return data
    pos, values = data[0], data[4]
    lo, hi = pos[0], pos[-1]
    width = max((hi - lo + 1) / buckets, 1.0)
    bucket = ((pos - lo) / width).astype(np.int64)
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])  # first point of each non-empty bucket
    ends = np.r_[starts[1:], n] - 1
    # argmin / argmax within each bucket: sort by (bucket, value) once; the first and last of each run
    order = np.lexsort((values, bucket))
    keep = np.concatenate([starts, ends, order[starts], order[ends]])
    keep = np.unique(keep)  # sorted positions, duplicates gone
    return data[:, keep]


def _numbers(values: list) -> tuple[np.ndarray, np.ndarray]:
    """(positions, float values) of the plain numbers in ``values`` (bools, strings, None, lists left out)."""
    try:
        array = np.asarray(values) if values else np.zeros(0)
    except ValueError:  # lists of different lengths
        array = np.zeros(0, dtype=object)
    if array.dtype.kind in "iuf" and array.ndim == 1:
        return np.arange(len(values)), array.astype(np.float64, copy=False)
    keep = [i for i, v in enumerate(values) if type(v) in _NUMBER]
    return np.asarray(keep, dtype=np.int64), np.asarray([values[i] for i in keep], dtype=np.float64)


def _add_records(records: list[dict], builders: dict[str, _Builder], counters: Counter, out: Metrics,
                 max_points: int) -> None:
    """Turn a chunk of records into per-key blocks of (index, step, tokens, elapsed_s, value).

    Records are grouped by their set of keys (a training line, an evaluation line, ...), so that each
    column is gathered by one list comprehension and converted by numpy, not value by value.
    """
    if not records:
        return
    groups: dict[tuple, list[int]] = {}
    for i, record in enumerate(records):
        keys = tuple(record)
        group = groups.get(keys)
        if group is None:
            groups[keys] = [i]
        else:
            group.append(i)
    pieces: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    for keys, rows in groups.items():
        members = [records[i] for i in rows] if len(rows) < len(records) else records
        if "event" in keys:  # an event line's numbers (the non-finite loss) are not points of the curves
            for record in members:
                name = str(record["event"])
                out.events[name] = out.events.get(name, 0) + 1
            continue
        rows_a = np.asarray(rows, dtype=np.int64)
        axes = np.full((3, len(rows)), np.nan)
        for a, axis in enumerate(AXES):
            if axis in keys:
                where, values = _numbers([r[axis] for r in members])
                axes[a, where] = values
        for key in keys:
            if key in AXES:
                continue
            where, values = _numbers([r[key] for r in members])
            if not len(values):
                continue
            pieces.setdefault(key, []).append((rows_a[where], axes[:, where], values))
    for key, parts in pieces.items():
        if len(parts) == 1:
            rows_a, axes_a, values_a = parts[0]
        else:  # the key appears in several kinds of line: back into file order
            rows_a = np.concatenate([p[0] for p in parts])
            order = np.argsort(rows_a, kind="stable")
            rows_a = rows_a[order]
            axes_a = np.concatenate([p[1] for p in parts], axis=1)[:, order]
            values_a = np.concatenate([p[2] for p in parts])[order]
        finite = np.isfinite(values_a)
        if not finite.all():
            out.non_finite += int((~finite).sum())
            axes_a, values_a = axes_a[:, finite], values_a[finite]
        if not len(values_a):
            continue
        start = counters[key]
        counters[key] += len(values_a)
        block = np.empty((5, len(values_a)))
        block[0] = np.arange(start, start + len(values_a))
        block[1:4] = axes_a
        block[4] = values_a
        builder = builders.get(key)
        if builder is None:
            builder = builders[key] = _Builder(max_points)
        builder.add(block)


def load_metrics(path: str | Path, *, max_points: int = 2000, chunk_lines: int = 50_000) -> Metrics:
    """Stream ``path`` into downsampled series (at most ``4 * max_points`` points each).

    A missing step (a record without ``step``) is drawn at its position in the series.
    """
    path = Path(path)
    out = Metrics(path=path)
    builders: dict[str, _Builder] = {}
    counters: Counter = Counter()
    stats = JsonlStats()
    for records in read_jsonl_batches(path, stats=stats, batch_bytes=chunk_lines * 160):  # ~chunk_lines lines
        out.lines += len(records)
        _add_records(records, builders, counters, out, max_points)
    out.bad_lines, out.bad_examples = stats.skipped, stats.examples[:5]
    for key, builder in builders.items():
        series = builder.finish()
        missing = np.isnan(series.step)
        if missing.any():
            series.step = np.where(missing, series.index, series.step)
        out.series[key] = series
    return out
