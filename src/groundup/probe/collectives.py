"""The collective sweep: all-reduce, all-gather, reduce-scatter and all-to-all over the ranks of a process
group, from 1 KiB up, timed and reported as nccl-tests reports them.

Conventions are nccl-tests' (``doc/PERFORMANCE.md`` and each test's ``GetBw``): the size S of a row is the
whole buffer (the all-gather's output, the reduce-scatter's input, the all-to-all's send buffer); each size's
time is the mean of back-to-back operations after a barrier, averaged over the ranks; algbw = S / t and
busbw = algbw x the collective's factor (:mod:`groundup.plan.interconnect`). fp32 elements, as nccl-tests'
default. Unlike nccl-tests, the warm-up is at the smallest size only, and a sweep stops before a size that
would take a collective past its time budget.

Run inside a process group (``groundup launch -- probe`` on a cluster), or from one process:
:func:`run_local` starts ``torchrun --standalone`` with N local ranks of :func:`main` (gloo on CPU, NCCL on
GPUs) and reads back what rank 0 wrote.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")
ELEMENT_BYTES = 4  # fp32


def sweep_sizes(min_bytes: int, max_bytes: int) -> list[int]:
    """Sizes from ``min_bytes`` doubling up to ``max_bytes`` (nccl-tests' ``-b MIN -e MAX -f 2``)."""
    if min_bytes <= 0 or max_bytes < min_bytes:
        raise ValueError(f"need 0 < min_bytes <= max_bytes, got {min_bytes}, {max_bytes}")
    sizes, size = [], min_bytes
    while size <= max_bytes:
        sizes.append(size)
        size *= 2
    return sizes


def element_count(size_bytes: int, world: int) -> int:
    """Elements of a size, rounded down to a multiple of the ranks (nccl-tests' ``(count/nranks)*nranks``)."""
    return size_bytes // ELEMENT_BYTES // world * world


def operation(name: str, send, recv, count: int, world: int):
    """One collective of ``count`` elements (nccl-tests' S) on views of the sweep's two buffers."""
    import torch.distributed as dist

    if name == "all_reduce":
        return lambda: dist.all_reduce(send[:count])
    if name == "all_gather":
        return lambda: dist.all_gather_into_tensor(recv[:count], send[:count // world])
    if name == "reduce_scatter":
        return lambda: dist.reduce_scatter_tensor(recv[:count // world], send[:count])
    if name == "all_to_all":
        return lambda: dist.all_to_all_single(recv[:count], send[:count])
    raise ValueError(f"unknown collective {name!r}; known: {', '.join(COLLECTIVES)}")


def _agree(value: float, device, op: str) -> float:
    """The max, min or sum of a float over the ranks: every rank takes the same decisions from it."""
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op={"max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN, "sum": dist.ReduceOp.SUM}[op])
    return float(t.item())


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_operation(op, device, *, target_seconds: float, max_iters: int = 1000) -> tuple[float, int, float]:
    """(seconds per operation averaged over the ranks, iterations timed, the slowest rank's first call).

    The first call, timed on its own, sets how many back-to-back calls fill ``target_seconds`` (the
    slowest rank's time decides, so all ranks run the same number); a size whose single call already
    takes that long is reported from that call."""
    import torch.distributed as dist

    dist.barrier()
    start = time.perf_counter()
    op()
    _sync(device)
    first = _agree(time.perf_counter() - start, device, "max")
    if first >= target_seconds:
        seconds, iters = first, 1
    else:
        iters = max(1, min(max_iters, math.ceil(target_seconds / max(first, 1e-9))))
        dist.barrier()
        start = time.perf_counter()
        for _ in range(iters):
            op()
        _sync(device)
        seconds = (time.perf_counter() - start) / iters
    world = dist.get_world_size()
    return _agree(seconds, device, "sum") / world, iters, first


def memory_cap(device, world: int, local_world: int) -> int:
    """The largest size this node's ranks can hold twice (send and receive buffers), with room to spare:
    agreed over the ranks (the smallest), so every rank sweeps the same sizes."""
    import torch

    from groundup.probe.machine import available_memory_bytes

    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0] / 3
    else:
        free = (available_memory_bytes() or 8 * 2**30) / (3 * local_world)
    return int(_agree(free, device, "min"))


def sweep(settings: dict[str, Any], device) -> dict[str, Any]:
    """Every collective of ``settings['collectives']`` at every size, on the current process group."""
    import torch
    import torch.distributed as dist

    from groundup.plan.interconnect import collective_bandwidths

    world = dist.get_world_size()
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    cap = memory_cap(device, world, local_world)
    max_bytes = min(int(settings["max_bytes"]), cap)
    sizes = [s for s in sweep_sizes(int(settings["min_bytes"]), max(max_bytes, int(settings["min_bytes"])))
             if element_count(s, world) >= world]
    largest = element_count(sizes[-1], world)
    send = torch.zeros(largest, device=device)  # zeros: pages touched before timing, sums stay finite
    recv = torch.zeros(largest, device=device)
    results, notes = [], []
    budget = float(settings.get("seconds_per_collective") or math.inf)
    for name in settings["collectives"]:
        try:
            # A warm-up at the smallest size (connections, first calls). nccl-tests also warms up at the largest,
            # which would cost several seconds per collective here; each size's first call is timed on its own.
            operation(name, send, recv, element_count(sizes[0], world), world)()
            _sync(device)
        except (RuntimeError, NotImplementedError, ValueError) as e:
            notes.append(f"{name}: skipped ({' '.join(str(e).split())[:200]})")
            continue
        spent = last = 0.0
        for size in sizes:
            count = element_count(size, world)
            if spent + 2 * last > budget:  # the next size takes about twice the last: it would not fit
                notes.append(f"{name}: stopped before {count * ELEMENT_BYTES:,} bytes (time budget "
                             f"{budget:g} s per collective)")
                break
            seconds, iters, first = time_operation(operation(name, send, recv, count, world), device,
                                                   target_seconds=float(settings["target_seconds"]))
            algbw, busbw = collective_bandwidths(name, count * ELEMENT_BYTES, seconds, world)
            results.append({"collective": name, "bytes": count * ELEMENT_BYTES, "count": count, "seconds": seconds,
                            "algbw": algbw, "busbw": busbw, "iters": iters})
            last = first * (1 + (iters if iters > 1 else 0))  # agreed figures: every rank stops together
            spent += last
    if max_bytes < int(settings["max_bytes"]):
        notes.append(f"largest size capped at {max_bytes:,} bytes by free memory")
    return {"backend": dist.get_backend(), "ranks": world, "local_ranks": local_world, "dtype": "float32",
            "device": device.type, "results": results, "notes": notes,
            "bus_factors": {"all_reduce": "2(n-1)/n", "all_gather": "(n-1)/n", "reduce_scatter": "(n-1)/n",
                            "all_to_all": "(n-1)/n"}}


def main(argv: list[str] | None = None) -> int:
    """A torchrun worker: ``python -m groundup.probe.collectives SETTINGS_JSON``; rank 0 writes the sweep
    to ``settings['out']``."""
    import torch

    from groundup.parallel.env import init_distributed

    settings = json.loads((argv if argv is not None else sys.argv[1:])[0])
    env = init_distributed(torch.device(settings.get("device", "cpu")))
    result = sweep(settings, env.device)
    if env.is_main:
        from groundup.artifacts import write_json

        write_json(Path(settings["out"]), result)
    import torch.distributed as dist

    dist.destroy_process_group()
    return 0


def run_local(ranks: int, settings: dict[str, Any], *, timeout: float = 600.0) -> dict[str, Any]:
    """Start ``ranks`` local processes under ``torchrun --standalone`` running the sweep; returns rank 0's
    result. CPU ranks share the cores (OMP_NUM_THREADS = cores / ranks unless set)."""
    import tempfile

    import groundup

    with tempfile.TemporaryDirectory(prefix="groundup-probe-") as tmp:
        out = Path(tmp) / "collectives.json"
        src = str(Path(groundup.__file__).resolve().parents[1])  # where this groundup is imported from
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)}
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // ranks)))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
               "-m", "groundup.probe.collectives", json.dumps({**settings, "out": str(out)})]
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise RuntimeError(f"collective sweep over {ranks} ranks took more than {timeout:g} s") from e
        if done.returncode != 0 or not out.is_file():
            tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-6:])
            raise RuntimeError(f"collective sweep over {ranks} ranks failed (exit {done.returncode}): {tail}")
        return json.loads(out.read_text(encoding="utf-8"))


def format_table(sweep_result: dict[str, Any]) -> str:
    """The sweep as nccl-tests prints it: size (B), count, time (us), algbw and busbw (GB/s)."""
    lines = [f"# {sweep_result.get('backend')}, {sweep_result.get('ranks')} ranks, float32",
             f"# {'collective':<15}{'size (B)':>12}{'count':>12}{'time (us)':>12}{'algbw':>9}{'busbw':>9}"]
    for r in sweep_result.get("results", []):
        lines.append(f"  {r['collective']:<15}{r['bytes']:>12}{r['count']:>12}{r['seconds'] * 1e6:>12.1f}"
                     f"{r['algbw'] / 1e9:>9.3f}{r['busbw'] / 1e9:>9.3f}")
    lines += [f"# {note}" for note in sweep_result.get("notes", [])]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
