"""Decode speed at batch 1: groundup's `generate` and serving engine against transformers' `generate`.

Same weights (a GPT-2-shaped model, 6 layers, 384 wide, vocabulary 50304, fp32, random init, copied into
a GPT2LMHeadModel), same 16-token prompt, 128 new greedy tokens, end-of-text ignored. Rounds alternate
the implementations; the table gives medians of the rounds. groundup is measured as `groundup generate`
runs it (`generate_tokens`: the engine in the caller's thread), as the server runs it (the engine in its
own thread; weights packed once for oneDNN, a decode batch of one run as two rows for batch invariance),
with one row (`--engine.batch_invariant false`), and with the fallback layout (transposed weight copies).

    PYTHONPATH=src python benchmarks/serve_decode.py [--rounds 3] [--tokens 128] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from groundup.infer.engine import Engine
from groundup.infer.generate import generate_tokens
from groundup.infer.sampling import SamplingParams
from groundup.model.io import load_model_dir
from serve_common import bench_model_dir, to_hf_gpt2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "groundup-serve-bench")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model_dir(bench_model_dir(args.work))
    hf = to_hf_gpt2(model)
    prompt = torch.randint(100, 2000, (16,), generator=torch.Generator().manual_seed(0)).tolist()
    with torch.inference_mode():
        ours, theirs = model(torch.tensor([prompt])), hf(torch.tensor([prompt])).logits
    print(f"same weights: max |logit difference| = {float((ours - theirs).abs().max()):.2e}")
    n = args.tokens
    params = SamplingParams(temperature=0, max_new_tokens=n, stop_at_eos=False)
    limit = tokenizer.vocab_size  # the model's rows above the tokenizer's are padding, never sampled

    # Each engine lives only for its own turn, as in a server, where one engine thread runs all the work:
    # idle engine threads would keep OpenMP pools that slow the running one (see groundup.infer.engine).
    engines = {"served": lambda: Engine(model, tokenizer, max_seqs=4),
               "one row": lambda: Engine(model, tokenizer, max_seqs=4, min_rows=1),
               "transposed": lambda: Engine(model, tokenizer, max_seqs=4, layout="transposed")}

    class Padding(LogitsProcessor):  # the same masking for transformers (one slice assignment per step)
        def __call__(self, input_ids, scores):
            scores[:, limit:] = float("-inf")
            return scores

    def engine_run(kind: str):
        """Start the engine (untimed), return the timed call; the engine stops after it."""
        e = engines[kind]()
        e.generate(prompt, params)  # warm-up in the engine's own thread

        def timed() -> list[int]:
            try:
                return e.generate(prompt, params)[0].token_ids
            finally:
                e.shutdown()
        return timed

    def run_hf() -> list[int]:
        with torch.inference_mode():
            out = hf.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                              use_cache=True, pad_token_id=0, eos_token_id=None,
                              logits_processor=LogitsProcessorList([Padding()]))
        return out[0, len(prompt):].tolist()

    def direct(fn):  # the same shape as engine_run for the in-thread contenders
        return lambda: fn

    contenders = {"groundup generate": direct(lambda: list(generate_tokens(model, prompt, params, vocab_limit=limit))),
                  "groundup engine (served)": lambda: engine_run("served"),
                  "groundup engine, one row": lambda: engine_run("one row"),
                  "groundup engine, transposed": lambda: engine_run("transposed"),
                  "transformers generate": direct(run_hf)}
    for start in contenders.values():  # warm-up
        start()()
    times: dict[str, list[float]] = {k: [] for k in contenders}
    outputs = {}
    for _ in range(args.rounds):
        for name, start in contenders.items():
            fn = start()
            t0 = time.perf_counter()
            outputs[name] = fn()
            times[name].append(time.perf_counter() - t0)
    hf_rate = n / statistics.median(times["transformers generate"])
    print(f"\ndecode, batch 1, {n} new tokens from a 16-token prompt, {args.threads} threads, "
          f"median of {args.rounds} rounds (shared machine: timings are noisy)")
    print(f"{'implementation':32s} {'tokens/s':>9s} {'vs transformers':>16s}  same tokens as transformers")
    for name, ts in times.items():
        rate = n / statistics.median(ts)
        same = outputs[name] == outputs["transformers generate"]
        print(f"{name:32s} {rate:9.1f} {rate / hf_rate:15.2f}x  {same}")


if __name__ == "__main__":
    main()
