"""What every fine-tuning method shares: its settings, loading the base model, LoRA, and writing the result.

The output of every method is a model dir (``groundup generate``, ``serve``, ``evaluate`` and
``export`` take it as is), plus, with LoRA, ``adapter/``: the adapters alone, in groundup's layout
(``adapter.safetensors`` + ``adapter.json``, loaded over the base model dir by
:func:`groundup.model.lora.load_adapter`) and in PEFT's (``adapter_config.json`` +
``adapter_model.safetensors`` with Hugging Face module names). The model dir's weights are the
adapters merged into the base, so nothing downstream needs to know LoRA was used.

Under ``torchrun`` every method runs data-parallel exactly like ``groundup pretrain`` (see
docs/distributed.md): :func:`setup` joins the process group and wraps the model (DDP, FSDP2, tensor
parallel) after LoRA is applied, :func:`rank_sampler` gives each rank its own numbered batches of the
one global stream, and :func:`save_result` gathers the whole model on rank 0, which alone writes files.
"""

# No `from __future__ import annotations`: the Config classes here are inherited by the method modules,
# and jsonargparse resolves postponed annotations in the subclass's module, which lacks these names.

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from groundup import config as configlib
from groundup.artifacts import TRAINING_RUN_NAMES, require_files, write_json
from groundup.artifacts import prepare_out as prepare_out_dir
from groundup.model.config import ModelConfig
from groundup.model.io import load_model_dir, read_model_config, save_model_dir
from groundup.model.lora import LoRAConfig, apply_lora, count_parameters, merge_lora, save_adapter
from groundup.model.transformer import Transformer
from groundup.parallel.apply_ac import remove_ac
from groundup.parallel.config import ParallelConfig
from groundup.parallel.data import RankBatches
from groundup.parallel.env import ParallelState
from groundup.train import runtime
from groundup.train.logging import LogConfig
from groundup.train.loop import LoopConfig, LoopResult, train_loop
from groundup.train.optim import OptimConfig
from groundup.train.resume import is_finished
from groundup.train.stability import SpikeGuard
from groundup.train.step import LossFn, StepSpec, TrainState

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
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """How the run spreads over the processes of `torchrun` (DDP, FSDP2, tensor parallel, activation
    checkpointing); a plain single process ignores all but activation checkpointing."""
    batch_size: int = 8
    """Sequences (or preference pairs) per micro-batch (per rank under torchrun; the global batch is
    batch_size x train.grad_accum whatever the number of ranks)."""
    seed: int = 1337
    """Seed for LoRA initialization, the data split and batch order."""
    device: str = "auto"
    """'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N'."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """'auto': bf16 autocast on CUDA, fp32 on CPU."""
    threads: int | None = None
    """CPU threads for torch (default: torch's choice)."""
    overwrite: bool = False
    """Write into a non-empty `out` that is not an earlier run of this method (entries with a training run's
    names are replaced, nothing else is removed; `out` may never hold or lie inside the base model or data)."""


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
    """The model to train: the loaded one, or under torchrun wrapped (DDP) or sharded in place (FSDP2, TP)."""
    config: ModelConfig
    """The model's shape (after ``adapt``: a classifier's head)."""
    tokenizer: object
    device: torch.device
    autocast: object
    lora_modules: list[str]
    trainable: int
    total: int
    parallel: ParallelState
    rebuild: Callable[[], torch.nn.Module]
    """A fresh plain model of the trained one's structure (head, adapters): what rank 0 gathers into."""

    @property
    def is_main(self) -> bool:
        """The process that writes files (the only one, without torchrun)."""
        return self.parallel.is_main

    @property
    def loop_parallel(self) -> ParallelState | None:
        """The layout under torchrun (:class:`groundup.train.step.StepSpec`'s ``parallel``), None for one process."""
        return self.parallel if self.parallel.distributed else None


def setup(cfg: BaseConfig, *, adapt=None, keep_trainable: tuple[str, ...] = ()) -> Setup:
    """Load the base model dir, let ``adapt(model)`` change it (a classifier head), then freeze it for LoRA.

    Under torchrun the model is then spread over the ranks (:func:`groundup.parallel.parallelize.parallelize`)
    with its adapters: every rank builds the same model from the same seed first. FSDP2 shards each block's
    frozen base weights and its LoRA adapters together (each parameter its own DTensor, so the frozen ones
    get no gradient and no optimizer state, unlike FSDP1's flat buffers); tensor parallelism does not
    split adapters and is refused with LoRA.
    """
    require_files(cfg.model, {"model.safetensors", "config.json", "tokenizer.json"}, "base model dir")
    if cfg.batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {cfg.batch_size}")
    if cfg.lora.enabled and cfg.parallel.tensor_parallel > 1:
        raise ValueError("LoRA does not compose with parallel.tensor_parallel > 1 (the adapters' rows would have "
                         "to follow the sharded fused layers); use data parallelism: parallel.data_parallel=fsdp")
    if cfg.parallel.context_parallel > 1:
        raise ValueError(f"parallel.context_parallel={cfg.parallel.context_parallel}: sequences are split over ranks "
                         "by `groundup pretrain` only; fine-tune with parallel.context_parallel=1")
    rt = runtime.init_runtime(device=cfg.device, precision=cfg.precision, threads=cfg.threads,
                              backend=cfg.parallel.backend)
    device = rt.device
    torch.manual_seed(cfg.seed)  # the same classifier head and adapters on every rank
    model, tokenizer = load_model_dir(cfg.model)
    if adapt is not None:
        model = adapt(model)
    names = apply_lora(model, cfg.lora, trainable=keep_trainable) if cfg.lora.enabled else []
    model = model.to(device)
    model_cfg = model.config
    trainable, total = count_parameters(model)
    if rt.is_main:
        log.info("%s: %s trainable of %s parameters (%.2f%%)%s", cfg.model, f"{trainable:,}", f"{total:,}",
                 100 * trainable / total, f", LoRA on {len(names)} layers" if names else "")
    model, parallel = runtime.parallelize_model(model, rt, cfg.parallel)

    def rebuild() -> torch.nn.Module:
        plain = Transformer(read_model_config(cfg.model))
        if adapt is not None:
            plain = adapt(plain)
        if cfg.lora.enabled:
            apply_lora(plain, cfg.lora, trainable=keep_trainable)
        return plain

    return Setup(model, model_cfg, tokenizer, device, rt.autocast, names, trainable, total, parallel, rebuild)


def finished(cfg: BaseConfig, stage: str) -> bool:
    """Whether ``cfg.out`` already holds this run's finished output (:func:`groundup.train.resume.is_finished`):
    then the method does nothing."""
    return is_finished(cfg.out, stage, configlib.to_dict(cfg))


def optimizer_for(cfg: BaseConfig, s: Setup) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (:func:`groundup.train.runtime.optimizer_for`)."""
    return runtime.optimizer_for(s.model, cfg.optim, s.parallel)


def rank_sampler(sampler, s: Setup):
    """Under torchrun, this rank's view of a numbered-batch sampler (``batch(k)``, ``batches``); else itself."""
    if not s.parallel.distributed:
        return sampler
    return RankBatches(sampler, s.parallel.dp_rank, s.parallel.dp_size)


def prepare_out(cfg: BaseConfig, s: Setup, *, stage: str, inputs: tuple = ()) -> Path:
    """The output dir, checked (:func:`groundup.artifacts.prepare_out`: never over the base model or ``inputs``,
    a non-empty one only when an earlier ``stage`` run or with ``overwrite``) and created, with the run's
    train.yaml (written by rank 0 alone under torchrun)."""
    out = Path(cfg.out)
    prepare_out_dir(out, stage=stage, inputs=[cfg.model, *inputs], overwrite=cfg.overwrite,
                    unfinished=TRAINING_RUN_NAMES)
    out.mkdir(parents=True, exist_ok=True)
    if s.is_main:
        configlib.save(cfg, out / "train.yaml")
    return out


def final_model(s: Setup) -> torch.nn.Module | None:
    """The trained model, whole and plain, on the CPU of the writing process (None on the other ranks).

    Under torchrun a collective: every rank calls it; rank 0 receives the full state dict (clean parameter
    names, fused rows back in the model file's layout after TP) and loads it into :attr:`Setup.rebuild`'s
    model, adapters included, so the files written are those of one process.
    """
    if s.parallel.distributed:
        return runtime.gather_full_model(s.model, s.config, build=s.rebuild)
    return remove_ac(s.model).cpu()


def save_result(cfg: BaseConfig, s: Setup, *, stage: str, summary: dict, keep_trainable: tuple[str, ...] = (),
                inputs: dict | None = None, peft_task: str = "CAUSAL_LM", write_more=None) -> Path:
    """Write adapters (with LoRA), then the (merged) model dir with the run's summary in its manifest.

    Every rank calls it under torchrun; only rank 0 writes (``write_more(out)`` too: a method's extra
    files), and all meet at a barrier before returning, so the output dir is whole when any rank returns.
    """
    out = Path(cfg.out)
    model = final_model(s)
    if s.is_main:
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
        if write_more is not None:
            write_more(out)
    s.parallel.barrier()
    return out


def train(cfg: BaseConfig, s: Setup, out: Path, sampler, loss_fn: LossFn, *,
          evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
          optimizer: torch.optim.Optimizer | None = None, tokens_per_micro_batch: int = 0,
          batch_tokens: Callable[[object], int] | None = None) -> LoopResult:
    """The shared loop over a method's loss function, on this rank's share of ``sampler``'s batches.

    ``evaluate`` scores the held-out data (periodic evaluation is off without it); ``optimizer`` defaults to
    :func:`optimizer_for`'s; a batch counts ``batch_tokens(batch)`` tokens, else ``tokens_per_micro_batch``."""
    loop_cfg = cfg.train if evaluate is not None else dataclasses.replace(cfg.train, eval_every=0)
    optimizer = optimizer if optimizer is not None else optimizer_for(cfg, s)
    state = TrainState(model=s.model, optimizer=optimizer, sampler=rank_sampler(sampler, s), guard=SpikeGuard(loop_cfg))
    spec = StepSpec(loss_fn=loss_fn, autocast=s.autocast, tokens_per_micro_batch=tokens_per_micro_batch,
                    batch_tokens=batch_tokens, parallel=s.loop_parallel)
    return train_loop(state, spec, cfg=loop_cfg, optim_cfg=cfg.optim, out=out, evaluate=evaluate, log_cfg=cfg.log)
