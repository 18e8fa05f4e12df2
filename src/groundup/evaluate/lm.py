"""Language-modelling metrics over the one scorer (:mod:`groundup.infer.score`): rolling windows, documents,
token shards.

Everything that scores text by likelihood goes through ``groundup.infer.score.score_requests``: multiple
choice, rolling perplexity, the lm-evaluation-harness adapter, pretraining's held-out loss and bits per
byte (:func:`score_shard`, the same function `groundup evaluate` runs on a token shard, so a run's
``held_out_bits_per_byte`` and `groundup evaluate --tasks <tokens>/val.bin` are the same number), and the
server's prompt log-probabilities. The windows and the metrics follow lm-evaluation-harness exactly:

- a document is scored with rolling windows (``lm_eval.utils.get_rolling_token_windows`` followed by
  ``make_disjoint_window``): the first window is the prefix token (EOS) and the first ``max_length``
  tokens, each later window predicts ``stride`` new tokens with ``max_length - stride`` tokens of
  context. ``stride == max_length`` is lm-eval's own setting (``context_len=1``, disjoint windows) and the
  default everywhere here, pretraining's final evaluation included;
- ``word_perplexity = exp(-sum ll / sum words)`` with words ``re.split(r"\\s+", text)``,
  ``byte_perplexity = exp(-sum ll / sum bytes)``, ``bits_per_byte = -sum ll / sum bytes / ln 2``.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from groundup.infer.score import ScoreRequest, model_max_length, score_requests
from groundup.tokens.datasets import eos_positions

# ---------------------------------------------------------------------------- rolling windows


def rolling_windows(tokens: Sequence[int], *, prefix_token: int, max_length: int,
                    stride: int | None = None) -> Iterator[tuple[list[int], list[int]]]:
    """(context, continuation) windows that score every token of ``tokens`` exactly once.

    lm-eval's ``get_rolling_token_windows`` with ``context_len = max_length - stride + 1``, then
    ``make_disjoint_window``: the first window predicts the first ``max_length`` tokens after the
    prefix token; each later one predicts the next ``stride`` tokens after ``max_length - stride``
    tokens of context (the last one fewer).
    """
    stride = stride or max_length
    if not 1 <= stride <= max_length:
        raise ValueError(f"need 1 <= stride <= max_length, got stride={stride}, max_length={max_length}")
    tokens = list(tokens)
    if not tokens:
        return
    first = min(max_length, len(tokens))
    window = [prefix_token] + tokens[: first - 1], tokens[:first]
    yield window[0][: len(window[0]) - (len(window[1]) - 1)], window[1]
    predicted = first
    while predicted < len(tokens):
        n_pred = min(len(tokens) - predicted, stride)
        end = predicted + n_pred
        inp, pred = tokens[max(end - max_length - 1, 0): end - 1], tokens[end - n_pred: end]
        yield inp[: len(inp) - (len(pred) - 1)], pred
        predicted += n_pred


def count_words(text: str) -> int:
    """lm-eval's word count for word perplexity (``Task.count_words``)."""
    return len(re.split(r"\s+", text))


@dataclass
class LMScore:
    """Summed log-likelihood of some documents and what it was measured over."""

    loglikelihood: float = 0.0
    """Natural-log likelihood of every scored token, summed."""
    tokens: int = 0
    """Tokens scored."""
    bytes: int = 0
    """UTF-8 bytes of the documents (for bits per byte)."""
    words: int = 0
    """Words of the documents, lm-eval's way (for word perplexity)."""
    documents: int = 0
    """Documents scored."""

    def add(self, other: LMScore) -> None:
        self.loglikelihood += other.loglikelihood
        self.tokens += other.tokens
        self.bytes += other.bytes
        self.words += other.words
        self.documents += other.documents

    def metrics(self) -> dict[str, float]:
        nll = -self.loglikelihood
        return {
            "perplexity": math.exp(nll / self.tokens) if self.tokens else math.nan,
            "word_perplexity": math.exp(nll / self.words) if self.words else math.nan,
            "byte_perplexity": math.exp(nll / self.bytes) if self.bytes else math.nan,
            "bits_per_byte": nll / self.bytes / math.log(2) if self.bytes else math.nan,
            "tokens": self.tokens, "bytes": self.bytes, "words": self.words, "documents": self.documents,
        }


def score_documents(model: nn.Module, tokenizer, texts: Sequence[str], *, stride: int | None = None,
                    max_length: int | None = None, batch_size: int = 16, device=None,
                    progress: bool = False) -> list[LMScore]:
    """Rolling log-likelihood of each document (lm-eval's ``loglikelihood_rolling``), one score per text."""
    max_length = max_length or model_max_length(model)
    prefix = tokenizer.eos_id
    if prefix is None:
        raise ValueError("the tokenizer has no EOS token to start each document from")
    token_lists = tokenizer.encode_batch(list(texts))
    return score_token_documents(model, token_lists, texts=texts, prefix_token=prefix, stride=stride,
                                 max_length=max_length, batch_size=batch_size, device=device, progress=progress)


def score_token_documents(model: nn.Module, token_lists: Sequence[Sequence[int]], *,
                          texts: Sequence[str] | None = None, prefix_token: int, stride: int | None = None,
                          max_length: int | None = None, batch_size: int = 16, device=None,
                          progress: bool = False) -> list[LMScore]:
    """Rolling log-likelihood of each tokenized document; bytes and words come from ``texts`` when given."""
    max_length = max_length or model_max_length(model)
    requests, owner = [], []
    for d, tokens in enumerate(token_lists):
        for ctx, cont in rolling_windows(tokens, prefix_token=prefix_token, max_length=max_length, stride=stride):
            requests.append(ScoreRequest(tuple(ctx), tuple(cont)))
            owner.append(d)
    scores = score_requests(model, requests, batch_size=batch_size, max_length=max_length, device=device,
                            progress=progress)
    per_doc = [[] for _ in token_lists]
    for d, s in zip(owner, scores, strict=True):
        per_doc[d].append(s.loglikelihood)
    texts = texts if texts is not None else [None] * len(token_lists)
    return [LMScore(loglikelihood=math.fsum(lls), tokens=len(tokens), documents=1,
                    bytes=len(text.encode("utf-8")) if text is not None else 0,
                    words=count_words(text) if text is not None else 0)
            for lls, tokens, text in zip(per_doc, token_lists, texts, strict=True)]


def score_shard(model: nn.Module, tokens: np.ndarray, eos_id: int, *, n_bytes: int = 0, stride: int | None = None,
                max_length: int | None = None, batch_size: int = 16, device=None, max_windows: int | None = None,
                progress: bool = False) -> LMScore:
    """Rolling log-likelihood of the documents of a token shard (EOS-separated, as `groundup tokenize` writes
    them), summed in document order: pretraining's held-out score, and what `groundup evaluate` gives for the
    same shard. ``n_bytes``: the documents' UTF-8 bytes (the shard's meta.json), for bits per byte.

    ``max_windows``: score only the first windows of the first documents (a quick estimate during training).
    """
    max_length = max_length or model_max_length(model)
    docs = [d.tolist() for d in split_token_shard(np.asarray(tokens), eos_id)]
    if max_windows is None:
        total = LMScore()
        for score in score_token_documents(model, docs, prefix_token=eos_id, stride=stride, max_length=max_length,
                                           batch_size=batch_size, device=device, progress=progress):
            total.add(score)
        total.bytes = n_bytes
        return total
    requests, used = [], 0
    for doc in docs:
        if len(requests) >= max_windows:
            break
        used += 1
        for ctx, cont in rolling_windows(doc, prefix_token=eos_id, max_length=max_length, stride=stride):
            requests.append(ScoreRequest(tuple(ctx), tuple(cont)))
    scores = score_requests(model, requests[:max_windows], batch_size=batch_size, max_length=max_length,
                            device=device)
    return LMScore(loglikelihood=math.fsum(s.loglikelihood for s in scores), tokens=sum(s.tokens for s in scores),
                   bytes=n_bytes, documents=used)


# ---------------------------------------------------------------------------- inputs


def read_documents(path: str | Path, *, text_field: str = "text") -> list[str]:
    """Documents of a text file (the whole file is one document), a JSONL file (one per line, its
    ``text_field``) or a folder of such files (sorted)."""
    from groundup.artifacts import JsonlStats, read_jsonl

    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl", ".md") and p.is_file())
        if not files:
            raise FileNotFoundError(f"{path}: no .txt, .md or .jsonl files inside")
        return [doc for f in files for doc in read_documents(f, text_field=text_field)]
    if path.suffix == ".jsonl":
        docs = []
        stats = JsonlStats()
        for lineno, record in read_jsonl(path, stats=stats, strict=True):
            if not isinstance(record.get(text_field), str):
                raise ValueError(f"{path}:{lineno}: no string field {text_field!r}")
            docs.append(record[text_field])
        stats.warn(logging.getLogger(__name__))
        return docs
    return [path.read_text(encoding="utf-8")]


def split_token_shard(tokens: np.ndarray, eos_id: int) -> list[np.ndarray]:
    """A token shard (documents separated by EOS, as `groundup tokenize` writes them) as its documents."""
    cuts = eos_positions(tokens, eos_id)
    docs, start = [], 0
    for cut in cuts.tolist() + [len(tokens)]:
        if cut > start:
            docs.append(tokens[start:cut])
        start = cut + 1
    return docs
