"""The `groundup quantize` stage: a model dir with int8 or int4 weights, for faster decoding on the CPU.

    groundup quantize --model runs/x/model --to int8 --out runs/x/model-int8
    groundup quantize --model runs/x/model --to int4 --group-size 64 --out runs/x/model-int4

The output is a model dir like any other (generate, chat, serve and evaluate load it); its
``quantization.json`` says how the weights are stored (formats in :mod:`groundup.model.quant`). It is
for inference only: fine-tuning and export take the original model dir.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from groundup.artifacts import prepare_out, read_manifest
from groundup.model.io import load_model_dir, read_quantization, save_model_dir
from groundup.model.quant import QuantConfig, quantize_model

STAGE = "quantize"


@dataclass(kw_only=True)
class Config:
    """Quantize a model dir's weights (weight-only int8 per channel, or int4 per group) for inference."""

    model: Path = Path("runs/tiny/model")
    """Model dir to quantize (full-precision weights)."""
    to: Literal["int8", "int4"] = "int8"
    """int8: one scale per output channel; int4: a scale and a zero per group of inputs (the head stays int8)."""
    group_size: int = 64
    """int4: inputs per group (32, 64 or 128); smaller groups are more accurate and a little slower."""
    out: Path = Path("runs/tiny/model-int8")
    """Output model dir (a new folder, or an earlier output of this stage)."""
    overwrite: bool = False
    """Write into a non-empty `out` that is not an earlier output of this stage (never over the model dir)."""


def run(cfg: Config) -> Path:
    model_dir, out = Path(cfg.model), Path(cfg.out)
    quant = QuantConfig(method=cfg.to, group_size=cfg.group_size if cfg.to == "int4" else None)
    existing = read_quantization(model_dir) if model_dir.is_dir() else None
    if existing is not None:
        raise ValueError(f"{model_dir} is already quantized ({existing.method}): quantize the full-precision "
                         f"model dir it came from")
    prepare_out(out, stage=STAGE, inputs=[model_dir], overwrite=cfg.overwrite)
    model, _ = load_model_dir(model_dir)
    with torch.no_grad():
        quantize_model(model, quant)
    train_config = read_manifest(model_dir).get("config", {}) if (model_dir / "manifest.json").is_file() else {}
    return save_model_dir(out, model, tokenizer_file=model_dir, stage=STAGE,
                          config={"quantization": quant.as_dict(), "source": train_config},
                          inputs={"model": model_dir})
