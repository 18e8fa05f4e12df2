"""Training checkpoints, written atomically: plain for one process, torch.distributed.checkpoint for many.

A checkpoint is ``checkpoints/step-000123/``. It is written under a temporary name and renamed into
place once whole, and only a dir holding ``state.json`` (written last) counts, so a job that dies
mid-write leaves the previous checkpoints as they were and ``--resume auto`` never picks the torn one.

- One process: ``model.safetensors``, ``optimizer.pt`` (tensors only, read back with
  ``weights_only=True``), ``rng.pt`` and ``state.json`` (step, tokens, elapsed time, sampler position).
- Several processes (DDP, FSDP2, TP, PP): a DCP checkpoint (``.metadata`` and ``__N_0.distcp`` shards,
  written by every rank in parallel) of the model and optimizer state dicts under their plain parameter
  names, one ``rng-rankNNNNN.pt`` per rank, and ``state.json``. DCP reshards on load, so a checkpoint of
  4 ranks resumes on 2 or 1; the sampler position in state.json is global (see
  :mod:`groundup.parallel.data`), so the token stream continues where it stopped. The optimizer state is
  saved flat, one entry per parameter and setting (``state.<name>.exp_avg``, ``param_groups.<name>.lr``;
  ``optimizer_state: flat`` in state.json): under pipeline parallelism each rank holds some parameters only,
  and a flat state loads at another pipeline degree (every stage writes its own parameters under their full
  model names; a rank reads those of its stages).

Either kind loads into either layout: one process reads a DCP checkpoint, ranks read a plain one.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import warnings
from pathlib import Path
from typing import Any

import torch

from groundup.artifacts import atomic_dir, fsync_dir, read_json, write_json
from groundup.model.io import load_model_weights, save_model_weights

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step-(\d+)$")
STATE_FILE = "state.json"
DCP_METADATA = ".metadata"
FAULT_ENV = "GROUNDUP_FAULT_KILL_IN_CHECKPOINT"
"""Fault injection for tests: ``STEP`` or ``STEP:RANK`` makes that rank SIGKILL itself in the middle of
writing the checkpoint of that step (after the tensors, before state.json and the rename)."""


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


def is_distributed_checkpoint(path: str | Path) -> bool:
    return (Path(path) / DCP_METADATA).is_file()


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fault_point(step: int, rank: int) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    at_step, _, at_rank = spec.partition(":")
    if int(at_step) == step and (not at_rank or int(at_rank) == rank):
        log.warning("fault injection: SIGKILL of rank %d while writing the checkpoint of step %d", rank, step)
        os.kill(os.getpid(), signal.SIGKILL)


def _prune(root: Path, keep_last: int) -> None:
    if keep_last > 0:
        for old in checkpoint_dirs(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def save_checkpoint(root: str | Path, step: int, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], keep_last: int = 2) -> Path:
    """Write ``root/step-{step}`` atomically, then delete all but the newest ``keep_last`` checkpoints.

    Under a process group every rank must call it (a collective); one process writes the plain format.
    """
    if _distributed():
        return _save_distributed(Path(root), step, model=model, optimizer=optimizer, state=state, keep_last=keep_last)
    root = Path(root)
    final = root / f"step-{step:06d}"
    with atomic_dir(final, previous=True) as tmp:  # step-N of this run's own checkpoints: replaced whole
        save_model_weights(model, tmp / "model.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        _fault_point(step, 0)
        write_json(tmp / STATE_FILE, {"step": step, **state})
    _prune(root, keep_last)
    return final


def _tensor_parallel(model: torch.nn.Module) -> int:
    from groundup.parallel.parallelize import unwrap

    return int(getattr(unwrap(model), "tensor_parallel", 1))


def _save_distributed(root: Path, step: int, *, model, optimizer, state: dict[str, Any], keep_last: int) -> Path:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    rank = dist.get_rank()
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-{final.name}-dcp"  # the same name on every rank; never matches step-N
    if rank == 0:
        for stale in root.glob(".tmp-step-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    model_state, optim_state = get_state_dict(model, optimizer, options=_options(flat=True))
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp))
    torch.save(rng_state(), tmp / f"rng-rank{rank:05d}.pt")
    _fault_point(step, rank)
    dist.barrier()  # every rank's shards are on disk
    if rank == 0:
        write_json(tmp / STATE_FILE, {"step": step, **state, "format": "dcp", "world_size": dist.get_world_size(),
                                      "tensor_parallel": _tensor_parallel(model), "optimizer_state": "flat"})
        fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(root)
        _prune(root, keep_last)
    dist.barrier()  # no rank moves on (or reads the dir) before it is in place
    return final


def load_checkpoint(path: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    restore_rng: bool = True) -> dict[str, Any]:
    """Restore weights (and optimizer, RNG) from a checkpoint dir of either kind; returns its state.json."""
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {STATE_FILE})")
    state = read_json(path / STATE_FILE)
    if is_distributed_checkpoint(path):
        _load_distributed(path, state, model=model, optimizer=optimizer, restore_rng=restore_rng)
    elif _distributed() or _tensor_parallel(model) > 1:
        _load_plain_into_parallel(path, model=model, optimizer=optimizer, restore_rng=restore_rng)
    else:
        load_model_weights(model, path / "model.safetensors")
        if optimizer is not None:
            optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
        if restore_rng:
            set_rng_state(torch.load(path / "rng.pt", map_location="cpu", weights_only=True))
    return state


def _options(flat: bool, **kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(flatten_optimizer_state_dict=flat, **kwargs)


def _load_distributed(path: Path, state: dict, *, model, optimizer, restore_rng: bool) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    saved_tp, tp = int(state.get("tensor_parallel", 1)), _tensor_parallel(model)
    if saved_tp != tp and tp != 1:
        raise ValueError(f"{path} was written with tensor_parallel={saved_tp}; this run has tensor_parallel={tp} "
                         "(resume with the same degree, or convert the checkpoint to a model dir first)")
    flat = state.get("optimizer_state") == "flat"  # older checkpoints hold the nested optimizer state dict
    options = _options(flat)
    if optimizer is not None:
        model_state, optim_state = get_state_dict(model, optimizer, options=options)
        target = {"model": model_state, "optim": optim_state}
    else:
        target = {"model": get_model_state_dict(model)}
    with warnings.catch_warnings():  # one process reading a DCP checkpoint is intended, not a mistake
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(target, checkpoint_id=str(path))
    if saved_tp > 1 and tp == 1:
        # Fused rows were saved in the tensor-parallel order: put them back (whole tensors here, as tp == 1
        # means the current model holds full fused weights unless FSDP shards them by rows).
        from groundup.parallel.apply_tp import to_plain_layout
        from groundup.parallel.parallelize import unwrap

        config = unwrap(model).config
        if any(hasattr(v, "placements") for v in target["model"].values()):
            raise ValueError(f"{path}: a tensor-parallel checkpoint loads into one process or DDP, not FSDP")
        target["model"] = to_plain_layout(target["model"], config, saved_tp)
        if optimizer is not None and flat:
            target["optim"] = _flat_optim_layout(target["optim"], to_plain_layout, config, saved_tp)
        elif optimizer is not None:
            target["optim"]["state"] = _optim_layout(target["optim"]["state"], to_plain_layout, config, saved_tp)
    set_model_state_dict(model, target["model"])
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, target["optim"], options=options)
    if restore_rng:
        import torch.distributed as dist

        rank = dist.get_rank() if _distributed() else 0
        rng_file = path / f"rng-rank{rank:05d}.pt"
        if rng_file.is_file():
            set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=True))


def _optim_layout(state: dict[str, dict], convert, config, tp: int) -> dict[str, dict]:
    """Apply a fused-row layout conversion to the per-parameter optimizer tensors (Adam's moments)."""
    return {fqn: {k: (convert({fqn: v}, config, tp)[fqn] if isinstance(v, torch.Tensor) and v.dim() >= 1 else v)
                  for k, v in st.items()} for fqn, st in state.items()}


def _flat_optim_layout(flat: dict[str, Any], convert, config, tp: int) -> dict[str, Any]:
    """:func:`_optim_layout` for a flat optimizer state dict (``state.<fqn>.<key>`` entries)."""
    out = dict(flat)
    for key, value in flat.items():
        if key.startswith("state.") and isinstance(value, torch.Tensor) and value.dim() >= 1:
            fqn = key.removeprefix("state.").rsplit(".", 1)[0]
            out[key] = convert({fqn: value}, config, tp)[fqn]
    return out


def clean_name(name: str) -> str:
    """A parameter's name in the plain model: without DDP's ``module.``, AC's and compile's wrapper parts."""
    parts = [p for p in name.split(".") if p not in ("_checkpoint_wrapped_module", "_orig_mod")]
    if parts and parts[0] == "module":
        parts = parts[1:]
    return ".".join(parts)


def _load_plain_into_parallel(path: Path, *, model, optimizer, restore_rng: bool) -> None:
    """A one-process checkpoint into a wrapped or sharded model: full state dicts, scattered by the DCP helpers."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    from groundup.parallel.apply_tp import to_tp_layout
    from groundup.parallel.parallelize import unwrap

    config, tp = unwrap(model).config, _tensor_parallel(model)
    full = load_file(str(path / "model.safetensors"))
    if config.tie_embeddings:
        full["lm_head.weight"] = full["tok_embeddings.weight"]
    full = to_tp_layout(full, config, tp)
    part = _pipeline_part(model)
    if part:  # a pipeline stage's part: its own tensors of the whole model's
        own = {clean_name(name) for name in unwrap(model).state_dict()}
        full = {name: value for name, value in full.items() if name in own}
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, full, options=options)
    if optimizer is not None:
        plain = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        names = {id(p): clean_name(n) for n, p in model.named_parameters()}
        by_fqn: dict[str, Any] = {}
        groups = []
        saved_fqns = _whole_model_groups(config, plain["param_groups"]) if part else None
        for g, (group, saved) in enumerate(zip(optimizer.param_groups, plain["param_groups"], strict=not part)):
            fqns = [names[id(p)] for p in group["params"]]
            if saved_fqns is None:
                indices = dict(zip(fqns, saved["params"], strict=True))
            else:  # the one process's indices name the whole model's parameters, in its groups' order
                indices = dict(zip(saved_fqns[g], saved["params"], strict=True))
            for fqn in fqns:
                if indices[fqn] in plain["state"]:
                    by_fqn[fqn] = plain["state"][indices[fqn]]
            groups.append({**{k: v for k, v in saved.items() if k != "params"}, "params": fqns})
        by_fqn = _optim_layout(by_fqn, to_tp_layout, config, tp)
        set_optimizer_state_dict(model, optimizer, {"state": by_fqn, "param_groups": groups}, options=options)
    if restore_rng:
        set_rng_state(torch.load(path / "rng.pt", map_location="cpu", weights_only=True))


def _pipeline_part(model) -> bool:
    from groundup.parallel.parallelize import unwrap

    return bool(getattr(unwrap(model), "pipeline_part", False))


def _whole_model_groups(config, saved_groups: list[dict]) -> list[list[str]]:
    """The parameter names of each AdamW group of the whole model (built on the meta device), in the order a
    one-process optimizer numbered them: how a pipeline stage finds its parameters in a plain optimizer.pt."""
    from groundup.model.transformer import Transformer
    from groundup.train.optim import param_groups

    with torch.device("meta"):
        whole = Transformer(config)
    names = {id(p): n for n, p in whole.named_parameters()}
    groups = param_groups(whole, 0.0, embedding_lr_ratio=2.0 if len(saved_groups) == 3 else 1.0)
    fqns = [[names[id(p)] for p in group["params"]] for group in groups]
    if [len(f) for f in fqns] != [len(g["params"]) for g in saved_groups]:
        raise ValueError("a one-process checkpoint of another optimizer (Muon?) does not load into a pipeline stage: "
                         "resume it with parallel.pipeline_parallel=1")
    return fqns
