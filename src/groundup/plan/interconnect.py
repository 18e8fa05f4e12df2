"""Interconnect: how long the gradient all-reduce takes, and what share of a step it is.

nccl-tests' convention (the seeds' multi-node benchmark): an all-reduce of S bytes taking t seconds has
algorithm bandwidth algbw = S / t and bus bandwidth busbw = algbw · 2(n−1)/n. The bus bandwidth is what
a ring all-reduce asks of each device's link (each sends and receives 2(n−1)/n · S bytes), so it can be
compared with a link's rated per-direction bandwidth and stays constant as n grows.
"""

from __future__ import annotations

from dataclasses import dataclass


def bus_bandwidth(algorithm_bandwidth: float, n: int) -> float:
    """busbw = algbw · 2(n−1)/n."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    return algorithm_bandwidth * 2.0 * (n - 1) / n


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
