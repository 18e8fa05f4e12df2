"""URL blocklist: drop pages by domain (and its subdomains), full URL, or a banned word in the host name."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from groundup.curate.steps import KEEP, Filter
from groundup.curate.text import Document

DEFAULT_BLOCKLIST = Path(__file__).parent.parent / "data" / "url_blocklist.txt"
SHIPPED = "shipped"
"""The name that stands for :data:`DEFAULT_BLOCKLIST` in a list of blocklist files (``./shipped`` is a file)."""


def read_blocklist(path: str | Path) -> tuple[set[str], set[str], set[str]]:
    """(domains, URLs, banned words) from a blocklist file.

    One entry a line; ``#`` starts a comment. A line with ``://`` is a full URL; ``word:x``
    bans the word ``x`` as a token of the host name; anything else is a domain, which blocks
    its subdomains too.
    """
    domains, urls, words = set(), set(), set()
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.split("#", 1)[0].strip().lower()
            if not line:
                continue
            if "://" in line:
                urls.add(line)
            elif line.startswith("word:"):
                words.add(line[5:].strip())
            else:
                domains.add(line.removeprefix("*.").strip("."))
    return domains, urls, words


_HOST_TOKENS = re.compile(r"[a-z0-9]+")


@dataclass
class URLFilter(Filter):
    """Drop documents whose URL, domain (or a parent domain) or host-name word is on a blocklist."""

    name = "url_filter"

    files: list[str] = field(default_factory=lambda: [SHIPPED])
    """Blocklist files: one domain, full URL, or `word:x` (a banned host-name word) per line; `shipped` is
    the list that comes with groundup (adult sites). `[shipped, mine.txt]` adds one, `[mine.txt]` replaces it."""
    domains: list[str] = field(default_factory=list)
    """More blocked domains (their subdomains too)."""
    urls: list[str] = field(default_factory=list)
    """More blocked full URLs."""
    words: list[str] = field(default_factory=list)
    """More banned host-name words."""

    def __post_init__(self) -> None:
        self._domains = {d.lower() for d in self.domains}
        self._urls = {u.lower() for u in self.urls}
        self._words = {w.lower() for w in self.words}
        for name in self.files:
            path = DEFAULT_BLOCKLIST if name == SHIPPED else Path(name)
            if not path.is_file():
                raise FileNotFoundError(f"blocklist {path} not found")
            d, u, w = read_blocklist(path)
            self._domains |= d
            self._urls |= u
            self._words |= w

    def filter(self, doc: Document) -> tuple[bool, str]:
        if not doc.url:
            return KEEP
        url = doc.url.strip().lower()
        if url in self._urls:
            return False, "blocked_url"
        try:
            host = urlsplit(url).hostname or ""
        except ValueError:
            return False, "malformed_url"
        parts = host.split(".")
        for i in range(len(parts) - 1):
            if ".".join(parts[i:]) in self._domains:
                return False, "blocked_domain"
        if self._words and not self._words.isdisjoint(_HOST_TOKENS.findall(host)):
            return False, "blocked_word"
        return KEEP
