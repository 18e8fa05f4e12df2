"""Generation: token ids and text from a model dir, streamed as they come, and the `groundup generate` stage.

Every function here is a thin client of the inference engine (:class:`~groundup.infer.engine.Engine`,
run in the caller's thread), so `groundup generate`, the server, evaluation and speculative decoding
share one decode step, one sampler and one request validation:

- ``generate_tokens(model, prompt_ids, params)`` yields new token ids one at a time;
- ``generate(model, tokenizer, prompt, params)`` streams text (whole characters, cut before stop strings)
  and returns a :class:`GenerationResult`; with ``draft`` it decodes speculatively;
- ``generate_batch(model, tokenizer, prompts, params)`` runs many prompts through one engine at once.

``run(cfg)`` is the `groundup generate` stage around them: load a model dir, stream to the terminal.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from groundup.artifacts import first_record_has, prepare_out
from groundup.infer.engine import Engine, Event, Request
from groundup.infer.sampling import SamplingParams
from groundup.infer.speculative import load_draft
from groundup.infer.text import TextStream, TokenizerLike
from groundup.model.io import load_model_dir

log = logging.getLogger(__name__)

FinishReason = Literal["stop", "length", "eos"]

__all__ = ["GenerationResult", "TextStream", "generate", "generate_batch", "generate_tokens"]


def _engine(model: torch.nn.Module, tokenizer: TokenizerLike | None, needed: int, *, max_seqs: int = 1,
            draft: torch.nn.Module | None = None, draft_tokens: int = 4, eos_id: int | None = None,
            vocab_limit: int | None = None, compile: bool = False) -> Engine:
    """An engine in the caller's thread, its cache no longer than ``needed`` positions (prompt and output)
    unless that is more than the model's context (then it slides or stops at the context's end)."""
    max_len = min(needed, model.config.block_size)
    return Engine(model, tokenizer, max_seqs=max_seqs, max_len=max_len, draft=draft, draft_tokens=draft_tokens,
                  eos_id=eos_id, vocab_limit=vocab_limit, threaded=False, compile=compile)


def generate_tokens(model: torch.nn.Module, prompt_ids: Sequence[int], params: SamplingParams, *,
                    eos_id: int | None = None, vocab_limit: int | None = None) -> Iterator[int]:
    """Yield up to ``params.max_new_tokens`` new token ids continuing ``prompt_ids``, one at a time.

    Generation ends after ``max_new_tokens`` tokens; right after yielding ``eos_id`` (when
    ``params.stop_at_eos``) or one of ``params.stop_token_ids`` (the id is yielded, so a caller can tell
    why it ended); or when the context is full and ``params.context_overflow == 'stop'``.

    ``vocab_limit`` (the tokenizer's vocabulary size): ids from there up are never sampled. A model's
    vocabulary is often padded to a multiple of 64 above the tokenizer's, and those rows decode to nothing.

    Context longer than the model's ``block_size``, with ``context_overflow == 'slide'``: a prompt keeps
    its last ``block_size`` tokens (with a warning); when the cache is full, the older half of the context
    is dropped and the newer half recomputed from position 0, so each slide costs one prefill of
    block_size / 2 tokens. With ``'stop'``, a prompt longer than ``block_size`` raises ValueError.

    Arguments are checked when this is called, not at the first ``next()``. The model itself is left as it
    was (its train/eval mode included): the engine decodes with a view of it.
    """
    ids = [int(i) for i in prompt_ids]
    engine = _engine(model, None, len(ids) + params.max_new_tokens, eos_id=eos_id, vocab_limit=vocab_limit)
    request = Request(prompt_ids=ids, params=params, truncate_prompt=params.context_overflow == "slide")
    engine.check(request)
    return _token_ids(engine.stream(request))


def _token_ids(events: Iterator[Event]) -> Iterator[int]:
    for event in events:
        yield from event.token_ids
        if event.finish_reason == "error":
            raise RuntimeError(f"generation failed: {event.error}")


@dataclass(kw_only=True)
class GenerationResult:
    """One completion: its text, its tokens and why it ended."""

    text: str
    """The generated text (without the prompt), cut before a stop string; the EOS token adds no text."""
    token_ids: list[int]
    """Every generated token id, the EOS or the tokens that made a stop string included."""
    finish_reason: FinishReason
    """'eos' (the model ended the text), 'stop' (a stop string or stop token) or 'length' (max_new_tokens or,
    with context_overflow='stop', the model's block_size reached)."""
    prompt_tokens: int
    """Tokens in the prompt (as encoded, before any truncation to the block size)."""
    completion_tokens: int
    """Tokens generated (len(token_ids))."""
    seconds: float
    """Wall-clock time of the generation, prefill included."""
    draft_acceptance: float | None = None
    """With a draft model: the share of its guessed tokens the model accepted."""

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0


def _prompt_ids(tokenizer: TokenizerLike, prompt: str | Sequence[int]) -> list[int]:
    """The prompt's tokens (a prompt given as token ids is taken as it is); an empty prompt starts a new
    document (documents are separated by EOS)."""
    ids = tokenizer.encode(prompt) if isinstance(prompt, str) else [int(i) for i in prompt]
    if not ids:
        if tokenizer.eos_id is None:
            raise ValueError("empty prompt, and the tokenizer has no EOS token to start a new document from")
        ids = [tokenizer.eos_id]
    return ids


def _finish_reason(event: Event, params: SamplingParams, eos_id: int | None) -> FinishReason:
    if event.finish_reason == "error":
        raise RuntimeError(f"generation failed: {event.error}")
    if event.finish_reason == "stop" and params.stop_at_eos and event.token_ids and event.token_ids[-1] == eos_id:
        return "eos"
    return "stop" if event.finish_reason == "stop" else "length"


def generate(model: torch.nn.Module, tokenizer: TokenizerLike, prompt: str, params: SamplingParams, *,
             on_text: Callable[[str], None] | None = None, draft: torch.nn.Module | None = None,
             draft_tokens: int = 4, compile: bool = False) -> GenerationResult:
    """Continue ``prompt`` with ``model``; call ``on_text`` with each piece of text as soon as it is safe to show.

    The pieces passed to ``on_text`` join to exactly ``result.text``. An empty prompt starts a new
    document: the context is the EOS token alone. With ``draft`` (a smaller model on the same tokenizer),
    decoding is speculative: ``draft_tokens`` guesses per round, checked by ``model`` in one forward;
    greedy output is the model's own, sampled output follows the model's distribution.
    """
    prompt_ids = _prompt_ids(tokenizer, prompt)
    started = time.perf_counter()
    engine = _engine(model, tokenizer, len(prompt_ids) + params.max_new_tokens, draft=draft,
                     draft_tokens=draft_tokens, compile=compile)
    result = Event(index=0)
    request = Request(prompt_ids=prompt_ids, params=params, truncate_prompt=params.context_overflow == "slide")
    for event in engine.stream(request):
        result.absorb(event)
        if event.text and on_text is not None:
            on_text(event.text)
    return GenerationResult(text=result.text, token_ids=result.token_ids,
                            finish_reason=_finish_reason(result, params, tokenizer.eos_id),
                            prompt_tokens=len(prompt_ids), completion_tokens=len(result.token_ids),
                            seconds=time.perf_counter() - started,
                            draft_acceptance=engine.stats.draft_acceptance_rate)


def generate_batch(model: torch.nn.Module, tokenizer: TokenizerLike, prompts: Sequence[str | Sequence[int]],
                   params: SamplingParams | Sequence[SamplingParams], *, max_seqs: int = 8) -> list[GenerationResult]:
    """Generate for many prompts at once (continuous batching, ``max_seqs`` at a time); results in order.
    A prompt is text, or token ids taken as they are (a rendered chat template's specials, a prompt built to
    an exact length).

    Greedy results equal one :func:`generate` call per prompt, bit for bit (the engine is batch-invariant).
    """
    if isinstance(params, SamplingParams):
        params = [params] * len(prompts)
    if len(params) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(params)} sampling settings")
    if not prompts:
        return []
    ids = [_prompt_ids(tokenizer, p) for p in prompts]
    widest = max(len(i) + p.max_new_tokens for i, p in zip(ids, params, strict=True))
    engine = _engine(model, tokenizer, widest, max_seqs=max(1, min(max_seqs, len(prompts))))
    started = time.perf_counter()
    events = [Event(index=0) for _ in prompts]
    ended = [0.0] * len(prompts)
    requests = []
    for i, (prompt_ids, p) in enumerate(zip(ids, params, strict=True)):
        def collect(event: Event, i: int = i) -> None:
            if events[i].absorb(event):
                ended[i] = time.perf_counter()

        request = Request(prompt_ids=prompt_ids, params=p, on_event=collect,
                          truncate_prompt=p.context_overflow == "slide")
        engine.submit(request)
        requests.append(request)
    while not all(ended):
        engine.step()
    return [GenerationResult(text=e.text, token_ids=e.token_ids, finish_reason=_finish_reason(e, p, tokenizer.eos_id),
                             prompt_tokens=len(i), completion_tokens=len(e.token_ids), seconds=end - started)
            for e, p, i, end in zip(events, params, ids, ended, strict=True)]


# ---------------------------------------------------------------------------- the stage


@dataclass(kw_only=True)
class Config:
    """Generate text from a model dir, streaming it to the terminal."""

    model: Path = Path("runs/tiny/model")
    """Model dir (from `groundup run`, `groundup pretrain` or `groundup finetune`)."""
    prompt: str = ""
    """Text to continue; empty starts a new document."""
    sampling: SamplingParams = field(default_factory=SamplingParams)
    """Sampling and stopping settings."""
    num_samples: int = 1
    """Completions to generate, one after another; with a seed, sample i uses seed + i."""
    echo: bool = True
    """Print the prompt before its continuation."""
    device: str = "cpu"
    """'cpu', 'cuda', 'cuda:N', or 'auto' (CUDA when available)."""
    out: Path | None = None
    """Also write the samples to this JSONL file (one record per sample)."""
    draft: Path | None = None
    """A smaller model dir on the same tokenizer for speculative decoding: greedy output is the model's own,
    sampled output follows the model's distribution; faster when the draft guesses well."""
    draft_tokens: int = 4
    """Tokens the draft model guesses per round."""
    compile: bool = False
    """Decode through a torch.compile graph: faster steps after a compilation of its own (worth it for long
    generations and many samples)."""
    overwrite: bool = False
    """Replace an existing `out` file that is not an earlier output of this command (never an input file)."""

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {self.num_samples}")


def _write_text(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def run(cfg: Config) -> Path:
    """Stream ``cfg.num_samples`` completions to stdout (a timing footer per sample goes to stderr).

    Returns ``cfg.out`` when samples are written there, else the model dir.
    """
    model_dir = Path(cfg.model)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model dir not found: {model_dir} "
                                f"(make one with `groundup run` or `groundup pretrain`)")
    if cfg.out is not None:
        prepare_out(cfg.out, stage="generate", inputs=[model_dir, cfg.draft], overwrite=cfg.overwrite,
                    written_by=lambda path: first_record_has(path, {"sample", "prompt", "sampling"}))
    model, tokenizer = load_model_dir(model_dir, device=cfg.device)
    draft = load_draft(cfg.draft, tokenizer, device=cfg.device) if cfg.draft is not None else None

    records = []
    for i in range(cfg.num_samples):
        params = cfg.sampling
        if params.seed is not None and i > 0:
            params = dataclasses.replace(params, seed=params.seed + i)
        if i > 0:
            _write_text("\n" + "-" * 40 + "\n")
        if cfg.echo:
            _write_text(cfg.prompt)
        result = generate(model, tokenizer, cfg.prompt, params, on_text=_write_text, draft=draft,
                          draft_tokens=cfg.draft_tokens, compile=cfg.compile)
        _write_text("\n")
        accepted = "" if result.draft_acceptance is None else f", draft accepted {result.draft_acceptance:.0%}"
        print(f"[sample {i + 1}/{cfg.num_samples}: {result.completion_tokens} tokens in {result.seconds:.2f} s, "
              f"{result.tokens_per_second:.1f} tokens/s, prompt {result.prompt_tokens} tokens, "
              f"finish: {result.finish_reason}{accepted}]", file=sys.stderr, flush=True)
        records.append({"sample": i, "prompt": cfg.prompt, **dataclasses.asdict(result),
                        "sampling": dataclasses.asdict(params)})

    if cfg.out is None:
        return model_dir
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, out)
    return out
