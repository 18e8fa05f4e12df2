"""Tokenizers compared as an evaluation: fertility, bytes per token, continued words, parity across languages.

The measures are those of ``groundup.tokenizer.metrics`` (what ``stats.json`` reports), run over
several tokenizer files on the same texts. Parity (Petrov et al., 2023) compares the token counts of
the same sentences in two languages: a parallel pair of files, line i of one translating line i of
the other; ``parity`` is the mean over lines of tokens(second) / tokens(first), 1 being fair.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from groundup.artifacts import find_tokenizer_file
from groundup.tokenizer import Tokenizer
from groundup.tokenizer.metrics import compression, continued_words


def read_lines(path: Path) -> list[str]:
    from groundup.evaluate.lm import read_documents

    if path.suffix == ".jsonl":
        return read_documents(path)
    return [line for line in path.read_text(encoding="utf-8").splitlines()]


def parity(tokenizer: Tokenizer, first: Sequence[str], second: Sequence[str], *, names=("first", "second")) -> dict:
    if len(first) != len(second):
        raise ValueError(f"parallel texts differ in length: {names[0]} has {len(first)} lines, "
                         f"{names[1]} has {len(second)}")
    pairs = [(a, b) for a, b in zip(tokenizer.encode_batch(first), tokenizer.encode_batch(second), strict=True)
             if a and b]
    if not pairs:
        raise ValueError(f"no non-empty parallel lines in {names[0]} and {names[1]}")
    return {"lines": len(pairs), "parity": sum(len(b) / len(a) for a, b in pairs) / len(pairs),
            "total_ratio": sum(len(b) for _, b in pairs) / sum(len(a) for a, _ in pairs)}


def tokenizer_metrics(tokenizer_paths: Sequence[Path], texts: Sequence[Path], parallel: Sequence[Path] = ()
                      ) -> dict[str, dict[str, Any]]:
    """``{"tokenizer/<name>": {metric: value}}`` for each tokenizer file."""
    if parallel and len(parallel) != 2:
        raise ValueError(f"parallel texts come as a pair of files, got {len(parallel)}")
    corpus = [doc for path in texts for doc in read_lines(Path(path))]
    para = [read_lines(Path(p)) for p in parallel]
    results = {}
    for path in tokenizer_paths:
        file = find_tokenizer_file(path)
        name = file.parent.name if file.name == "tokenizer.json" else file.stem
        tok = Tokenizer.from_file(file)
        metrics: dict[str, Any] = {"vocab_size": tok.vocab_size}
        if corpus:
            comp = compression(tok, corpus)
            metrics.update(bytes_per_token=comp["bytes_per_token"], fertility=comp["tokens_per_word"],
                           continued_words=continued_words(tok, corpus)["continued_share"], n=comp["documents"])
        if para:
            p = parity(tok, para[0], para[1], names=tuple(str(x) for x in parallel))
            metrics.update(parity=p["parity"], parity_total_ratio=p["total_ratio"], parity_lines=p["lines"])
        key = f"tokenizer/{name}"
        while key in results:
            key += "'"
        results[key] = metrics
    return results
