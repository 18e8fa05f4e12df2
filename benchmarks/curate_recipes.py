"""What each built-in curate recipe keeps of one WARC: FineWeb's (``fineweb``) against code-and-docs (``code``).

The WARC is made here from the embedded corpus, four kinds of page, each wrapped in navigation, a
cookie line and a footer:

- ``code``: a standard-library module as a documentation page, its docstring as paragraphs and up to
  120 lines of its source in ``<pre><code>`` (some with a Pygments-style line-number gutter);
- ``topics``: a ``pydoc_data`` topic (the language reference: prose with indented examples, which
  become ``<pre>`` blocks);
- ``prose``: English prose of the kind the FineWeb rules keep (the test suite's generator);
- ``junk``: link lists, a line repeated, "lorem ipsum", keyword lists, a two-line page.

``groundup curate`` runs on it once per recipe (no deduplication, one worker). The table gives the
documents and bytes left after each step (the funnel) and the share of each kind kept; for the code
pages the code recipe keeps, it counts those whose source block is in the output byte for byte (the
PII step may still redact an e-mail address in a source header, or a section number such as
``section-7.1.1.1`` taken for an IP address: counted apart). Writes
benchmarks/results/curate_recipes.json.

    python benchmarks/curate_recipes.py [--pages 150]
"""

from __future__ import annotations

import argparse
import html
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "curate"))

from curate_helpers import english_text, write_warc  # noqa: E402

from groundup.corpus import stdlib_documents  # noqa: E402
from groundup.curate import run as curate  # noqa: E402
from groundup.curate.dedup import DedupConfig  # noqa: E402
from groundup.curate.pii import PLACEHOLDERS  # noqa: E402
from groundup.curate.recipe import RecipeConfig  # noqa: E402


def wrap(title: str, main: str) -> str:
    return (f"<!DOCTYPE html><html><head><title>{html.escape(title)}</title></head><body>"
            f"<nav><ul><li><a href='/'>Home</a></li><li><a href='/docs'>Docs</a></li>"
            f"<li><a href='/blog'>Blog</a></li></ul></nav>"
            f"<main><article><h1>{html.escape(title)}</h1>{main}</article></main>"
            f"<footer><p>Copyright 2024 Example. All rights reserved.</p>"
            f"<p><a href='/privacy'>Privacy policy</a> | We use cookies.</p></footer></body></html>")


def paragraphs(text: str) -> str:
    return "".join(f"<p>{html.escape(' '.join(p.split()))}</p>" for p in text.split("\n\n") if p.strip())


def code_block(code: str, gutter: bool) -> str:
    pre = f"<pre><code class='language-python'>{html.escape(code)}</code></pre>"
    if not gutter:
        return f"<div class='highlight'>{pre}</div>"
    numbers = "\n".join(str(i + 1) for i in range(code.count("\n") + 1))
    return (f"<table class='highlighttable'><tr><td class='linenos'><pre>{numbers}</pre></td>"
            f"<td class='code'>{pre}</td></tr></table>")


def module_page(source: str, rng: random.Random) -> tuple[str, str] | None:
    """A documentation page of a module (its docstring, then a block of its source) and the block."""
    if not source.startswith('"""'):
        return None
    end = source.find('"""', 3)
    doc = source[3:end].strip()
    if end < 0 or len(doc) < 300:
        return None
    lines = source[end + 3:].strip("\n").split("\n")
    start = rng.randrange(max(1, len(lines) - 120))
    code = "\n".join(lines[start:start + 120]).strip("\n")
    if len(code) < 400:
        return None
    return paragraphs(doc) + code_block(code, rng.random() < 0.3), code


def topic_page(text: str) -> str:
    """A pydoc topic: its indented runs become <pre> blocks (dedented), the rest paragraphs."""
    out, block = [], []
    for para in text.split("\n\n"):
        lines = para.split("\n")
        if all(not line.strip() or line.startswith("   ") for line in lines):
            block.append(para)
            continue
        if block:
            code = "\n\n".join(block)
            indent = min(len(line) - len(line.lstrip()) for line in code.split("\n") if line.strip())
            out.append(f"<pre>{html.escape(chr(10).join(line[indent:] for line in code.split(chr(10))))}</pre>")
            block = []
        out.append(paragraphs(para))
    return "".join(out)


def junk_page(rng: random.Random, i: int) -> str:
    kind = i % 5
    if kind == 0:
        return "<ul>" + "".join(f"<li><a href='/p{k}'>Page {k}</a></li>" for k in range(60)) + "</ul>"
    if kind == 1:
        return "<p>" + "<br>".join(["Buy cheap watches online now best price!"] * 40) + "</p>"
    if kind == 2:
        return paragraphs("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 30)
    if kind == 3:
        return "<p>" + ", ".join(rng.choice(["shoes", "bags", "sale", "cheap", "free", "deal"]) for _ in range(300)) + "</p>"
    return "<p>Coming soon.</p><p>Subscribe.</p>"


def build_pages(n: int, seed: int = 0) -> tuple[list[tuple[str, str]], dict[str, str]]:
    rng = random.Random(seed)
    pages, blocks = [], {}
    docs = list(stdlib_documents())
    sources = [d for d in docs if d.id.endswith(".py")]
    topics = [d for d in docs if "/topics/" in d.id]
    rng.shuffle(sources)
    for d in sources:
        if len(blocks) >= n:
            break
        made = module_page(d.text, rng)
        if made:
            url = f"https://docs.example.org/code/{len(blocks)}"
            pages.append((url, wrap(d.id.removeprefix("stdlib:"), made[0])))
            blocks[url] = made[1]
    for k, d in enumerate(topics[:n]):
        pages.append((f"https://docs.example.org/topics/{k}", wrap(d.id.rsplit("/", 1)[-1], topic_page(d.text))))
    for k in range(n):
        pages.append((f"https://blog.example.org/prose/{k}", wrap(f"Notes {k}", paragraphs(
            english_text(1000 + k, rng.randint(8, 30)).replace("\n", "\n\n")))))
    for k in range(n // 2):
        pages.append((f"https://spam.example.org/junk/{k}", wrap(f"Deals {k}", junk_page(rng, k))))
    rng.shuffle(pages)
    return pages, blocks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=150, help="pages of each kind (junk: half as many)")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        pages, blocks = build_pages(args.pages)
        warc = write_warc(Path(tmp) / "pages.warc.gz", pages)
        kinds = Counter(url.split("/")[3] for url, _ in pages)
        results["warc"] = {"pages": len(pages), "bytes": warc.stat().st_size, "kinds": dict(kinds)}
        for recipe in ("fineweb", "code"):
            t0 = time.perf_counter()
            out = curate.run(curate.Config(input=[str(warc)], out=Path(tmp) / recipe, workers=1,
                                           recipe=RecipeConfig(steps=recipe),
                                           dedup=DedupConfig(exact=False, near=False)))
            seconds = time.perf_counter() - t0
            stats = json.loads((out / "stats.json").read_text())
            rows = [r for f in sorted((out / "shards").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
            kept = Counter(r["url"].split("/")[3] for r in rows)
            code_rows = [r for r in rows if r["url"] in blocks]
            verbatim = sum(blocks[r["url"]] in r["text"] for r in code_rows)
            redacted = sum(blocks[r["url"]] not in r["text"] and any(p in r["text"] for p in PLACEHOLDERS.values())
                           for r in code_rows)
            results[recipe] = {
                "seconds": round(seconds, 1),
                "funnel": [{"step": row["step"], "documents": row["documents"], "bytes": row["bytes"]}
                           for row in stats["funnel"]],
                "kept_share": {k: round(kept[k] / kinds[k], 3) for k in sorted(kinds)},
                "dropped": {step: s["dropped"] for step, s in stats["steps"].items() if s["dropped"]},
                "code_pages_kept": len(code_rows), "code_blocks_verbatim": verbatim,
                "code_blocks_changed_by_pii": redacted,
            }
    print(f"WARC: {results['warc']['pages']} pages ({results['warc']['kinds']}), {results['warc']['bytes']} bytes")
    print(f"{'step':20}" + "".join(f"{r + ' docs':>14}{r + ' MB':>12}" for r in ("fineweb", "code")))
    names = [row["step"] for row in results["code"]["funnel"]]
    for i, name in enumerate(names):
        cells = ""
        for r in ("fineweb", "code"):
            row = results[r]["funnel"][i]
            cells += f"{row['documents']:>14}{row['bytes'] / 1e6:>12.3f}"
        print(f"{name:20}{cells}")
    print(f"{'kept share by kind':20}" + "".join(f"{str(results[r]['kept_share']):>52}" for r in ("fineweb",)))
    print(f"{'':20}" + f"{str(results['code']['kept_share']):>52}" + "  (code)")
    for r in ("fineweb", "code"):
        print(f"{r}: code pages kept {results[r]['code_pages_kept']}, source block byte-exact in "
              f"{results[r]['code_blocks_verbatim']}, changed by PII redaction {results[r]['code_blocks_changed_by_pii']}; "
              f"dropped {results[r]['dropped']}")
    out = Path(__file__).parent / "results" / "curate_recipes.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
