"""Steps and their automatic statistics.

A step is a small dataclass (its fields are its parameters; :mod:`groundup.curate.recipe` builds it
by its ``name`` from a recipe) with one method:

- a :class:`Filter` answers ``filter(doc) -> (keep, reason)`` (it may also rewrite ``doc.text``,
  as the C4 rules drop lines);
- a :class:`Formatter` rewrites ``doc.text`` in ``format(doc)`` and returns what it changed,
  as counts per kind (``{"email": 2}``), or nothing.

:class:`Chain` runs documents through steps (:meth:`Chain.run`: every step over a batch of
documents in turn, with the same results as one document at a time) and keeps, per step,
documents and bytes in and out, drops by reason, changes by kind and time spent. :class:`StepStats` and
:class:`PipelineStats` are plain counters that add up, so shards' statistics merge into a run's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from groundup.curate.text import Document

BYTES_PER_TOKEN = 4
"""Tokens are estimated as UTF-8 bytes / 4 (about what a GPT-2-style BPE gives on English web text)."""


KEEP = (True, "")
"""What :meth:`Filter.filter` returns for a document it keeps."""


class Filter:
    """Keep or drop a document, and say why."""

    name: str = "filter"

    def filter(self, doc: Document) -> tuple[bool, str]:
        raise NotImplementedError


class Formatter:
    """Rewrite a document's text; return counts of what changed (or None)."""

    name: str = "formatter"

    def format(self, doc: Document) -> dict[str, int] | None:
        raise NotImplementedError


def _add(into: dict[str, int], other: dict[str, int]) -> None:
    for key, value in other.items():
        into[key] = into.get(key, 0) + value


@dataclass
class StepStats:
    """What one step saw: documents and bytes in and out, drops by reason, changes by kind, seconds."""

    documents_in: int = 0
    documents_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    changed: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def merge(self, other: StepStats) -> StepStats:
        self.documents_in += other.documents_in
        self.documents_out += other.documents_out
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        _add(self.dropped, other.dropped)
        _add(self.changed, other.changed)
        self.seconds += other.seconds
        return self

    def as_dict(self) -> dict:
        return {
            "documents_in": self.documents_in,
            "documents_out": self.documents_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "tokens_out_estimate": self.bytes_out // BYTES_PER_TOKEN,
            "dropped": dict(sorted(self.dropped.items())),
            "changed": dict(sorted(self.changed.items())),
            "seconds": round(self.seconds, 4),
        }

    @classmethod
    def from_dict(cls, data: dict) -> StepStats:
        return cls(documents_in=data["documents_in"], documents_out=data["documents_out"],
                   bytes_in=data["bytes_in"], bytes_out=data["bytes_out"], dropped=dict(data["dropped"]),
                   changed=dict(data["changed"]), seconds=float(data["seconds"]))


@dataclass
class PipelineStats:
    """Per-step statistics in chain order; mergeable across shards."""

    steps: dict[str, StepStats] = field(default_factory=dict)

    def merge(self, other: PipelineStats) -> PipelineStats:
        for name, stats in other.steps.items():
            self.steps.setdefault(name, StepStats()).merge(stats)
        return self

    def as_dict(self) -> dict:
        return {name: stats.as_dict() for name, stats in self.steps.items()}

    @classmethod
    def from_dict(cls, data: dict) -> PipelineStats:
        return cls({name: StepStats.from_dict(d) for name, d in data.items()})


Step = Filter | Formatter
DropSink = Callable[[Document, str, str], None]
"""Called with (document, step name, reason) for every dropped document."""


class Chain:
    """Documents through steps in order, with statistics kept for every step."""

    def __init__(self, steps: Iterable[Step], *, timed: bool = True, batch_documents: int = 64,
                 batch_characters: int = 8 << 20):
        self.steps = list(steps)
        self.batch_documents = max(1, batch_documents)
        self.batch_characters = batch_characters
        names = [s.name for s in self.steps]
        if len(set(names)) != len(names):
            raise ValueError(f"step names must be unique, got {names}")
        for step in self.steps:
            if not isinstance(step, (Filter, Formatter)):
                raise TypeError(f"{step!r} is neither a Filter nor a Formatter")
        self.stats = PipelineStats({name: StepStats() for name in names})
        self.timed = timed

    def process(self, doc: Document, on_drop: DropSink | None = None) -> bool:
        """Run one document through every step; False (and ``on_drop`` called) if a filter dropped it."""
        clock = time.perf_counter
        for step in self.steps:
            stats = self.stats.steps[step.name]
            stats.documents_in += 1
            stats.bytes_in += doc.nbytes
            start = clock() if self.timed else 0.0
            if isinstance(step, Filter):
                keep, reason = step.filter(doc)
                if self.timed:
                    stats.seconds += clock() - start
                if not keep:
                    stats.dropped[reason] = stats.dropped.get(reason, 0) + 1
                    if on_drop is not None:
                        on_drop(doc, step.name, reason)
                    return False
            else:
                changes = step.format(doc)
                if self.timed:
                    stats.seconds += clock() - start
                if changes:
                    _add(stats.changed, changes)
            stats.documents_out += 1
            stats.bytes_out += doc.nbytes
        return True

    def process_batch(self, docs: list[Document], on_drop: DropSink | None = None) -> list[Document]:
        """Run documents through every step, one step over all of them at a time; the kept ones, in order.

        Each document meets the same steps in the same order as with :meth:`process`, so decisions,
        texts and statistics are the same, and ``on_drop`` is called in the documents' order; only
        the interleaving differs. Running one step over many documents keeps that step's data (the
        language model, the rules' tables) in the CPU caches: the FineWeb-like chain runs
        faster than document by document, where the model and the rules evict each other from the caches.
        """
        clock = time.perf_counter
        alive = list(range(len(docs)))
        drops: list[tuple[int, str, str]] = []
        for step in self.steps:
            if not alive:
                break
            stats = self.stats.steps[step.name]
            start = clock() if self.timed else 0.0
            survivors = []
            # a filter with filter_batch (decontamination) decides for the whole batch in one call
            batch = step.filter_batch([docs[i] for i in alive]) if hasattr(step, "filter_batch") else None
            for position, i in enumerate(alive):
                doc = docs[i]
                stats.documents_in += 1
                stats.bytes_in += doc.nbytes
                if isinstance(step, Filter):
                    keep, reason = batch[position] if batch is not None else step.filter(doc)
                    if not keep:
                        stats.dropped[reason] = stats.dropped.get(reason, 0) + 1
                        drops.append((i, step.name, reason))
                        continue
                else:
                    changes = step.format(doc)
                    if changes:
                        _add(stats.changed, changes)
                stats.documents_out += 1
                stats.bytes_out += doc.nbytes
                survivors.append(i)
            if self.timed:
                stats.seconds += clock() - start
            alive = survivors
        if on_drop is not None:
            for i, name, reason in sorted(drops):
                on_drop(docs[i], name, reason)
        return [docs[i] for i in alive]

    def run(self, docs: Iterable[Document], on_drop: DropSink | None = None) -> Iterator[Document]:
        """The kept documents, in order, processed in batches of ``batch_documents`` (or fewer, up to
        ``batch_characters`` of text) by :meth:`process_batch`."""
        batch: list[Document] = []
        size = 0
        for doc in docs:
            batch.append(doc)
            size += len(doc.text)
            if len(batch) >= self.batch_documents or size >= self.batch_characters:
                yield from self.process_batch(batch, on_drop)
                batch, size = [], 0
        if batch:
            yield from self.process_batch(batch, on_drop)
