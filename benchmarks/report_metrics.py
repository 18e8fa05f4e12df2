"""Report metrics: load and draw a 1,000,000-line metrics.jsonl, groundup's streaming loader against the naive way.

Writes a metrics.jsonl like the training loop's (train lines with loss, lr, grad_norm, tokens/s, MFU;
an evaluation line every 1,000 steps; a truncated last line, as a killed run leaves), then, each in a
fresh process so peak memory is its own:

- groundup: ``groundup.report.metrics.load_metrics`` (chunked parsing, min/max buckets per curve)
  and the report's pretraining figures (loss against steps, tokens and time; bits per byte;
  learning rate, gradient norm, tokens/s, MFU);
- naive: every line parsed into a list of dicts (bad lines skipped), then the same curves drawn
  with every point, as a first plotting script does.

Each is run ``--repeats`` times; the table shows medians of wall and CPU seconds and peak memory,
and groundup's ratio to the naive way. The target: groundup under 10 s wall, in bounded memory.

    python benchmarks/report_metrics.py [--lines 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def write_metrics(path: Path, lines: int) -> None:
    rng = random.Random(0)
    with open(path, "w", encoding="utf-8") as f:
        for step in range(1, lines + 1):
            if step % 1000 == 0:
                record = {"step": step, "tokens": step * 4096, "elapsed_s": round(step * 0.05, 3),
                          "val_loss": round(3 + 6 / (1 + step / 2e4), 6), "val_bits_per_byte": 1.2}
            else:
                record = {"step": step, "tokens": step * 4096, "loss": round(3 + 6 / (1 + step / 2e4) + rng.random() * .2, 6),
                          "lr": 6e-4 * min(1.0, step / 2000), "grad_norm": round(0.3 + rng.random(), 6),
                          "tokens_per_s": round(80000 + rng.random() * 5000, 2), "elapsed_s": round(step * 0.05, 3),
                          "mfu": round(0.4 + rng.random() * 0.02, 4)}
            f.write(json.dumps(record) + "\n")
        f.write('{"step": ' + str(lines + 1) + ', "tokens": 12')  # killed mid-write


def worker_groundup(path: Path) -> dict:
    from groundup.report import plots
    from groundup.report.metrics import load_metrics

    m = load_metrics(path)
    runs = [("run", m)]
    pngs = [
        plots.curves_figure("Loss", runs, [plots.Panel(title="Loss", ylabel="nats/token", keys=["loss", "val_loss"])],
                            axes=["step", "tokens", "elapsed_s"]),
        plots.bits_per_byte_figure(runs, [{"gzip_bits_per_byte": 2.0, "xz_bits_per_byte": 1.7}], [None]),
        plots.curves_figure("Optimization", runs, [
            plots.Panel(title="Learning rate", ylabel="lr", keys=["lr"]),
            plots.Panel(title="Gradient norm", ylabel="norm", keys=["grad_norm"]),
            plots.Panel(title="Throughput", ylabel="tokens/s", keys=["tokens_per_s"]),
            plots.Panel(title="MFU", ylabel="MFU", keys=["mfu"], percent=True)], axes=["step"], columns=2),
    ]
    return {"records": m.lines, "bad_lines": m.bad_lines, "points_drawn": sum(len(s) for s in m.series.values()),
            "png_bytes": sum(len(p) for p in pngs)}


def worker_naive(path: Path) -> dict:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records, bad = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                bad += 1
    png = 0
    figures = [[("loss", "step"), ("loss", "tokens"), ("loss", "elapsed_s")], [("val_bits_per_byte", "step"),
               ("val_bits_per_byte", "tokens")], [("lr", "step"), ("grad_norm", "step"), ("tokens_per_s", "step"),
                                                  ("mfu", "step")]]
    points = 0
    for panels in figures:
        fig, axs = plt.subplots(1, len(panels), figsize=(11, 3.5))
        for ax, (key, x) in zip(axs, panels, strict=True):
            xs = [r[x] for r in records if key in r]
            ys = [r[key] for r in records if key in r]
            ax.plot(xs, ys)
            points += len(ys)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
        png += len(buf.getvalue())
    return {"records": len(records), "bad_lines": bad, "points_drawn": points, "png_bytes": png}


def run_worker(method: str, path: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", method, str(path)], check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        method, path = args.worker
        t0, c0 = time.perf_counter(), time.process_time()
        result = (worker_groundup if method == "groundup" else worker_naive)(Path(path))
        result.update(seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0,
                      peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        print(json.dumps(result))
        return None

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "metrics.jsonl"
        t0 = time.perf_counter()
        write_metrics(path, args.lines)
        size = path.stat().st_size
        print(f"wrote {args.lines:,} lines ({size / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f} s", flush=True)
        runs: dict[str, list[dict]] = {"groundup": [], "naive": []}
        for _ in range(args.repeats):  # interleaved, so both see the same machine load
            for method in runs:
                runs[method].append(run_worker(method, path))
                print(f"  {method}: {runs[method][-1]['seconds']:.2f} s", flush=True)

    def med(method, key):
        return statistics.median(r[key] for r in runs[method])

    print(f"\n{'':10} {'wall s':>8} {'CPU s':>8} {'peak MB':>8} {'points drawn':>13}")
    for method in runs:
        print(f"{method:10} {med(method, 'seconds'):8.2f} {med(method, 'cpu_seconds'):8.2f} {med(method, 'peak_mb'):8.0f}"
              f" {runs[method][0]['points_drawn']:13,}")
    ratio_wall = med("naive", "seconds") / med("groundup", "seconds")
    ratio_mem = med("naive", "peak_mb") / med("groundup", "peak_mb")
    print(f"groundup is {ratio_wall:.2f}x as fast as the naive way, with {ratio_mem:.2f}x less peak memory; "
          f"target: under 10 s -> {'met' if med('groundup', 'seconds') < 10 else 'NOT met'}")
    result = {"lines": args.lines, "bytes": size, "runs": runs, "speedup_wall": ratio_wall, "memory_ratio": ratio_mem,
              "groundup_median_seconds": med("groundup", "seconds"), "machine": platform.platform(),
              "cpus": os.cpu_count()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "report_metrics.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
