"""Continuing a training run, and recognising one that has nothing left to do.

**Resume.** ``train.resume: auto`` continues from the newest complete checkpoint under
``OUT/checkpoints`` (a path names one). The checkpoint restores the :class:`~groundup.train.step.TrainState`
(weights, optimizer, RNG, step, tokens, training time, sampler position, spike guard) and records how many
rows ``metrics.jsonl`` held when it was written: the resumed run keeps exactly those rows (a torn last
line, left by a killed writer, is skipped) and appends from there, so a resumed run leaves the rows a
straight run leaves. A run bounded by ``train.max_minutes`` whose checkpoint has spent the budget stops
at once.

**Finished.** An output dir is *finished* for a run when all of these hold, and then re-running the
stage is a no-op (no training step, no evaluation, no file written):

- ``manifest.json`` is there (the model dir's files are written before it, so it marks a whole dir) and
  names the same stage;
- its config equals the run's resolved config, leaving aside ``train.resume`` and ``train.progress_bar``
  (they change how a run proceeds, not what it makes): a changed config (a larger ``train.max_steps``,
  say) is not finished and resumes as usual;
- every input it records still has the fingerprint it recorded (:func:`groundup.artifacts.fingerprint`);
- the newest checkpoint, if any is left, is at the step the manifest's result records: no training has
  happened in the dir since the model was written.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from groundup.artifacts import MANIFEST, fingerprint, read_json
from groundup.train.checkpoint import STATE_FILE, latest_checkpoint, load_checkpoint
from groundup.train.step import TrainState

log = logging.getLogger(__name__)

RUN_ONLY_KEYS = (("train", "resume"), ("train", "progress_bar"))
"""Config keys that change how a run proceeds but not what it makes: a finished dir ignores them."""


def resume_path(resume: str | None, ckpt_root: Path) -> Path | None:
    """The checkpoint ``train.resume`` asks for: the newest under ``ckpt_root`` for 'auto', a path, or none."""
    if resume == "auto":
        return latest_checkpoint(ckpt_root)
    return Path(resume) if resume else None


def _what_it_makes(config: dict) -> dict:
    config = copy.deepcopy(config)
    for section, key in RUN_ONLY_KEYS:
        if isinstance(config.get(section), dict):
            config[section].pop(key, None)
    return config


def is_finished(out: str | Path, stage: str, config: dict) -> bool:
    """Whether ``out`` holds the finished output of ``stage`` run with ``config`` (see the module docstring)."""
    out = Path(out)
    if not (out / MANIFEST).is_file():
        return False
    try:
        manifest = read_json(out / MANIFEST)
    except ValueError:
        return False
    if manifest.get("stage") != stage or _what_it_makes(manifest.get("config", {})) != _what_it_makes(config):
        return False
    for name, recorded in manifest.get("inputs", {}).items():
        if fingerprint(recorded["path"]) != recorded["fingerprint"]:
            log.info("%s: input %s (%s) changed since the run finished", out, name, recorded["path"])
            return False
    newest = latest_checkpoint(out / "checkpoints")
    if newest is not None and read_json(newest / STATE_FILE)["step"] != manifest.get("result", {}).get("steps"):
        return False
    log.info("%s: finished with this config (%s); nothing to do", out, stage)
    return True


def restore(state: TrainState, path: Path | None) -> dict | None:
    """Load the checkpoint at ``path`` (if any) into ``state``; returns its state.json."""
    if path is None:
        return None
    saved = load_checkpoint(path, model=state.model, optimizer=state.optimizer)
    state.load_state_dict(saved)
    log.info("resumed from %s at step %d", path, state.step)
    return saved
