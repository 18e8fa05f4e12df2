"""The GPUs' topology: ``nvidia-smi topo -m`` parsed into a link matrix.

``nvidia-smi topo -m`` prints a table whose header names the devices (GPU0, GPU1, ..., and NICs: NIC0 or
mlx5_0), then ``CPU Affinity``, ``NUMA Affinity`` (and ``GPU NUMA ID`` in newer drivers); each row gives a
device's connection to every other, in the codes of its legend (:data:`LEGEND`). Some drivers underline the
header with terminal escapes; they are stripped.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field

LEGEND = {
    "X": "self",
    "SYS": "PCIe and the SMP interconnect between NUMA nodes (e.g. QPI/UPI)",
    "NODE": "PCIe and the interconnect between PCIe host bridges within a NUMA node",
    "PHB": "PCIe and a PCIe host bridge (typically the CPU)",
    "PXB": "multiple PCIe bridges, without the PCIe host bridge",
    "PIX": "at most a single PCIe bridge",
    "NV#": "a bonded set of # NVLinks",
}
"""``nvidia-smi topo -m``'s legend: what each connection code traverses."""

PCIE_RANK = {"PIX": 1, "PXB": 2, "PHB": 3, "NODE": 4, "SYS": 5}
"""PCIe paths from the shortest to the longest (an NVLink connection comes before all of them)."""

log = logging.getLogger(__name__)

_ESCAPES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_NVLINK = re.compile(r"^NV(\d+)$")
_DEVICE = re.compile(r"^(GPU\d+|NIC\d+|mlx\d+_\d+|[A-Za-z]+\d*_\d+)$")
AFFINITY_COLUMNS = ("CPU Affinity", "NUMA Affinity", "GPU NUMA ID")


@dataclass
class Topology:
    """Devices (GPUs and NICs, in the table's order), the connection code between each pair, and each
    device's CPU and NUMA affinity."""

    devices: list[str]
    matrix: list[list[str]]
    """``matrix[i][j]``: the code of the connection from devices[i] to devices[j] (``X`` on the diagonal)."""
    affinity: dict[str, dict[str, str]] = field(default_factory=dict)
    nics: dict[str, str] = field(default_factory=dict)
    """NIC legend: NIC0 -> mlx5_0."""

    @property
    def gpus(self) -> list[str]:
        return [d for d in self.devices if d.startswith("GPU")]

    def link(self, a: str, b: str) -> str:
        return self.matrix[self.devices.index(a)][self.devices.index(b)]

    def gpu_links(self) -> dict[str, int]:
        """How many GPU pairs each connection code joins."""
        counts: dict[str, int] = {}
        gpus = self.gpus
        for i, a in enumerate(gpus):
            for b in gpus[i + 1:]:
                code = self.link(a, b)
                counts[code] = counts.get(code, 0) + 1
        return counts

    def slowest_gpu_link(self) -> str | None:
        """The longest path between two GPUs: a PCIe path if any pair has no NVLink, else the fewest NVLinks."""
        codes = list(self.gpu_links())
        if not codes:
            return None
        return max(codes, key=lambda c: PCIE_RANK.get(c, 0) * 1000 - nvlinks(c))

    def as_dict(self) -> dict:
        return {**asdict(self), "gpu_links": self.gpu_links(), "slowest_gpu_link": self.slowest_gpu_link()}


def nvlinks(code: str) -> int:
    """The number of bonded NVLinks of an ``NV#`` code (0 for a PCIe path)."""
    m = _NVLINK.match(code)
    return int(m.group(1)) if m else 0


def describe(code: str) -> str:
    """The legend's meaning of a connection code."""
    n = nvlinks(code)
    if n:
        return f"a bonded set of {n} NVLinks"
    if code not in LEGEND:
        raise ValueError(f"unknown connection code {code!r}; the legend has {', '.join(LEGEND)}")
    return LEGEND[code]


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.split("\t")]


def parse_topology(text: str) -> Topology:
    """Parse ``nvidia-smi topo -m`` output; a row or code that does not fit is an error naming its line."""
    lines = [_ESCAPES.sub("", line).rstrip("\n") for line in text.splitlines()]
    header_at = next((i for i, line in enumerate(lines) if "GPU0" in _cells(line)), None)
    if header_at is None:
        raise ValueError("not `nvidia-smi topo -m` output: no header line naming GPU0")
    header = [c for c in _cells(lines[header_at]) if c]
    devices = [c for c in header if c not in AFFINITY_COLUMNS]
    extra = [c for c in header if c in AFFINITY_COLUMNS]
    matrix, affinity = [], {}
    for number, line in enumerate(lines[header_at + 1:], start=header_at + 2):
        cells = _cells(line)
        if not cells[0] or not _DEVICE.match(cells[0]):
            if matrix:  # the table ended (a blank line, then the legend)
                break
            continue
        name, row = cells[0], cells[1:]
        codes = row[:len(devices)]
        if len(codes) < len(devices):
            raise ValueError(f"line {number}: {name} has {len(codes)} connections for {len(devices)} devices")
        for code in codes:
            if code not in LEGEND and not _NVLINK.match(code):
                raise ValueError(f"line {number}: {name}: unknown connection code {code!r}")
        matrix.append(codes)
        # Drivers pad the affinity columns with empty cells ("0\t\tN/A"): their values in order, blanks left out.
        values = [value for value in row[len(devices):] if value]
        affinity[name] = dict(zip(extra, values, strict=False))
    order = [row_name for row_name in affinity]
    if order != devices:
        raise ValueError(f"rows {order} do not match the header's devices {devices}")
    nics = {}
    for line in lines:
        m = re.match(r"^\s*(NIC\d+):\s*(\S+)\s*$", line)
        if m:
            nics[m.group(1)] = m.group(2)
    return Topology(devices=devices, matrix=matrix, affinity=affinity, nics=nics)


def read_topology(timeout: float = 20.0) -> Topology | None:
    """This node's topology from ``nvidia-smi topo -m``; None where nvidia-smi is absent or fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, "topo", "-m"], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        log.warning("nvidia-smi topo -m failed (exit %d): %s", done.returncode, " ".join(done.stderr.split())[:200])
        return None
    try:
        return parse_topology(done.stdout)
    except ValueError as e:
        log.warning("nvidia-smi topo -m: output not understood (%s)", e)
        return None
