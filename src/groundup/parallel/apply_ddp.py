"""Data parallelism with DistributedDataParallel: a full replica per rank, gradients all-reduced in buckets."""

from __future__ import annotations

import torch
from torch import nn


def apply_ddp(model: nn.Module, mesh, device: torch.device, ignored_params=()) -> nn.Module:
    """Wrap ``model`` in DDP over the mesh's 'dp' dimension, 'dp' x 'cp' under context parallelism (call after
    every other model change).

    DDP averages gradients over the ranks, so with the loss of each micro-batch divided by the local
    accumulation count the gradient equals a single process's over the same global batch. DDP leaves
    ``ignored_params`` alone (expert parallelism's sharded experts, whose gradients it finishes itself).
    """
    from torch.nn.parallel import DistributedDataParallel as DDP

    from groundup.parallel.apply_cp import data_mesh

    group = data_mesh(mesh).get_group() if mesh is not None else None
    if ignored_params:
        ids = {id(p) for p in ignored_params}
        names = [name for name, p in model.named_parameters() if id(p) in ids]
        DDP._set_params_and_buffers_to_ignore_for_model(model, names)
    device_ids = [device.index] if device.type == "cuda" else None
    # Buffers (RoPE tables) are computed identically on every rank: no need to sync them each forward.
    return DDP(model, device_ids=device_ids, process_group=group, forward_sync_buffers=False)
