"""The `groundup classify` stage: labels (and class probabilities) from a classifier dir.

A classifier dir is what `groundup finetune classify` writes (see :mod:`groundup.finetune.classify`).
Texts come from ``--text`` (repeatable) or a JSONL file with a ``text`` field per line; results go
to stdout as JSON lines, or to ``--out`` as JSONL (the input records with ``label`` and
``probabilities`` added).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from groundup.artifacts import first_record_has, prepare_out
from groundup.finetune.classify import classify_texts, load_classifier_dir
from groundup.finetune.data import DataStats, read_jsonl


@dataclass(kw_only=True)
class Config:
    """Classify texts with a classifier dir (from `groundup finetune classify`)."""

    model: Path = Path("runs/classifier")
    """Classifier dir."""
    text: list[str] | None = None
    """Texts to classify."""
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


def _text_record(obj: dict) -> dict:
    if not isinstance(obj.get("text"), str):
        raise ValueError("expected a string field 'text'")
    return obj


def run(cfg: Config) -> Path | None:
    if cfg.out:
        prepare_out(cfg.out, stage="classify", inputs=[cfg.model, cfg.input], overwrite=cfg.overwrite,
                    written_by=lambda path: first_record_has(path, {"label", "probabilities"}))
    records = [{"text": t} for t in cfg.text or []]
    if cfg.input:
        records += read_jsonl(cfg.input, _text_record, DataStats())
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
