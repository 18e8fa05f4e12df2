"""benchmarks/plan_vs_run.py: the prediction of a run's training time, on a fabricated run dir."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from groundup.model.config import ModelConfig
from groundup.plan.compute import flops_per_token

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "plan_vs_run.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("plan_vs_run", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prediction_is_flops_over_peak_times_mfu(bench):
    cfg = ModelConfig.from_name("tiny-gpt2")
    seconds = bench.predict_train_seconds(cfg, 2e6, peak_flops=50e9, mfu=0.25, seq_len=128)
    assert seconds == pytest.approx(flops_per_token(cfg, 128) * 2e6 / (50e9 * 0.25))


def test_median_mfu_skips_blank_lines_and_names_bad_ones(bench):
    lines = [json.dumps({"step": i, "mfu": m}) for i, m in enumerate([0.1, 0.3, 0.2])] + [""]
    assert bench.median_mfu(lines) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="line 2"):
        bench.median_mfu(['{"mfu": 0.1}', "{oops"])
    with pytest.raises(ValueError, match="no positive"):
        bench.median_mfu(['{"loss": 3.0}'])


def make_run(root: Path, cfg: ModelConfig, *, train_seconds: float, tokens: float, mfu: float, peak: float):
    (root / "model").mkdir(parents=True)
    from dataclasses import asdict

    (root / "model" / "config.json").write_text(json.dumps(asdict(cfg)))
    (root / "model" / "train.yaml").write_text("data:\n  seq_len: 128\n")
    (root / "summary.json").write_text(json.dumps({"train_seconds": train_seconds, "tokens_seen": tokens,
                                                   "peak_flops": peak}))
    lines = [{"step": s, "tokens": s * 1000, "loss": 5.0, "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 1e4,
              "mfu": mfu} for s in range(1, 6)]
    (root / "model" / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")


def test_compare_on_a_fabricated_run(bench, tmp_path, capsys):
    cfg = ModelConfig.from_name("tiny-gpt2")
    real = flops_per_token(cfg, 128) * 1e6 / (40e9 * 0.3) * 1.2  # a run 20% slower than its MFU implies
    make_run(tmp_path / "run", cfg, train_seconds=real, tokens=1e6, mfu=0.3, peak=40e9)
    result = bench.compare(tmp_path / "run")
    assert result["peak_source"] == "recorded by the run" and result["seq_len"] == 128
    assert result["ratio_predicted_over_real"] == pytest.approx(1 / 1.2)
    assert result["within_1_5x"]
    assert bench.main([str(tmp_path / "run")]) == 0
    assert "ratio_predicted_over_real" in capsys.readouterr().out
    assert (tmp_path / "run" / "plan_vs_run.json").is_file()


def test_missing_files_are_named(bench, tmp_path):
    with pytest.raises(FileNotFoundError, match="summary.json"):
        bench.compare(tmp_path)
    (tmp_path / "summary.json").write_text('{"train_seconds": 1.0, "tokens_seen": 10}')
    with pytest.raises(FileNotFoundError, match="model/config.json"):
        bench.compare(tmp_path)


def test_summary_mfu_median_is_the_fallback(bench, tmp_path):
    cfg = ModelConfig.from_name("tiny-llama")
    make_run(tmp_path, cfg, train_seconds=10.0, tokens=1e5, mfu=0.3, peak=40e9)
    (tmp_path / "model" / "metrics.jsonl").unlink()
    summary = json.loads((tmp_path / "summary.json").read_text())
    (tmp_path / "summary.json").write_text(json.dumps({**summary, "mfu_median": 0.2}))
    result = bench.compare(tmp_path)
    assert result["median_mfu"] == 0.2


def test_compare_with_a_probe_is_groundup_plans_time(bench, tmp_path):
    cfg = ModelConfig.from_name("tiny-gpt2")
    real = flops_per_token(cfg, 128) * 1e6 / (40e9 * 0.3) * 1.1
    make_run(tmp_path / "run", cfg, train_seconds=real, tokens=1e6, mfu=0.3, peak=40e9)
    probe = tmp_path / "probe.json"
    probe.write_text(json.dumps({"stage": "probe", "device": {"type": "cpu", "name": "a CPU"},
                                 "matmul": {"fp32": {"flops": 40e9}, "bf16": {"flops": 80e9}}}))
    result = bench.compare(tmp_path / "run", probe=probe)
    assert result["peak_flops"] == 40e9 and result["peak_source"] == f"probe {probe}"  # fp32: CPU training
    assert result["ratio_predicted_over_real"] == pytest.approx(1 / 1.1)
    assert result["within_1_15x"]
    assert bench.main([str(tmp_path / "run"), "--probe", str(probe), "--out", str(tmp_path / "r.json")]) == 0
