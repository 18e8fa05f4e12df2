"""The one decode step: the model's own forward over rows of a slot KV cache.

Every inference path runs through :class:`Decoder`: ``groundup generate`` and ``chat``, the server's
engine, speculative decoding (draft guesses and target verification), evaluation's generation tasks.
The model computes (``Transformer.hidden_states`` with a ``KVCacheStep``); this module decides the
weights' layout on the device, keeps the cache, and pads batches so that rows are computed alike.

- :meth:`Decoder.prefill` runs one sequence's tokens into its slot, from a position on.
- :meth:`Decoder.rows` runs single tokens of many sequences, each at its own position in its own slot:
  a decode step, or a speculative verification (several rows of one slot).

Rows of a step are padded to what :func:`~groundup.infer.weights.row_padding` found the weights' kernels
need (padding rows write into the cache's scratch slot), so a row's logits do not depend on the batch.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from groundup.infer.kv_cache import ReadStep, SlotKVCache, visible_keys
from groundup.infer.weights import PADDINGS, decode_view, default_layout, row_padding
from groundup.model.transformer import first_tensor

_VIEWS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


_OPTIMIZER_STEPS = [0]
"""Optimizer steps taken in this process, by any ``torch.optim.Optimizer`` (a global post-step hook)."""


def _count_step(optimizer, args, kwargs) -> None:
    _OPTIMIZER_STEPS[0] += 1


register_optimizer_step_post_hook(_count_step)


@torch.no_grad()
def _checksum(t: torch.Tensor) -> int:
    """The sum of a tensor's bits read as integers of its element size: it moves with any change to the values
    but for a coincidence (a permutation, or changes that cancel)."""
    t = t.detach()
    if not t.is_contiguous():
        t = t.contiguous()
    as_int = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return int(t.reshape(-1).view(as_int).sum(dtype=torch.int64))


def _weights_key(model: nn.Module) -> tuple:
    """Changes whenever a parameter is replaced or modified: pointers and version counters (a load, an in-place
    edit), the process's optimizer steps (fused AdamW updates parameters without moving their version
    counters), and a checksum of the values (for edits through ``.data``, which bypass the counters too)."""
    params = list(model.parameters())
    return (_OPTIMIZER_STEPS[0], tuple((p.data_ptr(), p._version) for p in params),
            tuple(_checksum(p) for p in params))


def cached_view(model: nn.Module, layout: str = "auto") -> tuple[nn.Module, str]:
    """``(decode_view(model, layout), row_padding(view))``, reused while the model's weights stay the same.

    Packing the weights and probing the kernels cost more than a short generation: a caller that generates
    many times from one model (samples after training, an evaluation's generation tasks) pays once.
    """
    layout = default_layout(model) if layout == "auto" else layout
    key = (layout, _weights_key(model))
    entry = _VIEWS.get(model, {}).get(key[0])
    if entry is not None and entry[0] == key:
        return entry[1], entry[2]
    view = decode_view(model, layout)
    padding = row_padding(view)
    _VIEWS.setdefault(model, {})[layout] = (key, view, padding)
    return view, padding


class Decoder:
    """A model ready to decode: its weights in the device's layout and a KV cache of ``num_slots`` sequences.

    ``padding`` overrides the probed row padding ('none' gives up batch invariance for a single row's speed).
    ``compile``: decode steps (rows) run as one ``torch.compile`` graph (fewer, fused kernels: less of a step's
    time goes into launching many small operations). The graph reads the rows' keys and writes this step's
    back afterwards (:class:`~groundup.infer.kv_cache.ReadStep`), so the whole cache is never copied; it is
    compiled on the first steps, which take that much longer. Prefill runs uncompiled. With ``layout='auto'``
    the compiled graph multiplies by the model's own weights ('plain'): inductor packs them itself.
    """

    def __init__(self, model: nn.Module, *, num_slots: int, max_len: int | None = None, layout: str = "auto",
                 padding: str | None = None, compile: bool = False) -> None:
        self.model = model
        self.config = model.config
        if compile and layout == "auto":  # inductor packs the weights itself and cannot lower oneDNN's packed ones
            layout = "plain"
        self.view, probed = cached_view(model, layout)
        self.padding = padding or probed
        if self.padding not in PADDINGS:
            raise ValueError(f"unknown row padding {self.padding!r}; known: {', '.join(PADDINGS)}")
        self.pad_rows = PADDINGS[self.padding]
        ref = first_tensor(model)
        self.device = ref.device
        with torch.inference_mode():
            self.cache = SlotKVCache(self.config, num_slots, max_len, dtype=ref.dtype if ref.is_floating_point()
                                     else torch.float32, device=self.device)
        self.max_len = self.cache.max_len
        self._compiled = None
        if compile:
            view = self.view

            def decode(tokens, k_read, v_read, positions, mask, pair_rows, pair_pos, pair_src):
                step = ReadStep(k_read, v_read, positions, mask, pair_rows, pair_pos, pair_src)
                logits = view.logits(view.hidden_states(tokens, step)[:, -1])
                return logits, torch.stack(step.new_k), torch.stack(step.new_v)

            self._compiled = torch.compile(decode, dynamic=True)

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, slots: list[int], positions: torch.Tensor, top: int, *,
                all_positions: bool = False) -> torch.Tensor:
        """Logits of the last position of each row (B, V), or of every position (B, T, V); ``top`` is the
        largest of ``positions`` (B, T)."""
        step = self.cache.step(slots, positions, top)
        h = self.view.hidden_states(tokens, step)  # (B, T, C)
        return self.view.logits(h if all_positions else h[:, -1])

    def prefill(self, slot: int, ids: list[int], start: int = 0, *, all_positions: bool = False) -> torch.Tensor:
        """Run ``ids`` at positions ``start..`` of ``slot``: logits of the last token (V,), or of each (T, V)."""
        chunk = self.cache.max_tokens_per_forward or len(ids)
        if len(ids) > chunk:  # a rolling cache: in pieces whose writes overwrite no key their queries see
            pieces = [self.prefill(slot, ids[i:i + chunk], start + i, all_positions=all_positions)
                      for i in range(0, len(ids), chunk)]
            return torch.cat(pieces) if all_positions else pieces[-1]
        tokens = torch.tensor([ids], dtype=torch.long, device=self.device)
        positions = torch.arange(start, start + len(ids), device=self.device)[None]
        return self.forward(tokens, [slot], positions, start + len(ids) - 1, all_positions=all_positions)[0]

    def rows(self, slots: list[int], positions: list[int], tokens: list[int]) -> torch.Tensor:
        """One token per row at its own (slot, position); logits (n, V). Rows of one slot are consecutive
        positions of one sequence (speculative verification): each sees the keys of those before it."""
        n = len(tokens)
        padding = self.pad_rows(n) - n
        if padding:
            slots, positions, tokens = slots + [self.cache.scratch] * padding, positions + [0] * padding, \
                tokens + [0] * padding
        position_t = torch.tensor(positions, device=self.device)[:, None]
        token_t = torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None]
        if self._compiled is not None:
            return self._compiled_rows(token_t, slots, positions, position_t)[:n]
        return self.forward(token_t, slots, position_t, max(positions))[:n]

    @torch.inference_mode()
    def _compiled_rows(self, tokens: torch.Tensor, slots: list[int], positions: list[int],
                       position_t: torch.Tensor) -> torch.Tensor:
        """A decode step through the compiled graph: the rows' keys read, the step run, its keys written back."""
        key_len = self.cache.key_len(max(positions))
        k_read, v_read = self.cache.read(slots, key_len)
        cache = self.cache
        mask = visible_keys(key_len, position_t, cache.window, capacity=cache.capacity if cache.rolling else None,
                            top=cache.slot_tops(slots, position_t))  # (B, 1, 1, L)
        pairs = [(j, cache.place(positions[i]), i) for j, sj in enumerate(slots) for i, si in enumerate(slots)
                 if si == sj]
        pair_rows, pair_pos, pair_src = (torch.tensor(col, device=self.device) for col in zip(*pairs, strict=True))
        logits, new_k, new_v = self._compiled(tokens, k_read, v_read, position_t, mask, pair_rows, pair_pos, pair_src)
        self.cache.commit(slots, positions, new_k, new_v)
        return logits
