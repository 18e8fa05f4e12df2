"""Readers: every format with sources and offsets; bad input skipped and counted with file and offset."""

from __future__ import annotations

import gzip
import io
import json

import pytest
from curate_helpers import english_text, html_page, write_warc

from groundup.corpus import ReadStats
from groundup.curate.readers import list_inputs, read_file

PAGES = [(f"http://site{i}.example/page", html_page(f"Page {i}", english_text(i))) for i in range(4)]


def read(path, **kw):
    stats = ReadStats()
    return list(read_file(path, stats, **kw)), stats


@pytest.mark.parametrize("backend", ["fastwarc", "warcio"])
@pytest.mark.parametrize("compressed", [True, False])
def test_warc_records_with_offsets(tmp_path, backend, compressed):
    path = write_warc(tmp_path / ("a.warc.gz" if compressed else "a.warc"), PAGES, gzip=compressed)
    docs, stats = read(path, warc_backend=backend)
    assert [d.url for d in docs] == [url for url, _ in PAGES]
    assert all(d.html and "<main>" in d.text and d.source == str(path) for d in docs)
    assert docs[0].offset == 0 and docs[1].offset > 0 and stats.documents == 4 and not stats.skipped
    raw = path.read_bytes()
    if not compressed:  # each offset points at the record's "WARC/1." line
        assert all(raw[d.offset:d.offset + 7] == b"WARC/1." for d in docs)
    else:
        assert all(raw[d.offset:d.offset + 2] == b"\x1f\x8b" for d in docs)


def test_wet_conversion_records(tmp_path):
    import io

    from warcio.warcwriter import WARCWriter

    path = tmp_path / "a.warc.wet.gz"
    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        for i in range(3):
            rec = writer.create_warc_record(f"http://w{i}.example/", "conversion",
                                            payload=io.BytesIO(english_text(i).encode()),
                                            warc_content_type="text/plain")
            writer.write_record(rec)
    docs, stats = read(path)
    assert len(docs) == 3 and not docs[0].html and docs[2].text == english_text(2)


@pytest.mark.parametrize("backend", ["fastwarc", "warcio"])
def test_truncated_gzip_warc_keeps_what_was_read(tmp_path, backend):
    path = write_warc(tmp_path / "a.warc.gz", PAGES)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 3 // 4])
    docs, stats = read(path, warc_backend=backend)
    assert [d.url for d in docs] == [url for url, _ in PAGES[:len(docs)]] and 2 <= len(docs) <= 3
    assert sum(stats.skipped.values()) >= 1 and any(str(path) in e for e in stats.examples)


@pytest.mark.parametrize("compressed", [True, False])
@pytest.mark.parametrize("verify", [True, False])
def test_warc_record_with_wrong_length_is_skipped(tmp_path, compressed, verify):
    plain = write_warc(tmp_path / "a.warc", PAGES, gzip=False).read_bytes()
    records = [b"WARC/1." + r for r in plain.split(b"WARC/1.")[1:]]
    bad = records[1]
    i = bad.index(b"Content-Length: ")
    j = bad.index(b"\r\n", i)
    records[1] = bad[:i] + b"Content-Length: " + str(int(bad[i + 16:j]) + 40).encode() + bad[j:]
    path = tmp_path / ("bad.warc.gz" if compressed else "bad.warc")
    path.write_bytes(b"".join(gzip.compress(r) for r in records) if compressed else b"".join(records))
    docs, stats = read(path, verify_digests=verify)
    assert [d.url for d in docs] == [PAGES[0][0], PAGES[2][0], PAGES[3][0]]
    assert sum(stats.skipped.values()) >= 1
    assert any(e.startswith(f"{path}:") for e in stats.examples)


def test_jsonl_formats_and_bad_lines(tmp_path):
    import zstandard

    lines = [json.dumps({"text": "first doc", "url": "http://a.example/"}).encode(), b"not json",
             b'{"text": "bad \xff utf8"}', json.dumps({"other": 1}).encode(), b"",
             json.dumps({"text": "last doc"}).encode()]
    body = b"\n".join(lines) + b"\n"
    for name, data in (("a.jsonl", body), ("b.jsonl.gz", gzip.compress(body)),
                       ("c.jsonl.zst", zstandard.ZstdCompressor().compress(body))):
        (tmp_path / name).write_bytes(data)
        docs, stats = read(tmp_path / name)
        assert [(d.text, d.offset, d.url) for d in docs] == [("first doc", 1, "http://a.example/"),
                                                            ("last doc", 6, None)]
        assert stats.skipped == {"malformed JSON (Expecting value)": 1, "invalid UTF-8": 1,
                                 "no string field 'text'": 1}
        assert f"{tmp_path / name}:2: malformed JSON (Expecting value)" in stats.examples


def test_truncated_gzip_jsonl(tmp_path):
    body = b"".join(json.dumps({"text": f"doc {i} " * 20}).encode() + b"\n" for i in range(500))
    packed = gzip.compress(body)
    path = tmp_path / "t.jsonl.gz"
    path.write_bytes(packed[: len(packed) // 2])
    docs, stats = read(path)
    assert 0 < len(docs) < 500 and docs[-1].offset == len(docs)
    assert len(stats.examples) == 1 and stats.examples[0].startswith(f"{path}:{len(docs) + 1}: unreadable")


def test_huge_single_line_document_is_skipped(tmp_path):
    path = tmp_path / "big.jsonl"
    with open(path, "wb") as f:
        f.write(b'{"text": "small one"}\n')
        f.write(b'{"text": "' + b"x" * (50 << 20) + b'"}\n')
        f.write(b'{"text": "small two"}\n')
    docs, stats = read(path, max_document_bytes=1 << 20)
    assert [(d.text, d.offset) for d in docs] == [("small one", 1), ("small two", 3)]
    assert list(stats.skipped) == ["record over max_document_bytes (52,428,813 bytes)"]
    assert stats.examples[0].startswith(f"{path}:2:")


def test_parquet_rows_and_missing_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a", None, "c"], "url": ["u1", "u2", None]}), tmp_path / "ok.parquet")
    docs, stats = read(tmp_path / "ok.parquet")
    assert [(d.text, d.offset, d.url) for d in docs] == [("a", 0, "u1"), ("c", 2, None)]
    assert stats.skipped == {"null or non-string text": 1}
    pq.write_table(pa.table({"content": ["a"]}), tmp_path / "nocol.parquet")
    docs, stats = read(tmp_path / "nocol.parquet")
    assert docs == [] and stats.examples == [f"{tmp_path / 'nocol.parquet'}: no column 'text' (columns: content)"]


def test_text_folder_empty_and_invalid_files(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("hello there")
    (tmp_path / "d" / "empty.txt").write_bytes(b"")
    (tmp_path / "d" / "bad.txt").write_bytes(b"caf\xe9")
    (tmp_path / "d" / "notes.bin").write_bytes(b"ignored")
    files = list_inputs([str(tmp_path / "d")])
    assert [f.name for f in files] == ["a.txt", "bad.txt", "empty.txt"]
    stats = ReadStats()
    docs = [d for f in files for d in read_file(f, stats)]
    assert [d.text for d in docs] == ["hello there"]
    assert stats.skipped == {"empty file": 1, "invalid UTF-8 at byte 3": 1}
    warc_empty = tmp_path / "e.warc.gz"
    warc_empty.write_bytes(b"")
    assert read(warc_empty)[1].skipped == {"empty file": 1}


def _record_bytes(path):
    """Each record of a WARC written by write_warc: its gzip member (.gz) or its bytes from ``WARC/1.``."""
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        import zlib

        members, rest = [], data
        while rest:
            d = zlib.decompressobj(31)
            d.decompress(rest)
            members.append(rest[: len(rest) - len(d.unused_data)])
            rest = d.unused_data
        return members
    return [b"WARC/1." + r for r in data.split(b"WARC/1.")[1:]]


GARBAGE = {"random": bytes(range(256)) * 3, "gzip member": b"\x1f\x8b\x08\x00" + bytes(range(7, 250)) * 2}


@pytest.mark.parametrize("backend", ["fastwarc", "warcio"])
@pytest.mark.parametrize("compressed", [True, False])
@pytest.mark.parametrize("garbage", sorted(GARBAGE))
def test_whole_record_followed_by_garbage_is_kept(tmp_path, backend, compressed, garbage):
    """A valid record is never lost because of what follows it (warcio reads such a file to the garbage)."""
    if not compressed and garbage == "gzip member":
        pytest.skip("a gzip member inside a plain WARC is the 'random' case")
    path = write_warc(tmp_path / ("a.warc.gz" if compressed else "a.warc"), PAGES, gzip=compressed)
    size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(GARBAGE[garbage])
    docs, stats = read(path, warc_backend=backend)
    assert [d.url for d in docs] == [url for url, _ in PAGES]
    assert sum(stats.skipped.values()) == 1 and stats.examples[0].startswith(f"{path}:{size}: unreadable data after")


@pytest.mark.parametrize("backend", ["fastwarc", "warcio"])
@pytest.mark.parametrize("compressed", [True, False])
def test_garbage_between_records_is_counted_once_and_both_sides_kept(tmp_path, backend, compressed):
    path = write_warc(tmp_path / ("a.warc.gz" if compressed else "a.warc"), PAGES, gzip=compressed)
    records = _record_bytes(path)
    junk = GARBAGE["gzip member" if compressed else "random"]
    path.write_bytes(b"".join(records[:2]) + junk + b"".join(records[2:]))
    docs, stats = read(path, warc_backend=backend)
    assert [d.url for d in docs] == [url for url, _ in PAGES]
    assert sum(stats.skipped.values()) == 1
    assert stats.examples[0].startswith(f"{path}:{len(records[0]) + len(records[1])}: unreadable")


@pytest.mark.parametrize("backend", ["fastwarc", "warcio"])
@pytest.mark.parametrize("verify", [True, False])
def test_corrupt_tail_record_is_counted_once(tmp_path, backend, verify):
    path = write_warc(tmp_path / "a.warc.gz", PAGES)
    records = _record_bytes(path)
    path.write_bytes(b"".join(records[:-1]) + records[-1][: len(records[-1]) // 2])
    docs, stats = read(path, warc_backend=backend, verify_digests=verify)
    assert [d.url for d in docs] == [url for url, _ in PAGES[:-1]]
    assert sum(stats.skipped.values()) == 1, stats.skipped
    assert stats.examples[0].startswith(f"{path}:{sum(len(r) for r in records[:-1])}: ")


@pytest.mark.parametrize("backend", ["fastwarc", "warcio"])
@pytest.mark.parametrize("declared", [True, False])
def test_invalid_utf8_is_replaced_and_counted(tmp_path, backend, declared):
    html = "<html><head><meta charset='utf-8'></head><body><p>caf\udce9 au lait, na\u00efve</p></body></html>"
    content_type = "text/html; charset=utf-8" if declared else "text/html"
    path = tmp_path / "a.warc.gz"
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter

    with open(path, "wb") as f:
        writer = WARCWriter(f, gzip=True)
        http = StatusAndHeaders("200 OK", [("Content-Type", content_type)], protocol="HTTP/1.1")
        body = html.encode("utf-8", errors="surrogateescape")  # the lone \xe9 byte of Latin-1 in a UTF-8 page
        writer.write_record(writer.create_warc_record("http://a.example/", "response", payload=io.BytesIO(body),
                                                      http_headers=http))
    docs, stats = read(path, warc_backend=backend)
    assert len(docs) == 1 and "caf\ufffd au lait, na\u00efve" in docs[0].text
    assert stats.replaced_bytes == {"undecodable bytes (utf-8)": 1} and not stats.skipped
    assert stats.as_dict()["replaced_bytes"] == {"undecodable bytes (utf-8)": 1}
    from groundup.curate.run import merge_read_stats

    older = {"documents": 1, "bytes": 5, "skipped": {}, "skip_examples": []}  # a marker written before the count
    merged = merge_read_stats([{"read": stats.as_dict()}, {"read": stats.as_dict()}, {"read": older}])
    assert merged["replaced_bytes"] == {"undecodable bytes (utf-8)": 2} and merged["documents"] == 3
