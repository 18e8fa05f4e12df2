"""Training steps on one fixed batch through the real training step (``train.step.train_step``), for the tests of
a model block: the block must learn (the loss falls) and report what it logs."""

from __future__ import annotations

import torch

from groundup.train.loop import LoopConfig
from groundup.train.optim import OptimConfig, build_optimizer
from groundup.train.stability import SpikeGuard
from groundup.train.step import StepSpec, TrainState, micro_batches, train_step


class OneBatch:
    """A sampler that hands out the same batch every step."""

    def __init__(self, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.batch = batch

    def next_batch(self):
        return self.batch

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def train_on_one_batch(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor], steps: int, *,
                       lr: float = 3e-3) -> list:
    """``steps`` AdamW steps of ``model`` on ``batch`` (inputs, targets); each step's ``StepResult``."""
    state = TrainState(model=model, optimizer=build_optimizer(model, OptimConfig(lr=lr), "cpu"),
                       sampler=OneBatch(batch), guard=SpikeGuard(LoopConfig()))
    spec = StepSpec(loss_fn=lambda m, b: m(*b), tokens_per_micro_batch=batch[0].numel())
    return [train_step(state, micro_batches(state.sampler), spec, lr=lr, accum=1, grad_clip=1.0) for _ in range(steps)]
