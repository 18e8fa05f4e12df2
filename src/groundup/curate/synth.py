"""Synthetic data through any OpenAI-compatible URL: instructions, Q&A and textbook passages from seed topics.

Every seed topic is rendered into every chosen template (``instruction``, ``qa``, ``textbook``; Jinja
templates with ``{{ topic }}`` and ``{{ n }}``, the sample's number, editable from ``template_dir``),
``samples_per_topic`` times, and sent through the shared client (:mod:`groundup.endpoint`: timeouts,
retries on 5xx, 429, timeouts and refused connections) on a bounded pool of threads. Each reply is
appended to ``generations.jsonl`` as it arrives, keyed by the SHA-256 of the request (model, prompt,
sample number, temperature, max tokens), so a killed run started again asks only for what it has no
reply for.

Then, over every reply in a fixed order (template, topic, sample; so a resumed run writes the same
files as a straight one):

1. parse: instructions and Q&A must have both parts (``Instruction:``/``Response:``,
   ``Question:``/``Answer:``), else ``unparsable``;
2. the curate filters: length in characters (:class:`~groundup.curate.filters.length.LengthFilter`),
   language (:class:`~groundup.curate.filters.language.LanguageFilter`, fastText lid.176), and
   decontamination against evaluation files (:class:`~groundup.curate.decontam.Decontaminate`: a word
   13-gram shared with an item);
3. exact duplicates (the normalized text's hash) and near duplicates (MinHash LSH), with curate's
   hashing and signatures (:mod:`groundup.curate.dedup`): the first of each cluster stays.

``chat.jsonl`` gets instructions and Q&A as ``{"messages": [user, assistant]}`` records (what
``groundup finetune sft`` reads), ``text.jsonl`` textbook passages as ``{"text": ...}`` records (what
``groundup tokenize`` and ``groundup curate`` read); both keep ``kind``, ``topic`` and ``n``. ``stats.json``
counts every drop by reason, failed requests by reason with their places, and the tokens used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from groundup import config as configlib
from groundup.artifacts import write_json, write_manifest
from groundup.curate.dedup import (
    EMPTY_SIGNATURE,
    DedupConfig,
    band_hashes,
    connected_components,
    exact_hashes,
    minhash_signatures,
)
from groundup.curate.steps import Chain, Filter
from groundup.curate.text import Document
from groundup.endpoint import ChatClient, EndpointSettings, RequestCounts, map_unordered

log = logging.getLogger(__name__)

KINDS = ("instruction", "qa", "textbook")
TEMPLATES: dict[str, str] = {
    "instruction": (
        "Write one instruction that a user might give an AI assistant about {{ topic }}, and an excellent, "
        "helpful response to it. This is example number {{ n }}: make it different from the others.\n"
        "Reply in exactly this format, with nothing before or after:\n"
        "Instruction: <the instruction>\nResponse: <the response>"),
    "qa": (
        "Write one question that a curious student might ask about {{ topic }}, and a correct, clear answer. "
        "This is example number {{ n }}: make it different from the others.\n"
        "Reply in exactly this format, with nothing before or after:\n"
        "Question: <the question>\nAnswer: <the answer>"),
    "textbook": (
        "Write a passage of a textbook about {{ topic }}: clear explanations, a worked example, plain prose "
        "without headings or lists. This is passage number {{ n }}: cover a different aspect than the others.\n"
        "Reply with the passage only."),
}
"""The built-in templates (Jinja); a file ``<kind>.jinja`` in ``template_dir`` replaces one."""
PAIRS = {"instruction": ("Instruction", "Response"), "qa": ("Question", "Answer")}
"""The two labels of a chat kind's reply: the user's turn, then the assistant's."""
FILES = {"chat.jsonl", "text.jsonl", "stats.json", "generations.jsonl", "config.yaml", "manifest.json"}


@dataclass(kw_only=True)
class Config(EndpointSettings):
    """Generate instructions, Q&A and textbook passages from seed topics through an OpenAI-compatible URL.

    The endpoint's settings (url, model, api_key, concurrency, retries, backoff_seconds, timeout_seconds) are
    :class:`~groundup.endpoint.EndpointSettings`', with a longer timeout (a generation is longer than a score)."""

    topics: list[str] | str = field(default_factory=list)
    """Seed topics: a list, or a file (one topic a line, or JSONL with a `topic` field)."""
    out: Path = Path("runs/synth")
    """Output directory: chat.jsonl, text.jsonl, stats.json, generations.jsonl (the replies, for resuming)."""
    kinds: list[str] = field(default_factory=lambda: list(KINDS))
    """What to generate: instruction and qa (chat records), textbook (text records)."""
    template_dir: Path | None = None
    """A folder of Jinja templates `<kind>.jinja` replacing the built-in ones ({{ topic }}, {{ n }})."""
    samples_per_topic: int = 1
    """Requests per topic and kind ({{ n }} runs from 0)."""
    temperature: float = 0.8
    """Sampling temperature of the generator."""
    max_tokens: int = 1024
    """Tokens the server may generate per reply."""
    timeout_seconds: float = 120.0
    """A request without an answer after this long is a timeout (longer than a score's: replies are long)."""
    min_chars: int | None = 50
    """Drop generations shorter than this many characters (None: no bound)."""
    max_chars: int | None = 20_000
    """Drop generations longer than this many characters (None: no bound)."""
    languages: list[str] | None = field(default_factory=lambda: ["en"])
    """Keep generations in these languages (fastText lid.176 codes; None: no language filter)."""
    language_threshold: float = 0.65
    """Minimum score of the identified language."""
    decontaminate: list[str] | str = field(default_factory=list)
    """Evaluation files (JSONL, Parquet or text): drop every generation sharing a word n-gram with one of their items."""
    decontaminate_ngram: int = 13
    """Words in a decontamination n-gram."""
    dedup: DedupConfig = field(default_factory=DedupConfig)
    """Exact and near-duplicate (MinHash LSH) removal over the generations (curate's settings)."""

    def __post_init__(self) -> None:
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown or not self.kinds:
            raise ValueError(f"synth: kinds must be some of {', '.join(KINDS)}, got {self.kinds!r}")
        for name in ("samples_per_topic", "concurrency", "max_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"synth: {name} must be a positive integer, got {value!r}")


# ---------------------------------------------------------------------------- pure functions


def read_topics(topics: list[str] | str) -> list[str]:
    """The seed topics: a list as given, or a file's lines (JSONL lines with a `topic` field); blank lines and
    repeats are left out."""
    if isinstance(topics, str):
        path = Path(topics)
        if not path.is_file():
            raise FileNotFoundError(f"synth: topics file not found: {path}")
        items = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            line = line.strip()
            if line.startswith("{"):
                try:
                    line = str(json.loads(line)["topic"]).strip()
                except (ValueError, KeyError, TypeError):
                    raise ValueError(f"synth: {path}:{i}: a JSON line without a `topic` string") from None
            items.append(line)
    else:
        items = [str(t).strip() for t in topics]
    return list(dict.fromkeys(t for t in items if t))


def load_templates(kinds: list[str], template_dir: Path | None) -> dict[str, object]:
    """Compiled Jinja templates by kind (unknown variables are an error, not an empty string)."""
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False)
    templates = {}
    for kind in kinds:
        source = TEMPLATES[kind]
        if template_dir is not None:
            path = Path(template_dir) / f"{kind}.jinja"
            if path.is_file():
                source = path.read_text(encoding="utf-8")
        try:
            templates[kind] = env.from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise ValueError(f"synth: the {kind} template has a syntax error at line {e.lineno}: {e.message}") from None
    return templates


def request_hash(model: str, prompt: str, n: int, temperature: float, max_tokens: int) -> str:
    key = json.dumps([model, prompt, n, temperature, max_tokens], ensure_ascii=False)
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def parse_pair(reply: str, first: str, second: str) -> tuple[str, str] | None:
    """``(user, assistant)`` from a reply written as ``First: ...`` then ``Second: ...`` (markdown bold and
    headings around the labels allowed); None when a part is missing or empty."""
    label = r"(?:^|\n)[#*_\s]*{}[*_\s]*:[*_]*[ \t]*"
    match = re.search(label.format(first) + r"(.*?)" + label.format(second) + r"(.*)$", reply.strip(),
                      re.IGNORECASE | re.DOTALL)
    if not match:
        return None
    user, assistant = match.group(1).strip(), match.group(2).strip()
    return (user, assistant) if user and assistant else None


def duplicates(texts: list[str], cfg: DedupConfig) -> dict[int, str]:
    """Index -> ``exact_duplicate`` or ``near_duplicate`` for every text that repeats an earlier one
    (curate's exact hash and MinHash LSH signatures; in each cluster the first text stays)."""
    dropped: dict[int, str] = {}
    if cfg.exact and texts:
        first: dict[int, int] = {}
        for i, h in enumerate(exact_hashes(texts).tolist()):
            if h in first:
                dropped[i] = "exact_duplicate"
            else:
                first[h] = i
    alive = [i for i in range(len(texts)) if i not in dropped]
    if cfg.near and len(alive) > 1:
        signatures = minhash_signatures([texts[i] for i in alive], cfg)
        has_words = (signatures != EMPTY_SIGNATURE).any(axis=1)
        keys = band_hashes(signatures, cfg)
        left, right = [], []
        for band in range(cfg.bands):
            owner: dict[int, int] = {}
            for row, key in enumerate(keys[:, band].tolist()):
                if not has_words[row]:
                    continue
                if key in owner:
                    left.append(row)
                    right.append(owner[key])
                else:
                    owner[key] = row
        if left:
            nodes, roots = connected_components(np.array(left), np.array(right))
            for node, root in zip(nodes.tolist(), roots.tolist(), strict=True):
                if node != root:
                    dropped[alive[node]] = "near_duplicate"
    return dropped


# ---------------------------------------------------------------------------- generation


@dataclass(frozen=True)
class Task:
    kind: str
    topic: str
    n: int
    prompt: str
    hash: str


def plan_tasks(cfg: Config, topics: list[str]) -> list[Task]:
    templates = load_templates(cfg.kinds, cfg.template_dir)
    tasks = []
    for kind in cfg.kinds:
        for topic in topics:
            for n in range(cfg.samples_per_topic):
                try:
                    prompt = templates[kind].render(topic=topic, n=n)
                except Exception as e:  # jinja2.UndefinedError and the like: the template's own mistake
                    raise ValueError(f"synth: the {kind} template cannot be rendered: {e}") from None
                tasks.append(Task(kind, topic, n, prompt,
                                  request_hash(cfg.model, prompt, n, cfg.temperature, cfg.max_tokens)))
    return tasks


def read_generations(path: Path) -> dict[str, dict]:
    """The replies recorded so far, by request hash; a line cut by a kill (the last one) is passed over."""
    found: dict[str, dict] = {}
    if not path.is_file():
        return found
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("hash"), str) and isinstance(record.get("reply"), str):
                found[record["hash"]] = record
    return found


def _generate(client: ChatClient, cfg: Config, task: Task, counts: RequestCounts) -> dict | None:
    reply = counts.complete(client, task.prompt, f"{task.kind}/{task.topic}/{task.n}", model=cfg.model,
                            max_tokens=cfg.max_tokens, temperature=cfg.temperature)
    if reply is None:
        return None
    return {"hash": task.hash, "kind": task.kind, "topic": task.topic, "n": task.n, "reply": reply.content or "",
            "finish_reason": reply.finish_reason}


def generate(cfg: Config, tasks: list[Task], path: Path, done: dict[str, dict], counts: RequestCounts) -> int:
    """Ask for every task without a recorded reply; each reply is appended to ``path`` as it arrives.
    Returns how many replies were added."""
    client = cfg.client()
    asked: set[str] = set()

    def new_tasks() -> Iterator[Task]:
        for task in tasks:
            if task.hash not in done and task.hash not in asked:
                asked.add(task.hash)
                yield task

    generated = 0
    with open(path, "a", encoding="utf-8") as sink:
        for record in map_unordered(lambda task: _generate(client, cfg, task, counts), new_tasks(), cfg.concurrency):
            if record is not None:
                sink.write(json.dumps(record, ensure_ascii=False) + "\n")
                sink.flush()  # on disk as it arrives: a kill loses only the requests in flight
                done[record["hash"]] = record
                generated += 1
    return generated


# ---------------------------------------------------------------------------- filtering and writing


def _filters(cfg: Config) -> list[Filter]:
    from groundup.curate.filters.length import LengthFilter

    steps: list[Filter] = [LengthFilter(min_chars=cfg.min_chars, max_chars=cfg.max_chars)]
    if cfg.languages is not None:
        from groundup.curate.filters.language import LanguageFilter

        steps.append(LanguageFilter(languages=list(cfg.languages), threshold=cfg.language_threshold))
    files = [cfg.decontaminate] if isinstance(cfg.decontaminate, str) else list(cfg.decontaminate)
    if files:
        from groundup.curate.decontam import Decontaminate

        steps.append(Decontaminate(files=files, ngram=cfg.decontaminate_ngram))
    return steps


def _write_jsonl(path: Path, records: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def select(cfg: Config, tasks: list[Task], replies: dict[str, dict]) -> tuple[list[dict], list[dict], dict]:
    """Chat records, text records and the drops by reason, from the replies of ``tasks`` in their order."""
    dropped: dict[str, int] = {}
    candidates: list[tuple[Task, dict]] = []  # (task, record)
    docs: list[Document] = []
    seen: set[str] = set()
    for task in tasks:
        if task.hash not in replies or task.hash in seen:
            continue
        seen.add(task.hash)
        reply = replies[task.hash]["reply"]
        if task.kind in PAIRS:
            pair = parse_pair(reply, *PAIRS[task.kind])
            if pair is None:
                dropped["unparsable"] = dropped.get("unparsable", 0) + 1
                continue
            record = {"messages": [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]}
            text = pair[0] + "\n" + pair[1]
        else:
            text = reply.strip()
            record = {"text": text}
        record.update(kind=task.kind, topic=task.topic, n=task.n)
        candidates.append((task, record))
        docs.append(Document(text, f"{task.kind}/{task.topic}", task.n))
    chain = Chain(_filters(cfg), timed=False)
    drops: dict[int, str] = {}
    position = {id(d): i for i, d in enumerate(docs)}

    def on_drop(doc: Document, step: str, reason: str) -> None:
        drops[position[id(doc)]] = reason

    chain.process_batch(docs, on_drop)
    for reason in drops.values():
        dropped[reason] = dropped.get(reason, 0) + 1
    alive = [i for i in range(len(docs)) if i not in drops]
    for j, reason in duplicates([docs[i].text for i in alive], cfg.dedup).items():
        drops[alive[j]] = reason
        dropped[reason] = dropped.get(reason, 0) + 1
    chat, text_records = [], []
    for i, (_, record) in enumerate(candidates):
        if i in drops:
            continue
        (chat if "messages" in record else text_records).append(record)
    return chat, text_records, dict(sorted(dropped.items()))


def run(cfg: Config) -> Path:
    topics = read_topics(cfg.topics)
    if not topics:
        raise ValueError("synth: no seed topics: pass --topics (a list, or a file with one topic a line)")
    tasks = plan_tasks(cfg, topics)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "generations.jsonl"
    replies = read_generations(path)
    cached = sum(t.hash in replies for t in tasks)
    counts = RequestCounts(stage="synth")
    generated = generate(cfg, tasks, path, replies, counts)
    chat, text, dropped = select(cfg, tasks, replies)
    _write_jsonl(out / "chat.jsonl", chat)
    _write_jsonl(out / "text.jsonl", text)
    kept = {kind: sum(r["kind"] == kind for r in chat + text) for kind in cfg.kinds}
    stats = {
        "topics": len(topics), "requests_planned": len(tasks), "already_generated": cached,
        "generated": generated, **counts.as_dict(),
        "replies": sum(t.hash in replies for t in tasks), "dropped": dropped, "kept": kept,
        "chat_records": len(chat), "text_records": len(text),
    }
    write_json(out / "stats.json", stats)
    configlib.save(cfg, out / "config.yaml")
    write_manifest(out, stage="synth", config=configlib.to_dict(cfg))
    log.info("synth: %d replies (%d new, %d failed), %d chat and %d text records kept, dropped %s",
             stats["replies"], generated, sum(counts.failed.values()), len(chat), len(text), dropped)
    return out
