"""Evaluation during training: a task set scored every N steps, into metrics.jsonl as ``eval/<task>/<metric>``.

``build_evaluator`` reads and checks the task files once, before training starts (a bad file fails the
run at step 0, not hours in), and returns the ``evaluate(model) -> dict`` callback that
``groundup.train.loop.train_loop`` calls every ``eval_every`` steps (in eval mode, under no_grad and
the run's autocast). Pretraining and fine-tuning pass it the same way::

    task_eval = build_evaluator(cfg.eval_tasks, tokenizer_file, limit=cfg.eval_tasks_limit, device=device)
    def evaluate(model):
        return {**held_out_loss(model), **task_eval(model)}
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from groundup.evaluate.suite import TaskSettings, evaluate_task, flat_scores, load_tasks

log = logging.getLogger(__name__)


def build_evaluator(task_specs: Sequence[str | Path], tokenizer_file: str | Path, *, limit: int | None = None,
                    batch_size: int = 16, settings: TaskSettings | None = None,
                    device: str | torch.device | None = None) -> Callable[[torch.nn.Module], dict[str, float]]:
    """The callback that scores ``task_specs`` on the model being trained (numbers only, rounded)."""
    from groundup.artifacts import find_tokenizer_file
    from groundup.tokenizer import Tokenizer

    tasks = load_tasks(task_specs)
    tokenizer = Tokenizer.from_file(find_tokenizer_file(tokenizer_file))
    if settings is None:
        settings = TaskSettings(limit=limit, batch_size=batch_size)
    log.info("evaluation during training: %s", ", ".join(f"{t.name} ({t.kind}, {len(t.items)} items)" for t in tasks))

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        results = {}
        for task in tasks:
            scores, _ = evaluate_task(model, tokenizer, task, settings, device=device)
            results.update(scores)
        return flat_scores(results)

    return evaluate
