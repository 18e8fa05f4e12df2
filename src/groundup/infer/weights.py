"""Weight layouts for decoding: the model's linear layers swapped, in a view that shares everything else.

A decode step multiplies a few rows by every weight of the model. On the CPU, ``F.linear`` repacks the
weight on every call, and with a handful of rows that packing costs more than the product itself;
packed once for oneDNN (:class:`PackedLinear`) the product streams the weights. Where oneDNN is
unavailable, a transposed copy (:class:`TransposedLinear`, (in, out) contiguous) is the next best.

:func:`decode_view` returns a view of the model whose ``nn.Linear`` layers are replaced by one of these,
and which shares every other module, parameter and buffer with the model (the packed copies go stale if
the model's weights change: :func:`decode_view` is called again, see ``Decoder``). Other linear modules
(LoRA adapters, quantized layers from ``groundup.model.quant``) are kept as they are.

Batch invariance: a row's result must not depend on how many rows share the product, or where it sits
among them, so that a request gives the same tokens alone or in a batch. Kernels differ: oneDNN's blocked
GEMM computes every row alike from two rows up (one row takes a matrix-vector kernel whose last bits
differ); MKL's blocked GEMM computes rows in a trailing group of one to three rows with a tail kernel.
:func:`row_padding` probes the layers on this machine and returns how many rows a batch of ``n`` must run
as (``n`` itself, at least two, or a multiple of four); the engine pads decode batches to that.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable

import torch
from torch import nn

from groundup.model.transformer import first_tensor

log = logging.getLogger(__name__)


class PackedLinear(nn.Module):
    """A linear layer whose weight is packed once into oneDNN's blocked layout."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 4)
        self.bias = linear.bias
        # The weight itself, shared, not copied: latent attention's absorbed decode reads it as a matrix.
        self.source_weight = linear.weight.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


class TransposedLinear(nn.Module):
    """A linear layer multiplying by a transposed, (in, out) contiguous copy of its weight (``x @ w``)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight_t = linear.weight.detach().t().contiguous()
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.weight_t
        return y if self.bias is None else y + self.bias


LAYOUTS: dict[str, type[nn.Module] | None] = {"packed": PackedLinear, "transposed": TransposedLinear, "plain": None}
"""Decode weight layouts: oneDNN-packed, transposed copies, or the model's own ``nn.Linear`` layers."""


def default_layout(model: nn.Module) -> str:
    """'packed' for a float32 model on a CPU with oneDNN, 'transposed' for other CPU models, else 'plain'."""
    weight = model.lm_head.weight if isinstance(model.lm_head, nn.Linear) else None
    device = first_tensor(model).device
    if device.type != "cpu":
        return "plain"
    if weight is not None and weight.dtype == torch.float32 and torch.backends.mkldnn.is_available():
        return "packed"
    return "transposed"


def _clone_tree(module: nn.Module) -> nn.Module:
    """A new module tree with the same parameters and buffers (the objects themselves, not copies)."""
    clone = copy.copy(module)
    clone._parameters = dict(module._parameters)
    clone._buffers = dict(module._buffers)
    clone._modules = {name: _clone_tree(child) if child is not None else None
                      for name, child in module._modules.items()}
    return clone


def decode_view(model: nn.Module, layout: str = "auto") -> nn.Module:
    """``model`` with every plain ``nn.Linear`` in ``layout`` (see :data:`LAYOUTS`), sharing all else."""
    layout = default_layout(model) if layout == "auto" else layout
    if layout not in LAYOUTS:
        raise ValueError(f"unknown weight layout {layout!r}; known: {', '.join(LAYOUTS)}")
    kind = LAYOUTS[layout]
    if kind is None:
        return model
    if layout == "packed" and not torch.backends.mkldnn.is_available():
        raise ValueError("weight layout 'packed' needs a torch build with oneDNN (mkldnn)")
    view = _clone_tree(model)
    with torch.inference_mode():
        for parent in view.modules():
            for name, child in parent._modules.items():
                if type(child) is nn.Linear:  # LoRA and quantized layers keep their own forward
                    parent._modules[name] = kind(child)
    return view.eval()


PADDINGS: dict[str, Callable[[int], int]] = {
    "none": lambda n: n,
    "two": lambda n: max(n, 2),
    "four": lambda n: -(-n // 4) * 4,
}
"""Ways to pad a batch of n rows, from the cheapest: as is, at least two rows, a multiple of four."""


def _rows_alike(linear: nn.Module, in_features: int, pad: Callable[[int], int], device: torch.device,
                rows: int = 9) -> bool:
    """Whether ``linear`` gives every row the same bits at each padded row count up to ``rows`` and at any place."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows + 3, in_features, generator=gen).to(device)
    ref = linear(x)
    for n in sorted({pad(k) for k in range(1, rows + 1)}):
        for offset in (0, 3):
            if not torch.equal(linear(x[offset: offset + n]), ref[offset: offset + n]):
                return False
    return True


def _padded_rows_alike(product: Callable[[torch.Tensor], torch.Tensor], in_features: int, multiple: int,
                       device: torch.device, rows: int = 9) -> bool:
    """Whether ``product`` gives every row the same bits at every row count that is a multiple of ``multiple``,
    up to ``rows`` rounded up, at any place."""
    gen = torch.Generator().manual_seed(0)
    counts = sorted({-(-k // multiple) * multiple for k in range(1, rows + 1)})
    x = torch.randn(counts[-1] + 3, in_features, generator=gen).to(device)
    seen: dict[int, torch.Tensor] = {}
    for n in counts:
        for offset in (0, 3):
            y = product(x[offset: offset + n])
            for i in range(n):
                if not torch.equal(seen.setdefault(offset + i, y[i]), y[i]):
                    return False
    return True


EXPERT_ROW_MULTIPLES = (1, 2, 4, 8)
"""Row counts an expert's products may be padded to a multiple of, from the cheapest (see :func:`expert_row_multiple`)."""


@torch.inference_mode()
def expert_row_multiple(view: nn.Module) -> int:
    """The smallest of :data:`EXPERT_ROW_MULTIPLES` under which the mixture-of-experts products (``x @ fc[e]ᵀ``,
    ``h @ proj[e]ᵀ``) compute every row alike, set on each ``Experts`` module of ``view`` (the decode view's own
    copies): an expert's tokens are then padded to that multiple, and a token's result does not depend on how
    many others chose its expert. 1 without experts."""
    from groundup.model.moe import Experts

    experts = [m for m in view.modules() if isinstance(m, Experts)]
    if not experts:
        return 1
    device = first_tensor(view).device
    fc, proj = experts[0].fc[0], experts[0].proj[0]  # (up, C), (C, H): every layer's experts have these shapes
    products = [(lambda x: x @ fc.t(), fc.shape[1]), (lambda x: x @ proj.t(), proj.shape[1])]
    chosen = EXPERT_ROW_MULTIPLES[-1]
    for multiple in EXPERT_ROW_MULTIPLES:
        if all(_padded_rows_alike(product, features, multiple, device) for product, features in products):
            chosen = multiple
            break
    for module in experts:
        module.row_multiple = chosen
    return chosen


@torch.inference_mode()
def row_padding(view: nn.Module) -> str:
    """The cheapest of :data:`PADDINGS` under which every linear layer of ``view`` computes rows alike.

    Checked on random inputs, once per kind and shape of layer. Where none holds (an unusual kernel), the
    widest is used and greedy output may depend on the batch: a warning says so. Mixture-of-experts products
    get their own padding (:func:`expert_row_multiple`).
    """
    expert_row_multiple(view)  # the experts' products, padded per expert (set on the view's Experts modules)
    layers = {}
    for module in view.modules():
        features = getattr(module, "in_features", None)
        if features is not None and not list(module.children()):
            layers.setdefault((type(module), features, getattr(module, "out_features", None)), module)
    device = first_tensor(view).device
    for name, pad in PADDINGS.items():
        if all(_rows_alike(m, key[1], pad, device) for key, m in layers.items()):
            return name
    log.warning("no row padding makes this model's linear layers batch-invariant on this machine: greedy "
                "output may depend on which requests share a batch")
    return "four"
