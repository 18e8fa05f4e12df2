"""Mixture-of-experts training speed on the CPU: groundup against transformers' MixtralForCausalLM, and against
a dense groundup model with the same active parameters, same shape, one run.

The shape (Mixtral's layout, small): 4 layers, 384 wide, 6 heads, 8 experts of 1024 hidden units, top 2,
vocabulary 8192, sequence 256, batch 8, fp32, AdamW, random tokens. Both MoE sides train with their load-balancing
loss at 0.01 (groundup's ``moe_aux_loss_coef``; transformers' ``router_aux_loss_coef`` with router logits on).
transformers is timed with the CPU experts implementations it offers (``eager``: a Python loop over the experts
hit, ``grouped_mm``: its default, ``torch._grouped_mm``); the ratio is against the faster. Its third,
``batched_mm``, gathers every token's expert weights (N k x 2H x C floats: 25 GB at this shape) and is left out. The dense model is the same
shape with one MLP of 2 x 1024 = 2048 hidden units, the active width of a token's two experts.

Rounds interleave the implementations (A B C A B C ...) so that a neighbour's load hits all of them alike; the
table reports medians of ``--rounds``, of wall-clock time and of the process's CPU time (both threads summed):
on a machine shared with other jobs the CPU time is the steadier measure of the work a step costs. Goals:
groundup's MoE >= 2x transformers' tokens/s; MoE step time <= 1.5x the dense model's.

Each row also shows its model FLOP/s (the planner's training FLOPs per token, 6 x active matmul weights plus
attention, times tokens/s) as a share of this machine's fp32 matmul peak (a 2048-cube product, the best of
before and after the rounds): a CPU step cannot run faster than its FLOPs at that peak, so the table says
what speed-up is still possible at all.

    python benchmarks/moe_speed.py [--rounds 7] [--steps 1] [--threads 2] [--json F.json]
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

LAYERS, HEADS, WIDTH, EXPERTS, TOP_K, HIDDEN, SEQ, BATCH, VOCAB = 4, 6, 384, 8, 2, 1024, 256, 8, 8192
AUX = 0.01


def make_groundup(moe: bool = True) -> tuple[torch.nn.Module, Callable, torch.optim.Optimizer]:
    from groundup.model import ModelConfig, Transformer
    from groundup.train.optim import OptimConfig, build_optimizer

    shape = dict(vocab_size=VOCAB, block_size=SEQ, n_layer=LAYERS, n_head=HEADS, n_embd=WIDTH, tie_embeddings=False)
    if moe:
        cfg = ModelConfig.llama(**shape, intermediate_size=HIDDEN, moe_experts=EXPERTS, moe_top_k=TOP_K,
                                moe_aux_loss_coef=AUX)
    else:
        cfg = ModelConfig.llama(**shape, intermediate_size=TOP_K * HIDDEN)
    model = Transformer(cfg)
    opt = build_optimizer(model, OptimConfig(), "cpu")
    return model, lambda x, y: model(x, targets=y), opt


def make_transformers(experts: str) -> tuple[torch.nn.Module, Callable, torch.optim.Optimizer]:
    from transformers import MixtralConfig, MixtralForCausalLM

    cfg = MixtralConfig(vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=HIDDEN, num_hidden_layers=LAYERS,
                        num_attention_heads=HEADS, num_key_value_heads=HEADS, max_position_embeddings=SEQ,
                        num_local_experts=EXPERTS, num_experts_per_tok=TOP_K, router_aux_loss_coef=AUX,
                        output_router_logits=True, tie_word_embeddings=False)
    model = MixtralForCausalLM._from_config(cfg, attn_implementation="sdpa", experts_implementation=experts)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)

    def loss(x, y):
        out = model(input_ids=x, output_router_logits=True, use_cache=False)
        logits = out.logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1)) + AUX * out.aux_loss

    return model, loss, opt


def implementations() -> dict[str, Callable]:
    impls: dict[str, Callable] = {"groundup moe": make_groundup, "groundup dense": lambda: make_groundup(False)}
    for experts in ("eager", "grouped_mm"):
        impls[f"transformers {experts}"] = lambda experts=experts: make_transformers(experts)
    return impls


def time_steps(model, loss_fn, opt, steps: int, gen: torch.Generator) -> tuple[float, float]:
    """Wall-clock and CPU seconds per optimizer step (forward, backward, clipping, AdamW) over ``steps`` steps."""
    model.train()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        x = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=gen)
        loss = loss_fn(x[:, :-1].contiguous(), x[:, 1:].contiguous())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - t0) / steps, (time.process_time() - c0) / steps


def model_flops_per_token() -> float:
    """The planner's training FLOPs per token of the MoE shape (its active weights; the dense twin's differ by
    the router's 0.1%)."""
    from groundup.model import ModelConfig
    from groundup.plan.compute import flops_per_token

    cfg = ModelConfig.llama(vocab_size=VOCAB, block_size=SEQ, n_layer=LAYERS, n_head=HEADS, n_embd=WIDTH,
                            tie_embeddings=False, intermediate_size=HIDDEN, moe_experts=EXPERTS, moe_top_k=TOP_K)
    return flops_per_token(cfg, SEQ)


def _matmul_peak_again() -> float:
    from groundup.plan.hardware import measure_matmul_flops

    return measure_matmul_flops(2048, reps=5, min_seconds=1.0, fresh=True)  # not the cached first figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=1, help="timed optimizer steps per round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=None, help="run only these implementations")
    parser.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    built, missing = {}, {}
    for name, make in implementations().items():
        if args.only and name not in args.only:
            continue
        try:
            model, loss_fn, opt = make()
            gen = torch.Generator().manual_seed(0)
            time_steps(model, loss_fn, opt, 2, gen)  # warm-up: allocator, optimizer state
        except (ImportError, ValueError, RuntimeError, NotImplementedError) as e:
            missing[name] = f"unavailable ({type(e).__name__}: {str(e).splitlines()[0][:100]})"
            continue
        built[name] = (model, loss_fn, opt, gen)

    from groundup.plan.hardware import measure_matmul_flops

    peaks = [measure_matmul_flops(2048, reps=5, min_seconds=1.0)]
    seconds: dict[str, list[tuple[float, float]]] = {name: [] for name in built}
    for r in range(args.rounds):
        for name, (model, loss_fn, opt, gen) in built.items():
            seconds[name].append(time_steps(model, loss_fn, opt, args.steps, gen))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {v[-1][0]:.2f} s ({v[-1][1]:.2f} s CPU)"
                                                          for n, v in seconds.items()), flush=True)

    peaks.append(_matmul_peak_again())
    peak = max(peaks)
    flops = model_flops_per_token()
    rows = {}
    for name, (model, *_rest) in built.items():
        step = statistics.median(w for w, _ in seconds[name])
        cpu = statistics.median(c for _, c in seconds[name])
        rows[name] = {"step_seconds": step, "tokens_per_s": BATCH * SEQ / step, "cpu_seconds": cpu,
                      "runs_step_seconds": [w for w, _ in seconds[name]], "runs_cpu_seconds": [c for _, c in seconds[name]],
                      "parameters": sum(p.numel() for p in model.parameters())}
        rows[name]["model_flops_per_s"] = flops * rows[name]["tokens_per_s"]
        rows[name]["share_of_matmul_peak"] = rows[name]["model_flops_per_s"] / peak
    print(f"\nshape: {LAYERS} layers, {WIDTH} wide, {HEADS} heads, {EXPERTS} experts x {HIDDEN} hidden, top {TOP_K}, "
          f"vocab {VOCAB}, seq {SEQ}, batch {BATCH}, fp32, {args.threads} threads, median of {args.rounds} rounds "
          f"of {args.steps} steps")
    print(f"fp32 matmul peak {peak / 1e9:.0f} GFLOP/s (2048-cube, {args.threads} threads); model FLOPs "
          f"{flops / 1e6:.1f} M per token")
    print(f"{'implementation':<24} {'tokens/s':>9} {'step s':>8} {'CPU s':>7} {'params':>11} {'GFLOP/s':>8} {'of peak':>8}")
    for name, row in rows.items():
        print(f"{name:<24} {row['tokens_per_s']:>9.0f} {row['step_seconds']:>8.3f} {row['cpu_seconds']:>7.2f} "
              f"{row['parameters']:>11,d} {row['model_flops_per_s'] / 1e9:>8.0f} {row['share_of_matmul_peak']:>8.0%}")
    for name, why in missing.items():
        print(f"{name:<24} {why}")
    summary = {}
    peers = [n for n in rows if n.startswith("transformers")]
    if "groundup moe" in rows and peers:
        best = max(peers, key=lambda n: rows[n]["tokens_per_s"])
        ours = rows["groundup moe"]
        summary["vs_transformers"] = ours["tokens_per_s"] / rows[best]["tokens_per_s"]
        summary["vs_transformers_cpu"] = rows[best]["cpu_seconds"] / ours["cpu_seconds"]
        summary["fastest_transformers"] = best
        summary["twice_transformers_share_of_peak"] = 2 * rows[best]["share_of_matmul_peak"]
        print(f"\ngroundup MoE / fastest transformers Mixtral ({best}): {summary['vs_transformers']:.2f}x tokens/s, "
              f"{summary['vs_transformers_cpu']:.2f}x by CPU time (goal >= 2x; 2x would run at "
              f"{summary['twice_transformers_share_of_peak']:.0%} of the fp32 matmul peak)")
    if "groundup moe" in rows and "groundup dense" in rows:
        moe, dense = rows["groundup moe"], rows["groundup dense"]
        summary["moe_over_dense_step"] = moe["step_seconds"] / dense["step_seconds"]
        summary["moe_over_dense_cpu"] = moe["cpu_seconds"] / dense["cpu_seconds"]
        print(f"groundup MoE step / dense step with the same active parameters: {summary['moe_over_dense_step']:.2f}x "
              f"wall, {summary['moe_over_dense_cpu']:.2f}x CPU time (goal <= 1.5x)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"threads": args.threads, "matmul_peak_flops": peak, "rows": rows,
                                         "missing": missing, **summary},
                                        indent=2))


if __name__ == "__main__":
    main()
