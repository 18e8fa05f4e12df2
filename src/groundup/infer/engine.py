"""The inference engine: continuous batching of many requests over one model, with speculative decoding.

A request (a prompt, sampling parameters, ``n`` choices) becomes ``n`` sequences. Each engine step takes
new requests and cancellations from a queue; gives waiting sequences a free slot of the KV cache and
prefills their prompt (alone, one sequence per forward, so a prompt's result never depends on its
neighbours); runs one decode step for every running sequence together, each at its own position
(:class:`~groundup.infer.decode.Decoder`); samples each row with its own parameters, grammar mask, seed
and penalties; sends each new token to its request; frees the slots of sequences that ended. New
sequences join and finished ones leave between two steps (continuous batching, as in Orca and vLLM).

With a ``draft`` model, each step is a speculative round for every sequence that can take one (no
grammar, room left): the draft guesses ``draft_tokens`` tokens, the target checks them all in the same
forward as the other sequences' decode rows, and :mod:`groundup.infer.speculative` decides what is kept.
Greedy output is the target's own; sampled output follows the target's distribution.

Greedy output is batch-invariant: rows are padded to what the weights' kernels need for every row to be
computed alike, and attention is per row (see ``decode.py`` and ``weights.py``), so a request gives the
same tokens and log-probabilities, bit for bit, alone or among others, with or without a draft.

An engine runs in a background thread (``threaded=True``, the server and ``groundup chat``), or is
driven by its caller's thread (``threaded=False``: ``groundup generate``, evaluation, rollouts), through
:meth:`Engine.stream` and :meth:`Engine.generate`. Results go back through a callback per request;
:meth:`Request.async_events` wraps it for asyncio. A failure while handling one request ends that request
with an error; a failure of a whole step ends the requests in it; the engine itself keeps running.

On the CPU the engine's thread should be the only one running OpenMP work: an idle OpenMP pool left by
the thread that loaded the model makes the runtime count more threads than cores, and its workers then
stop spinning between parallel regions, which slows every decode step. A threaded engine releases the
creating thread's pool when it starts (:func:`release_openmp_pool`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import itertools
import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from groundup.infer.decode import Decoder
from groundup.infer.sampling import SamplingParams, draw, draw_rows, make_generator, process_logits
from groundup.infer.score import prompt_logprobs
from groundup.infer.speculative import accept_greedy, accept_sampled
from groundup.infer.structured import StructuredOutput, apply_grammars, make_matcher
from groundup.infer.text import TextStream

log = logging.getLogger(__name__)


def release_openmp_pool() -> bool:
    """Free the calling thread's idle OpenMP worker threads (OpenMP 5.0 ``omp_pause_resource_all``).

    A soft pause: libgomp (PyTorch's runtime on Linux) frees the calling thread's pool for either kind;
    LLVM's runtime only puts idle workers to sleep. Returns False where the runtime lacks the call or
    refuses it (inside a parallel region); the pool comes back if this thread runs parallel work again."""
    pause = _omp_pause()
    return pause is not None and pause(1) == 0  # omp_pause_soft


@functools.cache
def _omp_pause():
    try:
        pause = ctypes.CDLL(None).omp_pause_resource_all
    except (OSError, AttributeError):
        return None
    pause.argtypes, pause.restype = [ctypes.c_int], ctypes.c_int
    return pause


@dataclass
class TokenLogprob:
    """One token with its log-probability under the model (before sampling filters) and the top alternatives."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Event:
    """What the engine sends a request: new text of one choice, and at the end its finish reason.

    ``finish_reason`` is None while the choice goes on; then 'stop' (EOS, a stop token or a stop string),
    'length' (max tokens or the context), 'cancelled' or 'error' (``error`` says why).
    """

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    error: str | None = None
    stop_reason: str | int | None = None

    def absorb(self, event: Event) -> bool:
        """Append a later event of the same choice to this one; True when that event ends the choice."""
        self.text += event.text
        self.token_ids += event.token_ids
        self.logprobs += event.logprobs
        if event.finish_reason is None:
            return False
        self.finish_reason, self.error, self.stop_reason = event.finish_reason, event.error, event.stop_reason
        return True


@dataclass(kw_only=True)
class Request:
    """A generation request: prompt token ids, sampling parameters and how to report back."""

    prompt_ids: list[int]
    params: SamplingParams
    n: int = 1
    """Independent choices (each a sequence of its own; choice i uses seed + i when a seed is given)."""
    logprobs: int | None = None
    """Return each generated token's log-probability and this many top alternatives (0: just the token's)."""
    prompt_logprobs: int | None = None
    """Also score the prompt: each prompt token's log-probability (and top alternatives) given its prefix."""
    score_only: bool = False
    """Prefill and score the prompt (``prompt_logprobs``) and sample nothing: every choice ends at once with
    finish reason 'length' and no tokens (``params.max_new_tokens`` is not used)."""
    truncate_prompt: bool = False
    """A prompt longer than the context keeps its newest tokens (with a warning) instead of being refused."""
    grammar: StructuredOutput | None = None
    """A grammar constraining every choice (structured output, from ``GrammarFactory``), or None."""
    on_event: Callable[[Event], None] | None = None
    """Called on the engine thread with each event; must be quick and must not raise."""
    request_id: int = -1
    prompt_token_logprobs: list[TokenLogprob | None] | None = None
    """Filled at prefill when ``prompt_logprobs`` is set (None for the first token, which has no prefix)."""
    arrival: float = field(default_factory=time.perf_counter)
    first_token_time: float | None = None

    def async_events(self, loop: asyncio.AbstractEventLoop) -> asyncio.Queue:
        """Route this request's events into an asyncio queue of ``loop`` (set before submitting)."""
        events: asyncio.Queue = asyncio.Queue()

        def put(event: Event) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening any more
                loop.call_soon_threadsafe(events.put_nowait, event)

        self.on_event = put
        return events


@dataclass
class _Sequence:
    request: Request
    index: int
    params: SamplingParams
    generator: torch.Generator
    stream: TextStream | None
    stop_ids: frozenset[int]
    tokens: list[int] = field(default_factory=list)
    """The tokens of the slot in position order; ``tokens[position]`` (the newest) is not in the cache yet."""
    slot: int = -1
    position: int = 0
    """Tokens the target's cache holds for this sequence."""
    draft_position: int = 0
    """Tokens the draft's cache holds."""
    output_ids: list[int] = field(default_factory=list)
    matcher: Any = None
    finished: bool = False
    prompt_logits: torch.Tensor | None = None
    """The logits after the prompt (V,), while the slot still holds the prompt: later choices of the same
    request copy the slot instead of prefilling again."""

    @property
    def plain_greedy(self) -> bool:
        """Greedy with nothing that depends on the row: its token is the argmax of its logits."""
        p = self.params
        return p.greedy and not p.logit_bias and not p.uses_history and self.matcher is None

    @property
    def plain_sample(self) -> bool:
        """Sampled at a temperature with nothing else that depends on the row (no filter, bias, penalty or
        grammar): such rows are drawn together (:func:`~groundup.infer.sampling.draw_rows`)."""
        p = self.params
        return (not p.greedy and not p.logit_bias and not p.uses_history and self.matcher is None
                and p.top_k is None and p.top_p >= 1.0 and p.min_p <= 0.0)


@dataclass
class EngineStats:
    """Counters for /metrics (read without a lock: each is one int or float written by the engine thread)."""

    requests_total: int = 0
    """Requests accepted."""
    requests_finished: int = 0
    """Requests that ended normally (stop or length)."""
    requests_cancelled: int = 0
    """Requests cancelled (a client went away)."""
    requests_failed: int = 0
    """Sequences that ended with an error."""
    prompt_tokens_total: int = 0
    """Prompt tokens prefilled (or scored)."""
    generation_tokens_total: int = 0
    """Tokens generated."""
    decode_steps: int = 0
    """Batched decode steps (one token, or one speculative round, for every running sequence)."""
    running: int = 0
    """Sequences holding a KV-cache slot after the last step."""
    waiting: int = 0
    """Sequences waiting for a slot after the last step."""
    draft_tokens_proposed: int = 0
    """Tokens the draft model guessed."""
    draft_tokens_accepted: int = 0
    """Guesses the model kept."""
    ttft_seconds: deque = field(default_factory=lambda: deque(maxlen=4096))
    """Time to first token of the last 4096 requests."""
    busy_seconds: float = 0.0
    """Time spent in steps."""
    started: float = field(default_factory=time.time)
    """When the engine started (a Unix time)."""

    @property
    def draft_acceptance_rate(self) -> float | None:
        """Share of the draft's guesses the target kept (None without a draft or before any guess)."""
        return self.draft_tokens_accepted / self.draft_tokens_proposed if self.draft_tokens_proposed else None


def check_request(request: Request, *, vocab_size: int, max_len: int, block_size: int, max_seqs: int,
                  has_tokenizer: bool) -> None:
    """Raise ValueError naming what a request asks that this model and engine cannot do (the one request
    validation: the CLI, the engine and the server all get it through :meth:`Engine.submit`)."""
    ids, params = request.prompt_ids, request.params
    if not ids:
        raise ValueError("the prompt is empty: the model needs at least one token of context "
                         "(start a new document with the EOS token)")
    if any(not isinstance(i, int) or not 0 <= i < vocab_size for i in ids):
        raise ValueError(f"the prompt holds token ids outside the vocabulary of {vocab_size}")
    if len(ids) > max_len and (not request.truncate_prompt or request.score_only
                               or request.prompt_logprobs is not None):
        raise ValueError(f"the prompt has {len(ids)} tokens, more than the context of {max_len} (prompt and "
                         f"completion together; the model's block_size {block_size})")
    bad = [i for i in [*params.logit_bias, *params.stop_token_ids] if i >= vocab_size]
    if bad:
        raise ValueError(f"logit_bias or stop_token_ids name token ids outside the vocabulary of {vocab_size}: "
                         f"{bad[:5]}")
    if params.stop and not has_tokenizer:
        raise ValueError("stop strings need a tokenizer (give the engine one, or use stop_token_ids)")
    if request.n < 1 or request.n > max_seqs:
        raise ValueError(f"n must be in 1..{max_seqs}, got {request.n}")
    if request.score_only and request.prompt_logprobs is None:
        raise ValueError("a score_only request needs prompt_logprobs (what it returns)")


class Engine:
    """Continuous-batching generation over ``model``. Thread-safe ``submit``/``cancel``.

    ``tokenizer`` gives the EOS token, stop strings and text; without one (token ids in, token ids out),
    ``eos_id`` names the end-of-sequence token. ``min_rows``: pad decode batches to a multiple of this
    many rows (1: no padding, not batch-invariant); None probes the kernels (see ``weights.py``).
    ``draft``: a smaller model on the same tokenizer for speculative decoding, ``draft_tokens`` guesses a round.
    ``compile``: run decode steps through ``torch.compile`` (see ``decode.py``).
    """

    def __init__(self, model: torch.nn.Module, tokenizer=None, *, max_seqs: int = 16, max_len: int | None = None,
                 min_rows: int | None = None, max_prefill_tokens: int = 2048, vocab_limit: int | None = None,
                 layout: str = "auto", draft: torch.nn.Module | None = None, draft_tokens: int = 4,
                 eos_id: int | None = None, threaded: bool = True, compile: bool = False) -> None:
        if max_seqs < 1:
            raise ValueError(f"max_seqs must be >= 1, got {max_seqs}")
        if draft_tokens < 1:
            raise ValueError(f"draft_tokens must be >= 1, got {draft_tokens}")
        self.model = model
        self.tokenizer = tokenizer
        self.config = model.config
        self.max_seqs = max_seqs
        self.max_prefill_tokens = max_prefill_tokens
        vocab = self.config.vocab_size
        if vocab_limit is not None and not 1 <= vocab_limit <= vocab:
            raise ValueError(f"vocab_limit must be in 1..{vocab} (the model's vocabulary), got {vocab_limit}")
        self.vocab_limit = min(vocab_limit or (tokenizer.vocab_size if tokenizer is not None else vocab), vocab)
        padding = None if min_rows is None else "none"
        self.decoder = Decoder(model, num_slots=max_seqs, max_len=max_len, layout=layout, padding=padding,
                               compile=compile)
        if min_rows is not None and min_rows > 1:
            self.decoder.pad_rows = lambda n: -(-n // min_rows) * min_rows
        self.draft: Decoder | None = None
        if draft is not None:
            if draft.config.vocab_size < self.vocab_limit:
                raise ValueError(f"the draft model's vocabulary ({draft.config.vocab_size}) does not cover the "
                                 f"tokenizer's ({self.vocab_limit})")
            self.draft = Decoder(draft, num_slots=max_seqs, max_len=self.decoder.max_len, layout=layout,
                                 padding=padding, compile=compile)
        self.draft_tokens = draft_tokens
        self.max_len = min(self.decoder.max_len, self.draft.max_len) if self.draft else self.decoder.max_len
        self.device = self.decoder.device
        self.eos_id = tokenizer.eos_id if tokenizer is not None else eos_id
        self.stats = EngineStats()
        self._inbox: queue.Queue = queue.Queue()
        self._ids = itertools.count(1)
        self._waiting: deque[_Sequence] = deque()
        self._slots: list[_Sequence | None] = [None] * max_seqs
        self._token_text: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if threaded:
            if self.device.type == "cpu":
                release_openmp_pool()  # see the module docstring
            self._thread = threading.Thread(target=self._loop, name="groundup-engine", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ public API (any thread)

    def submit(self, request: Request) -> int:
        """Queue ``request``; returns its id (for :meth:`cancel`). Raises ValueError for a request that cannot run."""
        self.check(request)
        request.request_id = next(self._ids)
        self._inbox.put(("submit", request))
        return request.request_id

    def cancel(self, request_id: int) -> None:
        """Stop a request (a client went away): its sequences leave at the next step, freeing their slots."""
        self._inbox.put(("cancel", request_id))

    def check(self, request: Request) -> None:
        """Raise ValueError when the request does not fit this model (the server answers 400)."""
        check_request(request, vocab_size=self.config.vocab_size, max_len=self.max_len,
                      block_size=self.config.block_size, max_seqs=self.max_seqs,
                      has_tokenizer=self.tokenizer is not None)

    def shutdown(self) -> None:
        self._stop.set()
        self._inbox.put(("wake", None))
        if self._thread is not None:
            self._thread.join(timeout=10)

    @property
    def alive(self) -> bool:
        return self._thread is None or self._thread.is_alive()

    def stream(self, request: Request) -> Iterator[Event]:
        """Submit ``request`` and yield its events as they come (every choice's, interleaved); on a threaded
        engine the caller waits for them, otherwise its own thread runs the engine's steps. Leaving the
        iteration early cancels the request."""
        events: deque[Event] | queue.Queue = deque() if self._thread is None else queue.Queue()
        request.on_event = events.append if isinstance(events, deque) else events.put
        self.submit(request)
        remaining = request.n
        try:
            if self._thread is not None and self.device.type == "cpu":
                release_openmp_pool()  # this thread waits; its idle OpenMP workers would slow the engine's
            while remaining:
                if isinstance(events, deque):
                    while not events:
                        self.step()
                    event = events.popleft()
                else:
                    event = events.get()
                remaining -= event.finish_reason is not None
                yield event
        finally:
            if remaining:
                self.cancel(request.request_id)
                if self._thread is None:
                    self._drain_inbox(block=False)  # free the slots now

    def generate(self, prompt_ids: Sequence[int], params: SamplingParams, **kwargs) -> list[Event]:
        """Run one request to its end and return one merged event per choice."""
        request = Request(prompt_ids=list(prompt_ids), params=params, **kwargs)
        merged = {i: Event(index=i) for i in range(request.n)}
        for event in self.stream(request):
            merged[event.index].absorb(event)
        return [merged[i] for i in range(request.n)]

    def token_text(self, token_id: int) -> str:
        text = self._token_text.get(token_id)
        if text is None:
            text = self.tokenizer.decode_bytes([token_id]).decode("utf-8", errors="replace")
            self._token_text[token_id] = text
        return text

    # ------------------------------------------------------------------ one step

    def step(self) -> None:
        """Take new requests, prefill what fits, decode one token (or one speculative round) for every sequence."""
        self._drain_inbox(block=False)
        started = time.perf_counter()
        try:
            self._admit()
            self._decode_step()
        except Exception as e:  # a bug in a batched step: end what was in it, keep serving
            log.exception("engine step failed")
            for seq in list(self._waiting) + [s for s in self._slots if s is not None]:
                self._finish(seq, "error", error=f"engine error: {e}")
            self._waiting.clear()
        self.stats.busy_seconds += time.perf_counter() - started
        self.stats.running = sum(s is not None for s in self._slots)
        self.stats.waiting = len(self._waiting)

    def _loop(self) -> None:
        while not self._stop.is_set():
            idle = not self._waiting and not any(self._slots)
            if idle:
                self._drain_inbox(block=True)
            if not self._stop.is_set():
                self.step()

    def _drain_inbox(self, *, block: bool) -> None:
        while True:
            try:
                kind, item = self._inbox.get(block=block, timeout=0.5 if block else None)
            except queue.Empty:
                return
            block = False
            if kind == "submit":
                self._accept(item)
            elif kind == "cancel":
                self._cancel(item)

    def _accept(self, request: Request) -> None:
        self.stats.requests_total += 1
        for i in range(request.n):
            params = request.params
            if params.seed is not None and i > 0:
                params = replace(params, seed=params.seed + i)
            stop_ids = set(params.stop_token_ids)
            if params.stop_at_eos and self.eos_id is not None:
                stop_ids.add(self.eos_id)
            stream = TextStream(self.tokenizer, params.stop) if self.tokenizer is not None else None
            seq = _Sequence(request=request, index=i, params=params, generator=make_generator(params.seed, self.device),
                            stream=stream, stop_ids=frozenset(stop_ids))
            if request.grammar is not None:
                try:
                    seq.matcher = make_matcher(request.grammar.compiled, stop_ids)
                except Exception as e:
                    self._finish(seq, "error", error=f"grammar: {e}")
                    continue
            self._waiting.append(seq)

    def _cancel(self, request_id: int) -> None:
        hit = False
        for seq in [s for s in self._waiting if s.request.request_id == request_id]:
            self._waiting.remove(seq)
            self._finish(seq, "cancelled")
            hit = True
        for seq in self._slots:
            if seq is not None and seq.request.request_id == request_id:
                self._finish(seq, "cancelled")
                hit = True
        if hit:
            self.stats.requests_cancelled += 1

    # ------------------------------------------------------------------ prefill

    def _admit(self) -> None:
        """Prefill waiting sequences into free slots (lowest first, keeping the decode range compact)."""
        budget = self.max_prefill_tokens
        while self._waiting and None in self._slots:
            seq = self._waiting[0]
            cost = len(seq.request.prompt_ids)
            if cost > budget and budget < self.max_prefill_tokens:
                break  # this step's prefill budget is spent; running sequences decode first
            self._waiting.popleft()
            budget -= cost
            seq.slot = self._slots.index(None)
            self._slots[seq.slot] = seq
            try:
                self._prefill(seq)
            except Exception as e:
                log.exception("prefill failed")
                self._finish(seq, "error", error=f"prefill: {e}")

    def _prefill(self, seq: _Sequence) -> None:
        request = seq.request
        sibling = next((s for s in self._slots if s is not None and s is not seq and s.request is request
                        and s.prompt_logits is not None), None)
        if sibling is not None and all(d.cache.can_copy(len(sibling.tokens) - len(sibling.output_ids),
                                                        sibling.position)
                                       for d in (self.decoder, self.draft) if d is not None):
            self._copy_prompt(sibling, seq)  # another choice of this request holds the prompt: copy its keys
            return
        ids = list(request.prompt_ids)
        if len(ids) > self.max_len:  # only with truncate_prompt: keep the newest tokens
            log.warning("prompt of %d tokens is longer than the context (%d): keeping its last %d",
                        len(ids), self.max_len, self.max_len)
            ids = ids[-self.max_len:]
        if request.prompt_logprobs is not None and seq.index == 0:
            request.prompt_token_logprobs = self._prompt_logprobs(ids, request.prompt_logprobs)
        if seq.index == 0:
            self.stats.prompt_tokens_total += len(ids)
        if request.score_only:  # the prompt's logprobs are the whole answer
            self._finish(seq, "length")
            return
        logits = self.decoder.prefill(seq.slot, ids)  # (V,)
        seq.tokens, seq.position = ids, len(ids)
        if self.draft is not None:
            self.draft.prefill(seq.slot, ids)
            seq.draft_position = len(ids)
        if request.n > 1:
            seq.prompt_logits = logits
        self._sample_and_emit([seq], logits[None])

    def _copy_prompt(self, source: _Sequence, seq: _Sequence) -> None:
        n = len(source.tokens) - len(source.output_ids)  # the prompt (as prefilled) precedes the output
        for decoder in (self.decoder, self.draft):
            if decoder is not None:
                decoder.cache.copy(source.slot, seq.slot, n)
        seq.tokens, seq.position, seq.draft_position = source.tokens[:n], n, n if self.draft is not None else 0
        seq.prompt_logits = source.prompt_logits
        self._sample_and_emit([seq], source.prompt_logits[None])

    def _prompt_logprobs(self, ids: list[int], k: int) -> list[TokenLogprob | None]:
        """Each prompt token's log-probability given its prefix, by the one scorer (``groundup evaluate``'s
        numbers, bit for bit), over the model's whole vocabulary; None for the first token."""
        if len(ids) < 2:
            return [None] * len(ids)
        logprobs = prompt_logprobs(self.model, ids)  # (T-1, V)
        chosen = logprobs.gather(1, torch.tensor(ids[1:], device=logprobs.device)[:, None])[:, 0].tolist()
        top = logprobs[:, :self.vocab_limit].topk(k, dim=-1) if k else None  # tokens the tokenizer has
        out: list[TokenLogprob | None] = [None]
        for t, token in enumerate(ids[1:]):
            alts = list(zip(top.indices[t].tolist(), top.values[t].tolist(), strict=True)) if top is not None else []
            out.append(TokenLogprob(token, chosen[t], alts))
        return out

    def _slide(self, seq: _Sequence) -> None:
        """The context is full and the request slides: keep the newer half and recompute it from position 0."""
        keep = max(self.max_len // 2, 1)
        seq.tokens, seq.prompt_logits = seq.tokens[-keep:], None
        logits = self.decoder.prefill(seq.slot, seq.tokens)
        seq.position, seq.draft_position = keep, 0
        self._sample_and_emit([seq], logits[None])

    # ------------------------------------------------------------------ decode

    def _decode_step(self) -> None:
        running = [s for s in self._slots if s is not None and not s.finished]
        if not running:
            return
        for seq in [s for s in running if s.position >= self.max_len]:
            self._slide(seq)  # only sliding requests get here: the others ended at 'length'
        running = [s for s in running if not s.finished and s.position < self.max_len]
        if not running:
            return
        rounds = self._propose([s for s in running if self._can_speculate(s)])
        slots, positions, tokens = [], [], []
        for seq in running:
            new = [seq.tokens[seq.position]] + rounds.get(seq.slot, ([], None))[0]
            slots += [seq.slot] * len(new)
            positions += range(seq.position, seq.position + len(new))
            tokens += new
        if not rounds:  # plain decode: rows in slot order, free slots as dummy rows (see decode.py)
            slots, positions, tokens = self._with_free_slots(slots, positions, tokens)
        logits = self.decoder.rows(slots, positions, tokens)
        self.stats.decode_steps += 1
        at = {}
        for i, slot in enumerate(slots):
            at.setdefault(slot, i)
        plain = [s for s in running if s.slot not in rounds]
        for seq in plain:
            seq.position += 1
        self._sample_and_emit(plain, logits[[at[s.slot] for s in plain]])
        for seq in running:
            if seq.slot in rounds:
                guesses, draft_probs = rounds[seq.slot]
                self._finish_round(seq, guesses, draft_probs, logits[at[seq.slot]: at[seq.slot] + len(guesses) + 1])

    def _with_free_slots(self, slots: list[int], positions: list[int], tokens: list[int]):
        """Rows 0..R-1 for the running slots, with R what batch invariance asks for the highest slot; a free
        slot's row is a dummy (token 0 at position 0, written into its own free slot)."""
        rows = self.decoder.pad_rows(max(slots) + 1)
        if rows > self.max_seqs:
            return slots, positions, tokens  # the decoder pads with its scratch slot
        by_slot = {s: (p, t) for s, p, t in zip(slots, positions, tokens, strict=True)}
        full = [by_slot.get(s, (0, 0)) for s in range(rows)]
        return list(range(rows)), [p for p, _ in full], [t for _, t in full]

    def _mask_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        if self.vocab_limit < logits.shape[-1]:
            logits = logits.clone()
            logits[..., self.vocab_limit:] = float("-inf")  # padding rows of the model's vocabulary
        return logits

    def _history(self, seq: _Sequence, extra: Sequence[int] = ()) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if not seq.params.uses_history:
            return None, None
        prompt = torch.tensor([seq.request.prompt_ids], dtype=torch.long)
        return prompt, torch.tensor([seq.output_ids + list(extra)], dtype=torch.long)

    def _process(self, seq: _Sequence, logits: torch.Tensor, extra: Sequence[int] = ()) -> torch.Tensor:
        """The sequence's sampling processors on one row of logits (1, V), its output followed by ``extra``."""
        prompt_t, output_t = self._history(seq, extra)
        return process_logits(logits, seq.params, prompt_ids=prompt_t, output_ids=output_t)

    def _sample_and_emit(self, seqs: list[_Sequence], logits: torch.Tensor) -> None:
        """Pick each sequence's next token from its row of ``logits`` (B, V) and send it on."""
        if not seqs:
            return
        logits = logits.float()
        # Log-probabilities under the model's whole vocabulary (as the scorer reports them); only sampling
        # leaves out the rows above the tokenizer's vocabulary.
        raw_logprobs = logits.log_softmax(-1) if any(s.request.logprobs is not None for s in seqs) else None
        logits = self._mask_vocab(logits)
        constrained = [b for b, s in enumerate(seqs) if s.matcher is not None]
        if constrained:
            apply_grammars(logits, [seqs[b].matcher for b in constrained],
                           [seqs[b].request.grammar for b in constrained], constrained)
        fast = [b for b, s in enumerate(seqs) if s.plain_greedy]
        argmax = dict(zip(fast, logits[fast].argmax(-1).tolist(), strict=True)) if fast else {}
        sampled = [b for b, s in enumerate(seqs) if s.plain_sample]
        if len(sampled) > 1:  # one softmax for all; a row without finite probabilities goes alone (and fails)
            drawn = draw_rows(logits[sampled], [seqs[b].params.temperature for b in sampled],
                              [seqs[b].generator for b in sampled])
            argmax.update({b: t for b, t in zip(sampled, drawn, strict=True) if t is not None})
        for b, seq in enumerate(seqs):
            try:
                if b in argmax:
                    token = argmax[b]
                else:
                    processed = self._process(seq, logits[b: b + 1])
                    if seq.matcher is not None and not torch.isfinite(processed).any():
                        # A ban (logit_bias -100 is finite, but -inf from a filter is not) left nothing allowed.
                        raise RuntimeError("no token is allowed by both the grammar and the sampling settings")
                    token = int(draw(processed, seq.params, seq.generator))
                self._advance(seq, token, self._logprob(seq, raw_logprobs, b, token))
            except Exception as e:
                log.exception("sampling failed")
                self._finish(seq, "error", error=f"sampling: {e}")

    def _logprob(self, seq: _Sequence, raw_logprobs: torch.Tensor | None, row: int, token: int) -> TokenLogprob | None:
        k = seq.request.logprobs
        if k is None or raw_logprobs is None:
            return None
        values = raw_logprobs[row]
        top = []
        if k:
            best = values[:self.vocab_limit].topk(k)  # tokens the tokenizer has
            top = list(zip(best.indices.tolist(), best.values.tolist(), strict=True))
        return TokenLogprob(token, float(values[token]), top)

    # ------------------------------------------------------------------ speculative rounds

    def _can_speculate(self, seq: _Sequence) -> bool:
        room = min(seq.params.max_new_tokens - len(seq.output_ids), self.max_len - seq.position)
        return self.draft is not None and seq.matcher is None and room >= 2

    def _propose(self, seqs: list[_Sequence]) -> dict[int, tuple[list[int], torch.Tensor | None]]:
        """The draft's guesses for each sequence (by slot), and for sampled sequences the distributions
        they were drawn from (k, V)."""
        if not seqs:
            return {}
        draft = self.draft
        k_of = {s.slot: min(self.draft_tokens, s.params.max_new_tokens - len(s.output_ids) - 1,
                            self.max_len - s.position - 1) for s in seqs}
        guesses: dict[int, list[int]] = {s.slot: [] for s in seqs}
        dists: dict[int, list[torch.Tensor]] = {s.slot: [] for s in seqs}
        active = list(seqs)
        while active:
            slots, positions, tokens, last_row = [], [], [], []
            for seq in active:
                pending = seq.tokens[seq.draft_position:] + guesses[seq.slot][-1:]
                if len(pending) > self.draft_tokens + 2:  # after a slide: refill the draft's cache at once
                    draft.prefill(seq.slot, pending[:-1], seq.draft_position)
                    seq.draft_position += len(pending) - 1
                    pending = pending[-1:]
                slots += [seq.slot] * len(pending)
                positions += range(seq.draft_position, seq.draft_position + len(pending))
                tokens += pending
                last_row.append(len(tokens) - 1)
                seq.draft_position += len(pending)
            logits = self._mask_vocab(draft.rows(slots, positions, tokens).float())[last_row]
            for seq, row in zip(active, logits, strict=True):
                processed = self._process(seq, row[None], guesses[seq.slot])
                guess = int(draw(processed, seq.params, seq.generator))
                guesses[seq.slot].append(guess)
                if not seq.params.greedy:
                    dists[seq.slot].append(processed.softmax(-1)[0])
            active = [s for s in active if len(guesses[s.slot]) < k_of[s.slot]]
        return {slot: (g, torch.stack(dists[slot]) if dists[slot] else None) for slot, g in guesses.items()}

    def _finish_round(self, seq: _Sequence, guesses: list[int], draft_probs: torch.Tensor | None,
                      logits: torch.Tensor) -> None:
        """Keep what the target accepts of ``guesses`` given its ``logits`` (k + 1, V) and send the tokens on."""
        try:
            logits = logits.float()
            raw_logprobs = logits.log_softmax(-1) if seq.request.logprobs is not None else None
            logits = self._mask_vocab(logits)
            processed = torch.cat([self._process(seq, logits[i: i + 1], guesses[:i]) for i in range(len(guesses) + 1)])
            if seq.params.greedy:
                new = accept_greedy(guesses, processed.argmax(-1).tolist())
            else:
                new = accept_sampled(guesses, draft_probs, processed.softmax(-1), seq.generator)
        except Exception as e:
            log.exception("speculative round failed")
            self._finish(seq, "error", error=f"sampling: {e}")
            return
        self.stats.draft_tokens_proposed += len(guesses)
        self.stats.draft_tokens_accepted += len(new) - 1
        start = seq.position
        # The target's cache now holds the pending token and the accepted guesses; the draft's, what it ran.
        seq.draft_position = min(seq.draft_position, start + len(new))
        for i, token in enumerate(new):
            seq.position = start + i + 1
            self._advance(seq, token, self._logprob(seq, raw_logprobs, i, token))
            if seq.finished:
                return

    # ------------------------------------------------------------------ tokens out

    def _advance(self, seq: _Sequence, token: int, logprob: TokenLogprob | None) -> None:
        request = seq.request
        now = time.perf_counter()
        if request.first_token_time is None:
            request.first_token_time = now
            self.stats.ttft_seconds.append(now - request.arrival)
        self.stats.generation_tokens_total += 1
        seq.output_ids.append(token)
        seq.tokens.append(token)
        if seq.matcher is not None and not seq.matcher.accept_token(token):
            raise RuntimeError(f"the grammar rejected token {token}")
        logprobs = [logprob] if logprob is not None else []
        stream = seq.stream
        if token in seq.stop_ids:
            self._emit(seq, Event(index=seq.index, text=stream.finish() if stream else "", token_ids=[token],
                                  logprobs=logprobs))
            self._finish(seq, "stop", stop_reason=token if token != self.eos_id else None)
            return
        text = stream.push(token) if stream else ""
        if stream is not None and stream.stopped:
            self._emit(seq, Event(index=seq.index, text=text, token_ids=[token], logprobs=logprobs))
            self._finish(seq, "stop", stop_reason=stream.stop_string)
            return
        ended = None
        if seq.matcher is not None and seq.matcher.is_terminated():
            ended = "stop"
        elif len(seq.output_ids) >= seq.params.max_new_tokens or (
                seq.position >= self.max_len and seq.params.context_overflow == "stop"):
            ended = "length"
        if ended is not None:
            text += stream.finish() if stream else ""
        self._emit(seq, Event(index=seq.index, text=text, token_ids=[token], logprobs=logprobs))
        if ended is not None:
            self._finish(seq, ended)

    def _emit(self, seq: _Sequence, event: Event) -> None:
        callback = seq.request.on_event
        if callback is None:
            return
        try:
            callback(event)
        except Exception:
            log.exception("request callback failed")

    def _finish(self, seq: _Sequence, reason: str, *, error: str | None = None,
                stop_reason: str | int | None = None) -> None:
        if seq.finished:
            return
        seq.finished = True
        if 0 <= seq.slot < len(self._slots) and self._slots[seq.slot] is seq:
            self._slots[seq.slot] = None
        if reason == "error":
            self.stats.requests_failed += 1
        elif reason != "cancelled" and seq.index == 0:
            self.stats.requests_finished += 1
        self._emit(seq, Event(index=seq.index, finish_reason=reason, error=error, stop_reason=stop_reason))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; NaN for no values."""
    data = sorted(values)
    if not data:
        return math.nan
    pos = (len(data) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)
