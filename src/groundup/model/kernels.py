"""Weight-only quantized products on the CPU: groundup's AVX2 kernels (``csrc/woq.cpp``), built on first use
(with AVX512-VNNI's integer dot product where the CPU has it).

PyTorch's own CPU kernels for weight-only int8 and int4 (``_weight_int8pack_mm``,
``_weight_int4pack_mm_for_cpu``) ran slower than a float32 product on the AVX2 and AVX-512 machines
these were measured on (``GROUNDUP_WOQ_KERNELS=0`` selects them, for instance under
``benchmarks/decode_llamacpp.py``), which defeats their purpose. The kernels here
read each weight byte once and convert it in registers, which is what a memory-bound decode step needs.

They are compiled with ``torch.utils.cpp_extension`` the first time a quantized model runs on the CPU
(a C++ compiler and ninja are needed; built once, then cached in torch's extension
folder). Where that fails, or the CPU lacks AVX2, :func:`woq` returns None and the quantized layers use
PyTorch's kernels, with one warning.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "woq.cpp"


@functools.cache
def woq():
    """The compiled kernels module (``int8_mm``, ``int4_mm``), or None where they cannot be built here."""
    if os.environ.get("GROUNDUP_WOQ_KERNELS", "1") == "0":
        return None
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        log.warning("this CPU has no AVX2: quantized layers use PyTorch's slower weight-only kernels")
        return None
    try:
        from torch.utils.cpp_extension import load

        try:  # the ninja package's binary, where the environment's bin folder is not on PATH
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except ImportError:
            pass

        flags = ["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp"]
        name = "groundup_woq"
        # one instruction per integer dot product (AVX512-VNNI); a private helper, absent from some torch versions
        if getattr(torch.cpu, "_is_vnni_supported", lambda: False)():
            flags += ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni"]
            name += "_vnni"
        return load(name=name, sources=[str(SOURCE)], verbose=False, extra_cflags=flags, extra_ldflags=["-fopenmp"])
    except Exception as e:  # no compiler, no ninja, a failed build
        log.warning("could not build groundup's quantized CPU kernels (%s): using PyTorch's slower ones",
                    str(e).splitlines()[0] if str(e) else type(e).__name__)
        return None
