"""Loss-spike detection: a z-score against a window of recent step losses (its state is checkpointed).

The training loop asks :meth:`SpikeGuard.is_spike` of every finite step loss; on a spike it rolls back
to the newest checkpoint and skips the data since (see :mod:`groundup.train.loop`), and the learning
rate is multiplied by :meth:`SpikeGuard.lr_factor` for a cool-down.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the loop imports this module
    from groundup.train.loop import LoopConfig


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
