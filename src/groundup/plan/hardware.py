"""The hardware table: peak dense 16-bit FLOP/s, memory, bandwidth and power of common accelerators,
interconnect links, and a CPU entry measured on the spot.

Peaks are dense (no 2:4 sparsity): vendor sheets often print the sparse figure, twice the dense one.
Memory sizes are decimal gigabytes as sold (80 GB = 80e9 bytes) unless a comment says GiB.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import asdict, dataclass, replace

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


@functools.lru_cache(maxsize=8)
def measure_cpu_matmul_flops(size: int = 2048, reps: int = 3, min_seconds: float = 0.0) -> float:
    """FLOP/s of an fp32 ``size``x``size`` matmul on this machine's CPU, with torch's threads as set.

    Each product is 2·size³ FLOPs; one warm-up, then the best of at least ``reps`` timed runs, going on
    until ``min_seconds`` have passed (the best, since other work on a shared machine only ever slows a
    run down; a longer window is likelier to catch a quiet moment). Cached per process: a plan and a
    training run's MFU then divide by the same figure.
    """
    import torch

    if size <= 0 or reps <= 0:
        raise ValueError(f"size and reps must be positive, got {size}, {reps}")
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    torch.mm(a, b)  # warm-up: thread pool start, page faults
    best, done, deadline = float("inf"), 0, time.perf_counter() + min_seconds
    while done < reps or time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
        done += 1
    return 2.0 * size**3 / best


@functools.lru_cache(maxsize=4)
def measure_cpu_memory_bandwidth(n_bytes: int = 128 * 2**20, reps: int = 3) -> float:
    """Bytes/s of a large tensor copy (read + write counted), best of ``reps``: a decode-speed bound."""
    import torch

    src = torch.ones(n_bytes // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2.0 * src.numel() * 4 / best


def _system_memory_bytes() -> float:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return float("nan")


def cpu_accelerator(*, measure_size: int = 2048) -> Accelerator:
    """This machine's CPU as a table entry: fp32 matmul FLOP/s and copy bandwidth measured now."""
    import torch

    flops = measure_cpu_matmul_flops(measure_size)
    return Accelerator(name="cpu", description=f"this CPU, {torch.get_num_threads()} torch threads",
                       peak_flops=flops, memory_bytes=_system_memory_bytes(),
                       bandwidth=measure_cpu_memory_bandwidth(), power_watts=None, link="pcie4",
                       peak_fp32_flops=flops, measured=True)


# torch.cuda.get_device_name() strings -> table keys, most specific first ("H100 PCIe" before "H100").
# Examples: "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB", "Tesla T4", "AMD Instinct MI300X".
CUDA_NAMES: list[tuple[str, str]] = [
    ("h100 pcie", "h100-pcie"), ("h100 nvl", "h100-nvl"), ("h100", "h100-sxm"), ("h200", "h200"), ("b200", "b200"), ("a100", "a100"),
    ("a10g", "a10g"), ("l4", "l4"), ("t4", "t4"), ("v100", "v100"), ("mi300x", "mi300x"),
]


def cuda_peak_flops(device_name: str) -> float | None:
    """Peak dense 16-bit FLOP/s for a ``torch.cuda.get_device_name()`` string; None for a device not in
    the table (an MFU is then not reported rather than made up)."""
    name = device_name.lower().replace("-", " ")
    for needle, key in CUDA_NAMES:
        if needle in name.split() or (" " in needle and needle in name):
            return HARDWARE[key].peak_flops
    return None


def with_overrides(acc: Accelerator, *, peak_flops: float | None = None, bandwidth: float | None = None,
                   memory_bytes: float | None = None, power_watts: float | None = None) -> Accelerator:
    """A copy of ``acc`` with measured or quoted figures in place of the datasheet's."""
    changes = {k: v for k, v in dict(peak_flops=peak_flops, bandwidth=bandwidth, memory_bytes=memory_bytes,
                                     power_watts=power_watts).items() if v is not None}
    for k, v in changes.items():
        if not v > 0:
            raise ValueError(f"{k} must be positive, got {v}")
    return replace(acc, **changes) if changes else acc
