"""A forward pass over many sequences at once, each at its own position, into a KV cache of slots.

``Transformer.forward`` takes one ``start`` for the whole batch, which is what training and
single-sequence generation need. A serving engine batches sequences that started at different times,
so every row has its own position. This module runs the same modules (the model's own ``qkv``,
``proj``, norms and MLPs, so the weights and the arithmetic are the model's) with per-row positions
and masks, and keeps keys and values in a :class:`SlotKVCache`: one preallocated row per sequence
slot. It lives here, beside the engine, so that ``transformer.py`` stays free of serving logic.

Batch invariance on CPU: a matrix product's rows can come out different in the last bit depending on
how many rows the product has and where the row sits (one row goes through a matrix-vector kernel; in
MKL's blocked GEMM, rows in a trailing group of one to three rows take a tail kernel). The engine decodes
with weights packed once for oneDNN (:class:`PackedWeights`), whose GEMM computes every row alike from
two rows up, so a decode batch of one runs as two rows (a free slot runs a dummy row); where packing is
unavailable it multiplies by transposed copies (:class:`TransposedWeights`) and pads to a multiple of
four rows. :func:`decode_weights` probes the property on the machine before choosing, and a sequence
decoded alone and in a batch of 20 gets bit-identical logits (``tests/serve/test_serve_engine.py``).
Attention is written out (scores, mask, softmax, weighted sum) rather than calling
``scaled_dot_product_attention``, whose CPU kernel splits its work by batch size, so that its result
for one row changes with the batch. The batched matmuls here compute every row alike. Keys are read
up to a length rounded to a multiple of ``KEY_BLOCK`` with masked padding; a masked key contributes an
exact zero, so the padding does not change a row's result either (the engine's tests check both
properties bit for bit).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from groundup.model.transformer import Transformer, apply_rope

KEY_BLOCK = 64
"""Keys are read up to the longest row's length rounded up to this multiple."""


class SlotKVCache:
    """Keys and values of ``num_slots`` sequences: (n_layer, num_slots, nkv, max_len, hd) each.

    A slot is a row; a sequence owns one slot from its prefill to its end. Positions beyond a
    sequence's length hold stale values from an earlier owner; they are always masked out.
    """

    def __init__(self, model: Transformer, num_slots: int, max_len: int | None = None,
                 dtype: torch.dtype | None = None) -> None:
        config = model.config
        self.max_len = min(max_len or config.block_size, config.block_size)
        self.num_slots = num_slots
        ref = model.lm_head.weight
        shape = (config.n_layer, num_slots, config.kv_heads, self.max_len, config.head_dim)
        self.k = torch.zeros(shape, dtype=dtype or ref.dtype, device=ref.device)
        self.v = torch.zeros(shape, dtype=dtype or ref.dtype, device=ref.device)

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2


class TransposedWeights:
    """Each linear layer's weight stored transposed, (in, out) contiguous, for ``x @ w`` products.

    On CPU, a product with few rows (decoding) against a (in, out) matrix runs about 1.5-2.5x faster
    than ``F.linear`` against the (out, in) layout the model stores, which packs the weight on every
    call; with few rows that packing dominates. The copies double the weights' memory and go stale if
    the model's weights change (the engine serves a frozen model).
    """

    def __init__(self, model: Transformer) -> None:
        self.w = {id(m): m.weight.detach().t().contiguous() for m in _linear_modules(model)}

    def linear(self, x: torch.Tensor, module: torch.nn.Linear) -> torch.Tensor:
        y = x @ self.w[id(module)]
        return y if module.bias is None else y + module.bias

    @staticmethod
    def pad_rows(n: int) -> int:
        """Rows a decode batch of ``n`` sequences runs as, for batch invariance: a multiple of four."""
        return _round_up(n, 4)


def _linear_modules(model: Transformer) -> list[torch.nn.Linear]:
    return [m for b in model.blocks for m in (b.attn.qkv, b.attn.proj, b.mlp.fc, b.mlp.proj)] + [model.lm_head]


class PackedWeights:
    """Each linear layer's weight packed once into oneDNN's blocked layout (the CPU decode fast path).

    ``F.linear`` and ``x @ w`` on the CPU repack the weight on every call: with the few rows of a decode
    step that packing costs more than the product itself (the 50,304 x 384 output head: about 3 ms packed
    against 20 ms repacking, at four rows on two cores). Packed once, the product streams the weights.
    oneDNN's blocked GEMM computes every row alike for two rows or more; one row takes a matrix-vector
    kernel whose last bits differ, so a decode batch of one runs as two rows (:meth:`pad_rows`).
    :func:`decode_weights` checks that property on the machine before using this class.
    """

    def __init__(self, model: Transformer) -> None:
        self.w = {id(m): torch.ops.mkldnn._reorder_linear_weight(m.weight.detach(), 4) for m in _linear_modules(model)}

    def linear(self, x: torch.Tensor, module: torch.nn.Linear) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.w[id(module)], module.bias, "none", [], "")

    @staticmethod
    def pad_rows(n: int) -> int:
        return max(n, 2)


def _rows_alike(weights, model: Transformer, rows: int = 9) -> bool:
    """Whether every linear layer gives each row bit-identical results at any row count from pad_rows(1) up
    and at any place in the batch (a probe on random inputs, one per weight shape)."""
    seen = set()
    gen = torch.Generator().manual_seed(0)
    for module in _linear_modules(model):
        shape = tuple(module.weight.shape)
        if shape in seen:
            continue
        seen.add(shape)
        x = torch.randn(rows + 3, shape[1], generator=gen).to(module.weight)
        ref = weights.linear(x, module)
        for n in range(weights.pad_rows(1), rows + 1):
            for offset in (0, 3):
                if not torch.equal(weights.linear(x[offset : offset + n], module), ref[offset : offset + n]):
                    return False
    return True


def decode_weights(model: Transformer) -> PackedWeights | TransposedWeights:
    """The weight layout a CPU engine decodes with: oneDNN-packed where available, float32 and batch-invariant
    on this machine (checked), else transposed copies (a decode batch then runs as a multiple of four rows)."""
    if torch.backends.mkldnn.is_available() and model.lm_head.weight.dtype == torch.float32:
        try:
            with torch.inference_mode():
                packed = PackedWeights(model)
                if _rows_alike(packed, model):
                    return packed
        except RuntimeError:  # an op this build of torch lacks
            pass
    return TransposedWeights(model)


def _mlp(mlp, x: torch.Tensor, linear) -> torch.Tensor:
    h = linear(x, mlp.fc)
    if mlp.swiglu:
        gate, up = h.chunk(2, dim=-1)
        h = F.silu(gate) * up
    else:
        h = F.gelu(h, approximate="tanh")
    return linear(h, mlp.proj)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd), masked) v for q (B, nh, T, hd), k and v (B, nh, L, hd), mask (B, 1, T, L)."""
    scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))  # (B, nh, T, L)
    scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1) @ v


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@torch.inference_mode()
def forward_rows(model: Transformer, cache: SlotKVCache, idx: torch.Tensor, first_slot: int,
                 starts: torch.Tensor, *, all_positions: bool = False,
                 weights: TransposedWeights | None = None) -> torch.Tensor:
    """Run tokens ``idx`` (B, T) of the sequences in slots ``first_slot .. first_slot+B``; return logits.

    Row b holds tokens at positions ``starts[b] .. starts[b]+T``; their keys and values are written into
    slot ``first_slot + b``, and each token attends to its own slot's positions up to its own. Returns
    the logits of the last position (B, V), or of every position (B, T, V) with ``all_positions``
    (prompt log-probabilities). A slot in the range that holds no sequence may be given a dummy row
    (token 0 at position 0): it only writes into its own free slot. The engine pads decode batches
    this way to a multiple of four rows (see the module docstring). With ``weights``, the linear layers
    multiply by their transposed copies (faster on CPU at small batch; see :class:`TransposedWeights`).
    """
    linear = weights.linear if weights is not None else (lambda x, module: module(x))
    B, T = idx.shape
    config = model.config
    device = idx.device
    end = first_slot + B
    if end > cache.num_slots:
        raise ValueError(f"slots {first_slot}..{end - 1} are past the cache's {cache.num_slots} slots")
    positions = starts[:, None] + torch.arange(T, device=device)  # (B, T)
    if int(positions.max()) >= cache.max_len:
        raise ValueError(f"position {int(positions.max())} is past the cache's {cache.max_len} positions")
    key_len = min(_round_up(int(positions.max()) + 1, KEY_BLOCK), cache.max_len)
    # Query (b, t) sees keys 0..positions[b, t] of its own slot.
    keys = torch.arange(key_len, device=device)
    mask = (keys[None, None, :] <= positions[:, :, None])[:, None]  # (B, 1, T, L)

    x = model.tok_embeddings(idx)  # (B, T, C)
    if model.pos_embeddings is not None:
        x = x + model.pos_embeddings(positions)
    rope = None
    if config.position == "rope":
        rope = (model.rope_cos[positions][:, None], model.rope_sin[positions][:, None])  # (B, 1, T, hd)
    nh, nkv, hd = config.n_head, config.kv_heads, config.head_dim
    row_index = torch.arange(B, device=device)[:, None]  # (B, 1)
    for layer, block in enumerate(model.blocks):
        attn = block.attn
        q, k, v = linear(block.attn_norm(x), attn.qkv).split((nh * hd, nkv * hd, nkv * hd), dim=-1)
        q = q.view(B, T, nh, hd).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, nkv, hd)  # (B, T, nkv, hd): the layout the cache write below takes
        v = v.view(B, T, nkv, hd)
        if rope is not None:
            q = apply_rope(q, *rope)
            k = apply_rope(k.transpose(1, 2), *rope).transpose(1, 2)
        k_all, v_all = cache.k[layer, first_slot:end], cache.v[layer, first_slot:end]  # views (B, nkv, max_len, hd)
        k_all[row_index, :, positions] = k  # (B, T) index pairs select (B, T, nkv, hd)
        v_all[row_index, :, positions] = v
        keys_k, keys_v = k_all[:, :, :key_len], v_all[:, :, :key_len]  # (B, nkv, L, hd)
        if nkv != nh:
            keys_k = keys_k.repeat_interleave(nh // nkv, dim=1)
            keys_v = keys_v.repeat_interleave(nh // nkv, dim=1)
        y = _attention(q, keys_k, keys_v, mask)  # (B, nh, T, hd)
        y = y.transpose(1, 2).reshape(B, T, nh * hd)
        x = x + linear(y, attn.proj)
        x = x + _mlp(block.mlp, block.mlp_norm(x), linear)
    h = model.final_norm(x if all_positions else x[:, -1])
    return linear(h, model.lm_head)
