"""Shared by the benchmarks that report MB/s of text (tokenizer_train.py, tokenize_throughput.py): a row of
timings, the table with groundup's ratio to each peer, and the JSON file."""

from __future__ import annotations

import json
import statistics
from pathlib import Path


def rate_row(name: str, seconds: list[float], n_bytes: int, **extra) -> dict:
    """One row: the timings of ``name`` over ``n_bytes`` of text, with median, min and max MB/s."""
    rates = [n_bytes / 1e6 / s for s in seconds]
    return {"name": name, "seconds": seconds, "median_seconds": statistics.median(seconds),
            "median_mb_per_s": statistics.median(rates), "min_mb_per_s": min(rates), "max_mb_per_s": max(rates),
            **extra}


def report(rows: list[dict], result: dict, out: Path, *, extra_column: tuple[str, str] | None = None) -> None:
    """groundup's ratio to each peer (rows[0] is groundup) into ``rows``; print the table; write ``result``
    (which holds ``rows``) as JSON to ``out``. ``extra_column``: (heading, key) of one more number."""
    for r in rows[1:]:
        r["groundup_ratio"] = rows[0]["median_mb_per_s"] / r["median_mb_per_s"]
    width = max(len(r["name"]) for r in rows)
    heading, key = extra_column or (None, None)
    print(f"{'':{width}s} {'MB/s':>7s} {'min':>7s} {'max':>7s}" + (f" {heading:>7s}" if key else "") + "  groundup ×")
    for r in rows:
        ratio = f"{r['groundup_ratio']:.2f}" if "groundup_ratio" in r else ""
        extra = f" {r[key]:7.2f}" if key else ""
        print(f"{r['name']:{width}s} {r['median_mb_per_s']:7.2f} {r['min_mb_per_s']:7.2f} {r['max_mb_per_s']:7.2f}"
              f"{extra}  {ratio}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {out}")
