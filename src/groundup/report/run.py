"""``groundup report RUN_DIR [RUN_DIR ...]``: one self-contained HTML page per run, or runs overlaid.

The page (``RUN_DIR/report.html`` for one run; ``--out`` for several) holds the recipe and hardware,
the curation funnel, tokenizer statistics, training curves against steps, tokens and time,
fine-tuning and DPO curves, evaluation tables, samples, checkpoints and stage timings. Figures are
PNG inlined as base64: the file opens from disk, offline, and can be mailed or attached as it is.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from groundup import config as configlib
from groundup.artifacts import prepare_out
from groundup.report import page
from groundup.report.collect import collect, label_runs

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Config:
    """Write one HTML page with plots of every stage of one run, or of several runs overlaid for comparison."""

    runs: list[Path] = field(default_factory=list, metadata=configlib.positional(nargs="*", metavar="RUN_DIR"))
    """Run dirs (a `groundup run` output, a model dir, or any stage output)."""
    out: Path | None = None
    """The HTML file to write (default: RUN_DIR/report.html for one run, report.html here for several)."""
    title: str | None = None
    """Page title (default: the run names)."""
    max_points: int = 2000
    """Buckets per curve when a metrics file is long: each keeps its first, last, min and max point."""
    samples: int = 8
    """Generated samples shown per samples file."""
    overwrite: bool = False
    """Replace an existing `out` file that is not an earlier groundup report (never a file of a run)."""


def default_out(cfg: Config) -> Path:
    if cfg.out is not None:
        return Path(cfg.out)
    return Path(cfg.runs[0]) / "report.html" if len(cfg.runs) == 1 else Path("report.html")


def run(cfg: Config) -> Path:
    if not cfg.runs:
        raise ValueError("no run dir given: `groundup report RUN_DIR [RUN_DIR ...]`")
    if cfg.max_points < 10:
        raise ValueError(f"max_points must be at least 10, got {cfg.max_points}")
    out = default_out(cfg)
    prepare_out(out, stage="report", inputs=cfg.runs, overwrite=cfg.overwrite, written_by=page.is_report)
    t0 = time.perf_counter()
    runs = [collect(path, max_points=cfg.max_points) for path in cfg.runs]
    label_runs(runs)
    out = page.write(out, page.render(runs, title=cfg.title, samples=cfg.samples))
    log.info("report written to %s (%.1f s, %s)", out, time.perf_counter() - t0, page.human_bytes(out.stat().st_size))
    return out


if __name__ == "__main__":  # `python -m groundup.report.run RUN_DIR ...`: what a training run's report refresher starts
    import sys

    run(configlib.parse(Config, sys.argv[1:], prog="python -m groundup.report.run"))
