"""Interconnect: collectives' bandwidths by nccl-tests' conventions, how long the gradient all-reduce
takes, and what share of a step it is.

nccl-tests' convention (its doc/PERFORMANCE.md; the seeds' multi-node benchmark): a collective of size S
bytes taking t seconds has algorithm bandwidth algbw = S / t and bus bandwidth busbw = algbw · factor(n),
with factor 2(n−1)/n for all-reduce and (n−1)/n for all-gather, reduce-scatter and all-to-all. The bus
bandwidth is what the collective asks of each device's link (a ring all-reduce sends and receives
2(n−1)/n · S bytes per device), so it can be compared with a link's rated per-direction bandwidth and
stays constant as n grows. S is nccl-tests' "size" column: see :data:`SIZE_MEANING`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

BUS_FACTORS: dict[str, Callable[[int], float]] = {
    "all_reduce": lambda n: 2.0 * (n - 1) / n,
    "all_gather": lambda n: (n - 1) / n,
    "reduce_scatter": lambda n: (n - 1) / n,
    "all_to_all": lambda n: (n - 1) / n,
    "broadcast": lambda n: 1.0,
    "reduce": lambda n: 1.0,
}
"""busbw / algbw per collective over n ranks (nccl-tests' doc/PERFORMANCE.md, "Summary")."""

SIZE_MEANING = {
    "all_reduce": "the buffer each rank reduces (input = output)",
    "all_gather": "the gathered output: n x each rank's input",
    "reduce_scatter": "the input: n x each rank's output",
    "all_to_all": "each rank's whole send buffer (n blocks, one per peer)",
    "broadcast": "the buffer broadcast",
    "reduce": "the buffer reduced",
}
"""What S, the size a collective's algbw divides, counts (nccl-tests' ``*GetBw`` of each test)."""


def bus_factor(collective: str, n: int) -> float:
    if collective not in BUS_FACTORS:
        raise ValueError(f"unknown collective {collective!r}; known: {', '.join(BUS_FACTORS)}")
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    return BUS_FACTORS[collective](n)


def bus_bandwidth(algorithm_bandwidth: float, n: int, collective: str = "all_reduce") -> float:
    """busbw = algbw · factor(n): 2(n−1)/n for all-reduce, (n−1)/n for all-gather, reduce-scatter, all-to-all."""
    return algorithm_bandwidth * bus_factor(collective, n)


def collective_bandwidths(collective: str, size_bytes: float, seconds: float, n: int) -> tuple[float, float]:
    """(algbw, busbw) in bytes/s of one collective of nccl-tests' size ``size_bytes`` taking ``seconds``
    (nccl-tests prints both divided by 1e9, as GB/s)."""
    if size_bytes < 0 or seconds <= 0:
        raise ValueError(f"need size >= 0 and seconds > 0, got {size_bytes}, {seconds}")
    algbw = size_bytes / seconds
    return algbw, bus_bandwidth(algbw, n, collective)


def all_reduce_seconds(n_bytes: float, n: int, bus_bandwidth_bytes_per_s: float) -> float:
    """t = S / algbw = S · 2(n−1)/n / busbw; 0 on one device."""
    if n_bytes < 0 or n <= 0 or bus_bandwidth_bytes_per_s <= 0:
        raise ValueError(f"need n_bytes >= 0, n > 0, bandwidth > 0; got {n_bytes}, {n}, {bus_bandwidth_bytes_per_s}")
    return n_bytes * 2.0 * (n - 1) / n / bus_bandwidth_bytes_per_s


def effective_bus_bandwidth(gpus: int, gpus_per_node: int, intra_node: float, inter_node: float) -> float:
    """The bus bandwidth a data-parallel all-reduce can use: the node's link within one node; across
    nodes a ring crosses the network, so the slower of the two bounds it."""
    if gpus <= gpus_per_node:
        return intra_node
    return min(intra_node, inter_node)


@dataclass(kw_only=True, frozen=True)
class GradientSync:
    """Communication of one optimizer step and its share of the step."""

    bytes_communicated: float
    """The all-reduce-equivalent payload S per step (gradients; 1.5x that under ZeRO-3)."""
    seconds: float
    """Time to move it at the bus bandwidth."""
    compute_seconds: float
    """Time of the step's FLOPs on one device at the given MFU."""
    share: float
    """seconds / (seconds + compute_seconds): the step's fraction spent communicating if nothing
    overlaps (DDP and FSDP overlap most of it with backward; this is the exposed worst case)."""
    bus_bandwidth: float
    """Bytes/s used."""


def gradient_sync(n_params: float, *, gradient_bytes: float, gpus: int, bus_bandwidth_bytes_per_s: float,
                  step_flops_per_device: float, peak_flops: float, mfu: float,
                  sharding: str = "ddp") -> GradientSync:
    """All-reduce of the gradients once per optimizer step. ZeRO-1/2 move the same volume as DDP
    (a reduce-scatter plus an all-gather is one all-reduce); ZeRO-3/FSDP gathers the weights again in
    backward, 1.5x the volume (Rajbhandari et al. 2020, section 7: 3Ψ against 2Ψ)."""
    factor = 1.5 if sharding in ("zero3", "fsdp") else 1.0
    payload = factor * n_params * gradient_bytes
    seconds = all_reduce_seconds(payload, gpus, bus_bandwidth_bytes_per_s)
    compute = step_flops_per_device / (peak_flops * mfu)
    total = seconds + compute
    return GradientSync(bytes_communicated=payload, seconds=seconds, compute_seconds=compute,
                        share=seconds / total if total else 0.0, bus_bandwidth=bus_bandwidth_bytes_per_s)
