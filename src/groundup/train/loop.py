"""The training loop every method shares: budget, schedule, logging, evaluation, checkpoints, resume, rollback.

A method (pretraining, fine-tuning) supplies a :class:`~groundup.train.step.TrainState` (its model,
optimizer and a sampler of batches with ``next_batch()`` / ``state_dict()`` / ``load_state_dict()``)
and a :class:`~groundup.train.step.StepSpec` (its loss function, autocast, token count, parallel layout);
every step is :func:`groundup.train.step.train_step`, and the loop does the rest. On CPU a run is bitwise
reproducible: N steps straight give the same weights as k steps, a stop, ``resume``, and N - k steps,
and the same metrics rows (see :mod:`groundup.train.resume`).

Each metrics line holds the mean loss (and the loss function's extras) of the steps since the line before.

SIGTERM or SIGUSR1 (a cluster's warning before preemption or the time limit, forwarded by torchrun to every
rank) ends the step under way; the ranks agree to stop, checkpoint, and raise :class:`TrainingStopped`, so
the stage writes no final model and ``--train.resume auto`` continues from that checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from groundup.artifacts import JsonlStats, read_jsonl
from groundup.parallel.env import ParallelState
from groundup.train.checkpoint import checkpoint_dirs, load_checkpoint, save_checkpoint
from groundup.train.logging import LogConfig, Observer, open_observers
from groundup.train.optim import OptimConfig, lr_at
from groundup.train.resume import restore, resume_path
from groundup.train.step import StepResult, StepSpec, TrainState, micro_batches, train_step

log = logging.getLogger(__name__)


class TrainingStopped(RuntimeError):
    """A signal (SIGTERM, SIGUSR1) stopped training; the state is in the checkpoint the message names."""


class StopRequest:
    """While active, SIGTERM and SIGUSR1 ask the loop to stop after the current step instead of killing the
    process; a second such signal acts as it did before (the default: end the process at once)."""

    SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1") if hasattr(signal, name))

    def __init__(self) -> None:
        self.requested: str | None = None
        self.previous: dict[int, object] = {}

    def _restore(self, signum: int) -> None:
        previous = self.previous.get(signum)
        signal.signal(signum, previous if previous is not None else signal.SIG_DFL)  # None: set outside Python

    def _handle(self, signum: int, frame) -> None:
        self.requested = signal.Signals(signum).name
        self._restore(signum)
        log.warning("%s received: stopping after this step with a checkpoint (send it again to stop at once)",
                    self.requested)

    def __enter__(self) -> StopRequest:
        try:
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: signals cannot be caught here, they act as before
            self.previous.clear()
        return self

    def __exit__(self, *exc) -> None:
        for sig in self.previous:
            self._restore(sig)


@dataclass(kw_only=True)
class LoopConfig:
    """How long to train, how often to log, evaluate and checkpoint."""

    max_steps: int = 1000
    """Optimizer steps to run (the schedule's length when the schedule follows steps)."""
    max_minutes: float | None = None
    """Wall-clock budget for training: stop cleanly (with a checkpoint) once it is spent."""
    schedule_clock: Literal["steps", "time"] = "steps"
    """What the learning-rate decay follows: steps done / max_steps, or time spent / max_minutes
    (the best schedule for a fixed time budget on a machine of unknown speed; not bitwise reproducible)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    log_every: int = 10
    """Write a metrics line (and refresh the progress bar) every this many steps."""
    eval_every: int = 200
    """Evaluate on held-out data every this many steps (0: only at the end)."""
    checkpoint_every: int = 500
    """Write a checkpoint every this many steps (0: only at the end)."""
    keep_checkpoints: int = 2
    """Keep this many newest checkpoints."""
    resume: str | None = None
    """'auto' to continue from the newest checkpoint in the output dir if there is one, or a checkpoint path."""
    progress_bar: bool = True
    """Show a progress bar."""
    spike_zscore: float | None = 6.0
    """Loss-spike guard: a step whose loss lies this many standard deviations above the mean of the last
    `spike_window` steps rolls back to the newest checkpoint and skips the data since it (None: off)."""
    spike_window: int = 50
    """Steps of loss history the spike z-score is computed over (it acts once the window is full)."""
    spike_max_rollbacks: int = 5
    """Stop with an error after this many rollbacks in one run: the run is diverging, not spiking."""
    spike_lr_cooldown: float = 1.0
    """After a rollback, multiply the learning rate by this factor (< 1 cools it down) ..."""
    spike_cooldown_steps: int = 0
    """... for this many steps."""

    def __post_init__(self) -> None:
        if self.max_steps <= 0:
            raise ValueError(f"max_steps must be positive, got {self.max_steps}")
        if self.grad_accum <= 0:
            raise ValueError(f"grad_accum must be positive, got {self.grad_accum}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes must be positive, got {self.max_minutes}")
        if self.spike_zscore is not None and self.spike_zscore <= 0:
            raise ValueError(f"spike_zscore must be positive or None, got {self.spike_zscore}")
        if self.spike_window < 2:
            raise ValueError(f"spike_window must be >= 2, got {self.spike_window}")
        if self.schedule_clock == "time" and self.max_minutes is None:
            raise ValueError("schedule_clock='time' needs max_minutes")


@dataclass
class LoopResult:
    step: int
    tokens_seen: int
    train_seconds: float
    stopped_by: str
    last_eval: dict[str, float]
    checkpoint: Path | None

    def summary(self) -> dict:
        """The run's figures every training stage records in its manifest's result."""
        return {"steps": self.step, "tokens_seen": self.tokens_seen, "train_seconds": round(self.train_seconds, 2),
                "stopped_by": self.stopped_by}


class MetricsLog:
    """Append-only ``metrics.jsonl``; a resumed run keeps the rows written before its checkpoint, and no more.

    ``rows`` counts the records in the file: a checkpoint records it as ``metrics_rows``, and a run resumed
    from it (``resume_step``) keeps that many (``keep_rows``; a checkpoint without it keeps the rows up to
    its step). Under several processes only rank 0 writes (``enabled=False`` elsewhere). ``observers``
    (TensorBoard, a report refresher: :mod:`groundup.train.logging`) see every record too."""

    def __init__(self, path: Path, resume_step: int | None, observers: list[Observer] | None = None,
                 enabled: bool = True, keep_rows: int | None = None) -> None:
        self.path = path
        self._f = None
        self.rows = 0
        self.observers = list(observers or []) if enabled else []
        if not enabled:
            return
        if resume_step is None:
            path.write_text("", encoding="utf-8")
        elif path.exists():
            self.rows = self._cut_back(resume_step, keep_rows)
        self._f = open(path, "a", encoding="utf-8")  # noqa: SIM115 (held for the run)

    def _cut_back(self, resume_step: int, keep_rows: int | None) -> int:
        """Rewrite the file with the rows it held at the checkpoint resumed from; returns how many."""
        stats = JsonlStats()
        records = [record for _, record in read_jsonl(self.path, stats=stats)]
        if stats.skipped:  # a torn last line from a killed run, most likely
            log.warning("%s: %d unreadable line(s) dropped on resume: %s", self.path, stats.skipped,
                        "; ".join(stats.examples[:3]))
        if keep_rows is not None:
            kept = records[:keep_rows]
        else:
            kept = [record for record in records if record.get("step", 0) <= resume_step]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(json.dumps(record) + "\n" for record in kept), encoding="utf-8")
        os.replace(tmp, self.path)  # a kill now leaves the old file or the new one, never half of it
        return len(kept)

    def write(self, record: dict) -> None:
        if self._f is None:
            return
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()
        self.rows += 1
        for observer in self.observers:
            observer.write(record)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
        for observer in self.observers:
            observer.close()


class MetricsWindow:
    """The steps since the last metrics line: their mean loss and extras, tokens, and the clock of throughput."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.mfu_warned = False
        self.reset()

    def reset(self) -> None:
        """Forget the steps so far (a rollback); the throughput clock goes on."""
        self.loss, self.steps, self.tokens, self.extras = 0.0, 0, 0, {}

    def restart_clock(self) -> None:
        """Evaluation and checkpoint time is not training throughput."""
        self.started = time.perf_counter()

    def add(self, result: StepResult) -> None:
        self.tokens += result.tokens
        if math.isfinite(result.loss_sum) and not result.spike:
            self.loss += result.loss
            self.steps += 1
            for key, value in result.extras.items():
                self.extras[key] = self.extras.get(key, 0.0) + value

    def record(self, state: TrainState, result: StepResult, flops_per_token: float, peak_flops: float | None) -> dict:
        """The metrics line of the steps so far (then a new window starts)."""
        now = time.perf_counter()
        tokens_per_s = self.tokens / max(now - self.started, 1e-9)
        # the mean over the steps since the previous line: a single micro-batch's loss is noisy
        mean_loss = self.loss / self.steps if self.steps else result.loss
        record = {"step": state.step, "tokens": state.tokens_seen, "loss": round(mean_loss, 6), "lr": result.lr,
                  "grad_norm": round(result.grad_norm, 6), "tokens_per_s": round(tokens_per_s, 2),
                  "elapsed_s": round(state.train_seconds, 3)}
        for key, value in self.extras.items():
            record[key] = round(value / max(self.steps, 1), 6)
        if peak_flops:
            record["mfu"] = round(tokens_per_s * flops_per_token / peak_flops, 4)
            if record["mfu"] > 1.0 and not self.mfu_warned:
                self.mfu_warned = True
                log.warning("MFU %.2f is above 1: the matmul peak it divides by (%.3g FLOP/s) is below this run's own "
                            "rate; it was timed under load or on other hardware. Re-measure with `groundup probe`",
                            record["mfu"], peak_flops)
        self.reset()
        self.started = now
        return record


class _Progress:
    """A progress bar over steps, or over seconds of the budget when training is bounded by the clock."""

    def __init__(self, cfg: LoopConfig, step: int, elapsed: float) -> None:
        from tqdm.auto import tqdm

        self.by_time = cfg.schedule_clock == "time"  # LoopConfig makes sure max_minutes is set then
        if self.by_time:
            self.bar = tqdm(total=round(cfg.max_minutes * 60), initial=round(elapsed), unit="s",
                            dynamic_ncols=True, mininterval=1.0, bar_format="{l_bar}{bar}| {n:.0f}/{total} s "
                            "[{elapsed}<{remaining}{postfix}]")
        else:
            self.bar = tqdm(total=cfg.max_steps, initial=step, unit="step", dynamic_ncols=True, mininterval=1.0)
        self.shown = elapsed

    def update(self, step: int, elapsed: float, **postfix) -> None:
        if postfix:
            self.bar.set_postfix(step=step, **postfix, refresh=False)
        if self.by_time:
            delta = min(elapsed, self.bar.total) - self.shown
            if delta > 0:
                self.bar.update(delta)
                self.shown += delta
        else:
            self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


@dataclass(kw_only=True)
class _Run:
    """What the loop's parts share through a run: its settings, the metrics file and the throughput window."""

    cfg: LoopConfig
    optim_cfg: OptimConfig
    spec: StepSpec
    ckpt_root: Path
    metrics: MetricsLog
    evaluate: Callable[[nn.Module], dict[str, float]] | None
    extra_state: Callable[[], dict] | None
    accum: int
    """Micro-batches per step on this rank."""
    flops_per_token: float
    peak_flops: float | None
    checkpoint: Path | None = None
    """The newest checkpoint of this run: the one it resumed from, then each one it saves. A rollback goes
    back to it, never to a checkpoint an earlier run left in the same folder."""
    window: MetricsWindow = field(default_factory=MetricsWindow)
    stop: StopRequest = field(default_factory=StopRequest)

    @property
    def budget(self) -> float:
        """Seconds of training allowed."""
        return self.cfg.max_minutes * 60.0 if self.cfg.max_minutes else math.inf


def train_loop(state: TrainState, spec: StepSpec, *, cfg: LoopConfig, optim_cfg: OptimConfig, out: Path,
               evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
               extra_state: Callable[[], dict] | None = None, log_cfg: LogConfig | None = None,
               flops_per_token: float = 0.0, peak_flops: float | None = None) -> LoopResult:
    """Train ``state`` for ``cfg.max_steps`` optimizer steps (or until ``cfg.max_minutes``), then checkpoint
    and evaluate once more.

    ``evaluate(model)`` (in eval mode, under no_grad and autocast) returns held-out figures, logged every
    ``cfg.eval_every`` steps and at the end; ``extra_state()`` adds to every checkpoint's state.json; with
    ``peak_flops`` the metrics lines carry MFU. Under torchrun (``spec.parallel``) ``cfg.grad_accum`` is the
    accumulation of a single process: each of the ``dp`` data-parallel ranks runs ``grad_accum / dp``
    micro-batches per step, so the global batch (and the learning rate that suits it) is the same whatever
    the number of ranks.
    """
    out = Path(out)
    parallel = spec.parallel
    is_main = parallel is None or parallel.is_main
    accum = micro_batches_per_rank(cfg.grad_accum, parallel)
    ckpt_root = out / "checkpoints"
    resumed_from = resume_path(cfg.resume, ckpt_root)
    saved = restore(state, resumed_from)
    resume_step = state.step if saved is not None else None
    if saved is None and is_main:
        set_aside_earlier_checkpoints(ckpt_root)
    metrics = MetricsLog(out / "metrics.jsonl", resume_step,
                         open_observers(log_cfg, out, resume_step) if is_main else None, enabled=is_main,
                         keep_rows=saved.get("metrics_rows") if saved is not None else None)
    run = _Run(cfg=cfg, optim_cfg=optim_cfg, spec=spec, ckpt_root=ckpt_root, metrics=metrics, evaluate=evaluate,
               extra_state=extra_state, accum=accum, flops_per_token=flops_per_token, peak_flops=peak_flops,
               checkpoint=resumed_from if saved is not None else None)
    state.model.train()
    bar = _Progress(cfg, state.step, state.train_seconds) if cfg.progress_bar and is_main else None
    try:
        with run.stop:
            stopped_by = train_steps(run, state, bar)
            if stopped_by == "signal":
                metrics.write({"step": state.step, "event": "stopped", "signal": run.stop.requested})
            last_ckpt = save(run, state)
    finally:
        if bar is not None:
            bar.close()
    if stopped_by == "signal":
        metrics.close()
        raise TrainingStopped(f"{run.stop.requested} at step {state.step}: stopped with a checkpoint, {last_ckpt} "
                              f"(--train.resume auto continues from it)")
    last_eval = evaluate_and_log(run, state)
    metrics.close()
    return LoopResult(step=state.step, tokens_seen=state.tokens_seen, train_seconds=state.train_seconds,
                      stopped_by=stopped_by, last_eval=last_eval, checkpoint=last_ckpt)


def set_aside_earlier_checkpoints(ckpt_root: Path) -> Path | None:
    """Move the checkpoints an earlier run left in ``ckpt_root`` into ``ckpt_root/earlier/<time>/`` when a run
    starts afresh there (no resume); returns where they went (None: there were none).

    Left in place they would pass for this run's: the rotation keeps the newest steps (and would delete this
    run's first checkpoints in their favour), a loss spike would roll back to them, and ``--train.resume
    auto`` would continue the earlier run. Moved, not deleted: a run started without ``--train.resume auto``
    by mistake can still be continued from them (``--train.resume PATH``)."""
    earlier = checkpoint_dirs(ckpt_root)
    if not earlier:
        return None
    aside = ckpt_root / "earlier" / time.strftime("%Y%m%d-%H%M%S")
    n = 0
    while aside.exists():
        n += 1
        aside = aside.with_name(f"{aside.name.split('.')[0]}.{n}")
    aside.mkdir(parents=True)
    for path in earlier:
        path.rename(aside / path.name)
    log.warning("%s held %d checkpoint(s) of an earlier run (newest %s); this run starts afresh, so they were moved "
                "to %s (--train.resume auto continues a run instead)", ckpt_root, len(earlier), earlier[-1].name, aside)
    return aside


def micro_batches_per_rank(grad_accum: int, parallel: ParallelState | None) -> int:
    dp = parallel.dp_size if parallel is not None else 1
    if grad_accum % dp:
        raise ValueError(f"grad_accum={grad_accum} (the single-process accumulation) must be divisible by the "
                         f"{dp} data-parallel ranks: global batch = batch_size x grad_accum")
    return grad_accum // dp


def train_steps(run: _Run, state: TrainState, bar: _Progress | None) -> str:
    """Step until ``max_steps``, the budget is spent or a signal asks to stop, evaluating and checkpointing on
    the way; returns what stopped it ('max_steps', 'max_minutes' or 'signal')."""
    cfg = run.cfg
    if state.train_seconds >= run.budget:  # resumed from a checkpoint that had spent the budget
        return "max_minutes"
    started, before = time.perf_counter(), state.train_seconds
    batches = micro_batches(state.sampler)
    while state.step < cfg.max_steps:
        result = train_step(state, batches, run.spec, lr=learning_rate(run, state), accum=run.accum,
                            grad_clip=run.optim_cfg.grad_clip)
        if not result.finite:
            log_skipped_update(run, state, result)
        if result.spike:
            run.window.reset()
            if roll_back(run, state, result):
                continue
            state.advance(result.tokens)  # no checkpoint to go back to: the update was skipped, the step counts
        state.train_seconds = before + time.perf_counter() - started
        run.window.add(result)
        log_step(run, state, result, bar)
        stop = should_stop(run, state)
        if cfg.eval_every and state.step % cfg.eval_every == 0 and state.step < cfg.max_steps and not stop:
            evaluate_and_log(run, state)
            run.window.restart_clock()
        if (cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0 and state.step < cfg.max_steps
                and stop != "signal"):  # the signal's own checkpoint follows
            save(run, state)
            run.window.restart_clock()
        if stop:
            return stop
    return "max_steps"


def learning_rate(run: _Run, state: TrainState) -> float:
    """The schedule's rate for the next step (following steps or time), times the spike guard's cool-down."""
    if run.cfg.schedule_clock == "time":
        progress = state.train_seconds / run.budget
    else:
        progress = state.step / run.cfg.max_steps
    return lr_at(state.step, progress, run.optim_cfg) * state.guard.lr_factor(state.step)


def should_stop(run: _Run, state: TrainState) -> str | None:
    """'signal' once SIGTERM or SIGUSR1 came, 'max_minutes' once the budget is spent, on any rank: clocks
    and signals reach ranks at different steps, so every rank takes the answer of all."""
    out_of_time = state.train_seconds >= run.budget
    signalled = run.stop.requested is not None
    parallel = run.spec.parallel
    if parallel is not None and parallel.distributed:
        n = parallel.env.world_size
        # One all-reduce for both flags: the sum over ranks of out_of_time + (n + 1) * signalled, an integer
        # (exact in float64) whose quotient by n + 1 counts the signalled ranks and remainder the late ones.
        total = round(parallel.mean(float(out_of_time) + (n + 1) * float(signalled)) * n)
        signalled, out_of_time = total >= n + 1, total % (n + 1) > 0
    return "signal" if signalled else "max_minutes" if out_of_time else None


def log_step(run: _Run, state: TrainState, result: StepResult, bar: _Progress | None) -> None:
    """A metrics line every ``log_every`` steps and at the last one; the progress bar every step."""
    if state.step % run.cfg.log_every == 0 or state.step == run.cfg.max_steps:
        record = run.window.record(state, result, run.flops_per_token, run.peak_flops)
        run.metrics.write(record)
        if bar is not None:
            bar.update(state.step, state.train_seconds, loss=f"{record['loss']:.3f}",
                       tok_s=f"{record['tokens_per_s']:,.0f}")
    elif bar is not None:
        bar.update(state.step, state.train_seconds)


def log_skipped_update(run: _Run, state: TrainState, result: StepResult) -> None:
    log.warning("step %d: non-finite loss or gradient norm (%s, %s); update skipped",
                result.step, result.loss_sum, result.grad_norm)
    run.metrics.write({"step": result.step, "event": "skipped_non_finite", "loss": result.loss_sum,
                       "grad_norm": result.grad_norm, "data_position": state.sampler.state_dict()})


def save(run: _Run, state: TrainState) -> Path:
    """A checkpoint of the state now, with the number of metrics rows written so far."""
    saved = {**state.state_dict(), **(run.extra_state() if run.extra_state else {}), "metrics_rows": run.metrics.rows}
    run.checkpoint = save_checkpoint(run.ckpt_root, state.step, model=state.model, optimizer=state.optimizer,
                                     state=saved, keep_last=run.cfg.keep_checkpoints)
    return run.checkpoint


def evaluate_and_log(run: _Run, state: TrainState) -> dict[str, float]:
    """The method's held-out figures (eval mode, no_grad, autocast), written as a metrics row."""
    if run.evaluate is None:
        return {}
    model = state.model
    was_training = model.training
    model.eval()
    with torch.no_grad(), run.spec.autocast():
        result = run.evaluate(model)
    model.train(was_training)
    run.metrics.write({"step": state.step, "tokens": state.tokens_seen, "elapsed_s": round(state.train_seconds, 3),
                       **result})
    return result


def roll_back(run: _Run, state: TrainState, spike: StepResult) -> bool:
    """Back to this run's newest checkpoint after a loss spike, keeping the sampler where it is: the data since is
    skipped. False when there is no checkpoint to go back to (the update alone is skipped)."""
    cfg = run.cfg
    position = state.sampler.state_dict()
    target = run.checkpoint if run.checkpoint is not None and run.checkpoint.is_dir() else None
    event = {"step": spike.step, "event": "loss_spike", "loss": round(spike.loss, 6), "zscore": round(spike.zscore, 3),
             "data_position": position}
    if target is None:
        run.metrics.write({**event, "action": "skipped_update (no checkpoint to roll back to)"})
        return False
    state.guard.rollbacks += 1
    if state.guard.rollbacks > cfg.spike_max_rollbacks:
        run.metrics.write({**event, "action": "abort"})
        raise RuntimeError(f"step {spike.step}: loss spike (z={spike.zscore:.1f}) after {cfg.spike_max_rollbacks} "
                           "rollbacks; the run is diverging (lower the learning rate or check the data)")
    rollbacks = state.guard.rollbacks
    saved = load_checkpoint(target, model=state.model, optimizer=state.optimizer)
    state.step, state.tokens_seen = saved["step"], saved["tokens_seen"]
    state.guard.load_state_dict(saved.get("guard", {}))
    state.guard.rollbacks = rollbacks
    state.guard.cooldown_until = state.step + cfg.spike_cooldown_steps
    run.metrics.write({**event, "action": "rollback", "to_step": state.step, "checkpoint": target.name,
                       "skipped_data": {"from": saved["sampler"], "to": position},
                       "lr_factor": cfg.spike_lr_cooldown, "cooldown_steps": cfg.spike_cooldown_steps})
    log.warning("step %d: loss %.4f is a spike (z=%.1f): rolled back to %s, skipping data %s..%s",
                spike.step, spike.loss, spike.zscore, target.name, saved["sampler"], position)
    return True
