"""Classifier fine-tuning: the output head becomes an n-class head read at the last real token.

Data: JSONL ``{"text": str, "label": str | int}``. The classes are the sorted distinct labels of the
training data (or ``labels``, to fix their order); a held-out label outside them is an error naming
its line. Texts longer than ``max_len`` tokens keep their first ``max_len`` tokens (counted as
``truncated``). Sequences are right-padded and the class logits are read at each sequence's last
real token, which has attended to the whole text (the causal model's summary position).

The result is a classifier dir (:mod:`groundup.model.classifier`); ``groundup classify`` runs it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from groundup.artifacts import write_json
from groundup.finetune import common
from groundup.finetune.data import (
    DataError,
    DataStats,
    ExampleBatches,
    parse_labeled,
    read_jsonl,
    train_val,
)
from groundup.model.classifier import (
    CLASSIFIER_FILE,
    HEAD,
    add_class_head,
    class_logits,
    encode_texts,
    pad_texts,
)
from groundup.parallel.data import spread_batches

log = logging.getLogger(__name__)

STAGE = "finetune-classify"


@dataclass(kw_only=True)
class Config(common.JsonlConfig):
    """Fine-tune a model dir into a text classifier on JSONL text,label records."""

    labels: list[str] | None = None
    """The class names in order (default: the sorted distinct labels of the training data)."""


@torch.no_grad()
def evaluate_classifier(model, seqs: list[list[int]], labels: list[int], pad_id: int, batch_size: int,
                        device, parallel=None) -> dict[str, float]:
    """Held-out loss and accuracy (the batches shared by the data-parallel ranks under torchrun: ``parallel``)."""
    starts = range(0, len(seqs), batch_size)

    def score(k: int) -> torch.Tensor:
        x, lengths = pad_texts(seqs[starts[k] : starts[k] + batch_size], pad_id)
        y = torch.tensor(labels[starts[k] : starts[k] + batch_size], device=device)
        logits = class_logits(model, x.to(device), lengths.to(device)).float()
        loss = F.cross_entropy(logits, y, reduction="sum").double().cpu()
        return torch.stack([loss, (logits.argmax(-1) == y).sum().double().cpu()])

    loss, correct = 0.0, 0
    for batch_loss, batch_correct in spread_batches(parallel, [2] * len(starts), score, dtype=torch.float64):
        loss += float(batch_loss)
        correct += int(batch_correct)
    return {"val_loss": round(loss / len(seqs), 6), "val_accuracy": round(correct / len(seqs), 6)}


def run(cfg: Config) -> Path:
    if common.finished(cfg, STAGE):
        return Path(cfg.out)
    stats = DataStats()
    train, val = train_val(lambda path: read_jsonl(path, parse_labeled, stats, skip_bad_lines=cfg.skip_bad_lines),
                           cfg.data, cfg.val_data, cfg.val_fraction, cfg.seed)
    names = list(cfg.labels) if cfg.labels else sorted({label for _, label in train})
    if len(names) < 2:
        raise DataError(f"{cfg.data}: a classifier needs at least two classes, found {names}")
    index = {name: i for i, name in enumerate(names)}
    for where, records in (("training", train), ("held-out", val)):
        unknown = sorted({label for _, label in records if label not in index})
        if unknown:
            raise DataError(f"{cfg.val_data if where == 'held-out' and cfg.val_data else cfg.data}: {where} "
                            f"labels {unknown[:5]} are not among the classes {names}")
    stats.examples = len(train) + len(val)

    keep = (HEAD,)
    s = common.setup(cfg, adapt=lambda m: add_class_head(m, len(names)), keep_trainable=keep)
    max_len = cfg.max_len or s.config.block_size
    train_seqs = encode_texts(s.tokenizer, [t for t, _ in train], max_len, stats)
    val_seqs = encode_texts(s.tokenizer, [t for t, _ in val], max_len, stats)
    train_y = [index[label] for _, label in train]
    val_y = [index[label] for _, label in val]
    counts = {name: train_y.count(i) for i, name in enumerate(names)}
    majority = max(counts.values()) / len(train_y)
    log.info("classifier: %d classes %s; %d training, %d held-out texts", len(names), counts, len(train), len(val))

    out = common.prepare_out(cfg, s, stage="finetune-classify", inputs=(cfg.data, cfg.val_data))
    if s.is_main:
        write_json(out / "data_stats.json", {**stats.as_dict(), "class_counts": counts})
    pad_id = s.tokenizer.eos_id if s.tokenizer.eos_id is not None else 0
    device = s.device

    def collate(indices: list[int]):
        x, lengths = pad_texts([train_seqs[i] for i in indices], pad_id)
        return x, lengths, torch.tensor([train_y[i] for i in indices])

    sampler = ExampleBatches([len(t) for t in train_seqs], cfg.batch_size, collate, seed=cfg.seed,
                             group_by_length=cfg.group_by_length)

    def loss_fn(_model, batch):
        x, lengths, y = (t.to(device) for t in batch)
        logits = class_logits(_model, x, lengths).float()
        accuracy = float((logits.argmax(-1) == y).float().mean())
        return F.cross_entropy(logits, y), {"accuracy": accuracy}

    def evaluate(_model) -> dict[str, float]:
        return evaluate_classifier(_model, val_seqs, val_y, pad_id, cfg.batch_size, device, s.loop_parallel)

    result = common.train(cfg, s, out, sampler, loss_fn, evaluate=evaluate if val else None,
                          batch_tokens=lambda batch: int(batch[1].sum()))
    summary = {**result.summary(), **result.last_eval, "majority_accuracy": round(majority, 6),
               "labels": names, "data": stats.as_dict()}
    meta = {"labels": names, "pooling": "last_token", "max_len": max_len, "pad_id": pad_id}
    common.save_result(cfg, s, stage=STAGE, summary=summary, keep_trainable=keep,
                       inputs={"data": cfg.data}, peft_task="SEQ_CLS",
                       write_more=lambda out: write_json(out / CLASSIFIER_FILE, meta))
    return out
