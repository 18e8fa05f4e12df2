"""Unicode fixing: repair mojibake (UTF-8 read as Windows-1252/Latin-1), drop stray controls, normalize NFC.

ftfy does the repair when it is installed (it is not a dependency); otherwise a small
fallback here undoes the common case, UTF-8 bytes decoded as Windows-1252 (``CafÃ©`` ->
``Café``, ``â€œ`` -> ``“``). Both only touch text that looks broken, so clean text costs a
regex search and an NFC check.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from groundup.curate.steps import Formatter
from groundup.curate.text import Document

try:  # optional: the better fixer when present
    import ftfy
    from ftfy.badness import is_bad as _ftfy_is_bad
except ImportError:  # pragma: no cover - exercised where ftfy is absent
    ftfy = None


def _cp1252_table() -> dict[str, int]:
    """Character -> byte for Windows-1252, with Latin-1's C1 controls for its five undefined bytes."""
    table = {}
    for byte in range(256):
        try:
            char = bytes([byte]).decode("cp1252")
        except UnicodeDecodeError:
            char = chr(byte)
        table[char] = byte
    return table


_TO_BYTE = _cp1252_table()
_CONTINUATION = "".join(re.escape(c) for c, b in _TO_BYTE.items() if 0x80 <= b <= 0xBF)
_LEAD2 = "".join(re.escape(c) for c, b in _TO_BYTE.items() if 0xC2 <= b <= 0xDF)
_LEAD3 = "".join(re.escape(c) for c, b in _TO_BYTE.items() if 0xE0 <= b <= 0xEF)
_LEAD4 = "".join(re.escape(c) for c, b in _TO_BYTE.items() if 0xF0 <= b <= 0xF4)
_MOJIBAKE = re.compile(f"(?:[{_LEAD2}][{_CONTINUATION}]|[{_LEAD3}][{_CONTINUATION}]{{2}}"
                       f"|[{_LEAD4}][{_CONTINUATION}]{{3}})+")
_CONTROL = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f\ufffe\uffff]")


def _redecode(match: re.Match) -> str:
    text = match.group(0)
    try:
        return bytes(_TO_BYTE[c] for c in text).decode("utf-8")
    except (KeyError, UnicodeDecodeError):
        return text


def fix_mojibake(text: str) -> str:
    """Undo UTF-8 that was decoded as Windows-1252 or Latin-1, where the bytes decode cleanly."""
    if text.isascii():
        return text
    return _MOJIBAKE.sub(_redecode, text)


def fix_text(text: str, *, use_ftfy: bool = True) -> str:
    """Repair mojibake, remove control characters (not tab/newline), normalize to NFC."""
    if text.isascii():
        return _CONTROL.sub("", text) if _CONTROL.search(text) else text
    if use_ftfy and ftfy is not None:
        if _ftfy_is_bad(text):
            text = ftfy.fix_text(text, uncurl_quotes=False, fix_character_width=False, fix_latin_ligatures=False,
                                 fix_line_breaks=False, normalization=None)
    else:
        text = fix_mojibake(text)
    if _CONTROL.search(text):
        text = _CONTROL.sub("", text)
    if not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    return text


@dataclass
class UnicodeFixer(Formatter):
    """Repair mojibake and normalize to NFC; counts the documents it changed."""

    name = "unicode_fix"

    use_ftfy: bool = True
    """Use ftfy when it is installed (else, or with false, the built-in mojibake fixer)."""

    def format(self, doc: Document) -> dict[str, int] | None:
        fixed = fix_text(doc.text, use_ftfy=self.use_ftfy)
        if fixed != doc.text:
            doc.text = fixed
            return {"documents_fixed": 1}
        return None
