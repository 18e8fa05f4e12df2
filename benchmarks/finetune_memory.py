"""Full fine-tuning against LoRA: peak memory and tokens/s on the same model, data and steps.

A base model dir (GPT-2 or Llama shape, random weights: memory and speed do not depend on the values)
and a synthetic chat dataset are made once. Each method then runs `groundup finetune sft` in a fresh
Python process, so the peak resident set size (the RSS high-water mark, ``ru_maxrss``) is that
method's alone. The table gives the peak RSS, the peak over the RSS after the imports and the model
load (what training itself adds: gradients, optimizer state, activations), trained tokens per second
and the trainable parameter count, medians of ``--repeats`` runs in alternating order, and the ratios.
On CUDA (``--device cuda``) it also reports ``torch.cuda.max_memory_allocated``.

    python benchmarks/finetune_memory.py [--family llama] [--layers 8] [--width 1024] [--batch 2] [--steps 4]
                                         [--repeats 3]

The default shape (120M parameters, batch 2) is one where weights, gradients and AdamW state, not
activations, dominate memory, as in fine-tuning a real model with small batches; with a small model
and large batches (``--layers 6 --width 512 --batch 8``) activations dominate and LoRA saves little.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

CHILD = textwrap.dedent("""
    import json, resource, sys, time
    import torch
    from groundup.model.io import load_model_dir
    from groundup.finetune import sft
    from groundup.model.lora import LoRAConfig
    from groundup.train.loop import LoopConfig
    from groundup.train.optim import OptimConfig

    base, data, out, method, steps, batch, device, threads = sys.argv[1:9]
    torch.set_num_threads(int(threads))
    load_model_dir(base)  # imports, allocator and one model in memory: the floor both methods share
    floor_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cfg = sft.Config(model=base, data=data, out=out, batch_size=int(batch), device=device, val_fraction=0.0,
                     lora=LoRAConfig(enabled=method == "lora", rank=8, alpha=16),
                     optim=OptimConfig(lr=1e-4, warmup_steps=2),
                     train=LoopConfig(max_steps=int(steps), log_every=1, eval_every=0, checkpoint_every=0,
                                      progress_bar=False))
    sft.run(cfg)
    result = json.loads((sft.Path(out) / "result.json").read_text())
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cuda = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    # tokens/s over the steps after the first (allocation and warm-up happen in step 1)
    lines = [json.loads(x) for x in (sft.Path(out) / "metrics.jsonl").read_text().splitlines()]
    lines = [r for r in lines if "loss" in r]
    tokens = lines[-1]["tokens"] - lines[0]["tokens"]
    seconds = lines[-1]["elapsed_s"] - lines[0]["elapsed_s"]
    print(json.dumps({"peak_rss_mb": peak_kb / 1024, "floor_rss_mb": floor_kb / 1024,
                      "tokens_per_s": tokens / seconds, "trainable": result["trainable_parameters"],
                      "total": result["total_parameters"], "cuda_peak_mb": cuda / 2**20 if cuda else None}))
""")


def make_inputs(root: Path, family: str, layers: int, width: int, vocab: int, block: int) -> tuple[Path, Path]:
    import torch

    from groundup.model.config import ModelConfig
    from groundup.model.io import save_model_dir
    from groundup.model.transformer import Transformer
    from groundup.tokenizer import run as tokenizer_stage

    tok = tokenizer_stage.run(tokenizer_stage.Config(out=root / "tokenizer", vocab_size=1024, max_bytes=1_000_000))
    shape = dict(name=f"bench-{family}", vocab_size=vocab, block_size=block, n_layer=layers, n_head=width // 64,
                 n_embd=width)
    config = ModelConfig.llama(**shape) if family == "llama" else ModelConfig.gpt2(**shape)
    torch.manual_seed(0)
    base = save_model_dir(root / "base", Transformer(config), tokenizer_file=tok, stage="bench", config={})
    rng = random.Random(0)
    words = ["the", "model", "reads", "a", "long", "answer", "about", "data", "and", "code", "with", "many",
             "plain", "words", "in", "it"]
    with open(root / "chat.jsonl", "w", encoding="utf-8") as f:
        for _ in range(256):
            q = " ".join(rng.choices(words, k=rng.randint(10, 30)))
            a = " ".join(rng.choices(words, k=rng.randint(40, 90)))
            f.write(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
                    + "\n")
    return base, root / "chat.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", default="llama", choices=["llama", "gpt2"])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--block", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base, data = make_inputs(root, args.family, args.layers, args.width, args.vocab, args.block)
        runs: dict[str, list[dict]] = {"full": [], "lora": []}
        for r in range(args.repeats):
            for method in (("full", "lora") if r % 2 == 0 else ("lora", "full")):
                proc = subprocess.run([sys.executable, "-c", CHILD, str(base), str(data), str(root / f"{method}-{r}"),
                                       method, str(args.steps), str(args.batch), args.device, str(args.threads)],
                                      capture_output=True, text=True)
                if proc.returncode:
                    sys.exit(f"{method} run failed:\n{proc.stderr[-3000:]}")
                runs[method].append(json.loads(proc.stdout.strip().splitlines()[-1]))

    def med(method: str, key: str) -> float | None:
        values = [r[key] for r in runs[method] if r[key] is not None]
        return statistics.median(values) if values else None

    rows = {}
    for method in ("full", "lora"):
        rows[method] = {"peak_rss_mb": med(method, "peak_rss_mb"),
                        "training_rss_mb": statistics.median(r["peak_rss_mb"] - r["floor_rss_mb"] for r in runs[method]),
                        "tokens_per_s": med(method, "tokens_per_s"), "trainable": runs[method][0]["trainable"],
                        "total": runs[method][0]["total"], "cuda_peak_mb": med(method, "cuda_peak_mb")}
    print(f"model: {args.family}, {args.layers} layers x {args.width}, vocab {args.vocab}, "
          f"{rows['full']['total']:,} parameters; batch {args.batch}, {args.steps} steps, device {args.device}, "
          f"{args.threads} threads, medians of {args.repeats} fresh processes each ({platform.machine()})")
    header = f"{'method':<6} {'trainable':>12} {'peak RSS MB':>12} {'training MB':>12} {'tokens/s':>10}"
    if args.device != "cpu":
        header += f" {'CUDA peak MB':>13}"
    print(header)
    for method, row in rows.items():
        line = (f"{method:<6} {row['trainable']:>12,} {row['peak_rss_mb']:>12.0f} {row['training_rss_mb']:>12.0f} "
                f"{row['tokens_per_s']:>10.0f}")
        if args.device != "cpu":
            line += f" {row['cuda_peak_mb'] or 0:>13.0f}"
        print(line)
    full, lora = rows["full"], rows["lora"]
    print(f"LoRA / full: peak RSS {lora['peak_rss_mb'] / full['peak_rss_mb']:.2f}, memory added by training "
          f"{lora['training_rss_mb'] / max(full['training_rss_mb'], 1e-9):.2f}, tokens/s "
          f"{lora['tokens_per_s'] / full['tokens_per_s']:.2f}, trainable parameters "
          f"{lora['trainable'] / full['trainable']:.4f}")
    if full["cuda_peak_mb"] and lora["cuda_peak_mb"]:
        print(f"LoRA / full CUDA peak: {lora['cuda_peak_mb'] / full['cuda_peak_mb']:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "results": rows,
                                         "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
