"""One optimizer step, named: :func:`train_step` over :func:`forward_backward_step` per micro-batch.

:class:`TrainState` is everything a run carries from one step to the next (the model, optimizer,
sampler and spike guard, the step count, tokens seen and training time) and what a checkpoint saves
of it. :class:`StepSpec` is what stays fixed through a run: the method's loss function, the autocast
context, how to count a batch's tokens, and the parallel layout. The loop around them (budget, logging,
evaluation, checkpoints, resume, spike rollback) is :mod:`groundup.train.loop`.

A loss function may return ``(loss, extras)``: the float ``extras`` (a DPO reward margin, say) are
averaged over the micro-batches like the loss. When batches hold a varying number of tokens (padded
fine-tuning batches), ``batch_tokens(batch)`` counts them; else every micro-batch counts
``tokens_per_micro_batch``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from groundup.model.moe import moe_stats, update_expert_bias
from groundup.parallel.apply_ep import finish_moe_step
from groundup.parallel.env import ParallelState
from groundup.train.optim import set_lr
from groundup.train.stability import SpikeGuard

LossFn = Callable[[nn.Module, Any], "torch.Tensor | tuple[torch.Tensor, dict[str, float]]"]


class Sampler(Protocol):
    def next_batch(self) -> Any: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


@dataclass(kw_only=True)
class TrainState:
    """What the loop carries between steps; :meth:`state_dict` and the weights, optimizer and RNG are a checkpoint."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    sampler: Sampler
    guard: SpikeGuard
    step: int = 0
    """Optimizer steps done (a step skipped for a non-finite loss counts; one rolled back does not)."""
    tokens_seen: int = 0
    """Tokens of the global batches of the steps done."""
    train_seconds: float = 0.0
    """Training time up to the end of the last step, over every process that ran this run."""

    def advance(self, tokens: int) -> None:
        self.step += 1
        self.tokens_seen += tokens

    def state_dict(self) -> dict:
        """The checkpoint's state.json (beside weights, optimizer and RNG), but the step, which names the dir."""
        return {"tokens_seen": self.tokens_seen, "train_seconds": self.train_seconds,
                "sampler": self.sampler.state_dict(), "guard": self.guard.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.train_seconds = state.get("train_seconds", 0.0)
        self.sampler.load_state_dict(state["sampler"])
        self.guard.load_state_dict(state.get("guard", {}))


@dataclass(frozen=True, kw_only=True)
class StepSpec:
    """How each step runs: the same for the whole run."""

    loss_fn: LossFn
    """``loss_fn(model, batch)``: the loss (a scalar tensor), or ``(loss, extras)`` with float extras."""
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    """A new autocast context per forward (evaluation runs under it too)."""
    tokens_per_micro_batch: int = 0
    """Tokens of each micro-batch on this rank, when ``batch_tokens`` is not given."""
    batch_tokens: Callable[[Any], int] | None = None
    """Tokens of one micro-batch, for batches of varying size."""
    parallel: ParallelState | None = None
    """The layout under torchrun (None for one process): then the sampler hands each rank its own
    micro-batches and ``tokens_per_micro_batch`` is one rank's."""
    pipeline_inputs: Callable[[Any], tuple] | None = None
    """Under pipeline parallelism, ``batch -> (tokens, targets, keyword inputs of every stage, extras)``: the
    schedule runs the model's own loss on the last stage instead of ``loss_fn`` (see
    :mod:`groundup.parallel.apply_pp`). A method without it does not run pipelined."""

    def tokens(self, batch: Any) -> int:
        return self.batch_tokens(batch) if self.batch_tokens else self.tokens_per_micro_batch


@dataclass
class StepResult:
    """What one optimizer step did, averaged over its micro-batches (and ranks)."""

    step: int
    """The step's index: the steps done before it."""
    loss: float
    extras: dict[str, float]
    grad_norm: float
    tokens: int
    """Tokens of the global batch."""
    lr: float
    finite: bool
    """Loss and gradient norm are finite; else the update was skipped."""
    spike: bool = False
    """A loss spike: the update was skipped and the loop rolls back (see :mod:`groundup.train.stability`)."""
    zscore: float = 0.0
    loss_sum: float = field(default=0.0, repr=False)
    """The micro-batches' losses summed (what the non-finite event reports)."""

    @property
    def updated(self) -> bool:
        return self.finite and not self.spike


def micro_batches(sampler: Sampler) -> Iterator[Any]:
    """The sampler's batches, one after the other, drawn as they are asked for."""
    while True:
        yield sampler.next_batch()


def forward_backward_step(model: nn.Module, batch: Any, spec: StepSpec, *, accum: int,
                          last: bool) -> tuple[float, dict[str, float]]:
    """Forward and backward of one micro-batch, its gradient scaled by ``1/accum`` and added to ``.grad``.

    Under DDP and FSDP2 the gradients are reduced over the ranks on the ``last`` micro-batch of a step only.
    Returns the micro-batch's loss and extras."""
    sync = spec.parallel.sync_gradients(model, last) if spec.parallel is not None else None
    extras: dict[str, float] = {}
    with sync or contextlib.nullcontext():
        with spec.autocast():
            loss = spec.loss_fn(model, batch)
        if isinstance(loss, tuple):
            loss, extras = loss
        (loss / accum).backward()
    return loss.detach().float().item(), extras


def train_step(state: TrainState, batches: Iterator[Any], spec: StepSpec, *, lr: float, accum: int,
               grad_clip: float) -> StepResult:
    """One optimizer step over ``accum`` micro-batches of ``batches``: accumulate, clip, check, update.

    A non-finite loss or gradient norm skips the update (the step still counts); a loss spike skips it
    and leaves the state where it was, for the loop to roll back."""
    set_lr(state.optimizer, lr)
    loss_sum, tokens, extras = 0.0, 0, {}
    pipeline = spec.parallel.pipeline if spec.parallel is not None else None
    if pipeline is not None:
        loss_sum, tokens, extras = pipeline_step(pipeline, batches, spec, accum)
    for i in range(accum if pipeline is None else 0):
        batch = next(batches)
        loss, batch_extras = forward_backward_step(state.model, batch, spec, accum=accum, last=i == accum - 1)
        for key, value in batch_extras.items():
            extras[key] = extras.get(key, 0.0) + float(value) / accum
        loss_sum += loss
        tokens += spec.tokens(batch)
    parallel = spec.parallel
    if parallel is not None:
        loss_sum = parallel.mean(loss_sum)  # every rank decides alike on what follows
        tokens = round(parallel.mean(float(tokens)) * parallel.dp_size)  # the global batch's tokens
        extras = {key: parallel.mean(value) for key, value in extras.items()}
        finish_moe_step(state.model, parallel)  # global expert loads; expert-parallel gradients finished
    grad_norm = clip_grad_norm(state.model, grad_clip, parallel)
    result = StepResult(step=state.step, loss=loss_sum / accum, extras=extras, grad_norm=grad_norm, tokens=tokens,
                        lr=lr, finite=math.isfinite(grad_norm) and math.isfinite(loss_sum), loss_sum=loss_sum)
    if result.finite:
        result.spike, result.zscore = state.guard.is_spike(result.loss)
        if not result.spike:
            state.optimizer.step()
            update_expert_bias(state.model)  # DeepSeek-V3's balancing, where configured (no-op otherwise)
    result.extras.update(moe_metrics(state.model, pipeline.group if pipeline is not None else None))
    state.optimizer.zero_grad(set_to_none=True)
    if not result.spike:
        state.advance(tokens)
    return result


def pipeline_step(pipeline, batches: Iterator[Any], spec: StepSpec, accum: int) -> tuple[float, int, dict[str, float]]:
    """Forward and backward of a step's ``accum`` batches through the pipeline schedule: the sum of the losses as
    accumulation reports it (the mean loss x ``accum``, on every stage), the tokens and the extras."""
    if spec.pipeline_inputs is None:
        raise ValueError("parallel.pipeline_parallel > 1: this training method does not run pipelined (pretrain does)")
    drawn = [next(batches) for _ in range(accum)]
    mean, extras = pipeline.forward_backward(drawn, spec.pipeline_inputs)
    return mean * accum, sum(spec.tokens(batch) for batch in drawn), extras


def moe_metrics(model: nn.Module, pipeline_group=None) -> dict[str, float]:
    """The MoE layers' auxiliary and z losses, max/mean expert load, and each expert's share of this step's
    routed tokens (``moe_load_<e>``, summed over layers) as metrics; empty for a dense model. Under pipeline
    parallelism (``pipeline_group``, a collective) they cover every stage's layers, not this rank's alone."""
    # reads and resets the loads counted over this step's micro-batches
    stats = moe_stats(model, group=pipeline_group)
    loads = stats.pop("moe_expert_load", [])
    return {**stats, **{f"moe_load_{e}": share for e, share in enumerate(loads)}}


def clip_grad_norm(model: nn.Module, max_norm: float, parallel: ParallelState | None) -> float:
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
    if parallel.pipeline is not None:  # each rank holds its stages' gradients: the sum over the stages
        from groundup.parallel.apply_pp import clip_group_norm_sq

        total_sq = clip_group_norm_sq(total_sq, parallel.pipeline)
    total = float(total_sq.sqrt())
    if max_norm > 0 and math.isfinite(total):
        coef = min(max_norm / (total + 1e-6), 1.0)
        if coef < 1.0:
            for p in params:
                p.grad.mul_(coef)
    return total
