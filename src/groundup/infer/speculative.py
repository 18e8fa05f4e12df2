"""Speculative decoding (Leviathan et al. 2023; Chen et al. 2023): the acceptance rules.

A small draft model on the same tokenizer guesses ``k`` tokens one at a time; the target model scores
the pending token and every guess in one forward (k + 1 positions, each computed as a decode step
computes it: see ``kv_cache.py``), and keeps a prefix of the guesses plus one token of its own, so a
round yields between 1 and k + 1 tokens for the price of about one target step on a memory-bound machine.
The engine runs the rounds (:class:`~groundup.infer.engine.Engine` with a ``draft``); these functions
decide which tokens a round keeps.

- Greedy: the guesses are kept up to the first one the target's argmax differs from, then the target's
  own choice. The output is the target's greedy output, bit for bit (every verified position gets the
  logits a plain decode step would give it).
- Sampled: guess ``x`` drawn from the draft's distribution ``q`` is kept with probability
  ``min(1, p(x) / q(x))`` under the target's ``p``; at the first rejection a token is drawn from
  ``max(0, p - q)`` renormalised, and after k acceptances one more from ``p``. The tokens are then
  distributed exactly as the target's own samples (both ``p`` and ``q`` are the distributions after the
  request's temperature, penalties and filters).
"""

from __future__ import annotations

import torch


def accept_greedy(guesses: list[int], choices: list[int]) -> list[int]:
    """The tokens a greedy round yields: ``choices[i]`` is the target's argmax after the pending token and
    ``guesses[:i]`` (``len(choices) == len(guesses) + 1``)."""
    n = 0
    while n < len(guesses) and guesses[n] == choices[n]:
        n += 1
    return guesses[:n] + [choices[n]]


def accept_sampled(guesses: list[int], draft_probs: torch.Tensor, target_probs: torch.Tensor,
                   generator: torch.Generator | None) -> list[int]:
    """The tokens a sampled round yields: ``draft_probs`` (k, V) are the distributions each guess was drawn
    from, ``target_probs`` (k + 1, V) the target's after the pending token and each guess."""
    kept: list[int] = []
    for i, guess in enumerate(guesses):
        p, q = float(target_probs[i, guess]), float(draft_probs[i, guess])
        draw = float(torch.rand(1, generator=generator, device=target_probs.device))
        if q > 0 and draw * q < p:  # draw < p / q without dividing
            kept.append(guess)
            continue
        residual = (target_probs[i] - draft_probs[i]).clamp_(min=0)
        if float(residual.sum()) <= 0:  # p <= q everywhere only when p == q: any draw from p is right
            residual = target_probs[i]
        kept.append(int(torch.multinomial(residual, 1, generator=generator)))
        return kept
    kept.append(int(torch.multinomial(target_probs[len(guesses)], 1, generator=generator)))
    return kept


def _tokenizer_spec(tokenizer) -> dict:
    import json

    spec = json.loads(tokenizer.hf.to_str())
    return {key: spec.get(key) for key in ("model", "added_tokens", "pre_tokenizer", "normalizer")}


def load_draft(path, tokenizer, *, device: str | torch.device = "cpu") -> torch.nn.Module:
    """A draft model dir for a target whose tokenizer is ``tokenizer``: refused, naming the dir, when its
    tokenizer differs (its guesses would be token ids of another vocabulary)."""
    from groundup.model.io import load_model_dir

    draft, draft_tokenizer = load_model_dir(path, device=device)
    if _tokenizer_spec(draft_tokenizer) != _tokenizer_spec(tokenizer):
        raise ValueError(f"draft model {path} does not share the target's tokenizer (its tokenizer.json differs): "
                         f"speculative decoding needs the same vocabulary")
    return draft
