"""MinHash deduplication: groundup against datatrove's MinhashDedupSignature; quality, memory, scaling.

In one run, on documents made here (nothing downloaded):

1. **Signature throughput on one core**, on ~2-5 KB documents (slices of the embedded corpus, and
   generated English-like text): groundup's ``minhash_signatures`` (xxh3 word hashes, numpy
   5-gram shingles, rensa MinHash) against datatrove's ``MinhashDedupSignature`` shingling and
   signature functions (``get_shingles`` + ``get_signature``, FineWeb's 14 × 8 with 64-bit sha1;
   datatrove's spaCy word tokenizer is not installed here, so it gets ``str.split``, which only
   makes it faster), and against vectorized numpy MinHash (``(a·x + b) mod (2^61 - 1)``, min per
   document) over groundup's shingles. Also the whole signature phase of ``deduplicate`` (Parquet
   read, exact hash, signatures, band keys, sorted runs written).
2. **Quality on planted near duplicates**: copies of documents with 0-3% of their words replaced
   (true Jaccard about 0.73-1), and "distant" copies with 10-25% replaced (Jaccard < 0.6, which
   should not be flagged); then again with 0-4% and 8-20%, where the LSH S-curve shows. Recall:
   of the copies whose true word-5-gram Jaccard with their original is >= 0.8, the share found (the
   later of the two dropped, the earlier kept). Precision: of all dropped documents, the share whose
   true Jaccard with their cluster's survivor is >= 0.7 (a drop outside a planted pair counts as 0).
3. **Scaling**: the signature phase of ``deduplicate`` with 1 and 2 worker processes on the same
   8 shards (the 2-process time includes starting the pool).
4. **Peak memory** of ``deduplicate`` (one process) in a fresh subprocess per size, on 10k, 100k
   and 1M short synthetic documents (20-60 words) with 10% duplicates, and the largest again with a
   16 MB merge budget. Peak is ``VmHWM`` (``getrusage``'s ``ru_maxrss`` would carry the parent's peak
   into the child on Linux); the baseline is the same after importing numpy, pyarrow, rensa, xxhash.

Prints a table and writes benchmarks/results/curate_minhash.json.

    python benchmarks/curate_minhash.py [--docs 20000] [--memory-sizes 10000,100000,1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from groundup.corpus import stdlib_documents
from groundup.curate import dedup
from groundup.curate.dedup import DedupConfig, deduplicate, minhash_signatures, shingle_hashes, words_of

RESULTS = Path(__file__).resolve().parent / "results"
MERSENNE = np.uint64((1 << 61) - 1)


# --- documents ---------------------------------------------------------------------------------


def corpus_docs(n: int, seed: int = 0) -> list[str]:
    """Slices of 2-5 KB of the embedded corpus (code, docstrings, the Python reference), in order."""
    text = "\n".join(d.text for d in stdlib_documents())
    rng = np.random.default_rng(seed)
    docs, pos = [], 0
    while len(docs) < n:
        length = int(rng.integers(2000, 5000))
        if pos + length > len(text):
            pos = int(rng.integers(0, 1000))
        docs.append(text[pos:pos + length])
        pos += length
    return docs


def vocabulary(size: int = 20000) -> np.ndarray:
    """The corpus's most frequent alphabetic words (English and identifiers), most frequent first."""
    counts: dict[str, int] = {}
    for d in stdlib_documents():
        for w in d.text.split():
            if w.isalpha():
                counts[w] = counts.get(w, 0) + 1
    return np.array(sorted(counts, key=lambda w: -counts[w])[:size])


class TextMaker:
    """English-like text: Zipf-distributed words from the corpus vocabulary, with punctuation."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.words = vocabulary()
        ranks = np.arange(1, len(self.words) + 1)
        self.p = (1.0 / ranks) / (1.0 / ranks).sum()

    def doc(self, n_words: int) -> str:
        words = self.words[self.rng.choice(len(self.words), size=n_words, p=self.p)].tolist()
        for i in range(11, n_words, 13):
            words[i] += "."
        return " ".join(words)

    def docs(self, n: int, low: int, high: int) -> list[str]:
        """n documents of low to high words, vectorized (for millions of short documents)."""
        lengths = self.rng.integers(low, high, size=n)
        flat = self.words[self.rng.choice(len(self.words), size=int(lengths.sum()), p=self.p)].tolist()
        out, pos = [], 0
        for length in lengths.tolist():
            out.append(" ".join(flat[pos:pos + length]))
            pos += length
        return out

    def edit(self, text: str, fraction: float) -> str:
        words = text.split()
        k = int(round(fraction * len(words)))
        for i in self.rng.choice(len(words), size=k, replace=False):
            words[i] = f"edited{self.rng.integers(1 << 40)}"
        return " ".join(words)


def write_shards(texts: list[str], folder: Path, shards: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, len(texts), shards + 1).astype(int)
    paths = []
    for i in range(shards):
        path = folder / f"shard-{i:04d}.parquet"
        pq.write_table(pa.table({"text": pa.array(texts[bounds[i]:bounds[i + 1]], pa.large_string())}), path)
        paths.append(path)
    return paths


# --- peers -------------------------------------------------------------------------------------


def datatrove_signer():
    """datatrove's MinhashDedupSignature with FineWeb's settings; str.split stands in for spaCy."""
    import datatrove.pipeline.dedup.minhash as dt_minhash
    from datatrove.utils.hashing import HashConfig

    class SplitTokenizer:
        def word_tokenize(self, text: str) -> list[str]:
            return text.split()

    dt_minhash.load_word_tokenizer = lambda language: SplitTokenizer()
    # datatrove's xxhash option passes str to xxhash, which xxhash 4 refuses; sha1 is FineWeb's choice.
    config = dt_minhash.MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8,
                                      hash_config=HashConfig(precision=64, hash_fc="sha1"))
    step = dt_minhash.MinhashDedupSignature(output_folder=tempfile.mkdtemp(), config=config)
    import datatrove

    def sign_once(texts: list[str]) -> int:
        done = 0
        for t in texts:
            shingles = step.get_shingles(t)
            if shingles.size:
                step.get_signature(shingles)
            done += 1
        return done

    return sign_once, getattr(datatrove, "__version__", "?")


def numpy_minhash(texts: list[str], cfg: DedupConfig) -> np.ndarray:
    """Vectorized numpy MinHash over groundup's shingles: (a·x + b) mod p for all permutations, min per doc."""
    hashes, offsets = shingle_hashes(texts, cfg.ngram)
    gen = np.random.RandomState(cfg.seed)
    a = gen.randint(1, MERSENNE, dtype=np.uint64, size=cfg.permutations)
    b = gen.randint(0, MERSENNE, dtype=np.uint64, size=cfg.permutations)
    out = np.empty((len(texts), cfg.permutations), dtype=np.uint64)
    starts = offsets[:-1].astype(np.int64)
    step = 256  # documents per block: bounds the (shingles × permutations) temporary
    for lo in range(0, len(texts), step):
        hi = min(lo + step, len(texts))
        s, e = int(offsets[lo]), int(offsets[hi])
        values = (hashes[s:e, None] * a + b) % MERSENNE
        out[lo:hi] = np.minimum.reduceat(values, starts[lo:hi] - s, axis=0)
    return out


# --- measurements ------------------------------------------------------------------------------


def best_rate(fn, n: int, repeats: int) -> tuple[float, list[float]]:
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - t0)
    return n / min(seconds), seconds


def throughput(docs: list[str], peer_docs: int, repeats: int, cfg: DedupConfig) -> dict:
    batch = cfg.batch_docs

    def ours():
        for i in range(0, len(docs), batch):
            minhash_signatures(docs[i:i + batch], cfg)

    ours_rate, ours_seconds = best_rate(ours, len(docs), repeats)
    sample = docs[:peer_docs]
    numpy_rate, _ = best_rate(lambda: [numpy_minhash(sample[i:i + 1000], cfg) for i in range(0, len(sample), 1000)],
                              len(sample), repeats)
    sign_once, version = datatrove_signer()
    datatrove_rate, _ = best_rate(lambda: sign_once(sample), len(sample), 1 if len(sample) > 500 else repeats)
    return {"documents": len(docs), "mean_bytes": float(np.mean([len(d.encode()) for d in docs])),
            "groundup_docs_per_s": ours_rate, "numpy_minhash_docs_per_s": numpy_rate,
            "datatrove_docs_per_s": datatrove_rate, "datatrove_version": version,
            "peer_documents": len(sample), "ratio_vs_datatrove": ours_rate / datatrove_rate,
            "ratio_vs_numpy": ours_rate / numpy_rate, "groundup_seconds": ours_seconds}


def shingle_set(text: str, n: int) -> set:
    words = words_of(text)
    if len(words) < n:
        return {tuple(words)} if words else set()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if (a or b) else 1.0


def quality(tmp: Path, cfg: DedupConfig, originals: int = 6000, near: int = 3000, distant: int = 1000,
            near_edits: tuple[float, float] = (0.0, 0.03), distant_edits: tuple[float, float] = (0.10, 0.25)) -> dict:
    maker = TextMaker(seed=1)
    texts = [maker.doc(int(n)) for n in maker.rng.integers(200, 700, size=originals)]
    chosen = maker.rng.choice(originals, size=near + distant, replace=False)
    source_of: dict[int, int] = {}
    kinds: dict[int, str] = {}
    for k, original in enumerate(chosen.tolist()):
        if k < near:
            fraction, kind = float(maker.rng.uniform(*near_edits)), "near"
        else:
            fraction, kind = float(maker.rng.uniform(*distant_edits)), "distant"
        source_of[len(texts)] = original
        kinds[len(texts)] = kind
        texts.append(maker.edit(texts[original], fraction))
    order = maker.rng.permutation(len(texts))  # copies anywhere, before or after their original
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    shuffled = [texts[i] for i in order.tolist()]
    shards = write_shards(shuffled, tmp / "quality", shards=4)
    t0 = time.perf_counter()
    result = deduplicate(shards, tmp / "quality-work", cfg)
    seconds = time.perf_counter() - t0

    bounds = np.linspace(0, len(shuffled), 5).astype(int)
    dropped = np.zeros(len(shuffled), dtype=bool)
    for i, path in enumerate(shards):
        rows = np.array(sorted(result.drop[path.name]), dtype=np.int64)
        dropped[bounds[i] + rows] = True
    sets: dict[int, set] = {}

    def shingles_of(i: int) -> set:
        if i not in sets:
            sets[i] = shingle_set(texts[i], cfg.ngram)
        return sets[i]

    true_j = {copy: jaccard(shingles_of(copy), shingles_of(orig)) for copy, orig in source_of.items()}
    found = {}
    for copy, orig in source_of.items():
        first, second = sorted((position[copy], position[orig]))
        # Planted pairs are disjoint, so the pair was found iff the later one is dropped and the
        # earlier one is kept (no other document resembles either).
        found[copy] = bool(dropped[second] and not dropped[first])
    near_copies = [c for c, k in kinds.items() if k == "near"]
    at_08 = [c for c in near_copies if true_j[c] >= 0.8]
    recall = sum(found[c] for c in at_08) / len(at_08)
    theory = float(np.mean([1 - (1 - true_j[c] ** cfg.rows) ** cfg.bands for c in at_08]))
    bins = [(0.6, 0.7), (0.7, 0.75), (0.75, 0.8), (0.8, 0.85), (0.85, 0.9), (0.9, 1.01)]
    by_bin = {}
    for lo, hi in bins:
        members = [c for c in source_of if lo <= true_j[c] < hi]
        if members:
            by_bin[f"{lo:.2f}-{min(hi, 1.0):.2f}"] = {"pairs": len(members),
                                                       "recall": sum(found[c] for c in members) / len(members)}
    # Precision: every dropped document against its survivor (the earlier member of its pair; any
    # drop outside a planted pair compares against nothing planted and counts as wrong).
    copy_of = {orig: copy for copy, orig in source_of.items()}
    flagged = np.flatnonzero(dropped)
    similarity = []  # true Jaccard of each dropped document with its survivor (0: not a planted pair)
    for pos in flagged.tolist():
        i = int(order[pos])  # shuffled position -> index in texts
        partner = source_of.get(i, copy_of.get(i))
        ok = partner is not None and not dropped[position[partner]]
        similarity.append(jaccard(shingles_of(i), shingles_of(partner)) if ok else 0.0)
    similarity = np.array(similarity)
    distant_flagged = sum(found[c] for c, k in kinds.items() if k == "distant")
    return {"documents": len(texts), "planted_near": near, "planted_distant": distant,
            "pairs_jaccard_ge_0.8": len(at_08), "recall_at_0.8": recall, "expected_recall_at_0.8": theory,
            "flagged": int(len(flagged)),
            "precision_at_0.7": float((similarity >= 0.7).mean()) if len(flagged) else 1.0,
            "precision_at_0.6": float((similarity >= 0.6).mean()) if len(flagged) else 1.0,
            "unrelated_flagged": int((similarity == 0).sum()), "distant_flagged": distant_flagged,
            "near_edit_fraction": near_edits, "distant_edit_fraction": distant_edits,
            "jaccard_range_near": [min(true_j[c] for c in near_copies), max(true_j[c] for c in near_copies)], "recall_by_jaccard": by_bin, "seconds": seconds,
            "stats": {k: v for k, v in result.stats.items() if k != "config"}}


def scaling(docs: list[str], tmp: Path, cfg: DedupConfig, shards: int = 4) -> dict:
    paths = write_shards(docs, tmp / "scaling", shards=shards)
    out = {}
    drops = []
    for workers in (1, 2):
        result = deduplicate(paths, tmp / f"scaling-work-{workers}", cfg, workers=workers)
        drops.append(result.drop)
        out[workers] = {"signature_seconds": result.stats["signature_seconds"], "seconds": result.stats["seconds"],
                        "signature_docs_per_s": len(docs) / result.stats["signature_seconds"]}
    return {"documents": len(docs), "shards": shards, "cores": os.cpu_count(), "by_workers": out,
            "signature_speedup": out[1]["signature_seconds"] / out[2]["signature_seconds"],
            "total_speedup": out[1]["seconds"] / out[2]["seconds"], "identical": drops[0] == drops[1]}


def make_memory_dataset(n: int, folder: Path) -> list[Path]:
    """n short documents (20-60 words), 5% exact copies (case changed) and 5% one-word edits."""
    maker = TextMaker(seed=n)
    base = int(n * 0.9)
    texts = maker.docs(base, 20, 60)
    sources = maker.rng.integers(0, base, size=n - base)
    for k, s in enumerate(sources.tolist()):
        texts.append(texts[s].upper() if k % 2 else maker.edit(texts[s], 1 / 40))
    per_shard = 100_000
    return write_shards(texts, folder, shards=max(1, -(-n // per_shard)))


def peak_rss_mb() -> float:
    """Peak resident memory of this process since it started, in MB.

    Linux's ``ru_maxrss`` carries the parent's peak across fork and exec, so a child started by a big
    parent would report the parent's peak; ``VmHWM`` belongs to this process's own address space.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_memory_child(folder: str, merge_memory_mb: int) -> None:
    """Run in a fresh process: deduplicate the shards in ``folder``, print peak memory as JSON."""
    import pyarrow.parquet  # noqa: F401  (what deduplicate imports, in the baseline)
    import rensa  # noqa: F401
    import xxhash  # noqa: F401

    baseline = peak_rss_mb()
    shards = sorted(Path(folder).glob("*.parquet"))
    with tempfile.TemporaryDirectory() as work:
        result = deduplicate(shards, Path(work), DedupConfig(merge_memory_mb=merge_memory_mb), workers=1)
    print(json.dumps({"baseline_mb": baseline, "peak_mb": peak_rss_mb(),
                      "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "stats": {k: v for k, v in result.stats.items() if k != "config"}}))


def memory(sizes: list[int], tmp: Path, extra_budget_mb: int | None) -> list[dict]:
    rows = []
    runs = [(n, 256) for n in sizes]
    if extra_budget_mb:
        runs.append((sizes[-1], extra_budget_mb))
    made: dict[int, Path] = {}
    for n, budget in runs:
        if n not in made:
            folder = tmp / f"memory-{n}"
            t0 = time.perf_counter()
            make_memory_dataset(n, folder)
            print(f"  made {n:,} documents in {time.perf_counter() - t0:.0f} s", flush=True)
            made[n] = folder
        out = subprocess.run([sys.executable, __file__, "--measure-memory", str(made[n]),
                              "--merge-memory-mb", str(budget)], capture_output=True, text=True, check=True)
        measured = json.loads(out.stdout.strip().splitlines()[-1])
        stats = measured["stats"]
        rows.append({"documents": n, "merge_memory_mb": budget, "peak_mb": measured["peak_mb"],
                     "baseline_mb": measured["baseline_mb"],
                     "above_baseline_mb": measured["peak_mb"] - measured["baseline_mb"],
                     "seconds": stats["seconds"], "docs_per_s": stats["documents_per_second"],
                     "removed": stats["removed"], "merge_buckets": stats["merge_buckets"]})
        print(f"  {n:,} documents (merge budget {budget} MB): peak {measured['peak_mb']:.0f} MB, "
              f"{stats['seconds']:.1f} s", flush=True)
    return rows


# --- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=20000, help="documents for the throughput runs")
    parser.add_argument("--scaling-docs", type=int, default=40000, help="documents for the 1 vs 2 processes run")
    parser.add_argument("--peer-docs", type=int, default=1000, help="documents for datatrove and numpy")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-sizes", default="10000,100000,1000000")
    parser.add_argument("--extra-budget-mb", type=int, default=16,
                        help="also run the largest size with this merge budget (0: skip)")
    parser.add_argument("--out", type=Path, default=RESULTS / "curate_minhash.json")
    parser.add_argument("--measure-memory", help=argparse.SUPPRESS)
    parser.add_argument("--merge-memory-mb", type=int, default=256, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure_memory:
        measure_memory_child(args.measure_memory, args.merge_memory_mb)
        return {}

    cfg = DedupConfig()
    results: dict = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                 "processor": platform.processor() or platform.machine()},
                     "config": {"ngram": cfg.ngram, "bands": cfg.bands, "rows": cfg.rows},
                     "rensa_algorithm_version": dedup._rensa_version()}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        print("signature throughput, one core ...", flush=True)
        corpus = corpus_docs(args.docs)
        generated = TextMaker(seed=3).docs(args.docs, 350, 800)
        results["throughput"] = {"corpus slices": throughput(corpus, args.peer_docs, args.repeats, cfg),
                                 "generated English-like": throughput(generated, args.peer_docs, args.repeats, cfg)}
        phase = deduplicate(write_shards(corpus, tmp / "phase", shards=2), tmp / "phase-work", cfg)
        results["signature_phase"] = {"documents": len(corpus),
                                      "docs_per_s": len(corpus) / phase.stats["signature_seconds"],
                                      "dedup_docs_per_s": phase.stats["documents_per_second"]}
        print("planted near duplicates ...", flush=True)
        results["quality"] = quality(tmp, cfg)
        # The same with edits up to 4% (Jaccard down to ~0.6), where LSH's S-curve shows.
        results["quality_wider"] = quality(tmp / "wider", cfg, near_edits=(0.0, 0.04), distant_edits=(0.08, 0.20))
        print("scaling, 1 and 2 processes ...", flush=True)
        results["scaling"] = scaling(corpus_docs(args.scaling_docs, seed=1), tmp, cfg, shards=8)
        print("peak memory ...", flush=True)
        sizes = [int(s) for s in args.memory_sizes.split(",") if s]
        results["memory"] = memory(sizes, tmp, args.extra_budget_mb or None)

    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return results


def print_table(r: dict) -> None:
    print("\n== MinHash signatures, one core (14 bands x 8 rows, word 5-grams) ==")
    print(f"{'documents':24s} {'mean KB':>8s} {'groundup/s':>11s} {'datatrove/s':>12s} {'numpy/s':>9s} "
          f"{'x datatrove':>12s} {'x numpy':>8s}")
    for name, t in r["throughput"].items():
        print(f"{name:24s} {t['mean_bytes'] / 1000:8.1f} {t['groundup_docs_per_s']:11,.0f} "
              f"{t['datatrove_docs_per_s']:12,.0f} {t['numpy_minhash_docs_per_s']:9,.0f} "
              f"{t['ratio_vs_datatrove']:12.1f} {t['ratio_vs_numpy']:8.1f}")
    p = r["signature_phase"]
    print(f"deduplicate's signature phase (read, exact + band keys, runs written): {p['docs_per_s']:,.0f} docs/s; "
          f"whole dedup {p['dedup_docs_per_s']:,.0f} docs/s (1 process)")
    for key in ("quality", "quality_wider"):
        print_quality(r[key])
    print_rest(r)


def print_quality(q: dict) -> None:
    print("\n== Planted near duplicates ==")
    lo, hi = q["near_edit_fraction"]
    dlo, dhi = q["distant_edit_fraction"]
    jlo, jhi = q["jaccard_range_near"]
    print(f"{q['documents']:,} documents, {q['planted_near']} near copies ({lo:.0%}-{hi:.0%} of words edited, "
          f"Jaccard {jlo:.2f}-{jhi:.2f}), {q['planted_distant']} distant copies ({dlo:.0%}-{dhi:.0%} edited)")
    print(f"recall at Jaccard >= 0.8: {q['recall_at_0.8']:.3f} over {q['pairs_jaccard_ge_0.8']} pairs "
          f"(LSH theory for these pairs: {q['expected_recall_at_0.8']:.3f})")
    print(f"precision = share of dropped documents whose true Jaccard with their survivor is >= 0.7: "
          f"{q['precision_at_0.7']:.4f} of {q['flagged']} dropped (>= 0.6: {q['precision_at_0.6']:.4f}); "
          f"distant copies dropped: {q['distant_flagged']}; unrelated documents dropped: {q['unrelated_flagged']}")
    print("recall by true Jaccard: " + ", ".join(f"{k}: {v['recall']:.3f} ({v['pairs']})"
                                                 for k, v in q["recall_by_jaccard"].items()))


def print_rest(r: dict) -> None:
    s = r["scaling"]
    print("\n== Scaling (signature phase of deduplicate) ==")
    for w, v in s["by_workers"].items():
        print(f"{w} process(es): {v['signature_docs_per_s']:,.0f} docs/s, signature phase {v['signature_seconds']:.2f} s, "
              f"total {v['seconds']:.2f} s")
    print(f"speedup 2 vs 1: {s['signature_speedup']:.2f}x signatures, {s['total_speedup']:.2f}x total on "
          f"{s['cores']} cores; identical drops: {s['identical']}")
    print("\n== Peak memory of deduplicate (one process, short documents, 10% duplicates) ==")
    print(f"{'documents':>10s} {'budget MB':>10s} {'peak MB':>8s} {'baseline':>9s} {'above':>7s} {'seconds':>8s} "
          f"{'docs/s':>8s} {'removed':>8s} {'buckets':>8s}")
    for m in r["memory"]:
        print(f"{m['documents']:10,d} {m['merge_memory_mb']:10d} {m['peak_mb']:8.0f} {m['baseline_mb']:9.0f} "
              f"{m['above_baseline_mb']:7.0f} {m['seconds']:8.1f} {m['docs_per_s']:8,.0f} {m['removed']:8,d} "
              f"{m['merge_buckets']:8d}")


if __name__ == "__main__":
    main()
