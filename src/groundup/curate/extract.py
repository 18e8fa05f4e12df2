"""Main text out of HTML: resiliparse (default, fast) or trafilatura (what FineWeb used).

resiliparse's ``extract_plain_text(main_content=True)`` drops navigation, headers, footers
and other boilerplate by simple rules and runs in C++ (far faster than trafilatura: benchmarks/curate_filters.py).
trafilatura with ``favor_precision=True, include_comments=False, deduplicate=True`` is the
extraction of the FineWeb recipe, for runs that want to reproduce it.

With ``keep_code`` (the code-and-docs recipe's setting) the text of every ``<pre>`` block is kept byte for
byte: resiliparse already writes preformatted text as it is (indentation, tabs, blank lines), so what changes
is the clean-up after it, which collapses runs of blank lines only outside those blocks and strips no
indentation; and line-number gutters (``.linenos`` and the like, which Pygments and other highlighters put
beside a listing) are skipped, so they do not end up as a column of numbers before the code.
"""

from __future__ import annotations

import re
from codecs import lookup as codec_lookup
from dataclasses import dataclass

from groundup.curate.steps import Filter
from groundup.curate.text import Document

EXTRACTORS = ("resiliparse", "trafilatura")
_BLANK_RUNS = re.compile(r"\n{3,}")
_LEADING_BLANK_LINES = re.compile(r"^(?:[ \t]*\n)+")
LINE_NUMBER_GUTTERS = (".linenos", ".lineno", ".line-numbers", ".line-number", ".gutter", ".hljs-ln-numbers",
                       ".react-syntax-highlighter-line-number")
"""CSS selectors of line-number columns beside code listings, skipped with ``keep_code``."""
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


_OPTIONS = {"main_content": True, "alt_texts": False, "links": False, "form_fields": False, "noscript": False,
            "comments": False}


def extract_resiliparse(html: str, keep_code: bool = False) -> str:
    try:
        from resiliparse.extract.html2text import extract_plain_text
        from resiliparse.parse.html import HTMLTree
    except ImportError as e:
        raise ImportError("HTML extraction needs resiliparse: pip install 'groundup[data]'") from e
    if not keep_code:
        text = extract_plain_text(html, **_OPTIONS)
        return _BLANK_RUNS.sub("\n\n", text).strip()
    tree = HTMLTree.parse(html)  # parsed once: for the <pre> blocks' text and for the extraction
    blocks = [node.text for node in tree.body.query_selector_all("pre")] if tree.body is not None else []
    text = extract_plain_text(tree, skip_elements=list(LINE_NUMBER_GUTTERS), **_OPTIONS)
    return _LEADING_BLANK_LINES.sub("", collapse_outside(text, blocks)).rstrip()


def collapse_outside(text: str, blocks: list[str]) -> str:
    """``text`` with runs of blank lines collapsed to one, except inside the ``blocks`` found in it (in order)."""
    pieces, done = [], 0
    for block in blocks:
        block = block.strip("\n")  # blank lines at a block's edges are layout, not code
        at = text.find(block, done) if block.strip() else -1
        if at < 0:  # dropped as boilerplate, or a line-number gutter that was skipped
            continue
        pieces.append(_BLANK_RUNS.sub("\n\n", text[done:at]))
        pieces.append(block)
        done = at + len(block)
    pieces.append(_BLANK_RUNS.sub("\n\n", text[done:]))
    return "".join(pieces)


def extract_trafilatura(html: str) -> str:
    try:
        import trafilatura
    except ImportError as e:
        raise ImportError("the trafilatura extractor needs trafilatura: pip install 'groundup[data]'") from e
    text = trafilatura.extract(html, favor_precision=True, include_comments=False, deduplicate=True)
    return (text or "").strip()


def extract_text(html: str, extractor: str = "resiliparse", keep_code: bool = False) -> str:
    """The main text of an HTML page ("" when there is none); ``keep_code``: ``<pre>`` blocks byte for byte
    (resiliparse only)."""
    if extractor == "resiliparse":
        return extract_resiliparse(html, keep_code)
    if keep_code:
        raise ValueError(f"keep_code needs the resiliparse extractor, not {extractor!r}")
    if extractor == "trafilatura":
        return extract_trafilatura(html)
    raise ValueError(f"unknown extractor {extractor!r} (choose from {', '.join(EXTRACTORS)})")


@dataclass
class Extractor(Filter):
    """Turn HTML documents into their main text; drop pages with none. Text documents pass untouched."""

    name = "extract"

    extractor: str = "resiliparse"
    """Main-text extraction for HTML: 'resiliparse' (fast) or 'trafilatura' (as FineWeb did)."""
    keep_code: bool = False
    """Keep `<pre>` blocks byte for byte (indentation, tabs, blank lines) and skip line-number gutters
    (resiliparse only; the code-and-docs recipe's setting)."""

    def __post_init__(self) -> None:
        if self.extractor not in EXTRACTORS:
            raise ValueError(f"unknown extractor {self.extractor!r} (choose from {', '.join(EXTRACTORS)})")
        if self.keep_code and self.extractor != "resiliparse":
            raise ValueError(f"keep_code needs the resiliparse extractor, not {self.extractor!r}")

    def filter(self, doc: Document) -> tuple[bool, str]:
        if not doc.html:
            return True, ""
        try:
            text = extract_text(doc.text, self.extractor, self.keep_code)
        except ImportError:
            raise
        except Exception:  # a parser failure on one page must not stop the shard
            return False, "extraction_error"
        doc.text = text
        doc.html = False
        if not text:
            return False, "no_main_text"
        return True, ""
