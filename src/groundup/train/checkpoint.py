"""Training checkpoints: weights (safetensors), optimizer, schedule, RNG and sampler state, written atomically.

A checkpoint is ``checkpoints/step-000123/`` holding ``model.safetensors``, ``optimizer.pt``
(tensors only, read back with ``weights_only=True``), ``rng.pt`` and ``state.json`` (step, tokens,
elapsed time, sampler position). It is written to a temporary directory and renamed into place,
so a crash mid-write leaves the previous checkpoints as they were.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import torch

from groundup.artifacts import atomic_dir, load_model_weights, read_json, save_model_weights, write_json

_STEP_DIR = re.compile(r"^step-(\d+)$")
STATE_FILE = "state.json"


def checkpoint_dirs(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (a complete one has its state.json)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: str | Path) -> Path | None:
    dirs = checkpoint_dirs(root)
    return dirs[-1] if dirs else None


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(root: str | Path, step: int, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], keep_last: int = 2) -> Path:
    """Write ``root/step-{step}`` atomically, then delete all but the newest ``keep_last`` checkpoints."""
    root = Path(root)
    final = root / f"step-{step:06d}"
    with atomic_dir(final) as tmp:
        save_model_weights(model, tmp / "model.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        write_json(tmp / STATE_FILE, {"step": step, **state})
    if keep_last > 0:
        for old in checkpoint_dirs(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    restore_rng: bool = True) -> dict[str, Any]:
    """Restore weights (and optimizer, RNG) from a checkpoint dir; returns its state.json."""
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {STATE_FILE})")
    load_model_weights(model, path / "model.safetensors")
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    if restore_rng:
        set_rng_state(torch.load(path / "rng.pt", map_location="cpu", weights_only=True))
    return read_json(path / STATE_FILE)
