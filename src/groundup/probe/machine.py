"""What a machine is: host name, CPU, memory, torch's threads, and the accelerator a device names."""

from __future__ import annotations

import os
import platform
import socket
from typing import Any


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what the platform module says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_bytes() -> float:
    """Physical memory of the host in bytes (NaN where the OS does not say)."""
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return float("nan")


def available_memory_bytes() -> float | None:
    """Memory the host can still hand out (MemAvailable of /proc/meminfo); None where unknown."""
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def host_info() -> dict[str, Any]:
    """The host as a probe and a run's summary record it."""
    import torch

    return {"hostname": socket.gethostname(), "platform": platform.platform(), "cpu": cpu_name(),
            "cpu_cores": os.cpu_count(), "memory_bytes": memory_bytes(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}


def device_info(device: str) -> dict[str, Any]:
    """The device a probe measures: its kind, name and memory (and on CUDA its capability and count)."""
    import torch

    dev = torch.device(device)
    if dev.type != "cuda":
        return {"type": dev.type, "name": cpu_name(), "memory_bytes": memory_bytes(), "count": 1}
    props = torch.cuda.get_device_properties(dev)
    return {"type": "cuda", "name": torch.cuda.get_device_name(dev), "memory_bytes": float(props.total_memory),
            "capability": f"{props.major}.{props.minor}", "count": torch.cuda.device_count(),
            "multiprocessors": props.multi_processor_count}
