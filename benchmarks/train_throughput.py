"""Training throughput: groundup against Hugging Face GPT2LMHeadModel and litgpt's GPT, same shape, one run.

Each implementation trains the same GPT-2-style shape (6 layers, 6 heads, 384 wide, sequence
256, batch 8, vocabulary 50304, fp32) with AdamW on random tokens. Rounds interleave the
implementations (A B C A B C ...) so that a neighbour's load hits all of them alike; the
table reports medians. MFU is against this machine's fp32 matmul rate, measured in the same
run. litgpt is optional (`pip install litgpt`); a missing peer is reported, not faked.

    python benchmarks/train_throughput.py [--rounds 5] [--steps 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from groundup.plan.hardware import measure_matmul_flops

LAYERS, HEADS, WIDTH, SEQ, BATCH, VOCAB = 6, 6, 384, 256, 8, 50304


def flops_per_token(matmul_params: int) -> float:
    return 6.0 * matmul_params + 12.0 * LAYERS * WIDTH * SEQ


def linear_params(model: torch.nn.Module) -> int:
    seen, n = set(), 0
    for m in model.modules():
        w = getattr(m, "weight", None)
        is_matmul = isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"
        if is_matmul and w is not None and id(w) not in seen:
            seen.add(id(w))
            n += w.numel()
    return n


# ---------------------------------------------------------------------------- implementations


def make_groundup() -> tuple[torch.nn.Module, Callable, torch.optim.Optimizer]:
    from groundup.model import ModelConfig, Transformer
    from groundup.train.optim import OptimConfig, build_optimizer

    cfg = ModelConfig.gpt2(vocab_size=VOCAB, block_size=SEQ, n_layer=LAYERS, n_head=HEADS, n_embd=WIDTH)
    model = Transformer(cfg)
    opt = build_optimizer(model, OptimConfig(), "cpu")
    return model, lambda x, y: model(x, targets=y), opt


def make_transformers() -> tuple[torch.nn.Module, Callable, torch.optim.Optimizer]:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=WIDTH, n_layer=LAYERS, n_head=HEADS,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg, attn_implementation="sdpa") if _accepts_attn_impl() else GPT2LMHeadModel(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)

    def loss(x, y):
        logits = model(input_ids=x).logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))

    return model, loss, opt


def _accepts_attn_impl() -> bool:
    import inspect

    from transformers import GPT2LMHeadModel

    return "attn_implementation" in inspect.signature(GPT2LMHeadModel.__init__).parameters


def make_litgpt() -> tuple[torch.nn.Module, Callable, torch.optim.Optimizer]:
    from litgpt.config import Config
    from litgpt.model import GPT
    from litgpt.utils import chunked_cross_entropy

    cfg = Config(name="bench", block_size=SEQ, vocab_size=VOCAB, padded_vocab_size=VOCAB, n_layer=LAYERS,
                 n_head=HEADS, n_embd=WIDTH, bias=True, parallel_residual=False, norm_class_name="LayerNorm",
                 mlp_class_name="GptNeoxMLP", intermediate_size=4 * WIDTH, gelu_approximate="tanh",
                 rotary_percentage=1.0)
    model = GPT(cfg)
    model.apply(model._init_weights)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    return model, lambda x, y: chunked_cross_entropy(model(x), y), opt


IMPLEMENTATIONS = {"groundup": make_groundup, "transformers": make_transformers, "litgpt": make_litgpt}


def time_steps(model, loss_fn, opt, steps: int, gen: torch.Generator) -> float:
    model.train()
    t0 = time.perf_counter()
    for _ in range(steps):
        x = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=gen)
        loss = loss_fn(x[:, :-1].contiguous(), x[:, 1:].contiguous())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return BATCH * SEQ * steps / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4, help="timed optimizer steps per round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=None, help="run only these implementations")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/train_throughput.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    built, missing = {}, {}
    for name, make in IMPLEMENTATIONS.items():
        if args.only and name not in args.only:
            continue
        try:
            model, loss_fn, opt = make()
        except ImportError as e:
            missing[name] = f"not installed ({e.name})"
            continue
        gen = torch.Generator().manual_seed(0)
        time_steps(model, loss_fn, opt, 2, gen)  # warm-up: allocator, optimizer state
        built[name] = (model, loss_fn, opt, gen, linear_params(model))

    matmul_rates, results = [], {name: [] for name in built}
    for r in range(args.rounds):
        matmul_rates.append(measure_matmul_flops(2048, reps=5, min_seconds=1.0, fresh=True))
        for name, (model, loss_fn, opt, gen, _) in built.items():
            results[name].append(time_steps(model, loss_fn, opt, args.steps, gen))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {v[-1]:.0f}" for n, v in results.items()), flush=True)

    matmul = statistics.median(matmul_rates)
    rows = {}
    for name, (model, *_rest, n_matmul) in built.items():
        tps = statistics.median(results[name])
        rows[name] = {"tokens_per_s": tps, "runs": results[name],
                      "mfu_vs_matmul": tps * flops_per_token(n_matmul) / matmul,
                      "parameters": sum(p.numel() for p in model.parameters())}
    peers = [n for n in rows if n != "groundup"]
    best_peer = max(peers, key=lambda n: rows[n]["tokens_per_s"]) if peers else None

    print(f"\nshape: {LAYERS} layers, {HEADS} heads, {WIDTH} wide, seq {SEQ}, batch {BATCH}, vocab {VOCAB}, fp32, "
          f"{args.threads} threads; fp32 matmul rate {matmul / 1e9:.1f} GFLOP/s (median of {args.rounds})")
    print(f"{'implementation':<14} {'tokens/s':>10} {'MFU':>7} {'vs groundup':>12}")
    for name, row in rows.items():
        ratio = rows["groundup"]["tokens_per_s"] / row["tokens_per_s"] if "groundup" in rows else float("nan")
        print(f"{name:<14} {row['tokens_per_s']:>10.0f} {row['mfu_vs_matmul']:>7.1%} {ratio:>11.2f}x")
    for name, why in missing.items():
        print(f"{name:<14} {why}")
    if best_peer and "groundup" in rows:
        print(f"\ngroundup / fastest peer ({best_peer}): "
              f"{rows['groundup']['tokens_per_s'] / rows[best_peer]['tokens_per_s']:.3f}x")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"matmul_flops": matmul, "threads": args.threads, "rows": rows,
                                     "missing": missing}, indent=2))


if __name__ == "__main__":
    main()
