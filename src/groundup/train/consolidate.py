"""The consolidate stage: a training checkpoint (distributed or plain) in, a plain model dir out.

A distributed checkpoint is a set of DCP shards written by many ranks, with fused projections in the
tensor-parallel row order when TP was on. This stage reads it in one process (DCP reshards to one
rank), restores the model file's layout and writes the usual model dir: ``model.safetensors``,
``config.json``, ``tokenizer.json`` ... ready for generate, evaluate, export or fine-tuning.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from groundup.artifacts import MODEL_DIR_NAMES, prepare_out, read_json
from groundup.model.config import ModelConfig
from groundup.model.io import save_model_dir
from groundup.model.transformer import Transformer
from groundup.train.checkpoint import STATE_FILE, latest_checkpoint, load_checkpoint


@dataclass(kw_only=True)
class Config:
    """Turn a training checkpoint (DCP shards of any number of ranks, or a one-process one) into a model dir."""

    checkpoint: Path
    """A checkpoint dir (checkpoints/step-N), or a run dir / checkpoints dir (its newest complete checkpoint)."""
    out: Path
    """The model dir to write."""
    tokenizer: Path | None = None
    """Tokenizer dir or tokenizer.json (default: the one the checkpoint records)."""
    overwrite: bool = False
    """Write into a non-empty `out` that is not an earlier consolidate output (entries with a model dir's names
    are replaced, nothing else is removed; `out` may never hold or lie inside the checkpoint)."""


def resolve_checkpoint(path: Path) -> Path:
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return path
    for root in (path / "checkpoints", path):
        found = latest_checkpoint(root)
        if found is not None:
            return found
    raise FileNotFoundError(f"{path}: no complete checkpoint (a step-N dir holding {STATE_FILE}) found")


def run(cfg: Config) -> Path:
    path = resolve_checkpoint(cfg.checkpoint)
    prepare_out(cfg.out, stage="consolidate", inputs=[path, cfg.tokenizer], overwrite=cfg.overwrite,
                unfinished=MODEL_DIR_NAMES)
    state = read_json(path / STATE_FILE)
    if "model_config" not in state:
        raise ValueError(f"{path / STATE_FILE}: no model_config recorded (a checkpoint of an older groundup?)")
    model_cfg = ModelConfig(**state["model_config"])
    tokenizer = cfg.tokenizer or state.get("tokenizer")
    if not tokenizer:
        raise ValueError(f"{path / STATE_FILE} records no tokenizer: pass --tokenizer")
    model = Transformer(model_cfg)
    load_checkpoint(path, model=model, optimizer=None, restore_rng=False)
    summary = {"checkpoint": str(path), "step": state["step"], "tokens_seen": state.get("tokens_seen"),
               "world_size": state.get("world_size", 1), "tensor_parallel": state.get("tensor_parallel", 1)}
    return save_model_dir(cfg.out, model, tokenizer_file=tokenizer, stage="consolidate",
                          config={k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()},
                          inputs={"checkpoint": path}, extra={"result": summary})
