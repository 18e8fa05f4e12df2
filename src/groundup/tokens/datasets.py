"""Reading token files and cutting them into (input, target) windows.

- :func:`load_tokens`: a split of a tokens dir as a read-only memory map.
- :class:`RandomWindows`: training batches at random offsets. Batch ``k`` depends on
  ``(seed, k)`` alone, so the sampler's whole state is a counter and a resumed run sees the
  same batches as an uninterrupted one.
- :class:`SlidingWindows`: windows at ``0, stride, 2*stride, ...`` (the last one aligned to the
  end), for evaluation or epoch-style passes; with ``score_once`` every target is counted once.
- :class:`PackedDocuments`: training rows aligned to document starts, long documents split into
  rows and the rest packed by best fit; each row's document index per position (``segments``) for
  document-causal attention.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from groundup.artifacts import read_json
from groundup.tokens.packing import pack_bins

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
"""Target value that cross-entropy skips (PyTorch's default ``ignore_index``)."""


def load_tokens(tokens_dir: str | Path, split: str) -> np.ndarray:
    """``train.bin`` or ``val.bin`` of a tokens dir as a read-only memmap of the dtype ``meta.json`` names.

    The file's size must match the token count in ``meta.json``: a short file (an interrupted copy)
    or a file from another run is refused rather than read as garbage.
    """
    tokens_dir = Path(tokens_dir)
    meta_path, path = tokens_dir / "meta.json", tokens_dir / f"{split}.bin"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found: {tokens_dir} is not a tokens dir (run `groundup tokenize`)")
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (splits of a tokens dir: train, val)")
    meta = read_json(meta_path)
    try:
        dtype = np.dtype(meta["dtype"])
        count = int(meta["tokens"][split])
    except (KeyError, TypeError) as e:
        raise ValueError(f"{meta_path}: no dtype or token count for split {split!r}") from e
    size, expected = path.stat().st_size, count * dtype.itemsize
    if size != expected:
        raise ValueError(f"{path} holds {size:,} bytes but meta.json records {count:,} {dtype.name} tokens "
                         f"({expected:,} bytes): the file is truncated or from another run; re-run `groundup tokenize`")
    if count == 0:
        return np.zeros(0, dtype=dtype)  # np.memmap cannot map an empty file
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))


def _check_length(tokens: np.ndarray, block_size: int) -> None:
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    if len(tokens) < block_size + 1:
        raise ValueError(f"{len(tokens):,} tokens are too few for windows of {block_size} (+1 for the targets)")


def _windows(tokens: np.ndarray, starts: np.ndarray, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ``tokens[s : s+T]`` and targets ``tokens[s+1 : s+T+1]`` for each start, as int64 (B, T)."""
    index = starts[:, None] + np.arange(block_size + 1)  # (B, T+1)
    window = torch.from_numpy(np.asarray(tokens[index], dtype=np.int64))
    return window[:, :-1], window[:, 1:]


def random_starts(n_tokens: int, block_size: int, batch_size: int, seed: int, batch: int) -> np.ndarray:
    """Window starts of batch number ``batch``: a pure function of its arguments."""
    rng = np.random.default_rng([seed, batch])
    return rng.integers(0, n_tokens - block_size, size=batch_size)


class RandomWindows:
    """Batches of ``batch_size`` windows of ``block_size`` tokens at random offsets; y is x shifted by one."""

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int = 0) -> None:
        _check_length(tokens, block_size)
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.tokens, self.block_size, self.batch_size, self.seed = tokens, block_size, batch_size, seed
        self.batches = 0
        """Batches handed out so far: the next batch is number ``batches``."""

    def batch(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch number ``k`` (x, y), each int64 (B, T), without moving the counter."""
        starts = random_starts(len(self.tokens), self.block_size, self.batch_size, self.seed, k)
        return _windows(self.tokens, starts, self.block_size)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.batch(self.batches)
        self.batches += 1
        return x, y

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"sampler state is for seed {state['seed']}, this sampler has seed {self.seed}")
        self.batches = int(state["batches"])


def sliding_starts(n_tokens: int, block_size: int, stride: int) -> np.ndarray:
    """Starts ``0, stride, 2*stride, ...`` of full windows, plus one aligned to the end if the last target
    would otherwise be missed."""
    if not 0 < stride <= block_size:
        raise ValueError(f"need 0 < stride <= block_size, got stride={stride}, block_size={block_size}")
    last = n_tokens - 1 - block_size  # the start whose window ends at the last target
    starts = np.arange(0, last + 1, stride)
    if starts[-1] != last:
        starts = np.append(starts, last)
    return starts


def scored_from(starts: np.ndarray, block_size: int) -> np.ndarray:
    """For each window, the first position whose target no earlier window scored (0 for the first window).

    With ``stride < block_size`` a window after the first scores only its last ``stride`` targets;
    the rest are context. Together the windows score every target exactly once.
    """
    # Window i's targets are tokens[starts[i] + 1 : starts[i] + block_size + 1], so window i - 1 has
    # already scored the first starts[i - 1] + block_size - starts[i] targets of window i.
    first = np.zeros(len(starts), dtype=np.int64)
    first[1:] = np.clip(starts[:-1] + block_size - starts[1:], 0, block_size)
    return first


class SlidingWindows:
    """Deterministic windows at ``0, stride, 2*stride, ...`` (and one aligned to the end), in batches.

    ``score_once=True`` sets to -100 each target an earlier window already scored, so a loss summed
    over all batches counts every token once: the evaluation of a whole token stream.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, stride: int | None = None, batch_size: int = 1,
                 *, score_once: bool = False) -> None:
        _check_length(tokens, block_size)
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.tokens, self.block_size, self.batch_size = tokens, block_size, batch_size
        self.stride = block_size if stride is None else stride
        self.score_once = score_once
        self.starts = sliding_starts(len(tokens), block_size, self.stride)
        self.first_scored = scored_from(self.starts, block_size)
        self.position = 0
        """Index of the next window to hand out."""

    def __len__(self) -> int:
        """Number of windows."""
        return len(self.starts)

    @property
    def num_batches(self) -> int:
        return -(-len(self.starts) // self.batch_size)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (x, y), int64 (B, T); the last batch may be smaller. StopIteration after the last window."""
        if self.position >= len(self.starts):
            raise StopIteration
        span = slice(self.position, self.position + self.batch_size)
        x, y = _windows(self.tokens, self.starts[span], self.block_size)
        if self.score_once:
            context = torch.arange(self.block_size)[None, :] < torch.from_numpy(self.first_scored[span])[:, None]
            y = y.masked_fill(context, IGNORE_INDEX)
        self.position = min(self.position + self.batch_size, len(self.starts))
        return x, y

    def __iter__(self):
        while self.position < len(self.starts):
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        position = int(state["position"])
        if not 0 <= position <= len(self.starts):
            raise ValueError(f"sampler position {position} is outside 0..{len(self.starts)}")
        self.position = position


# ---------------------------------------------------------------------------- document-aligned packing


def eos_positions(tokens: np.ndarray, eos_id: int, chunk: int = 1 << 26) -> np.ndarray:
    """Indices of every ``eos_id`` in ``tokens`` (int64), read ``chunk`` tokens at a time, so that a memmap of
    several GB costs a pass over the file and a bool array of ``chunk`` bytes, not one of the file's length."""
    found = [np.flatnonzero(np.asarray(tokens[first:first + chunk]) == eos_id) + first
             for first in range(0, len(tokens), chunk)]
    return np.concatenate(found).astype(np.int64) if found else np.zeros(0, dtype=np.int64)


def segments_from_eos(x: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Each position's document index within its row (B, T): an EOS opens the next document (it is the
    token the document's first token is predicted from), so windows cut anywhere get document-causal masks."""
    return torch.cumsum(x == eos_id, dim=1)


@dataclass(frozen=True)
class DocumentPieces:
    """A token shard cut into the pieces rows are packed from, each at most a row (``block_size + 1`` tokens).

    A document's piece is its tokens with the EOS before it (the file's previous separator; the first
    document's, which the file lacks, reads as ``eos_id``), so a row of pieces reads like the file and
    each document's first token is predicted from an EOS, as the held-out scorer predicts it. A document
    longer than a row is cut into rows that overlap by one token (the last target of one is the first
    input of the next, so every token is a target once) and a shorter remainder, which starts mid-document.
    """

    start: np.ndarray
    """(P,) int64: the piece's first token in the shard (-1: the EOS before the first document)."""
    length: np.ndarray
    """(P,) int64: tokens in the piece (at least 2: one target)."""
    opens_document: np.ndarray
    """(P,) bool: the piece starts with its document's EOS; else it continues a longer document."""
    documents: int
    """Documents with at least one token."""


def document_pieces(tokens: np.ndarray, eos_id: int, block_size: int, where: str = "tokens") -> DocumentPieces:
    """The pieces of ``tokens`` (documents separated by ``eos_id``) for rows of ``block_size + 1`` tokens."""
    eos = eos_positions(tokens, eos_id)
    if not len(eos):
        raise ValueError(f"{where}: no EOS token (id {eos_id}) in {len(tokens):,} tokens, so no document "
                         f"boundaries to align rows to (check meta.json's eos_id, or use packing 'random')")
    starts = np.concatenate([[-1], eos])  # each document's piece begins at the EOS before it
    lengths = np.concatenate([eos, [len(tokens)]]) - starts  # up to its own EOS (or the end of the file)
    keep = lengths >= 2  # an empty document (two EOS in a row) and the end after the last EOS hold no target
    starts, lengths = starts[keep], lengths[keep]
    if not len(starts):
        raise ValueError(f"{where}: {len(eos):,} EOS tokens (id {eos_id}) and no document between them")
    full = (lengths - 1) // block_size  # whole rows of block_size + 1 tokens, each overlapping the next by one
    rest = lengths - full * block_size  # the remainder after them (1: its only token was the last row's target)
    doc = np.repeat(np.arange(len(starts)), full)
    row_in_doc = np.arange(len(doc)) - np.repeat(np.cumsum(full) - full, full)
    tail = rest >= 2
    start = np.concatenate([starts[doc] + row_in_doc * block_size, (starts + full * block_size)[tail]])
    length = np.concatenate([np.full(len(doc), block_size + 1), rest[tail]])
    opens = np.concatenate([row_in_doc == 0, (full == 0)[tail]])
    order = np.argsort(start, kind="stable")  # file order: the epoch's shuffle is then all that orders them
    return DocumentPieces(start=start[order], length=length[order], opens_document=opens[order],
                          documents=len(starts))


class PackedDocuments:
    """Training rows of whole documents: each row starts at a document's start (its EOS) or continues one.

    One epoch is every piece of :func:`document_pieces` once, in an order shuffled by ``(seed, epoch)``
    and cut into groups of ``group_size`` pieces; each group is packed on its own by best fit
    (:func:`groundup.tokens.packing.pack_bins`) into rows of ``block_size + 1`` tokens, whose order (and
    the pieces' order within each) is shuffled by ``(seed, epoch, group)``. Nothing is cropped: a row's
    free room is padding (target -100), and the target that would predict a mid-document piece's first
    token from the piece before it is -100 too. Batch ``k`` is rows ``k*B ... k*B + B - 1`` of that stream,
    a pure function of ``(seed, k)`` computed moving forward, so :class:`groundup.parallel.data.RankBatches`
    hands each rank its own batches; the state (the position and the group it lies in) is a few numbers.

    A batch is ``(x, y, segments)``, each int64 (B, T): ``segments`` numbers the pieces of each row (the
    padding is one more), for the model's document-causal attention.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, eos_id: int, seed: int = 0,
                 group_size: int = 4096, where: str = "tokens") -> None:
        _check_length(tokens, block_size)
        if batch_size <= 0 or group_size <= 0:
            raise ValueError(f"batch_size and group_size must be positive, got {batch_size} and {group_size}")
        self.tokens, self.block_size, self.batch_size = tokens, block_size, batch_size
        self.eos_id, self.seed, self.group_size = eos_id, seed, group_size
        self.pieces = document_pieces(tokens, eos_id, block_size, where)
        self.groups = -(-len(self.pieces.start) // group_size)
        """Groups in an epoch."""
        self.batches = 0
        """Batches handed out so far: the next batch is number ``batches``."""
        self._order_epoch, self._order = -1, np.zeros(0, dtype=np.int64)
        self._rewind()

    # -- the stream of rows: a cursor that moves forward through (epoch, group, row)

    def _rewind(self) -> None:
        self._at = 0  # the batch the cursor is at the start of
        self._epoch, self._group, self._row = 0, 0, 0
        self._plan()
        self.totals = {"rows": 0, "targets": 0, "padding": 0, "masked": 0}
        """Over the rows before the cursor: their count, targets, padded positions, and targets set to -100
        before a mid-document piece."""

    def _plan(self) -> None:
        """The rows of the cursor's group (arrays of piece indices) and what each holds."""
        if self._order_epoch != self._epoch:
            self._order_epoch = self._epoch
            self._order = np.random.default_rng([self.seed, self._epoch]).permutation(len(self.pieces.start))
        ids = self._order[self._group * self.group_size:(self._group + 1) * self.group_size]
        lengths = self.pieces.length[ids]
        rng = np.random.default_rng([self.seed, self._epoch, self._group])
        bins = pack_bins(lengths, self.block_size + 1)
        rows = [ids[np.asarray(bins[i])] for i in rng.permutation(len(bins))]
        self._rows = [row[rng.permutation(len(row))] for row in rows]
        used = np.array([self.pieces.length[row].sum() for row in self._rows])
        masked = np.array([np.count_nonzero(~self.pieces.opens_document[row[1:]]) for row in self._rows])
        self._fill = {"targets": used - 1 - masked, "padding": self.block_size + 1 - used, "masked": masked}

    def _take(self, n: int) -> list[np.ndarray]:
        """The next ``n`` rows; the cursor moves past them."""
        rows: list[np.ndarray] = []
        while len(rows) < n:
            if self._row == len(self._rows):
                self._group += 1
                if self._group == self.groups:
                    self._epoch, self._group = self._epoch + 1, 0
                self._row = 0
                self._plan()
            span = slice(self._row, min(len(self._rows), self._row + n - len(rows)))
            rows += self._rows[span]
            self.totals["rows"] += span.stop - span.start
            for key, per_row in self._fill.items():
                self.totals[key] += int(per_row[span].sum())
            self._row = span.stop
        return rows

    def _seek(self, k: int) -> None:
        """Put the cursor at the start of batch ``k`` (from the beginning when ``k`` lies behind it)."""
        if k < self._at:
            self._rewind()
        while self._at < k:  # skipped rows are planned (the stream must know where it is) but never read
            self._take(self.batch_size)
            self._at += 1

    # -- the sampler

    def batch(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batch number ``k`` (x, y, segments), without moving the counter."""
        self._seek(k)
        rows = self._take(self.batch_size)
        self._at += 1
        return self._assemble(rows)

    def _assemble(self, rows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        T, p = self.block_size, self.pieces
        window = np.full((len(rows), T + 1), self.eos_id, dtype=np.int64)  # padding reads as EOS
        trained = np.zeros((len(rows), T), dtype=bool)
        segments = np.zeros((len(rows), T), dtype=np.int64)
        for i, row in enumerate(rows):
            lengths = p.length[row]
            index = np.concatenate([np.arange(s, s + n) for s, n in zip(p.start[row], lengths, strict=True)])
            used = len(index)
            window[i, :used] = np.asarray(self.tokens[np.maximum(index, 0)], dtype=np.int64)
            window[i, :used][index < 0] = self.eos_id  # the first document's EOS, which the file lacks
            trained[i, :used - 1] = True
            opens_at = np.cumsum(lengths)[:-1]  # where the row's second, third, ... piece begins
            trained[i, opens_at[~p.opens_document[row[1:]]] - 1] = False  # no target across into mid-document
            segments[i] = len(row)  # the padding: a document of its own
            segments[i, :min(used, T)] = np.repeat(np.arange(len(row)), lengths)[:T]
        x, y = torch.from_numpy(window[:, :-1]), torch.from_numpy(window[:, 1:]).clone()
        y[~torch.from_numpy(trained)] = IGNORE_INDEX
        return x, y, torch.from_numpy(segments)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = self.batch(self.batches)
        self.batches += 1
        return batch

    def stats(self) -> dict[str, Any]:
        """What the rows handed out so far hold: ``efficiency`` is the share of row positions with a target."""
        self._seek(self.batches)
        p, positions = self.pieces, self.totals["rows"] * self.block_size
        return {"documents": p.documents, "pieces": len(p.start), "whole_row_pieces": int((p.length > self.block_size).sum()),
                "continuation_pieces": int((~p.opens_document).sum()), "cropped_tokens": 0, **self.totals,
                "efficiency": round(self.totals["targets"] / positions, 6) if positions else None}

    def state_dict(self) -> dict[str, Any]:
        self._seek(self.batches)
        return {"batches": self.batches, "seed": self.seed, "epoch": self._epoch, "group": self._group,
                "row": self._row, "pieces": len(self.pieces.start), "totals": dict(self.totals)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"sampler state is for seed {state['seed']}, this sampler has seed {self.seed}")
        if "pieces" not in state:
            raise ValueError("sampler state has no packing position (it is from packing 'random')")
        if state["pieces"] != len(self.pieces.start):
            raise ValueError(f"sampler state is for {state['pieces']:,} pieces, these tokens make "
                             f"{len(self.pieces.start):,} (other tokens or another seq_len)")
        self.batches = self._at = int(state["batches"])
        self._epoch, self._group = int(state["epoch"]), int(state["group"])
        self._plan()
        self._row = int(state["row"])
        self.totals = {key: int(value) for key, value in state["totals"].items()}
