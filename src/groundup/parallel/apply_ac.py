"""Activation checkpointing: keep a block's input only and recompute its insides during backward."""

from __future__ import annotations

from torch import nn


def apply_ac(model: nn.Module, mode: str, every: int = 2) -> nn.Module:
    """Wrap blocks in ``checkpoint_wrapper``: all of them ('full') or one in ``every`` ('selective').

    Selective checkpointing trades a fraction of the recomputation for a fraction of the memory; the
    wrapped block's parameter names are unchanged (the wrapper's prefix is stripped from state dicts).
    """
    if mode == "none":
        return model
    if mode not in ("full", "selective"):
        raise ValueError(f"activation checkpointing mode must be none, full or selective, got {mode!r}")
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    for name, block in list(model.blocks.named_children()):  # by name: a pipeline stage keeps blocks' own indices
        if mode == "full" or int(name) % every == 0:
            model.blocks.register_module(name, checkpoint_wrapper(block, preserve_rng_state=True))
    return model


def remove_ac(model: nn.Module) -> nn.Module:
    """Undo :func:`apply_ac` in place: the blocks themselves again, so module names (LoRA's adapter files
    name modules) are those of the model file."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

    blocks = getattr(model, "blocks", None)
    for name, block in list(blocks.named_children()) if blocks is not None else []:
        if isinstance(block, CheckpointWrapper):
            blocks.register_module(name, block._checkpoint_wrapped_module)
    return model
