"""Length: keep documents within a range of characters."""

from __future__ import annotations

from dataclasses import dataclass

from groundup.curate.steps import KEEP, Filter
from groundup.curate.text import Document


@dataclass
class LengthFilter(Filter):
    """Keep documents with between ``min_chars`` and ``max_chars`` characters (None: no bound)."""

    name = "length"

    min_chars: int | None = None
    """Drop documents shorter than this many characters (None: no lower bound)."""
    max_chars: int | None = None
    """Drop documents longer than this many characters (None: no upper bound)."""

    def filter(self, doc: Document) -> tuple[bool, str]:
        n = len(doc.text)
        if self.min_chars is not None and n < self.min_chars:
            return False, "too_short"
        if self.max_chars is not None and n > self.max_chars:
            return False, "too_long"
        return KEEP
