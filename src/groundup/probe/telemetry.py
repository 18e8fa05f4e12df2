"""The hardware's state while training: each GPU's temperature, power, clocks, memory and throttle reasons
(NVML, through nvidia-ml-py's ``pynvml``), and the host's memory and CPU load.

Nothing here fails a run: without ``pynvml`` (``pip install 'groundup[telemetry]'``), without a driver or without
GPUs the GPU fields are simply absent, and a query a GPU does not support is left out of its sample.
A sample is one flat record (``gpu0/temperature_c``, ``host/rss_mib``) so that the report's metrics
reader draws it like any metrics file. Memory is in MiB (2**20 bytes).
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import time
from typing import Any

log = logging.getLogger(__name__)

THROTTLE_TEMPERATURE_C = 83.0
"""The seeds' temperature where GPUs start to throttle (shutdown comes at 90-92 °C)."""

THROTTLE_REASONS = {
    0x1: "gpu_idle", 0x2: "applications_clocks_setting", 0x4: "sw_power_cap", 0x8: "hw_slowdown",
    0x10: "sync_boost", 0x20: "sw_thermal_slowdown", 0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown", 0x100: "display_clock_setting",
}
"""NVML's clocks-throttle (clocks-event) reason bits, as ``nvmlDeviceGetCurrentClocksThrottleReasons`` returns them."""

SLOWDOWNS = {"sw_power_cap", "hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown"}
"""The reasons that slow a busy GPU down (idle, application clocks and sync boost do not)."""


MiB = 2**20


def _mib(n_bytes: float | None) -> float | None:
    return None if n_bytes is None else round(n_bytes / MiB, 1)


def throttle_reasons(mask: int) -> list[str]:
    return [name for bit, name in THROTTLE_REASONS.items() if mask & bit]


class HostSampler:
    """This process's resident memory and CPU use, and the host's load and free memory."""

    def __init__(self) -> None:
        self.last = (time.monotonic(), self._cpu_seconds())

    @staticmethod
    def _cpu_seconds() -> float:
        t = os.times()
        return t.user + t.system

    @staticmethod
    def rss_bytes() -> float | None:
        """Resident set size now (/proc/self/statm), else the peak (getrusage) where /proc is absent."""
        try:
            with open("/proc/self/statm", encoding="ascii") as f:
                return float(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            return float(peak) * (1 if os.uname().sysname == "Darwin" else 1024)

    def sample(self) -> dict[str, float]:
        from groundup.probe.machine import available_memory_bytes

        now, cpu = time.monotonic(), self._cpu_seconds()
        before_t, before_cpu = self.last
        self.last = (now, cpu)
        out: dict[str, float] = {}
        rss = self.rss_bytes()
        if rss is not None:
            out["host/rss_mib"] = round(rss / MiB, 1)
        if now > before_t:
            out["host/cpu_percent"] = round(100.0 * (cpu - before_cpu) / (now - before_t), 1)
        with contextlib.suppress(OSError):  # no load average on this OS
            out["host/load_1m"] = os.getloadavg()[0]
        available = available_memory_bytes()
        if available is not None:
            out["host/memory_available_mib"] = round(available / MiB, 1)
        return out


def _import_nvml():
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


class GpuSampler:
    """Every GPU NVML sees on this node; ``nvml`` is the ``pynvml`` module (a fake one in tests)."""

    def __init__(self, nvml: Any = None) -> None:
        self.nvml = nvml if nvml is not None else _import_nvml()
        self.handles: list[Any] = []
        if self.nvml is None:
            return
        try:
            self.nvml.nvmlInit()
            self.handles = [self.nvml.nvmlDeviceGetHandleByIndex(i) for i in range(self.nvml.nvmlDeviceGetCount())]
        except Exception as e:  # noqa: BLE001 (NVMLError: no driver, no GPU; telemetry is then simply absent)
            log.debug("NVML unavailable: %s", e)
            self.nvml, self.handles = None, []

    def _query(self, name: str, *args) -> Any:
        """One NVML query, or None where the GPU or driver does not support it."""
        fn = getattr(self.nvml, name, None)
        if fn is None:
            return None
        try:
            return fn(*args)
        except Exception:  # noqa: BLE001 (NVMLError_NotSupported and kin: the field is left out)
            return None

    def _throttle_mask(self, handle) -> int | None:
        # nvmlDeviceGetCurrentClocksEventReasons is the newer name of the same bits (driver 535+).
        for name in ("nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"):
            mask = self._query(name, handle)
            if mask is not None:
                return int(mask)
        return None

    def sample(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        nvml = self.nvml
        for i, h in enumerate(self.handles):
            p = f"gpu{i}/"
            temperature = self._query("nvmlDeviceGetTemperature", h, getattr(nvml, "NVML_TEMPERATURE_GPU", 0))
            power_mw = self._query("nvmlDeviceGetPowerUsage", h)
            limit_mw = self._query("nvmlDeviceGetEnforcedPowerLimit", h)
            sm = self._query("nvmlDeviceGetClockInfo", h, getattr(nvml, "NVML_CLOCK_SM", 1))
            mem_clock = self._query("nvmlDeviceGetClockInfo", h, getattr(nvml, "NVML_CLOCK_MEM", 2))
            memory = self._query("nvmlDeviceGetMemoryInfo", h)
            utilization = self._query("nvmlDeviceGetUtilizationRates", h)
            mask = self._throttle_mask(h)
            for key, value in (("temperature_c", temperature), ("power_w", power_mw and power_mw / 1000),
                               ("power_limit_w", limit_mw and limit_mw / 1000), ("sm_clock_mhz", sm),
                               ("memory_clock_mhz", mem_clock),
                               ("memory_used_mib", _mib(getattr(memory, "used", None))),
                               ("memory_total_mib", _mib(getattr(memory, "total", None))),
                               ("utilization_percent", getattr(utilization, "gpu", None))):
                if value is not None:
                    out[p + key] = float(value)
            if mask is not None:
                reasons = throttle_reasons(mask)
                out[p + "throttle_mask"] = mask
                out[p + "throttle_reasons"] = reasons
                out[p + "slowdown"] = int(any(r in SLOWDOWNS for r in reasons))
        return out

    def close(self) -> None:
        if self.nvml is not None:
            with contextlib.suppress(Exception):  # NVMLError: shutting down never fails a run
                self.nvml.nvmlShutdown()


class Telemetry:
    """Host and GPU samples, and a warning the first time a GPU passes :data:`THROTTLE_TEMPERATURE_C` or
    slows down (again after it has recovered)."""

    def __init__(self, nvml: Any = None) -> None:
        self.host = HostSampler()
        self.gpus = GpuSampler(nvml)
        self.alarms: set[str] = set()

    def sample(self) -> dict[str, Any]:
        return {**self.host.sample(), **self.gpus.sample()}

    def warnings(self, sample: dict[str, Any]) -> list[str]:
        """New alarms of ``sample``: a GPU at or above the throttling temperature, or slowed down."""
        now: dict[str, str] = {}
        for i in range(len(self.gpus.handles)):
            temperature = sample.get(f"gpu{i}/temperature_c")
            if temperature is not None and temperature >= THROTTLE_TEMPERATURE_C:
                now[f"gpu{i}/hot"] = (f"GPU {i} at {temperature:.0f} °C: GPUs throttle from about "
                                      f"{THROTTLE_TEMPERATURE_C:.0f} °C (check its cooling)")
            slow = [r for r in sample.get(f"gpu{i}/throttle_reasons", []) if r in SLOWDOWNS]
            if slow:
                now[f"gpu{i}/slow"] = f"GPU {i} is throttling: {', '.join(slow)}"
        new = [message for key, message in now.items() if key not in self.alarms]
        self.alarms = set(now)
        return new

    def close(self) -> None:
        self.gpus.close()


def power_limit_watts(index: int = 0, nvml: Any = None) -> float | None:
    """The enforced power limit of GPU ``index`` (a probe records it), or None without NVML."""
    sampler = GpuSampler(nvml)
    try:
        if index >= len(sampler.handles):
            return None
        limit = sampler._query("nvmlDeviceGetEnforcedPowerLimit", sampler.handles[index])
        return limit / 1000 if limit is not None else None
    finally:
        sampler.close()
