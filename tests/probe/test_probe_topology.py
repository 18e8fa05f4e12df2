"""`nvidia-smi topo -m` parsed into a link matrix, on outputs written from nvidia-smi's legend."""

from __future__ import annotations

import pytest

from groundup.probe.topology import LEGEND, describe, nvlinks, parse_topology

# A 4-GPU NVLink node with two NICs, as a driver of the 535 series prints it: the header underlined with
# terminal escapes, tabs between cells, affinity columns, then the legend and the NIC legend.
NVLINK_NODE = (
    "\t\x1b[4mGPU0\tGPU1\tGPU2\tGPU3\tNIC0\tNIC1\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\x1b[0m\n"
    "GPU0\t X \tNV12\tNV12\tNV12\tPXB\tSYS\t0-31,64-95\t0\t\tN/A\n"
    "GPU1\tNV12\t X \tNV12\tNV12\tPXB\tSYS\t0-31,64-95\t0\t\tN/A\n"
    "GPU2\tNV12\tNV12\t X \tNV12\tSYS\tPXB\t32-63,96-127\t1\t\tN/A\n"
    "GPU3\tNV12\tNV12\tNV12\t X \tSYS\tPXB\t32-63,96-127\t1\t\tN/A\n"
    "NIC0\tPXB\tPXB\tSYS\tSYS\t X \tSYS\t\t\t\t\n"
    "NIC1\tSYS\tSYS\tPXB\tPXB\tSYS\t X \t\t\t\t\n"
    "\n"
    "Legend:\n\n"
    "  X    = Self\n"
    "  SYS  = Connection traversing PCIe as well as the SMP interconnect between NUMA nodes (e.g., QPI/UPI)\n"
    "  NODE = Connection traversing PCIe as well as the interconnect between PCIe Host Bridges within a NUMA node\n"
    "  PHB  = Connection traversing PCIe as well as a PCIe Host Bridge (typically the CPU)\n"
    "  PXB  = Connection traversing multiple PCIe bridges (without traversing the PCIe Host Bridge)\n"
    "  PIX  = Connection traversing at most a single PCIe bridge\n"
    "  NV#  = Connection traversing a bonded set of # NVLinks\n"
    "\n"
    "NIC Legend:\n\n"
    "  NIC0: mlx5_0\n"
    "  NIC1: mlx5_1\n"
)

# A PCIe-only box (an A40 pair bridged by NVLink, two more across the NUMA nodes), an older driver: no NIC
# columns, no GPU NUMA ID, no escapes. The seeds measured an A40 NVLink pair at 47.45 GB/s all-reduce busbw,
# 3.86 across NODE and 1.40 across SYS.
PCIE_BOX = """\
\tGPU0\tGPU1\tGPU2\tGPU3\tCPU Affinity\tNUMA Affinity
GPU0\t X \tNV4\tNODE\tSYS\t0-23\t0
GPU1\tNV4\t X \tPIX\tSYS\t0-23\t0
GPU2\tNODE\tPIX\t X \tPHB\t0-23\t0
GPU3\tSYS\tSYS\tPHB\t X \t24-47\t1

Legend:

  X    = Self
  SYS  = Connection traversing PCIe as well as the SMP interconnect between NUMA nodes (e.g., QPI/UPI)
  NV#  = Connection traversing a bonded set of # NVLinks
"""


def test_an_nvlink_node_becomes_a_link_matrix():
    topo = parse_topology(NVLINK_NODE)
    assert topo.devices == ["GPU0", "GPU1", "GPU2", "GPU3", "NIC0", "NIC1"]
    assert topo.gpus == ["GPU0", "GPU1", "GPU2", "GPU3"]
    assert topo.matrix[0] == ["X", "NV12", "NV12", "NV12", "PXB", "SYS"]
    assert topo.link("GPU2", "NIC1") == "PXB" and topo.link("NIC0", "GPU3") == "SYS"
    assert all(topo.matrix[i][i] == "X" for i in range(6))
    assert topo.gpu_links() == {"NV12": 6}  # every one of the 6 GPU pairs
    assert topo.slowest_gpu_link() == "NV12"
    assert topo.affinity["GPU2"] == {"CPU Affinity": "32-63,96-127", "NUMA Affinity": "1", "GPU NUMA ID": "N/A"}
    assert topo.affinity["NIC0"] == {}
    assert topo.nics == {"NIC0": "mlx5_0", "NIC1": "mlx5_1"}
    assert topo.as_dict()["gpu_links"] == {"NV12": 6}


def test_a_pcie_box_and_its_slowest_path():
    topo = parse_topology(PCIE_BOX)
    assert topo.devices == ["GPU0", "GPU1", "GPU2", "GPU3"]
    assert topo.gpu_links() == {"NV4": 1, "NODE": 1, "SYS": 2, "PIX": 1, "PHB": 1}
    assert topo.slowest_gpu_link() == "SYS"
    assert topo.affinity["GPU3"] == {"CPU Affinity": "24-47", "NUMA Affinity": "1"}
    assert topo.nics == {}


def test_the_legend():
    assert nvlinks("NV18") == 18 and nvlinks("PIX") == 0
    assert describe("NV4") == "a bonded set of 4 NVLinks"
    assert "NUMA" in describe("SYS") and "host bridge" in describe("PHB")
    assert set(LEGEND) == {"X", "SYS", "NODE", "PHB", "PXB", "PIX", "NV#"}
    with pytest.raises(ValueError, match="unknown connection code 'QPI'"):
        describe("QPI")


def test_bad_output_is_named():
    with pytest.raises(ValueError, match="no header line naming GPU0"):
        parse_topology("No devices were found\n")
    with pytest.raises(ValueError, match=r"line 3: GPU1: unknown connection code 'NVL'"):
        parse_topology("\tGPU0\tGPU1\nGPU0\t X \tNV2\nGPU1\tNVL\t X \n")
    with pytest.raises(ValueError, match=r"line 2: GPU0 has 1 connections for 2 devices"):
        parse_topology("\tGPU0\tGPU1\nGPU0\t X \n")
