"""The chain of steps a run applies, from one config section; defaults are a FineWeb-like recipe.

FineWeb (Penedo et al. 2024): URL blocklist -> main-text extraction -> English with fastText
score >= 0.65 -> Gopher repetition -> Gopher quality -> C4 rules without the
terminal-punctuation one -> FineWeb's custom rules -> (MinHash dedup) -> PII. Here Unicode
fixing follows extraction, and PII redaction comes before deduplication, so duplicates are
judged on the text that is written.

One threshold departs from the reference code on purpose: the fraction of characters in
duplicated lines is 0.1, as the FineWeb paper gives it; datatrove's ``FineWebQualityFilter``
defaults to 0.01, which drops every page with a single repeated line of some length.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from groundup.curate.extract import EXTRACTORS, Extractor
from groundup.curate.filters import (
    DEFAULT_BLOCKLIST,
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
    LanguageFilter,
    LengthFilter,
    URLFilter,
)
from groundup.curate.pii import KINDS, PIIRedactor
from groundup.curate.steps import Filter, Formatter
from groundup.curate.unicode import UnicodeFixer


@dataclass(kw_only=True)
class RecipeConfig:
    """Which steps run, in a fixed order, with their thresholds (defaults: the FineWeb recipe)."""

    url_blocklist: bool = True
    """Drop pages whose domain or URL is on the blocklist shipped with groundup (and url_blocklist_files)."""
    url_blocklist_files: list[str] = field(default_factory=list)
    """More blocklists: one domain, full URL, or `word:x` (a banned host-name word) per line."""
    extractor: str = "resiliparse"
    """Main-text extraction for HTML: 'resiliparse' (fast) or 'trafilatura' (as FineWeb did)."""
    unicode_fix: bool = True
    """Repair mojibake (ftfy when installed, else a built-in fixer), drop control characters, NFC."""
    min_chars: int | None = None
    """Drop documents shorter than this many characters (None: no length rule)."""
    max_chars: int | None = None
    """Drop documents longer than this many characters (None: no bound)."""
    languages: list[str] | None = field(default_factory=lambda: ["en"])
    """Languages to keep (fastText lid.176 codes); None keeps every language (and still records it)."""
    language_threshold: float = 0.65
    """Minimum language score (FineWeb: 0.65)."""
    language_sample_chars: int | None = 3000
    """Longer pages are identified from this many characters in 8 evenly spaced slices (None: the
    whole text, as FineWeb; slower, and fastText's cost grows with the length)."""
    gopher_repetition: bool = True
    """Gopher's repetition rules (duplicated lines/paragraphs, top and duplicated n-grams)."""
    gopher_quality: bool = True
    """Gopher's quality rules (50-100k words, mean word length 3-10, symbols, bullets, ellipses, stop words)."""
    c4_quality: bool = True
    """C4's rules: line cleaning, lorem ipsum, curly brackets, at least 5 sentences."""
    c4_terminal_punctuation: bool = False
    """Also C4's "lines must end in terminal punctuation" (off in FineWeb: it removed 30% of tokens)."""
    fineweb_quality: bool = True
    """FineWeb's rules: punctuated lines, short lines, duplicated-line characters, newlines per word."""
    fineweb_line_punct_thr: float = 0.12
    """Minimum fraction of lines ending in terminal punctuation."""
    fineweb_short_line_thr: float = 0.67
    """Maximum fraction of lines of 30 characters or fewer."""
    fineweb_char_duplicates_ratio: float = 0.1
    """Maximum fraction of characters in duplicated lines (the paper's 0.1; datatrove's default is 0.01)."""
    pii: bool = True
    """Redact PII (placeholders <EMAIL>, <IP_ADDRESS>, <PHONE_NUMBER>, <CREDIT_CARD>)."""
    pii_kinds: list[str] = field(default_factory=lambda: list(KINDS))
    """Which PII kinds to redact."""
    phone_region: str = "US"
    """Region assumed for phone numbers written without a country code."""


def build_steps(cfg: RecipeConfig) -> list[Filter | Formatter]:
    """The steps of ``cfg`` in order."""
    if cfg.extractor not in EXTRACTORS:
        raise ValueError(f"unknown extractor {cfg.extractor!r} (choose from {', '.join(EXTRACTORS)})")
    steps: list[Filter | Formatter] = []
    if cfg.url_blocklist or cfg.url_blocklist_files:
        files = ([DEFAULT_BLOCKLIST] if cfg.url_blocklist else []) + list(cfg.url_blocklist_files)
        steps.append(URLFilter(files))
    steps.append(Extractor(cfg.extractor))
    if cfg.unicode_fix:
        steps.append(UnicodeFixer())
    if cfg.min_chars is not None or cfg.max_chars is not None:
        steps.append(LengthFilter(cfg.min_chars, cfg.max_chars))
    steps.append(LanguageFilter(cfg.languages, 0.0 if cfg.languages is None else cfg.language_threshold,
                                max_chars=cfg.language_sample_chars))
    if cfg.gopher_repetition:
        steps.append(GopherRepetitionFilter())
    if cfg.gopher_quality:
        steps.append(GopherQualityFilter())
    if cfg.c4_quality:
        steps.append(C4QualityFilter(filter_no_terminal_punct=cfg.c4_terminal_punctuation))
    if cfg.fineweb_quality:
        steps.append(FineWebQualityFilter(line_punct_thr=cfg.fineweb_line_punct_thr,
                                          short_line_thr=cfg.fineweb_short_line_thr,
                                          char_duplicates_ratio=cfg.fineweb_char_duplicates_ratio))
    if cfg.pii:
        steps.append(PIIRedactor(cfg.pii_kinds, phone_region=cfg.phone_region))
    return steps
