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


@pytest.mark.parametrize(("collective", "n", "busbw_gbs"), [
    # nccl-tests' PERFORMANCE.md: algbw = S / t with S the whole buffer (all-gather's output, reduce-scatter's
    # input); busbw = algbw * 2(n-1)/n for all-reduce, * (n-1)/n for all-gather, reduce-scatter and all-to-all
    ("all_reduce", 8, 175.0), ("all_gather", 8, 87.5), ("reduce_scatter", 8, 87.5), ("all_to_all", 8, 87.5),
    ("all_reduce", 2, 100.0), ("all_gather", 2, 50.0), ("reduce_scatter", 2, 50.0), ("all_to_all", 2, 50.0),
])
def test_bus_bandwidth_of_each_collective_as_nccl_tests_reports_it(collective, n, busbw_gbs):
    size, seconds = 1e9, 0.01  # 1 GB in 10 ms: algbw 100 GB/s
    assert interconnect.bus_bandwidth(size / seconds, n, collective) == pytest.approx(busbw_gbs * 1e9)


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


def test_collective_bandwidths_are_nccl_tests():
    # Lines of nccl-tests output: size (B), time (us), algbw, busbw (GB/s).
    # all_reduce_perf on 16 ranks: "8388608 2097152 float sum 1245.2 6.74 12.63"
    algbw, busbw = interconnect.collective_bandwidths("all_reduce", 8388608, 1245.2e-6, 16)
    assert round(algbw / 1e9, 2) == 6.74 and round(busbw / 1e9, 2) == 12.63
    # all_reduce_perf on 8 ranks: "134217728 33554432 float sum -1 5986.48 22.42 39.24"
    algbw, busbw = interconnect.collective_bandwidths("all_reduce", 134217728, 5986.48e-6, 8)
    assert round(algbw / 1e9, 2) == 22.42 and round(busbw / 1e9, 2) == 39.24
    # The other collectives: S/t and (n-1)/n, S being the whole buffer (nccl-tests' size column).
    for name in ("all_gather", "reduce_scatter", "all_to_all"):
        algbw, busbw = interconnect.collective_bandwidths(name, 1 << 30, 0.01, 8)
        assert algbw == pytest.approx((1 << 30) / 0.01) and busbw == pytest.approx(algbw * 7 / 8)
        assert interconnect.bus_factor(name, 2) == 0.5
    assert interconnect.bus_factor("all_reduce", 2) == 1.0 and interconnect.bus_factor("broadcast", 8) == 1.0
    assert interconnect.bus_bandwidth(100e9, 4, "all_gather") == pytest.approx(75e9)
    with pytest.raises(ValueError, match="unknown collective 'gossip'"):
        interconnect.bus_factor("gossip", 4)
    with pytest.raises(ValueError):
        interconnect.collective_bandwidths("all_reduce", 1024, 0.0, 2)


def test_the_seeds_measured_busbw_as_times():
    # The seeds' nccl-tests figures, read back as the time of a 4 GB all-reduce: an A40 NVLink pair at
    # 47.45 GB/s busbw moves it in S·2(n-1)/n / busbw; across SYS (1.40 GB/s) it takes 34x longer.
    nvlink = interconnect.all_reduce_seconds(4e9, 2, 47.45e9)
    sys_path = interconnect.all_reduce_seconds(4e9, 2, 1.40e9)
    assert nvlink == pytest.approx(4e9 / 47.45e9) and sys_path / nvlink == pytest.approx(47.45 / 1.40)
    # DGX H100, 4 GPUs: 369.9 GB/s busbw is an algbw of 369.9 / 1.5 = 246.6 GB/s.
    _, busbw = interconnect.collective_bandwidths("all_reduce", 4e9, 4e9 / 246.6e9, 4)
    assert busbw == pytest.approx(369.9e9)
