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


def test_matmul_per_format_on_this_cpu():
    supported = hardware.matmul_dtypes("cpu")
    assert supported["fp32"] is None and supported["bf16"] is None and supported["fp16"] is None
    assert "CUDA" in supported["tf32"] and "CUDA" in supported["fp8"]
    for dtype in ("fp32", "bf16", "fp16"):
        assert 1e6 < hardware.measure_matmul_flops(64, 2, dtype=dtype) < 1e14, dtype
    with pytest.raises(ValueError, match="cannot time a tf32 matmul on cpu: TF32 is a CUDA"):
        hardware.measure_matmul_flops(64, 2, dtype="tf32")
    with pytest.raises(ValueError, match="unknown dtype 'int3'"):
        hardware.measure_matmul_flops(64, 2, dtype="int3")
    cached = hardware.measure_matmul_flops(64, 2)
    assert hardware.measure_cpu_matmul_flops(64, 2) == cached  # one cached figure
    fresh = [hardware.measure_matmul_flops(64, 2, fresh=True) for _ in range(5)]
    assert min(fresh) > 1e6 and len(set(fresh) | {cached}) > 1  # timed again each time (floats never all tie)
    assert hardware.measure_matmul_flops(64, 2) == cached  # and the cached figure is left as it was


def test_triad_and_copy():
    assert 1e8 < hardware.measure_triad_bandwidth(2**20, 2) < 1e13
    with pytest.raises(ValueError):
        hardware.measure_triad_bandwidth(0)
    with pytest.raises(ValueError, match="CUDA devices, not cpu"):
        hardware.measure_copy_bandwidth(1024, device="cpu")


PROBE = {"stage": "probe", "created": "2025-01-01T00:00:00", "device": {"type": "cuda", "name": "NVIDIA H100 80GB HBM3",
         "memory_bytes": 85e9, "power_limit_watts": 690.0},
         "matmul": {"fp32": {"flops": 50e12}, "tf32": {"flops": 380e12}, "bf16": {"flops": 700e12},
                    "fp8": {"skipped": "no"}},
         "memory_bandwidth": {"bytes_per_s": 2.9e12},
         "collectives": {"results": [{"collective": "all_reduce", "bytes": 1024, "busbw": 1e9},
                                     {"collective": "all_reduce", "bytes": 2**30, "busbw": 360e9},
                                     {"collective": "all_gather", "bytes": 2**31, "busbw": 400e9}]}}


def test_a_probe_becomes_a_table_entry(tmp_path):
    acc = hardware.accelerator_from_probe(PROBE)
    assert acc.measured and acc.peak_flops == 700e12 and acc.peak_fp32_flops == 380e12  # TF32: CUDA's fp32 matmuls
    assert acc.bandwidth == 2.9e12 and acc.memory_bytes == 85e9 and acc.power_watts == 690.0
    assert acc.measured_bus_bandwidth == 360e9  # the largest all-reduce
    assert acc.link == "nvlink4"  # from the table's H100 entry
    cpu = hardware.accelerator_from_probe({"stage": "probe", "device": {"type": "cpu", "name": "a CPU"},
                                           "matmul": {"fp32": {"flops": 1e11}, "bf16": {"flops": 5e11}}})
    assert cpu.peak_flops == 1e11 and cpu.measured_bus_bandwidth is None  # fp32: what CPU training runs
    with pytest.raises(ValueError, match="my.json: no matmul figure"):
        hardware.accelerator_from_probe({"stage": "probe", "matmul": {}}, source="my.json")
    (tmp_path / "other.json").write_text('{"stage": "plan"}')
    with pytest.raises(ValueError, match="other.json: not a probe.json"):
        hardware.read_probe(tmp_path / "other.json")
    with pytest.raises(FileNotFoundError, match="groundup probe --out"):
        hardware.read_probe(tmp_path / "missing.json")
