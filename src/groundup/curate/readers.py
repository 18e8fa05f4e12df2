"""Streaming readers: WARC and WET (fastwarc, or warcio), JSONL (plain, .gz, .zst), Parquet, text files.

Every document keeps its source file and offset: the WARC record's byte offset, the JSONL
line number (from 1), the Parquet row (from 0), 0 for a text file. Bad input is skipped and
counted in a :class:`~groundup.corpus.ReadStats` with its file and offset, never raised:

- a truncated gzip stream or WARC record: what was read before stays, the rest is counted once,
  at the offset of the gzip member that is cut;
- a WARC record whose length is wrong: its block digest fails (when the record has one) or
  the next header does not parse, so it is dropped and reading resumes at the next record;
- a whole record followed by garbage (a corrupt gzip member, stray bytes): the record is kept
  (it is checked on its own: its block ends in CRLF CRLF where its length says), the garbage is
  counted and reading resumes at the next record after it;
- bytes of a WARC/WET record that do not decode in its charset: replaced by U+FFFD and counted
  (``replaced_bytes``, by reason); invalid UTF-8 in a JSONL line or text file, malformed JSON, a record
  over ``max_document_bytes``, an empty file, a Parquet file without the text column: skipped and counted.

Each skipped record is counted once, under one reason.

A run raises a clear error only when no document at all could be read (see ``run``).
"""

from __future__ import annotations

import gzip
import io
import logging
import zlib
from collections.abc import Iterator
from pathlib import Path

from groundup.corpus import ReadStats, parse_json_line
from groundup.curate.extract import decode_bytes
from groundup.curate.text import Document

log = logging.getLogger(__name__)

FORMATS = ("warc", "wet", "jsonl", "parquet", "text")
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")
_CHUNK = 1 << 20


def detect_format(path: Path) -> str | None:
    """The input format from a file name, or None for files to leave alone."""
    name = path.name.lower()
    for ext in (".gz", ".zst", ".zstd"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    if name.endswith(".wet"):
        return "wet"
    if name.endswith((".warc", ".arc")):
        return "warc"
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    return None


def open_binary(path: Path):
    """A binary stream of a file, decompressing .gz and .zst/.zstd."""
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith((".zst", ".zstd")):
        try:
            import zstandard
        except ImportError as e:
            raise ImportError(f"{path}: reading .zst needs zstandard: pip install 'groundup[data]'") from e
        raw = open(path, "rb")  # noqa: SIM115 (closed with the reader)
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))
    return open(path, "rb")


# ---------------------------------------------------------------------------- JSONL


def read_jsonl(path: Path, stats: ReadStats, *, text_field: str = "text", url_field: str = "url",
               max_document_bytes: int = 5_000_000) -> Iterator[Document]:
    source = str(path)
    lineno = 0
    try:
        with open_binary(path) as f:
            while True:
                raw = f.readline(max_document_bytes + 1)
                if not raw:
                    break
                lineno += 1
                where = f"{source}:{lineno}"
                if len(raw) > max_document_bytes and not raw.endswith(b"\n"):
                    size = len(raw)
                    while raw and not raw.endswith(b"\n"):  # skip the rest of the line without holding it
                        raw = f.readline(_CHUNK)
                        size += len(raw)
                    stats.skip(f"record over max_document_bytes ({size:,} bytes)", where)
                    continue
                if not raw.strip():
                    continue
                parsed = parse_json_line(raw, text_field, stats, where)
                if parsed is None:
                    continue
                record, text = parsed
                url = record.get(url_field)
                stats.documents += 1
                stats.bytes += len(raw)
                yield Document(text, source, lineno, url if isinstance(url, str) else None)
    except (OSError, EOFError, zlib.error) as e:  # truncated or corrupt compressed stream
        stats.skip(f"unreadable from here on ({type(e).__name__}: {e})", f"{source}:{lineno + 1}")
    except Exception as e:  # zstandard raises its own ZstdError
        if type(e).__name__ != "ZstdError":
            raise
        stats.skip(f"unreadable from here on (ZstdError: {e})", f"{source}:{lineno + 1}")


# ---------------------------------------------------------------------------- Parquet


def read_parquet(path: Path, stats: ReadStats, *, text_field: str = "text", url_field: str = "url",
                 max_document_bytes: int = 5_000_000, batch_size: int = 1024) -> Iterator[Document]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError("reading Parquet needs pyarrow: pip install 'groundup[data]'") from e
    source = str(path)
    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # not a Parquet file, or a truncated one
        stats.skip(f"unreadable Parquet file ({type(e).__name__}: {e})", source)
        return
    names = parquet.schema_arrow.names
    if text_field not in names:
        stats.skip(f"no column {text_field!r} (columns: {', '.join(names)})", source)
        return
    columns = [text_field] + ([url_field] if url_field in names else [])
    row = 0
    try:
        for batch in parquet.iter_batches(columns=columns, batch_size=batch_size):
            texts = batch.column(0).to_pylist()
            urls = batch.column(1).to_pylist() if len(columns) > 1 else [None] * len(texts)
            for text, url in zip(texts, urls, strict=True):
                where = f"{source}:{row}"
                if not isinstance(text, str):
                    stats.skip("null or non-string text", where)
                elif len(text) > max_document_bytes:
                    stats.skip(f"record over max_document_bytes ({len(text):,} characters)", where)
                else:
                    stats.documents += 1
                    stats.bytes += len(text)
                    yield Document(text, source, row, url if isinstance(url, str) else None)
                row += 1
    except Exception as e:  # a corrupt row group: keep what was read
        stats.skip(f"unreadable from here on ({type(e).__name__}: {e})", f"{source}:{row}")


# ---------------------------------------------------------------------------- text files


def read_text_file(path: Path, stats: ReadStats, *, max_document_bytes: int = 5_000_000) -> Iterator[Document]:
    source = str(path)
    try:
        size = path.stat().st_size
        if size == 0:
            stats.skip("empty file", source)
            return
        if size > max_document_bytes and not path.name.lower().endswith((".gz", ".zst", ".zstd")):
            stats.skip(f"file over max_document_bytes ({size:,} bytes)", source)
            return
        with open_binary(path) as f:
            data = f.read(max_document_bytes + 1)
    except (OSError, EOFError, zlib.error) as e:
        stats.skip(f"unreadable ({type(e).__name__}: {e})", source)
        return
    if len(data) > max_document_bytes:
        stats.skip("file over max_document_bytes", source)
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        stats.skip(f"invalid UTF-8 at byte {e.start}", source)
        return
    if not text.strip():
        stats.skip("empty file", source)
        return
    stats.documents += 1
    stats.bytes += len(data)
    yield Document(text, source, 0)


# ---------------------------------------------------------------------------- WARC / WET

_HTML_TYPES = ("text/html", "application/xhtml+xml")


class _Record:
    """What a WARC backend hands over: enough to build a Document, or a reason to skip."""

    __slots__ = ("offset", "url", "date", "body", "charset", "html", "skip")

    def __init__(self, offset: int, url: str | None = None, date: str | None = None, body: bytes = b"",
                 charset: str | None = None, html: bool = False, skip: str | None = None):
        self.offset, self.url, self.date, self.body = offset, url, date, body
        self.charset, self.html, self.skip = charset, html, skip


_DIGEST_MISMATCH = "block digest mismatch (wrong length or corrupt record)"


def _header_skip(offset: int, url: str | None, declared: str | None, max_bytes: int) -> _Record | None:
    """The skipped record for a WARC record its headers rule out (no URL or length, or too long), else None."""
    if declared is None or url is None:
        return _Record(offset, skip="truncated record header")
    if int(declared) > max_bytes:
        return _Record(offset, url, skip=f"record over max_document_bytes ({int(declared):,} bytes)")
    return None


def _fastwarc_records(f, base: int, wet: bool, verify: bool, max_bytes: int) -> Iterator[_Record]:
    from fastwarc.warc import ArchiveIterator, WarcRecordType

    kinds = WarcRecordType.conversion if wet else WarcRecordType.response
    for rec in ArchiveIterator(f, record_types=kinds, parse_http=False):
        offset = base + rec.stream_pos
        headers = rec.headers
        declared = headers.get("Content-Length")
        url = headers.get("WARC-Target-URI")
        skip = _header_skip(offset, url, declared, max_bytes)
        if skip is None and verify and headers.get("WARC-Block-Digest") and not rec.verify_block_digest(consume=False):
            skip = _Record(offset, url, skip=_DIGEST_MISMATCH)
        if skip is not None:
            yield skip
            continue
        date = headers.get("WARC-Date")
        if wet:
            body = rec.reader.read()
            if len(body) < int(declared):
                yield _Record(offset, url, skip="truncated record")
                continue
            yield _Record(offset, url, date, body, "utf-8", html=False)
            continue
        try:
            rec.parse_http()
        except Exception:
            yield _Record(offset, url, skip="malformed HTTP headers")
            continue
        status = rec.http_headers.status_code if rec.http_headers is not None else None
        if status is not None and not 200 <= status < 300:
            yield _Record(offset, url, skip=f"HTTP status {status}")
            continue
        content_type = (rec.http_content_type or "").lower()
        if content_type and not content_type.startswith(_HTML_TYPES):
            yield _Record(offset, url, skip="not HTML")
            continue
        body = rec.reader.read()
        if len(body) < rec.content_length:
            yield _Record(offset, url, skip="truncated record")
            continue
        yield _Record(offset, url, date, body, rec.http_charset, html=True)


def _warcio_records(f, base: int, wet: bool, verify: bool, max_bytes: int) -> Iterator[_Record]:
    from warcio.archiveiterator import ArchiveIterator

    wanted = "conversion" if wet else "response"
    it = ArchiveIterator(f, check_digests=verify)
    for rec in it:
        if rec.rec_type != wanted:
            continue
        # get_record_offset() reads the record to its end, so the content is read first
        stream = rec.content_stream()
        parts = []
        while chunk := stream.read(_CHUNK):  # LimitReader.read() without a size returns nothing
            parts.append(chunk)
        body = b"".join(parts)
        offset = base + it.get_record_offset()
        url = rec.rec_headers.get_header("WARC-Target-URI")
        declared = rec.rec_headers.get_header("Content-Length")
        skip = _header_skip(offset, url, declared, max_bytes)
        if skip is None and verify and rec.digest_checker.passed is False:
            skip = _Record(offset, url, skip=_DIGEST_MISMATCH)
        if skip is None and getattr(rec.raw_stream, "limit", 0) > 0:  # the stream ended inside the record
            skip = _Record(offset, url, skip="truncated record")
        if skip is not None:
            yield skip
            continue
        date = rec.rec_headers.get_header("WARC-Date")
        charset = "utf-8" if wet else None
        if not wet and rec.http_headers is not None:
            status = rec.http_headers.get_statuscode()
            if status and not status.startswith("2"):
                yield _Record(offset, url, skip=f"HTTP status {status}")
                continue
            content_type = (rec.http_headers.get_header("Content-Type") or "").lower()
            if content_type and not content_type.startswith(_HTML_TYPES):
                yield _Record(offset, url, skip="not HTML")
                continue
            if "charset=" in content_type:
                charset = content_type.split("charset=", 1)[1].split(";")[0].strip() or None
        yield _Record(offset, url, date, body, charset, html=not wet)


def _gzip_break(path: Path, start: int) -> int | None:
    """The offset of the first gzip member from ``start`` on that is corrupt or cut short, or None if all end whole."""
    with open(path, "rb") as f:
        f.seek(start)
        member, member_start, position, fed = zlib.decompressobj(31), start, start, False
        try:
            while chunk := f.read(_CHUNK):
                while chunk:
                    member.decompress(chunk, 1 << 16)
                    fed = True
                    rest = member.unused_data if member.eof else member.unconsumed_tail
                    position += len(chunk) - len(rest)
                    if member.eof:
                        member, member_start, fed = zlib.decompressobj(31), position, False
                    chunk = rest
        except zlib.error:
            return member_start
    return member_start if fed else None


def _record_end(path: Path, offset: int, gzipped: bool, max_bytes: int) -> int | None:
    """Where the record at ``offset`` ends if it is whole on its own (its block is followed by CRLF CRLF
    where its Content-Length says, and in a .gz file its gzip member ends there too), else None."""
    with open(path, "rb") as f:
        f.seek(offset)
        if gzipped:
            member = zlib.decompressobj(31)
            data = bytearray()
            try:
                while not member.eof and len(data) <= max_bytes + (1 << 16) and (chunk := f.read(1 << 16)):
                    data += member.decompress(chunk)
            except zlib.error:
                return None
            if not member.eof:
                return None
            consumed = f.tell() - len(member.unused_data) - offset
        else:
            data = bytearray(f.read(min(max_bytes, 1 << 16)))
    header_end = data.find(b"\r\n\r\n")
    if header_end < 0:
        return None
    length = None
    for line in bytes(data[:header_end]).split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            length = int(value)
    if length is None or length > max_bytes:
        return None
    block_end = header_end + 4 + length
    if gzipped:
        return offset + consumed if bytes(data[block_end:]) == b"\r\n\r\n" else None
    with open(path, "rb") as f:
        f.seek(offset + block_end)
        return offset + block_end + 4 if f.read(4) == b"\r\n\r\n" else None


def _next_record_start(path: Path, after: int, gzipped: bool) -> int | None:
    """Where the next record may start after a broken one: the next gzip member, or the next ``WARC/`` line."""
    # a false start (the marker inside a record's content) fails to parse and is passed over uncounted
    marker = b"\x1f\x8b\x08" if gzipped else b"WARC/1."
    with open(path, "rb") as f:
        f.seek(after)
        carry = b""
        position = after
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                return None
            data = carry + chunk
            i = data.find(marker)
            if i >= 0:
                start = position - len(carry) + i
                return start
            carry = data[-(len(marker) - 1):]
            position += len(chunk)


def _record_source(backend: str):
    if backend == "fastwarc":
        try:
            import fastwarc  # noqa: F401
            return _fastwarc_records
        except ImportError:
            backend = "warcio"
    if backend == "warcio":
        try:
            import warcio  # noqa: F401
        except ImportError as e:
            raise ImportError("reading WARC needs fastwarc or warcio: pip install 'groundup[data]'") from e
        return _warcio_records
    raise ValueError(f"unknown WARC backend {backend!r} (fastwarc or warcio)")


_QUIET = ("not HTML", "HTTP status")  # expected in a crawl: counted without a warning


def read_warc(path: Path, stats: ReadStats, *, wet: bool = False, backend: str = "fastwarc",
              verify_digests: bool = True, max_document_bytes: int = 5_000_000) -> Iterator[Document]:
    """Response records with HTML (WARC) or conversion records with text (WET), resyncing after a broken record."""
    records = _record_source(backend)
    source = str(path)
    if path.stat().st_size == 0:
        stats.skip("empty file", source)
        return
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    start: int | None = 0
    while start is not None:
        pending: _Record | None = None  # a record is handed out once the next header parsed (or the file ended)
        last = start
        try:
            with open(path, "rb") as f:
                f.seek(start)
                base = start if records is _warcio_records else 0  # fastwarc reports positions in the file itself
                for rec in records(f, base, wet, verify_digests, max_document_bytes):
                    if pending is not None:
                        yield from _emit(pending, source, stats)
                    pending, last = rec, rec.offset
        except Exception as e:  # a header that does not parse, a broken gzip member
            start = yield from _after_break(path, source, stats, pending, last, gzipped, e, max_document_bytes,
                                            resyncing=start > 0)
            continue
        if pending is not None:
            yield from _emit(pending, source, stats)
        # both parsers stop quietly at a cut gzip member: check that the stream ends whole
        cut = _gzip_break(path, last) if gzipped else None
        already_counted = cut == last and pending is not None and pending.skip is not None
        if cut is not None and not already_counted:
            stats.skip("truncated gzip stream (the record here and any after it are lost)", f"{source}:{cut}")
        return


def _after_break(path: Path, source: str, stats: ReadStats, pending: _Record | None, last: int, gzipped: bool,
                 error: Exception, max_bytes: int, resyncing: bool):
    """Count what broke once, hand out the record before it if that one is whole; return where to resume.

    A broken stretch is counted once: when reading resumed inside it (a false start) and failed again
    before any record, that failure is the same stretch and is not counted again."""
    kind = type(error).__name__
    log.debug("%s:%d: %s: %s", source, last, kind, error)
    if pending is None:
        if not resyncing:
            stats.skip(f"unreadable record ({kind})", f"{source}:{last}")
        return _next_record_start(path, last + 1, gzipped)
    end = _record_end(path, pending.offset, gzipped, max_bytes)
    if end is not None:  # the record is whole: what follows it is broken, not the record
        yield from _emit(pending, source, stats)
        stats.skip(f"unreadable data after a record ({kind})", f"{source}:{end}")
        return _next_record_start(path, end + 1, gzipped)
    if pending.skip is not None and not pending.skip.startswith(_QUIET):
        yield from _emit(pending, source, stats)  # already a reason to skip it (its digest failed): counted once
    else:
        stats.skip("record length does not match its content (the next header is broken)",
                   f"{source}:{pending.offset}")
    return _next_record_start(path, pending.offset + 1, gzipped)


def _emit(rec: _Record, source: str, stats: ReadStats) -> Iterator[Document]:
    where = f"{source}:{rec.offset}"
    if rec.skip is not None:
        if rec.skip.startswith(_QUIET):
            stats.skipped[rec.skip] = stats.skipped.get(rec.skip, 0) + 1
        else:
            stats.skip(rec.skip, where)
        return
    text, replaced, codec = decode_bytes(rec.body, rec.charset)
    if replaced:
        stats.replace(f"undecodable bytes ({codec})", where, replaced)
    stats.documents += 1
    stats.bytes += len(rec.body)
    doc = Document(text, source, rec.offset, rec.url, html=rec.html)
    if rec.date:
        doc.meta["date"] = rec.date
    yield doc


# ---------------------------------------------------------------------------- dispatch


def read_file(path: Path, stats: ReadStats, *, fmt: str | None = None, text_field: str = "text",
              url_field: str = "url", warc_backend: str = "fastwarc", verify_digests: bool = True,
              max_document_bytes: int = 5_000_000) -> Iterator[Document]:
    """Documents of one input file; nothing raised for bad content (it is skipped and counted)."""
    fmt = fmt or detect_format(path)
    if fmt is None:
        stats.skip("unknown format", str(path))
        return
    try:
        if path.stat().st_size == 0:
            stats.skip("empty file", str(path))
            return
    except OSError as e:
        stats.skip(f"unreadable ({type(e).__name__})", str(path))
        return
    if fmt in ("warc", "wet"):
        yield from read_warc(path, stats, wet=fmt == "wet", backend=warc_backend, verify_digests=verify_digests,
                             max_document_bytes=max_document_bytes)
    elif fmt == "jsonl":
        yield from read_jsonl(path, stats, text_field=text_field, url_field=url_field,
                              max_document_bytes=max_document_bytes)
    elif fmt == "parquet":
        yield from read_parquet(path, stats, text_field=text_field, url_field=url_field,
                                max_document_bytes=max_document_bytes)
    elif fmt == "text":
        yield from read_text_file(path, stats, max_document_bytes=max_document_bytes)
    else:
        raise ValueError(f"unknown input format {fmt!r} (choose from {', '.join(FORMATS)})")


def list_inputs(inputs: list[str], fmt: str | None = None) -> list[Path]:
    """Input files, sorted, from files, folders (searched recursively) and glob patterns."""
    import glob

    files: set[Path] = set()
    for spec in inputs:
        matches = [Path(p) for p in sorted(glob.glob(spec, recursive=True))] if glob.has_magic(spec) else [Path(spec)]
        if not matches:
            raise FileNotFoundError(f"no input matches {spec!r}")
        for path in matches:
            if path.is_dir():
                files.update(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")
                             and (fmt is not None or detect_format(p) is not None))
            elif path.is_file():
                files.add(path)
            else:
                raise FileNotFoundError(f"input not found: {path}")
    return sorted(files)
