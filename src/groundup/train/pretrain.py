"""The pretrain stage: token shards in, a model dir out (with metrics and checkpoints)."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from groundup import config as configlib
from groundup.artifacts import TRAINING_RUN_NAMES, find_tokenizer_file, read_json, require_files
from groundup.artifacts import prepare_out as check_out
from groundup.evaluate.lm import LMScore, score_shard
from groundup.model.config import ModelConfig
from groundup.model.io import save_model_dir
from groundup.model.transformer import Transformer
from groundup.parallel.apply_cp import check_sequence_length
from groundup.parallel.config import ParallelConfig
from groundup.parallel.data import RankBatches
from groundup.plan.compute import flops_per_token
from groundup.probe.cache import cached_summary
from groundup.tokens.datasets import (
    IGNORE_INDEX,
    PackedDocuments,
    RandomWindows,
    load_tokens,
    segments_from_eos,
)
from groundup.train.logging import LogConfig
from groundup.train.loop import LoopConfig, train_loop
from groundup.train.optim import OptimConfig
from groundup.train.resume import is_finished
from groundup.train.runtime import (
    Runtime,
    gather_full_model,
    init_runtime,
    optimizer_for,
    parallelize_model,
    peak_flops_for,
)
from groundup.train.stability import SpikeGuard
from groundup.train.step import StepSpec, TrainState

log = logging.getLogger(__name__)

STAGE = "pretrain"


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
    """How the run spreads over the processes of `torchrun` (DDP, FSDP2, tensor and pipeline parallel, activation
    checkpointing); a plain single process ignores all but activation checkpointing."""
    batch_size: int = 16
    """Sequences per micro-batch (per rank under torchrun; the global batch is batch_size x train.grad_accum
    sequences whatever the number of ranks)."""
    seq_len: int | None = None
    """Tokens per training sequence (default: the model's block_size)."""
    packing: Literal["random", "bestfit"] = "random"
    """How training rows are cut from train.bin: 'random', windows at random offsets (most start mid-document);
    'bestfit', each row starts at a document's start or continues one (documents longer than a row fill rows of
    their own, the rest are packed by best fit, nothing cropped), every token once per epoch, as the held-out
    score reads documents: from their start."""
    doc_mask: bool = False
    """Document-causal attention: a token attends only to earlier tokens of its own document (the EOS before it
    opens the document), not to the documents packed before it in the row."""
    seed: int = 1337
    """Seed for initialization and for the data sampler."""
    device: str = "auto"
    """'auto' (CUDA when available, else CPU), 'cpu', 'cuda' or 'cuda:N'."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """'auto': bf16 autocast on CUDA, fp32 on CPU (CPUs without bf16 units run bf16 matmuls far slower)."""
    compile: bool = False
    """torch.compile each transformer block (worth it on GPU; on CPU its start-up cost is rarely repaid)."""
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


def build_model(cfg: Config, vocab_size: int) -> ModelConfig:
    model_cfg = ModelConfig.from_name(cfg.preset) if cfg.preset else cfg.model
    if model_cfg.vocab_size < vocab_size:
        log.info("model vocab_size %d < tokenizer's %d: using %d", model_cfg.vocab_size, vocab_size, vocab_size)
        model_cfg = dataclasses.replace(model_cfg, vocab_size=vocab_size)
    return model_cfg


def prepare_out(resolved: Config, rt: Runtime) -> Path:
    """The output dir, created, with the run's train.yaml (written by rank 0 alone under torchrun)."""
    out = Path(resolved.out)
    out.mkdir(parents=True, exist_ok=True)
    if rt.is_main:
        configlib.save(resolved, out / "train.yaml")
    return out


def training_windows(cfg: Config, tokens, seq_len: int, eos_id: int,
                     where: Path) -> RandomWindows | PackedDocuments:
    """The sampler of training rows that ``cfg.packing`` names."""
    if cfg.packing == "random":
        return RandomWindows(tokens, seq_len, cfg.batch_size, seed=cfg.seed)
    packed = PackedDocuments(tokens, seq_len, cfg.batch_size, eos_id, seed=cfg.seed, where=str(where))
    p = packed.pieces
    log.info("bestfit packing: %s documents in %s pieces (%s fill a row, %s continue a document)", f"{p.documents:,}",
             f"{len(p.start):,}", f"{int((p.length > seq_len).sum()):,}", f"{int((~p.opens_document).sum()):,}")
    return packed


def language_model_loss(cfg: Config, eos_id: int, device: torch.device):
    """The loss of a batch of rows, with document-causal attention under ``cfg.doc_mask``; packed rows also
    report ``packing_efficiency``, the share of their positions that have a target (the rest is padding)."""

    def loss_fn(_model, batch):
        x, y = batch[0], batch[1]
        kwargs = {}
        if cfg.doc_mask:  # packed rows number their pieces; random windows' documents begin at each EOS
            segments = batch[2] if len(batch) > 2 else segments_from_eos(x, eos_id)
            kwargs["segments"] = segments.to(device, non_blocking=True)
        loss = _model(x.to(device, non_blocking=True), targets=y.to(device, non_blocking=True), **kwargs)
        if len(batch) > 2:
            return loss, {"packing_efficiency": float((y != IGNORE_INDEX).float().mean())}
        return loss

    return loss_fn


def language_model_inputs(cfg: Config, eos_id: int):
    """What a pipeline step takes of a batch of rows (see :mod:`groundup.parallel.apply_pp`): the tokens, the
    targets, the segments of document-causal attention (for every stage), and the extras of
    :func:`language_model_loss`."""

    def inputs(batch):
        x, y = batch[0], batch[1]
        kwargs = {}
        if cfg.doc_mask:
            kwargs["segments"] = batch[2] if len(batch) > 2 else segments_from_eos(x, eos_id)
        extras = {"packing_efficiency": float((y != IGNORE_INDEX).float().mean())} if len(batch) > 2 else {}
        return x, y, kwargs, extras

    return inputs


def held_out_evaluator(cfg: Config, val_tokens, eos_id: int, val_bytes: int, tokenizer_file: Path,
                       device: torch.device) -> Callable[[torch.nn.Module], dict[str, float]]:
    """The periodic evaluation: held-out loss (and bits per byte) on the first ``eval_windows`` windows of the
    held-out documents, and the task files."""
    task_eval = None
    if cfg.eval_tasks:
        from groundup.evaluate.during_training import build_evaluator

        task_eval = build_evaluator(cfg.eval_tasks, tokenizer_file, limit=cfg.eval_tasks_limit,
                                    batch_size=cfg.batch_size, device=device)

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        # Every rank scores the same windows: FSDP and TP need all ranks in each forward.
        sample = score_shard(model, val_tokens, eos_id, batch_size=cfg.batch_size,
                             max_windows=cfg.eval_windows or None, device=device)
        loss = -sample.loglikelihood / max(sample.tokens, 1)
        result = {"val_loss": round(loss, 6)}
        if val_bytes:
            # Bytes per token of the whole held-out split converts the sample's loss into bits per byte.
            result["val_bits_per_byte"] = round(loss / math.log(2) * len(val_tokens) / val_bytes, 6)
        if task_eval is not None:
            result.update(task_eval(model))
        return result

    return evaluate


def score_held_out(cfg: Config, model: torch.nn.Module, val_tokens, eos_id: int, val_bytes: int,
                   rt: Runtime) -> LMScore:
    """The final evaluation: every held-out document, by the one scorer (`groundup evaluate`'s on val.bin)."""
    model.eval()
    with torch.no_grad(), rt.autocast():
        return score_shard(model, val_tokens, eos_id, n_bytes=val_bytes, stride=cfg.final_eval_stride,
                           batch_size=cfg.batch_size, device=rt.device)


def run(cfg: Config) -> Path:
    check_out(cfg.out, stage=STAGE, inputs=[cfg.tokens, cfg.tokenizer], overwrite=cfg.overwrite,
              unfinished=TRAINING_RUN_NAMES)
    tokens_dir = require_files(cfg.tokens, {"train.bin", "val.bin", "meta.json"}, "tokens dir")
    meta = read_json(tokens_dir / "meta.json")
    tokenizer_file = find_tokenizer_file(cfg.tokenizer or meta.get("tokenizer") or "")
    model_cfg = build_model(cfg, int(meta["vocab_size"]))
    seq_len = cfg.seq_len or model_cfg.block_size
    if seq_len > model_cfg.block_size:
        raise ValueError(f"seq_len {seq_len} exceeds the model's block_size {model_cfg.block_size}")
    check_sequence_length(seq_len, cfg.parallel.context_parallel)
    if cfg.batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {cfg.batch_size}")
    resolved = dataclasses.replace(cfg, model=model_cfg, seq_len=seq_len, preset=None)
    if is_finished(cfg.out, STAGE, configlib.to_dict(resolved)):
        return Path(cfg.out)
    rt = init_runtime(device=cfg.device, precision=cfg.precision, threads=cfg.threads, backend=cfg.parallel.backend)
    out = prepare_out(resolved, rt)

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    base = Transformer(model_cfg).to(rt.device)
    n_params = base.num_parameters()
    model, parallel = parallelize_model(base, rt, cfg.parallel, compile=cfg.compile)
    optimizer = optimizer_for(model, cfg.optim, parallel)
    eos_id = meta.get("eos_id")
    if eos_id is None:
        raise ValueError(f"{tokens_dir / 'meta.json'}: no eos_id (documents cannot be told apart for scoring); "
                         f"re-run `groundup tokenize`")
    train_tokens, val_tokens = load_tokens(tokens_dir, "train"), load_tokens(tokens_dir, "val")
    windows = training_windows(cfg, train_tokens, seq_len, eos_id, tokens_dir / "train.bin")
    sampler = RankBatches(windows, parallel.dp_rank, parallel.dp_size) if parallel.distributed else windows
    log.info("model %s: %s parameters; %s training tokens", model_cfg.name, f"{n_params:,}", f"{len(train_tokens):,}")
    device = rt.device
    loss_fn = language_model_loss(cfg, eos_id, device)
    val_bytes = int(meta.get("bytes", {}).get("val", 0))
    evaluate = held_out_evaluator(cfg, val_tokens, eos_id, val_bytes, tokenizer_file, device)
    scorer = model  # what evaluation runs: under pipeline parallelism, the stages in turn (logits on every rank)
    if parallel.pipeline is not None:
        from groundup.parallel.apply_pp import PipelineForward

        scorer = PipelineForward(parallel.pipeline, model)
        evaluate = (lambda held_out: lambda _model: held_out(scorer))(evaluate)
    peak_flops = peak_flops_for(device) if rt.is_main else None
    token_flops = flops_per_token(model_cfg, seq_len)
    result = train_loop(
        TrainState(model=model, optimizer=optimizer, sampler=sampler, guard=SpikeGuard(cfg.train)),
        StepSpec(loss_fn=loss_fn, autocast=rt.autocast, tokens_per_micro_batch=cfg.batch_size * seq_len,
                 parallel=parallel if parallel.distributed else None,
                 pipeline_inputs=language_model_inputs(cfg, eos_id)),
        cfg=cfg.train, optim_cfg=cfg.optim, out=out, evaluate=evaluate, log_cfg=cfg.log,
        extra_state=lambda: {"model_config": dataclasses.asdict(model_cfg), "tokenizer": str(tokenizer_file)},
        flops_per_token=token_flops, peak_flops=peak_flops)

    final = score_held_out(cfg, scorer, val_tokens, eos_id, val_bytes, rt)
    summary = {**result.summary(), "parameters": n_params, "peak_flops": peak_flops, "flops_per_token": token_flops,
               "hardware_probe": cached_summary(str(device)) if rt.is_main else None,
               "held_out_loss": -final.loglikelihood / max(final.tokens, 1), "held_out_tokens": final.tokens,
               "held_out_bits_per_byte": final.metrics()["bits_per_byte"] if val_bytes else None}
    if isinstance(windows, PackedDocuments):
        summary["packing"] = windows.stats()
    log.info("pretrain done: %s", summary)
    final_model = gather_full_model(model, model_cfg, parallel=parallel) if parallel.distributed else base.cpu()
    if rt.is_main:
        save_model_dir(out, final_model, tokenizer_file=tokenizer_file, stage=STAGE,
                       config=configlib.to_dict(resolved), inputs={"tokens": tokens_dir}, extra={"result": summary})
    parallel.barrier()
    return out
