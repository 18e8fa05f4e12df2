"""The machine's probe cache: the last probe of each host, device and thread count, where a training run
finds the matmul peak its MFU divides by instead of timing one at every start.

The cache lives in ``$GROUNDUP_CACHE_DIR/probe`` (default ``$XDG_CACHE_HOME/groundup/probe``, else
``~/.cache/groundup/probe``), one JSON file per key. ``groundup probe`` writes a full probe there; a run
that finds none times a quick matmul (:func:`measured_peak`) and stores that alone, for the next start.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from pathlib import Path

from groundup.artifacts import write_json

log = logging.getLogger(__name__)

CACHE_ENV = "GROUNDUP_CACHE_DIR"
QUICK_MATMUL_SECONDS = 2.0
"""How long a start without a cached probe times its matmul (the best of the runs in this window)."""
QUICK_RECHECK_SECONDS = 0.5
"""How long a start re-times the matmul when the cached figure is a quick one (timed at an earlier start)."""


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV)
    if not root:
        root = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "groundup")
    return Path(root) / "probe"


def probe_key(device: str, threads: int | None = None) -> str:
    """``host-device-name[-tN]``: CPU figures depend on torch's threads, so a CPU key carries their number."""
    import torch

    from groundup.probe.machine import device_info

    info = device_info(device)
    key = f"{socket.gethostname()}-{info['type']}-{info['name']}"
    if info["type"] != "cuda":
        key += f"-t{threads or torch.get_num_threads()}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("_")


def cache_path(device: str, threads: int | None = None) -> Path:
    return cache_dir() / f"{probe_key(device, threads)}.json"


def load_cached(device: str, threads: int | None = None) -> dict | None:
    """The cached probe of this host and device, or None (an unreadable file is named in a warning)."""
    from groundup.plan.hardware import read_probe

    path = cache_path(device, threads)
    if not path.is_file():
        return None
    try:
        probe = read_probe(path)
    except (OSError, ValueError) as e:
        log.warning("cached probe ignored: %s", e)
        return None
    probe["cache_path"] = str(path)
    return probe


def store(probe: dict, device: str, threads: int | None = None) -> Path:
    path = cache_path(device, threads)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json(path, {k: v for k, v in probe.items() if k != "cache_path"})


def peak_dtype(device: str) -> str:
    """The matmul format a training run's MFU is measured against: bf16 on CUDA, fp32 on a CPU."""
    return "bf16" if device.startswith("cuda") else "fp32"


def measured_peak(device: str) -> tuple[float, str]:
    """(FLOP/s, where it comes from) of this device's matmul peak: the cached probe's, else a quick matmul
    timed now and stored in the cache for the next start.

    A quick figure may have been timed while a neighbour loaded the machine, and a peak is the best rate
    seen: a start that finds one times the matmul again briefly (:data:`QUICK_RECHECK_SECONDS`) and keeps,
    and stores, the higher. A full probe (``groundup probe``) is taken as it is."""
    from groundup.plan import hardware

    dtype = peak_dtype(device)
    size = 2048 if dtype == "fp32" else 8192
    cached = load_cached(device)
    figure = ((cached or {}).get("matmul") or {}).get(dtype) or {}
    if isinstance(figure, dict) and figure.get("flops"):
        flops, source = float(figure["flops"]), f"cached probe {cached['cache_path']} ({cached.get('created', 'undated')})"
        if not cached.get("quick"):
            return flops, source
        now = hardware.measure_matmul_flops(size, min_seconds=QUICK_RECHECK_SECONDS, dtype=dtype, device=device,
                                            fresh=True)
        if now <= flops:
            return flops, source
        log.info("the cached quick matmul peak (%.3g FLOP/s) is below the one timed now (%.3g): replacing it", flops, now)
        return _store_quick(now, size, dtype, device)
    flops = hardware.measure_matmul_flops(size, min_seconds=QUICK_MATMUL_SECONDS, dtype=dtype, device=device)
    return _store_quick(flops, size, dtype, device)


def _store_quick(flops: float, size: int, dtype: str, device: str) -> tuple[float, str]:
    """Store a matmul peak timed at a training start as this machine's (quick) probe."""
    from groundup.probe.machine import device_info, host_info

    probe = {"stage": "probe", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "quick": True,
             "partial": "matmul peak only, timed at a training start", "host": host_info(),
             "device": device_info(device), "matmul": {dtype: {"flops": flops, "size": size}}}
    try:
        path = store(probe, device)
    except OSError as e:  # a read-only home: measure again next time
        log.warning("could not store the probe in the cache (%s)", e)
        return flops, f"timed now ({dtype} {size}x{size} matmul)"
    return flops, f"timed now ({dtype} {size}x{size} matmul), stored in {path}"


def summary(probe: dict) -> dict:
    """A probe's headline figures, as a training run records the probe of its machine."""
    from groundup.plan.hardware import largest_all_reduce_busbw

    matmul = {k: v["flops"] for k, v in (probe.get("matmul") or {}).items() if isinstance(v, dict) and v.get("flops")}
    return {"path": probe.get("cache_path"), "created": probe.get("created"), "quick": probe.get("quick"),
            "partial": probe.get("partial"), "device": (probe.get("device") or {}).get("name"),
            "matmul_flops": matmul, "memory_bandwidth": (probe.get("memory_bandwidth") or {}).get("bytes_per_s"),
            "shard_read_bytes_per_s": (probe.get("shard_read") or {}).get("bytes_per_s"),
            "all_reduce_busbw": largest_all_reduce_busbw(probe)}


def cached_summary(device: str) -> dict | None:
    """:func:`summary` of this machine's cached probe, or None."""
    probe = load_cached(device)
    return summary(probe) if probe is not None else None
