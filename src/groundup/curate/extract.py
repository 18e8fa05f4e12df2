"""Main text out of HTML: resiliparse (default, fast) or trafilatura (what FineWeb used).

resiliparse's ``extract_plain_text(main_content=True)`` drops navigation, headers, footers
and other boilerplate by simple rules and runs in C++ (far faster than trafilatura: benchmarks/curate_filters.py).
trafilatura with ``favor_precision=True, include_comments=False, deduplicate=True`` is the
extraction of the FineWeb recipe, for runs that want to reproduce it.
"""

from __future__ import annotations

import re
from codecs import lookup as codec_lookup
from dataclasses import dataclass

from groundup.curate.steps import Filter
from groundup.curate.text import Document

EXTRACTORS = ("resiliparse", "trafilatura")
_BLANK_RUNS = re.compile(r"\n{3,}")
_ESCAPED = re.compile("[\udc80-\udcff]")
# <meta charset="x"> or <meta http-equiv="Content-Type" content="text/html; charset=x">, HTML5's prescan in short
_META_CHARSET = re.compile(rb"<meta[^>]*?charset\s*=\s*[\"']?\s*([A-Za-z0-9_.:-]+)", re.IGNORECASE)


def decode_bytes(body: bytes, charset: str | None = None) -> tuple[str, int, str]:
    """Bytes (an HTML page, a WET record) to text, how many bytes did not decode (each now U+FFFD) and the codec.

    The declared charset when it names a codec; without one, UTF-8 if the bytes are valid UTF-8, else the
    charset of a ``<meta>`` tag, else the one resiliparse detects, else UTF-8. Bytes that do not decode are
    replaced and counted; resiliparse's own ``bytes_to_str`` is not used, since it drops such bytes without
    a trace or re-decodes a whole UTF-8 page as Latin-1.
    """
    codec = _codec(charset)
    if codec is None:
        try:
            return body.decode("utf-8"), 0, "utf-8"
        except UnicodeDecodeError:
            pass
        meta = _META_CHARSET.search(body[:4096])
        codec = _codec(meta.group(1).decode("ascii")) if meta else None
    if codec is None:
        try:
            from resiliparse.parse.encoding import detect_encoding

            codec = _codec(detect_encoding(body))
        except ImportError:
            pass
    codec = codec or "utf-8"
    try:
        return body.decode(codec), 0, codec
    except UnicodeDecodeError:
        pass
    # surrogateescape turns each undecodable byte into one lone surrogate: count them, then replace
    text = body.decode(codec, errors="surrogateescape")
    return _ESCAPED.sub("\ufffd", text), len(_ESCAPED.findall(text)), codec


def _codec(name: str | None) -> str | None:
    if not name:
        return None
    try:
        return codec_lookup(name).name
    except LookupError:
        return None


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
