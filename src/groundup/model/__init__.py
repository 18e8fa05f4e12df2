"""The model: one configurable decoder-only transformer and its presets."""

from groundup.model.config import PRESETS, ModelConfig
from groundup.model.transformer import Transformer, count_parameters

__all__ = ["PRESETS", "ModelConfig", "Transformer", "count_parameters"]
