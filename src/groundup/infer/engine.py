"""The serving engine: continuous batching of many requests over one model, in a background thread.

A request (a prompt, sampling parameters, ``n`` choices) becomes ``n`` sequences. The engine thread
loops: take new requests and cancellations from a queue; give waiting sequences a free slot of the KV
cache and prefill their prompt (alone, one sequence per forward, so a prompt's result never depends on
its neighbours); run one decode step for every running sequence together, each at its own position
(:func:`groundup.infer.batched.forward_rows`); sample each row with its own parameters, grammar mask,
seed and penalties; send each new token to its request; free the slots of sequences that ended. New
sequences join and finished ones leave between two decode steps (continuous batching, as in Orca and
vLLM).

Greedy output is batch-invariant: decode batches are padded to as many rows as the weights' kernels
need for every row to be computed alike (two for weights packed for oneDNN, a multiple of four for the
transposed fallback) and attention masks the padding (see ``batched.py``), so a request gives the same
tokens and log-probabilities, bit for bit, alone or among others.

On the CPU the engine thread should be the only one running OpenMP work: an idle OpenMP pool left by
the thread that loaded the model makes the runtime count more threads than cores, and its workers then
stop spinning between parallel regions; a decode step took 10.5 ms instead of 7 ms that way. The
engine releases the creating thread's pool when it starts (:func:`release_openmp_pool`).

Results go back through a callback per request, called on the engine thread; :meth:`Request.async_events`
wraps it for asyncio (``loop.call_soon_threadsafe`` into an ``asyncio.Queue``), which is how the HTTP
server streams. A failure while handling one request ends that request with an error; a failure of a
whole batched step ends the requests in it; the thread itself keeps running.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from groundup.infer.batched import SlotKVCache, TransposedWeights, decode_weights, forward_rows
from groundup.infer.generate import TextStream
from groundup.infer.sampling import SamplingParams, make_generator, process_logits

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
    grammar: StructuredOutput | None = None
    """A grammar constraining every choice (structured output, from :class:`GrammarFactory`), or None."""
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
    stream: TextStream
    slot: int = -1
    position: int = 0  # tokens held in the slot's cache
    last_token: int = -1
    output_ids: list[int] = field(default_factory=list)
    matcher: Any = None
    finished: bool = False


@dataclass
class EngineStats:
    """Counters for /metrics (read without a lock: each is one int or float written by the engine thread)."""

    requests_total: int = 0
    requests_finished: int = 0
    requests_cancelled: int = 0
    requests_failed: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    decode_steps: int = 0
    running: int = 0
    waiting: int = 0
    ttft_seconds: deque = field(default_factory=lambda: deque(maxlen=4096))
    busy_seconds: float = 0.0
    started: float = field(default_factory=time.time)


class Engine:
    """Continuous-batching generation over ``model`` in a background thread. Thread-safe ``submit``/``cancel``."""

    def __init__(self, model: torch.nn.Module, tokenizer, *, max_seqs: int = 16, max_len: int | None = None,
                 min_rows: int | None = None, max_prefill_tokens: int = 2048, vocab_limit: int | None = None,
                 cpu_weights: bool | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = model.config
        self.max_seqs = max_seqs
        self.max_prefill_tokens = max_prefill_tokens
        self.vocab_limit = vocab_limit if vocab_limit is not None else min(tokenizer.vocab_size, self.config.vocab_size)
        self.device = model.lm_head.weight.device
        if cpu_weights is None:
            cpu_weights = self.device.type == "cpu"
        # On the CPU, weights packed for oneDNN (or transposed copies where packing is unavailable); on a GPU
        # the model's own layers.
        self.weights = decode_weights(model) if cpu_weights else None
        if min_rows is None:  # batch invariance: as many rows as the weights' kernels need
            self.pad_rows = self.weights.pad_rows if self.weights is not None else TransposedWeights.pad_rows
        else:
            self.pad_rows = lambda n: -(-n // min_rows) * min_rows
        self.cache = SlotKVCache(model, self.pad_rows(max_seqs), max_len)
        self.max_len = self.cache.max_len
        self.eos_id = tokenizer.eos_id
        self.stats = EngineStats()
        self._inbox: queue.Queue = queue.Queue()
        self._ids = itertools.count(1)
        self._waiting: deque[_Sequence] = deque()
        self._slots: list[_Sequence | None] = [None] * max_seqs
        self._token_text: dict[int, str] = {}
        self._stop = threading.Event()
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
        ids = request.prompt_ids
        if not ids:
            raise ValueError("the prompt is empty")
        # A score_only request samples nothing, so its prompt may fill the whole context; a generating
        # request needs a position left for its first token.
        if request.score_only and request.prompt_logprobs is None:
            raise ValueError("a score_only request needs prompt_logprobs (what it returns)")
        if len(ids) > self.max_len or (len(ids) == self.max_len and not request.score_only):
            raise ValueError(f"the prompt has {len(ids)} tokens; this model's context holds {self.max_len} "
                             f"(prompt and completion together)")
        vocab = self.config.vocab_size
        if any(not 0 <= i < vocab for i in ids):
            raise ValueError(f"the prompt holds token ids outside the vocabulary of {vocab}")
        if any(i >= vocab for i in request.params.logit_bias):
            raise ValueError(f"logit_bias names token ids outside the vocabulary of {vocab}")
        if request.n < 1 or request.n > self.max_seqs:
            raise ValueError(f"n must be in 1..{self.max_seqs}, got {request.n}")

    def shutdown(self) -> None:
        self._stop.set()
        self._inbox.put(("wake", None))
        self._thread.join(timeout=10)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def generate(self, prompt_ids: Sequence[int], params: SamplingParams, **kwargs) -> list[Event]:
        """Blocking convenience: run one request and return one merged event per choice (for tests and tools)."""
        done: queue.Queue = queue.Queue()
        request = Request(prompt_ids=list(prompt_ids), params=params, on_event=done.put, **kwargs)
        self.submit(request)
        if self.device.type == "cpu":
            release_openmp_pool()  # this thread waits; its idle OpenMP workers would slow the engine's
        merged = {i: Event(index=i) for i in range(request.n)}
        remaining = request.n
        while remaining:
            event = done.get()
            remaining -= merged[event.index].absorb(event)
        return [merged[i] for i in range(request.n)]

    def token_text(self, token_id: int) -> str:
        text = self._token_text.get(token_id)
        if text is None:
            text = self.tokenizer.decode_bytes([token_id]).decode("utf-8", errors="replace")
            self._token_text[token_id] = text
        return text

    # ------------------------------------------------------------------ the engine thread

    def _loop(self) -> None:
        while not self._stop.is_set():
            idle = not self._waiting and not any(self._slots)
            self._drain_inbox(block=idle)
            if self._stop.is_set():
                break
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
            seq = _Sequence(request=request, index=i, params=params,
                            generator=make_generator(params.seed, self.device),
                            stream=TextStream(self.tokenizer, params.stop))
            if request.grammar is not None:
                try:
                    seq.matcher = _make_matcher(request.grammar.compiled, self._stop_ids(params))
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

    def _stop_ids(self, params: SamplingParams) -> set[int]:
        ids = set(params.stop_token_ids)
        if params.stop_at_eos and self.eos_id is not None:
            ids.add(self.eos_id)
        return ids

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
            slot = self._slots.index(None)
            seq.slot = slot
            self._slots[slot] = seq
            try:
                self._prefill(seq)
            except Exception as e:
                log.exception("prefill failed")
                self._finish(seq, "error", error=f"prefill: {e}")

    def _prefill(self, seq: _Sequence) -> None:
        request = seq.request
        ids = request.prompt_ids
        idx = torch.tensor([ids], dtype=torch.long, device=self.device)
        want_prompt = request.prompt_logprobs is not None and seq.index == 0
        logits = forward_rows(self.model, self.cache, idx, seq.slot, torch.zeros(1, dtype=torch.long),
                              all_positions=want_prompt, weights=self.weights)[0]  # (V,) or (T, V)
        if want_prompt:
            logprobs = self._mask_vocab(logits[:-1]).float().log_softmax(-1)  # (T-1, V)
            chosen = logprobs.gather(1, idx[0, 1:, None])[:, 0].tolist()
            k = request.prompt_logprobs
            top = logprobs.topk(k, dim=-1) if k else None
            out: list[TokenLogprob | None] = [None]
            for t, token in enumerate(ids[1:]):
                alts = list(zip(top.indices[t].tolist(), top.values[t].tolist(), strict=True)) if top is not None else []
                out.append(TokenLogprob(token, chosen[t], alts))
            request.prompt_token_logprobs = out
            logits = logits[-1]
        seq.position = len(ids)
        if seq.index == 0:
            self.stats.prompt_tokens_total += len(ids)
        if request.score_only:  # the prompt's logprobs are the whole answer
            self._finish(seq, "length")
            return
        self._sample_and_emit([seq], logits[None])

    def _decode_step(self) -> None:
        running = [s for s in self._slots if s is not None and s.last_token >= 0]
        if not running:
            return
        # Slots 0..rows-1, free ones as dummy rows, as many as batch invariance needs: see batched.py.
        rows = self.pad_rows(max(s.slot for s in running) + 1)
        idx = torch.zeros(rows, 1, dtype=torch.long)
        starts = torch.zeros(rows, dtype=torch.long)
        for s in running:
            idx[s.slot, 0] = s.last_token
            starts[s.slot] = s.position
        logits = forward_rows(self.model, self.cache, idx.to(self.device), 0, starts.to(self.device),
                              weights=self.weights)
        for s in running:
            s.position += 1
        self.stats.decode_steps += 1
        self._sample_and_emit(running, logits[[s.slot for s in running]])

    def _mask_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        if self.vocab_limit < logits.shape[-1]:
            logits = logits.clone()
            logits[..., self.vocab_limit:] = float("-inf")  # padding rows of the model's vocabulary
        return logits

    def _sample_and_emit(self, seqs: list[_Sequence], logits: torch.Tensor) -> None:
        """Pick each sequence's next token from its row of ``logits`` (B, V) and send it on."""
        logits = self._mask_vocab(logits.float())
        raw_logprobs = None
        if any(s.request.logprobs is not None for s in seqs):
            raw_logprobs = logits.log_softmax(-1)
        constrained = [b for b, s in enumerate(seqs) if s.matcher is not None]
        if constrained:
            self._apply_grammars(seqs, logits, constrained)
        for b, seq in enumerate(seqs):
            try:
                token = self._pick(seq, logits[b : b + 1])
                logprob = None
                if seq.request.logprobs is not None:
                    row = raw_logprobs[b]
                    k = seq.request.logprobs
                    top = []
                    if k:
                        values, indices = row.topk(k)
                        top = list(zip(indices.tolist(), values.tolist(), strict=True))
                    logprob = TokenLogprob(token, float(row[token]), top)
                self._advance(seq, token, logprob)
            except Exception as e:
                log.exception("sampling failed")
                self._finish(seq, "error", error=f"sampling: {e}")

    def _apply_grammars(self, seqs: list[_Sequence], logits: torch.Tensor, rows: list[int]) -> None:
        """Mask, in place, the tokens each constrained row's grammar (and its banned set) forbids: one
        bitmask for the batch, one masking call."""
        import xgrammar

        bitmask = xgrammar.allocate_token_bitmask(logits.shape[0], logits.shape[-1])
        for b in rows:
            seq = seqs[b]
            seq.matcher.fill_next_token_bitmask(bitmask, b)
            allowed = seq.request.grammar.allowed_words(logits.shape[-1])
            if allowed is not None:
                bitmask[b] &= allowed
        xgrammar.apply_token_bitmask_inplace(logits, bitmask, indices=rows)

    def _pick(self, seq: _Sequence, logits: torch.Tensor) -> int:
        """The next token from a row of logits (grammar masks already applied) under the request's sampling."""
        params = seq.params
        prompt_t = output_t = None
        if params.uses_history:
            prompt_t = torch.tensor([seq.request.prompt_ids], dtype=torch.long)
            output_t = torch.tensor([seq.output_ids], dtype=torch.long)
        processed = process_logits(logits, params, prompt_ids=prompt_t, output_ids=output_t)
        if seq.matcher is not None and not torch.isfinite(processed).any():
            # A ban (logit_bias -100 is finite, but -inf from a filter is not) left nothing the grammar allows.
            raise RuntimeError("no token is allowed by both the grammar and the sampling settings")
        if params.greedy:
            return int(processed.argmax(-1))
        probs = processed.softmax(-1)
        return int(torch.multinomial(probs, 1, generator=seq.generator))

    def _advance(self, seq: _Sequence, token: int, logprob: TokenLogprob | None) -> None:
        request = seq.request
        now = time.perf_counter()
        if request.first_token_time is None:
            request.first_token_time = now
            self.stats.ttft_seconds.append(now - request.arrival)
        self.stats.generation_tokens_total += 1
        seq.output_ids.append(token)
        seq.last_token = token
        if seq.matcher is not None and not seq.matcher.accept_token(token):
            raise RuntimeError(f"the grammar rejected token {token}")
        params = seq.params
        logprobs = [logprob] if logprob is not None else []
        if token in self._stop_ids(params):
            self._emit(seq, Event(index=seq.index, text=seq.stream.finish(), token_ids=[token], logprobs=logprobs))
            self._finish(seq, "stop", stop_reason=token if token != self.eos_id else None)
            return
        text = seq.stream.push(token)
        if seq.stream.stopped:
            self._emit(seq, Event(index=seq.index, text=text, token_ids=[token], logprobs=logprobs))
            self._finish(seq, "stop", stop_reason=seq.stream.stop_string)
            return
        if seq.matcher is not None and seq.matcher.is_terminated():
            self._emit(seq, Event(index=seq.index, text=text + seq.stream.finish(), token_ids=[token],
                                  logprobs=logprobs))
            self._finish(seq, "stop")
            return
        if len(seq.output_ids) >= params.max_new_tokens or seq.position >= self.max_len:
            self._emit(seq, Event(index=seq.index, text=text + seq.stream.finish(), token_ids=[token],
                                  logprobs=logprobs))
            self._finish(seq, "length")
            return
        self._emit(seq, Event(index=seq.index, text=text, token_ids=[token], logprobs=logprobs))

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


# ---------------------------------------------------------------------------- structured output


@dataclass
class StructuredOutput:
    """A compiled xgrammar grammar, and tokens banned on top of it (a bool mask over the vocabulary)."""

    compiled: Any
    banned: torch.Tensor | None = None
    _allowed: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def allowed_words(self, vocab_size: int) -> torch.Tensor | None:
        """``~banned`` as xgrammar's bitmask words (int32, bit ``i % 32`` of word ``i // 32``), or None."""
        if self.banned is None:
            return None
        if vocab_size not in self._allowed:
            words = -(-vocab_size // 32)
            allowed = torch.ones(words * 32, dtype=torch.int64)
            n = min(vocab_size, self.banned.numel())
            allowed[:n] = (~self.banned[:n]).long()
            packed = (allowed.view(words, 32) << torch.arange(32)).sum(-1)
            self._allowed[vocab_size] = torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)
        return self._allowed[vocab_size]


def _make_matcher(compiled, stop_ids: set[int]):
    import xgrammar

    return xgrammar.GrammarMatcher(compiled, override_stop_tokens=sorted(stop_ids) or None)


class GrammarFactory:
    """Compiles response formats into xgrammar grammars for one tokenizer (compilations are cached).

    The vocabulary is given to xgrammar as the raw bytes of each token (groundup's tokenizers are
    byte-level BPE). Special tokens are given as empty strings, which xgrammar never allows inside
    structured text; the end-of-text token is the grammar's stop token, allowed only once the text is
    complete. JSON formats also ban tokens with raw control characters (see ``__init__``).
    """

    def __init__(self, tokenizer, model_vocab_size: int) -> None:
        import xgrammar

        special = set(tokenizer.special_tokens.values())
        vocab = [b"" if i in special else tokenizer.decode_bytes([i]) for i in range(tokenizer.vocab_size)]
        stop = [tokenizer.eos_id] if tokenizer.eos_id is not None else None
        info = xgrammar.TokenizerInfo(vocab, xgrammar.VocabType.RAW, vocab_size=model_vocab_size,
                                      stop_token_ids=stop)
        self.compiler = xgrammar.GrammarCompiler(info, max_threads=2)
        # xgrammar's JSON strings admit raw control characters, which JSON (RFC 8259) does not; the JSON
        # formats ban every token holding a byte below 0x20 (whitespace between values is spaces then).
        control = torch.zeros(model_vocab_size, dtype=torch.bool)
        for i, data in enumerate(vocab):
            if any(b < 0x20 for b in data):
                control[i] = True
        self.control_tokens = control

    def json_schema(self, schema: dict | str) -> StructuredOutput:
        import json

        # Compact JSON (no free whitespace between tokens), as OpenAI's structured outputs write it: a
        # weak model cannot then spend its whole budget on whitespace.
        text = schema if isinstance(schema, str) else json.dumps(schema)
        return StructuredOutput(self.compiler.compile_json_schema(text, any_whitespace=False), self.control_tokens)

    def json_object(self) -> StructuredOutput:
        """Any JSON object (OpenAI's ``json_object`` mode; xgrammar's built-in JSON grammar admits any value)."""
        return self.json_schema({"type": "object"})

    def regex(self, pattern: str) -> StructuredOutput:
        return StructuredOutput(self.compiler.compile_regex(pattern))

    def grammar(self, ebnf: str) -> StructuredOutput:
        return StructuredOutput(self.compiler.compile_grammar(ebnf))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; NaN for no values."""
    data = sorted(values)
    if not data:
        return math.nan
    pos = (len(data) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)
