"""The probe against the field's own yardsticks, in one run: its matmul figure against torch.utils.benchmark on
the same products, its triad against a numpy triad on arrays of the same size, and how long `groundup probe`
and `groundup probe --quick` take.

    python benchmarks/probe_check.py [--size 2048] [--array-mib 256] [--dtypes fp32,bf16] [--time-probes]

Matmul: the probe's best product over --seconds against torch.utils.benchmark's ``blocked_autorange``
on the same operands: its fastest block, since the probe reports its fastest call (a neighbour only ever
slows a run down), with the median printed beside it. Triad: the probe's ``torch.add(b, c, alpha=s,
out=a)`` against numpy doing ``a = b + s*c`` in cache-sized blocks (one temporary block, so it moves the
same three arrays per pass as STREAM counts) and numpy's one-pass ``a = b + c`` (STREAM's Add, the same
traffic), and STREAM's triad in C where a compiler builds it (gcc -O3 -march=native, OpenMP), the
kernels taking turns for --rounds rounds (shared memory bandwidth swings with the
neighbours), the best pass of each; the probe with torch's threads (its figure) and with one thread, numpy's. Targets: matmul within 5%,
triad within 10%. With --time-probes it also runs both probes as the command line does (their wall time,
start-up included, and the time each reports). Prints a table and writes JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
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
                     "peer": fastest / 1e9, "peer_name": "torch.utils.benchmark fastest block",
                     "peer_median": median / 1e9, "ratio": probe / fastest, "ratio_to_median": probe / median,
                     "target": 0.05})
    return rows


def numpy_stream(array_bytes: int, kernel: str, block: int = 1 << 16):
    """A STREAM kernel in numpy over three fp32 arrays: 'triad' (a = b + s*c, in cache-sized blocks: numpy has
    no fused multiply-add, and a whole temporary would be a fourth array in memory) or 'add' (a = b + c,
    STREAM's Add: one ufunc pass, the same traffic). Returns (one pass, bytes counted per pass)."""
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
    return once, 3.0 * n * 4


def torch_triad(array_bytes: int):
    """The probe's own kernel (``hardware.measure_triad_bandwidth``: ``torch.add(b, c, alpha=s, out=a)``)."""
    n = array_bytes // 4
    a, b, c = torch.zeros(n), torch.full((n,), 1.0), torch.full((n,), 2.0)
    once = lambda: torch.add(b, c, alpha=3.0, out=a)  # noqa: E731
    once()
    return once, 3.0 * n * 4


C_TRIAD = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
int main(int argc, char **argv) {
    long n = atol(argv[1]) / 4; int reps = atoi(argv[2]); double best = 1e30;
    float *a = malloc(n * 4), *b = malloc(n * 4), *c = malloc(n * 4);
    #pragma omp parallel for
    for (long i = 0; i < n; i++) { a[i] = 0.0f; b[i] = 1.0f; c[i] = 2.0f; }
    for (int r = 0; r < reps; r++) {
        double start = now();
        #pragma omp parallel for
        for (long i = 0; i < n; i++) a[i] = b[i] + 3.0f * c[i];
        double d = now() - start; if (d < best) best = d;
    }
    printf("%.6f %.1f\n", best, a[n / 2]);
    return 0;
}
"""


def c_triad(array_bytes: int, work: Path) -> tuple[Callable[[int, int], float], str] | None:
    """STREAM's triad as STREAM writes it, in C (gcc -O3 -march=native, OpenMP): a run of ``reps`` passes on
    ``threads`` threads gives its best pass in seconds. None when no C compiler builds it."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        return None
    src, exe = work / "triad.c", work / "triad"
    src.write_text(C_TRIAD)
    if subprocess.run([cc, "-O3", "-march=native", "-fopenmp", str(src), "-o", str(exe)],
                      capture_output=True).returncode != 0:
        return None

    def best(threads: int, reps: int) -> float:
        done = subprocess.run([str(exe), str(array_bytes), str(reps)], capture_output=True, text=True, check=True,
                              env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        return float(done.stdout.split()[0])
    return best, f"C triad ({Path(cc).name} -O3 -march=native, OpenMP)"


def triad_rows(array_bytes: int, reps: int, rounds: int) -> list[dict]:
    """The probe's triad with torch's threads (what it reports) and with one thread (numpy's), against numpy's.

    Memory bandwidth on a shared machine swings with the neighbours' traffic (2x between minutes), so the
    kernels take turns: ``rounds`` rounds, each timing every kernel ``reps`` times, best pass of all rounds.
    The probe's figure itself comes from ``hardware.measure_triad_bandwidth`` once, beside the interleaved one."""
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        c_kernel = c_triad(array_bytes, Path(tmp))
        return _triad_rows(array_bytes, reps, rounds, threads, c_kernel)


def _triad_rows(array_bytes: int, reps: int, rounds: int, threads: int, c_kernel) -> list[dict]:
    kernels = {"probe": torch_triad(array_bytes), "numpy triad (blocked), 1 thread": numpy_stream(array_bytes, "triad"),
               "numpy add (STREAM Add), 1 thread": numpy_stream(array_bytes, "add")}
    best = {f"probe, {threads} thr": float("inf"), "probe, 1 thr": float("inf")} | {k: float("inf") for k in kernels
                                                                                      if k != "probe"}
    for _ in range(rounds):
        for name, (once, _counted) in kernels.items():
            for label, nthreads in ([(f"probe, {threads} thr", threads), ("probe, 1 thr", 1)] if name == "probe"
                                    else [(name, threads)]):
                torch.set_num_threads(nthreads)
                try:
                    for _ in range(reps):
                        start = time.perf_counter()
                        once()
                        best[label] = min(best[label], time.perf_counter() - start)
                finally:
                    torch.set_num_threads(threads)
        if c_kernel is not None:
            for label, nthreads in ((f"C, {threads} thr", threads), ("C, 1 thr", 1)):
                best[label] = min(best.get(label, float("inf")), c_kernel[0](nthreads, reps))
    counted = 3.0 * (array_bytes // 4) * 4
    rate = {k: counted / v for k, v in best.items()}
    reported = hardware.measure_triad_bandwidth.__wrapped__(array_bytes, reps)
    name = f"triad 3 x {array_bytes >> 20} MiB (GB/s)"
    rows = []
    for peer_name in ("numpy triad (blocked), 1 thread", "numpy add (STREAM Add), 1 thread"):
        for label in (f"probe, {threads} thr", "probe, 1 thr"):
            rows.append({"figure": f"{name}, {label.split(', ')[1]}", "probe": rate[label] / 1e9,
                         "peer": rate[peer_name] / 1e9, "peer_name": peer_name, "ratio": rate[label] / rate[peer_name],
                         "target": 0.10})
    if c_kernel is not None:
        for nthreads in (threads, 1):
            label = f"probe, {nthreads} thr"
            rows.append({"figure": f"{name}, {nthreads} thr", "probe": rate[label] / 1e9,
                         "peer": rate[f"C, {nthreads} thr"] / 1e9, "peer_name": f"{c_kernel[1]}, {nthreads} thr",
                         "ratio": rate[label] / rate[f"C, {nthreads} thr"], "target": 0.10})
    rows.append({"figure": f"{name}, probe's own call", "probe": reported / 1e9, "peer": rate[f"probe, {threads} thr"] / 1e9,
                 "peer_name": "the same kernel, interleaved", "ratio": reported / rate[f"probe, {threads} thr"],
                 "target": 0.10})
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
    parser.add_argument("--reps", type=int, default=3, help="timed passes of each kernel per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds in which the triad kernels take turns")
    parser.add_argument("--time-probes", action="store_true", help="also time `groundup probe` and `--quick`")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/probe_check.json"))
    args = parser.parse_args(argv)
    rows = matmul_rows(args.size, args.dtypes.split(","), args.seconds)
    rows += triad_rows(args.array_mib << 20, args.reps, args.rounds)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; numpy {np.__version__}")
    print(f"{'figure':<34}{'probe':>10}{'peer':>10}{'probe/peer':>12}  peer")
    for r in rows:
        print(f"{r['figure']:<34}{r['probe']:>10.2f}{r['peer']:>10.2f}{r['ratio']:>12.3f}  {r['peer_name']}"
              f"{'  (median ' + format(r['peer_median'], '.2f') + ')' if 'peer_median' in r else ''}")
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
