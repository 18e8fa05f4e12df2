"""Inference: sampling, KV-cached generation with streaming and stop strings, the `generate` stage.

The entry points that serving and evaluation reuse::

    from groundup.infer.generate import generate, generate_tokens, TextStream, GenerationResult
    from groundup.infer.sampling import SamplingParams, sample_next

The function ``generate`` is deliberately not re-exported here: binding it as ``groundup.infer.generate``
would hide the module of the same name (the `groundup generate` stage) from attribute lookups.
"""

from groundup.infer.generate import GenerationResult, TextStream, generate_tokens
from groundup.infer.sampling import SamplingParams, sample_next

__all__ = ["GenerationResult", "SamplingParams", "TextStream", "generate_tokens", "sample_next"]
