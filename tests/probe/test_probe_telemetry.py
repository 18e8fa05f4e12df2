"""Telemetry: GPUs through a fake NVML module (the calls and constants of nvidia-ml-py), the host for real."""

from __future__ import annotations

import sys
import types

import pytest

from groundup.probe import telemetry


class NVMLError(Exception):
    pass


def fake_nvml(gpus: list[dict], *, init_error: bool = False) -> types.ModuleType:
    """A module with pynvml's names; each GPU is a dict of what its queries return (absent: not supported)."""
    nvml = types.ModuleType("pynvml")
    nvml.NVMLError = NVMLError
    nvml.NVML_TEMPERATURE_GPU, nvml.NVML_CLOCK_SM, nvml.NVML_CLOCK_MEM = 0, 1, 2
    nvml.calls = []

    def init():
        nvml.calls.append("init")
        if init_error:
            raise NVMLError("Driver Not Loaded")

    def answer(key, by_argument=False):
        def query(handle, *args):
            value = gpus[handle].get((key, args[0]) if by_argument else key)
            if value is None:
                raise NVMLError("Not Supported")
            return value
        return query

    nvml.nvmlInit = init
    nvml.nvmlShutdown = lambda: nvml.calls.append("shutdown")
    nvml.nvmlDeviceGetCount = lambda: len(gpus)
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i
    nvml.nvmlDeviceGetTemperature = answer("temperature")
    nvml.nvmlDeviceGetPowerUsage = answer("power_mw")
    nvml.nvmlDeviceGetEnforcedPowerLimit = answer("limit_mw")
    nvml.nvmlDeviceGetClockInfo = answer("clock", by_argument=True)
    nvml.nvmlDeviceGetMemoryInfo = answer("memory")
    nvml.nvmlDeviceGetUtilizationRates = answer("utilization")
    nvml.nvmlDeviceGetCurrentClocksThrottleReasons = answer("throttle")
    return nvml


def gpu(temperature=70, throttle=0x0, **more) -> dict:
    return {"temperature": temperature, "power_mw": 650_000, "limit_mw": 700_000, ("clock", 1): 1980,
            ("clock", 2): 2619, "memory": types.SimpleNamespace(used=40 * 2**30, total=80 * 2**30),
            "utilization": types.SimpleNamespace(gpu=97, memory=60), "throttle": throttle, **more}


def test_gpu_fields_from_nvml():
    nvml = fake_nvml([gpu(), gpu(temperature=85, throttle=0x4 | 0x20, memory=None)])
    sample = telemetry.GpuSampler(nvml).sample()
    assert sample["gpu0/temperature_c"] == 70 and sample["gpu0/power_w"] == 650 and sample["gpu0/power_limit_w"] == 700
    assert sample["gpu0/sm_clock_mhz"] == 1980 and sample["gpu0/memory_clock_mhz"] == 2619
    assert sample["gpu0/memory_used_mib"] == 40 * 1024 and sample["gpu0/utilization_percent"] == 97
    assert sample["gpu0/throttle_reasons"] == [] and sample["gpu0/slowdown"] == 0
    assert sample["gpu1/throttle_reasons"] == ["sw_power_cap", "sw_thermal_slowdown"] and sample["gpu1/slowdown"] == 1
    assert "gpu1/memory_used_mib" not in sample  # a query the GPU does not support is left out
    assert telemetry.throttle_reasons(0x1 | 0x40) == ["gpu_idle", "hw_thermal_slowdown"]


def test_warnings_when_hot_or_throttling_once_per_episode():
    gpus = [gpu(), gpu()]
    t = telemetry.Telemetry(fake_nvml(gpus))
    assert t.warnings(t.sample()) == []
    gpus[0]["temperature"] = 83
    gpus[1]["throttle"] = 0x40 | 0x1
    first = t.warnings(t.sample())
    assert len(first) == 2 and "GPU 0 at 83 °C" in first[0] and "GPU 1 is throttling: hw_thermal_slowdown" in first[1]
    assert t.warnings(t.sample()) == []  # still so: said once
    gpus[0]["temperature"], gpus[1]["throttle"] = 75, 0x1  # recovered (idle is no slowdown) ...
    assert t.warnings(t.sample()) == []
    gpus[0]["temperature"] = 88
    assert [w[:9] for w in t.warnings(t.sample())] == ["GPU 0 at "]  # ... and hot again: said again
    t.close()


def test_an_absent_device_is_simply_absent(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # nvidia-ml-py not installed
    sampler = telemetry.GpuSampler()
    assert sampler.handles == [] and sampler.sample() == {}
    sampler.close()
    broken = fake_nvml([gpu()], init_error=True)  # installed, but no driver
    sampler = telemetry.GpuSampler(broken)
    assert sampler.handles == [] and sampler.sample() == {} and broken.calls == ["init"]
    assert telemetry.power_limit_watts(0, broken) is None
    assert telemetry.power_limit_watts(0, fake_nvml([gpu()])) == 700
    # the newer name of the throttle query is used where the module has it
    newer = fake_nvml([gpu(throttle=0x8)])
    newer.nvmlDeviceGetCurrentClocksEventReasons = newer.nvmlDeviceGetCurrentClocksThrottleReasons
    del newer.nvmlDeviceGetCurrentClocksThrottleReasons
    assert telemetry.GpuSampler(newer).sample()["gpu0/throttle_reasons"] == ["hw_slowdown"]


def test_the_host_for_real():
    host = telemetry.HostSampler()
    sum(i * i for i in range(200_000))  # some CPU time between two samples
    sample = host.sample()
    assert 10 < sample["host/rss_mib"] < 64 * 1024  # this Python process with torch loaded
    assert sample["host/cpu_percent"] >= 0 and sample["host/load_1m"] >= 0
    assert sample["host/memory_available_mib"] > 0
    assert telemetry.Telemetry(fake_nvml([])).warnings(sample) == []


@pytest.mark.parametrize("every", [1, 3])
def test_telemetry_jsonl_during_training(tmp_path, every, caplog):
    from groundup.train.logging import TelemetryWriter

    gpus = [gpu()]
    writer = TelemetryWriter(tmp_path / "telemetry.jsonl", every, None, nvml=fake_nvml(gpus))
    for step in range(1, 7):
        if step == 5:
            gpus[0]["temperature"] = 90
        writer.write({"step": step, "tokens": step * 100, "loss": 1.0, "elapsed_s": step / 10})
    writer.write({"step": 6, "event": "skipped_non_finite"})  # events are not samples
    writer.close()
    import json

    rows = [json.loads(line) for line in (tmp_path / "telemetry.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == ([1, 2, 3, 4, 5, 6] if every == 1 else [1, 4])
    assert all(r["gpu0/power_w"] == 650 and r["host/rss_mib"] > 0 and "elapsed_s" in r for r in rows)
    hot = [r for r in rows if r.get("warnings")]
    assert (len(hot) == 1 and "90 °C" in hot[0]["warnings"][0]) if every == 1 else not hot
    assert any("GPU 0 at 90 °C" in r.message for r in caplog.records) == (every == 1)
    # a run resumed from the step-2 checkpoint keeps the lines up to step 2
    resumed = TelemetryWriter(tmp_path / "telemetry.jsonl", 1, 2, nvml=fake_nvml([gpu()]))
    resumed.write({"step": 3, "tokens": 300, "loss": 1.0, "elapsed_s": 0.3})
    resumed.close()
    steps = [json.loads(line)["step"] for line in (tmp_path / "telemetry.jsonl").read_text().splitlines()]
    assert steps == ([1, 2, 3] if every == 1 else [1, 3])
