"""Decontamination throughput: groundup's numpy 13-gram check against a plain-Python set of word 13-grams.

On one core, against an evaluation set of 10,000 items (40-80 words each, JSONL, made here), the
training text is documents of 200-2,000 words made from the same 4,000-word vocabulary, 2% of them
holding a planted 13-word span of an evaluation item. Timed on the same documents:

- groundup: ``Decontaminate.filter_batch`` over batches of 64 documents (as the curate chain runs it);
- the reference: lower-case, ``re.findall(r"[a-z0-9]+|[^\\x00-\\x7f]+")``, every 13-word tuple looked up
  in a Python ``set`` of the evaluation items' 13-gram tuples (GPT-3's procedure written the obvious way).

Both must flag exactly the planted documents. Prints MB/s of UTF-8 text for each and the ratio, and
writes benchmarks/results/decontam.json.

    python benchmarks/decontam.py [--mb 50] [--items 10000]
"""

from __future__ import annotations

import argparse
import json
import random
import re
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
        t0 = time.perf_counter()
        flagged = set()
        for start in range(0, len(docs), 64):
            for k, (keep, _) in enumerate(step.filter_batch(docs[start:start + 64])):
                if not keep:
                    flagged.add(start + k)
        seconds = time.perf_counter() - t0
        assert flagged == planted, (len(flagged), len(planted))
        results["groundup_mb_per_s"] = round(size / 1e6 / seconds, 1)
        reference = set()
        for t in items:
            reference |= reference_grams(t)
        t0 = time.perf_counter()
        ref_flagged = {i for i, d in enumerate(docs) if not reference.isdisjoint(reference_grams(d.text))}
        ref_seconds = time.perf_counter() - t0
        assert ref_flagged == planted
        results["python_set_mb_per_s"] = round(size / 1e6 / ref_seconds, 1)
        results["speedup"] = round(ref_seconds / seconds, 2)
    print(f"{'':28}{'MB/s (one core)':>16}")
    print(f"{'groundup Decontaminate':28}{results['groundup_mb_per_s']:>16}")
    print(f"{'Python set of 13-grams':28}{results['python_set_mb_per_s']:>16}")
    print(f"ratio {results['speedup']}x; {results['documents']} documents, {results['mb']} MB, "
          f"{len(planted)} planted, all found by both; index of {args.items} items in {results['index_seconds']} s")
    out = Path(__file__).parent / "results" / "decontam.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
