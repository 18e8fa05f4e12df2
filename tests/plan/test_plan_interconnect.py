"""Interconnect: nccl-tests' bus bandwidth and the all-reduce's share of a step."""

from __future__ import annotations

import pytest

from groundup.plan import interconnect


def test_bus_bandwidth_convention():
    assert interconnect.bus_bandwidth(100e9, 8) == pytest.approx(175e9)
    assert interconnect.bus_bandwidth(100e9, 1) == 0
    # The time for S bytes at a bus bandwidth inverts it.
    s, n, busbw = 4e9, 4, 222e9  # the seeds' 4 GB all-reduce on a DGX A100 (4 GPUs, 222 GB/s)
    t = interconnect.all_reduce_seconds(s, n, busbw)
    assert interconnect.bus_bandwidth(s / t, n) == pytest.approx(busbw)
    assert interconnect.all_reduce_seconds(s, 1, busbw) == 0


def test_crossing_nodes_uses_the_slower_link():
    assert interconnect.effective_bus_bandwidth(8, 8, 450e9, 50e9) == 450e9
    assert interconnect.effective_bus_bandwidth(16, 8, 450e9, 50e9) == 50e9


def test_gradient_sync_share():
    sync = interconnect.gradient_sync(1e9, gradient_bytes=2, gpus=8, bus_bandwidth_bytes_per_s=100e9,
                                      step_flops_per_device=1e15, peak_flops=1e15, mfu=0.5)
    assert sync.seconds == pytest.approx(2e9 * 2 * 7 / 8 / 100e9)
    assert sync.compute_seconds == pytest.approx(2.0)
    assert sync.share == pytest.approx(sync.seconds / (sync.seconds + 2.0))
    zero3 = interconnect.gradient_sync(1e9, gradient_bytes=2, gpus=8, bus_bandwidth_bytes_per_s=100e9,
                                       step_flops_per_device=1e15, peak_flops=1e15, mfu=0.5, sharding="fsdp")
    assert zero3.bytes_communicated == pytest.approx(1.5 * sync.bytes_communicated)


def test_bad_input_is_refused():
    with pytest.raises(ValueError):
        interconnect.all_reduce_seconds(1e9, 0, 1e9)
    with pytest.raises(ValueError):
        interconnect.all_reduce_seconds(1e9, 2, 0)
