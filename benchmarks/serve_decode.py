"""Decode speed at batch 1: groundup's serving engine against transformers' `generate` (KV cache on).

Same weights (a GPT-2-shaped model, 6 layers, 384 wide, vocabulary 50304, fp32, random init, copied into
a GPT2LMHeadModel), same 16-token prompt, 128 new greedy tokens, end-of-text ignored. Rounds alternate
the implementations; the table gives medians of the rounds. The engine is measured as served (weights
packed once for oneDNN, a decode batch of one run as two rows for batch invariance), with one row
(`--batch_invariant false`), and with the fallback layout (transposed weight copies, batches padded to
four rows); the spine's single-sequence `generate_tokens` is shown for reference.

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

from groundup.artifacts import load_model_dir
from groundup.infer.batched import TransposedWeights
from groundup.infer.engine import Engine
from groundup.infer.generate import generate_tokens
from groundup.infer.sampling import SamplingParams
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
    engine = Engine(model, tokenizer, max_seqs=4)
    engine_unpadded = Engine(model, tokenizer, max_seqs=4, min_rows=1)
    engine_transposed = Engine(model, tokenizer, max_seqs=4, min_rows=4)
    engine_transposed.weights = TransposedWeights(model)  # the layout used where oneDNN packing is unavailable

    class Padding(LogitsProcessor):  # the same masking for transformers (one slice assignment per step)
        def __call__(self, input_ids, scores):
            scores[:, limit:] = float("-inf")
            return scores

    def run_engine(e: Engine) -> list[int]:
        return e.generate(prompt, params)[0].token_ids

    def run_hf() -> list[int]:
        with torch.inference_mode():
            out = hf.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                              use_cache=True, pad_token_id=0, eos_token_id=None,
                              logits_processor=LogitsProcessorList([Padding()]))
        return out[0, len(prompt):].tolist()

    layout = type(engine.weights).__name__
    contenders = {f"groundup engine ({layout})": lambda: run_engine(engine),
                  "groundup engine, one row": lambda: run_engine(engine_unpadded),
                  "groundup engine, transposed": lambda: run_engine(engine_transposed),
                  "groundup generate_tokens": lambda: list(generate_tokens(model, prompt, params, vocab_limit=limit)),
                  "transformers generate": run_hf}
    for fn in contenders.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {k: [] for k in contenders}
    outputs = {}
    for _ in range(args.rounds):
        for name, fn in contenders.items():
            t0 = time.perf_counter()
            outputs[name] = fn()
            times[name].append(time.perf_counter() - t0)
    for e in (engine, engine_unpadded, engine_transposed):
        e.shutdown()
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
