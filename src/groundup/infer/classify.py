"""The `groundup classify` stage: labels (and class probabilities) from a classifier dir.

A classifier dir is what `groundup finetune classify` writes (see :mod:`groundup.model.classifier`).
Texts come from ``--text`` (one, a list ``'[a, b]'``, or ``--text+ a --text+ b``) or a JSONL file with a ``text`` field per line; results go
to stdout as JSON lines, or to ``--out`` as JSONL (the input records with ``label`` and
``probabilities`` added; a regression head's, with ``score``).
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from groundup.artifacts import JsonlStats, first_record_has, prepare_out, read_jsonl
from groundup.model.classifier import class_logits, encode_texts, load_classifier_dir, pad_texts
from groundup.model.transformer import first_tensor

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Config:
    """Classify texts with a classifier dir (from `groundup finetune classify`)."""

    model: Path = Path("runs/classifier")
    """Classifier dir."""
    text: str | list[str] | None = None
    """A text to classify, or a list of them ('[first, second]'; --text+ adds one more)."""
    input: Path | None = None
    """A JSONL file with a 'text' field on every line (instead of, or besides, --text)."""
    out: Path | None = None
    """Write results as JSONL here (default: print them)."""
    batch_size: int = 32
    """Texts per forward pass."""
    device: str = "cpu"
    """'cpu', 'cuda' or 'cuda:N'."""
    overwrite: bool = False
    """Replace an existing `out` file that is not an earlier output of this command (never an input file)."""


@torch.no_grad()
def predict_scores(model, tokenizer, meta: dict, texts: list[str], batch_size: int = 32) -> list[float]:
    """A regression head's prediction for each text, in the score's units."""
    if meta.get("task") != "regression":
        raise ValueError(f"not a regression head (classifier.json task: {meta.get('task', 'classes')!r}); "
                         f"train one with `groundup finetune classify --task regression`")
    device = first_tensor(model).device
    seqs = encode_texts(tokenizer, texts, meta["max_len"])
    scores: list[float] = []
    for i in range(0, len(seqs), batch_size):
        x, lengths = pad_texts(seqs[i : i + batch_size], meta["pad_id"])
        out = class_logits(model, x.to(device), lengths.to(device), meta.get("pooling", "last_token"))
        scores.extend((meta["target_mean"] + meta["target_std"] * out[:, 0].double()).cpu().tolist())
    return scores


@torch.no_grad()
def classify_texts(model, tokenizer, meta: dict, texts: list[str], batch_size: int = 32) -> list[dict]:
    """For each text: ``{"label", "probabilities": {label: p}}``; a regression head's: ``{"score"}``."""
    if meta.get("task") == "regression":
        return [{"score": round(v, 6)} for v in predict_scores(model, tokenizer, meta, texts, batch_size)]
    device = first_tensor(model).device
    seqs = encode_texts(tokenizer, texts, meta["max_len"])
    results = []
    for i in range(0, len(seqs), batch_size):
        x, lengths = pad_texts(seqs[i : i + batch_size], meta["pad_id"])
        logits = class_logits(model, x.to(device), lengths.to(device), meta.get("pooling", "last_token"))
        probs = logits.float().softmax(-1).cpu()
        for row in probs:
            results.append({"label": meta["labels"][int(row.argmax())],
                            "probabilities": {name: round(float(p), 6) for name, p in zip(meta["labels"], row, strict=True)}})
    return results


def read_texts(path: Path) -> list[dict]:
    """The records of a JSONL file with a string ``text`` on every line; a bad line is an error naming it
    (an unfinished last line, from a writer that stopped, is skipped with a warning)."""
    records, stats = [], JsonlStats()
    for lineno, obj in read_jsonl(path, stats=stats, strict=True):
        if not isinstance(obj.get("text"), str):
            raise ValueError(f"{path}:{lineno}: expected a string field 'text'")
        records.append(obj)
    for example in stats.examples:
        log.warning("skipped %s", example)
    return records


def run(cfg: Config) -> Path | None:
    if cfg.out:
        prepare_out(cfg.out, stage="classify", inputs=[cfg.model, cfg.input], overwrite=cfg.overwrite,
                    written_by=lambda path: first_record_has(path, {"label", "probabilities"})
                    or first_record_has(path, {"score"}))
    texts = [cfg.text] if isinstance(cfg.text, str) else list(cfg.text or [])
    records = [{"text": t} for t in texts]
    if cfg.input:
        records += read_texts(cfg.input)
    if not records:
        raise ValueError("nothing to classify: pass --text or --input")
    model, tokenizer, meta = load_classifier_dir(cfg.model, device=cfg.device)
    results = classify_texts(model, tokenizer, meta, [r["text"] for r in records], cfg.batch_size)
    lines = [json.dumps({**r, **res}, ensure_ascii=False) for r, res in zip(records, results, strict=True)]
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        return Path(cfg.out)
    sys.stdout.write("".join(line + "\n" for line in lines))
    return None
