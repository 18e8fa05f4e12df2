"""Batch-1 decode speed: groundup (fp32, int8, int4) against llama.cpp (f32, q8_0, q4_0) on the same weights,
and transformers (fp32).

Two workloads:

- ``--model DIR``: a model dir, by default the main job's model (`groundup run` leaves it in
  runs/tiny/model; 5.5M parameters). At this size a decode step is mostly per-token overhead (Python,
  dispatch, small parallel regions), which is what this measures.
- ``--shape qwen2.5-0.5b``: Qwen2.5-0.5B's layout (24 layers, 896 wide, 14 query / 2 key-value heads, MLP
  4864, vocabulary 151936, tied head) with random weights made by transformers, saved as a Hugging Face
  folder and brought in with `groundup import` (the embedded corpus's tokenizer fills the first rows of
  the vocabulary). Here a decode step is memory-bound: the weights' bytes per token decide.

groundup's dirs are quantized with `groundup quantize` (int8 per channel; int4 in groups of 64, head int8);
the GGUF files are written by `groundup export --to gguf` (f32, q8_0, q4_0), and run by llama.cpp's
``llama-bench`` (``-p 0 -n N``: N tokens generated from an empty context, ``-t`` threads, its own repeats).
groundup decodes greedily from an 8-token prompt through `generate_tokens` (the engine in this thread, as
`groundup generate` runs it); its figure is the decode rate after the first token (prefill excluded), the
median of ``--rounds``. transformers' figure is (N - 1) / (time for N tokens - time for 1 token).

    python benchmarks/decode_llamacpp.py --llama-bench ~/llama.cpp/build/bin/llama-bench [--model DIR]
    python benchmarks/decode_llamacpp.py --llama-bench ... --shape qwen2.5-0.5b --tokens 32 --rounds 3

llama-bench comes from building llama.cpp (``cmake -B build && cmake --build build --target llama-bench``);
without it the llama.cpp rows are left out. Prints a table and writes ``--json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from groundup.artifacts import fingerprint
from groundup.infer import quantize
from groundup.infer.generate import generate_tokens
from groundup.infer.sampling import SamplingParams
from groundup.interop.gguf import export_gguf
from groundup.model.io import load_model_dir

QWEN_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1e6,
                rms_norm_eps=1e-6, tie_word_embeddings=True)


def qwen_shape_dir(work: Path, tokenizer_json: Path) -> Path:
    """Random weights in Qwen2.5-0.5B's layout, through a Hugging Face folder and `groundup import`."""
    out = work / "qwen-shape"
    if (out / "manifest.json").is_file():
        return out
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from groundup.interop.hf import import_hf

    folder = work / "qwen-shape-hf"
    torch.manual_seed(0)
    hf = Qwen2ForCausalLM(Qwen2Config(**QWEN_05B)).eval()
    hf.save_pretrained(folder, safe_serialization=True)
    shutil.copyfile(tokenizer_json, folder / "tokenizer.json")
    return import_hf(folder, out)


def derived(work: Path, model_dir: Path, name: str) -> Path:
    """The work folder of a copy of ``model_dir`` (quantized, GGUF), named after the model's fingerprint, so that
    another model in a folder of the same name never reuses it."""
    return work / f"{model_dir.name}-{fingerprint(model_dir)}-{name}"


def variants(model_dir: Path, work: Path) -> dict[str, Path]:
    dirs = {"fp32": model_dir}
    for name, cfg in (("int8", dict(to="int8")), ("int4", dict(to="int4", group_size=64))):
        out = derived(work, model_dir, name)
        if not (out / "manifest.json").is_file():
            quantize.run(quantize.Config(model=model_dir, out=out, **cfg))
        dirs[name] = out
    return dirs


def groundup_rate(model_dir: Path, tokens: int, rounds: int) -> float:
    model, tokenizer = load_model_dir(model_dir)
    prompt = tokenizer.encode("def fibonacci(n):\n    a, b")[:8]
    params = SamplingParams(temperature=0, max_new_tokens=tokens, stop_at_eos=False)
    rates = []
    for r in range(rounds + 1):  # the first round warms up (weights packed, kernels built)
        stamps = [time.perf_counter() for _ in generate_tokens(model, prompt, params, vocab_limit=tokenizer.vocab_size)]
        if r:
            rates.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
    return statistics.median(rates)


def transformers_rate(model_dir: Path, tokens: int, rounds: int) -> float:
    from groundup.interop.hf import to_transformers

    model, _ = load_model_dir(model_dir)
    hf = to_transformers(model).float().eval()
    prompt = torch.tensor([[11, 12, 13, 14, 15, 16, 17, 18]])

    def timed(n: int) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            hf.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        return time.perf_counter() - start

    timed(2)
    rates = [(tokens - 1) / (timed(tokens) - timed(1)) for _ in range(rounds)]
    return statistics.median(rates)


def llama_bench_rate(llama_bench: Path, gguf: Path, tokens: int, threads: int, rounds: int) -> float:
    out = subprocess.run([str(llama_bench), "-m", str(gguf), "-p", "0", "-n", str(tokens), "-t", str(threads),
                          "-r", str(rounds), "-o", "json"], capture_output=True, text=True, check=True)
    (result,) = json.loads(out.stdout)
    return float(result["avg_ts"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=Path("runs/tiny/model"))
    ap.add_argument("--shape", choices=["qwen2.5-0.5b"], default=None)
    ap.add_argument("--llama-bench", type=Path, default=None)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--transformers", action="store_true", help="also time transformers (default with --shape)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "groundup-decode-bench")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    model_dir = qwen_shape_dir(args.work, args.model / "tokenizer.json") if args.shape else args.model
    dirs = variants(model_dir, args.work)
    rates: dict[str, float] = {}
    for name, path in dirs.items():
        rates[f"groundup {name}"] = groundup_rate(path, args.tokens, args.rounds)
        print(f"groundup {name}: {rates[f'groundup {name}']:.1f} tokens/s", flush=True)
    if args.transformers or args.shape:
        rates["transformers fp32"] = transformers_rate(model_dir, args.tokens, args.rounds)
    if args.llama_bench is not None:
        for dtype in ("f32", "q8_0", "q4_0"):
            gguf = derived(args.work, model_dir, dtype) / "model.gguf"
            if not gguf.is_file():
                export_gguf(model_dir, gguf.parent, dtype=dtype)
            rates[f"llama.cpp {dtype}"] = llama_bench_rate(args.llama_bench, gguf, args.tokens, args.threads,
                                                           args.rounds)
    print(f"\nbatch-1 decode, {args.tokens} tokens, {args.threads} threads, {model_dir} "
          f"({sum(p.numel() for p in load_model_dir(model_dir)[0].parameters()):,} parameters)")
    base = rates.get("llama.cpp f32")
    print(f"{'implementation':22s} {'tokens/s':>9s} {'vs groundup fp32':>17s} {'vs llama.cpp f32':>17s}")
    for name, rate in rates.items():
        vs_base = f"{rate / base:16.2f}x" if base else f"{'':>17s}"
        print(f"{name:22s} {rate:9.1f} {rate / rates['groundup fp32']:16.2f}x {vs_base}")
    for ours, theirs in (("groundup int8", "llama.cpp q8_0"), ("groundup int4", "llama.cpp q4_0")):
        if theirs in rates:
            print(f"{ours} / {theirs}: {rates[ours] / rates[theirs]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"model": str(model_dir), "tokens": args.tokens, "threads": args.threads,
                                         "tokens_per_second": rates}, indent=2) + "\n")


if __name__ == "__main__":
    main()
