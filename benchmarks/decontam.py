"""Decontamination throughput: groundup's numpy 13-gram check against a plain-Python set of word 13-grams.

On one core, against an evaluation set of 10,000 items (40-80 words each, JSONL, made here), the
training text is documents of 200-2,000 words made from the same 4,000-word vocabulary, 2% of them
holding a planted 13-word span of an evaluation item. Timed on the same documents:

- groundup: ``Decontaminate.filter_batch`` over batches of 64 documents (as the curate chain runs it);
- the reference: lower-case, ``re.findall(r"[a-z0-9]+|[^\\x00-\\x7f]+")``, every 13-word tuple looked up
  in a Python ``set`` of the evaluation items' 13-gram tuples (GPT-3's procedure written the obvious way).

Both must flag exactly the planted documents. Prints MB/s of UTF-8 text for each and the ratio, and
writes benchmarks/results/decontam.json. Each is timed ``--repeats`` times and the median kept, both as
wall-clock time and as the process's CPU time: on a machine shared with other work the wall-clock figure
is what this process got, the CPU-time one what one core does (the load average is printed with them).

    python benchmarks/decontam.py [--mb 30] [--items 10000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "curate"))

from test_curate_decontam import plant, sentence_text  # noqa: E402

from groundup.curate.decontam import Decontaminate  # noqa: E402
from groundup.curate.text import Document  # noqa: E402

_WORD = re.compile(r"[a-z0-9]+|[^\x00-\x7f]+")


def reference_grams(text: str, n: int = 13) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=30.0, help="MB of training text")
    parser.add_argument("--items", type=int, default=10_000, help="evaluation items")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each (the median is kept)")
    args = parser.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        eval_path = Path(tmp) / "eval.jsonl"
        items = [sentence_text(rng, rng.randint(40, 80)) for _ in range(args.items)]
        eval_path.write_text("".join(json.dumps({"question": t, "answer": "a"}) + "\n" for t in items))
        t0 = time.perf_counter()
        step = Decontaminate(files=[str(eval_path)])
        index_seconds = time.perf_counter() - t0
        docs, planted, size = [], set(), 0
        while size < args.mb * 1e6:
            if rng.random() < 0.02:
                planted.add(len(docs))
                text = plant(rng, rng.choice(items))
            else:
                text = sentence_text(rng, rng.randint(200, 2000))
            docs.append(Document(text, "bench", len(docs)))
            size += len(text.encode())
        results = {"items": args.items, "documents": len(docs), "mb": round(size / 1e6, 2),
                   "index_seconds": round(index_seconds, 3), "ngrams_indexed": int(step._index.hashes.size)}

        def groundup_flags() -> set[int]:
            flagged = set()
            for start in range(0, len(docs), 64):
                for k, (keep, _) in enumerate(step.filter_batch(docs[start:start + 64])):
                    if not keep:
                        flagged.add(start + k)
            return flagged

        reference = set()
        for t in items:
            reference |= reference_grams(t)

        def reference_flags() -> set[int]:
            return {i for i, d in enumerate(docs) if not reference.isdisjoint(reference_grams(d.text))}

        load = os.getloadavg()[0]
        for name, flags in (("groundup", groundup_flags), ("python_set", reference_flags)):
            wall, cpu = timed(flags, planted, args.repeats)
            results[f"{name}_mb_per_s"] = round(size / 1e6 / wall, 1)
            results[f"{name}_cpu_mb_per_s"] = round(size / 1e6 / cpu, 1)
        results["speedup"] = round(results["groundup_cpu_mb_per_s"] / results["python_set_cpu_mb_per_s"], 2)
        results["load_average"] = round((load + os.getloadavg()[0]) / 2, 2)
        results["cpus"] = os.cpu_count()
    print(f"{'':28}{'MB/s (wall)':>14}{'MB/s (CPU time)':>17}")
    print(f"{'groundup Decontaminate':28}{results['groundup_mb_per_s']:>14}{results['groundup_cpu_mb_per_s']:>17}")
    print(f"{'Python set of 13-grams':28}{results['python_set_mb_per_s']:>14}{results['python_set_cpu_mb_per_s']:>17}")
    print(f"ratio {results['speedup']}x (CPU time); {results['documents']} documents, {results['mb']} MB, "
          f"{len(planted)} planted, all found by both; index of {args.items} items in {results['index_seconds']} s; "
          f"load average {results['load_average']} on {results['cpus']} CPUs")
    out = Path(__file__).parent / "results" / "decontam.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


def timed(flags, planted: set[int], repeats: int) -> tuple[float, float]:
    """Median wall-clock and CPU seconds of ``flags()`` over ``repeats`` runs; each run must flag ``planted``."""
    walls, cpus = [], []
    for _ in range(max(1, repeats)):
        wall, cpu = time.perf_counter(), time.process_time()
        flagged = flags()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        assert flagged == planted, (len(flagged), len(planted))
    return statistics.median(walls), statistics.median(cpus)


if __name__ == "__main__":
    main()
