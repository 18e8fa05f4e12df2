"""C4's rules (Raffel et al. 2020): drop lines that are not prose, then pages with code, placeholder text or too few sentences."""

from __future__ import annotations

import re
from dataclasses import dataclass

from groundup.curate.steps import KEEP, Filter
from groundup.curate.text import Document

CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
END_PUNCTUATION = (".", "?", "!", '"', "'")
POLICY_SUBSTRINGS = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
                     "use cookies")
# A sentence ends at terminal punctuation (and closing quotes or brackets) followed by a space and more text.
_SENTENCE_BREAK = re.compile(r"[.!?\u2026\u3002\uff01\uff1f]+[\"'\u201d\u2019)\]]*\s+(?=\S)")


def count_sentences(line: str) -> int:
    return 1 + len(_SENTENCE_BREAK.findall(line)) if line else 0


@dataclass(kw_only=True)
class C4QualityFilter(Filter):
    """C4's rules: drop lines (no terminal punctuation, under 3 words, a word over 1000 characters,
    "javascript", cookie/policy notices), then drop the page for "lorem ipsum", a curly bracket, or
    fewer than 5 sentences. Rewrites the text to the kept lines.

    FineWeb uses it without the terminal-punctuation rule (``filter_no_terminal_punct=False``),
    which alone removed 30% of tokens. The code-and-docs recipe keeps the layout (``strip_lines=False``:
    lines are cut at newlines only and keep their indentation, blank lines stay) and every short line
    (``min_words_per_line=0``), and turns off the rules that are about code rather than against it
    (curly brackets, "javascript", citation marks, which would take ``[1]`` out of ``x[1]``).
    """

    name = "c4_quality"

    filter_no_terminal_punct: bool = True
    """Drop lines that do not end in terminal punctuation (C4; FineWeb turns it off: it removed 30% of tokens)."""
    min_num_sentences: int = 5
    """Drop pages with fewer sentences in their kept lines (-1: no minimum)."""
    min_words_per_line: int = 3
    """Drop lines with fewer words."""
    max_word_length: int = 1000
    """Drop lines holding a longer word (-1: no limit)."""
    remove_citations: bool = True
    """Remove Wikipedia-style citation marks ([1], [edit], [citation needed])."""
    filter_lorem_ipsum: bool = True
    """Drop pages containing "lorem ipsum"."""
    filter_javascript: bool = True
    """Drop lines mentioning "javascript"."""
    filter_curly_bracket: bool = True
    """Drop pages containing a curly bracket (code)."""
    filter_policy: bool = True
    """Drop lines about terms of use, privacy or cookies."""
    strip_lines: bool = True
    """Strip each line's leading and trailing white space, as C4 does (False: keep indentation and trailing
    spaces, and cut lines at newlines only, for code)."""

    def filter(self, doc: Document) -> tuple[bool, str]:
        sentences = 0
        kept = []
        min_sentences = self.min_num_sentences
        strip = self.strip_lines
        for line in doc.text.splitlines() if strip else doc.text.split("\n"):
            if strip:
                line = line.strip()
            words = line.split()
            if self.max_word_length != -1 and len(line) > self.max_word_length and \
                    max(map(len, words), default=0) > self.max_word_length:
                continue
            if self.remove_citations and "[" in line:
                line = CITATION.sub("", line)
            if self.filter_no_terminal_punct and (not line.endswith(END_PUNCTUATION) or line.endswith("...")):
                continue
            if len(words) < self.min_words_per_line:
                continue
            lower = line.lower()
            if self.filter_lorem_ipsum and "lorem ipsum" in lower:
                return False, "lorem_ipsum"
            if self.filter_javascript and "javascript" in lower:
                continue
            if self.filter_curly_bracket and "{" in line:
                return False, "curly_bracket"
            if self.filter_policy and any(p in lower for p in POLICY_SUBSTRINGS):
                continue
            if sentences < min_sentences:
                sentences += count_sentences(line)
            kept.append(line)
        if min_sentences != -1 and sentences < min_sentences:
            return False, "too_few_sentences"
        doc.text = "\n".join(kept).strip() if strip else "\n".join(kept).strip("\n").rstrip()
        return KEEP
