"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023), greedy: a small draft model proposes,
the target model checks every proposal in one forward.

Each round the draft model (sharing the target's tokenizer) guesses ``k`` tokens one at a time, which
is cheap; the target then runs those ``k`` tokens in a single forward, which costs about what one
token does on a memory-bound machine, and gets its own greedy choice after each. The guesses are kept
up to the first one the target would not have made, and the target's own token is added after them,
so every round yields between 1 and ``k + 1`` tokens and the output is the target's greedy output.
Rejected guesses need no cache rollback: positions past the accepted ones are masked and overwritten.

Identity with the target alone holds as long as no two candidate logits tie within float rounding:
the target scores ``k + 1`` positions in one matrix product instead of one at a time, which can change
the last bit of a logit (see ``batched.py``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from groundup.infer.batched import SlotKVCache, forward_rows


@dataclass
class SpeculativeResult:
    token_ids: list[int]
    rounds: int
    proposed: int
    accepted: int
    seconds: float

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0


@torch.inference_mode()
def speculative_generate(target: torch.nn.Module, draft: torch.nn.Module, prompt_ids: Sequence[int], *,
                         max_new_tokens: int, k: int = 4, eos_id: int | None = None,
                         vocab_limit: int | None = None) -> SpeculativeResult:
    """Greedy continuation of ``prompt_ids`` by ``target``, sped up by ``draft``'s guesses (``k`` per round)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if draft.config.vocab_size < (vocab_limit or 0) or not prompt_ids:
        raise ValueError("the draft model must cover the tokenizer's vocabulary, and the prompt must not be empty")
    started = time.perf_counter()
    device = target.lm_head.weight.device
    limit = vocab_limit or min(target.config.vocab_size, draft.config.vocab_size)
    t_cache, d_cache = SlotKVCache(target, 1), SlotKVCache(draft, 1)
    max_len = min(t_cache.max_len, d_cache.max_len)
    tokens = [int(i) for i in prompt_ids]
    n_prompt = len(tokens)
    if n_prompt >= max_len:
        raise ValueError(f"prompt of {n_prompt} tokens leaves no room in a context of {max_len}")

    def run(model, cache, ids: list[int], start: int, all_positions: bool = False) -> torch.Tensor:
        idx = torch.tensor([ids], dtype=torch.long, device=device)
        logits = forward_rows(model, cache, idx, 0, torch.tensor([start], device=device), all_positions=all_positions)
        return logits[0, ..., :limit]

    t_pos = d_pos = 0  # positions each cache holds; the tokens after them are still to be fed
    rounds = proposed = accepted = 0
    while len(tokens) - n_prompt < max_new_tokens:
        room = min(max_len - len(tokens), max_new_tokens - (len(tokens) - n_prompt))
        kk = min(k, room - 1) if room > 1 else 0
        guesses: list[int] = []
        if kk > 0:  # the draft guesses kk tokens
            logits = run(draft, d_cache, tokens[d_pos:], d_pos)
            d_pos = len(tokens)
            guesses.append(int(logits.argmax()))
            while len(guesses) < kk:
                logits = run(draft, d_cache, [guesses[-1]], d_pos)
                d_pos += 1
                guesses.append(int(logits.argmax()))
        # the target scores the pending tokens and every guess in one forward
        base = len(tokens)
        logits = run(target, t_cache, tokens[t_pos:] + guesses, t_pos, all_positions=True)  # (T, V)
        choices = logits[base - 1 - t_pos :].argmax(-1).tolist()  # target's token after each prefix
        n_ok = 0
        while n_ok < len(guesses) and guesses[n_ok] == choices[n_ok]:
            n_ok += 1
        new = guesses[:n_ok] + [choices[n_ok]]
        rounds += 1
        proposed += len(guesses)
        accepted += n_ok
        t_pos = base + n_ok
        d_pos = min(d_pos, base + n_ok)
        for token in new:
            tokens.append(token)
            if token == eos_id or len(tokens) - n_prompt >= max_new_tokens:
                return SpeculativeResult(tokens[n_prompt:], rounds, proposed, accepted, time.perf_counter() - started)
        if len(tokens) >= max_len:
            break
    return SpeculativeResult(tokens[n_prompt:], rounds, proposed, accepted, time.perf_counter() - started)
