"""Filter-chain throughput: groundup's quality rules against datatrove's on the same documents, one core.

Documents: English prose from the embedded corpus (standard-library docstrings and pydoc
topics), joined until each holds at least 3,000 characters (about FineWeb's mean page; 4.5 KB on
average, so the per-document figures are conservative). In one
process, each of datatrove's GopherRepetitionFilter, GopherQualityFilter, C4QualityFilter
(FineWeb's setting, without the terminal-punctuation rule) and FineWebQualityFilter, and
groundup's equivalents, is timed alone and as a chain; the table shows documents/s per core,
the ratio, and how often the two keep/drop decisions agree. groundup's FineWeb-like chain after
extraction (language id, which reads a 3,000-character sample of longer pages as
LanguageFilter does by default, + the four rules) is timed too, through ``Chain.run`` as the curate
stage runs it (statistics per step; every step over a batch of 64 documents in turn, which keeps
the language model in the CPU caches) and, for comparison, one document at a time; then the same
chain in 2 processes against 1 (scaling, see :func:`scaling`), and with ``--ray`` the curate stage
on a local 2-CPU Ray cluster against the local executor (byte-identical shards).

datatrove cuts English words with spaCy (``spacy.blank("en")``, a rule-based tokenizer: no model
is downloaded). The primary comparison is datatrove as shipped, with that tokenizer (spaCy is in
the ``bench`` extra; without it those columns show "-"). A secondary one plugs groundup's word
regex into datatrove (a custom WordTokenizer): faster than as shipped, so its ratio is a lower
bound, and its decisions must agree with groundup's exactly, since the rules then see the same
words. With spaCy's words (``don't`` -> ``do`` ``n't``, ``e.g.`` whole) a few decisions differ.

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
from groundup.curate.filters.c4 import C4QualityFilter
from groundup.curate.filters.fineweb import FineWebQualityFilter
from groundup.curate.filters.gopher import GopherQualityFilter, GopherRepetitionFilter
from groundup.curate.filters.language import LanguageFilter
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


def regex_words():
    """datatrove's WordTokenizer interface around groundup's word regex (the secondary comparison)."""
    from datatrove.utils.word_tokenizers import WordTokenizer

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

    return RegexWords()


def theirs(shipped: bool = True) -> tuple[dict, str] | tuple[None, str]:
    """datatrove's four blocks: as shipped (English words cut by spaCy's blank ``en`` tokenizer, which
    needs no model download) or, with ``shipped=False``, with groundup's word regex plugged in.
    As shipped without spaCy installed: (None, why)."""
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

    if shipped:
        try:
            import spacy  # noqa: F401
        except ImportError:
            return None, "spaCy not installed (pip install 'groundup[bench]')"
        language, words = "en", f"spaCy {spacy.__version__} blank 'en' (as shipped)"
    else:
        language, words = regex_words(), "groundup's word regex plugged in"
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


def run_chain(steps: list, texts: list[str]) -> list[bool]:
    """Which texts a :class:`Chain` of ``steps`` keeps, run as the curate stage runs it (statistics and
    timings per step, every step over a batch of documents in turn)."""
    docs = [Document(t) for t in texts]
    kept = {id(doc) for doc in Chain(steps).run(docs)}
    return [id(doc) in kept for doc in docs]


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


_TEXTS: list[str] = []
"""The documents for the scaling runs, set before the pools start: forked workers inherit them, so
no document is pickled and a task is just a range of indices."""
_CHAIN: Chain | None = None


def _init_worker() -> None:
    """Build the chain and load the language model once per worker, before any task is timed."""
    global _CHAIN
    _CHAIN = Chain([LanguageFilter(["en"], 0.65), *ours().values()])
    _CHAIN.process(Document(_TEXTS[0]))


def _chain_chunk(chunk: range) -> tuple[int, float]:
    """Documents kept, and the CPU seconds this worker spent on them."""
    start = time.process_time()
    kept = sum(1 for _ in _CHAIN.run(Document(_TEXTS[i]) for i in chunk))
    return kept, time.process_time() - start


def _spin(iterations: int) -> tuple[int, float]:
    """The machine's own ceiling: pure-Python arithmetic, no memory traffic, no I/O, nothing shared."""
    start = time.process_time()
    x = 0
    for i in range(iterations):
        x += i * i % 7
    return x, time.process_time() - start


def scaling(texts: list[str], repeats: int, copies: int = 3, chunk: int = 32) -> dict:
    """The FineWeb-like chain (language + rules) over the same documents in a pool of 1 and of 2 processes.

    Both pools are started, and their workers have loaded the model, before anything is timed;
    the documents (``copies`` times the set, so a pass lasts seconds) are inherited through fork,
    and handed out in chunks of ``chunk`` as workers free up, so neither pickling nor an unlucky
    split of slow and fast documents limits the speedup. Rounds alternate 1 and 2 processes and
    the speedup is the median of the rounds' ratios, so a change in machine load between rounds
    weighs less. ``cpu_utilisation_two`` is the workers' CPU time over 2 x wall time: well under 1
    means another process took one of the cores (on a shared machine, the speedup then says more
    about the machine than about the code). To tell the two apart, each round also times the same
    pools on :func:`_spin`, a task that scales perfectly on idle cores: ``reference_speedup`` is
    what the machine gave it, ``relative_efficiency`` the chain's speedup over that.
    """
    global _TEXTS
    _TEXTS = list(texts) * copies
    chunks = [range(i, min(i + chunk, len(_TEXTS))) for i in range(0, len(_TEXTS), chunk)]
    ctx = mp.get_context("fork")
    pools = {procs: ctx.Pool(procs, initializer=_init_worker) for procs in (1, 2)}
    wall: dict[int, list[float]] = {1: [], 2: []}
    cpu: dict[int, list[float]] = {1: [], 2: []}
    spin: dict[int, list[float]] = {1: [], 2: []}
    try:
        for pool in pools.values():
            pool.map(_chain_chunk, chunks[:4], chunksize=1)  # every worker up and warm
        for _ in range(repeats):
            for procs, pool in pools.items():
                start = time.perf_counter()
                results = list(pool.imap_unordered(_chain_chunk, chunks))
                wall[procs].append(time.perf_counter() - start)
                cpu[procs].append(sum(seconds for _, seconds in results))
                start = time.perf_counter()
                list(pool.imap_unordered(_spin, [200_000] * 32))
                spin[procs].append(time.perf_counter() - start)
    finally:
        for pool in pools.values():
            pool.close()
            pool.join()
    n = len(_TEXTS)
    one, two = statistics.median(wall[1]), statistics.median(wall[2])
    speedups = [a / b for a, b in zip(wall[1], wall[2], strict=True)]
    reference = [a / b for a, b in zip(spin[1], spin[2], strict=True)]
    return {"documents": n, "one_process_docs_per_s": n / one, "two_processes_docs_per_s": n / two,
            "speedup": statistics.median(speedups), "speedups": speedups,
            "reference_speedup": statistics.median(reference), "reference_speedups": reference,
            "relative_efficiency": statistics.median(a / b for a, b in zip(speedups, reference, strict=True)),
            "cpu_utilisation_two": statistics.median(c / (2 * w) for c, w in zip(cpu[2], wall[2], strict=True)),
            "cpu_seconds_one": statistics.median(cpu[1]), "cpu_seconds_two": statistics.median(cpu[2]),
            "cpu_count": os.cpu_count()}


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
    peers = {"shipped": theirs(shipped=True), "regex": theirs(shipped=False)}
    peer_words = {k: words for k, (_, words) in peers.items()}
    rows = []
    for name in [*mine, "chain"]:
        our_rules = list(mine.values()) if name == "chain" else [mine[name]]
        our_s, our_keep = timed(lambda r=our_rules: run_ours(r, texts), args.repeats)
        row = {"step": name, "groundup_docs_per_s": len(texts) / our_s, "kept_groundup": sum(our_keep)}
        for kind, (peer, _) in peers.items():
            if peer is None:
                continue
            peer_rules = list(peer.values()) if name == "chain" else [peer[name]]
            peer_s, peer_keep = timed(lambda r=peer_rules: run_theirs(r, texts), args.repeats)
            row |= {f"datatrove_{kind}_docs_per_s": len(texts) / peer_s, f"ratio_{kind}": peer_s / our_s,
                    f"decisions_agree_{kind}": sum(a == b for a, b in zip(our_keep, peer_keep, strict=True))
                    / len(texts), f"kept_datatrove_{kind}": sum(peer_keep)}
        rows.append(row)
    language = LanguageFilter(["en"], 0.65)
    fineweb_like = [language, *mine.values()]
    full_s, full_kept = timed(lambda: run_chain(fineweb_like, texts), args.repeats)
    one_s, one_keep = timed(lambda: run_ours(fineweb_like, texts), args.repeats)
    assert one_keep == full_kept  # the same documents either way
    lid_s, _ = timed(lambda: run_ours([language], texts), args.repeats)
    result = {
        "benchmark": "curate_filters",
        "documents": len(texts),
        "mean_characters": mean_chars,
        "datatrove_word_tokenizers": peer_words,
        "rows": rows,
        "fineweb_like_chain_after_extraction_docs_per_s": len(texts) / full_s,
        "fineweb_like_chain_one_document_at_a_time_docs_per_s": len(texts) / one_s,
        "language_id_docs_per_s": len(texts) / lid_s,
        "kept_by_fineweb_like_chain": sum(full_kept),
        "scaling": scaling(texts, args.repeats),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    if args.ray:
        result["ray"] = ray_vs_local(texts[:400])

    print(f"\none core; median of {args.repeats}. datatrove as shipped: {peer_words['shipped']}; "
          f"datatrove+regex: {peer_words['regex']}")
    print(f"{'step':<19}{'groundup':>10}{'dt shipped':>12}{'ratio':>8}{'agree':>7}{'dt+regex':>10}{'ratio':>8}"
          f"{'agree':>7}   (docs/s per core)")
    for r in rows:
        line = f"{r['step']:<19}{r['groundup_docs_per_s']:>10,.0f}"
        for kind in ("shipped", "regex"):
            if f"ratio_{kind}" in r:
                line += (f"{r[f'datatrove_{kind}_docs_per_s']:>{12 if kind == 'shipped' else 10},.0f}"
                         f"{r[f'ratio_{kind}']:>7.1f}x{r[f'decisions_agree_{kind}']:>7.3f}")
            else:
                line += f"{'-':>{12 if kind == 'shipped' else 10}}{'-':>8}{'-':>7}"
        print(line)
    print(f"\nFineWeb-like chain after extraction (language id + rules): "
          f"{result['fineweb_like_chain_after_extraction_docs_per_s']:,.0f} docs/s per core as the curate stage "
          f"runs it (Chain.run, batches of 64, statistics kept); "
          f"{result['fineweb_like_chain_one_document_at_a_time_docs_per_s']:,.0f} docs/s one document at a time "
          f"(language id alone {result['language_id_docs_per_s']:,.0f} docs/s)")
    s = result["scaling"]
    print(f"2 processes vs 1: {s['two_processes_docs_per_s']:,.0f} vs {s['one_process_docs_per_s']:,.0f} docs/s "
          f"({s['speedup']:.2f}x on {s['cpu_count']} cores; rounds {', '.join(f'{x:.2f}' for x in s['speedups'])}; "
          f"the 2 workers had the CPU {s['cpu_utilisation_two']:.0%} of the time)")
    print(f"  a pure-CPU reference task in the same pools: {s['reference_speedup']:.2f}x (rounds "
          f"{', '.join(f'{x:.2f}' for x in s['reference_speedups'])}); chain/reference "
          f"{s['relative_efficiency']:.2f}")
    if "ray" in result:
        r = result["ray"]
        print(f"Ray (local 2-CPU cluster) vs local executor: identical shards {r['identical_shards']} "
              f"({r['ray_seconds']:.1f} s vs {r['local_seconds']:.1f} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
