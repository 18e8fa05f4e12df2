"""torch.compile per transformer block: every block has the same code, so one compiled graph serves all."""

from __future__ import annotations

import torch
from torch import nn


def apply_compile(model: nn.Module) -> nn.Module:
    """Compile each block in place (``Module.compile``: parameter names and state dicts are unchanged).

    Per-block compilation (as torchtitan does) keeps compile time flat in depth and composes with FSDP2,
    whose hooks sit at block boundaries, outside the compiled regions.
    """
    for block in model.blocks:
        block.compile(dynamic=False)
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 8 * len(model.blocks))
    return model
