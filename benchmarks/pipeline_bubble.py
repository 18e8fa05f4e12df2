"""Pipeline bubbles: the idle fraction of each schedule measured from stage timings, against the plan's formula.

Four gloo ranks (torchrun, CPU) run one pipeline step after another through groundup's pipeline
(``groundup.parallel.apply_pp.Pipeline``: torch.distributed.pipelining's stages and schedules) with 8
micro-batches. Every stage's compute (``forward_one_chunk``, ``backward_one_chunk`` and, in the zero-bubble
schedules, ``backward_weight_one_chunk``) is timed on its rank; a rank's idle fraction is 1 - its compute time /
the step's wall time (between two barriers), and the table gives the mean over ranks and steps.

``--work sleep`` (the default): each stage sleeps a fixed time per forward (F), input-gradient backward and
weight-gradient backward (each F, so B = 2F as in a transformer), so the figure is the schedule's own and not the
CPU's: four processes on a 2-core machine do not contend for cores while they sleep. ``--work model``: each
stage is a part of a real Transformer (``parallelize`` with ``pipeline_parallel``), whose compute contends
for the cores when the machine has fewer than 4.

Formulas (the textbook ones, or ``groundup.plan.parallelism.bubble_fraction`` where the plan has it): GPipe and
1F1B (p - 1) / (m + p - 1); interleaved with v stages per rank (p - 1) / (v m + p - 1); zero bubble ~ 0 (ideal).

    python benchmarks/pipeline_bubble.py [--stages 4] [--microbatches 8] [--steps 5] [--work sleep|model]
        [--unit-ms 20] [--schedules GPipe,1F1B,...] [--json benchmarks/results/pipeline_bubble.json]
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

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
SCHEDULES = ["GPipe", "1F1B", "Interleaved1F1B", "LoopedBFS", "InterleavedZeroBubble", "ZBVZeroBubble"]


def textbook_bubble(schedule: str, p: int, m: int, v: int) -> float:
    """The plan's formula where ``groundup.plan`` has one, else the textbook's."""
    try:
        from groundup.plan.parallelism import bubble_fraction

        return bubble_fraction(schedule, p, m, v)
    except ImportError:
        pass
    if p == 1 or schedule in ("ZBVZeroBubble", "InterleavedZeroBubble"):
        return 0.0
    if v == 1:
        return (p - 1) / (m + p - 1)
    return (p - 1) / (v * m + p - 1)


class _Sleep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, forward_s: float, backward_s: float):
        ctx.backward_s = backward_s
        time.sleep(forward_s)
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        time.sleep(ctx.backward_s)
        return grad, None, None


class SleepStage(nn.Module):
    """A stage that sleeps ``unit`` seconds in forward, ``unit`` in its input gradient and ``unit`` in its weights'."""

    def __init__(self, dim: int, unit: float, last: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.unit, self.last = unit, last

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        h = _Sleep.apply(x + self.bias, self.unit, self.unit)  # the activations' path
        y = h * _Sleep.apply(self.weight, 0.0, self.unit)  # the weights' path
        return y.pow(2).mean() if self.last else y


def timed_stage_compute() -> dict[str, float]:
    """Patch the pipeline stages' compute methods to add their seconds to the returned dict's 'busy'."""
    from torch.distributed.pipelining.stage import _PipelineStageBase

    clock = {"busy": 0.0}
    for name in ("forward_one_chunk", "backward_one_chunk", "backward_weight_one_chunk"):
        original = getattr(_PipelineStageBase, name)

        def timed(self, *args, _original=original, **kwargs):
            t0 = time.perf_counter()
            try:
                return _original(self, *args, **kwargs)
            finally:
                clock["busy"] += time.perf_counter() - t0

        setattr(_PipelineStageBase, name, timed)
    return clock


def build_pipeline(args, schedule: str, env):
    """The pipeline of ``--work``: sleeping stages, or a Transformer's parts through ``parallelize``."""
    import torch.distributed as dist

    from groundup.parallel.apply_pp import SCHEDULES as OFFERED
    from groundup.parallel.apply_pp import Pipeline, StageLayout, stage_ranks

    p, m = args.stages, args.microbatches
    rows = m * args.rows
    if args.work == "sleep":
        owners = stage_ranks(schedule, p)
        layout = StageLayout(schedule=schedule, pp=p, pp_rank=env.rank, sizes=[1] * len(owners), owners=owners)
        modules = [SleepStage(16, args.unit_ms / 1000, s == len(owners) - 1) for s in layout.mine]
        pipeline = Pipeline(layout=layout, modules=modules, group=dist.group.WORLD, device=env.device,
                            microbatches=m)

        def batch():
            return torch.randn(rows, 16), torch.zeros(rows, 16)

        return pipeline, modules, batch, OFFERED[schedule]
    from groundup.model.config import ModelConfig
    from groundup.model.transformer import Transformer
    from groundup.parallel.config import ParallelConfig
    from groundup.parallel.parallelize import parallelize

    config = ModelConfig.from_name("tiny-llama", n_layer=2 * p * OFFERED[schedule], n_embd=128, n_head=4,
                                   n_kv_head=2, vocab_size=512, block_size=64, dropout=0.0, tie_embeddings=False)
    torch.manual_seed(0)
    part, state = parallelize(Transformer(config), ParallelConfig(pipeline_parallel=p, pipeline_schedule=schedule,
                                                                  pipeline_microbatches=m), env)

    def batch():
        x = torch.randint(0, config.vocab_size, (rows, config.block_size))
        return x, torch.roll(x, -1, 1)

    return state.pipeline, [part], batch, OFFERED[schedule]


def worker(args) -> None:
    import torch.distributed as dist

    from groundup.parallel.env import init_distributed

    torch.set_num_threads(1)
    env = init_distributed(torch.device("cpu"), "gloo")
    clock = timed_stage_compute()
    results = {}
    for schedule in args.schedules.split(","):
        pipeline, modules, batch, v = build_pipeline(args, schedule, env)
        fractions = []
        for step in range(args.warmup + args.steps):
            x, y = batch()
            dist.barrier()
            clock["busy"] = 0.0
            t0 = time.perf_counter()
            pipeline.forward_backward([(x, y)], lambda b: (b[0], b[1], {}, {}))
            dist.barrier()
            wall = time.perf_counter() - t0
            for module in modules:
                module.zero_grad(set_to_none=True)
            if step >= args.warmup:
                fractions.append(1.0 - clock["busy"] / wall)
        gathered = [None] * env.world_size
        dist.all_gather_object(gathered, fractions)
        per_rank = [statistics.mean(f) for f in gathered]
        results[schedule] = {"v": v, "measured": statistics.mean(per_rank), "per_rank": per_rank,
                             "formula": textbook_bubble(schedule, args.stages, args.microbatches, v)}
    if env.rank == 0:
        Path(args.worker_out).write_text(json.dumps(results))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, default=4)
    parser.add_argument("--microbatches", type=int, default=8)
    parser.add_argument("--rows", type=int, default=1, help="rows per micro-batch")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--work", choices=["sleep", "model"], default="sleep")
    parser.add_argument("--unit-ms", type=float, default=20.0, help="sleep work: F, and each half of B")
    parser.add_argument("--schedules", default=",".join(SCHEDULES))
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/pipeline_bubble.json"))
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_out:
        worker(args)
        return
    out = args.json.with_suffix(".worker.json")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.stages),
           __file__, *sys.argv[1:], "--worker-out", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, env=env)
    results = json.loads(out.read_text())
    out.unlink()
    print(f"pipeline bubble: {args.stages} stages, {args.microbatches} micro-batches, {args.work} work"
          + (f" (F = {args.unit_ms:g} ms, B = 2F)" if args.work == "sleep" else ""))
    print(f"{'schedule':<22} {'v':>2} {'measured idle':>14} {'formula':>8}   per rank")
    for name, r in results.items():
        ranks = " ".join(f"{f:.3f}" for f in r["per_rank"])
        print(f"{name:<22} {r['v']:>2} {r['measured']:>14.3f} {r['formula']:>8.3f}   {ranks}")
    args.json.write_text(json.dumps({"stages": args.stages, "microbatches": args.microbatches, "work": args.work,
                                     "unit_ms": args.unit_ms if args.work == "sleep" else None,
                                     "cpu_count": os.cpu_count(), "torch": torch.__version__,
                                     "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
