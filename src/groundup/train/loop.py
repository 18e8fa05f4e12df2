"""The training loop every method shares: accumulation, clipping, schedule, metrics, checkpoints, resume, budget.

A method (pretraining, fine-tuning) supplies a model, a sampler of batches with
``next_batch()`` / ``state_dict()`` / ``load_state_dict()``, and a loss function; the loop
does the rest. On CPU a run is bitwise reproducible: N steps straight give the same weights
as k steps, a stop, ``resume``, and N - k steps.

A loss function may return ``(loss, extras)``: the float ``extras`` (a DPO reward margin, say)
are averaged like the loss and written on each metrics line. When batches hold a varying number
of tokens (padded fine-tuning batches), ``batch_tokens(batch)`` counts them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import nn

from groundup.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from groundup.train.logging import LogConfig, Observer, open_observers
from groundup.train.optim import OptimConfig, lr_at, set_lr

log = logging.getLogger(__name__)


class Sampler(Protocol):
    def next_batch(self) -> Any: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


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


class SpikeGuard:
    """Loss-spike detection by z-score against a window of recent step losses (its state is checkpointed)."""

    def __init__(self, cfg: LoopConfig) -> None:
        self.cfg = cfg
        self.history: list[float] = []
        self.rollbacks = 0
        self.cooldown_until = -1

    def is_spike(self, loss: float) -> tuple[bool, float]:
        """(spike?, z-score) for a finite step loss; a normal loss joins the window."""
        z = 0.0
        if self.cfg.spike_zscore is not None and len(self.history) >= self.cfg.spike_window:
            mean = sum(self.history) / len(self.history)
            std = math.sqrt(sum((h - mean) ** 2 for h in self.history) / (len(self.history) - 1))
            z = (loss - mean) / max(std, 1e-8)
            if z > self.cfg.spike_zscore:
                return True, z
        self.history = (self.history + [loss])[-self.cfg.spike_window:]
        return False, z

    def lr_factor(self, step: int) -> float:
        return self.cfg.spike_lr_cooldown if step < self.cooldown_until else 1.0

    def state_dict(self) -> dict:
        return {"history": self.history, "rollbacks": self.rollbacks, "cooldown_until": self.cooldown_until}

    def load_state_dict(self, state: dict) -> None:
        self.history = [float(h) for h in state.get("history", [])]
        self.rollbacks = int(state.get("rollbacks", 0))
        self.cooldown_until = int(state.get("cooldown_until", -1))


class MetricsLog:
    """Append-only ``metrics.jsonl``; on resume, lines past the resumed step are dropped.

    Under several processes only rank 0 writes (``enabled=False`` elsewhere). ``observers`` (TensorBoard,
    a report refresher: :mod:`groundup.train.logging`) see every record too."""

    def __init__(self, path: Path, resume_step: int | None, observers: list[Observer] | None = None,
                 enabled: bool = True) -> None:
        self.path = path
        self._f = None
        self.observers = list(observers or []) if enabled else []
        if not enabled:
            return
        if resume_step is not None and path.exists():
            kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        elif resume_step is None:
            path.write_text("", encoding="utf-8")
        self._f = open(path, "a", encoding="utf-8")  # noqa: SIM115 (held for the run)

    def write(self, record: dict) -> None:
        if self._f is None:
            return
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()
        for observer in self.observers:
            observer.write(record)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
        for observer in self.observers:
            observer.close()


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


def _grad_norm(model: nn.Module, max_norm: float, parallel) -> float:
    """Global gradient norm, clipped to ``max_norm`` if positive.

    One process: torch's ``clip_grad_norm_`` (as ever). Several: the norm of each gradient is computed on
    its own (a DTensor's norm is reduced over its shards), so plain and DTensor gradients (tensor
    parallelism leaves norms and embeddings plain) can be mixed.
    """
    params = [p for p in model.parameters() if p.grad is not None]
    if parallel is None or not parallel.distributed:
        if max_norm > 0:
            return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        return float(torch.nn.utils.get_total_norm([p.grad for p in params]))
    from torch.distributed.tensor import DTensor

    total_sq = torch.zeros((), dtype=torch.float64)
    for p in params:
        n = torch.linalg.vector_norm(p.grad, 2.0, dtype=torch.float32)
        if isinstance(n, DTensor):
            n = n.full_tensor()
        total_sq += n.double().cpu() ** 2
    total = float(total_sq.sqrt())
    if max_norm > 0 and math.isfinite(total):
        coef = min(max_norm / (total + 1e-6), 1.0)
        if coef < 1.0:
            for p in params:
                p.grad.mul_(coef)
    return total


def train_loop(
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    sampler: Sampler,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor | tuple[torch.Tensor, dict[str, float]]],
    optim_cfg: OptimConfig,
    cfg: LoopConfig,
    out: Path,
    tokens_per_micro_batch: int,
    flops_per_token: float = 0.0,
    peak_flops: float | None = None,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    autocast: contextlib.AbstractContextManager | Callable[[], contextlib.AbstractContextManager] | None = None,
    extra_state: Callable[[], dict] | None = None,
    batch_tokens: Callable[[Any], int] | None = None,
    log_cfg: LogConfig | None = None,
    parallel=None,
) -> LoopResult:
    """Train ``model`` for ``cfg.max_steps`` optimizer steps (or until ``cfg.max_minutes``).

    ``parallel`` (a :class:`groundup.parallel.ParallelState`) is given under torchrun: then ``sampler``
    hands each rank its own micro-batches, ``tokens_per_micro_batch`` is one rank's, and ``cfg.grad_accum``
    is the accumulation of a single process: each of the ``dp`` data-parallel ranks runs
    ``grad_accum / dp`` micro-batches per step, so the global batch (and the learning rate that suits it)
    is the same whatever the number of ranks.
    """
    out = Path(out)
    ckpt_root = out / "checkpoints"
    step, tokens_seen, elapsed_before, resumed_from = 0, 0, 0.0, None
    dp = parallel.dp_size if parallel is not None else 1
    is_main = parallel is None or parallel.is_main
    if cfg.grad_accum % dp:
        raise ValueError(f"grad_accum={cfg.grad_accum} (the single-process accumulation) must be divisible by the "
                         f"{dp} data-parallel ranks: global batch = batch_size x grad_accum")
    accum = cfg.grad_accum // dp
    guard = SpikeGuard(cfg)

    resume_path = None
    if cfg.resume == "auto":
        resume_path = latest_checkpoint(ckpt_root)
    elif cfg.resume:
        resume_path = Path(cfg.resume)
    if resume_path is not None:
        state = load_checkpoint(resume_path, model=model, optimizer=optimizer)
        step, tokens_seen = state["step"], state["tokens_seen"]
        elapsed_before = state.get("train_seconds", 0.0)
        sampler.load_state_dict(state["sampler"])
        guard.load_state_dict(state.get("guard", {}))
        resumed_from = resume_path
        log.info("resumed from %s at step %d", resume_path, step)

    resume_step = step if resumed_from else None
    metrics = MetricsLog(out / "metrics.jsonl", resume_step,
                         open_observers(log_cfg, out, resume_step) if is_main else None, enabled=is_main)
    budget = cfg.max_minutes * 60.0 if cfg.max_minutes else math.inf
    make_autocast = autocast if callable(autocast) else (lambda: contextlib.nullcontext())

    def progress_now(elapsed: float) -> float:
        if cfg.schedule_clock == "time":
            return elapsed / budget
        return step / cfg.max_steps

    def checkpoint() -> Path:
        state = {"tokens_seen": tokens_seen, "train_seconds": elapsed, "sampler": sampler.state_dict(),
                 "guard": guard.state_dict()}
        if extra_state:
            state.update(extra_state())
        return save_checkpoint(ckpt_root, step, model=model, optimizer=optimizer, state=state,
                               keep_last=cfg.keep_checkpoints)

    def run_eval() -> dict[str, float]:
        if evaluate is None:
            return {}
        was_training = model.training
        model.eval()
        with torch.no_grad(), make_autocast():
            result = evaluate(model)
        model.train(was_training)
        metrics.write({"step": step, "tokens": tokens_seen, "elapsed_s": round(elapsed, 3), **result})
        return result

    def roll_back(loss: float, z: float) -> None:
        """Back to the newest checkpoint, keeping the sampler where it is: the data since is skipped."""
        nonlocal step, tokens_seen
        spiked_at, position = step, sampler.state_dict()
        target = latest_checkpoint(ckpt_root)
        event = {"step": spiked_at, "event": "loss_spike", "loss": round(loss, 6), "zscore": round(z, 3),
                 "data_position": position}
        if target is None:
            metrics.write({**event, "action": "skipped_update (no checkpoint to roll back to)"})
            return
        guard.rollbacks += 1
        if guard.rollbacks > cfg.spike_max_rollbacks:
            metrics.write({**event, "action": "abort"})
            raise RuntimeError(f"step {spiked_at}: loss spike (z={z:.1f}) after {cfg.spike_max_rollbacks} rollbacks; "
                               "the run is diverging (lower the learning rate or check the data)")
        rollbacks = guard.rollbacks
        state = load_checkpoint(target, model=model, optimizer=optimizer)
        step, tokens_seen = state["step"], state["tokens_seen"]
        guard.load_state_dict(state.get("guard", {}))
        guard.rollbacks = rollbacks
        guard.cooldown_until = step + cfg.spike_cooldown_steps
        skipped_from = state["sampler"]
        metrics.write({**event, "action": "rollback", "to_step": step, "checkpoint": target.name,
                       "skipped_data": {"from": skipped_from, "to": position},
                       "lr_factor": cfg.spike_lr_cooldown, "cooldown_steps": cfg.spike_cooldown_steps})
        log.warning("step %d: loss %.4f is a spike (z=%.1f): rolled back to %s, skipping data %s..%s",
                    spiked_at, loss, z, target.name, skipped_from, position)

    model.train()
    bar = _Progress(cfg, step, elapsed_before) if cfg.progress_bar and is_main else None
    start = time.perf_counter()
    elapsed = elapsed_before
    window_tokens, window_start = 0, time.perf_counter()
    window_loss, window_steps = 0.0, 0
    window_extras: dict[str, float] = {}
    last_eval: dict[str, float] = {}
    last_ckpt: Path | None = None
    stopped_by = "max_steps"
    try:
        while step < cfg.max_steps:
            lr = lr_at(step, progress_now(elapsed), optim_cfg) * guard.lr_factor(step)
            set_lr(optimizer, lr)
            loss_sum, step_tokens, step_extras = 0.0, 0, {}
            for i in range(accum):
                batch = sampler.next_batch()
                sync = parallel.sync_gradients(model, i == accum - 1) if parallel is not None else None
                with sync or contextlib.nullcontext():
                    with make_autocast():
                        loss = loss_fn(model, batch)
                    if isinstance(loss, tuple):
                        loss, extras = loss
                        for key, value in extras.items():
                            step_extras[key] = step_extras.get(key, 0.0) + float(value) / accum
                    (loss / accum).backward()
                loss_sum += loss.detach().float().item()
                step_tokens += batch_tokens(batch) if batch_tokens else tokens_per_micro_batch
            if parallel is not None:
                loss_sum = parallel.mean(loss_sum)  # every rank decides alike on what follows
                step_tokens = round(parallel.mean(float(step_tokens)) * dp)  # the global batch's tokens
                step_extras = {key: parallel.mean(value) for key, value in step_extras.items()}
            step_loss = loss_sum / accum
            grad_norm = _grad_norm(model, optim_cfg.grad_clip, parallel)
            spike, z = (False, 0.0)
            if math.isfinite(grad_norm) and math.isfinite(loss_sum):
                spike, z = guard.is_spike(step_loss)
                if not spike:
                    optimizer.step()
            else:
                log.warning("step %d: non-finite loss or gradient norm (%s, %s); update skipped",
                            step, loss_sum, grad_norm)
                metrics.write({"step": step, "event": "skipped_non_finite", "loss": loss_sum,
                               "grad_norm": grad_norm, "data_position": sampler.state_dict()})
            optimizer.zero_grad(set_to_none=True)
            if spike:
                roll_back(step_loss, z)
                window_loss, window_steps, window_tokens, window_extras = 0.0, 0, 0, {}
                if latest_checkpoint(ckpt_root) is not None:
                    continue
            step += 1
            tokens_seen += step_tokens
            window_tokens += step_tokens
            elapsed = elapsed_before + time.perf_counter() - start
            if math.isfinite(loss_sum) and not spike:
                window_loss += step_loss
                window_steps += 1
                for key, value in step_extras.items():
                    window_extras[key] = window_extras.get(key, 0.0) + value

            if step % cfg.log_every == 0 or step == cfg.max_steps:
                now = time.perf_counter()
                tokens_per_s = window_tokens / max(now - window_start, 1e-9)
                window_tokens, window_start = 0, now
                # the mean over the steps since the previous line: a single micro-batch's loss is noisy
                mean_loss = window_loss / window_steps if window_steps else step_loss
                record = {"step": step, "tokens": tokens_seen, "loss": round(mean_loss, 6),
                          "lr": lr, "grad_norm": round(grad_norm, 6), "tokens_per_s": round(tokens_per_s, 2),
                          "elapsed_s": round(elapsed, 3)}
                for key, value in window_extras.items():
                    record[key] = round(value / max(window_steps, 1), 6)
                window_loss, window_steps, window_extras = 0.0, 0, {}
                if peak_flops:
                    record["mfu"] = round(tokens_per_s * flops_per_token / peak_flops, 4)
                metrics.write(record)
                if bar is not None:
                    bar.update(step, elapsed, loss=f"{record['loss']:.3f}", tok_s=f"{tokens_per_s:,.0f}")
            elif bar is not None:
                bar.update(step, elapsed)

            out_of_time = elapsed >= budget
            if parallel is not None and parallel.distributed:
                out_of_time = parallel.mean(float(out_of_time)) > 0  # clocks differ: stop all if any must
            if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.max_steps and not out_of_time:
                last_eval = run_eval()
                window_start = time.perf_counter()  # evaluation time is not training throughput
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.max_steps:
                last_ckpt = checkpoint()
                window_start = time.perf_counter()
            if out_of_time:
                stopped_by = "max_minutes"
                break
    finally:
        if bar is not None:
            bar.close()
    last_ckpt = checkpoint()
    last_eval = run_eval()
    metrics.close()
    return LoopResult(step=step, tokens_seen=tokens_seen, train_seconds=elapsed, stopped_by=stopped_by,
                      last_eval=last_eval, checkpoint=last_ckpt)
