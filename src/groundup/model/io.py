"""Model dirs: the one unit of exchange that generate, evaluate, finetune, serve and export take.

A model dir holds ``model.safetensors``, ``config.json`` (the :class:`ModelConfig`), ``tokenizer.json``,
``train.yaml`` (what made it), ``metrics.jsonl`` and ``manifest.json``. Weights are safetensors, never
pickle, and the same weights give the same file bytes in any process (the header's keys are sorted).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import struct
import uuid
from pathlib import Path

import torch

from groundup import __version__
from groundup.artifacts import (
    MANIFEST,
    find_tokenizer_file,
    read_json,
    require_files,
    write_json,
    write_manifest,
)
from groundup.model.config import ModelConfig
from groundup.model.quant import QUANT_FILE, QuantConfig, quantized_layers, tie_quantized_head
from groundup.model.transformer import Transformer, finish_meta_load, first_tensor


def resolve_device(name: str | torch.device) -> torch.device:
    """A device from a setting: 'auto' is CUDA when available, else the CPU; CUDA asked for must exist."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available")
    return device


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write ``tensors`` as a safetensors file whose bytes depend on the tensors and metadata alone.

    The safetensors writer orders the JSON header's keys by a hash map, which varies between processes;
    the header is rewritten here with sorted keys (the data and its offsets stay as written), so the same
    weights give the same file hash in any process.
    """
    from safetensors.torch import save

    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as the format asks
    path = Path(path)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        f.write(memoryview(data)[8 + n :])
    return path


def save_model_weights(model, path: str | Path) -> Path:
    """Write a model's weights as safetensors; a tied output head is stored once (as the embedding)."""
    state = model.state_dict()
    if getattr(model.config, "tie_embeddings", False):  # the head's tensors are the embedding's
        state = {k: v for k, v in state.items() if not k.startswith("lm_head.")}
    return save_safetensors(state, path, metadata={"format": "pt", "groundup_version": __version__})


def _setting_hint(config, missing: list[str], unexpected: list[str]) -> str:
    """The setting that most likely explains a name mismatch: latent attention on one side only (experts on one
    side only are named earlier, by :func:`_check_moe_shape`)."""
    hints = []
    for names, side in ((unexpected, "the file has {} and this shape does not"),
                        (missing, "this shape has {} and the file does not")):
        if any(".attn.kv_down." in n for n in names):
            hints.append(side.format("latent attention") + f" (attention={config.attention!r})")
    return "; " + "; ".join(hints) if hints else ""


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
        expected = {k: v for k, v in expected.items() if not k.startswith("lm_head.")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
             for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        _check_moe_shape(state, model.config, path)
        parts = []
        if wrong:
            parts.append("shape mismatch " + "; ".join(wrong[:5]) + (" ..." if len(wrong) > 5 else ""))
        if missing:
            parts.append(f"missing {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}")
        hint = _setting_hint(model.config, missing, unexpected)
        raise ValueError(f"{path} does not fit this model shape ({model.config.name}): " + ", ".join(parts) + hint)
    if first_tensor(model).is_meta:  # built on the meta device: take the file's tensors, no copy
        dtype = torch.get_default_dtype()  # as a model built for real would hold them (float32)
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        model.load_state_dict(state, strict=False, assign=True)
        tie_quantized_head(model)
        finish_meta_load(model, str(path))
    else:
        model.load_state_dict(state, strict=False)


def _check_moe_shape(state: dict[str, torch.Tensor], config: ModelConfig, path: str | Path) -> None:
    """Name the setting when a mixture-of-experts checkpoint meets a dense model shape, the reverse, or another
    number of experts or of dense first layers (the generic mismatch message would list tensor names only)."""
    routers = {int(k.split(".")[1]): v.shape[0] for k, v in state.items()
               if k.startswith("blocks.") and k.endswith(".mlp.router.weight")}
    ours = getattr(config, "moe_experts", 0)
    if not routers and not ours:
        return
    if not routers:
        raise ValueError(f"{path} holds a dense model (an MLP in every block), but this model shape has "
                         f"moe_experts={ours}: set moe_experts=0 to load it")
    experts = sorted(set(routers.values()))
    if not ours:
        raise ValueError(f"{path} holds a mixture-of-experts model ({experts[0]} experts in blocks "
                         f"{min(routers)}..{max(routers)}), but this model shape is dense (moe_experts=0): set "
                         f"moe_experts={experts[0]} (and the checkpoint's other moe_* settings, in its config.json)")
    if experts != [ours]:
        raise ValueError(f"{path} holds {experts[0]} experts per layer, but this model shape has moe_experts={ours}")
    dense = min(routers)
    if dense != config.moe_dense_layers:
        raise ValueError(f"{path} has dense MLPs in its first {dense} blocks, but this model shape has "
                         f"moe_dense_layers={config.moe_dense_layers}")


def save_model_dir(out: str | Path, model, *, tokenizer_file: str | Path, stage: str, config: dict,
                   inputs: dict[str, str | Path] | None = None, extra: dict | None = None) -> Path:
    """Write the model-dir files into ``out``: weights, config.json, tokenizer.json, train.yaml, manifest.

    ``out`` may already hold a training run's ``metrics.jsonl`` and ``checkpoints/``, which stay. Each file
    is written to a temporary name and renamed; the manifest goes last, so a dir with a manifest is whole.
    """
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
    quant = getattr(model, "quantization", None)
    if quant is not None:
        write_json(out / QUANT_FILE, quant.as_dict())
    (out / "metrics.jsonl").touch()
    write_manifest(out, stage=stage, config=config, inputs=inputs, extra=extra)
    return out


def read_model_config(path: str | Path) -> ModelConfig:
    path = Path(path)
    data = read_json(path / "config.json")
    try:
        return ModelConfig(**data)
    except TypeError as e:
        raise ValueError(f"{path / 'config.json'}: not a groundup model config ({e})") from e


def read_quantization(path: str | Path) -> QuantConfig | None:
    """The model dir's quantization (its quantization.json), or None for full-precision weights."""
    file = Path(path) / QUANT_FILE
    if not file.is_file():
        return None
    try:
        return QuantConfig(**read_json(file))
    except TypeError as e:
        raise ValueError(f"{file}: not a groundup quantization file ({e})") from e


def load_model_dir(path: str | Path, *, device: str | torch.device = "cpu"):
    """Load a model dir: returns ``(model, tokenizer)``, the model in eval mode on ``device`` ('auto' allowed).

    A quantized dir (``quantization.json``) gives a model whose linear layers are int8 or int4 (inference
    only; ``model.quantization`` says how)."""
    from groundup.tokenizer import Tokenizer

    path = require_files(path, {"model.safetensors", "config.json", "tokenizer.json"}, "model dir")
    with torch.device("meta"):  # no random initialization: every weight comes from the file
        model = Transformer(read_model_config(path))
    quant = read_quantization(path)
    if quant is not None:
        quantized_layers(model, quant)
    load_model_weights(model, path / "model.safetensors")
    return model.to(resolve_device(device)).eval(), Tokenizer.from_file(path / "tokenizer.json")
