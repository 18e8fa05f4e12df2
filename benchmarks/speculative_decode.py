"""Speculative decoding: a small draft model guessing for a larger target, against the target alone.

Both models share a tokenizer (for example the main job's `tiny` model as the draft and a model 4x as
wide trained on the same tokens as the target). For each prompt, batch 1, the target decodes ``--tokens``
tokens alone and with the draft (``--draft-tokens`` guesses a round), greedy and sampled (temperature 0.8,
the same seeds). The table gives tokens/s (median over prompts and rounds), the speed-up, the draft's
acceptance rate (the share of its guesses the target kept), and for greedy decoding whether the tokens
are the target's own (they must be).

    python benchmarks/speculative_decode.py --target runs/wide/model --draft runs/tiny/model [--tokens 128]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from groundup.infer.generate import generate
from groundup.infer.sampling import SamplingParams
from groundup.infer.speculative import load_draft
from groundup.model.io import load_model_dir

PROMPTS = ["def ", "import os\n", "class ", '"""', "    def __init__(self", "# Copyright", "for i in range(",
           "if __name__ == "]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", type=Path, required=True)
    ap.add_argument("--draft", type=Path, required=True)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--draft-tokens", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    target, tokenizer = load_model_dir(args.target)
    draft = load_draft(args.draft, tokenizer)
    n_target = sum(p.numel() for p in target.parameters())
    n_draft = sum(p.numel() for p in draft.parameters())
    results = {}
    for mode, base in (("greedy", SamplingParams(temperature=0, max_new_tokens=args.tokens, stop_at_eos=False)),
                       ("sampled", SamplingParams(temperature=0.8, max_new_tokens=args.tokens, stop_at_eos=False))):
        alone, spec, acceptance, same = [], [], [], []
        for r in range(args.rounds + 1):
            for i, prompt in enumerate(PROMPTS):
                params = SamplingParams(**{**base.__dict__, "seed": 100 + i})
                a = generate(target, tokenizer, prompt, params)
                s = generate(target, tokenizer, prompt, params, draft=draft, draft_tokens=args.draft_tokens)
                if r == 0:
                    continue  # warm-up round
                alone.append(a.tokens_per_second)
                spec.append(s.tokens_per_second)
                acceptance.append(s.draft_acceptance)
                same.append(a.token_ids == s.token_ids)
        results[mode] = {"alone_tokens_per_s": statistics.median(alone),
                         "speculative_tokens_per_s": statistics.median(spec),
                         "speedup": statistics.median(spec) / statistics.median(alone),
                         "acceptance_rate": statistics.mean(acceptance),
                         "same_tokens": all(same) if mode == "greedy" else None}
    print(f"target {args.target} ({n_target:,} parameters), draft {args.draft} ({n_draft:,}), "
          f"{args.draft_tokens} guesses a round, {args.tokens} tokens, batch 1, {args.threads} threads")
    print(f"{'mode':8s} {'alone tok/s':>12s} {'with draft':>11s} {'speed-up':>9s} {'accepted':>9s}  target's tokens")
    for mode, r in results.items():
        same = "" if r["same_tokens"] is None else str(r["same_tokens"])
        print(f"{mode:8s} {r['alone_tokens_per_s']:12.1f} {r['speculative_tokens_per_s']:11.1f} "
              f"{r['speedup']:8.2f}x {r['acceptance_rate']:9.1%}  {same}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
