"""The ``groundup import`` stage: a local Hugging Face folder (GPT-2, Llama, Mistral, Qwen2, Qwen3, Mixtral, OLMoE,
Qwen2-MoE) -> a model dir.

The model dir holds the weights in groundup's layout, its config, the folder's ``tokenizer.json`` and its
chat template, so ``finetune``, ``evaluate``, ``generate`` and ``serve`` take it. Nothing is downloaded:
the folder must already be on disk (``huggingface-cli download ... --local-dir DIR`` makes one).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from groundup import config as configlib
from groundup.interop.export import VERIFY_TEXTS


@dataclass(kw_only=True)
class Config:
    """Import a local Hugging Face model folder as a groundup model dir."""

    model: Path = field(default=Path("hf-model"), metadata=configlib.aliases("--from"))
    """Local Hugging Face folder (config.json, safetensors or pytorch_model.bin, tokenizer.json)."""
    out: Path = Path("runs/imported/model")
    """Model dir to write."""
    verify: bool = False
    """Load the folder with transformers too and compare logits on a few prompts; fail if they differ."""
    tolerance: float = 1e-4
    """Largest logit difference --verify accepts (the comparison runs in float32)."""
    verify_texts: list[str] = field(default_factory=lambda: list(VERIFY_TEXTS))
    """Prompts --verify runs."""
    overwrite: bool = False
    """Write into a non-empty `out` that is not an earlier import (entries with a model dir's names are
    replaced, nothing else is removed; `out` may never hold or lie inside the Hugging Face folder)."""


def run(cfg: Config) -> Path:
    from groundup.artifacts import prepare_out
    from groundup.interop.hf import import_hf, verify_import

    previous = prepare_out(cfg.out, stage="import", inputs=[cfg.model], overwrite=cfg.overwrite)
    out = import_hf(cfg.model, cfg.out, previous=previous)
    print(f"wrote model dir {out}", file=sys.stderr)
    if cfg.verify:
        diff = verify_import(cfg.model, out, texts=cfg.verify_texts, tolerance=cfg.tolerance)
        print(f"verify: groundup logits match transformers', max abs diff {diff:.3g}", file=sys.stderr)
    return out
