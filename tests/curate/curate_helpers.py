"""Test data for the curate tests: English-like prose, HTML pages, WARC files written with warcio."""

from __future__ import annotations

import io
import random
from pathlib import Path

NOUNS = tuple(["river", "garden", "teacher", "window", "market", "station", "engine", "village", "library", "doctor", "winter", "mountain", "letter", "kitchen", "bridge", "forest", "harbor", "farmer", "student", "painter", "museum", "island", "valley", "journey", "castle", "bottle", "machine", "meadow", "candle", "theater", "orchard", "sailor", "tower", "lantern", "basket", "pocket", "ladder", "carpet", "mirror", "blanket", "camera", "planet", "signal", "harvest"])
ADJECTIVES = tuple(["quiet", "bright", "ancient", "narrow", "gentle", "heavy", "simple", "careful", "distant", "golden", "hidden", "modern", "early", "patient", "curious", "steady", "honest", "humble", "rapid", "silent", "sudden", "tender", "vivid", "wooden"])
VERBS = tuple(["carries", "finds", "builds", "watches", "follows", "opens", "paints", "remembers", "crosses", "visits", "repairs", "explains", "describes", "gathers", "protects", "reaches", "measures", "studies", "shares", "changes"])
PLACES = ("near the old road", "after the long winter", "before the evening train", "with great care",
          "in the small town", "along the northern coast", "during the summer fair", "without any help")


TEMPLATES = (
    "The {a} {n} {v} the {n} {p}.",
    "Every {n} of this {a} {n} {v} a {n}, yet nobody {v} it.",
    "When the {n} {v} our {n}, it was {a} and {a}.",
    "She said that a {a} {n} never {v} any {n} {p}.",
    "Why does the {n} keep a {n} so {a}?",
    "Long ago, one {n} {v} two {n}s and a {a} {n}.",
    "It is {a} to see how each {n} {v} its own {n}.",
    "They have a {n}, which {v} many {a} {n}s {p}.",
    "Our {n} {v} with the {n}; that is why it seems {a}.",
    "In this {n}, {a} {n}s and {a} {n}s {v}[:-1] together.",
)


def english_text(seed: int, sentences: int = 16) -> str:
    """Prose that passes the FineWeb-like rules: varied sentences, stop words, punctuated lines."""
    rng = random.Random(seed)
    out = []
    for _ in range(sentences):
        template = rng.choice(TEMPLATES).replace("{v}[:-1]", "{w}")
        words = []
        for piece in template.split("{"):
            if "}" in piece:
                key, rest = piece.split("}", 1)
                pool = {"a": ADJECTIVES, "n": NOUNS, "v": VERBS, "p": PLACES, "w": VERBS}[key]
                choice = rng.choice(pool)
                words.append((choice[:-1] if key == "w" else choice) + rest)
            else:
                words.append(piece)
        out.append("".join(words))
    paragraphs, i = [], 0
    while i < len(out):  # three or four sentences a paragraph
        k = rng.choice((3, 4))
        paragraphs.append(" ".join(out[i:i + k]))
        i += k
    return "\n".join(paragraphs)


def html_page(title: str, body: str) -> str:
    """A page with navigation, a cookie banner and a footer around the main text."""
    paragraphs = "".join(f"<p>{p}</p>" for p in body.split("\n"))
    return (f"<!DOCTYPE html><html><head><title>{title}</title><script>var x = 1;</script></head><body>"
            f"<nav><ul><li><a href='/'>Home</a></li><li><a href='/about'>About us</a></li>"
            f"<li><a href='/contact'>Contact</a></li></ul></nav>"
            f"<main><article><h1>{title}</h1>{paragraphs}</article></main>"
            f"<footer><p>Copyright 2024 Example Media. All rights reserved.</p>"
            f"<p><a href='/privacy'>Privacy policy</a> | <a href='/terms'>Terms of use</a></p></footer>"
            f"</body></html>")


def write_warc(path: Path, pages: list[tuple[str, str]], *, gzip: bool = True,
               content_type: str = "text/html; charset=utf-8") -> Path:
    """A WARC of HTTP 200 response records (url, html) written with warcio."""
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=gzip)
        for url, html in pages:
            http = StatusAndHeaders("200 OK", [("Content-Type", content_type)], protocol="HTTP/1.1")
            record = writer.create_warc_record(url, "response", payload=io.BytesIO(html.encode("utf-8")),
                                               http_headers=http)
            writer.write_record(record)
    return path
