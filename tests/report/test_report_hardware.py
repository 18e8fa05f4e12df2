"""The report's Hardware section: the probe a run used, a probe.json's collective sweep, telemetry curves."""

from __future__ import annotations

import json
import shutil
import types

from test_report_page import parse

from groundup.report import run as report_stage


def fake_nvml(temperatures: list[float]) -> types.ModuleType:
    """pynvml's names for one GPU whose temperature follows ``temperatures``, one value per sample."""
    nvml = types.ModuleType("pynvml")
    readings = iter(temperatures)
    nvml.nvmlInit = nvml.nvmlShutdown = lambda: None
    nvml.nvmlDeviceGetCount = lambda: 1
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i
    nvml.nvmlDeviceGetTemperature = lambda h, kind: next(readings)
    nvml.nvmlDeviceGetPowerUsage = lambda h: 300_000
    nvml.nvmlDeviceGetClockInfo = lambda h, kind: 1800
    nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=2**34, total=2**36)
    nvml.nvmlDeviceGetCurrentClocksThrottleReasons = lambda h: 0
    return nvml


def sweep() -> dict:
    rows = []
    for name, factor in (("all_reduce", 1.0), ("all_gather", 0.5)):
        for k in range(5):
            size = 1024 * 4**k
            seconds = 1e-4 + size / 2e9
            rows.append({"collective": name, "bytes": size, "count": size // 4, "seconds": seconds,
                         "algbw": size / seconds, "busbw": size / seconds * factor, "iters": 10})
    return {"backend": "gloo", "ranks": 2, "results": rows, "notes": []}


def test_probe_sweep_and_telemetry_in_the_report(tiny_run, tmp_path):
    from groundup.train.logging import TelemetryWriter

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    writer = TelemetryWriter(run / "model" / "telemetry.jsonl", 1, None, nvml=fake_nvml([60, 70, 84, 80, 75]))
    for step in range(1, 6):
        writer.write({"step": step * 6, "tokens": step * 1536, "loss": 5.0, "elapsed_s": step * 0.5})
    writer.close()
    probe = {"stage": "probe", "created": "2025-06-01T12:00:00", "quick": False,
             "device": {"type": "cpu", "name": "Test CPU 9000"},
             "matmul": {"fp32": {"flops": 1.5e11, "size": 2048}, "bf16": {"flops": 3e11, "size": 2048},
                        "tf32": {"skipped": "TF32 is a CUDA tensor-core format"}},
             "memory_bandwidth": {"bytes_per_s": 12.5e9}, "shard_read": {"bytes_per_s": 2.5e9},
             "collectives": sweep()}
    (run / "probe.json").write_text(json.dumps(probe))
    page, text = parse(report_stage.run(report_stage.Config(runs=[run], out=tmp_path / "r.html")))
    assert page.sections["hardware"] is False
    alts = {img["alt"] for img in page.images}
    assert {"collective sweep", "hardware telemetry"} <= alts
    for shown in ("Test CPU 9000", "matmul fp32 (TFLOP/s)", "0.15", "matmul bf16 (TFLOP/s)", "12.5", "probe.json"):
        assert shown in text, shown
    assert "matmul tf32" not in text  # a skipped format has no row


def test_the_recorded_probe_of_a_run_and_a_run_without_one(tiny_run, tmp_path):
    page, text = parse(tiny_run / "report.html")
    recorded = json.loads((tiny_run / "model" / "manifest.json").read_text())["result"]["hardware_probe"]
    assert recorded["matmul_flops"]["fp32"] > 0  # pretraining's peak, from the probe cache
    assert page.sections["hardware"] is False and "matmul fp32 (TFLOP/s)" in text
    empty = tmp_path / "empty"
    empty.mkdir()
    page, text = parse(report_stage.run(report_stage.Config(runs=[empty])))
    assert page.sections["hardware"] is True and "groundup probe --out" in text
