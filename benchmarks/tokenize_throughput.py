"""Tokenize throughput: `groundup tokenize` against Hugging Face tokenizers on the same text and tokenizer.

Trains a byte-level BPE on the embedded corpus in a temporary directory, then, in one process:

- groundup: the tokenize stage's real ``run()`` with every worker: reads the corpus, encodes
  (tiktoken built from the same tokenizer.json), writes train.bin / val.bin and meta.json;
- tokenizers: ``Tokenizer.encode_batch`` and ``encode_batch_fast`` (its own threads, every core)
  on the same documents already in memory, so the peer is not charged for reading or writing.

Each is timed ``--repeats`` times; the table shows medians in MB/s (UTF-8 bytes of text per second)
and groundup's ratio to each. The ids are checked to be identical. JSON goes to benchmarks/results/.

    python benchmarks/tokenize_throughput.py [--repeats 3] [--vocab-size 8192] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import tokenizers

from groundup.corpus import STDLIB, load_documents, split_of
from groundup.tokenizer import run as tokenizer_stage
from groundup.tokens import tokenize as tokenize_stage
from groundup.tokens.datasets import load_tokens
from text_rate_common import rate_row, report

RESULTS = Path(__file__).resolve().parent / "results"


def time_it(fn, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - t0)
    return seconds


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--workers", type=int, default=None, help="tokenize workers (default: one per core)")
    parser.add_argument("--val-fraction", type=float, default=0.05)
    parser.add_argument("--out", type=Path, default=RESULTS / "tokenize_throughput.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(f"training a {args.vocab_size}-token BPE on the embedded corpus ...", flush=True)
        tokenizer_dir = tokenizer_stage.run(tokenizer_stage.Config(
            data=STDLIB, out=tmp / "tokenizer", vocab_size=args.vocab_size, val_fraction=args.val_fraction))
        cfg = tokenize_stage.Config(data=STDLIB, tokenizer=tokenizer_dir, out=tmp / "tokens",
                                    val_fraction=args.val_fraction, workers=args.workers)

        documents = [d for d in load_documents(STDLIB) if d.text]
        texts = [d.text for d in documents]
        n_bytes = sum(len(t.encode("utf-8")) for t in texts)
        hf = tokenizers.Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
        hf.encode_special_tokens = True  # the same semantics: special-token strings in text are text

        ours = time_it(lambda: tokenize_stage.run(cfg), args.repeats)
        meta = json.loads((cfg.out / "meta.json").read_text())
        assert sum(meta["bytes"].values()) == n_bytes, "the stage and the benchmark read different text"
        peers = {
            "tokenizers encode_batch": time_it(lambda: hf.encode_batch(texts, add_special_tokens=False),
                                               args.repeats),
            "tokenizers encode_batch_fast": time_it(lambda: hf.encode_batch_fast(texts, add_special_tokens=False),
                                                    args.repeats),
        }

        # Same ids: tokenizers' encodings, laid out as the stage lays them out, equal the files.
        encodings = hf.encode_batch_fast(texts, add_special_tokens=False)
        eos = meta["eos_id"]
        identical = True
        for split in ("train", "val"):
            expected = [i for doc, enc in zip(documents, encodings, strict=True)
                        if split_of(doc.id, args.val_fraction) == split for i in (*enc.ids, eos)]
            identical &= bool(np.array_equal(load_tokens(cfg.out, split), np.asarray(expected)))

    rows = [rate_row(f"groundup tokenize (run(), {meta['workers']} workers, {meta['encoder']})", ours, n_bytes)]
    rows += [rate_row(name, seconds, n_bytes) for name, seconds in peers.items()]

    result = {
        "benchmark": "tokenize_throughput",
        "text_megabytes": n_bytes / 1e6,
        "documents": len(texts),
        "vocab_size": args.vocab_size,
        "repeats": args.repeats,
        "identical_ids": identical,
        "rows": rows,
        "cpu_count": os.cpu_count(),
        "load_average_after": os.getloadavg(),
        "platform": platform.platform(),
        "tokenizers": tokenizers.__version__,
        "tiktoken": __import__("tiktoken").__version__,
        "note": "groundup's time includes reading the corpus and writing train.bin/val.bin; "
                "tokenizers encodes documents already in memory",
    }
    print(f"\n{n_bytes / 1e6:.1f} MB of text, {len(texts)} documents, vocab {args.vocab_size}, "
          f"median of {args.repeats}; ids identical: {identical}\n")
    report(rows, result, args.out)
    return result


if __name__ == "__main__":
    main()
