"""Filter-chain throughput: groundup's quality rules against datatrove's on the same documents, one core.

Documents: English prose from the embedded corpus (standard-library docstrings and pydoc
topics), joined into web-page-sized documents of about 3 KB (FineWeb's average). In one
process, each of datatrove's GopherRepetitionFilter, GopherQualityFilter, C4QualityFilter
(FineWeb's setting, without the terminal-punctuation rule) and FineWebQualityFilter, and
groundup's equivalents, is timed alone and as a chain; the table shows documents/s per core,
the ratio, and how often the two keep/drop decisions agree. groundup's FineWeb-like chain after
extraction (language id + the four rules) is timed too, then the same chain in 2 processes
against 1 (scaling), and with ``--ray`` the curate stage on a local 2-CPU Ray cluster against
the local executor (byte-identical shards).

datatrove cuts English words with spaCy. Where spaCy is not installed, datatrove is given
groundup's word regex instead (a plug-in tokenizer); that makes datatrove faster than as
shipped, so the ratio is a lower bound, and its decisions comparable with groundup's.

    python benchmarks/curate_filters.py [--documents 2000] [--repeats 3] [--ray]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import re
import statistics
import tempfile
import time
from pathlib import Path

from groundup.corpus import stdlib_documents
from groundup.curate.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
    LanguageFilter,
)
from groundup.curate.steps import Chain
from groundup.curate.text import WORD_RE, Document

RESULTS = Path(__file__).resolve().parent / "results"


def web_like_documents(count: int, target_chars: int = 3000) -> list[str]:
    """Docstrings and pydoc topics joined into documents of about ``target_chars``, in a fixed order."""
    pieces: list[str] = []
    for doc in stdlib_documents():
        if "pydoc_data" in doc.id:
            pieces.append(doc.text)
        else:
            pieces += [m.group(1).strip() for m in re.finditer(r'"""(.*?)"""', doc.text, re.S)
                       if len(m.group(1)) > 300]
        if sum(map(len, pieces)) > count * target_chars * 1.2:
            break
    docs, current = [], []
    for piece in pieces:
        current.append(piece)
        if sum(map(len, current)) >= target_chars:
            docs.append("\n\n".join(current))
            current = []
        if len(docs) == count:
            break
    return docs


def ours() -> dict:
    return {"gopher_repetition": GopherRepetitionFilter(), "gopher_quality": GopherQualityFilter(),
            "c4_quality": C4QualityFilter(filter_no_terminal_punct=False),
            "fineweb_quality": FineWebQualityFilter(char_duplicates_ratio=0.1)}


def theirs() -> tuple[dict, str]:
    from datatrove.pipeline.filters import (
        C4QualityFilter as DtC4,
    )
    from datatrove.pipeline.filters import (
        FineWebQualityFilter as DtFineWeb,
    )
    from datatrove.pipeline.filters import (
        GopherQualityFilter as DtGopherQuality,
    )
    from datatrove.pipeline.filters import (
        GopherRepetitionFilter as DtGopherRepetition,
    )
    from datatrove.utils.word_tokenizers import WordTokenizer

    try:
        import spacy  # noqa: F401

        language, words = "en", "spaCy (as shipped)"
    except ImportError:
        sentence_end = re.compile(r"(?<=[.!?])\s+")

        class RegexWords(WordTokenizer):
            def word_tokenize(self, text: str) -> list[str]:
                return WORD_RE.findall(text)

            def sent_tokenize(self, text: str) -> list[str]:
                return [s for s in sentence_end.split(text) if s.strip()]

            def span_tokenize(self, text: str) -> list[tuple[int, int]]:
                spans, start = [], 0
                for m in sentence_end.finditer(text):
                    spans.append((start, m.start()))
                    start = m.end()
                return spans + [(start, len(text))]

        language, words = RegexWords(), "groundup's word regex (spaCy not installed)"
    filters = {"gopher_repetition": DtGopherRepetition(language=language),
               "gopher_quality": DtGopherQuality(language=language),
               "c4_quality": DtC4(filter_no_terminal_punct=False, language=language),
               "fineweb_quality": DtFineWeb(char_duplicates_ratio=0.1, language=language)}
    return filters, words


def run_ours(rules: list, texts: list[str]) -> list[bool]:
    out = []
    for text in texts:
        d = Document(text)
        out.append(all(rule.filter(d)[0] for rule in rules))  # stops at the first drop, as a chain does
    return out


def run_theirs(rules: list, texts: list[str]) -> list[bool]:
    from datatrove.data import Document as DtDocument

    out = []
    for i, text in enumerate(texts):
        d = DtDocument(text=text, id=str(i))
        keep = True
        for rule in rules:
            result = rule.filter(d)
            if not (result if isinstance(result, bool) else result[0]):
                keep = False
                break
        out.append(keep)
    return out


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _chain_worker(texts: list[str]) -> int:
    chain = Chain([LanguageFilter(["en"], 0.65), *ours().values()], timed=False)
    return sum(chain.process(Document(t)) for t in texts)


def scaling(texts: list[str], repeats: int) -> dict:
    """The FineWeb-like chain (language + rules) over the same documents in 1 and in 2 processes."""
    ctx = mp.get_context("fork")
    half = len(texts) // 2
    one, _ = timed(lambda: _chain_worker(texts), repeats)
    with ctx.Pool(2) as pool:
        pool.map(_chain_worker, [texts[:10], texts[10:20]])  # warm the workers (model loaded)
        two, _ = timed(lambda: pool.map(_chain_worker, [texts[:half], texts[half:]]), repeats)
    return {"one_process_docs_per_s": len(texts) / one, "two_processes_docs_per_s": len(texts) / two,
            "speedup": one / two, "cpu_count": os.cpu_count()}


def ray_vs_local(texts: list[str]) -> dict:
    """The curate stage on JSONL input with the Ray executor (local 2-CPU cluster) and the local one."""
    from groundup.curate import run as curate

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        for part in range(4):
            with open(tmp / "in" / f"part{part}.jsonl", "w", encoding="utf-8") as f:
                for i, text in enumerate(texts[part::4]):
                    f.write(json.dumps({"text": text, "url": f"https://example.org/{part}/{i}"}) + "\n")
        results = {}
        for executor in ("local", "ray"):
            cfg = curate.Config(input=[str(tmp / "in")], out=tmp / executor, executor=executor, workers=2,
                                task_bytes=1)
            start = time.perf_counter()
            curate.run(cfg)
            results[executor] = time.perf_counter() - start
        shards = {e: {p.name: p.read_bytes() for p in sorted((tmp / e / "shards").glob("*.parquet"))}
                  for e in ("local", "ray")}
        return {"identical_shards": shards["local"] == shards["ray"] and bool(shards["local"]),
                "shards": len(shards["local"]), "local_seconds": results["local"], "ray_seconds": results["ray"]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--documents", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ray", action="store_true", help="also compare the Ray executor with the local one")
    parser.add_argument("--out", type=Path, default=RESULTS / "curate_filters.json")
    args = parser.parse_args(argv)

    texts = web_like_documents(args.documents)
    mean_chars = sum(map(len, texts)) / len(texts)
    print(f"{len(texts)} documents, {mean_chars:,.0f} characters on average")
    mine = ours()
    peer, peer_words = theirs()
    rows = []
    for name in [*mine, "chain"]:
        our_rules = list(mine.values()) if name == "chain" else [mine[name]]
        peer_rules = list(peer.values()) if name == "chain" else [peer[name]]
        peer_s, peer_keep = timed(lambda r=peer_rules: run_theirs(r, texts), args.repeats)
        our_s, our_keep = timed(lambda r=our_rules: run_ours(r, texts), args.repeats)
        agree = sum(a == b for a, b in zip(our_keep, peer_keep, strict=True)) / len(texts)
        rows.append({"step": name, "datatrove_docs_per_s": len(texts) / peer_s, "groundup_docs_per_s": len(texts) / our_s,
                     "ratio": peer_s / our_s, "decisions_agree": agree, "kept_groundup": sum(our_keep),
                     "kept_datatrove": sum(peer_keep)})
    language = LanguageFilter(["en"], 0.65)
    full_s, full_keep = timed(lambda: run_ours([language, *mine.values()], texts), args.repeats)
    lid_s, _ = timed(lambda: run_ours([language], texts), args.repeats)
    result = {
        "benchmark": "curate_filters",
        "documents": len(texts),
        "mean_characters": mean_chars,
        "datatrove_word_tokenizer": peer_words,
        "rows": rows,
        "fineweb_like_chain_after_extraction_docs_per_s": len(texts) / full_s,
        "language_id_docs_per_s": len(texts) / lid_s,
        "kept_by_fineweb_like_chain": sum(full_keep),
        "scaling": scaling(texts, args.repeats),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    if args.ray:
        result["ray"] = ray_vs_local(texts[:400])

    print(f"\ndatatrove words: {peer_words}; one core; median of {args.repeats}")
    print(f"{'step':<20}{'datatrove docs/s':>18}{'groundup docs/s':>18}{'ratio':>8}{'agree':>8}")
    for r in rows:
        print(f"{r['step']:<20}{r['datatrove_docs_per_s']:>18,.0f}{r['groundup_docs_per_s']:>18,.0f}"
              f"{r['ratio']:>7.1f}x{r['decisions_agree']:>8.3f}")
    print(f"\nFineWeb-like chain after extraction (language id + rules): "
          f"{result['fineweb_like_chain_after_extraction_docs_per_s']:,.0f} docs/s per core "
          f"(language id alone {result['language_id_docs_per_s']:,.0f} docs/s)")
    s = result["scaling"]
    print(f"2 processes vs 1: {s['two_processes_docs_per_s']:,.0f} vs {s['one_process_docs_per_s']:,.0f} docs/s "
          f"({s['speedup']:.2f}x on {s['cpu_count']} cores)")
    if "ray" in result:
        r = result["ray"]
        print(f"Ray (local 2-CPU cluster) vs local executor: identical shards {r['identical_shards']} "
              f"({r['ray_seconds']:.1f} s vs {r['local_seconds']:.1f} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
