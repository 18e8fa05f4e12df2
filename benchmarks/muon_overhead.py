"""Muon's step overhead: a training step with Muon against one with AdamW, at the tiny recipe's shape, one run.

The model is the tiny recipe's (``src/groundup/recipes/tiny.yaml``: 4 layers, 256 wide, vocabulary
8192, RMSNorm, SwiGLU, RoPE, tied head), the batch its 8 x 256 tokens, fp32 on the CPU. Each variant
trains its own copy of the same initial weights on the same random tokens; a step is what
``train_step`` does in one process: forward and backward, gradient clipping, the optimizer step. Rounds
interleave the variants (and alternate their order) so that a neighbour's load hits both alike; the
table reports medians, and the optimizer step alone beside the whole step. Target: Muon / AdamW <= 1.10.

'muon' is the default Muon (on a CPU, fp32 Newton–Schulz with Polar Express's coefficients, 4 steps);
'jordan5' is torch.optim.Muon's iteration (Jordan's coefficients, 5 steps), in the same fp32 Gram form.

    python benchmarks/muon_overhead.py [--rounds 9] [--steps 3] [--threads 2] [--variant NAME:KEY=VALUE,...]

``--variant NAME:KEY=VALUE,...`` adds Muon variants (MuonConfig fields), e.g. ``--variant ns3:ns_steps=3``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
import yaml

from groundup import config as configlib
from groundup.model.config import ModelConfig
from groundup.model.transformer import Transformer
from groundup.run import recipe_path
from groundup.train.muon import MuonConfig
from groundup.train.optim import OptimConfig, build_optimizer


def tiny_shape() -> tuple[ModelConfig, dict, int, int]:
    """The tiny recipe's model config, optimizer settings, batch size and sequence length."""
    recipe = yaml.safe_load(recipe_path("tiny").read_text())["pretrain"]
    model = configlib.from_dict(ModelConfig, recipe["model"])
    return model, recipe["optim"], recipe["batch_size"], recipe["seq_len"]


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, settings = text.partition(":")
    fields = {}
    for item in filter(None, settings.split(",")):
        key, _, value = item.partition("=")
        fields[key] = yaml.safe_load(value)
    return name, fields


def timed_steps(model, opt, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, float]:
    """Mean seconds of a whole step and of its optimizer step over ``batches``."""
    whole = optim_only = 0.0
    for x, y in batches:
        t0 = time.perf_counter()
        model(x, y).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        t1 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t2 = time.perf_counter()
        whole += t2 - t0
        optim_only += t2 - t1
    return whole / len(batches), optim_only / len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                        help="a Muon variant beside the default 'muon' (MuonConfig fields)")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/muon_overhead.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model_cfg, optim, batch_size, seq_len = tiny_shape()
    base = Transformer(model_cfg)
    optim_fields = {k: tuple(v) if isinstance(v, list) else v for k, v in optim.items()}
    variants = {"adamw": OptimConfig(**optim_fields), "muon": OptimConfig(**optim_fields, optimizer="muon"),
                "jordan5": OptimConfig(**optim_fields, optimizer="muon", muon=MuonConfig(ns_coefficients="jordan"))}
    for text in args.variant:
        name, fields = parse_variant(text)
        variants[name] = OptimConfig(**optim_fields, optimizer="muon", muon=MuonConfig(**fields))

    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, model_cfg.vocab_size, (args.steps, batch_size, seq_len + 1), generator=gen)
    batches = [(t[:, :-1].contiguous(), t[:, 1:].contiguous()) for t in tokens]
    built = {}
    for name, cfg in variants.items():
        model = copy.deepcopy(base).train()
        opt = build_optimizer(model, cfg, "cpu")
        timed_steps(model, opt, batches[:1])  # warm-up: allocator, optimizer state
        built[name] = (model, opt)

    whole: dict[str, list[float]] = {n: [] for n in built}
    optim_only: dict[str, list[float]] = {n: [] for n in built}
    for r in range(args.rounds):
        order = list(built) if r % 2 == 0 else list(reversed(built))
        for name in order:
            w, o = timed_steps(*built[name], batches)
            whole[name].append(w)
            optim_only[name].append(o)
        ratios = ", ".join(f"{n} {whole[n][-1] / whole['adamw'][-1]:.3f}" for n in built if n != "adamw")
        print(f"round {r + 1}/{args.rounds}: adamw {whole['adamw'][-1]:.3f}s; vs adamw: {ratios}", flush=True)

    rows = {}
    for name in built:
        rows[name] = {"step_s": statistics.median(whole[name]), "optimizer_step_s": statistics.median(optim_only[name]),
                      "ratio_to_adamw": statistics.median(w / a for w, a in zip(whole[name], whole["adamw"],
                                                                                 strict=True)),
                      "steps_s": whole[name], "optimizer_steps_s": optim_only[name]}
    print(f"\ntiny shape: {model_cfg.n_layer} layers, {model_cfg.n_embd} wide, vocab {model_cfg.vocab_size}, "
          f"batch {batch_size}x{seq_len}, fp32, {torch.get_num_threads()} threads; medians of {args.rounds} rounds")
    adamw = rows["adamw"]
    for row in rows.values():  # the optimizer's extra time over AdamW's whole step: less noisy than the ratio
        row["optimizer_overhead"] = (row["optimizer_step_s"] - adamw["optimizer_step_s"]) / adamw["step_s"]
    print(f"{'variant':<12} {'step s':>8} {'optimizer s':>12} {'vs adamw':>9} {'optimizer extra':>16}")
    for name, row in rows.items():
        print(f"{name:<12} {row['step_s']:>8.3f} {row['optimizer_step_s']:>12.4f} {row['ratio_to_adamw']:>8.3f}x "
              f"{row['optimizer_overhead']:>15.1%}")
    print(f"\nMuon step / AdamW step: {rows['muon']['ratio_to_adamw']:.3f} (target <= 1.10); Muon's optimizer "
          f"step over AdamW's, per AdamW step: +{rows['muon']['optimizer_overhead']:.1%}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"threads": torch.get_num_threads(), "rounds": args.rounds, "steps": args.steps,
                                     "variants": {n: configlib.to_dict(c) for n, c in variants.items()},
                                     "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
