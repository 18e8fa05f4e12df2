"""Instruction fine-tuning (SFT): chats or Alpaca records, rendered with the chat template, loss on answers only.

Data: JSONL, each line either ``{"messages": [{"role", "content"}, ...]}`` (multi-turn; roles system,
user, assistant) or Alpaca's ``{"instruction", "input", "output"}``. Each conversation is rendered
with the base model dir's ``chat_template.jinja`` (ChatML by default) and only the assistant answers
and their end-of-turn tokens are trained (see :mod:`groundup.finetune.data`). Batches group examples
of similar length and pad on the right; with ``packing`` each row holds several conversations instead,
packed by best fit, each attending only to itself. The output model dir carries the template it was
trained with.
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
    collate_rows,
    pack_examples,
    pad_batch,
    parse_conversation,
    parse_tools,
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
    packing: bool = False
    """Pack several conversations into each row of up to `max_len` tokens (best-fit decreasing, as Multipack),
    each attending only to itself (document-causal attention), so rows carry little padding; `batch_size` then
    counts rows. Needs a model with RoPE positions (learned position embeddings would see a packed conversation
    at shifted positions)."""


def load_examples(path: Path, tokenizer, template: str, max_len: int, stats: DataStats,
                  skip_bad_lines: bool) -> list[Example]:
    """Read, render, tokenize and truncate every conversation of ``path``."""

    def parse(obj: dict) -> Example | None:
        pieces = chat_segments(parse_conversation(obj), template, tools=parse_tools(obj))
        return truncate(tokenize_segments(tokenizer, pieces), max_len, stats)

    examples = [e for e in read_jsonl(path, parse, stats, skip_bad_lines=skip_bad_lines) if e is not None]
    if not examples:
        raise DataError(f"{path}: every conversation was dropped ({stats.dropped_no_target} had no answer "
                        f"tokens left within {max_len} tokens)")
    stats.examples += len(examples)
    return examples


def collate(examples: list[Example], pad_id: int, rows: list[list[int]] | None = None):
    """Batches from indices: of examples, or with ``rows`` (packing) of rows of examples; each batch is
    ``(x, y, tokens)``, and packed ones carry ``segments`` after them."""

    def make(indices: list[int]):
        chosen = [[examples[j] for j in rows[i]] if rows is not None else [examples[i]] for i in indices]
        x, y, segments = collate_rows(chosen, pad_id)
        tokens = sum(len(e) - 1 for row in chosen for e in row)
        return (x, y, tokens) if rows is None else (x, y, tokens, segments)

    return make


def batches_of(cfg: Config, train: list[Example], pad_id: int, max_len: int) -> ExampleBatches:
    """The training sampler: examples padded to the longest in each batch, or packed rows of them."""
    if not cfg.packing:
        return ExampleBatches([len(e) for e in train], cfg.batch_size, collate(train, pad_id), seed=cfg.seed,
                              group_by_length=cfg.group_by_length)
    rows = pack_examples([len(e) - 1 for e in train], max_len, cfg.seed)
    log.info("SFT packing: %d conversations in %d rows of up to %d tokens", len(train), len(rows), max_len)
    return ExampleBatches([sum(len(train[i]) - 1 for i in row) + 1 for row in rows], cfg.batch_size,
                          collate(train, pad_id, rows), seed=cfg.seed, group_by_length=cfg.group_by_length)


def epoch_efficiency(sampler: ExampleBatches) -> float:
    """Share of the positions of an epoch's batches (each padded to its longest row) that hold tokens."""
    tokens = positions = 0
    for k in range(sampler.per_epoch):
        lengths = [sampler.lengths[i] - 1 for i in sampler.indices(k)]
        tokens, positions = tokens + sum(lengths), positions + len(lengths) * max(lengths)
    return round(tokens / max(positions, 1), 6)


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
    if cfg.packing and s.config.position != "rope":
        raise ValueError(f"packing: the model has {s.config.position} position embeddings, which would see each "
                         f"packed conversation at the positions after the ones before it; packing needs RoPE")
    stats = DataStats()
    train, val = train_val(lambda path: load_examples(path, s.tokenizer, template, max_len, stats, cfg.skip_bad_lines),
                           cfg.data, cfg.val_data, cfg.val_fraction, cfg.seed)
    log.info("SFT: %d training and %d held-out conversations; %s", len(train), len(val), stats.as_dict())

    out = common.prepare_out(cfg, s, stage="finetune-sft", inputs=(cfg.data, cfg.val_data, cfg.chat_template))
    if s.is_main:
        write_json(out / "data_stats.json", stats.as_dict())
    pad_id = s.tokenizer.eos_id if s.tokenizer.eos_id is not None else 0
    sampler = batches_of(cfg, train, pad_id, max_len)
    efficiency = epoch_efficiency(sampler)
    log.info("SFT: %.1f%% of the positions of an epoch's batches hold tokens (the rest is padding)", 100 * efficiency)
    device = s.device

    def loss_fn(_model, batch):
        x, y, tokens = batch[:3]
        segments = batch[3].to(device) if len(batch) > 3 else None
        loss = _model(x.to(device), targets=y.to(device), segments=segments)
        return loss, {"packing_efficiency": tokens / x.numel()}

    def evaluate(_model) -> dict[str, float]:
        loss, _ = sequence_loss(_model, val, pad_id, cfg.batch_size, device, s.loop_parallel)
        return {"val_loss": round(loss, 6), "val_perplexity": round(math.exp(min(loss, 50.0)), 4)}

    result = common.train(cfg, s, out, sampler, loss_fn, evaluate=evaluate if val else None,
                          batch_tokens=lambda batch: batch[2])
    summary = {**result.summary(), **result.last_eval, "data": stats.as_dict(),
               "packing": {"packed": cfg.packing, "rows": len(sampler.lengths), "efficiency": efficiency}}
    # the template the conversations were rendered with travels with the model
    common.save_result(cfg, s, stage=STAGE, summary=summary, inputs={"data": cfg.data},
                       write_more=lambda out: write_chat_template(out, template))
    return out
