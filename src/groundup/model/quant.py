"""Weight-only quantization for inference: per-channel int8 and group-wise int4 linear layers.

- int8: each output row ``n`` of a weight is ``q[n] * scale[n]`` with ``q`` in -127..127 and
  ``scale[n] = max |w[n]| / 127`` (symmetric, per channel). The error of a weight is at most
  ``scale[n] / 2``.
- int4: each group of ``group_size`` consecutive inputs of a row is ``(q - 8) * scale + zero`` with ``q``
  in 0..15, ``scale = (max - min) / 15`` and ``zero = min + 8 * scale`` (asymmetric min-max, the layout
  of PyTorch's int4 kernels). The error of a weight is at most ``scale / 2``. Two values share a byte: in
  each block of 32 inputs, byte ``t`` holds input ``t`` in its low nibble and input ``t + 16`` in its high
  one (llama.cpp's q4 layout, which a SIMD unpack turns into 32 inputs in order).

The blocks' linear layers take the chosen format; the output head is int8 in both (it scores every
token of the vocabulary, and llama.cpp likewise keeps it at higher precision). A tied head and
embedding share one int8 matrix: the embedding dequantizes the rows it looks up.

On the CPU the products run in groundup's AVX2 kernels (:mod:`groundup.model.kernels`): the input rows are
quantized to int8 in blocks of 32 (a scale per block, as llama.cpp's q8_0 dot products do) and each block
is an integer dot product; each weight byte is read once, and every output is accumulated in the same
order whatever the batch. Where those cannot be built, PyTorch's own weight-only kernels run (float
inputs); elsewhere the weights are dequantized for each product.
A quantized model dir holds these tensors in ``model.safetensors`` and a ``quantization.json``;
``groundup.model.io.load_model_dir`` builds the layers from it, and every inference command loads it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from groundup.model.kernels import woq

QUANT_FILE = "quantization.json"
GROUP_SIZES = (32, 64, 128)


@dataclass(kw_only=True)
class QuantConfig:
    """How a model dir's weights are quantized (its ``quantization.json``)."""

    method: Literal["int8", "int4"]
    group_size: int | None = None
    """int4: inputs per group sharing a scale and zero (32, 64 or 128)."""

    def __post_init__(self) -> None:
        if self.method not in ("int8", "int4"):
            raise ValueError(f"quantization method must be 'int8' or 'int4', got {self.method!r}")
        if self.method == "int4" and self.group_size not in GROUP_SIZES:
            raise ValueError(f"int4 group_size must be one of {GROUP_SIZES}, got {self.group_size}")

    def as_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------- the formats


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q int8 (N, K), scale float32 (N,)) of a weight (N, K), symmetric per output row."""
    w = w.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale[:, None]


def quantize_int4(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(packed uint8 (N, K/2), scale (N, K/G), zero (N, K/G)) of a weight (N, K), min-max per group."""
    N, K = w.shape
    if K % group_size:
        raise ValueError(f"int4 group size {group_size} does not divide the layer's width {K}")
    g = w.detach().float().view(N, K // group_size, group_size)
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)
    scale = ((hi - lo) / 15).clamp(min=1e-12)
    q = torch.round((g - lo[..., None]) / scale[..., None]).clamp(0, 15).to(torch.uint8).view(N, K // 32, 32)
    packed = (q[..., :16] | (q[..., 16:] << 4)).reshape(N, K // 2)
    return packed, scale, lo + 8 * scale


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The 0..15 values (N, K) of a packed (N, K/2) uint8 tensor (blocks of 32 inputs, see the module)."""
    N = packed.shape[0]
    blocks = packed.reshape(N, -1, 16)
    return torch.cat([blocks & 0x0F, blocks >> 4], dim=-1).reshape(N, -1)


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    q = unpack_int4(packed).float()
    N, K = q.shape
    groups = scale.shape[1]
    w = (q.view(N, groups, K // groups) - 8) * scale[..., None] + zero[..., None]
    return w.view(N, K)


# ---------------------------------------------------------------------------- the layers


KERNEL_ROWS = 256
"""Products of up to this many rows (decode steps, speculative verification) run in the weight-only kernels;
longer ones (prefill, scoring) multiply by dequantized slices of the weight, where the arithmetic, not the
reading of the weight, decides the time."""

CHUNK_ROWS = 4096
"""Output rows of the weight dequantized at a time for a long product (a bounded temporary)."""


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


def _dequantized_product(x: torch.Tensor, dequantize, out_features: int) -> torch.Tensor:
    """x (M, K) times the weight's dequantized rows, CHUNK_ROWS output rows at a time: (M, N)."""
    return torch.cat([x @ dequantize(n, min(n + CHUNK_ROWS, out_features)).t()
                      for n in range(0, out_features, CHUNK_ROWS)], dim=1)


class Int8Linear(nn.Module):
    """``y = x W^T + b`` with ``W`` stored as int8 rows and a scale per row."""

    def __init__(self, in_features: int, out_features: int, bias: bool, device=None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.empty(out_features, dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, device=device), requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None)
        layer.weight, layer.weight_scale = quantize_int8(linear.weight)
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().float().clone(), requires_grad=False)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dtype == torch.float32:
            rows, kernels = _rows(x), woq()
            if rows.shape[0] > KERNEL_ROWS:
                y = _dequantized_product(rows, lambda a, b: dequantize_int8(self.weight[a:b], self.weight_scale[a:b]),
                                         self.out_features)
            elif kernels is not None and self.in_features % 32 == 0:
                y = kernels.int8_mm(rows, self.weight, self.weight_scale)
            else:
                y = torch.ops.aten._weight_int8pack_mm(rows, self.weight, self.weight_scale)
            y = y.view(*x.shape[:-1], self.out_features)
        else:
            y = F.linear(x, dequantize_int8(self.weight, self.weight_scale).to(x.dtype))
            return y if self.bias is None else y + self.bias.to(x.dtype)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class Int4Linear(nn.Module):
    """``y = x W^T + b`` with ``W`` stored as 4-bit values, a scale and a zero per group of inputs."""

    def __init__(self, in_features: int, out_features: int, bias: bool, group_size: int, device=None) -> None:
        super().__init__()
        if in_features % group_size:
            raise ValueError(f"int4 group size {group_size} does not divide the layer's width {in_features}")
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        groups = in_features // group_size
        self.register_buffer("weight", torch.empty(out_features, in_features // 2, dtype=torch.uint8, device=device))
        self.register_buffer("weight_scale", torch.empty(out_features, groups, dtype=torch.float32, device=device))
        self.register_buffer("weight_zero", torch.empty(out_features, groups, dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, device=device), requires_grad=False) if bias else None
        self._cpu_packed: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int) -> Int4Linear:
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, group_size)
        layer.weight, layer.weight_scale, layer.weight_zero = quantize_int4(linear.weight, group_size)
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach().float().clone(), requires_grad=False)
        return layer

    def _cpu_kernel_operands(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The weight in the CPU kernel's packed layout and its (K/G, N, 2) scales and zeros, made once."""
        if self._cpu_packed is None:
            q = unpack_int4(self.weight).to(torch.int32)
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
            scales_zeros = torch.stack([self.weight_scale.t(), self.weight_zero.t()], dim=-1).contiguous()
            self._cpu_packed = (packed, scales_zeros)
        return self._cpu_packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dtype == torch.float32:
            rows, kernels = _rows(x), woq()
            if rows.shape[0] > KERNEL_ROWS:
                y = _dequantized_product(rows, lambda a, b: dequantize_int4(
                    self.weight[a:b], self.weight_scale[a:b], self.weight_zero[a:b]), self.out_features)
            elif kernels is not None:
                y = kernels.int4_mm(rows, self.weight, self.weight_scale, self.weight_zero, self.group_size)
            else:
                packed, scales_zeros = self._cpu_kernel_operands()
                y = torch.ops.aten._weight_int4pack_mm_for_cpu(rows, packed, self.group_size, scales_zeros)
            y = y.view(*x.shape[:-1], self.out_features)
        else:
            w = dequantize_int4(self.weight, self.weight_scale, self.weight_zero).to(x.dtype)
            y = F.linear(x, w)
            return y if self.bias is None else y + self.bias.to(x.dtype)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int4, group {self.group_size}"


class Int8Embedding(nn.Module):
    """An embedding stored as int8 rows and a scale per row (shared with a tied int8 output head)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, device=None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.register_buffer("weight", torch.empty(num_embeddings, embedding_dim, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.empty(num_embeddings, dtype=torch.float32, device=device))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, self.weight).float() * F.embedding(idx, self.weight_scale[:, None])


# ---------------------------------------------------------------------------- a model's layers


def _block_linears(model: nn.Module) -> dict[str, nn.Module]:
    return {f"blocks.{i}.{name}": module for i, block in enumerate(model.blocks)
            for name, module in block.named_modules() if isinstance(module, nn.Linear)}


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def check_quantizable(model: nn.Module, cfg: QuantConfig) -> None:
    """Raise ValueError naming the first layer an int4 group size does not fit."""
    if cfg.method != "int4":
        return
    for name, module in _block_linears(model).items():
        if module.in_features % cfg.group_size:
            raise ValueError(f"int4 group size {cfg.group_size} does not divide {name}'s width "
                             f"{module.in_features}; choose one of {GROUP_SIZES} that does")


@torch.no_grad()
def quantize_model(model: nn.Module, cfg: QuantConfig) -> nn.Module:
    """Replace ``model``'s linear layers (and a tied embedding) by quantized ones, in place."""
    check_quantizable(model, cfg)
    for name, linear in _block_linears(model).items():
        layer = Int8Linear.from_linear(linear) if cfg.method == "int8" else Int4Linear.from_linear(linear, cfg.group_size)
        _set(model, name, layer)
    model.lm_head = Int8Linear.from_linear(model.lm_head)
    if model.config.tie_embeddings:
        embedding = Int8Embedding(model.config.vocab_size, model.config.n_embd)
        embedding.weight, embedding.weight_scale = model.lm_head.weight, model.lm_head.weight_scale
        model.tok_embeddings = embedding
    model.quantization = cfg
    return model


def quantized_layers(model: nn.Module, cfg: QuantConfig) -> nn.Module:
    """Give a model built on the meta device the quantized layers of ``cfg`` (empty), ready for loading."""
    config = model.config
    for name, linear in _block_linears(model).items():
        bias = linear.bias is not None
        layer = Int8Linear(linear.in_features, linear.out_features, bias, device="meta") if cfg.method == "int8" \
            else Int4Linear(linear.in_features, linear.out_features, bias, cfg.group_size, device="meta")
        _set(model, name, layer)
    model.lm_head = Int8Linear(config.n_embd, config.vocab_size, False, device="meta")
    if config.tie_embeddings:
        model.tok_embeddings = Int8Embedding(config.vocab_size, config.n_embd, device="meta")
    model.quantization = cfg
    return model


def tie_quantized_head(model: nn.Module) -> None:
    """A tied model's int8 head shares the embedding's int8 rows and scales."""
    if model.config.tie_embeddings and isinstance(model.tok_embeddings, Int8Embedding):
        model.lm_head.weight = model.tok_embeddings.weight
        model.lm_head.weight_scale = model.tok_embeddings.weight_scale
