"""torch.compile per transformer block: every block has the same code, so one compiled graph serves all."""

from __future__ import annotations

import logging
import os
import shutil

import torch
from torch import nn

log = logging.getLogger(__name__)


def cpu_compiler() -> str | None:
    """The C++ compiler inductor's CPU code would be built with ($CXX, else c++, g++ or clang++), or None."""
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


def apply_compile(model: nn.Module) -> nn.Module:
    """Compile each block in place (``Module.compile``: parameter names and state dicts are unchanged).

    Per-block compilation (as torchtitan does) keeps compile time flat in depth and composes with FSDP2,
    whose hooks sit at block boundaries, outside the compiled regions. On a CPU without a C++ compiler
    (inductor builds its CPU kernels with one) the blocks stay eager, with a warning, instead of failing at
    the first step.
    """
    device = next(model.parameters()).device
    if device.type == "cpu" and cpu_compiler() is None:
        log.warning("compile: no C++ compiler found ($CXX, c++, g++, clang++): training without torch.compile")
        return model
    for block in model.blocks:
        block.compile(dynamic=False)
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 8 * len(model.blocks))
    return model
