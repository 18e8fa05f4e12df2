"""Packed documents: how full the rows are, what the sampler costs, and what document-causal attention costs.

Three measurements, in one process:

1. **Pretraining rows** over one epoch of a tokens dir's train.bin (``--tokens``, e.g. a `groundup run`'s
   ``tokens/``) at several sequence lengths: packing 'bestfit' (:class:`PackedDocuments`): the share of
   row positions with a target (the rest: padding, and the one target before a mid-document piece), the
   share of rows that start a document, and the time to find the documents (an EOS scan) and to make a batch,
   against 'random' (:class:`RandomWindows`), whose every position has a target but whose rows start
   mid-document.
2. **Step time** of the tiny recipe's model shape and batch on those tokens: random windows, packed rows,
   and packed rows with document-causal attention (``segments``). Rounds interleave the three (A B C A B C)
   so that a neighbour's load hits all alike; the table gives medians and the ratio to random windows.
3. **SFT rows** for synthetic conversation lengths (log-normal, median 300 tokens, a long tail to
   ``--sft-max-len``, about what chat datasets hold): the share of positions that hold tokens when
   batches are padded in random order, padded in length-grouped order (groundup's default), and packed
   (best-fit decreasing, :func:`groundup.finetune.data.pack_examples`).

    python benchmarks/packing.py --tokens runs/tiny/tokens [--rounds 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from groundup.artifacts import read_json
from groundup.finetune.data import ExampleBatches, pack_examples
from groundup.finetune.sft import epoch_efficiency
from groundup.model.config import ModelConfig
from groundup.model.transformer import Transformer
from groundup.run import recipe_path
from groundup.tokens.datasets import PackedDocuments, RandomWindows, load_tokens


def pretrain_rows(tokens: np.ndarray, eos_id: int, seq_lens: list[int], batch_size: int) -> list[dict]:
    """One epoch of packed rows per sequence length: how full, how many start a document, what it costs."""
    results = []
    for seq_len in seq_lens:
        started = time.perf_counter()
        packed = PackedDocuments(tokens, seq_len, batch_size, eos_id, seed=0)
        setup_s = time.perf_counter() - started
        started, batches, opening = time.perf_counter(), 0, 0
        while packed.state_dict()["epoch"] == 0:
            x, _, _ = packed.next_batch()
            opening += int((x[:, 0] == eos_id).sum())
            batches += 1
        batch_ms = (time.perf_counter() - started) / batches * 1e3
        random = RandomWindows(tokens, seq_len, batch_size, seed=0)
        started = time.perf_counter()
        for _ in range(batches):
            random.next_batch()
        random_ms = (time.perf_counter() - started) / batches * 1e3
        stats = packed.stats()
        results.append({"seq_len": seq_len, "documents": stats["documents"], "pieces": stats["pieces"],
                        "rows": stats["rows"], "efficiency": stats["efficiency"],
                        "padding_share": round(stats["padding"] / (stats["rows"] * (seq_len + 1)), 6),
                        "rows_opening_a_document": round(opening / (batches * batch_size), 4),
                        "setup_s": round(setup_s, 3), "batch_ms": round(batch_ms, 3),
                        "random_batch_ms": round(random_ms, 3)})
    return results


def tiny_shape() -> tuple[ModelConfig, int, int]:
    recipe = yaml.safe_load(recipe_path("tiny").read_text())["pretrain"]
    return ModelConfig(**recipe["model"]), recipe["batch_size"], recipe["seq_len"]


def step_times(tokens: np.ndarray, eos_id: int, rounds: int, steps: int) -> dict[str, float]:
    """Median seconds per training step (forward, backward, AdamW) of each variant, interleaved."""
    config, batch_size, seq_len = tiny_shape()
    random = RandomWindows(tokens, seq_len, batch_size, seed=0)
    packed = PackedDocuments(tokens, seq_len, batch_size, eos_id, seed=0)
    variants = {"random": lambda: (*random.next_batch(), None),
                "bestfit": lambda: (*packed.next_batch()[:2], None),
                "bestfit+doc_mask": packed.next_batch}
    torch.manual_seed(0)
    model = Transformer(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds + 1):  # round 0 warms up
        for name, batch in variants.items():
            started = time.perf_counter()
            for _ in range(steps):
                x, y, segments = batch()
                model(x, targets=y, segments=segments).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            if r:
                times[name].append((time.perf_counter() - started) / steps)
        if r:
            print(f"round {r}/{rounds}: " + ", ".join(f"{n} {v[-1] * 1e3:.0f} ms" for n, v in times.items()), flush=True)
    return {name: statistics.median(values) for name, values in times.items()}


def sft_rows(n: int, max_len: int, batch_size: int, seed: int = 0) -> dict[str, float]:
    """Share of batch positions holding tokens: padded (random order), padded (length-grouped), packed."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(300), 0.9, size=n).astype(int), 16, max_len).tolist()

    def efficiency(row_lengths: list[int], group_by_length: bool) -> float:
        return epoch_efficiency(ExampleBatches([length + 1 for length in row_lengths], batch_size, None, seed=seed,
                                               group_by_length=group_by_length))

    rows = pack_examples(lengths, max_len, seed)
    packed = [sum(lengths[i] for i in row) for row in rows]
    return {"conversations": n, "mean_tokens": round(float(np.mean(lengths)), 1), "max_len": max_len,
            "batch_size": batch_size, "padded_random_order": efficiency(lengths, False),
            "padded_grouped_by_length": efficiency(lengths, True), "packed": efficiency(packed, True),
            "packed_rows": len(rows), "conversations_per_row": round(n / len(rows), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=Path, required=True, help="a tokens dir (train.bin, meta.json)")
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[256, 1024, 2048])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3, help="training steps per variant per round")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--sft-conversations", type=int, default=20000)
    parser.add_argument("--sft-max-len", type=int, default=2048)
    parser.add_argument("--sft-batch-size", type=int, default=8)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/packing.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    eos_id = int(read_json(args.tokens / "meta.json")["eos_id"])
    tokens = load_tokens(args.tokens, "train")

    rows = pretrain_rows(tokens, eos_id, args.seq_lens, batch_size=8)
    print("\npretraining rows, one epoch (bestfit):")
    print(f"{'seq_len':>8} {'rows':>7} {'efficiency':>10} {'padding':>8} {'open doc':>8} {'setup s':>8} "
          f"{'batch ms':>8} {'random ms':>9}")
    for r in rows:
        print(f"{r['seq_len']:>8} {r['rows']:>7} {r['efficiency']:>10.4f} {r['padding_share']:>8.4f} "
              f"{r['rows_opening_a_document']:>8.3f} {r['setup_s']:>8.3f} {r['batch_ms']:>8.3f} "
              f"{r['random_batch_ms']:>9.3f}")
    sft = sft_rows(args.sft_conversations, args.sft_max_len, args.sft_batch_size)
    print(f"\nSFT rows ({sft['conversations']} conversations, mean {sft['mean_tokens']} tokens, rows of "
          f"{sft['max_len']}, batch {sft['batch_size']}): share of positions holding tokens")
    for key in ("padded_random_order", "padded_grouped_by_length", "packed"):
        print(f"  {key:<26} {sft[key]:.4f}")
    print(f"\nstep time, tiny recipe shape, {args.rounds} interleaved rounds of {args.steps} steps:")
    steps = step_times(tokens, eos_id, args.rounds, args.steps)
    for name, seconds in steps.items():
        print(f"  {name:<18} {seconds * 1e3:8.1f} ms  x{seconds / steps['random']:.3f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"pretrain_rows": rows, "sft_rows": sft,
                                     "step_seconds": steps, "threads": torch.get_num_threads()}, indent=2))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
