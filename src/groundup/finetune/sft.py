"""Instruction fine-tuning (SFT): chats or Alpaca records, rendered with the chat template, loss on answers only.

Data: JSONL, each line either ``{"messages": [{"role", "content"}, ...]}`` (multi-turn; roles system,
user, assistant) or Alpaca's ``{"instruction", "input", "output"}``. Each conversation is rendered
with the base model dir's ``chat_template.jinja`` (ChatML by default) and only the assistant answers
and their end-of-turn tokens are trained (see :mod:`groundup.finetune.data`). Batches group examples
of similar length and pad on the right. The output model dir carries the template it was trained with.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from groundup.artifacts import write_json
from groundup.finetune import common
from groundup.finetune.data import (
    IGNORE_INDEX,
    DataError,
    DataStats,
    Example,
    ExampleBatches,
    chat_segments,
    pad_batch,
    parse_conversation,
    read_jsonl,
    tokenize_segments,
    train_val,
    truncate,
)
from groundup.parallel.data import spread_batches
from groundup.tokenizer.chat import read_chat_template, write_chat_template

log = logging.getLogger(__name__)

STAGE = "finetune-sft"


@dataclass(kw_only=True)
class Config(common.JsonlConfig):
    """Supervised instruction fine-tuning on chat or Alpaca JSONL, loss on the assistant's answers only."""

    chat_template: Path | None = None
    """A Jinja chat template file to train with (default: the base model dir's chat_template.jinja, else ChatML)."""


def load_examples(path: Path, tokenizer, template: str, max_len: int, stats: DataStats,
                  skip_bad_lines: bool) -> list[Example]:
    """Read, render, tokenize and truncate every conversation of ``path``."""

    def parse(obj: dict) -> Example | None:
        return truncate(tokenize_segments(tokenizer, chat_segments(parse_conversation(obj), template)), max_len, stats)

    examples = [e for e in read_jsonl(path, parse, stats, skip_bad_lines=skip_bad_lines) if e is not None]
    if not examples:
        raise DataError(f"{path}: every conversation was dropped ({stats.dropped_no_target} had no answer "
                        f"tokens left within {max_len} tokens)")
    stats.examples += len(examples)
    return examples


def collate(examples: list[Example], pad_id: int):
    def make(indices: list[int]):
        chosen = [examples[i] for i in indices]
        x, y = pad_batch(chosen, pad_id)
        return x, y, sum(len(e) - 1 for e in chosen)

    return make


@torch.no_grad()
def sequence_loss(model, examples: list[Example], pad_id: int, batch_size: int, device,
                  parallel=None) -> tuple[float, int]:
    """Mean loss per trained token over ``examples`` and the number of trained tokens (the batches shared
    by the data-parallel ranks under torchrun: ``parallel``)."""
    starts = range(0, len(examples), batch_size)

    def score(k: int) -> torch.Tensor:
        x, y = pad_batch(examples[starts[k] : starts[k] + batch_size], pad_id)
        n = int((y != IGNORE_INDEX).sum())
        loss = model(x.to(device), targets=y.to(device)).detach().double().cpu()
        return torch.stack([loss, torch.tensor(float(n), dtype=torch.float64)])

    total, count = 0.0, 0
    for loss, n in spread_batches(parallel, [2] * len(starts), score, dtype=torch.float64):
        total += float(loss) * int(n)
        count += int(n)
    return total / max(count, 1), count


def run(cfg: Config) -> Path:
    if common.finished(cfg, STAGE):
        return Path(cfg.out)
    s = common.setup(cfg)
    template = cfg.chat_template.read_text(encoding="utf-8") if cfg.chat_template else read_chat_template(cfg.model)
    max_len = cfg.max_len or s.config.block_size
    if max_len > s.config.block_size:
        raise ValueError(f"max_len {max_len} exceeds the model's block_size {s.config.block_size}")
    stats = DataStats()
    train, val = train_val(lambda path: load_examples(path, s.tokenizer, template, max_len, stats, cfg.skip_bad_lines),
                           cfg.data, cfg.val_data, cfg.val_fraction, cfg.seed)
    log.info("SFT: %d training and %d held-out conversations; %s", len(train), len(val), stats.as_dict())

    out = common.prepare_out(cfg, s, stage="finetune-sft", inputs=(cfg.data, cfg.val_data, cfg.chat_template))
    if s.is_main:
        write_json(out / "data_stats.json", stats.as_dict())
    pad_id = s.tokenizer.eos_id if s.tokenizer.eos_id is not None else 0
    sampler = ExampleBatches([len(e) for e in train], cfg.batch_size, collate(train, pad_id), seed=cfg.seed,
                             group_by_length=cfg.group_by_length)
    device = s.device

    def loss_fn(_model, batch) -> torch.Tensor:
        x, y, _ = batch
        return _model(x.to(device), targets=y.to(device))

    def evaluate(_model) -> dict[str, float]:
        loss, _ = sequence_loss(_model, val, pad_id, cfg.batch_size, device, s.loop_parallel)
        return {"val_loss": round(loss, 6), "val_perplexity": round(math.exp(min(loss, 50.0)), 4)}

    result = common.train(cfg, s, out, sampler, loss_fn, evaluate=evaluate if val else None,
                          batch_tokens=lambda batch: batch[2])
    summary = {**result.summary(), **result.last_eval, "data": stats.as_dict()}
    # the template the conversations were rendered with travels with the model
    common.save_result(cfg, s, stage=STAGE, summary=summary, inputs={"data": cfg.data},
                       write_more=lambda out: write_chat_template(out, template))
    return out
