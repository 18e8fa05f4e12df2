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
from groundup.report import page
from groundup.report.collect import collect, label_runs

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Config:
    """Write one HTML page with plots of every stage of one run, or of several runs overlaid for comparison."""

    runs: list[Path] = field(default_factory=list)
    """Run dirs (a `groundup run` output, a model dir, or any stage output); given as positional arguments."""
    out: Path | None = None
    """The HTML file to write (default: RUN_DIR/report.html for one run, report.html here for several)."""
    title: str | None = None
    """Page title (default: the run names)."""
    max_points: int = 2000
    """Buckets per curve when a metrics file is long: each keeps its first, last, min and max point."""
    samples: int = 8
    """Generated samples shown per samples file."""


def default_out(cfg: Config) -> Path:
    if cfg.out is not None:
        return Path(cfg.out)
    return Path(cfg.runs[0]) / "report.html" if len(cfg.runs) == 1 else Path("report.html")


def run(cfg: Config) -> Path:
    if not cfg.runs:
        raise ValueError("no run dir given: `groundup report RUN_DIR [RUN_DIR ...]`")
    if cfg.max_points < 10:
        raise ValueError(f"max_points must be at least 10, got {cfg.max_points}")
    t0 = time.perf_counter()
    runs = [collect(path, max_points=cfg.max_points) for path in cfg.runs]
    label_runs(runs)
    out = page.write(default_out(cfg), page.render(runs, title=cfg.title, samples=cfg.samples))
    log.info("report written to %s (%.1f s, %s)", out, time.perf_counter() - t0, page.human_bytes(out.stat().st_size))
    return out


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """Positional run dirs apart from ``--key value`` / ``--key=value`` flags."""
    positional, flags = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("-"):
            flags.append(arg)
            if "=" not in arg and arg not in ("-h", "--help") and i + 1 < len(argv):
                flags.append(argv[i + 1])
                i += 1
        else:
            positional.append(arg)
        i += 1
    return positional, flags


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    positional, flags = split_argv(list(argv))
    if positional:
        import json

        flags += ["--runs", json.dumps(positional)]
    cfg = configlib.parse(Config, flags, prog="groundup report RUN_DIR [RUN_DIR ...]")
    out = run(cfg)
    print(out)
    return 0


if __name__ == "__main__":  # `python -m groundup.report.run RUN_DIR ...`: what a training run's report refresher starts
    import json
    import sys

    run(configlib.parse(Config, ["--runs", json.dumps(sys.argv[1:])], prog="python -m groundup.report.run RUN_DIR ..."))
