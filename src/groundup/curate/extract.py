"""Main text out of HTML: resiliparse (default, fast) or trafilatura (what FineWeb used).

resiliparse's ``extract_plain_text(main_content=True)`` drops navigation, headers, footers
and other boilerplate by simple rules and runs in C++ (far faster than trafilatura: benchmarks/curate_filters.py).
trafilatura with ``favor_precision=True, include_comments=False, deduplicate=True`` is the
extraction of the FineWeb recipe, for runs that want to reproduce it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from groundup.curate.steps import Filter
from groundup.curate.text import Document

EXTRACTORS = ("resiliparse", "trafilatura")
_BLANK_RUNS = re.compile(r"\n{3,}")


def decode_html(body: bytes, charset: str | None = None) -> str:
    """HTML bytes to text: the declared charset if it decodes, else a detected one (resiliparse), else UTF-8."""
    if charset:
        try:
            return body.decode(charset)
        except (LookupError, UnicodeDecodeError):
            pass
    try:
        from resiliparse.parse.encoding import bytes_to_str, detect_encoding
    except ImportError:
        return body.decode("utf-8", errors="replace")
    return bytes_to_str(body, detect_encoding(body))


def extract_resiliparse(html: str) -> str:
    try:
        from resiliparse.extract.html2text import extract_plain_text
    except ImportError as e:
        raise ImportError("HTML extraction needs resiliparse: pip install 'groundup[data]'") from e
    text = extract_plain_text(html, main_content=True, alt_texts=False, links=False, form_fields=False,
                              noscript=False, comments=False)
    return _BLANK_RUNS.sub("\n\n", text).strip()


def extract_trafilatura(html: str) -> str:
    try:
        import trafilatura
    except ImportError as e:
        raise ImportError("the trafilatura extractor needs trafilatura: pip install 'groundup[data]'") from e
    text = trafilatura.extract(html, favor_precision=True, include_comments=False, deduplicate=True)
    return (text or "").strip()


def extract_text(html: str, extractor: str = "resiliparse") -> str:
    """The main text of an HTML page ("" when there is none)."""
    if extractor == "resiliparse":
        return extract_resiliparse(html)
    if extractor == "trafilatura":
        return extract_trafilatura(html)
    raise ValueError(f"unknown extractor {extractor!r} (choose from {', '.join(EXTRACTORS)})")


@dataclass
class Extractor(Filter):
    """Turn HTML documents into their main text; drop pages with none. Text documents pass untouched."""

    name = "extract"

    extractor: str = "resiliparse"
    """Main-text extraction for HTML: 'resiliparse' (fast) or 'trafilatura' (as FineWeb did)."""

    def __post_init__(self) -> None:
        if self.extractor not in EXTRACTORS:
            raise ValueError(f"unknown extractor {self.extractor!r} (choose from {', '.join(EXTRACTORS)})")

    def filter(self, doc: Document) -> tuple[bool, str]:
        if not doc.html:
            return True, ""
        try:
            text = extract_text(doc.text, self.extractor)
        except ImportError:
            raise
        except Exception:  # a parser failure on one page must not stop the shard
            return False, "extraction_error"
        doc.text = text
        doc.html = False
        if not text:
            return False, "no_main_text"
        return True, ""
