"""The probe against the field's own yardsticks, in one run: its matmul figure against torch.utils.benchmark on
the same products, its triad against a numpy triad on arrays of the same size, and how long `groundup probe`
and `groundup probe --quick` take.

    python benchmarks/probe_check.py [--size 2048] [--array-mib 256] [--dtypes fp32,bf16] [--time-probes]

Matmul: the probe's best product over --seconds against torch.utils.benchmark's ``blocked_autorange``
median (and its fastest block) on the same operands. Triad: the probe's ``torch.add(b, c, alpha=s,
out=a)`` against numpy doing ``a = b + s*c`` in cache-sized blocks (one temporary block, so it moves the
same three arrays per pass as STREAM counts) and numpy's one-pass ``a = b + c`` (STREAM's Add, the same
traffic), the best of --reps passes each; the probe with torch's threads (its figure) and with one
thread, numpy's. Targets: matmul within 5%,
triad within 10%. With --time-probes it also runs both probes as the command line does (their wall time,
start-up included, and the time each reports). Prints a table and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.utils.benchmark as tbench

from groundup.plan import hardware


def matmul_rows(size: int, dtypes: list[str], seconds: float) -> list[dict]:
    rows = []
    for dtype in dtypes:
        operation = hardware.matmul_operation(size, dtype, "cpu")
        probe = 2.0 * size**3 / hardware.best_seconds(operation, device="cpu", reps=3, min_seconds=seconds)
        timer = tbench.Timer(stmt="operation()", globals={"operation": operation}, num_threads=torch.get_num_threads())
        measurement = timer.blocked_autorange(min_run_time=seconds)
        median = 2.0 * size**3 / measurement.median
        fastest = 2.0 * size**3 / min(measurement.times)
        rows.append({"figure": f"matmul {dtype} {size}x{size} (GFLOP/s)", "probe": probe / 1e9,
                     "peer": median / 1e9, "peer_name": "torch.utils.benchmark median",
                     "peer_fastest_block": fastest / 1e9, "ratio": probe / median, "target": 0.05})
    return rows


def numpy_stream(array_bytes: int, reps: int, kernel: str, block: int = 1 << 16) -> float:
    """Bytes/s of a STREAM kernel in numpy, three fp32 arrays counted per pass: 'triad' (a = b + s*c, in
    cache-sized blocks: numpy has no fused multiply-add, and a whole temporary would be a fourth array in
    memory) or 'add' (a = b + c, STREAM's Add: one ufunc pass, the same traffic)."""
    n = array_bytes // 4
    a = np.zeros(n, np.float32)
    b = np.full(n, 1.0, np.float32)
    c = np.full(n, 2.0, np.float32)
    scratch = np.empty(block, np.float32)

    def triad() -> None:
        for i in range(0, n, block):
            j = min(i + block, n)
            t = scratch[:j - i]
            np.multiply(c[i:j], 3.0, out=t)
            np.add(b[i:j], t, out=a[i:j])

    once = triad if kernel == "triad" else lambda: np.add(b, c, out=a)
    once()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        once()
        best = min(best, time.perf_counter() - start)
    return 3.0 * n * 4 / best


def triad_rows(array_bytes: int, reps: int) -> list[dict]:
    """The probe's triad with torch's threads (what it reports) and with one thread (numpy's), against numpy's."""
    threads = torch.get_num_threads()
    probe = hardware.measure_triad_bandwidth(array_bytes, reps)
    torch.set_num_threads(1)
    try:
        probe_one = hardware.measure_triad_bandwidth.__wrapped__(array_bytes, reps)  # not the cached figure
    finally:
        torch.set_num_threads(threads)
    name = f"triad 3 x {array_bytes >> 20} MiB (GB/s)"
    rows = []
    for kernel, peer_name in (("triad", "numpy triad (blocked), 1 thread"), ("add", "numpy add (STREAM Add), 1 thread")):
        peer = numpy_stream(array_bytes, reps, kernel)
        rows += [{"figure": f"{name}, {threads} thr", "probe": probe / 1e9, "peer": peer / 1e9, "peer_name": peer_name,
                  "ratio": probe / peer, "target": 0.10},
                 {"figure": f"{name}, 1 thr", "probe": probe_one / 1e9, "peer": peer / 1e9, "peer_name": peer_name,
                  "ratio": probe_one / peer, "target": 0.10}]
    return rows


def time_probe(*flags: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "probe.json"
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "groundup.cli", "probe", "--out", str(out), "--cache", "false",
                               *flags], capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"groundup probe {' '.join(flags)} failed: {done.stderr[-2000:]}")
        probe = json.loads(out.read_text())
    return {"figure": f"groundup probe {' '.join(flags)}".strip(), "wall_seconds": wall,
            "probe_seconds": probe["seconds_total"], "parts": probe.get("seconds"), "summary": done.stdout}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--dtypes", default="fp32", help="comma-separated matmul formats (CPU: fp32, bf16, fp16)")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing window of each matmul figure")
    parser.add_argument("--array-mib", type=int, default=256)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--time-probes", action="store_true", help="also time `groundup probe` and `--quick`")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/probe_check.json"))
    args = parser.parse_args(argv)
    rows = matmul_rows(args.size, args.dtypes.split(","), args.seconds)
    rows += triad_rows(args.array_mib << 20, args.reps)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; numpy {np.__version__}")
    print(f"{'figure':<34}{'probe':>10}{'peer':>10}{'probe/peer':>12}  peer")
    for r in rows:
        print(f"{r['figure']:<34}{r['probe']:>10.2f}{r['peer']:>10.2f}{r['ratio']:>12.3f}  {r['peer_name']}"
              f"{'  (fastest block ' + format(r['peer_fastest_block'], '.2f') + ')' if 'peer_fastest_block' in r else ''}")
    timings = []
    if args.time_probes:
        for flags in (("--quick",), ()):
            t = time_probe(*flags)
            timings.append(t)
            print(f"{t['figure']:<34} wall {t['wall_seconds']:.1f} s (start-up included), probe {t['probe_seconds']:.1f} s")
            print(t["summary"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "probe_timings": timings}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
