"""Continued pretraining: a model dir trained further on new token shards (domain adaptation).

The weights come from the model dir; the optimizer starts fresh and the learning rate is warmed up
again from zero (``optim.warmup_steps``) before it decays, as continual-pretraining studies advise
(Gupta et al. 2023, "Continual Pre-Training of Large Language Models: How to (re)warm your model?").
The token shards must come from the model dir's own tokenizer: a tokens dir made with another
tokenizer is refused (its ids would mean other strings).
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from groundup.artifacts import find_tokenizer_file, read_json, require_files
from groundup.evaluate.lm import score_shard
from groundup.finetune import common
from groundup.tokens.datasets import RandomWindows, load_tokens
from groundup.train.optim import OptimConfig

log = logging.getLogger(__name__)

STAGE = "finetune-continue"


def continue_optim() -> OptimConfig:
    """Re-warmed cosine at a third of a typical pretraining peak, decaying to 10%."""
    return OptimConfig(lr=1e-4, warmup_steps=50, weight_decay=0.1)


@dataclass(kw_only=True)
class Config(common.BaseConfig):
    """Continue pretraining a model dir on new token shards (train.bin / val.bin from `groundup tokenize`)."""

    tokens: Path = Path("runs/tokens")
    """Tokens dir from `groundup tokenize`, made with the model dir's tokenizer."""
    seq_len: int | None = None
    """Tokens per training window (default: the model's block_size)."""
    eval_windows: int = 32
    """Held-out windows scored at each evaluation."""
    optim: OptimConfig = field(default_factory=continue_optim)
    """Optimizer and learning-rate schedule: always fresh, with warmup from zero (re-warming)."""


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_tokenizer(tokens_dir: Path, meta: dict, model_dir: Path) -> None:
    """Refuse shards tokenized with a tokenizer other than the model's (compared by file content)."""
    recorded = meta.get("tokenizer")
    if not recorded:
        log.warning("%s/meta.json names no tokenizer: cannot check it matches %s", tokens_dir, model_dir)
        return
    try:
        theirs = find_tokenizer_file(recorded)
    except FileNotFoundError:
        log.warning("tokenizer %s recorded in %s/meta.json is gone: cannot check it", recorded, tokens_dir)
        return
    if _digest(theirs) != _digest(Path(model_dir) / "tokenizer.json"):
        raise ValueError(f"{tokens_dir} was tokenized with {theirs}, which differs from {model_dir}/tokenizer.json; "
                         f"re-run `groundup tokenize --tokenizer {model_dir}`")


def run(cfg: Config) -> Path:
    if common.finished(cfg, STAGE):
        return Path(cfg.out)
    tokens_dir = require_files(cfg.tokens, {"train.bin", "val.bin", "meta.json"}, "tokens dir")
    meta = read_json(tokens_dir / "meta.json")
    check_tokenizer(tokens_dir, meta, cfg.model)
    s = common.setup(cfg)
    device = s.device
    if int(meta["vocab_size"]) > s.config.vocab_size:
        raise ValueError(f"{tokens_dir} has {meta['vocab_size']} token ids, the model only {s.config.vocab_size}")
    seq_len = cfg.seq_len or s.config.block_size
    if seq_len > s.config.block_size:
        raise ValueError(f"seq_len {seq_len} exceeds the model's block_size {s.config.block_size}")
    train_tokens, val_tokens = load_tokens(tokens_dir, "train"), load_tokens(tokens_dir, "val")
    sampler = RandomWindows(train_tokens, seq_len, cfg.batch_size, seed=cfg.seed)
    out = common.prepare_out(cfg, s, stage="finetune-continue", inputs=(tokens_dir,))
    val_bytes = int(meta.get("bytes", {}).get("val", 0))

    def loss_fn(_model, batch) -> torch.Tensor:
        x, y = batch
        return _model(x.to(device), targets=y.to(device))

    def evaluate(_model) -> dict[str, float]:
        sample = score_shard(_model, val_tokens, int(meta["eos_id"]), batch_size=cfg.batch_size,
                             max_windows=cfg.eval_windows or None, device=device)
        loss = -sample.loglikelihood / max(sample.tokens, 1)
        result = {"val_loss": round(loss, 6)}
        if val_bytes:
            result["val_bits_per_byte"] = round(loss / math.log(2) * len(val_tokens) / val_bytes, 6)
        return result

    has_val = len(val_tokens) > seq_len
    result = common.train(cfg, s, out, sampler, loss_fn, evaluate=evaluate if has_val else None,
                          tokens_per_micro_batch=cfg.batch_size * seq_len)
    summary = {**result.summary(), **result.last_eval}
    common.save_result(cfg, s, stage=STAGE, summary=summary, inputs={"tokens": tokens_dir})
    return out
