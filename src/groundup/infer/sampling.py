"""Sampling: pure functions that turn next-token logits (B, V) into token ids (B,).

The processing order follows Hugging Face ``generate`` and vLLM: logit bias, then the penalties
(repetition over prompt and output, presence and frequency over the output), then temperature,
then the filters (top-k, top-p, min-p), then a draw. Temperature 0 means greedy: the argmax of the
penalized logits, with no filtering and no randomness.

Every function returns a new tensor and leaves its input alone, so the steps compose freely and
tests can call each one on hand-made logits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch


@dataclass(kw_only=True)
class SamplingParams:
    """How to pick each next token, and when to stop."""

    temperature: float = 0.8
    """Softmax temperature; 0 means greedy decoding (always the most likely token)."""
    top_k: int | None = None
    """Sample only among the k most likely tokens (None: no limit)."""
    top_p: float = 1.0
    """Nucleus sampling: the smallest set of most likely tokens whose probabilities sum to at least top_p (1: off)."""
    min_p: float = 0.0
    """Drop tokens whose probability is below min_p times the most likely token's (0: off)."""
    repetition_penalty: float = 1.0
    """Penalty (> 1 discourages) on every token already in the prompt or the output: positive logits are divided by it, negative ones multiplied (1: off)."""
    presence_penalty: float = 0.0
    """Subtracted once from the logit of every token that already appears in the output (OpenAI convention, -2..2)."""
    frequency_penalty: float = 0.0
    """Subtracted from each token's logit once per time it already appears in the output (OpenAI convention, -2..2)."""
    logit_bias: dict[int, float] = field(default_factory=dict)
    """Token id -> value added to its logit before anything else (-100 bans a token, 100 all but forces it)."""
    max_new_tokens: int = 128
    """Most tokens to generate."""
    stop: list[str] = field(default_factory=list)
    """Strings that end generation; the output is cut before the first one found."""
    stop_token_ids: list[int] = field(default_factory=list)
    """Token ids that end generation like EOS does (a chat template's end-of-turn token, say); they add no text."""
    stop_at_eos: bool = True
    """End generation when the model emits the tokenizer's end-of-sequence token."""
    seed: int | None = None
    """Seed of the sampler's random generator; the same seed, model and prompt give the same tokens (None: random)."""
    context_overflow: Literal["slide", "stop"] = "slide"
    """When prompt and output outgrow the model's block_size: 'slide' keeps the last tokens (a too long prompt
    keeps its last block_size tokens; a full context drops its older half and recomputes the rest), 'stop'
    ends generation (finish reason 'length') and rejects a prompt longer than block_size."""

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):  # a single stop string is a common way to write it
            self.stop = [self.stop]
        problems = []
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            problems.append(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k <= 0:
            problems.append(f"top_k must be a positive integer or None, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p <= 1.0:
            problems.append(f"min_p must be in [0, 1], got {self.min_p}")
        if not (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0):
            problems.append(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not math.isfinite(getattr(self, name)):
                problems.append(f"{name} must be finite, got {getattr(self, name)}")
        bad_bias = [k for k in self.logit_bias if not isinstance(k, int) or isinstance(k, bool) or k < 0]
        if bad_bias:
            problems.append(f"logit_bias keys must be token ids (integers >= 0), got {bad_bias[:5]}")
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            problems.append(f"stop must be a list of non-empty strings, got {self.stop!r}")
        if any(not isinstance(i, int) or i < 0 for i in self.stop_token_ids):
            problems.append(f"stop_token_ids must be token ids (integers >= 0), got {self.stop_token_ids!r}")
        if self.context_overflow not in ("slide", "stop"):
            problems.append(f"context_overflow must be 'slide' or 'stop', got {self.context_overflow!r}")
        if problems:
            raise ValueError("invalid sampling params: " + "; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def uses_history(self) -> bool:
        """Whether the penalties need the tokens seen so far."""
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A random generator on ``device`` seeded with ``seed`` (or from fresh entropy when None)."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


# ---------------------------------------------------------------------------- logit processors


def apply_logit_bias(logits: torch.Tensor, logit_bias: dict[int, float]) -> torch.Tensor:
    """Add ``logit_bias[id]`` to column ``id`` of every row of ``logits`` (B, V)."""
    if not logit_bias:
        return logits
    ids = torch.tensor(list(logit_bias), dtype=torch.long, device=logits.device)
    values = torch.tensor(list(logit_bias.values()), dtype=logits.dtype, device=logits.device)
    return logits.index_add(1, ids, values.expand(logits.shape[0], -1))


def apply_repetition_penalty(logits: torch.Tensor, generated_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """Penalize every token in ``generated_ids`` (B, L), the prompt and output so far (CTRL, Keskar et al. 2019).

    Positive logits are divided by ``penalty`` and negative ones multiplied, so a penalty above 1 always
    makes a seen token less likely. A token seen several times is penalized once.
    """
    if penalty == 1.0 or generated_ids.numel() == 0:
        return logits
    seen = logits.gather(1, generated_ids)  # (B, L)
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(1, generated_ids, seen)  # duplicates write the same value


def apply_presence_frequency_penalty(logits: torch.Tensor, output_ids: torch.Tensor, presence: float,
                                     frequency: float) -> torch.Tensor:
    """OpenAI's penalties over the output so far ``output_ids`` (B, L): presence once per seen token,
    frequency once per occurrence."""
    if (presence == 0.0 and frequency == 0.0) or output_ids.numel() == 0:
        return logits
    counts = torch.zeros_like(logits).scatter_add_(1, output_ids, torch.ones_like(output_ids, dtype=logits.dtype))
    return logits - frequency * counts - presence * (counts > 0).to(logits.dtype)  # (B, V)


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Divide by ``temperature`` (> 0); greedy decoding (temperature 0) never gets here."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 to scale logits, got {temperature} (0 means greedy)")
    return logits if temperature == 1.0 else logits / temperature


def apply_top_k(logits: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """Keep the ``top_k`` largest logits of each row (ties with the k-th are kept too); mask the rest to -inf."""
    if top_k is None or top_k >= logits.shape[-1]:
        return logits
    if top_k <= 0:
        raise ValueError(f"top_k must be positive, got {top_k}")
    kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filter (Holtzman et al. 2020): keep the smallest set of most likely tokens whose probability
    sums to at least ``top_p``; the most likely token is always kept."""
    if top_p >= 1.0:
        return logits
    if top_p <= 0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the more likely tokens; 0 for the first
    remove_sorted = mass_before >= top_p
    remove = torch.zeros_like(remove_sorted).scatter(1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def apply_min_p(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Keep tokens with probability >= ``min_p`` times the row's largest (Nguyen et al. 2024).

    Compared in log space, ``logit >= max_logit + log(min_p)``, which is the same test without underflow.
    """
    if min_p <= 0.0:
        return logits
    if min_p > 1.0:
        raise ValueError(f"min_p must be in [0, 1], got {min_p}")
    threshold = logits.max(dim=-1, keepdim=True).values + math.log(min_p)  # (B, 1)
    return logits.masked_fill(logits < threshold, float("-inf"))


def process_logits(logits: torch.Tensor, params: SamplingParams, *, prompt_ids: torch.Tensor | None = None,
                   output_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Every processor of ``params`` in order, on float32 ``logits`` (B, V); the result's argmax or softmax
    gives the next token. ``prompt_ids`` (B, Lp) and ``output_ids`` (B, Lo) are needed for the penalties."""
    logits = logits.float()
    logits = apply_logit_bias(logits, params.logit_bias)
    if params.uses_history:
        device = logits.device
        empty = torch.empty(logits.shape[0], 0, dtype=torch.long, device=device)
        prompt_ids = empty if prompt_ids is None else prompt_ids.to(device)
        output_ids = empty if output_ids is None else output_ids.to(device)
        logits = apply_repetition_penalty(logits, torch.cat([prompt_ids, output_ids], dim=1),
                                          params.repetition_penalty)
        logits = apply_presence_frequency_penalty(logits, output_ids, params.presence_penalty,
                                                  params.frequency_penalty)
    if params.greedy:
        return logits  # the filters below never remove the argmax
    logits = apply_temperature(logits, params.temperature)
    logits = apply_top_k(logits, params.top_k)
    logits = apply_top_p(logits, params.top_p)
    return apply_min_p(logits, params.min_p)


def draw(processed: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> torch.Tensor:
    """Token ids (B,) from processed logits (B, V): their argmax when greedy, else a draw from their softmax."""
    if params.greedy:
        return processed.argmax(dim=-1)
    return torch.multinomial(processed.softmax(dim=-1), num_samples=1, generator=generator).squeeze(1)


def draw_rows(logits: torch.Tensor, temperatures: Sequence[float],
              generators: Sequence[torch.Generator]) -> list[int | None]:
    """One token per row of ``logits`` (B, V), drawn from ``softmax(logits / temperature)`` with the row's own
    generator, for one batched softmax instead of B: the same tokens, and the same generator states after, as
    :func:`draw` row by row (``torch.multinomial`` draws one sample as the argmax of ``p / q``, ``q`` exponential
    noise from the generator). None for a row whose probabilities are not finite (:func:`draw` raises there)."""
    temps = torch.tensor([float(t) for t in temperatures], dtype=logits.dtype, device=logits.device)[:, None]
    probs = (logits / temps).softmax(dim=-1)
    noise = torch.cat([torch.empty(1, probs.shape[-1], dtype=probs.dtype, device=g.device).exponential_(1, generator=g)
                       .to(probs.device) for g in generators])
    tokens = (probs / noise).argmax(dim=-1).tolist()
    finite = torch.isfinite(probs).all(dim=-1).tolist()
    return [t if ok else None for t, ok in zip(tokens, finite, strict=True)]


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None, *,
                prompt_ids: torch.Tensor | None = None, output_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Next token ids (B,) from logits (B, V): greedy when ``params.temperature == 0``, else a draw from
    the processed distribution using ``generator`` (which makes a seeded run reproducible)."""
    return draw(process_logits(logits, params, prompt_ids=prompt_ids, output_ids=output_ids), params, generator)
