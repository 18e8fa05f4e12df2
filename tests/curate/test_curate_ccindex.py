"""cc-fetch against a loopback HTTP server serving a WARC and a CDX index built from it."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from curate_helpers import english_text, html_page, write_warc

from groundup import cli
from groundup.corpus import ReadStats
from groundup.curate import ccindex
from groundup.curate.readers import read_warc

LANGS = ["eng", "deu,eng", "fra"]


class WarcServer:
    """Serves files from ``root`` with HTTP Range (206), or ignoring it (200 + the whole file) when
    ``ignore_range``; ``fail_first``: a 503 on the first request for each range; ``delay`` per request."""

    def __init__(self, root: Path, *, ignore_range: bool = False, fail_first: bool = False, delay: float = 0.0):
        self.ranges: list[str | None] = []
        self.statuses: list[int] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802 (http.server's name)
                path = root / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404, "no such file")
                    return
                wanted = self.headers.get("Range")
                with server.lock:
                    first = wanted not in server.ranges
                    server.ranges.append(wanted)
                if delay:
                    time.sleep(delay)
                data = path.read_bytes()
                if fail_first and first and wanted:
                    self.send_error(503, "try again")
                    server.statuses.append(503)
                    return
                status = 200
                if wanted and not ignore_range:
                    start, end = (int(x) for x in wanted.removeprefix("bytes=").split("-"))
                    data, status = data[start:end + 1], 206
                server.statuses.append(status)
                try:
                    self.send_response(status)
                    if status == 206:
                        self.send_header("Content-Range", f"bytes {start}-{end}/{path.stat().st_size}")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client read what it needed
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def crawl(tmp_path):
    """A WARC of 30 pages under crawl-data/, and its CDX (gzip) with languages and one broken line."""
    root = tmp_path / "site"
    (root / "crawl-data").mkdir(parents=True)
    pages = [(f"http://{'news' if i % 3 else 'blog'}.example.org/p/{i}", html_page(f"Page {i}", english_text(i, 6)))
             for i in range(30)]
    warc = write_warc(root / "crawl-data" / "a.warc.gz", pages)
    lines = []
    for i, entry in enumerate(ccindex.index_warc(warc, "crawl-data/a.warc.gz")):
        entry.pop("type")
        entry["languages"] = LANGS[i % 3]
        if i == 29:
            entry["mime"], entry["status"] = "application/pdf", "200"
        if i == 28:
            entry["status"] = "404"
        lines.append(ccindex.build_cdx_line(entry["url"], f"2024030112{i:04d}", entry))
    lines.insert(5, 'org,example)/broken 20240301 {"url": "http://x", "offset": ')  # broken JSON
    lines.insert(9, "no json here at all")
    with gzip.open(root / "cdx-00000.gz", "wt") as f:
        f.write("\n".join(lines) + "\n")
    return root, warc, pages


def records_of(out: Path) -> dict[str, bytes]:
    """Each progress entry's bytes in the output WARC, by key."""
    found = {}
    for line in (out / "progress.jsonl").read_text().splitlines():
        entry = json.loads(line)
        with open(out / "warc" / entry["file"], "rb") as f:
            f.seek(entry["offset"])
            assert entry["key"] not in found, "a record written twice"
            found[entry["key"]] = f.read(entry["length"])
    return found


def source_slices(warc: Path) -> dict[str, bytes]:
    data = warc.read_bytes()
    return {f"crawl-data/a.warc.gz:{e['offset']}:{e['length']}": data[int(e["offset"]):int(e["offset"]) + int(e["length"])]
            for e in ccindex.index_warc(warc)}


def test_fetched_records_are_byte_identical_and_bad_lines_counted(crawl, tmp_path):
    root, warc, pages = crawl
    server = WarcServer(root, fail_first=True)
    try:
        out = ccindex.run(ccindex.Config(cdx=[server.url + "cdx-00000.gz"], base_url=server.url, out=tmp_path / "cc",
                                         concurrency=4, backoff_seconds=0.01, max_file_bytes=20_000))
    finally:
        server.close()
    got, want = records_of(out), source_slices(warc)
    assert len(got) == 28  # the PDF and the 404 filtered out
    assert all(got[k] == want[k] for k in got)  # byte-identical to the source WARC
    stats = json.loads((out / "stats.json").read_text())
    assert stats["bad_lines"] == {"broken JSON": 1, "not a CDX line (urlkey timestamp {json})": 1}
    assert any(e.endswith("cdx-00000.gz:6: broken JSON") for e in stats["examples"])
    assert any(":10: not a CDX line" in e for e in stats["examples"])
    assert stats["filtered"] == {"mime": 1, "status": 1} and stats["fetched"] == 28 and stats["failed"] == {}
    assert stats["retries"] == 28 and stats["range_ignored"] == 0  # every range was answered 503 once
    assert len(stats["files"]) > 1  # rolled by size
    # the output is a WARC the curate reader reads whole
    read = ReadStats()
    docs = [d for f in sorted((out / "warc").glob("*.warc.gz")) for d in read_warc(f, read)]
    assert sorted(d.url for d in docs) == sorted(u for u, _ in pages[:28]) and not read.skipped


def test_filters_url_language_mime_status(crawl, tmp_path):
    root, warc, _ = crawl
    cdx = str(root / "cdx-00000.gz")
    out = ccindex.run(ccindex.Config(cdx=cdx, base_url=str(root), out=tmp_path / "a", url_glob="http://blog.*",
                                     languages=["eng"]))
    urls = {json.loads(x)["url"] for x in (out / "progress.jsonl").read_text().splitlines()}
    # blog pages are i % 3 == 0, whose languages are "eng"; the filters apply in order (url first)
    assert urls == {f"http://blog.example.org/p/{i}" for i in range(0, 28, 3)}
    stats = json.loads((out / "stats.json").read_text())
    assert stats["filtered"] == {"url": 20} and stats["chosen"] == len(urls) == 10
    out = ccindex.run(ccindex.Config(cdx=cdx, base_url=str(root), out=tmp_path / "b", url_regex=r"/p/2\d$",
                                     mime=None, status=None, languages=["deu"]))
    urls = {json.loads(x)["url"] for x in (out / "progress.jsonl").read_text().splitlines()}
    assert urls == {f"http://news.example.org/p/{i}" for i in (22, 25, 28)}  # 28 is the 404, kept by status=None


def test_a_server_ignoring_range_gives_the_same_bytes_counted(crawl, tmp_path):
    root, warc, _ = crawl
    server = WarcServer(root, ignore_range=True)
    try:
        out = ccindex.run(ccindex.Config(cdx=str(root / "cdx-00000.gz"), base_url=server.url, out=tmp_path / "cc",
                                         limit=5, concurrency=2))
    finally:
        server.close()
    got, want = records_of(out), source_slices(warc)
    assert len(got) == 5 and all(got[k] == want[k] for k in got)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["range_ignored"] == 5 and len(stats["range_ignored_examples"]) == 5
    assert all(e.startswith("crawl-data/a.warc.gz:") for e in stats["range_ignored_examples"])
    assert all(json.loads(x).get("range_ignored") for x in (out / "progress.jsonl").read_text().splitlines())


def test_a_wrong_offset_is_caught_and_counted_not_written(crawl, tmp_path):
    root, warc, _ = crawl
    entry = ccindex.index_warc(warc, "crawl-data/a.warc.gz")[3]
    good = ccindex.build_cdx_line(entry["url"], "20240301", {**entry, "mime": "text/html", "status": "200"})
    shifted = good.replace(f'"offset": "{entry["offset"]}"', f'"offset": "{int(entry["offset"]) + 1}"')
    other = ccindex.index_warc(warc, "crawl-data/a.warc.gz")[4]
    wrong_url = ccindex.build_cdx_line(entry["url"], "20240301", {**other, "url": entry["url"], "status": "200"})
    (tmp_path / "idx.cdx").write_text(shifted + "\n" + wrong_url + "\n" + good + "\n")
    out = ccindex.run(ccindex.Config(cdx=str(tmp_path / "idx.cdx"), base_url=str(root), out=tmp_path / "cc"))
    stats = json.loads((out / "stats.json").read_text())
    assert stats["fetched"] == 1
    assert stats["failed"] == {"WARC-Target-URI is not the index line's URL": 1, "not a gzip member": 1}
    # the failures are not recorded as done: a re-run tries them again, and fetches nothing twice
    ccindex.run(ccindex.Config(cdx=str(tmp_path / "idx.cdx"), base_url=str(root), out=out))
    stats = json.loads((out / "stats.json").read_text())
    assert stats["already_done"] == 1 and sum(stats["failed"].values()) == 2 and len(records_of(out)) == 1


def test_resume_cuts_a_partial_record_and_fetches_the_rest_once(crawl, tmp_path):
    root, warc, _ = crawl
    cdx = str(root / "cdx-00000.gz")
    out = ccindex.run(ccindex.Config(cdx=cdx, base_url=str(root), out=tmp_path / "cc", limit=10))
    assert len(records_of(out)) == 10
    # what a kill mid-write leaves: half a record after the last recorded one, half a progress line
    part = next(iter(source_slices(warc).values()))
    last = sorted((out / "warc").glob("*.warc.gz"))[-1]
    with open(last, "ab") as f:
        f.write(part[: len(part) // 2])
    with open(out / "progress.jsonl", "a") as f:
        f.write('{"key": "crawl-data/a.warc.gz:9')
    ccindex.run(ccindex.Config(cdx=cdx, base_url=str(root), out=out))
    got, want = records_of(out), source_slices(warc)
    assert len(got) == 28 and all(got[k] == want[k] for k in got)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["already_done"] == 10 and stats["fetched"] == 18
    read = ReadStats()
    assert len([d for f in sorted((out / "warc").glob("*.warc.gz")) for d in read_warc(f, read)]) == 28
    assert not read.skipped


def test_resume_after_sigkill(crawl, tmp_path):
    root, warc, _ = crawl
    server = WarcServer(root, delay=0.05)
    out = tmp_path / "cc"
    try:
        code = ("from groundup.curate import ccindex; ccindex.run(ccindex.Config("
                f"cdx={str(root / 'cdx-00000.gz')!r}, base_url={server.url!r}, out={str(out)!r}, concurrency=2))")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        child = subprocess.Popen([sys.executable, "-c", code], env=env)
        deadline = time.time() + 60
        progress = out / "progress.jsonl"
        while time.time() < deadline and (not progress.is_file() or len(progress.read_text().splitlines()) < 6):
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        child.wait()
        first = len(records_of(out))
        assert 6 <= first < 28
        requests_before = len(server.ranges)
        ccindex.run(ccindex.Config(cdx=str(root / "cdx-00000.gz"), base_url=server.url, out=out, concurrency=2))
    finally:
        server.close()
    got, want = records_of(out), source_slices(warc)
    assert len(got) == 28 and all(got[k] == want[k] for k in got)  # none missing, none twice
    asked = [r for r in server.ranges[requests_before:] if r]
    assert len(asked) <= 28 - first + 2  # only what was not recorded (and what was in flight at the kill)


def test_cli_and_bad_settings(crawl, tmp_path):
    root, _, _ = crawl
    assert cli.main(["cc-fetch", "--cdx", str(root), "--base_url", str(root), "--out", str(tmp_path / "o"),
                     "--limit", "3"]) == 0
    assert len(records_of(tmp_path / "o")) == 3
    with pytest.raises(ValueError, match="cc-fetch: no CDX given"):
        ccindex.run(ccindex.Config(out=tmp_path / "x"))
    with pytest.raises(FileNotFoundError, match="CDX file not found: .*nope"):
        ccindex.run(ccindex.Config(cdx=str(tmp_path / "nope"), out=tmp_path / "x"))
    with pytest.raises(ValueError, match="url_regex '\\(' is not a regular expression"):
        ccindex.Config(cdx="x", url_regex="(")


def test_check_record_names_what_is_wrong(crawl):
    _, warc, _ = crawl
    record = next(iter(source_slices(warc).values()))
    assert ccindex.check_record(record) is None
    assert ccindex.check_record(record[:-5]) == "truncated gzip member"
    assert ccindex.check_record(record + record) == "bytes after the gzip member"
    assert ccindex.check_record(b"WARC/1.0\r\n") == "not a gzip member"
    assert ccindex.check_record(gzip.compress(b"hello")) == "not a WARC record"
    broken = gzip.compress(b"WARC/1.0\r\nContent-Length: 10\r\n\r\nabc\r\n\r\n")
    assert ccindex.check_record(broken) == "WARC record length does not match its content"
