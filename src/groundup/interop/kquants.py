"""llama.cpp's Q4_K and Q6_K quantizers in numpy (the ``gguf`` package reads these types but cannot write them).

They follow ggml's reference code (``quantize_row_q4_K_ref`` and ``quantize_row_q6_K_ref`` in ggml-quants.c,
the path ``llama-quantize`` takes without an importance matrix) step by step in float32, with the same
order of every sum and the same rounding, so a tensor's bytes come out as llama.cpp's own:

- **Q4_K**: super-blocks of 256 values in 8 sub-blocks of 32. Each sub-block gets a scale and a minimum
  (``x ~ scale * q - min``, q in 0..15) from ``make_qkx2_quants``' search: 21 trial scales around
  ``15 / (max - min)``, each refit by weighted least squares, keeping the one with the smallest weighted
  squared error. The 8 scales and 8 minimums are then quantized to 6 bits against two f16 super-block
  factors ``d`` and ``dmin``, and the values are requantized against the rounded scales.
  Bytes: d, dmin (f16), scales[12] (the 6-bit pairs packed), qs[128] (two 4-bit values a byte): 144.
- **Q6_K**: super-blocks of 256 values in 16 groups of 16, symmetric (q in -32..31). Each group's scale comes
  from ``make_qx_quants``' search (19 trial scales around ``-32 / max``, weighted by x², refit by least
  squares); the 16 scales are int8 against one f16 factor ``d``. Bytes: ql[128] (low 4 bits), qh[64]
  (high 2 bits), scales[16] (int8), d (f16): 210.

The search runs vectorized over sub-blocks, with each sub-block's values down a column (so numpy's sums
along axis 0 add in C's order), a chunk of super-blocks at a time to stay in cache. Inside the searches the
rounded values are small, where ``np.rint`` gives ggml's ``nearest_int`` exactly; the final requantization
uses :func:`nearest_int` itself. The tests hold the bytes to llama.cpp's for a fixed input.
"""

from __future__ import annotations

import numpy as np

QK_K = 256
"""Values in one k-quant super-block."""
Q4_K_BYTES = 144
Q6_K_BYTES = 210
_GROUP_MAX_EPS = np.float32(1e-15)  # ggml's GROUP_MAX_EPS: a group whose largest value is below it is all zero
_CHUNK = 256  # super-blocks per step: the search's working arrays stay in a core's L2 cache
_F32 = np.float32


def nearest_int(values: np.ndarray) -> np.ndarray:
    """ggml's ``nearest_int``: round to nearest, ties to even, by adding 1.5 * 2**23 and reading the mantissa
    (the same integers as ``np.rint`` for |x| < 2**22, and the same wrap-around outside it)."""
    bits = (values.astype(_F32, copy=False) + _F32(12582912.0)).view(np.int32)
    return (bits & 0x007FFFFF) - 0x00400000


def _sum(values: np.ndarray) -> np.ndarray:
    """Sum down the columns, row after row: C's left-to-right loop over a block's values."""
    return np.add.reduce(values, axis=0)


# ---------------------------------------------------------------------------- Q4_K


def make_qkx2_quants(x: np.ndarray, weights: np.ndarray, nmax: int, rmin: float, rdelta: float,
                     nstep: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml's ``make_qkx2_quants`` (squared error) for columns of ``x`` (n values each, one column per
    sub-block): scale, minimum (positive: ``x ~ scale * L - min``) and levels L in 0..nmax."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        low, high = np.minimum(x.min(axis=0), 0), x.max(axis=0)
        flat = high == low
        sum_w, sum_x = _sum(weights), _sum(weights * x)
        iscale = _F32(nmax) / (high - low)
        scale = _F32(1) / iscale
        trial = np.empty_like(x)

        def levels_at(iscale: np.ndarray, low: np.ndarray) -> np.ndarray:
            # A refit minimum can lie above some values: their levels clamp at 0.
            np.multiply(iscale, np.subtract(x, low, out=trial), out=trial)
            return np.clip(np.rint(trial, out=trial), 0, nmax, out=trial)

        work = np.empty_like(x)

        def error_of(scale: np.ndarray, levels: np.ndarray, low: np.ndarray) -> np.ndarray:
            diff = np.subtract(np.add(np.multiply(scale, levels, out=work), low, out=work), x, out=work)
            return _sum(np.multiply(weights, np.multiply(diff, diff, out=work), out=work))

        best_error = error_of(scale, levels_at(iscale, low), low)
        # The winning trial's inputs, not its levels: copying levels per trial would cost more than the search.
        best_iscale, best_low = iscale, low
        wl_buf = np.empty_like(x)
        for step in range(nstep + 1):
            iscale = (_F32(rmin) + _F32(rdelta) * _F32(step) + _F32(nmax)) / (high - low)
            levels = levels_at(iscale, low)
            wl = np.multiply(weights, levels, out=wl_buf)
            sum_l = _sum(wl)
            sum_l2 = _sum(np.multiply(wl, levels, out=work))
            sum_xl = _sum(np.multiply(wl, x, out=work))
            det = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
            clamp = this_min > 0
            this_min[clamp] = 0
            this_scale = np.where(clamp, sum_xl / sum_l2, this_scale)
            error = error_of(this_scale, levels, this_min)
            better = (det > 0) & (error < best_error)
            best_error = np.where(better, error, best_error)
            best_iscale = np.where(better, iscale, best_iscale)
            best_low = np.where(better, low, best_low)
            scale = np.where(better, this_scale, scale)
            low = np.where(better, this_min, low)
        levels = levels_at(best_iscale, best_low).astype(np.int32)
    levels[:, flat] = 0
    scale[flat] = 0
    return scale, -low, levels


def _q4_k_chunk(x: np.ndarray) -> np.ndarray:
    """Q4_K bytes (nb, 144) of ``x`` (nb, 256) float32."""
    nb = x.shape[0]
    cols = np.ascontiguousarray(x.reshape(nb * 8, 32).T)  # (32, sub-blocks)
    av_x = np.sqrt(_sum(cols * cols) / _F32(32))
    scales, mins, levels = make_qkx2_quants(cols, av_x + np.abs(cols), 15, -1.0, 0.1, 20)
    scales, mins = scales.reshape(nb, 8), mins.reshape(nb, 8)
    max_scale = np.maximum(scales.max(axis=1), 0)
    max_min = np.maximum(mins.max(axis=1), 0)
    with np.errstate(divide="ignore"):
        inv_scale = np.where(max_scale > 0, _F32(63) / max_scale, _F32(0))
        inv_min = np.where(max_min > 0, _F32(63) / max_min, _F32(0))
    ls = np.minimum(nearest_int(inv_scale[:, None] * scales) & 0xFF, 63)  # C stores into a uint8, then MIN(63)
    lm = np.minimum(nearest_int(inv_min[:, None] * mins) & 0xFF, 63)
    d = (max_scale / _F32(63)).astype(np.float16)
    dmin = (max_min / _F32(63)).astype(np.float16)
    # Requantize against the rounded scales; a sub-block whose scale rounds to 0 keeps the search's levels.
    sub_d = d.astype(_F32)[:, None] * ls.astype(_F32)  # (nb, 8)
    sub_m = dmin.astype(_F32)[:, None] * lm.astype(_F32)
    values = x.reshape(nb, 8, 32)
    with np.errstate(divide="ignore", invalid="ignore"):
        requant = np.clip(nearest_int((values + sub_m[..., None]) / sub_d[..., None]), 0, 15)
    levels = np.where(sub_d[..., None] != 0, requant, levels.T.reshape(nb, 8, 32)).astype(np.uint8)

    packed = np.empty((nb, 12), np.uint8)
    packed[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    packed[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    packed[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    pairs = levels.reshape(nb, 4, 2, 32)  # sub-blocks 2k and 2k+1 share 32 bytes: low and high nibble
    qs = (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).reshape(nb, 128)
    return np.concatenate([d.reshape(nb, 1).view(np.uint8), dmin.reshape(nb, 1).view(np.uint8), packed, qs],
                          axis=1)


# ---------------------------------------------------------------------------- Q6_K


def make_qx_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml's ``make_qx_quants`` with ``rmse_type`` 1 (weights x²) for columns of ``x``: scale and levels
    L in 0..2*nmax-1 (``x ~ scale * (L - nmax)``)."""
    amax_row = np.abs(x).argmax(axis=0)  # the first largest |x|, as C's strict comparison keeps
    signed_max = np.take_along_axis(x, amax_row[None], axis=0)[0]
    zero = np.abs(signed_max) < _GROUP_MAX_EPS
    weights = x * x
    wx = weights * x
    trial = np.empty_like(x)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):

        def levels_at(iscale: np.ndarray) -> np.ndarray:
            return np.clip(np.rint(np.multiply(iscale, x, out=trial), out=trial), -nmax, nmax - 1, out=trial)

        def fit(iscale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            levels = levels_at(iscale)
            return _sum(wx * levels), _sum(weights * levels * levels)

        iscale = _F32(-nmax) / signed_max
        sumlx, suml2 = fit(iscale)
        scale = np.where(suml2 != 0, sumlx / suml2, _F32(0))
        best = scale * sumlx
        best_iscale = iscale  # the winning trial's scale; its levels are recomputed once at the end
        for step in range(-9, 10):
            if step == 0:
                continue
            iscale = -(_F32(nmax) + _F32(0.1) * _F32(step)) / signed_max
            sumlx, suml2 = fit(iscale)
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            best_iscale = np.where(better, iscale, best_iscale)
            scale = np.where(better, sumlx / suml2, scale)
            best = np.where(better, scale * sumlx, best)
        levels = levels_at(best_iscale).astype(np.int32)
    levels[:, zero] = -nmax
    scale[zero] = 0
    return scale, levels + nmax


def _q6_k_chunk(x: np.ndarray) -> np.ndarray:
    """Q6_K bytes (nb, 210) of ``x`` (nb, 256) float32."""
    nb = x.shape[0]
    cols = np.ascontiguousarray(x.reshape(nb * 16, 16).T)  # (16, groups)
    scales, levels = make_qx_quants(cols, 32)
    scales = scales.reshape(nb, 16)
    first = np.abs(scales).argmax(axis=1)
    max_scale = scales[np.arange(nb), first]
    zero = np.abs(max_scale) < _GROUP_MAX_EPS
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = _F32(-128) / max_scale
        d = (_F32(1) / iscale).astype(np.float16)
        q_scales = np.minimum(nearest_int(iscale[:, None] * scales), 127).astype(np.int8)
        group_d = d.astype(_F32)[:, None] * q_scales.astype(_F32)  # (nb, 16)
        requant = np.clip(nearest_int(x.reshape(nb, 16, 16) / group_d[..., None]), -32, 31) + 32
    levels = np.where(group_d[..., None] != 0, requant, levels.T.reshape(nb, 16, 16)).astype(np.uint8)
    levels[zero] = 0
    q_scales[zero] = 0
    d[zero] = 0

    quarters = levels.reshape(nb, 2, 4, 32)  # per half of 128 values: four runs of 32
    ql = np.concatenate([(quarters[:, :, 0] & 0xF) | ((quarters[:, :, 2] & 0xF) << 4),
                         (quarters[:, :, 1] & 0xF) | ((quarters[:, :, 3] & 0xF) << 4)], axis=2).reshape(nb, 128)
    high = quarters >> 4
    qh = (high[:, :, 0] | (high[:, :, 1] << 2) | (high[:, :, 2] << 4) | (high[:, :, 3] << 6)).reshape(nb, 64)
    return np.concatenate([ql, qh, q_scales.view(np.uint8), d.reshape(nb, 1).view(np.uint8)], axis=1)


# ---------------------------------------------------------------------------- rows


def _quantize_rows(array: np.ndarray, chunk_fn, block_bytes: int) -> np.ndarray:
    array = np.asarray(array, dtype=_F32)
    if array.ndim == 0 or array.shape[-1] % QK_K:
        raise ValueError(f"k-quant rows must be a multiple of {QK_K} values, got shape {array.shape}")
    blocks = array.reshape(-1, QK_K)
    out = np.empty((blocks.shape[0], block_bytes), np.uint8)
    for start in range(0, blocks.shape[0], _CHUNK):
        out[start:start + _CHUNK] = chunk_fn(blocks[start:start + _CHUNK])
    return out.reshape(*array.shape[:-1], array.shape[-1] // QK_K * block_bytes)


def quantize_q4_k(array: np.ndarray) -> np.ndarray:
    """Q4_K bytes of ``array`` (rows a multiple of 256 values): shape (..., row bytes), as
    ``gguf.quants.quantize`` returns for the types it writes."""
    return _quantize_rows(array, _q4_k_chunk, Q4_K_BYTES)


def quantize_q6_k(array: np.ndarray) -> np.ndarray:
    """Q6_K bytes of ``array`` (rows a multiple of 256 values), shaped as :func:`quantize_q4_k`'s."""
    return _quantize_rows(array, _q6_k_chunk, Q6_K_BYTES)
