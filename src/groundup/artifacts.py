"""The directory contracts between stages: what each stage writes, a manifest, atomic writes.

Every stage writes one directory that describes itself: a fixed set of files plus
``manifest.json`` (stage, config, inputs and their fingerprints, library and
Python versions, time). A stage never reaches into another stage's internals; it
reads the files named here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from groundup import __version__

if TYPE_CHECKING:
    import torch

MANIFEST = "manifest.json"

TOKENIZER_FILES = {"tokenizer.json", "stats.json", "config.yaml", MANIFEST}
TOKENS_FILES = {"train.bin", "val.bin", "meta.json", "config.yaml", MANIFEST}
MODEL_DIR_FILES = {"model.safetensors", "config.json", "tokenizer.json", "train.yaml", "metrics.jsonl", MANIFEST}
"""A model dir: the one unit of exchange that generate, evaluate, finetune, serve and export take."""


def fingerprint(path: str | Path) -> str:
    """A cheap identity of an input: its manifest's hash for a stage directory, else names, sizes and mtimes."""
    path = Path(path)
    h = hashlib.sha256()
    if (path / MANIFEST).is_file():
        h.update((path / MANIFEST).read_bytes())
    elif path.is_file():
        st = path.stat()
        h.update(f"{path.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    elif path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file():
                st = p.stat()
                h.update(f"{p.relative_to(path)}:{st.st_size}:{int(st.st_mtime)}".encode())
    else:
        h.update(str(path).encode())
    return h.hexdigest()[:16]


def write_json(path: str | Path, data: Any) -> Path:
    """Write JSON atomically (temporary file, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)
    return path


def read_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from e


def write_manifest(out: str | Path, *, stage: str, config: dict, inputs: dict[str, str | Path] | None = None,
                   extra: dict | None = None) -> Path:
    out = Path(out)
    manifest = {
        "stage": stage,
        "groundup_version": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "inputs": {name: {"path": str(p), "fingerprint": fingerprint(p)} for name, p in (inputs or {}).items()},
        "config": config,
    }
    if extra:
        manifest.update(extra)
    return write_json(out / MANIFEST, manifest)


def read_manifest(path: str | Path) -> dict:
    return read_json(Path(path) / MANIFEST)


def require_files(path: str | Path, files: set[str], what: str) -> Path:
    """Check that ``path`` is a directory holding ``files``; say which are missing if not."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found: {path} is not a directory")
    missing = sorted(f for f in files if not (path / f).is_file())
    if missing:
        raise FileNotFoundError(f"{path} is not a complete {what}: missing {', '.join(missing)}")
    return path


def find_tokenizer_file(path: str | Path) -> Path:
    """``tokenizer.json`` inside a tokenizer dir or model dir, or the file itself."""
    path = Path(path)
    candidate = path / "tokenizer.json" if path.is_dir() else path
    if not candidate.is_file():
        raise FileNotFoundError(f"no tokenizer at {path}: expected a tokenizer.json file or a directory holding one "
                                f"(run `groundup tokenizer` first)")
    return candidate


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``final`` in one rename.

    A crash inside the block leaves ``final`` as it was (a stale ``.tmp-*`` sibling at worst,
    which the next call cleans up).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".tmp-{final.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        _fsync_dir(tmp)
        if final.exists():
            trash = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------- model dirs


def save_model_weights(model, path: str | Path) -> Path:
    """Write a model's weights as safetensors; a tied output head is stored once (as the embedding)."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file(state, str(path), metadata={"format": "pt", "groundup_version": __version__})
    return Path(path)


def load_model_weights(model, path: str | Path) -> None:
    """Load safetensors weights into ``model``, naming any tensor whose name or shape does not match."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path}: unreadable safetensors file ({e})") from e
    expected = model.state_dict()
    if getattr(model.config, "tie_embeddings", False):
        expected = {k: v for k, v in expected.items() if k != "lm_head.weight"}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
             for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append("shape mismatch " + "; ".join(wrong[:5]) + (" ..." if len(wrong) > 5 else ""))
        if missing:
            parts.append(f"missing {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}")
        raise ValueError(f"{path} does not fit this model shape ({model.config.name}): " + ", ".join(parts))
    if model.lm_head.weight.is_meta:  # built on the meta device: take the file's tensors, no copy
        from groundup.model.transformer import finish_meta_load

        dtype = model.lm_head.weight.dtype  # as a model built for real would hold them (float32)
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        model.load_state_dict(state, strict=False, assign=True)
        finish_meta_load(model, str(path))
    else:
        model.load_state_dict(state, strict=False)


def save_model_dir(out: str | Path, model, *, tokenizer_file: str | Path, stage: str, config: dict,
                   inputs: dict[str, str | Path] | None = None, extra: dict | None = None) -> Path:
    """Write the model-dir files into ``out``: weights, config.json, tokenizer.json, train.yaml, manifest.

    ``out`` may already hold a training run's ``metrics.jsonl`` and ``checkpoints/``, which stay. Each file
    is written to a temporary name and renamed; the manifest goes last, so a dir with a manifest is whole.
    """
    import dataclasses

    import yaml

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    tmp = out / f".model.safetensors.{uuid.uuid4().hex[:8]}.tmp"
    save_model_weights(model, tmp)
    os.replace(tmp, out / "model.safetensors")
    write_json(out / "config.json", dataclasses.asdict(model.config))
    tokenizer_src = find_tokenizer_file(tokenizer_file)
    if tokenizer_src.resolve() != (out / "tokenizer.json").resolve():
        shutil.copyfile(tokenizer_src, out / "tokenizer.json")
        template = tokenizer_src.parent / "chat_template.jinja"  # a model dir's chat template travels with it
        if template.is_file():
            shutil.copyfile(template, out / "chat_template.jinja")
    with open(out / "train.yaml", "w", encoding="utf-8") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    (out / "metrics.jsonl").touch()
    write_manifest(out, stage=stage, config=config, inputs=inputs, extra=extra)
    return out


def read_model_config(path: str | Path):
    from groundup.model.config import ModelConfig

    path = Path(path)
    data = read_json(path / "config.json")
    try:
        return ModelConfig(**data)
    except TypeError as e:
        raise ValueError(f"{path / 'config.json'}: not a groundup model config ({e})") from e


def resolve_device(name: str | torch.device) -> torch.device:
    """A device from a setting: 'auto' is CUDA when available, else the CPU; CUDA asked for must exist."""
    import torch

    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available")
    return device


def load_model_dir(path: str | Path, *, device: str | torch.device = "cpu"):
    """Load a model dir: returns ``(model, tokenizer)``, the model in eval mode on ``device`` ('auto' allowed)."""
    from groundup.model.transformer import Transformer
    from groundup.tokenizer import Tokenizer

    path = require_files(path, {"model.safetensors", "config.json", "tokenizer.json"}, "model dir")
    import torch

    with torch.device("meta"):  # no random initialization: every weight comes from the file
        model = Transformer(read_model_config(path))
    load_model_weights(model, path / "model.safetensors")
    return model.to(resolve_device(device)).eval(), Tokenizer.from_file(path / "tokenizer.json")
