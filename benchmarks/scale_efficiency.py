"""Data-parallel scaling on CPU: tokens/s at 1 and 2 ranks (gloo, DDP), scaling efficiency, communication time.

Strong scaling: the global batch is fixed (batch x accumulation), so 2 ranks each run half the
micro-batches of 1 rank (exactly what `groundup pretrain` does under torchrun). Communication is measured
apart: the all-reduce of a gradient-sized fp32 buffer, timed on the same 2 ranks, as a share of the step.

    python benchmarks/scale_efficiency.py [--repeats 3] [--steps 6]

The script launches itself under torchrun (1 rank, then 2, interleaved) and prints medians of the
repeats. Each rank uses one thread (OMP_NUM_THREADS=1 on both sides), so 2 ranks can at best double
1 rank when two cores are free; on a machine whose 2 cores are shared with other work, the figures
measure that contention as much as scaling (compare the all-reduce share with the lost efficiency).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def worker(args) -> None:
    import torch
    import torch.distributed as dist

    from groundup.model.config import ModelConfig
    from groundup.model.transformer import Transformer
    from groundup.parallel.config import ParallelConfig
    from groundup.parallel.env import init_distributed
    from groundup.parallel.parallelize import parallelize

    torch.set_num_threads(1)
    env = init_distributed(torch.device("cpu"))
    cfg = ModelConfig.from_name("tiny-llama", n_layer=4, n_embd=128, n_head=4, n_kv_head=2, vocab_size=2048,
                                block_size=128, dropout=0.0)
    torch.manual_seed(0)
    model, par = parallelize(Transformer(cfg), ParallelConfig(data_parallel="ddp"), env)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    world = env.world_size
    accum = args.global_accum // world
    gen = torch.Generator().manual_seed(env.rank)
    x = torch.randint(0, cfg.vocab_size, (args.batch, cfg.block_size), generator=gen)

    def step():
        for i in range(accum):
            ctx = par.sync_gradients(model, i == accum - 1) if par.distributed else None
            if ctx is None:
                loss = model(x, targets=x)
                (loss / accum).backward()
            else:
                with ctx:
                    loss = model(x, targets=x)
                    (loss / accum).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    if par.distributed:
        dist.barrier()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if par.distributed:
        dist.barrier()
    step_s = (time.perf_counter() - t0) / args.steps
    tokens = args.batch * cfg.block_size * args.global_accum
    comm_s = 0.0
    if par.distributed:
        n = sum(p.numel() for p in model.parameters())
        buf = torch.randn(n)
        dist.all_reduce(buf)
        t0 = time.perf_counter()
        for _ in range(5):
            dist.all_reduce(buf)
        comm_s = (time.perf_counter() - t0) / 5
    if env.rank == 0:
        print(json.dumps({"world": world, "step_s": step_s, "tokens_per_s": tokens / step_s, "comm_s": comm_s}))


def launch(nproc: int, args) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), __file__,
           "--worker", "--steps", str(args.steps), "--batch", str(args.batch), "--global-accum", str(args.global_accum)]
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--global-accum", type=int, default=4)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    one, two = [], []
    for _ in range(args.repeats):  # interleaved, so both see the same background load
        one.append(launch(1, args))
        two.append(launch(2, args))
    tps1 = statistics.median(r["tokens_per_s"] for r in one)
    tps2 = statistics.median(r["tokens_per_s"] for r in two)
    comm = statistics.median(r["comm_s"] for r in two)
    step2 = statistics.median(r["step_s"] for r in two)
    print(f"cpu cores: {os.cpu_count()} (shared with other work: figures are noisy)")
    print(f"1 rank : {tps1:,.0f} tokens/s (median of {args.repeats})")
    print(f"2 ranks: {tps2:,.0f} tokens/s; speed-up {tps2 / tps1:.2f}x; scaling efficiency {tps2 / (2 * tps1):.1%}")
    print(f"gradient all-reduce (gloo): {comm * 1e3:.1f} ms per step = {comm / step2:.1%} of a 2-rank step")


if __name__ == "__main__":
    main()
