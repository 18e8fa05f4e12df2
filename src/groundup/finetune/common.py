"""What every fine-tuning method shares: its settings, loading the base model, LoRA, and writing the result.

The output of every method is a model dir (``groundup generate``, ``serve``, ``evaluate`` and
``export`` take it as is), plus, with LoRA, ``adapter/``: the adapters alone, in groundup's layout
(``adapter.safetensors`` + ``adapter.json``, loaded over the base model dir by
:func:`groundup.model.lora.load_adapter`) and in PEFT's (``adapter_config.json`` +
``adapter_model.safetensors`` with Hugging Face module names). The model dir's weights are the
adapters merged into the base, so nothing downstream needs to know LoRA was used.
"""

# No `from __future__ import annotations`: the Config classes here are inherited by the method modules,
# and jsonargparse resolves postponed annotations in the subclass's module, which lacks these names.

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from groundup import config as configlib
from groundup.artifacts import load_model_dir, require_files, resolve_device, save_model_dir, write_json
from groundup.model.lora import LoRAConfig, apply_lora, count_parameters, merge_lora, save_adapter
from groundup.train.logging import LogConfig
from groundup.train.loop import LoopConfig
from groundup.train.optim import OptimConfig
from groundup.train.pretrain import autocast_for

log = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"


def finetune_optim() -> OptimConfig:
    """Fine-tuning defaults: a short warmup, no weight decay pulling weights away from the base, cosine to 10%."""
    return OptimConfig(lr=1e-4, warmup_steps=10, weight_decay=0.0)


@dataclass(kw_only=True)
class BaseConfig:
    """Settings every fine-tuning method shares."""

    model: Path = Path("runs/pretrain")
    """Base model dir to start from (`groundup pretrain` output or any model dir)."""
    out: Path = Path("runs/finetune")
    """Output model dir (weights, config, tokenizer, metrics, checkpoints/, adapter/ with LoRA)."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """LoRA adapters instead of full fine-tuning (--lora.enabled true)."""
    optim: OptimConfig = field(default_factory=finetune_optim)
    """Optimizer and learning-rate schedule (fresh: fine-tuning never reuses the base run's optimizer)."""
    train: LoopConfig = field(default_factory=lambda: LoopConfig(max_steps=200, eval_every=50, checkpoint_every=100))
    """Length, budget, logging, evaluation and checkpointing of the run."""
    log: LogConfig = field(default_factory=LogConfig)
    """Metrics outputs beside metrics.jsonl: TensorBoard event files, a report refreshed while training."""
    batch_size: int = 8
    """Sequences (or preference pairs) per micro-batch."""
    seed: int = 1337
    """Seed for LoRA initialization, the data split and batch order."""
    device: str = "auto"
    """'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N'."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """'auto': bf16 autocast on CUDA, fp32 on CPU."""
    threads: int | None = None
    """CPU threads for torch (default: torch's choice)."""


@dataclass(kw_only=True)
class JsonlConfig(BaseConfig):
    """Settings of the methods that read a JSONL dataset."""

    data: Path = Path("data.jsonl")
    """Training data, JSONL."""
    val_data: Path | None = None
    """Held-out data, JSONL (default: `val_fraction` of `data`, split by `seed`)."""
    val_fraction: float = 0.1
    """Share of `data` held out for evaluation when `val_data` is not given (0: no evaluation)."""
    skip_bad_lines: bool = False
    """Skip (and count in data_stats.json) lines with missing keys or unknown roles instead of stopping."""
    max_len: int | None = None
    """Longest training sequence in tokens (default: the model's block_size); longer ones are cut at the end."""
    group_by_length: bool = True
    """Batch examples of similar length together (less padding)."""


@dataclass
class Setup:
    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    autocast: object
    lora_modules: list[str]
    trainable: int
    total: int


def setup(cfg: BaseConfig, *, adapt=None, keep_trainable: tuple[str, ...] = ()) -> Setup:
    """Load the base model dir, let ``adapt(model)`` change it (a classifier head), then freeze it for LoRA."""
    require_files(cfg.model, {"model.safetensors", "config.json", "tokenizer.json"}, "base model dir")
    if cfg.batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {cfg.batch_size}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model, tokenizer = load_model_dir(cfg.model)
    if adapt is not None:
        model = adapt(model)
    names = apply_lora(model, cfg.lora, trainable=keep_trainable) if cfg.lora.enabled else []
    model = model.to(device)
    trainable, total = count_parameters(model)
    log.info("%s: %s trainable of %s parameters (%.2f%%)%s", cfg.model, f"{trainable:,}", f"{total:,}",
             100 * trainable / total, f", LoRA on {len(names)} layers" if names else "")
    return Setup(model, tokenizer, device, autocast_for(device, cfg.precision), names, trainable, total)


def prepare_out(cfg: BaseConfig) -> Path:
    out = Path(cfg.out)
    if out.resolve() == Path(cfg.model).resolve():
        raise ValueError(f"out ({out}) must differ from the base model dir")
    out.mkdir(parents=True, exist_ok=True)
    configlib.save(cfg, out / "train.yaml")
    return out


def save_result(cfg: BaseConfig, s: Setup, *, stage: str, summary: dict, keep_trainable: tuple[str, ...] = (),
                inputs: dict | None = None, peft_task: str = "CAUSAL_LM") -> Path:
    """Write adapters (with LoRA), then the (merged) model dir with the run's summary in its manifest."""
    out = Path(cfg.out)
    model = s.model.cpu()
    summary = {**summary, "trainable_parameters": s.trainable, "total_parameters": s.total}
    if cfg.lora.enabled:
        from groundup.finetune.peft_format import save_peft_adapter

        adapter_dir = save_adapter(out / ADAPTER_DIR, model, cfg.lora, extra=keep_trainable, base_model=cfg.model)
        try:
            save_peft_adapter(adapter_dir, model, cfg.lora, base_model=cfg.model, task_type=peft_task,
                              extra=keep_trainable)
        except ValueError as e:  # a shape Hugging Face has no names for: the groundup adapter still stands
            log.warning("no PEFT adapter written: %s", e)
        merge_lora(model)
    write_json(out / "result.json", summary)
    save_model_dir(out, model, tokenizer_file=Path(cfg.model) / "tokenizer.json", stage=stage,
                   config=configlib.to_dict(cfg), inputs={"model": cfg.model, **(inputs or {})},
                   extra={"result": summary})
    return out


def loop_config(cfg: BaseConfig, has_eval: bool) -> LoopConfig:
    """The loop settings, with periodic evaluation off when there is nothing held out."""
    return cfg.train if has_eval else dataclasses.replace(cfg.train, eval_every=0)
