"""Plan against a real run: does `groundup plan` predict how long a training run took?

    python benchmarks/plan_vs_run.py runs/tiny [--peak-flops F | --probe probe.json] [--out results.json]

Reads the run dir: ``model/config.json`` (the ModelConfig), ``summary.json`` (train_seconds,
tokens_seen), ``metrics.jsonl`` (per-step ``mfu``; in the run dir or its ``model/``; else the summary's
``mfu_median``) and, if present, the sequence length from ``model/train.yaml``. Predicts the training time as
flops_per_token · tokens_seen / (peak · median MFU), with the peak the CPU matmul rate measured now
(or the one the run recorded), and prints predicted against real seconds and their ratio. The target
is a ratio within a factor 1.5 either way.

With ``--probe probe.json`` the prediction is `groundup plan --hardware probe.json`'s wall-clock time
(the plan of the run's model, tokens and sequence length on the probed device, at the run's median MFU),
and the target is 1.15: the run's MFU was measured against the peak its start found, so the ratio says
how well the probe's matmul peak stands for it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from groundup.model.config import ModelConfig
from groundup.plan.compute import flops_per_token, training_seconds
from groundup.plan.hardware import measure_cpu_matmul_flops

PEAK_KEYS = ("peak_flops", "peak_flops_per_s", "cpu_matmul_flops")
"""Keys under which a run may have recorded the peak its MFU divides by; used before measuring anew."""


def predict_train_seconds(model: ModelConfig, tokens_seen: float, *, peak_flops: float, mfu: float,
                          seq_len: int | None = None) -> float:
    """Predicted training seconds: flops_per_token(model, seq_len) · tokens_seen / (peak_flops · mfu)."""
    return training_seconds(model, tokens_seen, peak_flops_per_s=peak_flops, mfu=mfu, seq_len=seq_len)


def median_mfu(lines: list[str], source: str = "metrics.jsonl") -> float:
    """Median of the positive ``mfu`` values of metrics.jsonl lines; malformed lines are named."""
    values = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{source}: line {number} is not JSON ({e.msg})") from e
        mfu = record.get("mfu")
        if isinstance(mfu, (int, float)) and mfu > 0:
            values.append(float(mfu))
    if not values:
        raise ValueError(f"{source}: no positive 'mfu' values to take a median of")
    return statistics.median(values)


def _find_seq_len(data: Any) -> int | None:
    """The first ``seq_len`` (or else ``block_size``) anywhere in a nested train.yaml mapping."""
    if isinstance(data, dict):
        for key in ("seq_len", "block_size"):
            if isinstance(data.get(key), int) and data[key] > 0:
                return data[key]
        for value in data.values():
            found = _find_seq_len(value)
            if found:
                return found
    return None


def load_run(run: Path) -> dict[str, Any]:
    """The inputs of the comparison, read from a run dir."""
    summary_path = run / "summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"{run}: no summary.json (is this a run dir?)")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    for key in ("train_seconds", "tokens_seen"):
        if key not in summary:
            raise ValueError(f"{summary_path}: missing {key!r}")
    # The model dir is <run>/model; a summary may name another one.
    model_dirs = [run / "model"] + ([Path(summary["model_dir"])] if summary.get("model_dir") else [])
    model_dir = next((d for d in model_dirs if (d / "config.json").is_file()), None)
    if model_dir is None:
        raise FileNotFoundError(f"{run}: no model/config.json")
    model = ModelConfig(**json.loads((model_dir / "config.json").read_text(encoding="utf-8")))
    metrics_path = next((p for p in (run / "metrics.jsonl", model_dir / "metrics.jsonl") if p.is_file()), None)
    if metrics_path is not None:
        mfu = median_mfu(metrics_path.read_text(encoding="utf-8").splitlines(), str(metrics_path))
    elif isinstance(summary.get("mfu_median"), (int, float)) and summary["mfu_median"] > 0:
        mfu = float(summary["mfu_median"])
    else:
        raise FileNotFoundError(f"{run}: no metrics.jsonl with 'mfu' and no mfu_median in summary.json")
    seq_len = None
    train_yaml = model_dir / "train.yaml"
    if train_yaml.is_file():
        import yaml

        seq_len = _find_seq_len(yaml.safe_load(train_yaml.read_text(encoding="utf-8")))
    recorded_peak = next((float(summary[k]) for k in PEAK_KEYS if isinstance(summary.get(k), (int, float))), None)
    return {"model": model, "train_seconds": float(summary["train_seconds"]),
            "tokens_seen": float(summary["tokens_seen"]), "mfu": mfu, "seq_len": seq_len,
            "recorded_peak": recorded_peak}


def planned_seconds(inputs: dict[str, Any], probe_path: Path) -> tuple[float, float]:
    """(seconds, peak) of `groundup plan --hardware PROBE`'s wall clock for the run's model, tokens, sequence
    length and median MFU on one device (fp32 on a CPU, as groundup trains there; bf16 on a GPU)."""
    from groundup.plan import hardware
    from groundup.plan import run as plan_stage

    probe = hardware.read_probe(probe_path)
    acc = hardware.accelerator_from_probe(probe, source=str(probe_path))
    model = inputs["model"]
    precision = "fp32" if (probe.get("device") or {}).get("type") != "cuda" else "bf16-mixed"
    cfg = plan_stage.Config(tokens=inputs["tokens_seen"], hardware=probe_path, mfu=inputs["mfu"], precision=precision,
                            seq_len=inputs["seq_len"])
    plan = plan_stage.build_plan(cfg, model, acc)  # what `groundup plan` prints, without writing a plan dir
    return plan["time_cost"]["wall_clock_hours"] * 3600, plan["hardware"]["peak_used"]


def compare(run: Path, *, peak_flops: float | None = None, probe: Path | None = None) -> dict[str, Any]:
    inputs = load_run(run)
    if probe is not None:
        predicted, peak = planned_seconds(inputs, probe)
        model = inputs["model"]
        ratio = predicted / inputs["train_seconds"]
        return {"run": str(run), "model": model.name, "tokens_seen": inputs["tokens_seen"],
                "seq_len": inputs["seq_len"] or model.block_size, "flops_per_token": flops_per_token(model, inputs["seq_len"]),
                "peak_flops": peak, "peak_source": f"probe {probe}", "recorded_peak": inputs["recorded_peak"],
                "median_mfu": inputs["mfu"], "predicted_train_seconds": predicted,
                "real_train_seconds": inputs["train_seconds"], "ratio_predicted_over_real": ratio,
                "within_1_15x": 1 / 1.15 <= ratio <= 1.15, "within_1_5x": 1 / 1.5 <= ratio <= 1.5}
    if peak_flops is not None:
        peak, peak_source = peak_flops, "given"
    elif inputs["recorded_peak"] is not None:
        peak, peak_source = inputs["recorded_peak"], "recorded by the run"
    else:
        peak, peak_source = measure_cpu_matmul_flops(min_seconds=2.0), "measured now (fp32 2048x2048 matmul)"
    model = inputs["model"]
    predicted = predict_train_seconds(model, inputs["tokens_seen"], peak_flops=peak, mfu=inputs["mfu"],
                                      seq_len=inputs["seq_len"])
    return {
        "run": str(run), "model": model.name, "tokens_seen": inputs["tokens_seen"],
        "seq_len": inputs["seq_len"] or model.block_size,
        "flops_per_token": flops_per_token(model, inputs["seq_len"]),
        "peak_flops": peak, "peak_source": peak_source, "median_mfu": inputs["mfu"],
        "predicted_train_seconds": predicted, "real_train_seconds": inputs["train_seconds"],
        "ratio_predicted_over_real": predicted / inputs["train_seconds"],
        "within_1_5x": 1 / 1.5 <= predicted / inputs["train_seconds"] <= 1.5,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run dir (holding model/, summary.json, metrics.jsonl)")
    parser.add_argument("--peak-flops", type=float, default=None, help="peak FLOP/s the MFU divides by")
    parser.add_argument("--probe", type=Path, default=None, help="predict with `groundup plan --hardware PROBE`")
    parser.add_argument("--out", type=Path, default=None, help="JSON result (default: RUN/plan_vs_run.json)")
    args = parser.parse_args(argv)
    result = compare(args.run, peak_flops=args.peak_flops, probe=args.probe)
    width = max(len(k) for k in result)
    for key, value in result.items():
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"{key.ljust(width)}  {shown}")
    out = args.out or args.run / "plan_vs_run.json"
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0 if result.get("within_1_15x", result["within_1_5x"]) else 1


if __name__ == "__main__":
    sys.exit(main())
