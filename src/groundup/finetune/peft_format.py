"""LoRA adapters in PEFT's layout and names, so PEFT users can load them over the exported Hugging Face model.

PEFT reads ``adapter_config.json`` and ``adapter_model.safetensors`` whose keys are
``base_model.model.<HF module>.lora_A.weight`` (r, in) and ``...lora_B.weight`` (out, r). groundup
fuses some projections that Hugging Face keeps apart: Llama's q/k/v (one ``attn.qkv``) and
gate/up (one ``mlp.fc`` = [gate; up]). A fused adapter splits exactly: ``B A x`` restricted to a
block of output rows is ``B[rows] A x``, so every part gets the same ``lora_A`` and its row slice
of ``lora_B``. GPT-2's ``Conv1D`` layers store weights transposed (PEFT's ``fan_in_fan_out``),
but PEFT keeps ``lora_A`` / ``lora_B`` in ``nn.Linear`` orientation, so the tensors are the same.

The name map lives in :func:`hf_module_names` alone (groundup module -> Hugging Face modules and
row ranges), so it can follow ``groundup.interop.hf`` when that gains one.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from groundup.artifacts import write_json
from groundup.model.config import ModelConfig
from groundup.model.lora import LoRAConfig, expert_lora_modules, lora_modules

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"

_LAYER = re.compile(r"^blocks\.(\d+)\.(attn\.qkv|attn\.proj|mlp\.fc|mlp\.proj)$")


def hf_module_names(config: ModelConfig, name: str) -> list[tuple[str, tuple[int, int] | None]]:
    """Hugging Face module(s) for groundup module ``name``: ``[(hf_name, (row_start, row_end) or None)]``.

    ``lm_head`` maps to ``lm_head`` (a classifier's head to ``score``, done by the caller).
    Raises ``ValueError`` for a model family or module Hugging Face has no counterpart for.
    """
    family = config.family
    if family not in ("gpt2", "llama"):
        raise ValueError(f"model family {family!r} has no Hugging Face architecture to name adapters after")
    if name == "lm_head":
        return [("lm_head", None)]
    m = _LAYER.match(name)
    if not m:
        raise ValueError(f"module {name!r} has no Hugging Face counterpart")
    layer, part = m.group(1), m.group(2)
    if family == "gpt2":
        prefix = f"transformer.h.{layer}"
        return [({"attn.qkv": f"{prefix}.attn.c_attn", "attn.proj": f"{prefix}.attn.c_proj",
                  "mlp.fc": f"{prefix}.mlp.c_fc", "mlp.proj": f"{prefix}.mlp.c_proj"}[part], None)]
    prefix = f"model.layers.{layer}"
    if part == "attn.qkv":
        q, kv = config.n_head * config.head_dim, config.kv_heads * config.head_dim
        return [(f"{prefix}.self_attn.q_proj", (0, q)), (f"{prefix}.self_attn.k_proj", (q, q + kv)),
                (f"{prefix}.self_attn.v_proj", (q + kv, q + 2 * kv))]
    if part == "mlp.fc":
        hidden = config.mlp_hidden
        return [(f"{prefix}.mlp.gate_proj", (0, hidden)), (f"{prefix}.mlp.up_proj", (hidden, 2 * hidden))]
    return [({"attn.proj": f"{prefix}.self_attn.o_proj", "mlp.proj": f"{prefix}.mlp.down_proj"}[part], None)]


def _target_modules(config: ModelConfig, hf_names: list[str]) -> list[str]:
    """PEFT target_modules: a short name ("q_proj") where every layer's module of that name is adapted,
    else the full module names (PEFT matches a target as a suffix of the module name)."""
    every = {}
    for layer in range(config.n_layer):
        for part in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"):
            for hf, _ in hf_module_names(config, f"blocks.{layer}.{part}"):
                every.setdefault(hf.rsplit(".", 1)[-1], set()).add(hf)
    chosen, targets = set(hf_names), []
    for short in sorted({n.rsplit(".", 1)[-1] for n in hf_names}):
        full = {n for n in hf_names if n.rsplit(".", 1)[-1] == short}
        if every.get(short, set()) <= chosen:
            targets.append(short)
        else:
            targets += sorted(full)
    return targets


def peft_state(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The adapters of ``model`` under PEFT's keys, and the Hugging Face modules they adapt."""
    config = model.config
    if experts := expert_lora_modules(model):
        raise ValueError(f"adapters on stacked experts ({sorted(experts)[0]}, ...) have no PEFT layout here")
    state, names = {}, []
    for name, module in lora_modules(model).items():
        A, B = module.lora_A.detach().cpu(), module.lora_B.detach().cpu()
        for hf, rows in hf_module_names(config, name):
            b = B if rows is None else B[rows[0] : rows[1]]
            state[f"base_model.model.{hf}.lora_A.weight"] = A.contiguous().clone()
            state[f"base_model.model.{hf}.lora_B.weight"] = b.contiguous().clone()
            names.append(hf)
    return state, names


def save_peft_adapter(out: str | Path, model: torch.nn.Module, cfg: LoRAConfig, *, base_model: str | Path | None,
                      task_type: str = "CAUSAL_LM", extra: tuple[str, ...] = ()) -> Path:
    """Write ``adapter_config.json`` and ``adapter_model.safetensors`` (PEFT's LoRA format) into ``out``.

    ``extra`` fully trained parameters are saved too; a classifier's ``lm_head.weight`` becomes
    Hugging Face's sequence-classification head ``score`` (PEFT's ``modules_to_save``).
    """
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state, names = peft_state(model)
    if not names:
        raise ValueError("the model has no LoRA layers")
    modules_to_save = []
    params = dict(model.named_parameters())
    for name in extra:
        if name != "lm_head.weight":
            raise ValueError(f"no Hugging Face name for the fully trained parameter {name!r}")
        head = "score" if task_type == "SEQ_CLS" else "lm_head"
        state[f"base_model.model.{head}.weight"] = params[name].detach().cpu().contiguous().clone()
        modules_to_save.append(head)
    save_file(state, str(out / PEFT_WEIGHTS), metadata={"format": "pt"})
    write_json(out / PEFT_CONFIG, {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": str(base_model) if base_model else None,
        "r": cfg.rank,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": _target_modules(model.config, names),
        "fan_in_fan_out": model.config.family == "gpt2",  # GPT-2's Conv1D stores (in, out)
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": modules_to_save or None,
        "inference_mode": True,
    })
    return out
