"""The collective sweep: sizes as nccl-tests sweeps them, and a sweep over 2 local gloo ranks."""

from __future__ import annotations

import pytest

from groundup.plan.interconnect import bus_factor
from groundup.probe import collectives


def test_sizes_and_counts():
    assert collectives.sweep_sizes(1024, 8192) == [1024, 2048, 4096, 8192]
    assert collectives.sweep_sizes(1024, 3000) == [1024, 2048]
    assert len(collectives.sweep_sizes(1024, 2**30)) == 21  # 1 KiB .. 1 GiB
    with pytest.raises(ValueError):
        collectives.sweep_sizes(2048, 1024)
    assert collectives.element_count(1024, 2) == 256
    assert collectives.element_count(1000, 3) == 249  # 250 elements, rounded down to a multiple of 3 ranks
    with pytest.raises(ValueError, match="unknown collective 'gossip'"):
        collectives.operation("gossip", None, None, 4, 2)


def test_a_sweep_over_two_gloo_ranks():
    settings = {"collectives": list(collectives.COLLECTIVES), "min_bytes": 1024, "max_bytes": 64 * 1024,
                "target_seconds": 0.002, "seconds_per_collective": 5.0, "device": "cpu"}
    result = collectives.run_local(2, settings, timeout=300)
    assert result["backend"] == "gloo" and result["ranks"] == 2 and result["dtype"] == "float32"
    rows = result["results"]
    assert {r["collective"] for r in rows} == set(collectives.COLLECTIVES), result["notes"]
    for name in collectives.COLLECTIVES:
        sizes = [r["bytes"] for r in rows if r["collective"] == name]
        assert sizes == [1024 * 2**k for k in range(7)], name  # 1 KiB .. 64 KiB
    for r in rows:
        assert r["seconds"] > 0 and r["iters"] >= 1 and r["count"] * 4 == r["bytes"]
        assert r["algbw"] == pytest.approx(r["bytes"] / r["seconds"])
        assert r["busbw"] == pytest.approx(r["algbw"] * bus_factor(r["collective"], 2))
    table = collectives.format_table(result)
    assert "all_to_all" in table and "busbw" in table and len(table.splitlines()) == 2 + len(rows)
