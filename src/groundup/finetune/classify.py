"""Classifier fine-tuning: the output head becomes an n-class head (or a one-output regression head)
read at the last real token or averaged over the tokens.

Data: JSONL ``{"text": str, "label": str | int}``. The classes are the sorted distinct labels of the
training data (or ``labels``, to fix their order); a held-out label outside them is an error naming
its line. Texts longer than ``max_len`` tokens keep their first ``max_len`` tokens (counted as
``truncated``). Sequences are right-padded and the class logits are read at each sequence's last
real token, which has attended to the whole text (the causal model's summary position), or, with
``pooling: mean``, averaged over its tokens (the head on the mean of the hidden states).

With ``task: regression`` the head has one output and learns a number by squared error: each record's
``score`` (``groundup annotate``'s annotations.jsonl reads as it is) or numeric ``label``. The target is
standardized by the training data's mean and standard deviation (kept in classifier.json, so predictions
come back in the score's units); the held-out evaluation reports the mean squared and absolute errors.
``groundup train-scorer --kind model`` trains a curation quality scorer this way.

The result is a classifier dir (:mod:`groundup.model.classifier`); ``groundup classify`` runs it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from groundup.artifacts import write_json
from groundup.finetune import common
from groundup.finetune.data import (
    DataError,
    DataStats,
    ExampleBatches,
    parse_labeled,
    parse_scored,
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
    task: Literal["classes", "regression"] = "classes"
    """'classes': an n-class head on `label`; 'regression': one output learning the number in `score`
    (annotate's annotations.jsonl as it is) or a numeric `label`, by squared error."""
    pooling: Literal["last_token", "mean"] = "last_token"
    """Where the head reads a text: at its last real token, or averaged over its tokens (the head on the
    mean of the hidden states)."""


@torch.no_grad()
def evaluate_classifier(model, seqs: list[list[int]], labels: list[int], pad_id: int, batch_size: int,
                        device, parallel=None, pooling: str = "last_token") -> dict[str, float]:
    """Held-out loss and accuracy (the batches shared by the data-parallel ranks under torchrun: ``parallel``)."""
    starts = range(0, len(seqs), batch_size)

    def score(k: int) -> torch.Tensor:
        x, lengths = pad_texts(seqs[starts[k] : starts[k] + batch_size], pad_id)
        y = torch.tensor(labels[starts[k] : starts[k] + batch_size], device=device)
        logits = class_logits(model, x.to(device), lengths.to(device), pooling).float()
        loss = F.cross_entropy(logits, y, reduction="sum").double().cpu()
        return torch.stack([loss, (logits.argmax(-1) == y).sum().double().cpu()])

    loss, correct = 0.0, 0
    for batch_loss, batch_correct in spread_batches(parallel, [2] * len(starts), score, dtype=torch.float64):
        loss += float(batch_loss)
        correct += int(batch_correct)
    return {"val_loss": round(loss / len(seqs), 6), "val_accuracy": round(correct / len(seqs), 6)}


@torch.no_grad()
def evaluate_regression(model, seqs: list[list[int]], targets: list[float], pad_id: int, batch_size: int,
                        device, mean: float, std: float, parallel=None, pooling: str = "mean") -> dict[str, float]:
    """Held-out mean squared and absolute error, in the target's units."""
    starts = range(0, len(seqs), batch_size)

    def score(k: int) -> torch.Tensor:
        x, lengths = pad_texts(seqs[starts[k] : starts[k] + batch_size], pad_id)
        y = torch.tensor(targets[starts[k] : starts[k] + batch_size], device=device, dtype=torch.float64)
        predicted = mean + std * class_logits(model, x.to(device), lengths.to(device), pooling)[:, 0].double()
        return torch.stack([((predicted - y) ** 2).sum(), (predicted - y).abs().sum()]).cpu()

    squared, absolute = 0.0, 0.0
    for batch_squared, batch_absolute in spread_batches(parallel, [2] * len(starts), score, dtype=torch.float64):
        squared += float(batch_squared)
        absolute += float(batch_absolute)
    return {"val_loss": round(squared / len(seqs), 6), "val_mae": round(absolute / len(seqs), 6)}


def run(cfg: Config) -> Path:
    if cfg.task == "regression":
        return run_regression(cfg)
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

    sampler = _text_batches(cfg, train_seqs, train_y, pad_id)

    def loss_fn(_model, batch):
        x, lengths, y = (t.to(device) for t in batch)
        logits = class_logits(_model, x, lengths, cfg.pooling).float()
        accuracy = float((logits.argmax(-1) == y).float().mean())
        return F.cross_entropy(logits, y), {"accuracy": accuracy}

    def evaluate(_model) -> dict[str, float]:
        return evaluate_classifier(_model, val_seqs, val_y, pad_id, cfg.batch_size, device, s.loop_parallel,
                                   cfg.pooling)

    result = common.train(cfg, s, out, sampler, loss_fn, evaluate=evaluate if val else None,
                          batch_tokens=lambda batch: int(batch[1].sum()))
    summary = {**result.summary(), **result.last_eval, "majority_accuracy": round(majority, 6),
               "labels": names, "data": stats.as_dict()}
    meta = {"labels": names, "pooling": cfg.pooling, "max_len": max_len, "pad_id": pad_id}
    common.save_result(cfg, s, stage=STAGE, summary=summary, keep_trainable=keep,
                       inputs={"data": cfg.data}, peft_task="SEQ_CLS",
                       write_more=lambda out: write_json(out / CLASSIFIER_FILE, meta))
    return out


def _text_batches(cfg: Config, seqs: list[list[int]], targets: list, pad_id: int) -> ExampleBatches:
    """Batches of (padded token ids, lengths, targets) over the training texts: class indices or scores."""

    def collate(indices: list[int]):
        x, lengths = pad_texts([seqs[i] for i in indices], pad_id)
        return x, lengths, torch.tensor([targets[i] for i in indices])

    return ExampleBatches([len(t) for t in seqs], cfg.batch_size, collate, seed=cfg.seed,
                          group_by_length=cfg.group_by_length)


def run_regression(cfg: Config) -> Path:
    """``task: regression``: a one-output head learning each text's score (see the module's docstring)."""
    if common.finished(cfg, STAGE):
        return Path(cfg.out)
    stats = DataStats()
    train, val = train_val(lambda path: read_jsonl(path, parse_scored, stats, skip_bad_lines=cfg.skip_bad_lines),
                           cfg.data, cfg.val_data, cfg.val_fraction, cfg.seed)
    targets = [y for _, y in train]
    mean = sum(targets) / len(targets)
    std = math.sqrt(sum((y - mean) ** 2 for y in targets) / len(targets))
    if std == 0:
        raise DataError(f"{cfg.data}: every training score is {mean:g}; a regression needs scores that differ")
    stats.examples = len(train) + len(val)

    keep = (HEAD,)
    s = common.setup(cfg, adapt=lambda m: add_class_head(m, 1), keep_trainable=keep)
    max_len = cfg.max_len or s.config.block_size
    train_seqs = encode_texts(s.tokenizer, [t for t, _ in train], max_len, stats)
    val_seqs = encode_texts(s.tokenizer, [t for t, _ in val], max_len, stats)
    val_y = [y for _, y in val]
    log.info("regression: %d training, %d held-out texts; score mean %.3f, std %.3f", len(train), len(val), mean, std)

    out = common.prepare_out(cfg, s, stage="finetune-classify", inputs=(cfg.data, cfg.val_data))
    if s.is_main:
        write_json(out / "data_stats.json", {**stats.as_dict(), "target_mean": mean, "target_std": std})
    pad_id = s.tokenizer.eos_id if s.tokenizer.eos_id is not None else 0
    device = s.device
    standardized = [(y - mean) / std for y in targets]

    sampler = _text_batches(cfg, train_seqs, standardized, pad_id)

    def loss_fn(_model, batch):
        x, lengths, y = (t.to(device) for t in batch)
        predicted = class_logits(_model, x, lengths, cfg.pooling).float()[:, 0]
        return F.mse_loss(predicted, y.float()), {}

    def evaluate(_model) -> dict[str, float]:
        return evaluate_regression(_model, val_seqs, val_y, pad_id, cfg.batch_size, device, mean, std,
                                   s.loop_parallel, cfg.pooling)

    result = common.train(cfg, s, out, sampler, loss_fn, evaluate=evaluate if val else None,
                          batch_tokens=lambda batch: int(batch[1].sum()))
    # the error of always predicting the training mean: what the model must beat
    baseline = sum((y - mean) ** 2 for y in val_y) / len(val_y) if val_y else None
    summary = {**result.summary(), **result.last_eval, "task": "regression", "labels": ["score"],
               "mean_baseline_val_loss": None if baseline is None else round(baseline, 6), "data": stats.as_dict()}
    meta = {"labels": ["score"], "task": "regression", "pooling": cfg.pooling, "max_len": max_len, "pad_id": pad_id,
            "target_mean": mean, "target_std": std}
    common.save_result(cfg, s, stage=STAGE, summary=summary, keep_trainable=keep,
                       inputs={"data": cfg.data}, peft_task="SEQ_CLS",
                       write_more=lambda out: write_json(out / CLASSIFIER_FILE, meta))
    return out
