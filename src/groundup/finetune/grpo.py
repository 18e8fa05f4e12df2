"""Group relative policy optimization (GRPO; Shao et al. 2024) with verifiable rewards.

Data: JSONL ``{"prompt": str or messages, "answer": ..., "tests": ..., ...}``; the fields a reward needs
must be there (``answer`` for ``numeric``, ``tests`` for ``tests``), a record without them is a bad line.
Each prompt is rendered with the model dir's chat template and its generation prompt.

Each optimizer step (one micro-batch of ``batch_size`` prompts, times ``train.grad_accum``):

1. **Rollouts**: ``group_size`` (G) completions of every prompt, sampled by the inference engine
   (:class:`groundup.infer.engine.Engine`, one request with ``n = G``: the prompt is prefilled once and
   its keys and values copied to the other choices), each prompt seeded from (seed, batch, prompt), so a
   run is reproducible.
2. **Rewards** (:mod:`groundup.finetune.rewards`), weighted and summed.
3. **Advantages**, group-relative: ``r - mean(group)``, divided by ``std(group) + 1e-4`` with
   ``scale_rewards='group'`` (TRL's default) or left unscaled with ``'none'`` (Dr. GRPO, nanochat).
4. **Loss**: per completion token, the clipped surrogate ``-min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A)``
   with ``rho = pi / pi_old``, plus ``beta`` times the k3 estimate of KL(pi || pi_ref),
   ``exp(ref - logp) - (ref - logp) - 1``; averaged over all completion tokens of the micro-batch
   (``loss_type='token'``, DAPO's, TRL's default) or per completion then over completions (``'sequence'``,
   the GRPO paper's). With ``num_iterations`` (mu) > 1 each batch of rollouts is used for mu optimizer steps
   and ``pi_old`` is the policy that sampled them; with mu = 1 the ratio is 1 and its gradient plain
   REINFORCE with a group baseline.

The reference (``beta > 0``) is a frozen copy of the starting model. Logged every step: ``reward_mean``,
``reward_std``, ``pass_rate`` (share of completions whose first reward is 1), ``kl``, ``clip_ratio``,
``completion_length`` (mean and max), ``zero_std_groups`` (groups with nothing to learn),
``reward_errors``, ``reward_timeouts``; ``samples.jsonl`` holds a prompt's completions and rewards every
``log_samples_every`` rollout batches; held-out prompts are scored greedily (``val_pass_rate``: pass@1).

Resuming is bitwise (N steps straight equal k, a stop and N - k): rollout seeds are a function of the
batch number, and the rollouts of an unfinished mu-cycle travel in the checkpoint's sampler state.
Under torchrun every rank generates its own prompts' rollouts with the whole model (DDP; FSDP2 and tensor
parallelism are refused), and a resume in the middle of a mu-cycle regenerates the other ranks' rollouts.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from groundup.artifacts import write_json
from groundup.evaluate.generation import Limits
from groundup.finetune import common
from groundup.finetune.data import (
    IGNORE_INDEX,
    DataStats,
    ExampleBatches,
    parse_prompt,
    read_jsonl,
    train_val,
)
from groundup.finetune.rewards import RewardCounts, Rewards, required_fields
from groundup.infer.engine import Engine, Event, Request
from groundup.infer.sampling import SamplingParams
from groundup.tokenizer.chat import end_of_turn_ids, read_chat_template, render_chat, write_chat_template
from groundup.train.loop import LoopConfig

log = logging.getLogger(__name__)

STAGE = "finetune-grpo"
SAMPLES_FILE = "samples.jsonl"


def grpo_loop() -> LoopConfig:
    # No spike guard: a policy-gradient loss is not a descending curve whose jumps mean trouble.
    return LoopConfig(max_steps=200, eval_every=50, checkpoint_every=100, spike_zscore=None)


@dataclass(kw_only=True)
class Config(common.JsonlConfig):
    """Reinforcement learning with verifiable rewards (GRPO) on prompts JSONL with answers or tests."""

    train: LoopConfig = field(default_factory=grpo_loop)
    """Length, budget, logging, evaluation and checkpointing of the run."""
    group_size: int = 8
    """Completions sampled per prompt (G); the advantage compares each with its group, so at least 2."""
    sampling: SamplingParams = field(default_factory=lambda: SamplingParams(temperature=1.0, max_new_tokens=128))
    """How rollouts are sampled (its seed is ignored: each prompt's comes from `seed` and the batch)."""
    rewards: list[str] = field(default_factory=lambda: ["numeric"])
    """Rewards summed: numeric (final number equals `answer`), format (matches `format_regex`), tests (`tests`
    pass in the sandbox), or module:function(completion, record) -> float. The first decides `pass_rate`."""
    reward_weights: list[float] | None = None
    """Weight of each reward (default: 1 each)."""
    format_regex: str = r"#### -?[0-9][0-9,]*(\.[0-9]+)?\s*$"
    """The `format` reward's pattern (re.search over the completion)."""
    reward_timeout_s: float = 10.0
    """Seconds a module:function reward may take per completion (past it: 0, counted); `tests` use `test_limits`."""
    test_limits: Limits = field(default_factory=Limits)
    """Time and memory limits of each `tests` program."""
    scale_rewards: Literal["group", "none"] = "group"
    """Advantage: (r - group mean) / (group std + 1e-4) with 'group'; r - group mean with 'none'."""
    loss_type: Literal["token", "sequence"] = "token"
    """'token': mean over every completion token of the micro-batch (DAPO); 'sequence': per completion, then mean."""
    beta: float = 0.0
    """Weight of the KL penalty to the frozen starting model (k3 estimator); 0: no reference kept."""
    num_iterations: int = 1
    """Optimizer steps on each batch of rollouts (mu); above 1 the PPO clipping bounds how far they move."""
    epsilon: float = 0.2
    """Clipping range below 1 of the probability ratio (and above, unless `epsilon_high` is set)."""
    epsilon_high: float | None = None
    """Clipping range above 1 (DAPO's clip-higher); None: `epsilon`."""
    rollout_seqs: int = 64
    """Completions the engine decodes at once (its max_seqs; at least G): more is faster while their KV cache
    fits in memory (batch_size x G decodes a step's rollouts in one wave)."""
    max_val_prompts: int = 64
    """Held-out prompts scored greedily at each evaluation (pass@1)."""
    log_samples_every: int = 10
    """Write one prompt's completions and rewards to samples.jsonl every this many rollout batches (0: never)."""

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise ValueError(f"group_size must be at least 2, got {self.group_size}: a group-relative advantage "
                             f"compares each completion with the others of its prompt (one alone has none)")
        if self.rollout_seqs < 1:
            raise ValueError(f"rollout_seqs must be at least 1, got {self.rollout_seqs}")
        if self.num_iterations < 1:
            raise ValueError(f"num_iterations must be at least 1, got {self.num_iterations}")
        if self.beta < 0 or self.epsilon <= 0 or (self.epsilon_high is not None and self.epsilon_high <= 0):
            raise ValueError("beta must be >= 0 and epsilon, epsilon_high positive")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.rewards):
            raise ValueError(f"reward_weights has {len(self.reward_weights)} values for {len(self.rewards)} rewards")


# ---------------------------------------------------------------------------- prompts


@dataclass
class Prompt:
    ids: list[int]
    record: dict


def load_prompts(path: Path, tokenizer, template: str, needed: set[str], max_len: int, stats: DataStats,
                 skip_bad_lines: bool) -> list[Prompt]:
    def parse(obj: dict) -> Prompt:
        messages = parse_prompt(obj)
        missing = sorted(k for k in needed if obj.get(k) is None)
        if missing:
            raise ValueError(f"missing {', '.join(map(repr, missing))} (the rewards need it)")
        ids = tokenizer.encode_with_specials(render_chat(messages, template, add_generation_prompt=True))
        if len(ids) >= max_len:
            raise ValueError(f"prompt of {len(ids)} tokens leaves no room to answer within {max_len}")
        return Prompt(ids, obj)

    prompts = read_jsonl(path, parse, stats, skip_bad_lines=skip_bad_lines)
    stats.examples += len(prompts)
    return prompts


# ---------------------------------------------------------------------------- rollouts


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside a DDP wrapper (the engine decodes with the module itself)."""
    return getattr(model, "module", model)


@torch.no_grad()
def sample_groups(model, prompts: list[list[int]], n: int, params: list[SamplingParams], *, eos_id: int | None,
                  vocab_limit: int | None, max_seqs: int = 64) -> list[list[list[int]]]:
    """``n`` completions (token ids) of each prompt through one engine; prompt i's choice j uses
    ``params[i].seed + j``. Each prompt is one request, prefilled once."""
    widest = max(len(p) + q.max_new_tokens for p, q in zip(prompts, params, strict=True))
    model = unwrap(model)
    engine = Engine(model, None, max_seqs=max(n, min(max_seqs, n * len(prompts))),
                    max_len=min(widest, model.config.block_size), eos_id=eos_id, vocab_limit=vocab_limit,
                    threaded=False)
    events = [[Event(index=j) for j in range(n)] for _ in prompts]
    left = [n * len(prompts)]

    for i, (ids, p) in enumerate(zip(prompts, params, strict=True)):
        def collect(event: Event, i: int = i) -> None:
            left[0] -= events[i][event.index].absorb(event)

        engine.submit(Request(prompt_ids=list(ids), params=p, n=n, on_event=collect))
    while left[0]:
        engine.step()
    for group in events:
        for e in group:
            if e.finish_reason == "error":
                raise RuntimeError(f"rollout failed: {e.error}")
    return [[e.token_ids for e in group] for group in events]


def group_advantages(rewards: torch.Tensor, scale: str = "group", eps: float = 1e-4) -> torch.Tensor:
    """Group-relative advantages of rewards (B, G): each minus its group's mean, over its group's standard
    deviation (unbiased, plus ``eps``) when ``scale == 'group'``."""
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if scale == "none":
        return centred
    return centred / (rewards.std(dim=1, keepdim=True) + eps)


def token_logps(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Log-probability of each target token (B, T); 0 where the target is ignored."""
    logits = model(x).float()  # (B, T, V)
    logp = torch.gather(logits.log_softmax(-1), 2, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return logp * (y != IGNORE_INDEX)


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, ref_logps: torch.Tensor | None,
              advantages: torch.Tensor, mask: torch.Tensor, *, epsilon_low: float, epsilon_high: float,
              beta: float, loss_type: str = "token") -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped surrogate plus beta times k3 KL, per token (B, T); masked and averaged by ``loss_type``."""
    mask = mask.float()
    ratio = torch.exp(logps - old_logps)
    adv = advantages[:, None]
    per_token = -torch.min(ratio * adv, torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high) * adv)
    metrics: dict[str, float] = {}
    tokens = mask.sum().clamp(min=1)
    if ref_logps is not None:
        kl = torch.exp(ref_logps - logps) - (ref_logps - logps) - 1
        per_token = per_token + beta * kl
        metrics["kl"] = float((kl.detach() * mask).sum() / tokens)
    clipped = ((ratio < 1 - epsilon_low) & (adv < 0)) | ((ratio > 1 + epsilon_high) & (adv > 0))
    metrics["clip_ratio"] = float((clipped.float() * mask).sum() / tokens)
    if loss_type == "token":
        loss = (per_token * mask).sum() / tokens
    else:
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    return loss, metrics


@dataclass
class RolloutBatch:
    """One micro-batch: B prompts times G completions, ready for the loss."""

    ids: list[list[int]]
    """Prompt then completion of each row."""
    prompt_lens: list[int]
    advantages: list[float]
    old_logps: list[list[float]] | None
    """Per completion token, under the policy that sampled them (only with num_iterations > 1)."""
    ref_logps: list[list[float]] | None
    metrics: dict[str, float]

    def tensors(self, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs x (N, T) and targets y (N, T): completion tokens only, padding ignored."""
        width = max(len(r) for r in self.ids) - 1
        x = torch.full((len(self.ids), width), pad_id, dtype=torch.long)
        y = torch.full((len(self.ids), width), IGNORE_INDEX, dtype=torch.long)
        for i, (row, p) in enumerate(zip(self.ids, self.prompt_lens, strict=True)):
            x[i, : len(row) - 1] = torch.tensor(row[:-1])
            y[i, p - 1 : len(row) - 1] = torch.tensor(row[p:])
        return x, y

    def per_token(self, values: list[list[float]], y: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(y.shape, dtype=torch.float32)
        for i, (row, p) in enumerate(zip(values, self.prompt_lens, strict=True)):
            out[i, p - 1 : p - 1 + len(row)] = torch.tensor(row, dtype=torch.float32)
        return out


def rollout_seed(seed: int, batch: int, position: int, batch_size: int, group_size: int) -> int:
    """The seed of prompt ``position`` of rollout batch ``batch`` (its G choices use this seed + j)."""
    return (seed * 1_000_003 + (batch * batch_size + position) * group_size) % (1 << 62)


class RolloutSampler:
    """The training stream of rollout batches, numbered like :class:`~groundup.finetune.data.ExampleBatches`.

    Micro-batch ``k`` belongs to optimizer step ``k // M`` (M micro-batches a step, over all ranks) at place
    ``j = k % M``; step s is inner iteration ``s % mu`` of its cycle. The first step of a cycle samples new
    rollouts (batch number ``cycle * M + j`` of the prompt order) with the current model; the others reuse
    them. ``batches`` counts micro-batches handed out (the global position, as RankBatches expects).
    """

    def __init__(self, cfg: Config, prompts: list[Prompt], model, ref_model, rewards: Rewards, tokenizer,
                 *, pad_id: int, stop_ids: list[int], autocast, out: Path, is_main: bool) -> None:
        self.cfg, self.prompts, self.model, self.ref_model, self.rewards = cfg, prompts, model, ref_model, rewards
        self.tokenizer, self.pad_id, self.stop_ids, self.autocast = tokenizer, pad_id, stop_ids, autocast
        self.out, self.is_main = out, is_main
        self.per_step = cfg.train.grad_accum
        self.order = ExampleBatches([len(p.ids) for p in prompts], cfg.batch_size, lambda idx: idx, seed=cfg.seed,
                                    group_by_length=False)
        self.batches = 0
        self.buffer: dict[int, tuple[int, RolloutBatch]] = {}

    def batch(self, k: int) -> RolloutBatch:
        step, j = divmod(k, self.per_step)
        cycle, inner = divmod(step, self.cfg.num_iterations)
        number = cycle * self.per_step + j
        held = self.buffer.get(j)
        if held is None or held[0] != number:
            if inner:
                log.warning("rollout batch %d is not in the resumed state (another rank's): sampled again with "
                            "the current model", number)
            held = (number, self.rollout(number, step))
            self.buffer[j] = held
        return held[1]

    def next_batch(self) -> RolloutBatch:
        batch = self.batch(self.batches)
        self.batches += 1
        return batch

    def state_dict(self) -> dict:
        state: dict[str, Any] = {"batches": self.batches, "seed": self.cfg.seed}
        if self.cfg.num_iterations > 1:  # an unfinished cycle's rollouts cannot be sampled again
            state["rollouts"] = {str(j): {"number": n, **dataclasses.asdict(b)} for j, (n, b) in self.buffer.items()}
        return state

    def load_state_dict(self, state: dict) -> None:
        self.batches = int(state["batches"])
        self.buffer = {}
        samples = self.out / SAMPLES_FILE
        if self.is_main and samples.is_file():  # the samples of steps after the checkpoint come again
            step = self.batches // self.per_step
            kept = [line for line in samples.read_text(encoding="utf-8").splitlines(keepends=True)
                    if line.strip() and json.loads(line)["step"] < step]
            samples.write_text("".join(kept), encoding="utf-8")
        for j, held in state.get("rollouts", {}).items():
            number = held.pop("number")
            self.buffer[int(j)] = (number, RolloutBatch(**held))

    def rollout(self, number: int, step: int) -> RolloutBatch:
        cfg, size = self.cfg, self.cfg.group_size
        chosen = [self.prompts[i] for i in self.order.indices(number)]
        params = [dataclasses.replace(cfg.sampling, seed=rollout_seed(cfg.seed, number, i, cfg.batch_size, size),
                                      stop_token_ids=self.stop_ids) for i in range(len(chosen))]
        groups = sample_groups(self.model, [p.ids for p in chosen], size, params, eos_id=self.tokenizer.eos_id,
                               vocab_limit=self.tokenizer.vocab_size, max_seqs=cfg.rollout_seqs)
        completions = [c for group in groups for c in group]
        texts = [self.tokenizer.decode([t for t in c if t not in self.stop_ids and t != self.tokenizer.eos_id])
                 for c in completions]
        records = [p.record for p in chosen for _ in range(size)]
        counts = RewardCounts()
        totals, passed = self.rewards.score(texts, records, counts)
        rewards = torch.tensor(totals, dtype=torch.float32).view(len(chosen), size)
        advantages = group_advantages(rewards, cfg.scale_rewards)
        lengths = [len(c) for c in completions]
        batch = RolloutBatch(ids=[chosen[i // size].ids + c for i, c in enumerate(completions)],
                             prompt_lens=[len(p.ids) for p in chosen for _ in range(size)],
                             advantages=advantages.flatten().tolist(), old_logps=None, ref_logps=None,
                             metrics={"reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()),
                                      "pass_rate": sum(passed) / len(passed),
                                      "completion_length": sum(lengths) / len(lengths),
                                      "completion_length_max": float(max(lengths)),
                                      "zero_std_groups": float((rewards.std(dim=1) == 0).float().mean()),
                                      "reward_errors": float(counts.errors), "reward_timeouts": float(counts.timeouts)})
        if counts.samples:
            log.warning("rollout batch %d: %d reward errors, e.g. %s", number, counts.errors, counts.samples[0])
        self._score_logps(batch)
        if self.is_main and cfg.log_samples_every and number % cfg.log_samples_every == 0:
            self._write_sample(number, step, chosen[0], texts[:size], totals[:size])
        return batch

    @torch.no_grad()
    def _score_logps(self, batch: RolloutBatch) -> None:
        """pi_old (with several inner iterations) and the reference's log-probabilities of the completions."""
        if self.cfg.num_iterations == 1 and self.ref_model is None:
            return
        x, y = batch.tensors(self.pad_id)
        device = next(unwrap(self.model).parameters()).device
        x, y = x.to(device), y.to(device)

        def per_row(model) -> list[list[float]]:
            with self.autocast():
                logps = token_logps(model, x, y).float().cpu()
            return [logps[i, p - 1 : len(row) - 1].tolist()
                    for i, (row, p) in enumerate(zip(batch.ids, batch.prompt_lens, strict=True))]

        if self.cfg.num_iterations > 1:
            batch.old_logps = per_row(unwrap(self.model))
        if self.ref_model is not None:
            batch.ref_logps = per_row(self.ref_model)

    def _write_sample(self, number: int, step: int, prompt: Prompt, texts: list[str], rewards: list[float]) -> None:
        record = {"batch": number, "step": step, "prompt": prompt.record.get("prompt"),
                  "answer": prompt.record.get("answer"), "completions": texts, "rewards": rewards}
        with open(self.out / SAMPLES_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------- the method


@torch.no_grad()
def held_out_pass_rate(model, prompts: list[Prompt], rewards: Rewards, tokenizer, *, max_new_tokens: int,
                       stop_ids: list[int]) -> dict[str, float]:
    """Greedy completions of held-out prompts, scored: pass@1 (``val_pass_rate``) and ``val_reward_mean``."""
    params = [SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens, stop_token_ids=stop_ids)] * len(prompts)
    groups = sample_groups(model, [p.ids for p in prompts], 1, params, eos_id=tokenizer.eos_id,
                           vocab_limit=tokenizer.vocab_size)
    texts = [tokenizer.decode([t for t in g[0] if t not in stop_ids]) for g in groups]
    totals, passed = rewards.score(texts, [p.record for p in prompts], RewardCounts())
    return {"val_pass_rate": round(sum(passed) / len(passed), 6), "val_reward_mean": round(sum(totals) / len(totals), 6)}


def make_rewards(cfg: Config) -> Rewards:
    return Rewards(names=list(cfg.rewards), weights=list(cfg.reward_weights or [1.0] * len(cfg.rewards)),
                   format_regex=cfg.format_regex, timeout_s=cfg.reward_timeout_s, test_limits=cfg.test_limits)


def run(cfg: Config) -> Path:
    if common.finished(cfg, STAGE):
        return Path(cfg.out)
    if cfg.parallel.data_parallel == "fsdp" or cfg.parallel.tensor_parallel > 1:
        raise ValueError("grpo: rollouts need the whole model on every rank; use parallel.data_parallel=ddp")
    rewards = make_rewards(cfg)  # an unknown reward fails before the model loads
    s = common.setup(cfg)
    template = read_chat_template(cfg.model)
    max_len = min(cfg.max_len or s.config.block_size, s.config.block_size)
    stats = DataStats()
    needed = required_fields(cfg.rewards)
    train, val = train_val(lambda path: load_prompts(path, s.tokenizer, template, needed, max_len, stats,
                                                     cfg.skip_bad_lines), cfg.data, cfg.val_data, cfg.val_fraction,
                           cfg.seed)
    out = common.prepare_out(cfg, s, stage=STAGE, inputs=(cfg.data, cfg.val_data))
    if s.is_main:
        write_json(out / "data_stats.json", stats.as_dict())
    log.info("GRPO: %d training and %d held-out prompts, %d completions each", len(train), len(val), cfg.group_size)
    pad_id = s.tokenizer.eos_id if s.tokenizer.eos_id is not None else 0
    stop_ids = end_of_turn_ids(s.tokenizer, template, eos=True)
    ref_model = None
    if cfg.beta > 0:  # the starting model (LoRA's B is zero, so the adapted model equals its base), frozen
        ref_model = copy.deepcopy(unwrap(s.model)).eval().requires_grad_(False)
    sampling = dataclasses.replace(cfg.sampling, max_new_tokens=min(cfg.sampling.max_new_tokens,
                                                                     max_len - max(len(p.ids) for p in train)))
    sampler = RolloutSampler(dataclasses.replace(cfg, sampling=sampling), train, s.model, ref_model, rewards,
                             s.tokenizer, pad_id=pad_id, stop_ids=stop_ids, autocast=s.autocast, out=out,
                             is_main=s.is_main)
    device = s.device

    def loss_fn(_model, batch: RolloutBatch):
        x, y = (t.to(device) for t in batch.tensors(pad_id))
        logps = token_logps(_model, x, y)
        old = batch.per_token(batch.old_logps, y).to(device) if batch.old_logps is not None else logps.detach()
        ref = batch.per_token(batch.ref_logps, y).to(device) if batch.ref_logps is not None else None
        loss, metrics = grpo_loss(logps, old, ref, torch.tensor(batch.advantages, device=device), y != IGNORE_INDEX,
                                  epsilon_low=cfg.epsilon, epsilon_high=cfg.epsilon_high or cfg.epsilon,
                                  beta=cfg.beta, loss_type=cfg.loss_type)
        return loss, {**batch.metrics, **metrics}

    def evaluate(_model) -> dict[str, float]:
        return held_out_pass_rate(_model, val[: cfg.max_val_prompts], rewards, s.tokenizer,
                                  max_new_tokens=sampling.max_new_tokens, stop_ids=stop_ids)

    result = common.train(cfg, s, out, sampler, loss_fn, evaluate=evaluate if val else None,
                          batch_tokens=lambda batch: sum(len(r) - p for r, p in zip(batch.ids, batch.prompt_lens,
                                                                                     strict=True)))
    summary = {**result.summary(), **result.last_eval, "group_size": cfg.group_size, "data": stats.as_dict()}
    common.save_result(cfg, s, stage=STAGE, summary=summary, inputs={"data": cfg.data},
                       write_more=lambda out: write_chat_template(out, template))
    return out
