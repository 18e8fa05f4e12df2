"""The Common Crawl index: choose records from CDX shards, fetch them by byte range into local WARC files.

Common Crawl's URL index (``cc-index/collections/CC-MAIN-*/indexes/cdx-*.gz``) has one line per capture,
``urlkey timestamp {json}``, the JSON naming the WARC file (``filename``), the record's ``offset`` and
``length`` in it, and ``url``, ``mime``, ``mime-detected``, ``status``, ``languages`` (ISO 639-3, comma
separated, most likely first), ``digest``... ``groundup cc-fetch``:

1. reads CDX shards (local files, folders, glob patterns or http(s) URLs; plain or gzip): a line that is
   not ``urlkey timestamp {json}`` or whose JSON is broken is skipped and counted with its file and line;
2. keeps the lines that pass the filters: URL (glob and/or regular expression), MIME type (either
   ``mime`` or ``mime-detected``), language (any of ``languages``), HTTP status;
3. fetches each chosen record with ``Range: bytes=offset-(offset+length-1)`` from ``base_url + filename``
   on a bounded pool of threads, through the shared HTTP client's retries (:mod:`groundup.endpoint`:
   5xx, 429, timeouts, dropped connections); checks that the bytes are one whole gzip member holding one
   WARC record whose length is right (and whose URL is the CDX line's); appends it to
   ``warc/cc-NNNNN.warc.gz`` (a new file past ``max_file_bytes``).

A server that ignores the Range header answers 200 with the whole file: the record is cut out of the
body (only the first ``offset + length`` bytes are read, then the connection is closed) and counted as
``range_ignored`` with its place; a body too short to hold the range is counted as a failure.

Resumable: ``progress.jsonl`` gets one line per record written, after its bytes are flushed. A re-run
reads it, skips the records done and cuts each output file back to the end of its last recorded
record (and the progress file back to its last whole line), so a killed run leaves no partial record
and fetches nothing twice. A record that failed is counted in ``stats.json`` (by reason, with places)
and not recorded, so the next run tries it again: nothing is lost silently.

The output WARC files are what ``groundup curate --input OUT/warc`` reads.
"""

from __future__ import annotations

import fnmatch
import glob
import gzip
import io
import json
import logging
import os
import re
import tempfile
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from groundup.artifacts import write_json
from groundup.endpoint import EndpointError, RetryPolicy, map_unordered, request

log = logging.getLogger(__name__)

PROGRESS_FILE = "progress.jsonl"
WARC_DIR = "warc"


@dataclass(kw_only=True)
class Config:
    """Choose Common Crawl records from CDX index shards and fetch them by HTTP Range into local WARC files."""

    cdx: list[str] | str = field(default_factory=list)
    """CDX shards (`urlkey timestamp {json}` lines, plain or .gz): files, folders, glob patterns or http(s) URLs."""
    out: Path = Path("runs/cc")
    """Output directory: warc/cc-NNNNN.warc.gz, progress.jsonl (records done), stats.json."""
    base_url: str = "https://data.commoncrawl.org/"
    """Prefix of each line's `filename` (a URL, or a local folder for WARCs already on disk)."""
    url_glob: str | None = None
    """Keep URLs matching this glob (`*://*.example.org/*`; None: any)."""
    url_regex: str | None = None
    """Keep URLs in which this regular expression is found (None: any)."""
    mime: list[str] | None = field(default_factory=lambda: ["text/html"])
    """Keep records whose `mime` or `mime-detected` is one of these (None: any)."""
    languages: list[str] | None = None
    """Keep records with one of these languages (ISO 639-3: eng, deu...) in their `languages` field (None: any;
    a record without the field is then dropped)."""
    status: list[int] | None = field(default_factory=lambda: [200])
    """Keep records with one of these HTTP statuses (None: any)."""
    limit: int | None = None
    """Fetch at most this many records in this run (None: all chosen)."""
    concurrency: int = 8
    """Range requests in flight at once."""
    retries: int = 4
    """Retries of a request after a 5xx, a 429, a timeout or a refused or dropped connection."""
    backoff_seconds: float = 1.0
    """The first retry waits this long, each next one twice as long."""
    timeout_seconds: float = 60.0
    """A request without progress for this long is a timeout."""
    max_file_bytes: int = 1 << 30
    """A new output WARC is started when the current one would grow past this."""
    max_record_bytes: int = 50_000_000
    """Index lines with a longer record are skipped and counted."""
    check_url: bool = True
    """Check that a fetched record's WARC-Target-URI is the index line's URL (a wrong offset is caught)."""

    def __post_init__(self) -> None:
        for name in ("concurrency", "max_file_bytes", "max_record_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"cc-fetch: {name} must be a positive integer, got {value!r}")
        if self.url_regex is not None:
            try:
                re.compile(self.url_regex)
            except re.error as e:
                raise ValueError(f"cc-fetch: url_regex {self.url_regex!r} is not a regular expression: {e}") from None


# ---------------------------------------------------------------------------- counting


@dataclass
class Counts:
    """What happened, by reason, with the first places of each kind (file:line, or WARC file:offset)."""

    lines: int = 0
    bad_lines: dict[str, int] = field(default_factory=dict)
    filtered: dict[str, int] = field(default_factory=dict)
    chosen: int = 0
    already_done: int = 0
    duplicates: int = 0
    fetched: int = 0
    bytes: int = 0
    requests: int = 0
    retries: int = 0
    range_ignored: int = 0
    range_ignored_at: list[str] = field(default_factory=list)
    failed: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, table: dict[str, int], reason: str, where: str) -> None:
        with self.lock:
            table[reason] = table.get(reason, 0) + 1
            if len(self.examples) < 50:
                self.examples.append(f"{where}: {reason}")
        log.warning("cc-fetch %s: %s", where, reason)

    def as_dict(self) -> dict:
        return {"cdx_lines": self.lines, "bad_lines": dict(sorted(self.bad_lines.items())),
                "filtered": dict(sorted(self.filtered.items())), "chosen": self.chosen,
                "already_done": self.already_done, "duplicates": self.duplicates, "fetched": self.fetched,
                "bytes": self.bytes, "requests": self.requests, "retries": self.retries,
                "range_ignored": self.range_ignored, "range_ignored_examples": list(self.range_ignored_at),
                "failed": dict(sorted(self.failed.items())),
                "examples": list(self.examples)}


# ---------------------------------------------------------------------------- the index


@dataclass(frozen=True)
class IndexRecord:
    filename: str
    offset: int
    length: int
    url: str
    timestamp: str
    fields: dict
    where: str
    """The CDX file and line it came from."""

    @property
    def key(self) -> str:
        return f"{self.filename}:{self.offset}:{self.length}"


def cdx_sources(specs: list[str]) -> list[str]:
    """CDX shards from URLs, files, folders (their files, sorted) and glob patterns."""
    found: list[str] = []
    for spec in specs:
        if spec.startswith(("http://", "https://")):
            found.append(spec)
        elif glob.has_magic(spec):
            matches = sorted(glob.glob(spec))
            if not matches:
                raise FileNotFoundError(f"cc-fetch: no CDX file matches {spec!r}")
            found += matches
        elif os.path.isdir(spec):
            found += sorted(str(p) for p in Path(spec).iterdir() if p.is_file() and not p.name.startswith("."))
        elif os.path.isfile(spec):
            found.append(spec)
        else:
            raise FileNotFoundError(f"cc-fetch: CDX file not found: {spec}")
    return found


def _open_cdx(source: str, policy: RetryPolicy, timeout: float, counts: Counts):
    """A binary stream of one CDX shard; a URL is downloaded to a temporary file first (with retries)."""
    if source.startswith(("http://", "https://")):
        spool = tempfile.TemporaryFile()  # noqa: SIM115 (returned, closed by the caller)
        request("GET", source, timeout=timeout, policy=policy, into=spool, on_attempt=lambda n: _count_try(counts, n))
        spool.seek(0)
        raw = spool
    else:
        raw = open(source, "rb")  # noqa: SIM115
    head = raw.read(2)
    raw.seek(0)
    return gzip.GzipFile(fileobj=raw) if head == b"\x1f\x8b" else raw


def parse_cdx_line(line: bytes, where: str, max_record_bytes: int = 50_000_000) -> tuple[IndexRecord | None, str | None]:
    """An index line as a record, or None and why it is skipped."""
    parts = line.rstrip(b"\r\n").split(b" ", 2)
    if len(parts) < 3 or not parts[2].startswith(b"{"):
        return None, "not a CDX line (urlkey timestamp {json})"
    try:
        fields = json.loads(parts[2])
    except ValueError:
        return None, "broken JSON"
    if not isinstance(fields, dict):
        return None, "broken JSON"
    for name in ("filename", "offset", "length"):
        if name not in fields:
            return None, f"no {name}"
    try:
        offset, length = int(fields["offset"]), int(fields["length"])
    except (TypeError, ValueError):
        return None, "offset or length is not a number"
    if offset < 0 or length <= 0:
        return None, "offset or length out of range"
    if length > max_record_bytes:
        return None, "record over max_record_bytes"
    return IndexRecord(str(fields["filename"]), offset, length, str(fields.get("url", "")),
                       parts[1].decode("ascii", "replace"), fields, where), None


def read_cdx(source: str, counts: Counts, *, policy: RetryPolicy, timeout: float,
             max_record_bytes: int) -> Iterator[IndexRecord]:
    """The records of one CDX shard; bad lines (and a cut gzip stream) are counted with their place."""
    lineno = 0
    try:
        with _open_cdx(source, policy, timeout, counts) as f:
            for line in f:
                lineno += 1
                if not line.strip():
                    continue
                counts.lines += 1
                where = f"{source}:{lineno}"
                record, problem = parse_cdx_line(line, where, max_record_bytes)
                if record is None:
                    counts.note(counts.bad_lines, problem or "bad line", where)
                    continue
                yield record
    except (OSError, EOFError, zlib.error) as e:
        counts.note(counts.bad_lines, f"unreadable from here on ({type(e).__name__})", f"{source}:{lineno + 1}")
    except EndpointError as e:
        counts.note(counts.failed, f"CDX download failed ({e.reason})", source)


@dataclass(frozen=True)
class Filters:
    url_glob: str | None = None
    url_regex: str | None = None
    mime: frozenset[str] | None = None
    languages: frozenset[str] | None = None
    status: frozenset[int] | None = None

    @classmethod
    def of(cls, cfg: Config) -> Filters:
        return cls(cfg.url_glob, cfg.url_regex, None if cfg.mime is None else frozenset(m.lower() for m in cfg.mime),
                   None if cfg.languages is None else frozenset(cfg.languages),
                   None if cfg.status is None else frozenset(int(s) for s in cfg.status))

    def reason(self, record: IndexRecord) -> str | None:
        """Why the record is left out (``url``, ``mime``, ``language``, ``status``), or None to keep it."""
        url, fields = record.url, record.fields
        if self.url_glob is not None and not fnmatch.fnmatchcase(url, self.url_glob):
            return "url"
        if self.url_regex is not None and not re.search(self.url_regex, url):
            return "url"
        if self.mime is not None and not ({str(fields.get("mime", "")).lower(),
                                            str(fields.get("mime-detected", "")).lower()} & self.mime):
            return "mime"
        if self.languages is not None and not set(str(fields.get("languages", "")).split(",")) & self.languages:
            return "language"
        if self.status is not None:
            try:
                status = int(fields.get("status", -1))
            except (TypeError, ValueError):
                status = -1
            if status not in self.status:
                return "status"
        return None


# ---------------------------------------------------------------------------- one record


def check_record(data: bytes, expected_url: str | None = None) -> str | None:
    """Why ``data`` is not one whole gzip member holding one WARC record (of ``expected_url``), or None."""
    if data[:2] != b"\x1f\x8b":
        return "not a gzip member"
    member = zlib.decompressobj(31)
    try:
        raw = member.decompress(data)
    except zlib.error:
        return "corrupt gzip member"
    if not member.eof:
        return "truncated gzip member"
    if member.unused_data:
        return "bytes after the gzip member"
    if not raw.startswith(b"WARC/"):
        return "not a WARC record"
    header_end = raw.find(b"\r\n\r\n")
    if header_end < 0:
        return "WARC header without an end"
    length, target = None, None
    for line in raw[:header_end].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length" and value.strip().isdigit():
            length = int(value)
        elif name == b"warc-target-uri":
            target = value.strip().decode("utf-8", "replace")
    if length is None:
        return "WARC header without Content-Length"
    if len(raw) != header_end + 4 + length + 4 or not raw.endswith(b"\r\n\r\n"):
        return "WARC record length does not match its content"
    if expected_url and target is not None and target != expected_url:
        return "WARC-Target-URI is not the index line's URL"
    return None


def _count_try(counts: Counts, attempt: int) -> None:
    with counts.lock:
        counts.requests += 1
        counts.retries += attempt > 0


def _read_local(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def fetch_record(record: IndexRecord, cfg: Config, policy: RetryPolicy, counts: Counts
                 ) -> tuple[bytes | None, bool]:
    """The record's bytes (None after a counted failure) and whether the server ignored the Range header."""
    where = f"{record.filename}:{record.offset}"
    base = cfg.base_url
    if not base.startswith(("http://", "https://")):  # WARC files on disk: a seek, not a request
        try:
            data = _read_local(Path(base) / record.filename, record.offset, record.length)
        except OSError as e:
            counts.note(counts.failed, f"unreadable ({type(e).__name__})", where)
            return None, False
        ignored = False
    else:
        url = base.rstrip("/") + "/" + record.filename.lstrip("/")
        end = record.offset + record.length
        try:
            response = request("GET", url, headers={"Range": f"bytes={record.offset}-{end - 1}"},
                               timeout=cfg.timeout_seconds, policy=policy, max_bytes=end,
                               on_attempt=lambda n: _count_try(counts, n))
        except EndpointError as e:
            counts.note(counts.failed, e.reason, where)
            return None, False
        ignored = response.status == 200
        data = response.body[record.offset:end] if ignored else response.body
        if response.status not in (200, 206):
            counts.note(counts.failed, f"HTTP {response.status}", where)
            return None, False
    if len(data) != record.length:
        counts.note(counts.failed, "range ignored and the body is shorter than the range" if ignored
                    else "short body", where)
        return None, False
    problem = check_record(data, record.url if cfg.check_url and record.url else None)
    if problem is not None:
        counts.note(counts.failed, problem, where)
        return None, False
    if ignored:
        with counts.lock:
            if len(counts.range_ignored_at) < 50:
                counts.range_ignored_at.append(where)
        log.warning("cc-fetch %s: the server ignored the Range header (200 with the whole file): the record was "
                    "cut out of it", where)
    return data, ignored


# ---------------------------------------------------------------------------- output and resume


class Sink:
    """Appends records to ``warc/cc-NNNNN.warc.gz`` and a line per record to ``progress.jsonl``, in that order."""

    def __init__(self, out: Path, max_file_bytes: int) -> None:
        self.dir = out / WARC_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.progress_path = out / PROGRESS_FILE
        self.max_file_bytes = max_file_bytes
        self.done: set[str] = set()
        ends: dict[str, int] = {}
        for entry in self._recover_progress():
            self.done.add(entry["key"])
            ends[entry["file"]] = max(ends.get(entry["file"], 0), entry["offset"] + entry["length"])
        files = sorted(self.dir.glob("cc-*.warc.gz"))
        for path in files:  # cut what a killed run wrote after its last recorded record
            end = ends.get(path.name, 0)
            if path.stat().st_size > end:
                log.info("cc-fetch: cutting %s back to %d bytes (a record the last run did not finish)", path, end)
                with open(path, "r+b") as f:
                    f.truncate(end)
        self.index = int(files[-1].name[3:8]) if files else 0
        self.file = open(self._path(), "ab")  # noqa: SIM115 (closed by close())
        self.progress = open(self.progress_path, "a", encoding="utf-8")  # noqa: SIM115

    def _path(self) -> Path:
        return self.dir / f"cc-{self.index:05d}.warc.gz"

    def _recover_progress(self) -> list[dict]:
        if not self.progress_path.is_file():
            return []
        raw = self.progress_path.read_bytes()
        whole = raw[: raw.rfind(b"\n") + 1]
        if len(whole) != len(raw):  # a line cut by a kill: its record is not counted as done
            with open(self.progress_path, "r+b") as f:
                f.truncate(len(whole))
        entries = []
        for line in whole.splitlines():
            try:
                entry = json.loads(line)
                entries.append({"key": str(entry["key"]), "file": str(entry["file"]), "offset": int(entry["offset"]),
                                "length": int(entry["length"])})
            except (ValueError, KeyError, TypeError):
                log.warning("cc-fetch: %s: a line that does not parse is ignored", self.progress_path)
        return entries

    def write(self, record: IndexRecord, data: bytes, range_ignored: bool) -> None:
        offset = self.file.tell()
        if offset and offset + len(data) > self.max_file_bytes:
            self.file.close()
            self.index += 1
            self.file = open(self._path(), "ab")  # noqa: SIM115
            offset = self.file.tell()
        self.file.write(data)
        self.file.flush()
        os.fsync(self.file.fileno())  # the bytes are on disk before the line that says they are
        entry = {"key": record.key, "file": self._path().name, "offset": offset, "length": len(data),
                 "url": record.url, "timestamp": record.timestamp}
        if range_ignored:
            entry["range_ignored"] = True
        self.progress.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self.progress.flush()
        self.done.add(record.key)

    def close(self) -> None:
        self.file.close()
        self.progress.close()


def run(cfg: Config) -> Path:
    specs = [cfg.cdx] if isinstance(cfg.cdx, str) else list(cfg.cdx)
    if not specs:
        raise ValueError("cc-fetch: no CDX given: pass --cdx with index shards (files, folders or URLs)")
    sources = cdx_sources(specs)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    policy = RetryPolicy(retries=cfg.retries, backoff_seconds=cfg.backoff_seconds)
    filters = Filters.of(cfg)
    counts = Counts()
    sink = Sink(out, cfg.max_file_bytes)
    seen: set[str] = set()

    def chosen_records() -> Iterator[IndexRecord]:
        submitted = 0
        for source in sources:
            for record in read_cdx(source, counts, policy=policy, timeout=cfg.timeout_seconds,
                                   max_record_bytes=cfg.max_record_bytes):
                reason = filters.reason(record)
                if reason is not None:
                    counts.filtered[reason] = counts.filtered.get(reason, 0) + 1
                    continue
                counts.chosen += 1
                if record.key in sink.done:
                    counts.already_done += 1
                    continue
                if record.key in seen:
                    counts.duplicates += 1
                    continue
                if cfg.limit is not None and submitted >= cfg.limit:
                    continue
                seen.add(record.key)
                submitted += 1
                yield record

    try:
        for record, (data, ignored) in map_unordered(
                lambda record: (record, fetch_record(record, cfg, policy, counts)), chosen_records(), cfg.concurrency):
            if data is None:
                continue
            sink.write(record, data, ignored)
            counts.fetched += 1
            counts.bytes += len(data)
            counts.range_ignored += ignored
    finally:
        sink.close()
    stats = counts.as_dict()
    stats["files"] = sorted(p.name for p in (out / WARC_DIR).glob("cc-*.warc.gz"))
    stats["records_in_output"] = len(sink.done)
    write_json(out / "stats.json", stats)
    log.info("cc-fetch: %d records fetched (%d already done, %d range ignored), %d failed, %d bad index lines",
             counts.fetched, counts.already_done, counts.range_ignored, sum(counts.failed.values()),
             sum(counts.bad_lines.values()))
    return out


def build_cdx_line(url: str, timestamp: str, fields: dict) -> str:
    """One CDXJ line as Common Crawl writes them (the urlkey is a simplified SURT: host reversed, then the path)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = ",".join(reversed((parts.hostname or "").split(".")))
    key = f"{host}){parts.path or '/'}" + (f"?{parts.query}" if parts.query else "")
    return f"{key} {timestamp} {json.dumps({'url': url, **fields})}"


def index_warc(path: Path, filename: str | None = None) -> list[dict]:
    """The CDX fields of every record of a .warc.gz (one gzip member per record): url, mime, status,
    offset, length, filename. For tests and for indexing WARC files of your own."""
    data = Path(path).read_bytes()
    fields, position = [], 0
    while position < len(data):
        member = zlib.decompressobj(31)
        raw = member.decompress(data[position:])
        length = len(data) - position - len(member.unused_data)
        head, _, rest = raw.partition(b"\r\n\r\n")
        headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if b": " in line)
        entry = {"url": headers.get(b"WARC-Target-URI", b"").decode(), "offset": str(position),
                 "length": str(length), "filename": filename or Path(path).name,
                 "type": headers.get(b"WARC-Type", b"").decode()}
        if entry["type"] == "response":
            http = io.BytesIO(rest)
            status_line = http.readline().decode("latin-1").split()
            entry["status"] = status_line[1] if len(status_line) > 1 else ""
            for line in http:
                if not line.strip():
                    break
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-type":
                    entry["mime"] = value.split(";")[0].strip().lower()
        fields.append(entry)
        position += length
    return fields
