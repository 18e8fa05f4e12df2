"""Quality scorer speed: groundup's hashed n-gram scorer (the `score` step), documents per second on one core.

Documents of 100-1,000 words (about 0.6-6 KB) are made here; a scorer is trained on 2,000 of them (scores
from a fixed rule) and then times ``ScoreFilter.filter_batch`` over batches of 64, as the curate chain runs it.
datatrove's ``FastTextClassifierFilter`` needs a fastText ``.bin`` model and the ``fasttext`` package; it
calls ``model.predict(text.replace("\n", " "), k=-1)`` once per document. When ``fasttext`` is importable a
supervised model (word bigrams, the same 2,000 documents, labels = the rule's score) is trained and that same
call is timed on the same documents, which is the filter's work without datatrove's pipeline around it
(datatrove itself is in the ``bench`` extra; the table says whether it is installed).

    python benchmarks/scorer_speed.py [--docs 20000]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import tempfile
import time
from pathlib import Path

from groundup.curate.scorer import HashedNgramModel, ScoreFilter
from groundup.curate.text import Document

EDU = ("theorem", "experiment", "lesson", "equation", "photosynthesis")


def make_docs(n: int, rng: random.Random) -> tuple[list[str], list[int]]:
    vocab = [f"w{i}" for i in range(5000)]
    texts, scores = [], []
    for _ in range(n):
        score = rng.randint(0, 5)
        words = [rng.choice(vocab) for _ in range(rng.randint(100, 1000))] + list(rng.sample(EDU, score))
        rng.shuffle(words)
        texts.append(" ".join(words))
        scores.append(score)
    return texts, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=20_000)
    args = parser.parse_args()
    rng = random.Random(0)
    texts, scores = make_docs(args.docs, rng)
    results = {"documents": args.docs, "mb": round(sum(len(t) for t in texts) / 1e6, 2)}
    with tempfile.TemporaryDirectory() as tmp:
        model = HashedNgramModel()
        model.fit(texts[:2000], scores[:2000], epochs=3)
        model.save(Path(tmp) / "scorer", {"threshold": 3.0})
        step = ScoreFilter(scorer=str(Path(tmp) / "scorer"))
        docs = [Document(t, "bench", i) for i, t in enumerate(texts)]
        t0 = time.perf_counter()
        for start in range(0, len(docs), 64):
            step.filter_batch(docs[start:start + 64])
        seconds = time.perf_counter() - t0
    results["groundup_docs_per_s"] = round(len(docs) / seconds)
    results["datatrove_installed"] = importlib.util.find_spec("datatrove") is not None
    fasttext = None
    if importlib.util.find_spec("fasttext") is not None:
        import fasttext
    if hasattr(fasttext, "train_supervised"):  # a package named fasttext without it is not the fastText bindings
        with tempfile.TemporaryDirectory() as tmp:
            train = Path(tmp) / "train.txt"
            train.write_text("".join(f"__label__{s} {t}\n" for t, s in
                                         zip(texts[:2000], scores[:2000], strict=True)))
            ft = fasttext.train_supervised(str(train), wordNgrams=2, epoch=3, verbose=0, thread=1)
        t0 = time.perf_counter()
        for t in texts:
            ft.predict(t.replace("\n", " "), k=-1)
        results["fasttext_predict_docs_per_s"] = round(len(texts) / (time.perf_counter() - t0))
        results["ratio"] = round(results["groundup_docs_per_s"] / results["fasttext_predict_docs_per_s"], 2)
    print(f"{'':44}{'documents/s (one core)':>24}")
    print(f"{'groundup score step (hashed n-gram)':44}{results['groundup_docs_per_s']:>24,}")
    print(f"{'fastText predict (FastTextClassifierFilter)':44}{results.get('fasttext_predict_docs_per_s', '-'):>24}")
    print(f"datatrove installed: {results['datatrove_installed']}; ratio {results.get('ratio')}")
    out = Path(__file__).parent / "results" / "scorer_speed.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
