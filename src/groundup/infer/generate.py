"""Generation: token ids from a model with a KV cache, text streamed as it comes, and the `generate` stage.

Three layers, each reusable on its own:

- ``generate_tokens(model, prompt_ids, params)`` yields new token ids one at a time (prefill the prompt
  into the KV cache once, then one cached forward per token).
- ``TextStream`` turns those ids into text deltas: only whole UTF-8 characters, cut before stop strings,
  and holding back text that could still become a stop string.
- ``generate(model, tokenizer, prompt, params)`` puts the two together and returns a ``GenerationResult``.

``run(cfg)`` is the `groundup generate` stage around them: load a model dir, stream to the terminal.
"""

from __future__ import annotations

import codecs
import contextlib
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
from typing import Literal, Protocol

import torch

from groundup.artifacts import first_record_has, prepare_out
from groundup.infer.sampling import SamplingParams, make_generator, sample_next
from groundup.model.io import load_model_dir

log = logging.getLogger(__name__)

FinishReason = Literal["stop", "length", "eos"]


class TokenizerLike(Protocol):
    """What generation needs of a tokenizer (``groundup.tokenizer.Tokenizer`` has it)."""

    @property
    def eos_id(self) -> int | None: ...

    def encode(self, text: str) -> list[int]: ...

    def decode_bytes(self, ids: Sequence[int]) -> bytes: ...


# ---------------------------------------------------------------------------- token ids


def generate_tokens(model: torch.nn.Module, prompt_ids: Sequence[int], params: SamplingParams, *,
                    eos_id: int | None = None, vocab_limit: int | None = None) -> Iterator[int]:
    """Yield up to ``params.max_new_tokens`` new token ids continuing ``prompt_ids``, one at a time.

    The prompt is run through the model once to fill a KV cache (prefill); each new token then costs one
    forward of a single position. Generation ends after ``max_new_tokens`` tokens; right after yielding
    ``eos_id`` (when ``params.stop_at_eos``) or one of ``params.stop_token_ids`` (the id is yielded, so a
    caller can tell why it ended); or when the context is full and ``params.context_overflow == 'stop'``.

    ``vocab_limit`` (the tokenizer's vocabulary size): ids from there up are never sampled. A model's
    vocabulary is often padded to a multiple of 64 above the tokenizer's, and those rows decode to nothing.

    Context longer than the model's ``block_size``, with ``context_overflow == 'slide'``: a prompt keeps
    its last ``block_size`` tokens (with a warning); when the cache is full, the older half of the context
    is dropped and the newer half recomputed from position 0, so each slide costs one prefill of
    block_size / 2 tokens. With ``'stop'``, a prompt longer than ``block_size`` raises ValueError.

    The model runs in eval mode under ``torch.inference_mode`` (only around its own calls, so the mode
    does not leak into the caller between yields); its KV cache is removed and its train/eval mode
    restored when the generator finishes, is closed early, or fails.
    """
    config = model.config
    block_size, vocab_size = config.block_size, config.vocab_size
    ids = [int(i) for i in prompt_ids]
    if not ids:
        raise ValueError("prompt_ids is empty: the model needs at least one token of context "
                         "(start from the EOS token to begin a new document)")
    out_of_range = [i for i in ids if not 0 <= i < vocab_size]
    if out_of_range:
        raise ValueError(f"prompt_ids holds ids outside the model's vocabulary of {vocab_size}: {out_of_range[:5]}")
    bad_bias = [i for i in params.logit_bias if i >= vocab_size]
    if bad_bias:
        raise ValueError(f"logit_bias names token ids outside the model's vocabulary of {vocab_size}: {bad_bias[:5]}")
    if vocab_limit is not None and not 0 < vocab_limit <= vocab_size:
        raise ValueError(f"vocab_limit must be in 1..{vocab_size} (the model's vocabulary), got {vocab_limit}")
    window_start = 0  # ids[window_start:] is what the KV cache holds
    if len(ids) > block_size:
        if params.context_overflow == "stop":
            raise ValueError(f"prompt of {len(ids)} tokens exceeds the model's block_size {block_size} "
                             f"(shorten it, or set context_overflow='slide' to keep its last tokens)")
        window_start = len(ids) - block_size
        log.warning("prompt of %d tokens exceeds block_size %d: keeping its last %d tokens",
                    len(ids), block_size, block_size)
    return _generate_tokens(model, ids, window_start, params, eos_id, vocab_limit)


def _generate_tokens(model: torch.nn.Module, ids: list[int], window_start: int, params: SamplingParams,
                     eos_id: int | None, vocab_limit: int | None) -> Iterator[int]:
    # A separate generator so that generate_tokens() checks its arguments when called, not at the first next().
    block_size = model.config.block_size
    device = model.lm_head.weight.device
    generator = make_generator(params.seed, device)
    keep_on_slide = max(block_size // 2, 1)
    n_prompt = len(ids)
    stop_ids = set(params.stop_token_ids)
    if params.stop_at_eos and eos_id is not None:
        stop_ids.add(eos_id)
    prompt_t = torch.tensor([ids], dtype=torch.long, device=device) if params.uses_history else None  # (1, Lp)

    @torch.inference_mode()
    def forward(start: int, tokens: list[int]) -> torch.Tensor:
        idx = torch.tensor([tokens], dtype=torch.long, device=device)  # (1, T)
        # The head on the last position only: a prefill's (T, V) logits would be large and mostly unused.
        last = model.hidden_states(idx, start)[:, -1]  # (1, C)
        return model.lm_head(last)  # (1, V): logits for the next token

    @torch.inference_mode()
    def pick(logits: torch.Tensor) -> int:
        if vocab_limit is not None and vocab_limit < logits.shape[-1]:
            logits = logits.clone()
            logits[:, vocab_limit:] = float("-inf")  # padding rows of the vocabulary
        output_t = None
        if params.uses_history:
            output_t = torch.tensor([ids[n_prompt:]], dtype=torch.long, device=device)  # (1, Lo)
        return int(sample_next(logits, params, generator, prompt_ids=prompt_t, output_ids=output_t)[0])

    was_training = model.training
    model.eval()
    try:
        window = len(ids) - window_start
        with torch.inference_mode():  # cache tensors made here are inference tensors, like everything they meet
            model.setup_kv_cache(1, min(block_size, window + params.max_new_tokens))
        logits = forward(0, ids[window_start:])
        position = window  # next free position in the cache
        for step in range(params.max_new_tokens):
            token = pick(logits)
            yield token
            if token in stop_ids or step == params.max_new_tokens - 1:
                return
            ids.append(token)
            if position < block_size:
                logits = forward(position, [token])
                position += 1
            elif params.context_overflow == "stop":
                return
            else:
                window_start = len(ids) - keep_on_slide
                logits = forward(0, ids[window_start:])
                position = keep_on_slide
    finally:
        model.clear_kv_cache()
        model.train(was_training)


# ---------------------------------------------------------------------------- text


class TextStream:
    """Turns generated token ids into text deltas, safe to show as they come.

    - Only whole characters: the bytes of all tokens so far are decoded incrementally, so a token that
      ends inside a multi-byte UTF-8 character emits nothing until the character is complete (bytes that
      can never form one become U+FFFD, as ``bytes.decode(errors='replace')`` would).
    - Stop strings: once one appears, the text is cut right before it and ``stopped`` is set. Text that
      could be the start of a stop string is held back until the next tokens settle it, so nothing shown
      ever has to be taken back.

    ``push(token_id)`` returns the new text; ``finish()`` returns the held tail once generation is over.
    The serving engine keeps one per sequence.
    """

    def __init__(self, tokenizer: TokenizerLike, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.token_ids: list[int] = []
        self.stopped = False
        """True once a stop string was found (``text`` then ends right before it)."""
        self.stop_string: str | None = None
        """The stop string that ended the text, if any."""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._bytes_fed = 0
        self._text = ""  # decoded so far: the emitted part, then text held back
        self._emitted = 0  # characters of _text already returned
        self._searched = 0  # _text[:_searched] holds no stop string
        self._longest_stop = max((len(s) for s in self.stop), default=0)

    @property
    def text(self) -> str:
        """The text emitted so far (everything, after ``finish()``)."""
        return self._text[: self._emitted]

    def push(self, token_id: int) -> str:
        """Add one generated token; return the text that became safe to show (often '', never a half character)."""
        if self.stopped:
            raise RuntimeError("TextStream already stopped at a stop string; push no more tokens")
        self.token_ids.append(int(token_id))
        # Decode everything and feed only the new bytes: byte-level BPE decoding only ever appends, and a
        # token's bytes are only meaningful next to its neighbours' (a character can span two tokens).
        data = self.tokenizer.decode_bytes(self.token_ids)
        self._text += self._decoder.decode(data[self._bytes_fed :])
        self._bytes_fed = len(data)
        return self._advance(final=False)

    def finish(self) -> str:
        """Generation is over: return what was held back (an unfinished character becomes U+FFFD)."""
        if not self.stopped:
            self._text += self._decoder.decode(b"", final=True)
        return self._advance(final=True)

    def _advance(self, *, final: bool) -> str:
        if self.stopped:
            return ""
        if self.stop:
            # A stop string may begin in text searched before, as long as it ends in the new text.
            begin = max(self._searched - self._longest_stop + 1, 0)
            found = [(i, s) for s in self.stop if (i := self._text.find(s, begin)) >= 0]
            if found:
                cut, self.stop_string = min(found)
                self._text, self.stopped = self._text[:cut], True
                return self._emit(len(self._text))
            self._searched = len(self._text)
        return self._emit(len(self._text) - (0 if final else self._held()))

    def _held(self) -> int:
        """Length of the longest tail of the text that is the start of some stop string."""
        for n in range(min(self._longest_stop - 1, len(self._text)), 0, -1):
            tail = self._text[-n:]
            if any(s.startswith(tail) for s in self.stop):
                return n
        return 0

    def _emit(self, until: int) -> str:
        until = max(until, self._emitted)
        delta, self._emitted = self._text[self._emitted : until], until
        return delta


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


def generate(model: torch.nn.Module, tokenizer: TokenizerLike, prompt: str, params: SamplingParams, *,
             on_text: Callable[[str], None] | None = None, draft: torch.nn.Module | None = None,
             draft_tokens: int = 4) -> GenerationResult:
    """Continue ``prompt`` with ``model``; call ``on_text`` with each piece of text as soon as it is safe to show.

    The pieces passed to ``on_text`` join to exactly ``result.text``. An empty prompt starts a new
    document: the context is the EOS token alone (documents are separated by EOS in training data).
    With ``draft`` (a smaller model on the same tokenizer), greedy decoding is speculative
    (:mod:`groundup.infer.speculative`): ``draft_tokens`` guesses per round, checked by ``model`` in one
    forward; the tokens are those of ``model`` alone, produced before the text is shown.
    """
    eos_id = tokenizer.eos_id
    prompt_ids = tokenizer.encode(prompt)
    if not prompt_ids:
        if eos_id is None:
            raise ValueError("empty prompt, and the tokenizer has no EOS token to start a new document from")
        prompt_ids = [eos_id]
    stream = TextStream(tokenizer, params.stop)
    token_ids: list[int] = []
    finish_reason: FinishReason = "length"

    def emit(delta: str) -> None:
        if delta and on_text is not None:
            on_text(delta)

    started = time.perf_counter()
    # closing(): leaving the loop early (EOS, stop string, an exception in on_text) frees the KV cache now.
    # Never sample ids the tokenizer lacks: the model's vocabulary may be padded beyond the tokenizer's.
    vocab_limit = min(getattr(tokenizer, "vocab_size", None) or model.config.vocab_size, model.config.vocab_size)
    acceptance = None
    if draft is None:
        tokens = generate_tokens(model, prompt_ids, params, eos_id=eos_id, vocab_limit=vocab_limit)
        scope = contextlib.closing(tokens)
    else:
        from groundup.infer.speculative import speculative_generate

        if not params.greedy or params.uses_history or params.logit_bias:
            raise ValueError("speculative decoding (a draft model) is greedy decoding: set temperature 0, "
                             "no repetition/presence/frequency penalties and no logit_bias")
        spec = speculative_generate(model, draft, prompt_ids, max_new_tokens=params.max_new_tokens, k=draft_tokens,
                                    eos_id=eos_id if params.stop_at_eos else None, vocab_limit=vocab_limit)
        tokens, scope, acceptance = iter(spec.token_ids), contextlib.nullcontext(), spec.acceptance_rate
    with scope:
        for token in tokens:
            token_ids.append(token)
            if params.stop_at_eos and token == eos_id:
                finish_reason = "eos"
                break
            if token in params.stop_token_ids:
                finish_reason = "stop"
                break
            emit(stream.push(token))
            if stream.stopped:
                finish_reason = "stop"
                break
    emit(stream.finish())
    return GenerationResult(text=stream.text, token_ids=token_ids, finish_reason=finish_reason,
                            prompt_tokens=len(prompt_ids), completion_tokens=len(token_ids),
                            seconds=time.perf_counter() - started, draft_acceptance=acceptance)


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
    """A smaller model dir on the same tokenizer for speculative decoding (greedy only: temperature 0); the
    output is the model's own greedy output, faster when the draft guesses well."""
    draft_tokens: int = 4
    """Tokens the draft model guesses per round."""
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
    draft = None
    if cfg.draft is not None:
        draft, draft_tokenizer = load_model_dir(cfg.draft, device=cfg.device)
        if draft_tokenizer.vocab_size != tokenizer.vocab_size or draft_tokenizer.encode(cfg.prompt or " ") != \
                tokenizer.encode(cfg.prompt or " "):
            raise ValueError(f"draft model {cfg.draft} does not share the tokenizer of {model_dir}")

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
                          draft_tokens=cfg.draft_tokens)
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
