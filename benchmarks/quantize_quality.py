"""Quality of quantized weights: held-out bits per byte of a model dir at fp32, int8 and int4 (groups 32, 64, 128).

The held-out split is a token shard's val.bin (`groundup tokenize` output; by default the main job's
runs/tiny/tokens), scored by the one scorer pretraining and `groundup evaluate` use (lm-eval's rolling
windows per document). Each quantized dir is written by `groundup quantize`; the table gives bits per
byte and the change against fp32 (the issue's targets: int8 within +0.5%, int4 at group 64 within +3%).
``--windows`` scores only the first windows (a quicker estimate). Scoring multiplies long rows, which the
quantized layers do with dequantized weights in float32; ``--decode-kernels`` sends every product through
the decode kernels instead, whose activations are rounded to int8 too (what decoding computes).

    python benchmarks/quantize_quality.py [--model runs/tiny/model] [--tokens runs/tiny/tokens] [--windows N]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from groundup.artifacts import fingerprint
from groundup.evaluate.lm import score_shard
from groundup.infer import quantize
from groundup.model import quant
from groundup.model.io import load_model_dir
from groundup.tokens.datasets import load_tokens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=Path("runs/tiny/model"))
    ap.add_argument("--tokens", type=Path, default=Path("runs/tiny/tokens"))
    ap.add_argument("--windows", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "groundup-quant-quality")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--decode-kernels", action="store_true", help="score through the decode kernels")
    args = ap.parse_args()
    if args.decode_kernels:
        quant.KERNEL_ROWS = 1 << 30
    torch.set_num_threads(args.threads)
    meta = json.loads((args.tokens / "meta.json").read_text())
    val = load_tokens(args.tokens, "val")
    variants = {"fp32": args.model}
    for name, cfg in (("int8", dict(to="int8")), ("int4 g32", dict(to="int4", group_size=32)),
                      ("int4 g64", dict(to="int4", group_size=64)), ("int4 g128", dict(to="int4", group_size=128))):
        # named after the model's fingerprint: a quantized copy of another model is never reused
        out = args.work / f"{fingerprint(args.model)}-{name.replace(' ', '-')}"
        if not (out / "manifest.json").is_file():
            quantize.run(quantize.Config(model=args.model, out=out, **cfg))
        variants[name] = out
    results = {}
    for name, path in variants.items():
        model, _ = load_model_dir(path)
        with torch.inference_mode():
            score = score_shard(model, val, int(meta["eos_id"]), n_bytes=int(meta["bytes"]["val"]),
                                max_windows=args.windows)
        if args.windows:  # the bytes of the windows scored, estimated from the split's bytes per token
            score.bytes = round(score.tokens * int(meta["bytes"]["val"]) / len(val))
        results[name] = score.metrics()["bits_per_byte"]
        print(f"{name}: {results[name]:.5f}", flush=True)
    base = results["fp32"]
    print(f"\nheld-out bits per byte, {args.model} on {args.tokens}/val.bin"
          f"{f' (first {args.windows} windows)' if args.windows else ''}"
          f"{', every product through the decode kernels' if args.decode_kernels else ''}")
    print(f"{'weights':10s} {'bits/byte':>10s} {'change':>9s}")
    for name, bpb in results.items():
        print(f"{name:10s} {bpb:10.5f} {100 * (bpb / base - 1):+8.3f}%")
    if args.json:
        args.json.write_text(json.dumps({"model": str(args.model), "decode_kernels": args.decode_kernels, "bits_per_byte": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
