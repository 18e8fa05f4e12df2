"""Annotate documents with an LLM through any OpenAI-compatible URL: a 0-5 score per document from a rubric.

The default rubric is FineWeb-Edu's additive educational-value prompt (Penedo et al. 2024); ``prompt``
replaces it (a text with ``{text}`` where the document goes). Each document's score is appended to
``annotations.jsonl`` as soon as it arrives, keyed by the SHA-256 of its text, so a killed run started
again asks only for the documents it has no score for: none twice, none missing. Requests run on a
bounded pool of threads through the shared client (:mod:`groundup.endpoint`): retries with exponential
backoff on HTTP 5xx, 429 (honouring Retry-After), timeouts and refused connections. Replies
without a score, failed requests and their places are counted in ``stats.json`` with the tokens used
(from the server's ``usage``) and their cost.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from groundup.artifacts import write_json
from groundup.corpus import ReadStats
from groundup.curate.readers import list_inputs, read_file
from groundup.endpoint import ChatClient, EndpointSettings, RequestCounts, map_unordered

log = logging.getLogger(__name__)

FINEWEB_EDU_PROMPT = """Below is an extract from a web page. Evaluate whether the page has a high educational value \
and could be useful in an educational setting for teaching from primary school to grade school levels using the \
additive 5-point scoring system described below. Points are accumulated based on the satisfaction of each criterion:

- Add 1 point if the extract provides some basic information relevant to educational topics, even if it includes \
some irrelevant or non-academic content like advertisements and promotional material.
- Add another point if the extract addresses certain elements pertinent to education but does not align closely \
with educational standards. It might mix educational content with non-educational material, offering a \
superficial overview of potentially useful topics, or presenting information in a disorganized manner and \
incoherent writing style.
- Award a third point if the extract is appropriate for educational use and introduces key concepts relevant to \
school curricula. It is coherent though it may not be comprehensive or could include some extraneous information. \
It may resemble an introductory section of a textbook or a basic tutorial that is suitable for learning but has \
notable limitations like treating concepts that are too complex for grade school students.
- Grant a fourth point if the extract highly relevant and beneficial for educational purposes for a level not \
higher than grade school, exhibiting a clear and consistent writing style. It could be similar to a chapter from \
a textbook or a tutorial, offering substantial educational content, including exercises and solutions, with \
minimal irrelevant information, and the concepts aren't too advanced for grade school students. The content is \
coherent, focused, and valuable for structured learning.
- Bestow a fifth point if the extract is outstanding in its educational value, perfectly suited for teaching \
either at primary school or grade school. It follows detailed reasoning, the writing style is easy to follow and \
offers profound and thorough insights into the subject matter, devoid of any non-educational or complex content.

The extract:
{text}

After examining the extract:
- Briefly justify your total score, up to 100 words.
- Conclude with the score using the format: "Educational score: <total points>\""""

_SCORE_LINE = re.compile(r"score\s*[:=]?\s*\**\s*([0-5](?:\.\d+)?)\b", re.IGNORECASE)
_FRACTION = re.compile(r"\b([0-5](?:\.\d+)?)\s*(?:/|out of)\s*5\b", re.IGNORECASE)
_LONE = re.compile(r"^\s*\**([0-5](?:\.\d+)?)\**\s*\.?\s*$")


def parse_score(reply: str, max_score: float = 5) -> float | None:
    """The score in a reply: the last ``score: N`` (any case, markdown bold allowed), else the last ``N/5`` or
    ``N out of 5``, else a reply that is only a number; None when there is none in [0, max_score]."""
    for pattern in (_SCORE_LINE, _FRACTION):
        found = pattern.findall(reply)
        if found:
            value = float(found[-1])
            return value if 0 <= value <= max_score else None
    lone = _LONE.match(reply)
    return float(lone.group(1)) if lone else None


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()


@dataclass(kw_only=True)
class Config(EndpointSettings):
    """Score documents 0-5 with an LLM behind an OpenAI-compatible URL (FineWeb-Edu's rubric by default).

    The endpoint's settings (url, model, api_key, concurrency, retries, backoff_seconds, timeout_seconds) are
    :class:`~groundup.endpoint.EndpointSettings`'."""

    input: list[str] | str = field(default_factory=list)
    """Documents: curate shards (.parquet), JSONL, text files or folders (the `text` field or column)."""
    out: Path = Path("runs/annotations")
    """Output directory: annotations.jsonl (hash, source, offset, text, score, reply) and stats.json."""
    prompt: str = FINEWEB_EDU_PROMPT
    """The rubric: a text with {text} where the document goes (default: FineWeb-Edu's additive 0-5 prompt)."""
    prompt_file: Path | None = None
    """Read the rubric from this file instead of `prompt`."""
    max_chars: int = 10_000
    """Documents are cut to this many characters before they go in the prompt."""
    max_tokens: int = 256
    """Tokens the server may generate per reply."""
    limit: int | None = None
    """Annotate at most this many documents (None: all)."""
    price_per_million_input_tokens: float = 0.0
    """For the cost counter, in your currency."""
    price_per_million_output_tokens: float = 0.0
    """For the cost counter, in your currency."""
    text_field: str = "text"
    """Field (JSONL) or column (Parquet) holding the text."""


def _annotate_one(client: ChatClient, cfg: Config, prompt: str, doc, key: str,
                  counts: RequestCounts) -> dict | None:
    """The score record of one document, or None (counted) when the endpoint failed or the reply has no score."""
    where = f"{doc.source}:{doc.offset}"
    reply = counts.complete(client, prompt.replace("{text}", doc.text[: cfg.max_chars]), where, model=cfg.model,
                            max_tokens=cfg.max_tokens, temperature=0)
    if reply is None:
        return None
    score = parse_score(reply.content or "")
    if score is None:
        counts.fail("no score in the reply", where)
        return None
    return {"hash": key, "source": doc.source, "offset": doc.offset, "text": doc.text, "score": score,
            "reply": reply.content or ""}


def read_annotations(path: Path) -> Iterator[dict]:
    """The records of an annotations.jsonl; a line cut by a kill (the last one) is passed over."""
    if not path.is_file():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and "hash" in record and "score" in record:
                yield record


def run(cfg: Config) -> Path:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    prompt = cfg.prompt_file.read_text(encoding="utf-8") if cfg.prompt_file else cfg.prompt
    if "{text}" not in prompt:
        raise ValueError("the rubric prompt has no {text} placeholder for the document")
    specs = [cfg.input] if isinstance(cfg.input, str) else list(cfg.input)
    if not specs:
        raise ValueError("no input given: pass --input with documents (curate shards, JSONL, text)")
    path = out / "annotations.jsonl"
    done = {r["hash"] for r in read_annotations(path)}
    counts, read_stats = RequestCounts(stage="annotate"), ReadStats()
    client = cfg.client()
    cached, annotated = len(done), 0

    def new_documents() -> Iterator[tuple]:
        submitted = 0
        for file in list_inputs(specs):
            for doc in read_file(file, read_stats, text_field=cfg.text_field):
                key = text_hash(doc.text)
                if key in done or (cfg.limit is not None and submitted >= cfg.limit):
                    continue
                done.add(key)  # a duplicate text is asked once
                submitted += 1
                yield doc, key

    with open(path, "a", encoding="utf-8") as sink:
        for record in map_unordered(lambda item: _annotate_one(client, cfg, prompt, *item, counts),
                                    new_documents(), cfg.concurrency):
            if record is not None:
                sink.write(json.dumps(record, ensure_ascii=False) + "\n")
                sink.flush()  # on disk as it arrives: a kill loses only the requests in flight
                annotated += 1
    cost = (counts.prompt_tokens * cfg.price_per_million_input_tokens
            + counts.completion_tokens * cfg.price_per_million_output_tokens) / 1e6
    write_json(out / "stats.json", {"annotated": annotated, "already_annotated": cached, **counts.as_dict(),
                                    "cost": round(cost, 6), "read": read_stats.as_dict()})
    log.info("annotate: %d documents scored (%d already), %d failed, %d tokens, cost %.4f", annotated, cached, sum(counts.failed.values()), counts.prompt_tokens + counts.completion_tokens, cost)
    return out
