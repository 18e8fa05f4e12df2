"""``groundup probe``: measure this machine and write probe.json.

    groundup probe [--out probe.json] [--quick]

Measures the matmul peak per format (fp32; TF32, bf16, fp16 and fp8 where the device has them), memory
bandwidth (STREAM's triad on the device), host<->device copies (GPU), the read throughput of a token
shard from disk (cold: the file's cached pages are dropped first), a collective sweep over local
processes (:mod:`groundup.probe.collectives`) and the GPUs' topology (:mod:`groundup.probe.topology`).
The probe also lands in the machine's cache (:mod:`groundup.probe.cache`), where pretraining finds its
matmul peak; ``groundup plan --hardware probe.json`` plans with it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from groundup.plan.hardware import MATMUL_DTYPES
from groundup.probe.collectives import COLLECTIVES

log = logging.getLogger(__name__)

MiB = 2**20


@dataclass(frozen=True)
class Mode:
    """The sizes and times of a full or a quick probe (a Config field left at None takes its mode's)."""

    matmul_size_cpu: int
    matmul_size_gpu: int
    matmul_seconds: float
    array_bytes_cpu: int
    array_bytes_gpu: int
    copy_bytes: int
    read_bytes: int
    max_bytes: int
    target_seconds: float
    seconds_per_collective: float


MODES = {
    "full": Mode(matmul_size_cpu=2048, matmul_size_gpu=8192, matmul_seconds=1.0, array_bytes_cpu=256 * MiB,
                 array_bytes_gpu=1024 * MiB, copy_bytes=256 * MiB, read_bytes=256 * MiB, max_bytes=1024 * MiB,
                 target_seconds=0.05, seconds_per_collective=8.0),
    "quick": Mode(matmul_size_cpu=1024, matmul_size_gpu=4096, matmul_seconds=0.3, array_bytes_cpu=64 * MiB,
                  array_bytes_gpu=256 * MiB, copy_bytes=64 * MiB, read_bytes=64 * MiB, max_bytes=4 * MiB,
                  target_seconds=0.01, seconds_per_collective=1.5),
}


@dataclass(kw_only=True)
class Config:
    """Measure this machine: matmul peak per format, memory bandwidth, host<->device copies, token shard
    reads, collectives between local processes and the GPUs' topology; write probe.json."""

    out: Path = Path("probe.json")
    """The probe's JSON file (`groundup plan --hardware` reads it)."""
    quick: bool = False
    """A short probe: smaller sizes and windows, and no collective sweep unless `ranks` asks for one."""
    device: str = "auto"
    """'auto' (CUDA when available, else the CPU), 'cpu', 'cuda' or 'cuda:N'."""
    dtypes: list[str] = field(default_factory=lambda: list(MATMUL_DTYPES))
    """Matmul formats to time, each where the device has it (fp32, tf32, bf16, fp16, fp8)."""
    matmul_size: int | None = None
    """Square matmul size (default: 2048 on a CPU, 8192 on a GPU; half with --quick); shrunk for a format
    whose product would take over two seconds."""
    matmul_seconds: float | None = None
    """Time each format's matmul for at least this long and keep the best (default 1.0; 0.3 with --quick)."""
    array_bytes: int | None = None
    """Bytes of each of the triad's three arrays (default 256 MiB on a CPU, 1 GiB on a GPU; a quarter with --quick)."""
    ranks: int | None = None
    """Local processes of the collective sweep (default: this node's GPUs, or 2 on a CPU; none with --quick);
    0 or 1: no sweep. Under torchrun the sweep runs over torchrun's ranks instead."""
    collectives: list[str] = field(default_factory=lambda: list(COLLECTIVES))
    """Collectives to sweep (all_reduce, all_gather, reduce_scatter, all_to_all)."""
    min_bytes: int = 1024
    """Smallest collective size (nccl-tests' size: the whole buffer)."""
    max_bytes: int | None = None
    """Largest collective size (default 1 GiB; 4 MiB with --quick), capped by free memory."""
    seconds_per_collective: float | None = None
    """Stop a collective's sweep before a size that would take it past this many seconds (default 8; 1.5 with
    --quick)."""
    tokens: Path | None = None
    """A tokens dir (its train.bin) or a file to time reading from disk (default: a scratch file written beside
    `out`, then removed)."""
    read_bytes: int | None = None
    """Bytes to read from disk (default 256 MiB; 64 MiB with --quick; less if the file is smaller)."""
    cache: bool = True
    """Also store the probe in the machine's cache, where pretraining finds its matmul peak."""
    threads: int | None = None
    """CPU threads for torch (default: torch's choice, one per core)."""
    overwrite: bool = False
    """Replace an existing `out` file that is not an earlier probe."""


def is_probe(path: Path) -> bool:
    """Whether ``path`` is a probe.json this stage wrote."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f).get("stage") == "probe"
    except (OSError, ValueError, AttributeError):
        return False


def fit_matmul_size(size: int, dtype: str, device: str, budget_seconds: float = 2.0) -> int:
    """``size``, halved until one product in ``dtype`` should take under ``budget_seconds`` (judged from a
    512x512 product): a format the device emulates slowly is still timed, on a smaller product."""
    from groundup.plan import hardware

    small = min(size, 512)
    if size <= small:
        return size
    seconds = hardware.best_seconds(hardware.matmul_operation(small, dtype, device), device=device, reps=2)
    while size > small and seconds * (size / small) ** 3 > budget_seconds:
        size //= 2
    return size


def measure_matmuls(dtypes: list[str], size: int, seconds: float, device: str) -> dict[str, dict]:
    """FLOP/s per format (``{"skipped": why}`` where the device has no such format)."""
    from groundup.plan import hardware

    supported = hardware.matmul_dtypes(device)
    out: dict[str, dict] = {}
    for dtype in dtypes:
        if dtype not in supported:
            raise ValueError(f"unknown matmul dtype {dtype!r}; known: {', '.join(MATMUL_DTYPES)}")
        if supported[dtype]:
            out[dtype] = {"skipped": supported[dtype]}
            continue
        # one product within the timing window: a format this device emulates slowly (fp16 on most CPUs)
        # would otherwise take most of a quick probe
        fitted = fit_matmul_size(size, dtype, device, budget_seconds=min(2.0, seconds))
        flops = hardware.measure_matmul_flops(fitted, 3, seconds, dtype=dtype, device=device)
        out[dtype] = {"flops": flops, "size": fitted, "best_seconds": 2.0 * fitted**3 / flops}
    return out


def shard_file(tokens: Path) -> Path:
    """The file a tokens setting names: a tokens dir's train.bin, or the file itself."""
    path = Path(tokens)
    path = path / "train.bin" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"tokens {tokens}: no such file (nor a tokens dir holding train.bin)")
    return path


def drop_cached_pages(fd: int) -> bool:
    """Ask the kernel to forget a file's cached (clean) pages, so the next read comes from the disk."""
    if not hasattr(os, "posix_fadvise"):
        return False
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        return False
    return True


def measure_read(path: Path, max_bytes: int, chunk: int = 8 * MiB) -> dict[str, Any]:
    """Sequential read throughput of ``path`` (its first ``max_bytes``), after dropping its cached pages."""
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        cold = drop_cached_pages(f.fileno())
        done, start = 0, time.perf_counter()
        while done < max_bytes:
            n = f.readinto(view[:min(chunk, max_bytes - done)])
            if not n:
                break
            done += n
        seconds = time.perf_counter() - start
    if done == 0:
        raise ValueError(f"{path}: empty, nothing to time reading")
    return {"path": str(path), "bytes": done, "seconds": seconds, "bytes_per_s": done / max(seconds, 1e-9),
            "cold": cold}


def measure_scratch_read(folder: Path, n_bytes: int) -> dict[str, Any]:
    """Write a scratch file of ``n_bytes`` into ``folder`` (synced to disk), time reading it back cold, remove it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f".groundup-probe-read-{os.getpid()}.tmp"
    block = os.urandom(8 * MiB)  # random bytes: nothing for a compressing filesystem to shrink
    try:
        with open(path, "wb") as f:
            written = 0
            while written < n_bytes:
                written += f.write(block[:n_bytes - written])
            f.flush()
            os.fsync(f.fileno())  # clean pages only can be dropped
        return {**measure_read(path, n_bytes), "scratch": True}
    finally:
        path.unlink(missing_ok=True)


def local_figures(cfg: Config, mode: Mode, device: str) -> dict[str, Any]:
    """Everything one process measures: matmuls, triad, host<->device copies, disk reads, topology."""
    from groundup.plan import hardware
    from groundup.probe.topology import read_topology

    gpu = device.startswith("cuda")
    figures: dict[str, Any] = {}
    timings: dict[str, float] = {}
    started = time.perf_counter()
    size = cfg.matmul_size or (mode.matmul_size_gpu if gpu else mode.matmul_size_cpu)
    figures["matmul"] = measure_matmuls(cfg.dtypes, size, mode.matmul_seconds if cfg.matmul_seconds is None
                                        else cfg.matmul_seconds, device)
    timings["matmul"] = time.perf_counter() - started
    array_bytes = cfg.array_bytes or (mode.array_bytes_gpu if gpu else mode.array_bytes_cpu)
    started = time.perf_counter()
    figures["memory_bandwidth"] = {"kind": "triad", "device": device, "array_bytes": array_bytes,
                                   "bytes_per_s": hardware.measure_triad_bandwidth(array_bytes, device=device)}
    timings["memory_bandwidth"] = time.perf_counter() - started
    figures["host_device_copy"] = None
    if gpu:
        started = time.perf_counter()
        figures["host_device_copy"] = {"bytes": mode.copy_bytes, **{
            f"{d}_bytes_per_s": hardware.measure_copy_bandwidth(mode.copy_bytes, device=device, direction=d)
            for d in ("h2d", "d2h")}}
        timings["host_device_copy"] = time.perf_counter() - started
    started = time.perf_counter()
    read_bytes = cfg.read_bytes or mode.read_bytes
    figures["shard_read"] = (measure_read(shard_file(cfg.tokens), read_bytes) if cfg.tokens is not None
                             else measure_scratch_read(Path(cfg.out).resolve().parent, read_bytes))
    timings["shard_read"] = time.perf_counter() - started
    topology = read_topology() if gpu else None
    figures["topology"] = topology.as_dict() if topology is not None else None
    figures["seconds"] = timings
    return figures


def collective_settings(cfg: Config, mode: Mode, device: str) -> dict[str, Any]:
    for name in cfg.collectives:
        if name not in COLLECTIVES:
            raise ValueError(f"unknown collective {name!r}; known: {', '.join(COLLECTIVES)}")
    return {"collectives": list(cfg.collectives), "min_bytes": cfg.min_bytes,
            "max_bytes": cfg.max_bytes or mode.max_bytes, "target_seconds": mode.target_seconds,
            "seconds_per_collective": cfg.seconds_per_collective or mode.seconds_per_collective,
            "device": "cuda" if device.startswith("cuda") else "cpu"}


def sweep_ranks(cfg: Config, device: str) -> int:
    import torch

    if cfg.ranks is not None:
        return cfg.ranks
    if cfg.quick:
        return 0
    return torch.cuda.device_count() if device.startswith("cuda") else 2


def run(cfg: Config) -> Path:
    """Measure, print a summary, write ``cfg.out`` (and the cache); under torchrun rank 0 writes."""
    import torch

    from groundup import __version__, artifacts
    from groundup import config as configlib
    from groundup.model.io import resolve_device
    from groundup.parallel.env import init_distributed, launched_by_torchrun
    from groundup.probe import cache, collectives
    from groundup.probe.machine import device_info, host_info
    from groundup.probe.telemetry import power_limit_watts

    artifacts.prepare_out(cfg.out, stage="probe", inputs=[cfg.tokens], overwrite=cfg.overwrite, written_by=is_probe)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.min_bytes <= 0:
        raise ValueError(f"min_bytes must be positive, got {cfg.min_bytes}")
    mode = MODES["quick" if cfg.quick else "full"]
    started = time.perf_counter()
    env = init_distributed(resolve_device(cfg.device)) if launched_by_torchrun() else None
    device = str(env.device if env is not None else resolve_device(cfg.device))
    settings = collective_settings(cfg, mode, device)
    probe: dict[str, Any] = {"stage": "probe", "groundup_version": __version__,
                             "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "quick": cfg.quick,
                             "config": configlib.to_dict(cfg), "host": host_info(), "device": device_info(device)}
    if device.startswith("cuda"):
        probe["device"]["power_limit_watts"] = power_limit_watts(torch.device(device).index or 0)
    if env is None or env.is_main:
        probe.update(local_figures(cfg, mode, device))
    if env is not None and env.distributed:  # the ranks torchrun started sweep together
        import torch.distributed as dist

        dist.barrier()
        probe["collectives"] = collectives.sweep(settings, env.device)
    elif (ranks := sweep_ranks(cfg, device)) > 1:
        sweep_started = time.perf_counter()
        probe["collectives"] = collectives.run_local(ranks, settings)
        probe["seconds"]["collectives"] = time.perf_counter() - sweep_started
    else:
        probe["collectives"] = None
    probe["seconds_total"] = time.perf_counter() - started
    if env is not None and not env.is_main:
        return Path(cfg.out)
    out = artifacts.write_json(Path(cfg.out), probe)
    if cfg.cache:
        log.info("probe stored in the cache: %s", cache.store(probe, device))
    print(format_summary(probe))
    return out


def _rate(value: float | None, unit: str, scale: float) -> str:
    return "—" if not value else f"{value / scale:,.2f} {unit}"


def format_summary(probe: dict[str, Any]) -> str:
    """The probe in a few lines, and the collective sweep as nccl-tests prints it."""
    from groundup.probe.collectives import format_table

    device = probe.get("device") or {}
    lines = [f"probe of {device.get('name')} ({device.get('type')}) on {probe['host']['hostname']}, "
             f"{probe['host']['torch_threads']} torch threads: {probe.get('seconds_total', 0):.1f} s"]
    for dtype, figure in (probe.get("matmul") or {}).items():
        if "flops" in figure:
            lines.append(f"  matmul {dtype:<5} {figure['size']}x{figure['size']}: {_rate(figure['flops'], 'TFLOP/s', 1e12)}")
        else:
            lines.append(f"  matmul {dtype:<5} skipped: {figure['skipped']}")
    bandwidth = probe.get("memory_bandwidth") or {}
    lines.append(f"  memory (triad, 3 x {bandwidth.get('array_bytes', 0) / MiB:.0f} MiB): "
                 f"{_rate(bandwidth.get('bytes_per_s'), 'GB/s', 1e9)}")
    copy = probe.get("host_device_copy")
    if copy:
        lines.append(f"  host->device {_rate(copy['h2d_bytes_per_s'], 'GB/s', 1e9)}, "
                     f"device->host {_rate(copy['d2h_bytes_per_s'], 'GB/s', 1e9)}")
    read = probe.get("shard_read") or {}
    if read:
        lines.append(f"  disk read ({read['bytes'] / MiB:.0f} MiB, {'cold' if read.get('cold') else 'maybe cached'}): "
                     f"{_rate(read.get('bytes_per_s'), 'GB/s', 1e9)}")
    topology = probe.get("topology")
    if topology:
        lines.append(f"  topology: {len(topology['devices'])} devices, GPU pairs by link "
                     f"{topology['gpu_links']}, slowest {topology['slowest_gpu_link']}")
    if probe.get("collectives"):
        lines.append(format_table(probe["collectives"]))
    return "\n".join(lines)
