"""Inference: one decode step, one sampler, one engine; everything that generates runs through them.

- ``kv_cache.py``: the slot KV cache; a forward's view of it is the ``KVCacheStep`` the model's attention uses.
- ``weights.py``: the weights' layout for decoding (oneDNN-packed, transposed) and the row padding that
  keeps every row's result independent of the batch.
- ``decode.py``: :class:`~groundup.infer.decode.Decoder`, the one decode step (prefill, rows at their own
  positions) over the model's own forward.
- ``sampling.py``: the one sampler (logit processors, greedy or a seeded draw).
- ``speculative.py``: the acceptance rules of speculative decoding (greedy and sampled).
- ``structured.py``: response formats compiled into token masks (xgrammar).
- ``engine.py``: continuous batching and speculative rounds over a Decoder; one request validation.
- ``text.py``: token ids to text as they come (whole characters, stop strings).
- ``generate.py``: ``generate``/``generate_tokens``/``generate_batch``, thin clients of the engine, and the
  `groundup generate` stage.
- ``quantize.py``: the `groundup quantize` stage (int8 and int4 weights; the layers live in ``model/quant.py``).

The function ``generate`` is deliberately not re-exported here: binding it as ``groundup.infer.generate``
would hide the module of the same name (the `groundup generate` stage) from attribute lookups.
"""

from groundup.infer.generate import GenerationResult, generate_tokens
from groundup.infer.sampling import SamplingParams, sample_next
from groundup.infer.text import TextStream

__all__ = ["GenerationResult", "SamplingParams", "TextStream", "generate_tokens", "sample_next"]
