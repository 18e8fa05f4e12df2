"""Direct preference optimization (Rafailov et al. 2023) with a frozen reference cached before training.

Data: JSONL ``{"prompt": str or messages, "chosen": str, "rejected": str}``. Each pair is rendered
with the chat template as the prompt plus an assistant answer; the answer's tokens (and its
end-of-turn) are the response whose log-probability counts. The loss is

    -log sigmoid(beta * [(log pi(y_c|x) - log ref(y_c|x)) - (log pi(y_r|x) - log ref(y_r|x))])

The reference is the starting model. Its log-probabilities of every chosen and rejected response
(training and held-out) are computed in one pass before training and kept as two numbers per pair
(``reference_logps.safetensors`` in the output dir), so no second model is held in memory. On
resume the reference is recomputed from the base model dir, which gives the same numbers.

Logged: ``reward_chosen`` and ``reward_rejected`` (beta times the log-ratio to the reference),
``reward_margin`` (their difference) and ``preference_accuracy`` (share of pairs whose chosen reward
is higher); ``val_*`` the same on held-out pairs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from groundup.artifacts import write_json
from groundup.finetune import common
from groundup.finetune.data import (
    IGNORE_INDEX,
    DataStats,
    Example,
    ExampleBatches,
    chat_segments,
    pad_batch,
    parse_preference,
    read_jsonl,
    tokenize_segments,
    train_val,
    truncate,
)
from groundup.parallel.data import spread_batches
from groundup.tokenizer.chat import read_chat_template, write_chat_template

log = logging.getLogger(__name__)

REFERENCE_FILE = "reference_logps.safetensors"
STAGE = "finetune-dpo"


@dataclass(kw_only=True)
class Config(common.JsonlConfig):
    """Align a model dir to preference pairs with DPO (prompt, chosen, rejected JSONL)."""

    beta: float = 0.1
    """Strength of the pull toward the reference (larger: stay closer to it)."""
    label_smoothing: float = 0.0
    """Probability that a preference label is flipped (conservative DPO); 0 is plain DPO."""

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise ValueError(f"beta must be positive, got {self.beta}")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")


def response_example(tokenizer, template: str, prompt: list[dict], response: str, max_len: int,
                     stats: DataStats) -> Example | None:
    """The prompt and one response; only the response (the last assistant turn) carries labels."""
    pieces = chat_segments(prompt + [{"role": "assistant", "content": response}], template)
    last = max(i for i, (_, trained) in enumerate(pieces) if trained)
    pieces = [(text, trained and i == last) for i, (text, trained) in enumerate(pieces)]
    return truncate(tokenize_segments(tokenizer, pieces), max_len, stats)


def load_pairs(path: Path, tokenizer, template: str, max_len: int, stats: DataStats,
               skip_bad_lines: bool) -> list[tuple[Example, Example]]:
    def parse(obj: dict):
        prompt, chosen, rejected = parse_preference(obj)
        c = response_example(tokenizer, template, prompt, chosen, max_len, stats)
        r = response_example(tokenizer, template, prompt, rejected, max_len, stats)
        return (c, r) if c is not None and r is not None else None

    pairs = [p for p in read_jsonl(path, parse, stats, skip_bad_lines=skip_bad_lines) if p is not None]
    if not pairs:
        raise ValueError(f"{path}: no preference pair left with response tokens within {max_len} tokens")
    stats.examples += len(pairs)
    return pairs


def sequence_logps(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum of log-probabilities of the labelled targets of each row: (B,)."""
    logits = model(x).float()  # (B, T, V)
    mask = y != IGNORE_INDEX
    logp = torch.gather(logits.log_softmax(-1), 2, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
    return (logp * mask).sum(-1)


def pair_batch(pairs: list[tuple[Example, Example]], indices: list[int], pad_id: int):
    """Chosen responses then rejected ones, padded together: x, y (2B, T)."""
    return pad_batch([pairs[i][0] for i in indices] + [pairs[i][1] for i in indices], pad_id)


def dpo_loss(policy_c, policy_r, ref_c, ref_r, beta: float, label_smoothing: float = 0.0):
    """The DPO loss and its logged rewards; all inputs (B,)."""
    logits = beta * ((policy_c - ref_c) - (policy_r - ref_r))
    loss = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    reward_c, reward_r = beta * (policy_c - ref_c).detach(), beta * (policy_r - ref_r).detach()
    metrics = {"reward_chosen": float(reward_c.mean()), "reward_rejected": float(reward_r.mean()),
               "reward_margin": float((reward_c - reward_r).mean()),
               "preference_accuracy": float((reward_c > reward_r).float().mean())}
    return loss.mean(), metrics


@torch.no_grad()
def all_logps(model, pairs, pad_id: int, batch_size: int, device, parallel=None) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(chosen) and log pi(rejected) of every pair, (N,) each (the batches shared by the data-parallel
    ranks under torchrun: ``parallel``; every rank gets all of them)."""
    starts = range(0, len(pairs), batch_size)

    def score(k: int) -> torch.Tensor:
        x, y = pair_batch(pairs, list(range(starts[k], min(starts[k] + batch_size, len(pairs)))), pad_id)
        return sequence_logps(model, x.to(device), y.to(device)).float()

    sizes = [2 * (min(start + batch_size, len(pairs)) - start) for start in starts]
    chosen, rejected = [], []
    for logps in spread_batches(parallel, sizes, score):
        chosen.append(logps[: len(logps) // 2])
        rejected.append(logps[len(logps) // 2 :])
    if not chosen:
        return torch.zeros(0), torch.zeros(0)
    return torch.cat(chosen), torch.cat(rejected)


def run(cfg: Config) -> Path:
    if common.finished(cfg, STAGE):
        return Path(cfg.out)
    s = common.setup(cfg)
    template = read_chat_template(cfg.model)
    max_len = cfg.max_len or s.config.block_size
    stats = DataStats()
    train, val = train_val(lambda path: load_pairs(path, s.tokenizer, template, max_len, stats, cfg.skip_bad_lines),
                           cfg.data, cfg.val_data, cfg.val_fraction, cfg.seed)
    out = common.prepare_out(cfg, s, stage="finetune-dpo", inputs=(cfg.data, cfg.val_data))
    if s.is_main:
        write_json(out / "data_stats.json", stats.as_dict())
    pad_id = s.tokenizer.eos_id if s.tokenizer.eos_id is not None else 0
    model, device = s.model, s.device

    # Before any forward: FSDP2 keeps the last block's parameters gathered after a forward until backward, and
    # an optimizer made then would hold those gathered copies instead of the sharded parameters.
    optimizer = common.optimizer_for(cfg, s)
    # The reference: the starting model (LoRA's B is zero, so the adapted model equals its base), once. Under
    # torchrun the data-parallel ranks share the batches and every rank keeps all of it.
    model.eval()
    with s.autocast():
        ref_train = all_logps(model, train, pad_id, cfg.batch_size, device, s.loop_parallel)
        ref_val = all_logps(model, val, pad_id, cfg.batch_size, device, s.loop_parallel) if val else (torch.zeros(0),) * 2
    from safetensors.torch import save_file

    if s.is_main:
        save_file({"train_chosen": ref_train[0], "train_rejected": ref_train[1], "val_chosen": ref_val[0],
                   "val_rejected": ref_val[1]}, str(out / REFERENCE_FILE))
    log.info("DPO: %d training and %d held-out pairs; reference log-probabilities cached", len(train), len(val))

    def collate(indices: list[int]):
        x, y = pair_batch(train, indices, pad_id)
        idx = torch.tensor(indices)
        n_tokens = sum(len(train[i][0]) + len(train[i][1]) - 2 for i in indices)
        return x, y, ref_train[0][idx], ref_train[1][idx], n_tokens

    sampler = ExampleBatches([max(len(c), len(r)) for c, r in train], cfg.batch_size, collate, seed=cfg.seed,
                             group_by_length=cfg.group_by_length)

    def loss_fn(_model, batch):
        x, y, ref_c, ref_r, _ = batch
        logps = sequence_logps(_model, x.to(device), y.to(device))
        n = ref_c.shape[0]
        return dpo_loss(logps[:n], logps[n:], ref_c.to(device), ref_r.to(device), cfg.beta, cfg.label_smoothing)

    def evaluate(_model) -> dict[str, float]:
        pol_c, pol_r = all_logps(_model, val, pad_id, cfg.batch_size, device, s.loop_parallel)
        loss, metrics = dpo_loss(pol_c, pol_r, ref_val[0], ref_val[1], cfg.beta, cfg.label_smoothing)
        return {"val_loss": round(float(loss), 6), **{f"val_{k}": round(v, 6) for k, v in metrics.items()}}

    result = common.train(cfg, s, out, sampler, loss_fn, evaluate=evaluate if val else None, optimizer=optimizer,
                          batch_tokens=lambda batch: batch[4])
    summary = {**result.summary(), "beta": cfg.beta, **result.last_eval, "data": stats.as_dict()}
    # the template the pairs were rendered with travels with the model
    common.save_result(cfg, s, stage=STAGE, summary=summary, inputs={"data": cfg.data},
                       write_more=lambda out: write_chat_template(out, template))
    return out
