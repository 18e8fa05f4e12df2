"""Where a training stage's metrics go besides ``metrics.jsonl``: TensorBoard, a refreshed HTML report, and
the hardware's telemetry.

``metrics.jsonl`` stays the record of a run; these are views of it. Each is an observer that the
training loop's :class:`~groundup.train.loop.MetricsLog` hands every record it writes. An observer
never stops training: a failure is logged once and the observer turns itself off.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

AXES = ("step", "tokens", "elapsed_s")


@dataclass(kw_only=True)
class LogConfig:
    """Metrics outputs beside metrics.jsonl: TensorBoard event files and a periodically refreshed report."""

    tensorboard: bool = False
    """Also write TensorBoard event files to OUT/tensorboard (view with `tensorboard --logdir OUT`)."""
    report_every: int = 0
    """Rewrite the HTML report every this many steps while training, in a background process (0: never)."""
    report_dir: Path | None = None
    """The run dir whose report.html is refreshed (default: the stage's output dir; `groundup run` sets its run dir)."""
    telemetry_every: int = 0
    """Sample the hardware into OUT/telemetry.jsonl every this many steps, at a metrics line (0: never): each
    GPU's temperature, power, clocks, memory and throttle reasons (with groundup[telemetry]), host memory and
    CPU load; a warning when a GPU reaches 83 °C or throttles."""

    def __post_init__(self) -> None:
        if self.report_every < 0:
            raise ValueError(f"report_every must be 0 (off) or positive, got {self.report_every}")
        if self.telemetry_every < 0:
            raise ValueError(f"telemetry_every must be 0 (off) or positive, got {self.telemetry_every}")


class Observer(Protocol):
    def write(self, record: dict) -> None: ...
    def close(self) -> None: ...


def tag_of(key: str) -> str:
    """TensorBoard tag of a metrics key: held-out keys under val/, evaluation keys as they are, the rest under train/."""
    if "/" in key:
        return key
    if key.startswith("val_"):
        return "val/" + key.removeprefix("val_")
    return "train/" + key


class TensorBoardWriter:
    """Scalars of every metrics record, at the record's step, with ``torch.utils.tensorboard``."""

    def __init__(self, log_dir: Path, resume_step: int | None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # torch imports tensorboard lazily; it is an optional dependency
            raise ImportError("--log.tensorboard needs the tensorboard package: pip install 'groundup[report]'") from e
        # purge_step drops the events a killed run wrote after the checkpoint it resumes from, as
        # MetricsLog drops those lines of metrics.jsonl.
        purge = resume_step + 1 if resume_step is not None else None
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge)

    def write(self, record: dict) -> None:
        step = record.get("step")
        if not isinstance(step, int) or "event" in record:
            return
        for key, value in record.items():
            if key not in AXES and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(tag_of(key), value, global_step=step)
        if isinstance(record.get("tokens"), int) and "loss" in record:
            self.writer.add_scalar("progress/tokens", record["tokens"], global_step=step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class ReportRefresher:
    """Every ``every`` steps, draw ``DIR/report.html`` in a child process unless the last one still runs.

    A separate process, so drawing never holds up a training step (and a report error cannot crash it). The
    child runs the report stage's module (:mod:`groundup.report.run`), not the command line: no stage
    reaches the CLI.
    """

    def __init__(self, run_dir: Path, every: int) -> None:
        self.run_dir, self.every = Path(run_dir), every
        self.child: subprocess.Popen | None = None
        self.last_step = 0

    def write(self, record: dict) -> None:
        step = record.get("step")
        if not isinstance(step, int) or step - self.last_step < self.every:
            return
        if self.child is not None and self.child.poll() is None:
            return  # the previous refresh is still drawing: skip this one
        self.last_step = step
        self.child = subprocess.Popen([sys.executable, "-m", "groundup.report.run", str(self.run_dir)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def close(self) -> None:
        if self.child is not None:
            try:
                self.child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.child.kill()


TELEMETRY_FILE = "telemetry.jsonl"


class TelemetryWriter:
    """Every ``every`` steps (at the metrics line that reaches them) a hardware sample, one line of
    ``telemetry.jsonl`` (:mod:`groundup.probe.telemetry`), and a warning for a GPU too hot or throttling.

    A resumed run keeps the lines up to its checkpoint's step, as metrics.jsonl does."""

    def __init__(self, path: Path, every: int, resume_step: int | None, nvml=None) -> None:
        # MetricsLog: the one appender that cuts back on resume (imported here: the loop imports this module)
        from groundup.probe.telemetry import Telemetry
        from groundup.train.loop import MetricsLog

        self.every, self.last_step = every, None
        self.log = MetricsLog(path, resume_step)
        self.telemetry = Telemetry(nvml)

    def write(self, record: dict) -> None:
        step = record.get("step")
        if not isinstance(step, int) or "event" in record:
            return
        if self.last_step is not None and step - self.last_step < self.every:
            return
        self.last_step = step
        sample = self.telemetry.sample()
        alarms = self.telemetry.warnings(sample)
        for message in alarms:
            log.warning("step %d: %s", step, message)
        row = {"step": step, "tokens": record.get("tokens"), "elapsed_s": record.get("elapsed_s"), **sample}
        self.log.write({**row, "warnings": alarms} if alarms else row)

    def close(self) -> None:
        self.log.close()
        self.telemetry.close()


class _Guarded:
    """An observer whose first failure is logged and turns it off, so logging never ends a run."""

    def __init__(self, inner: Observer, name: str) -> None:
        self.inner, self.name, self.on = inner, name, True

    def write(self, record: dict) -> None:
        if self.on:
            try:
                self.inner.write(record)
            except Exception as e:  # noqa: BLE001 (any failure of a view must not stop training)
                log.warning("%s failed, turned off for the rest of the run: %s", self.name, e)
                self.on = False

    def close(self) -> None:
        try:
            self.inner.close()
        except Exception as e:  # noqa: BLE001
            log.warning("%s failed to close: %s", self.name, e)


def open_observers(cfg: LogConfig | None, out: Path, resume_step: int | None) -> list[Observer]:
    """The observers ``cfg`` asks for, for a stage writing to ``out``."""
    if cfg is None:
        return []
    observers: list[Observer] = []
    if cfg.tensorboard:
        observers.append(_Guarded(TensorBoardWriter(Path(out) / "tensorboard", resume_step), "TensorBoard logging"))
    if cfg.report_every:
        observers.append(_Guarded(ReportRefresher(cfg.report_dir or out, cfg.report_every), "report refresh"))
    if cfg.telemetry_every:
        observers.append(_Guarded(TelemetryWriter(Path(out) / TELEMETRY_FILE, cfg.telemetry_every, resume_step),
                                  "hardware telemetry"))
    return observers
