"""The server's settings sections: how the engine runs the model, and what one request may ask for.

Plain dataclasses (no web framework imported), so that `groundup serve --help` and a missing ``serve``
extra are answered before FastAPI is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(kw_only=True)
class EngineSettings:
    """How the engine runs the model: KV-cache slots, context, prefill budget, batch invariance."""

    max_seqs: int = 16
    """Sequences decoded together (KV-cache slots)."""
    max_len: int | None = None
    """Positions per KV-cache slot, prompt and completion together (default: the model's block_size)."""
    max_prefill_tokens: int = 2048
    """Prompt tokens prefilled per engine step before the running sequences decode again (a longer prompt
    still runs, alone in its step)."""
    batch_invariant: bool = True
    """Pad decode batches to the rows the weights' kernels need for every row to be computed alike (two for
    oneDNN-packed CPU weights), so that greedy output and logprobs do not depend on the batch; false runs
    the rows as they are."""
    draft: Path | None = None
    """A smaller model dir on the same tokenizer for speculative decoding: greedy output stays the model's own,
    sampled output follows the model's distribution; the acceptance rate is on /metrics."""
    draft_tokens: int = 4
    """Tokens the draft guesses per round."""


@dataclass(kw_only=True)
class RequestLimits:
    """What one request may ask for; anything beyond is answered with a 4xx."""

    max_request_bytes: int = 1 << 20
    """Largest request body in bytes (413 above)."""
    max_prompt_tokens: int | None = None
    """Longest prompt in tokens (None: the model's context; a prompt and its max_tokens must fit in it)."""
    max_tokens: int = 2048
    """Largest max_tokens a request may ask for (400 above)."""
    default_max_tokens: int = 256
    """max_tokens of a chat request that gives none (completions default to 16, as in OpenAI's API); either
    default shrinks to the room the prompt leaves in the context."""
    max_concurrent_requests: int = 64
    """Requests in progress at once; more are answered 429 at once rather than queued without bound."""
    max_n: int = 8
    """Most choices per request (and most prompts per completions request)."""
    max_logprobs: int = 20
    """Most top alternatives per token (logprobs, top_logprobs, prompt_logprobs)."""
