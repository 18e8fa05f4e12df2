"""Bin packing: sequences of given lengths grouped into rows of a fixed capacity, with little room left over.

:func:`pack_bins` is the one packer, shared by pretraining's document-aligned rows
(:class:`groundup.tokens.datasets.PackedDocuments`) and fine-tuning's packed conversations
(:mod:`groundup.finetune.data`). It is Multipack's offline scheme: the items of a window are taken in
decreasing length and each goes into an open row (a *bin*), a new one only when it fits in none.
``fit='best'`` puts an item into the row it fills most tightly (best-fit decreasing); ``fit='first'``
into the oldest row with room (first-fit decreasing, Multipack's choice, kept as the baseline best fit is
measured against). Both need at most about 11/9 of the fewest rows possible.

Written here, not taken from a library: the loop is short, and it must return indices and be a pure
function of its input (resume and data-parallel ranks recompute the same rows).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Literal

import numpy as np


def pack_bins(lengths: Sequence[int] | np.ndarray, capacity: int, *,
              fit: Literal["best", "first"] = "best") -> list[list[int]]:
    """Indices of ``lengths`` grouped into bins whose lengths sum to at most ``capacity``, in the order the
    bins were opened (the one with the longest item first); a pure function of its arguments.

    Items are placed longest first (ties: lower index first); an item longer than ``capacity`` is an error.
    """
    if capacity <= 0:
        raise ValueError(f"capacity must be positive, got {capacity}")
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and (lengths.max() > capacity or lengths.min() < 0):
        bad = int(np.flatnonzero((lengths > capacity) | (lengths < 0))[0])
        raise ValueError(f"item {bad} has length {int(lengths[bad])}, outside 0..{capacity} (the bin capacity)")
    order = np.argsort(-lengths, kind="stable").tolist()
    if fit == "best":
        return _best_fit(order, lengths.tolist(), capacity)
    if fit == "first":
        return _first_fit(order, lengths.tolist(), capacity)
    raise ValueError(f"fit must be 'best' or 'first', got {fit!r}")


def _best_fit(order: list[int], lengths: list[int], capacity: int) -> list[list[int]]:
    bins: list[list[int]] = []
    rooms: list[tuple[int, int]] = []  # (room left, bin) of the bins with room, sorted: the tightest fit first
    for item in order:
        size = lengths[item]
        at = bisect.bisect_left(rooms, (size, -1))  # the first bin with room >= size: the least room that fits
        if at < len(rooms):
            room, b = rooms.pop(at)
        else:
            room, b = capacity, len(bins)
            bins.append([])
        bins[b].append(item)
        if room > size:
            bisect.insort(rooms, (room - size, b))
    return bins


def _first_fit(order: list[int], lengths: list[int], capacity: int) -> list[list[int]]:
    bins: list[list[int]] = []
    rooms = np.zeros(len(order), dtype=np.int64)  # room left in each bin opened so far
    for item in order:
        size = lengths[item]
        fits = np.flatnonzero(rooms[: len(bins)] >= size)
        if len(fits):
            b = int(fits[0])
        else:
            b = len(bins)
            bins.append([])
            rooms[b] = capacity
        bins[b].append(item)
        rooms[b] -= size
    return bins


def windowed_bins(lengths: np.ndarray, capacity: int, window: int) -> list[np.ndarray]:
    """:func:`pack_bins` over consecutive windows of ``window`` items (the indices are into ``lengths``):
    the packing of a long sequence of items in bounded time and memory, each window on its own."""
    if window <= 0:
        raise ValueError(f"window must be positive, got {window}")
    rows = []
    for first in range(0, len(lengths), window):
        rows += [np.asarray(b, dtype=np.int64) + first for b in pack_bins(lengths[first:first + window], capacity)]
    return rows
