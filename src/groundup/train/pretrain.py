"""The pretrain stage: token shards in, a model dir out (with metrics and checkpoints)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from groundup import config as configlib
from groundup.artifacts import TRAINING_RUN_NAMES, find_tokenizer_file, prepare_out, read_json, require_files
from groundup.evaluate.lm import score_shard
from groundup.model.config import ModelConfig
from groundup.model.io import resolve_device, save_model_dir
from groundup.model.transformer import Transformer
from groundup.parallel.config import ParallelConfig
from groundup.parallel.data import RankBatches
from groundup.parallel.env import init_distributed
from groundup.parallel.parallelize import parallelize
from groundup.plan.compute import flops_per_token
from groundup.tokens.datasets import RandomWindows, load_tokens
from groundup.train.logging import LogConfig
from groundup.train.loop import LoopConfig, train_loop
from groundup.train.optim import OptimConfig, build_optimizer

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Config:
    """Pretrain a decoder-only transformer on token shards (train.bin / val.bin from `groundup tokenize`)."""

    tokens: Path = Path("runs/tokens")
    """Directory written by `groundup tokenize`."""
    out: Path = Path("runs/pretrain")
    """Output model dir (weights, config, tokenizer, metrics, checkpoints/)."""
    tokenizer: Path | None = None
    """Tokenizer dir or tokenizer.json to ship in the model dir (default: the one recorded in the tokens' meta.json)."""
    preset: str | None = None
    """A named model shape (gpt2-124m, llama-2-7b, tiny-gpt2, ...) used instead of `model`."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model's shape (ignored when `preset` is set). vocab_size is raised to the tokenizer's if smaller."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and learning-rate schedule."""
    train: LoopConfig = field(default_factory=LoopConfig)
    """Length, budget, logging, evaluation and checkpointing of the run."""
    log: LogConfig = field(default_factory=LogConfig)
    """Metrics outputs beside metrics.jsonl: TensorBoard event files, a report refreshed while training."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """How the run spreads over the processes of `torchrun` (DDP, FSDP2, tensor parallel, activation
    checkpointing); a plain single process ignores all but activation checkpointing."""
    batch_size: int = 16
    """Sequences per micro-batch (per rank under torchrun; the global batch is batch_size x train.grad_accum
    sequences whatever the number of ranks)."""
    seq_len: int | None = None
    """Tokens per training sequence (default: the model's block_size)."""
    seed: int = 1337
    """Seed for initialization and for the data sampler."""
    device: str = "auto"
    """'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N'."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """'auto': bf16 autocast on CUDA, fp32 on CPU (CPUs without bf16 units run bf16 matmuls far slower)."""
    compile: bool = False
    """torch.compile each transformer block (worth it on GPU; about 30 s of start-up for a few percent on CPU)."""
    threads: int | None = None
    """CPU threads for torch (default: torch's choice, one per core)."""
    eval_windows: int = 32
    """Held-out windows scored at each periodic evaluation (the final evaluation scores all of val.bin)."""
    final_eval_stride: int | None = None
    """Tokens predicted per rolling window of the final held-out evaluation after the first (default: the
    model's block_size, lm-evaluation-harness's disjoint windows; `groundup evaluate`'s --stride)."""
    eval_tasks: list[str] | str = field(default_factory=list)
    """Task files scored at each periodic evaluation (`groundup evaluate`'s formats, a list or comma-separated),
    logged in metrics.jsonl as eval/<task>/<metric>."""
    eval_tasks_limit: int | None = 200
    """Items scored per task at each periodic evaluation (None: all)."""
    overwrite: bool = False
    """Write into a non-empty `out` that is not an earlier pretrain run (entries with a training run's names are
    replaced, nothing else is removed; `out` may never hold or lie inside the tokens or tokenizer)."""


def autocast_for(device: torch.device, precision: str):
    """A factory of autocast contexts: bf16 on CUDA unless fp32 is asked for; fp32 (no autocast) on CPU."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if use_bf16 and device.type == "cpu" and precision == "bf16":
        log.warning("bf16 on CPU: matmuls run far slower than fp32 on CPUs without bf16 units")
    if not use_bf16:
        return lambda: contextlib.nullcontext()
    return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def peak_flops_for(device: torch.device) -> float | None:
    """Peak FLOP/s for MFU: the dense bf16 figure of a known GPU, or an fp32 matmul timed on this CPU."""
    try:
        from groundup.plan import hardware
    except ImportError:
        return None
    if device.type == "cpu":
        return hardware.measure_cpu_matmul_flops(min_seconds=2.0)
    return hardware.cuda_peak_flops(torch.cuda.get_device_name(device))


def build_model(cfg: Config, vocab_size: int) -> ModelConfig:
    model_cfg = ModelConfig.from_name(cfg.preset) if cfg.preset else cfg.model
    if model_cfg.vocab_size < vocab_size:
        log.info("model vocab_size %d < tokenizer's %d: using %d", model_cfg.vocab_size, vocab_size, vocab_size)
        model_cfg = dataclasses.replace(model_cfg, vocab_size=vocab_size)
    return model_cfg


def gather_full_model(model: torch.nn.Module, model_cfg: ModelConfig, build=None) -> Transformer | None:
    """The whole model, in the model file's layout, on rank 0's CPU (a collective: every rank calls it).

    ``build()`` makes the plain model to load it into (default ``Transformer(model_cfg)``); fine-tuning
    passes one with its classifier head and LoRA adapters."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from groundup.parallel.apply_tp import to_plain_layout
    from groundup.parallel.parallelize import unwrap

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not full:  # ranks other than 0 receive nothing
        return None
    full = to_plain_layout(full, model_cfg, int(getattr(unwrap(model), "tensor_parallel", 1)))
    plain = build() if build is not None else Transformer(model_cfg)
    plain.load_state_dict(full)
    return plain


def run(cfg: Config) -> Path:
    prepare_out(cfg.out, stage="pretrain", inputs=[cfg.tokens, cfg.tokenizer], overwrite=cfg.overwrite,
                unfinished=TRAINING_RUN_NAMES)
    tokens_dir = require_files(cfg.tokens, {"train.bin", "val.bin", "meta.json"}, "tokens dir")
    meta = read_json(tokens_dir / "meta.json")
    tokenizer_file = find_tokenizer_file(cfg.tokenizer or meta.get("tokenizer") or "")
    model_cfg = build_model(cfg, int(meta["vocab_size"]))
    seq_len = cfg.seq_len or model_cfg.block_size
    if seq_len > model_cfg.block_size:
        raise ValueError(f"seq_len {seq_len} exceeds the model's block_size {model_cfg.block_size}")
    if cfg.batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {cfg.batch_size}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    env = init_distributed(device, cfg.parallel.backend)
    device = env.device
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    resolved = dataclasses.replace(cfg, model=model_cfg, seq_len=seq_len, preset=None)
    if env.is_main:
        configlib.save(resolved, out / "train.yaml")

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    base = Transformer(model_cfg).to(device)
    n_params = base.num_parameters()
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    fsdp_bf16 = cfg.parallel.mixed_precision == "bf16" or (cfg.parallel.mixed_precision == "auto" and bf16)
    model, parallel = parallelize(base, cfg.parallel, env, compile=cfg.compile,
                                  param_dtype=torch.bfloat16 if fsdp_bf16 else None)
    # Fused AdamW has no DTensor kernel for mixed plain/DTensor parameter lists: foreach there.
    optim_cfg = cfg.optim if parallel.tp_size == 1 else dataclasses.replace(cfg.optim, fused=False)
    optimizer = build_optimizer(model, optim_cfg, device.type)
    train_tokens, val_tokens = load_tokens(tokens_dir, "train"), load_tokens(tokens_dir, "val")
    sampler = RandomWindows(train_tokens, seq_len, cfg.batch_size, seed=cfg.seed)
    if parallel.distributed:
        sampler = RankBatches(sampler, parallel.dp_rank, parallel.dp_size)
    log.info("model %s: %s parameters; %s training tokens", model_cfg.name, f"{n_params:,}", f"{len(train_tokens):,}")

    def loss_fn(_model, batch) -> torch.Tensor:
        x, y = batch
        return _model(x.to(device, non_blocking=True), targets=y.to(device, non_blocking=True))

    val_bytes = int(meta.get("bytes", {}).get("val", 0))
    eos_id = meta.get("eos_id")
    if eos_id is None:
        raise ValueError(f"{tokens_dir / 'meta.json'}: no eos_id (documents cannot be told apart for scoring); "
                         f"re-run `groundup tokenize`")
    val_token_count = len(val_tokens)

    task_eval = None
    if cfg.eval_tasks:
        from groundup.evaluate.during_training import build_evaluator

        task_eval = build_evaluator(cfg.eval_tasks, tokenizer_file, limit=cfg.eval_tasks_limit,
                                    batch_size=cfg.batch_size, device=device)

    def evaluate(_model) -> dict[str, float]:
        # Every rank scores the same windows: FSDP and TP need all ranks in each forward.
        sample = score_shard(_model, val_tokens, eos_id, batch_size=cfg.batch_size,
                             max_windows=cfg.eval_windows or None, device=device)
        loss = -sample.loglikelihood / max(sample.tokens, 1)
        result = {"val_loss": round(loss, 6)}
        if val_bytes:
            # Bytes per token of the whole held-out split converts the sample's loss into bits per byte.
            result["val_bits_per_byte"] = round(loss / math.log(2) * val_token_count / val_bytes, 6)
        if task_eval is not None:
            result.update(task_eval(_model))
        return result

    peak_flops = peak_flops_for(device) if env.is_main else None
    token_flops = flops_per_token(model_cfg, seq_len)
    result = train_loop(
        model=model, optimizer=optimizer, sampler=sampler, loss_fn=loss_fn, optim_cfg=cfg.optim, cfg=cfg.train,
        out=out, tokens_per_micro_batch=cfg.batch_size * seq_len,
        flops_per_token=token_flops, peak_flops=peak_flops,
        evaluate=evaluate, autocast=autocast_for(device, cfg.precision), log_cfg=cfg.log,
        extra_state=lambda: {"model_config": dataclasses.asdict(model_cfg), "tokenizer": str(tokenizer_file)},
        parallel=parallel if parallel.distributed else None,
    )

    model.eval()
    with torch.no_grad(), autocast_for(device, cfg.precision)():
        final = score_shard(model, val_tokens, eos_id, n_bytes=val_bytes, stride=cfg.final_eval_stride,
                            batch_size=cfg.batch_size, device=device)
    summary = {
        "steps": result.step, "tokens_seen": result.tokens_seen, "train_seconds": round(result.train_seconds, 2),
        "stopped_by": result.stopped_by, "parameters": n_params, "peak_flops": peak_flops,
        "flops_per_token": token_flops,
        "held_out_loss": -final.loglikelihood / max(final.tokens, 1), "held_out_tokens": final.tokens,
        "held_out_bits_per_byte": final.metrics()["bits_per_byte"] if val_bytes else None,
    }
    log.info("pretrain done: %s", summary)
    final_model = gather_full_model(model, model_cfg) if parallel.distributed else base.cpu()
    if env.is_main:
        save_model_dir(out, final_model, tokenizer_file=tokenizer_file, stage="pretrain",
                       config=configlib.to_dict(resolved), inputs={"tokens": tokens_dir}, extra={"result": summary})
    parallel.barrier()
    return out
