"""The hardware table: peak dense 16-bit FLOP/s, memory, bandwidth and power of common accelerators,
interconnect links, and a CPU entry measured on the spot.

Peaks are dense (no 2:4 sparsity): vendor sheets often print the sparse figure, twice the dense one.
Memory sizes are decimal gigabytes as sold (80 GB = 80e9 bytes) unless a comment says GiB.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

GB = 1e9
TB = 1e12
TFLOPS = 1e12


@dataclass(kw_only=True, frozen=True)
class Accelerator:
    """One device's figures, as its maker publishes them (or as measured, for the CPU entry)."""

    name: str
    """Key in the table (lower case)."""
    description: str
    """The product, in words."""
    peak_flops: float
    """Peak dense bf16 matmul FLOP/s (fp16 where the device has no bf16: T4, V100; fp32 for the CPU)."""
    memory_bytes: float
    """Device memory in bytes."""
    bandwidth: float
    """Device memory bandwidth in bytes/s."""
    power_watts: float | None
    """Board power (TDP) in watts; None where the maker does not publish one."""
    link: str
    """Default link between devices of one node (a key of LINKS)."""
    peak_fp32_flops: float | None = None
    """Peak dense fp32 FLOP/s without tensor-core formats (TF32), where published."""
    measured: bool = False
    """True when the figures were measured on this machine rather than read from a datasheet."""
    measured_bus_bandwidth: float | None = None
    """All-reduce bus bandwidth in bytes/s measured between this node's devices (a probe's largest size)."""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(kw_only=True, frozen=True)
class Link:
    """A device-to-device link: what one device can send (and receive) per second in one direction."""

    name: str
    """Key in the table."""
    description: str
    """The link, in words."""
    bandwidth: float
    """Bytes/s per device per direction (what bounds nccl-tests' bus bandwidth)."""
    measured: bool = False
    """True for a measured all-reduce bus bandwidth rather than a link's nominal rate."""


HARDWARE: dict[str, Accelerator] = {a.name: a for a in [
    # NVIDIA A100 datasheet (2021): BF16 tensor 312 TFLOPS dense (624 sparse), FP32 19.5 TFLOPS;
    # 80GB SXM: 2,039 GB/s, 400 W; 40GB SXM: 1,555 GB/s.
    Accelerator(name="a100", description="NVIDIA A100 SXM4 80GB", peak_flops=312 * TFLOPS, memory_bytes=80 * GB,
                bandwidth=2039 * GB, power_watts=400, link="nvlink3", peak_fp32_flops=19.5 * TFLOPS),
    Accelerator(name="a100-40gb", description="NVIDIA A100 SXM4 40GB", peak_flops=312 * TFLOPS,
                memory_bytes=40 * GB, bandwidth=1555 * GB, power_watts=400, link="nvlink3",
                peak_fp32_flops=19.5 * TFLOPS),
    # NVIDIA H100 datasheet: SXM BF16 1,979 TFLOPS with sparsity -> 989.5 dense, 3.35 TB/s, 700 W;
    # PCIe 1,513 sparse -> 756.5 dense, 2.0 TB/s, 350 W (the seeds' table: 989.5T and 756.5T).
    Accelerator(name="h100-sxm", description="NVIDIA H100 SXM5 80GB", peak_flops=989.5 * TFLOPS,
                memory_bytes=80 * GB, bandwidth=3.35 * TB, power_watts=700, link="nvlink4",
                peak_fp32_flops=67 * TFLOPS),
    Accelerator(name="h100-pcie", description="NVIDIA H100 PCIe 80GB", peak_flops=756.5 * TFLOPS,
                memory_bytes=80 * GB, bandwidth=2.0 * TB, power_watts=350, link="pcie5",
                peak_fp32_flops=51 * TFLOPS),
    # H100 NVL (same datasheet): BF16 1,671 TFLOPS sparse -> 835.5 dense, 94 GB at 3.9 TB/s, 350-400 W.
    Accelerator(name="h100-nvl", description="NVIDIA H100 NVL 94GB", peak_flops=835.5 * TFLOPS,
                memory_bytes=94 * GB, bandwidth=3.9 * TB, power_watts=400, link="pcie5",
                peak_fp32_flops=60 * TFLOPS),
    # NVIDIA H200 datasheet: the H100 SXM compute with 141 GB HBM3e at 4.8 TB/s, up to 700 W.
    Accelerator(name="h200", description="NVIDIA H200 SXM 141GB", peak_flops=989.5 * TFLOPS,
                memory_bytes=141 * GB, bandwidth=4.8 * TB, power_watts=700, link="nvlink4",
                peak_fp32_flops=67 * TFLOPS),
    # NVIDIA HGX B200 datasheet (8 GPUs): FP16/BF16 36 PFLOPS sparse -> 2.25 PFLOPS dense per GPU,
    # 1.44 TB memory -> 180 GB per GPU, 64 TB/s -> 8 TB/s per GPU, 1,000 W; NVLink 5 at 1.8 TB/s.
    Accelerator(name="b200", description="NVIDIA B200 180GB (HGX)", peak_flops=2250 * TFLOPS,
                memory_bytes=180 * GB, bandwidth=8 * TB, power_watts=1000, link="nvlink5"),
    # NVIDIA L4 datasheet: BF16 242 TFLOPS sparse -> 121 dense, 24 GB GDDR6 at 300 GB/s, 72 W.
    Accelerator(name="l4", description="NVIDIA L4 24GB", peak_flops=121 * TFLOPS, memory_bytes=24 * GB,
                bandwidth=300 * GB, power_watts=72, link="pcie4", peak_fp32_flops=30.3 * TFLOPS),
    # AWS A10G (g5 instances): A10-class, 24 GB GDDR6 at 600 GB/s; the seeds' table gives 125T BF16
    # (the A10 datasheet's dense tensor figure); 300 W.
    Accelerator(name="a10g", description="NVIDIA A10G 24GB (AWS g5)", peak_flops=125 * TFLOPS,
                memory_bytes=24 * GB, bandwidth=600 * GB, power_watts=300, link="pcie4",
                peak_fp32_flops=31.2 * TFLOPS),
    # NVIDIA T4 datasheet: FP16 tensor 65 TFLOPS (no bf16), 16 GB GDDR6 at 320 GB/s, 70 W.
    Accelerator(name="t4", description="NVIDIA T4 16GB", peak_flops=65 * TFLOPS, memory_bytes=16 * GB,
                bandwidth=320 * GB, power_watts=70, link="pcie3", peak_fp32_flops=8.1 * TFLOPS),
    # NVIDIA V100 SXM2 datasheet: FP16 tensor 125 TFLOPS (no bf16), 32 GB HBM2 at 900 GB/s, 300 W.
    Accelerator(name="v100", description="NVIDIA V100 SXM2 32GB", peak_flops=125 * TFLOPS,
                memory_bytes=32 * GB, bandwidth=900 * GB, power_watts=300, link="nvlink2",
                peak_fp32_flops=15.7 * TFLOPS),
    # AMD Instinct MI300X datasheet: BF16 1,307.4 TFLOPS dense, 192 GB HBM3 at 5.3 TB/s (the seeds say
    # 5.2), 750 W; Infinity Fabric 896 GB/s aggregate bidirectional peer bandwidth.
    Accelerator(name="mi300x", description="AMD Instinct MI300X 192GB", peak_flops=1307.4 * TFLOPS,
                memory_bytes=192 * GB, bandwidth=5.3 * TB, power_watts=750, link="infinity-fabric",
                peak_fp32_flops=163.4 * TFLOPS),
    # Google Cloud TPU v4 docs: 275 TFLOPS bf16, 32 GiB HBM2 at 1,200 GB/s per chip; Jouppi et al. 2023
    # (TPU v4 paper) report about 170 W mean chip power.
    Accelerator(name="tpu-v4", description="Google TPU v4 chip", peak_flops=275 * TFLOPS,
                memory_bytes=32 * 2**30, bandwidth=1200 * GB, power_watts=170, link="ici-v4"),
    # Google Cloud TPU v5e docs: 197 TFLOPS bf16, 16 GB HBM2 at 819 GB/s, ICI 400 GB/s bidirectional;
    # no published power.
    Accelerator(name="tpu-v5e", description="Google TPU v5e chip", peak_flops=197 * TFLOPS,
                memory_bytes=16 * GB, bandwidth=819 * GB, power_watts=None, link="ici-v5e"),
    # Intel, "Gaudi 3 AI Accelerator" (Hot Chips 2024), product table: Gaudi 2 432 TFLOPS BF16, 96 GB at
    # 2.46 TB/s, 600 W; Gaudi 3 1,835 TFLOPS BF16, 128 GB at 3.67 TB/s, 900 W (air-cooled OAM).
    Accelerator(name="gaudi2", description="Intel Gaudi 2 96GB", peak_flops=432 * TFLOPS, memory_bytes=96 * GB,
                bandwidth=2.46 * TB, power_watts=600, link="roce-gaudi2"),
    Accelerator(name="gaudi3", description="Intel Gaudi 3 128GB", peak_flops=1835 * TFLOPS,
                memory_bytes=128 * GB, bandwidth=3.67 * TB, power_watts=900, link="roce-gaudi3"),
]}

ALIASES = {"h100": "h100-sxm", "a100-80gb": "a100", "a100-sxm": "a100", "h200-sxm": "h200", "gaudi-2": "gaudi2",
           "gaudi-3": "gaudi3", "tpuv4": "tpu-v4", "tpuv5e": "tpu-v5e", "v100-sxm": "v100"}

LINKS: dict[str, Link] = {link.name: link for link in [
    # NVLink generations: 300/600/900/1800 GB/s total bidirectional per GPU (V100, A100, H100, B200);
    # half of that in each direction. (The seeds list NVLink 1-4 as 240/300/600/900 GB/s, NVLink 2 = 300.)
    Link(name="nvlink2", description="NVLink 2 (V100), 300 GB/s bidirectional", bandwidth=150 * GB),
    Link(name="nvlink3", description="NVLink 3 (A100), 600 GB/s bidirectional", bandwidth=300 * GB),
    Link(name="nvlink4", description="NVLink 4 (H100/H200), 900 GB/s bidirectional", bandwidth=450 * GB),
    Link(name="nvlink5", description="NVLink 5 (B200), 1.8 TB/s bidirectional", bandwidth=900 * GB),
    # PCIe x16, per direction: gen3 ~16 GB/s, gen4 ~32 GB/s, gen5 ~64 GB/s (nominal; ~80% is reached).
    Link(name="pcie3", description="PCIe 3.0 x16", bandwidth=16 * GB),
    Link(name="pcie4", description="PCIe 4.0 x16", bandwidth=32 * GB),
    Link(name="pcie5", description="PCIe 5.0 x16", bandwidth=64 * GB),
    # InfiniBand per port: EDR 100 Gb/s, HDR 200 Gb/s, NDR 400 Gb/s (1 GB/s = 8 Gb/s); DGX nodes carry
    # one port per GPU, so this is also the per-GPU inter-node rate.
    Link(name="ib-edr", description="InfiniBand EDR 100 Gb/s per GPU", bandwidth=100 * GB / 8),
    Link(name="ib-hdr", description="InfiniBand HDR 200 Gb/s per GPU", bandwidth=200 * GB / 8),
    Link(name="ib-ndr", description="InfiniBand NDR 400 Gb/s per GPU", bandwidth=400 * GB / 8),
    # AMD MI300X: 896 GB/s aggregate bidirectional Infinity Fabric -> 448 GB/s per direction.
    Link(name="infinity-fabric", description="AMD Infinity Fabric (MI300X), 896 GB/s bidirectional",
         bandwidth=448 * GB),
    # TPU ICI per chip: v4 6 links x 50 GB/s (Jouppi et al. 2023) = 300 GB/s bidirectional; v5e 400 GB/s
    # bidirectional (Cloud TPU docs). Per direction: half.
    Link(name="ici-v4", description="TPU v4 ICI, 300 GB/s bidirectional", bandwidth=150 * GB),
    Link(name="ici-v5e", description="TPU v5e ICI, 400 GB/s bidirectional", bandwidth=200 * GB),
    # Gaudi: 21 of 24 on-chip RoCE ports wire the 8 chips of a node together: Gaudi 2 at 100 GbE,
    # Gaudi 3 at 200 GbE -> 262.5 / 525 GB/s per direction.
    Link(name="roce-gaudi2", description="Gaudi 2 on-chip RoCE, 21 x 100 GbE", bandwidth=21 * 100 * GB / 8),
    Link(name="roce-gaudi3", description="Gaudi 3 on-chip RoCE, 21 x 200 GbE", bandwidth=21 * 200 * GB / 8),
    # Measured all-reduce bus bandwidth, nccl-tests (the seeds, infrastructure section): DGX A100 with 4
    # GPUs 222 GB/s, DGX H100 with 4 GPUs 369.9 GB/s; an A40 NVLink pair 47.45 GB/s.
    Link(name="dgx-a100-measured", description="DGX A100 all-reduce busbw, measured (nccl-tests)",
         bandwidth=222 * GB, measured=True),
    Link(name="dgx-h100-measured", description="DGX H100 all-reduce busbw, measured (nccl-tests)",
         bandwidth=369.9 * GB, measured=True),
    Link(name="a40-nvlink-measured", description="A40 NVLink pair all-reduce busbw, measured",
         bandwidth=47.45 * GB, measured=True),
]}


def known_names() -> list[str]:
    return sorted(HARDWARE) + ["cpu"]


def get_accelerator(name: str, *, measure_size: int = 2048) -> Accelerator:
    """The table's entry for ``name`` (case and ``_``/space insensitive); ``cpu`` is measured now."""
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    key = ALIASES.get(key, key)
    if key == "cpu":
        return cpu_accelerator(measure_size=measure_size)
    if key not in HARDWARE:
        raise ValueError(f"unknown GPU {name!r}; known: {', '.join(known_names())} "
                         f"(aliases: {', '.join(sorted(ALIASES))})")
    return HARDWARE[key]


def get_link(name: str) -> Link:
    key = name.strip().lower().replace("_", "-")
    if key not in LINKS:
        raise ValueError(f"unknown interconnect {name!r}; known: {', '.join(sorted(LINKS))}")
    return LINKS[key]


MATMUL_DTYPES = ("fp32", "tf32", "bf16", "fp16", "fp8")
"""Matmul formats a probe times: fp32 (no TF32 on CUDA), TF32 (CUDA tensor cores on fp32 tensors), bf16,
fp16 and fp8 (e4m3 through ``torch._scaled_mm``, on CUDA devices of compute capability 8.9 or more)."""


def matmul_dtypes(device: str) -> dict[str, str | None]:
    """Each of :data:`MATMUL_DTYPES` on ``device``: None where it can be timed, else why not."""
    import torch

    dev = torch.device(device)
    out: dict[str, str | None] = dict.fromkeys(MATMUL_DTYPES)
    if dev.type != "cuda":
        out["tf32"] = "TF32 is a CUDA tensor-core format"
        out["fp8"] = "fp8 matmuls (torch._scaled_mm) are timed on CUDA only"
        return out
    major, minor = torch.cuda.get_device_capability(dev)
    if major < 8:
        out["tf32"] = out["bf16"] = f"compute capability {major}.{minor} < 8.0"
    if (major, minor) < (8, 9) or not hasattr(torch, "float8_e4m3fn"):
        out["fp8"] = f"compute capability {major}.{minor} < 8.9 (or no float8 in this torch)"
    return out


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _tf32(device, enabled: bool):
    """TF32 on or off for CUDA matmuls while timing (fp32 is timed without it, tf32 with it)."""
    import torch

    if device.type != "cuda":
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def matmul_operation(size: int, dtype: str, device: str = "cpu"):
    """A function doing one ``size``x``size`` product in ``dtype`` on ``device`` (its operands made once)."""
    import torch

    dev = torch.device(device)
    why_not = matmul_dtypes(device).get(dtype, f"unknown dtype {dtype!r}; known: {', '.join(MATMUL_DTYPES)}")
    if why_not:
        raise ValueError(f"cannot time a {dtype} matmul on {device}: {why_not}")
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    if dtype == "fp8":
        scale = torch.ones((), device=dev)
        a8, b8 = a.to(dev, torch.float8_e4m3fn), b.to(dev, torch.float8_e4m3fn).t()  # b column-major, as required
        return lambda: torch._scaled_mm(a8, b8, scale_a=scale, scale_b=scale, out_dtype=torch.bfloat16)
    torch_dtype = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    a, b = a.to(dev, torch_dtype), b.to(dev, torch_dtype)
    return lambda: torch.mm(a, b)


def best_seconds(operation, *, device, reps: int, min_seconds: float = 0.0) -> float:
    """The fastest of at least ``reps`` timed calls of ``operation`` (after one warm-up), going on until
    ``min_seconds`` have passed: the best, since other work on a shared machine only ever slows a run down,
    and a longer window is likelier to catch a quiet moment. On CUDA each call is synchronized."""
    import torch

    dev = torch.device(device)
    operation()  # warm-up: thread pool start, page faults, kernel selection
    _synchronize(dev)
    best, done, deadline = float("inf"), 0, time.perf_counter() + min_seconds
    while done < reps or time.perf_counter() < deadline:
        start = time.perf_counter()
        operation()
        _synchronize(dev)
        best = min(best, time.perf_counter() - start)
        done += 1
    return best


def measure_matmul_flops(size: int = 2048, reps: int = 3, min_seconds: float = 0.0, *, dtype: str = "fp32",
                         device: str = "cpu", fresh: bool = False) -> float:
    """FLOP/s of a ``size``x``size`` matmul in ``dtype`` on ``device``, with torch's threads as set.

    Each product is 2·size³ FLOPs, timed by :func:`best_seconds`. Cached per process: a plan and a
    training run's MFU then divide by the same figure. ``fresh``: measure again, neither reading nor
    changing the cached figure (a benchmark that tracks the machine's rate between its runs).
    """
    key = (int(size), int(reps), float(min_seconds), dtype, str(device))
    return _measure_matmul_flops.__wrapped__(*key) if fresh else _measure_matmul_flops(*key)


@functools.lru_cache(maxsize=32)
def _measure_matmul_flops(size: int, reps: int, min_seconds: float, dtype: str, device: str) -> float:
    import torch

    if size <= 0 or reps <= 0:
        raise ValueError(f"size and reps must be positive, got {size}, {reps}")
    dev = torch.device(device)
    operation = matmul_operation(size, dtype, device)
    with _tf32(dev, dtype == "tf32"):
        seconds = best_seconds(operation, device=device, reps=reps, min_seconds=min_seconds)
    return 2.0 * size**3 / seconds


def measure_cpu_matmul_flops(size: int = 2048, reps: int = 3, min_seconds: float = 0.0) -> float:
    """FLOP/s of an fp32 ``size``x``size`` matmul on this machine's CPU (:func:`measure_matmul_flops`)."""
    return measure_matmul_flops(size, reps, min_seconds, dtype="fp32", device="cpu")


@functools.lru_cache(maxsize=8)
def measure_triad_bandwidth(array_bytes: int = 256 * 2**20, reps: int = 5, min_seconds: float = 0.0, *,
                            device: str = "cpu") -> float:
    """Bytes/s of STREAM's triad ``a = b + s·c`` over three fp32 arrays of ``array_bytes`` each on ``device``.

    Counted as STREAM counts it: 3 · array_bytes per pass (two reads, one write; the write-allocate read a
    cache may add is not counted). Arrays well beyond the last-level cache measure memory, not cache.
    """
    import torch

    n = array_bytes // 4
    if n <= 0 or reps <= 0:
        raise ValueError(f"array_bytes and reps must be positive, got {array_bytes}, {reps}")
    dev = torch.device(device)
    a = torch.zeros(n, device=dev)  # zeros, not empty: every page touched before timing
    b = torch.full((n,), 1.0, device=dev)
    c = torch.full((n,), 2.0, device=dev)
    seconds = best_seconds(lambda: torch.add(b, c, alpha=3.0, out=a), device=device, reps=reps,
                           min_seconds=min_seconds)
    return 3.0 * n * 4 / seconds


def measure_copy_bandwidth(n_bytes: int = 256 * 2**20, reps: int = 5, *, device: str = "cuda",
                           direction: str = "h2d") -> float:
    """Bytes/s of one copy of ``n_bytes`` between pinned host memory and ``device`` ('h2d' or 'd2h')."""
    import torch

    dev = torch.device(device)
    if dev.type != "cuda":
        raise ValueError(f"host<->device copies are timed on CUDA devices, not {device}")
    if direction not in ("h2d", "d2h"):
        raise ValueError(f"direction must be 'h2d' or 'd2h', got {direction!r}")
    host = torch.zeros(n_bytes, dtype=torch.uint8).pin_memory()
    gpu = torch.zeros(n_bytes, dtype=torch.uint8, device=dev)
    src, dst = (host, gpu) if direction == "h2d" else (gpu, host)
    seconds = best_seconds(lambda: dst.copy_(src, non_blocking=True), device=device, reps=reps)
    return n_bytes / seconds


def _system_memory_bytes() -> float:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return float("nan")


def cpu_accelerator(*, measure_size: int = 2048) -> Accelerator:
    """This machine's CPU as a table entry: fp32 matmul FLOP/s and triad bandwidth measured now."""
    import torch

    flops = measure_cpu_matmul_flops(measure_size)
    return Accelerator(name="cpu", description=f"this CPU, {torch.get_num_threads()} torch threads",
                       peak_flops=flops, memory_bytes=_system_memory_bytes(),
                       bandwidth=measure_triad_bandwidth(64 * 2**20), power_watts=None, link="pcie4",
                       peak_fp32_flops=flops, measured=True)


# torch.cuda.get_device_name() strings -> table keys, most specific first ("H100 PCIe" before "H100").
# Examples: "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB", "Tesla T4", "AMD Instinct MI300X".
CUDA_NAMES: list[tuple[str, str]] = [
    ("h100 pcie", "h100-pcie"), ("h100 nvl", "h100-nvl"), ("h100", "h100-sxm"), ("h200", "h200"), ("b200", "b200"), ("a100", "a100"),
    ("a10g", "a10g"), ("l4", "l4"), ("t4", "t4"), ("v100", "v100"), ("mi300x", "mi300x"),
]


def cuda_table_key(device_name: str) -> str | None:
    """The table key of a ``torch.cuda.get_device_name()`` string; None for a device not in the table."""
    name = device_name.lower().replace("-", " ")
    for needle, key in CUDA_NAMES:
        if needle in name.split() or (" " in needle and needle in name):
            return key
    return None


def cuda_peak_flops(device_name: str) -> float | None:
    """Peak dense 16-bit FLOP/s for a ``torch.cuda.get_device_name()`` string; None for a device not in
    the table (an MFU is then not reported rather than made up)."""
    key = cuda_table_key(device_name)
    return HARDWARE[key].peak_flops if key else None


def with_overrides(acc: Accelerator, *, peak_flops: float | None = None, bandwidth: float | None = None,
                   memory_bytes: float | None = None, power_watts: float | None = None) -> Accelerator:
    """A copy of ``acc`` with measured or quoted figures in place of the datasheet's."""
    changes = {k: v for k, v in dict(peak_flops=peak_flops, bandwidth=bandwidth, memory_bytes=memory_bytes,
                                     power_watts=power_watts).items() if v is not None}
    for k, v in changes.items():
        if not v > 0:
            raise ValueError(f"{k} must be positive, got {v}")
    return replace(acc, **changes) if changes else acc


def read_probe(path: str | Path) -> dict:
    """A probe.json (``groundup probe``'s output), checked: a clear error naming the file otherwise."""
    import json

    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            probe = json.load(f)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"probe not found: {path} (write one with `groundup probe --out {path}`)") from e
    except ValueError as e:
        raise ValueError(f"{path}: not JSON ({e})") from e
    if not isinstance(probe, dict) or probe.get("stage") != "probe":
        raise ValueError(f"{path}: not a probe.json from `groundup probe` (no \"stage\": \"probe\")")
    return probe


def accelerator_from_probe(probe: dict, source: str = "probe") -> Accelerator:
    """A table entry from a probe (``groundup probe``'s probe.json): the measured matmul peak (bf16 on a GPU,
    fp32 on a CPU), fp32 peak (TF32 where measured: CUDA training runs fp32 matmuls in TF32), triad
    bandwidth and all-reduce bus bandwidth; the rest (power, link) from the table's entry for the device,
    if it has one. ``source`` names the probe in errors."""
    device = probe.get("device") or {}
    matmul = {k: v.get("flops") for k, v in (probe.get("matmul") or {}).items() if isinstance(v, dict)}
    is_gpu = device.get("type") == "cuda"
    order = ("bf16", "fp16", "tf32", "fp32") if is_gpu else ("fp32", "bf16", "fp16")
    peak = next((matmul[k] for k in order if matmul.get(k)), None)
    if not peak:
        raise ValueError(f"{source}: no matmul figure (is this a probe.json from `groundup probe`?)")
    fp32 = matmul.get("tf32") or matmul.get("fp32")
    bandwidth = (probe.get("memory_bandwidth") or {}).get("bytes_per_s")
    name = str(device.get("name") or device.get("type") or "probed device")
    base = None
    if is_gpu:
        key = cuda_table_key(name)
        base = HARDWARE[key] if key else None
    return Accelerator(
        name=f"probe:{name}", description=f"{name}, measured by groundup probe ({probe.get('created', 'undated')})",
        peak_flops=float(peak), memory_bytes=float(device.get("memory_bytes") or _system_memory_bytes()),
        bandwidth=float(bandwidth or (base.bandwidth if base else float("nan"))),
        power_watts=device.get("power_limit_watts") or (base.power_watts if base else None),
        link=base.link if base else "pcie4", peak_fp32_flops=float(fp32) if fp32 else None, measured=True,
        measured_bus_bandwidth=largest_all_reduce_busbw(probe))


def largest_all_reduce_busbw(probe: dict) -> float | None:
    """The bus bandwidth of a probe's largest all-reduce: the figure a gradient all-reduce runs at."""
    rows = [r for r in (probe.get("collectives") or {}).get("results") or []
            if r.get("collective") == "all_reduce" and r.get("busbw")]
    return float(max(rows, key=lambda r: r["bytes"])["busbw"]) if rows else None
