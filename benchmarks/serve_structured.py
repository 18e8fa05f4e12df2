"""Structured-output overhead: decode tokens/s with a JSON schema (xgrammar token masks) against without.

The benchmark model (GPT-2 shape, 6 x 384, vocabulary 50304, fp32) in groundup's engine, in process:
the same prompts, 64 tokens each at temperature 0.7 with a fixed seed, once free and once constrained
to a schema whose long string field keeps the text going; batch 1 and batch 8 (8 requests at once).
The grammar is compiled once before timing (compilation is cached per schema, as in serving).
Medians of ``--rounds`` alternating rounds.

    PYTHONPATH=src python benchmarks/serve_structured.py [--rounds 3] [--tokens 64]
"""

from __future__ import annotations

import argparse
import json
import queue
import statistics
import tempfile
import time
from pathlib import Path

import torch

from groundup.infer.engine import Engine, Request
from groundup.infer.sampling import SamplingParams
from groundup.infer.structured import GrammarFactory
from groundup.model.io import load_model_dir
from serve_common import bench_model_dir

SCHEMA = {"type": "object", "required": ["title", "body"], "additionalProperties": False,
          "properties": {"title": {"type": "string", "maxLength": 20}, "body": {"type": "string"}}}


def run_batch(engine: Engine, prompts: list[list[int]], params: SamplingParams, grammar) -> tuple[int, float]:
    done: queue.Queue = queue.Queue()
    t0 = time.perf_counter()
    for p in prompts:
        engine.submit(Request(prompt_ids=p, params=params, grammar=grammar, on_event=done.put))
    tokens, finished = 0, 0
    while finished < len(prompts):
        event = done.get()
        tokens += len(event.token_ids)
        finished += event.finish_reason is not None
    return tokens, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "groundup-serve-bench")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model_dir(bench_model_dir(args.work))
    engine = Engine(model, tokenizer, max_seqs=8)
    t0 = time.perf_counter()
    factory = GrammarFactory(tokenizer, model.config.vocab_size)
    grammar = factory.json_schema(SCHEMA)
    print(f"tokenizer info + schema compilation: {time.perf_counter() - t0:.2f} s (once per server / schema)")
    params = SamplingParams(temperature=0.7, seed=0, max_new_tokens=args.tokens, stop_at_eos=False)
    prompts = [tokenizer.encode(f"Record {i}: ") for i in range(8)]
    # every constrained output parses and fits the schema
    check = engine.generate(prompts[0], params, grammar=grammar)[0]
    print(f"constrained sample ({check.finish_reason}): {check.text[:80]!r}")
    if check.finish_reason == "stop":
        json.loads(check.text)
    rates: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for batch in (1, 8):
            for name, g in (("free", None), ("json_schema", grammar)):
                tokens, seconds = run_batch(engine, prompts[:batch], params, g)
                rates.setdefault(f"batch {batch} {name}", []).append(tokens / seconds)
    engine.shutdown()
    print(f"\ntokens/s, {args.tokens} tokens per request, median of {args.rounds} rounds "
          f"(shared machine: timings are noisy)")
    for batch in (1, 8):
        free = statistics.median(rates[f"batch {batch} free"])
        constrained = statistics.median(rates[f"batch {batch} json_schema"])
        print(f"batch {batch}: free {free:7.1f}   json_schema {constrained:7.1f}   "
              f"overhead {100 * (1 - constrained / free):+.1f}%")


if __name__ == "__main__":
    main()
