"""Tokenizer training speed: groundup's deterministic BPE trainer against Hugging Face tokenizers' BpeTrainer.

Both train a byte-level BPE on the text `groundup run` trains its tokenizer on (the training split of the
embedded corpus), with the same split regex, vocabulary size, minimum pair count, special tokens and
byte alphabet, from documents already in memory:

- groundup: ``groundup.tokenizer.train.train_tokenizer`` (what ``groundup tokenizer`` runs; one thread);
- tokenizers: ``Tokenizer.train_from_iterator`` with a ``BpeTrainer`` (its own threads, every core);
- rustbpe (nanochat's trainer), when it is installed: it keeps no pair count threshold, so the row also
  says whether its merges are groundup's (the same tie rule).

Each is timed ``--repeats`` times, the trainers taking turns in every round (so a burst of load from
elsewhere falls on all of them); the table shows medians in MB/s (UTF-8 bytes of training text per
wall-clock second), groundup's ratio to each, and the median CPU seconds (every thread's). groundup's
tokenizer.json must be the same bytes every time. JSON goes to benchmarks/results/.

    python benchmarks/tokenizer_train.py [--repeats 3] [--vocab-size 8192]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import time
from pathlib import Path

import tokenizers
from tokenizers import pre_tokenizers, trainers

from groundup.corpus import STDLIB, load_documents, split_of
from groundup.tokenizer import SPECIAL_TOKENS, resolve_pattern, token_bytes
from groundup.tokenizer.train import build_tokenizer, train_tokenizer
from text_rate_common import rate_row, report

RESULTS = Path(__file__).resolve().parent / "results"


def merged_tokens(spec: str) -> list[bytes]:
    """The bytes of each merge's token, in merge order, from a tokenizer.json."""
    return [token_bytes(a + b) for a, b in json.loads(spec)["model"]["merges"]]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--min-frequency", type=int, default=2)
    parser.add_argument("--pattern", default="gpt4")
    parser.add_argument("--val-fraction", type=float, default=0.05)
    parser.add_argument("--out", type=Path, default=RESULTS / "tokenizer_train.json")
    args = parser.parse_args(argv)
    pattern = resolve_pattern(args.pattern)

    texts = [d.text for d in load_documents(STDLIB) if split_of(d.id, args.val_fraction) == "train"]
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    print(f"{n_bytes / 1e6:.1f} MB of training text ({len(texts)} documents), vocab {args.vocab_size}, "
          f"{os.cpu_count()} cores, median of {args.repeats}", flush=True)

    merges: dict[str, list[bytes]] = {}  # each trainer's merged tokens, in merge order
    hashes: set[str] = set()  # of groundup's tokenizer.json, one per distinct output

    def groundup() -> None:
        spec = train_tokenizer(texts, pattern=pattern, vocab_size=args.vocab_size,
                               min_frequency=args.min_frequency).to_str()
        hashes.add(hashlib.sha256(spec.encode()).hexdigest())
        merges["groundup"] = merged_tokens(spec)

    def hf() -> None:
        tok = build_tokenizer(pattern)
        tok.train_from_iterator(texts, trainers.BpeTrainer(
            vocab_size=args.vocab_size, min_frequency=args.min_frequency, show_progress=False,
            special_tokens=list(SPECIAL_TOKENS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        merges["tokenizers"] = merged_tokens(tok.to_str())

    trainers_to_time = {"groundup train_tokenizer (1 thread)": groundup,
                        f"tokenizers BpeTrainer ({tokenizers.__version__}, every core)": hf}
    try:
        import rustbpe

        def nanochat() -> None:
            tok = rustbpe.Tokenizer()
            tok.train_from_iterator(texts, args.vocab_size - len(SPECIAL_TOKENS), pattern=pattern)
            ranks = sorted(tok.get_mergeable_ranks(), key=lambda pair: pair[1])
            merges["rustbpe"] = [bytes(token) for token, _ in ranks[256:]]

        trainers_to_time["rustbpe (every core)"] = nanochat
    except ImportError:
        print("rustbpe not installed: its row is left out (pip install -e '.[bench]')")

    seconds: dict[str, list[float]] = {name: [] for name in trainers_to_time}
    cpu_seconds: dict[str, list[float]] = {name: [] for name in trainers_to_time}
    for _ in range(args.repeats):
        for name, fn in trainers_to_time.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            seconds[name].append(time.perf_counter() - wall)
            cpu_seconds[name].append(time.process_time() - cpu)
    rows = [rate_row(name, seconds[name], n_bytes, cpu_seconds=cpu_seconds[name],
                     median_cpu_seconds=statistics.median(cpu_seconds[name])) for name in trainers_to_time]

    ours, theirs = merges["groundup"], merges["tokenizers"]
    result = {
        "benchmark": "tokenizer_train",
        "text_megabytes": n_bytes / 1e6,
        "documents": len(texts),
        "vocab_size": args.vocab_size,
        "min_frequency": args.min_frequency,
        "repeats": args.repeats,
        "groundup_identical_every_repeat": len(hashes) == 1,
        "merges": len(ours),
        "merged_tokens_shared_with_tokenizers": len(set(ours) & set(theirs)),
        "rows": rows,
        "cpu_count": os.cpu_count(),
        "load_average_after": os.getloadavg(),
        "platform": platform.platform(),
        "tokenizers": tokenizers.__version__,
    }
    if "rustbpe" in merges:
        result["rustbpe_same_merges"] = merges["rustbpe"] == ours
    print(f"\ngroundup's tokenizer.json identical in every repeat: {result['groundup_identical_every_repeat']}; "
          f"{len(ours)} merges, {result['merged_tokens_shared_with_tokenizers']} of its tokens also in tokenizers' "
          f"(they break ties between equal counts differently)"
          + (f"; rustbpe's merges the same: {result['rustbpe_same_merges']}" if "rustbpe" in merges else "") + "\n")
    report(rows, result, args.out, extra_column=("CPU s", "median_cpu_seconds"))
    return result


if __name__ == "__main__":
    main()
