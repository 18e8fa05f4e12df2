"""The hardware table and the CPU measured on the spot."""

from __future__ import annotations

import pytest

from groundup.plan import hardware

REQUIRED = ["a100", "h100-sxm", "h100-pcie", "h200", "b200", "l4", "a10g", "t4", "v100", "mi300x", "tpu-v4",
            "tpu-v5e", "gaudi2", "gaudi3"]


def test_table_has_every_device_with_sane_figures():
    for name in REQUIRED:
        acc = hardware.get_accelerator(name)
        assert 10e12 < acc.peak_flops < 5e15, name
        assert 8e9 <= acc.memory_bytes <= 250e9, name
        assert 100e9 < acc.bandwidth < 10e12, name
        assert acc.link in hardware.LINKS, name
    # The seeds' peak table.
    assert hardware.get_accelerator("h100").peak_flops == 989.5e12
    assert hardware.get_accelerator("H100_PCIe").peak_flops == 756.5e12
    assert hardware.get_accelerator("a100").peak_flops == 312e12
    assert hardware.get_accelerator("tpu-v4").peak_flops == 275e12


def test_unknown_gpu_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown GPU 'h900'.*h100-sxm.*mi300x"):
        hardware.get_accelerator("h900")
    with pytest.raises(ValueError, match="known"):
        hardware.get_link("carrier-pigeon")


def test_cpu_is_measured():
    flops = hardware.measure_cpu_matmul_flops(128, 2)
    assert 1e7 < flops < 1e14
    acc = hardware.cpu_accelerator(measure_size=128)
    assert acc.measured and acc.peak_flops > 0 and acc.bandwidth > 0
    with pytest.raises(ValueError):
        hardware.measure_cpu_matmul_flops(0)


def test_overrides():
    acc = hardware.with_overrides(hardware.get_accelerator("a100"), bandwidth=1.7e12)
    assert acc.bandwidth == 1.7e12 and acc.peak_flops == 312e12
    with pytest.raises(ValueError):
        hardware.with_overrides(acc, peak_flops=-1)


@pytest.mark.parametrize(("device_name", "key"), [
    ("NVIDIA H100 80GB HBM3", "h100-sxm"),
    ("NVIDIA H100 PCIe", "h100-pcie"),
    ("NVIDIA H100 NVL", "h100-nvl"),
    ("NVIDIA A100-SXM4-80GB", "a100"),
    ("NVIDIA A100 80GB PCIe", "a100"),
    ("Tesla T4", "t4"),
    ("Tesla V100-SXM2-32GB", "v100"),
    ("NVIDIA L4", "l4"),
    ("NVIDIA A10G", "a10g"),
    ("AMD Instinct MI300X", "mi300x"),
])
def test_cuda_device_names_map_to_the_table(device_name, key):
    assert hardware.cuda_peak_flops(device_name) == hardware.HARDWARE[key].peak_flops


def test_unknown_cuda_device_has_no_peak():
    assert hardware.cuda_peak_flops("NVIDIA GeForce RTX 4090") is None
