"""The one scorer: log-likelihood of (context, continuation) token pairs, and language-modelling metrics.

Everything that scores text by likelihood goes through :func:`score_requests`: multiple choice,
rolling perplexity, the lm-evaluation-harness adapter, and pretraining's held-out loss and bits per
byte (:func:`score_shard`, the same function `groundup evaluate` runs on a token shard, so a run's
``held_out_bits_per_byte`` and `groundup evaluate --tasks <tokens>/val.bin` are the same number).
The requests and the metrics follow lm-evaluation-harness exactly, so our numbers and theirs agree
on the same model:

- a request ``(context, continuation)`` is run as ``(context + continuation)[-(max_length + 1):][:-1]``
  and the log-probabilities of the continuation tokens are summed (``HFLM._loglikelihood_tokens``);
- a document is scored with rolling windows (``lm_eval.utils.get_rolling_token_windows`` followed by
  ``make_disjoint_window``): the first window is the prefix token (EOS) and the first ``max_length``
  tokens, each later window predicts ``stride`` new tokens with ``max_length - stride`` tokens of
  context. ``stride == max_length`` is lm-eval's own setting (``context_len=1``, disjoint windows);
- ``word_perplexity = exp(-sum ll / sum words)`` with words ``re.split(r"\\s+", text)``,
  ``byte_perplexity = exp(-sum ll / sum bytes)``, ``bits_per_byte = -sum ll / sum bytes / ln 2``.

Batch invariance: a request's score must not depend on which other requests share its batch. Each
sequence is right-padded to a length that depends on its own length only (a multiple of
``PAD_MULTIPLE``), only sequences of the same padded length share a batch, and each request's
log-probabilities are summed on their own in float64. Causal attention means padding on the right
never reaches the scored positions, so a sequence sees the same shapes in every batch it can land in
except for the batch dimension, which CPU and GPU matmul kernels tile without changing the
reduction order along the hidden dimension. Tests check equality at batch sizes 1, 7 and 32.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from groundup.model.transformer import Transformer

PAD_MULTIPLE = 32
"""Sequences are right-padded to a multiple of this many tokens; equal padded lengths share a batch."""
HEAD_ROWS = 64
"""The output head runs on blocks of exactly this many positions."""


@dataclass(frozen=True)
class Request:
    """Score ``continuation`` given ``context`` (token ids); ``context`` must hold at least one token."""

    context: tuple[int, ...]
    continuation: tuple[int, ...]


@dataclass(frozen=True)
class Score:
    loglikelihood: float
    """Summed natural-log probability of the continuation's tokens."""
    is_greedy: bool
    """Whether every continuation token is the argmax of its distribution (lm-eval's second field)."""
    tokens: int
    """Continuation tokens scored."""


def padded_length(n: int, max_length: int) -> int:
    return min(-(-n // PAD_MULTIPLE) * PAD_MULTIPLE, max_length)


def model_max_length(model: nn.Module) -> int:
    config = getattr(model, "config", None) or model.module.config  # a DDP wrapper holds the model
    return int(config.block_size)


@torch.no_grad()
def score_requests(model: nn.Module, requests: Sequence[Request], *, batch_size: int = 16,
                   max_length: int | None = None, device: str | torch.device | None = None,
                   progress: bool = False) -> list[Score]:
    """Log-likelihood of each request's continuation, in the order given; independent of ``batch_size``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    max_length = max_length or model_max_length(model)
    if device is None:
        device = next(model.parameters()).device
    inputs: list[list[int]] = []
    for i, req in enumerate(requests):
        if not req.context:
            raise ValueError(f"request {i}: empty context (use the EOS token as context to score from the start)")
        if not req.continuation:
            raise ValueError(f"request {i}: empty continuation")
        if len(req.continuation) > max_length:
            raise ValueError(f"request {i}: continuation of {len(req.continuation)} tokens exceeds "
                             f"max_length {max_length}")
        inputs.append(list(req.context + req.continuation)[-(max_length + 1):][:-1])

    # Longest first within each padded length (so a batch's memory peak shows up at once); ties by index.
    order = sorted(range(len(requests)), key=lambda i: (-padded_length(len(inputs[i]), max_length),
                                                        -len(inputs[i]), i))
    results: list[Score | None] = [None] * len(requests)
    batches: list[list[int]] = []
    for i in order:
        width = padded_length(len(inputs[i]), max_length)
        if batches and len(batches[-1]) < batch_size and \
                padded_length(len(inputs[batches[-1][0]]), max_length) == width:
            batches[-1].append(i)
        else:
            batches.append([i])

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(requests), desc="log-likelihood requests", unit="req")
    for batch in batches:
        width = padded_length(len(inputs[batch[0]]), max_length)
        x = torch.zeros(len(batch), width, dtype=torch.long)
        for row, i in enumerate(batch):
            x[row, : len(inputs[i])] = torch.tensor(inputs[i])
        x = x.to(device)
        rows, cols, targets, owner = [], [], [], []
        for row, i in enumerate(batch):
            n_cont, n_in = len(requests[i].continuation), len(inputs[i])
            rows += [row] * n_cont
            cols += range(n_in - n_cont, n_in)
            targets += requests[i].continuation
            owner += [row] * n_cont
        logprobs = _target_logprobs(model, x, torch.tensor(rows), torch.tensor(cols))  # (N, V)
        target_t = torch.tensor(targets, device=logprobs.device)
        picked = logprobs.gather(1, target_t[:, None])[:, 0].double().cpu().numpy()
        greedy = (logprobs.argmax(-1) == target_t).cpu().numpy()
        owner_np = np.asarray(owner)
        for row, i in enumerate(batch):
            mine = owner_np == row
            # math.fsum: the sum of a request's log-probs is exact, so it cannot depend on the batch.
            results[i] = Score(loglikelihood=math.fsum(picked[mine].tolist()), is_greedy=bool(greedy[mine].all()),
                               tokens=int(mine.sum()))
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    return results  # type: ignore[return-value]


def _target_logprobs(model: nn.Module, x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the vocabulary at the (row, col) positions only: the head is the costly part."""
    if type(model) is Transformer:  # not wrapped or sharded (FSDP's hooks run on forward only)
        h = model.hidden_states(x)  # (B, T, C)
        picked = h[rows.to(h.device), cols.to(h.device)]  # (N, C)
        # The head runs on fixed blocks of HEAD_ROWS rows (the last one zero-padded): how many rows a
        # batch gathers must not change a row's logits, and a matmul of one row takes another kernel
        # (a matrix-vector product) than a matmul of many, with different rounding.
        n = picked.shape[0]
        padded = picked.new_zeros(-(-n // HEAD_ROWS) * HEAD_ROWS, picked.shape[1])
        padded[:n] = picked
        logits = torch.cat([model.lm_head(block) for block in padded.split(HEAD_ROWS)])[:n]  # (N, V)
    else:  # any module whose forward gives logits (B, T, V)
        logits = model(x)[rows, cols]
    return F.log_softmax(logits.float(), dim=-1)


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
    tokens: int = 0
    bytes: int = 0
    words: int = 0
    documents: int = 0

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
            requests.append(Request(tuple(ctx), tuple(cont)))
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
            requests.append(Request(tuple(ctx), tuple(cont)))
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
    cuts = np.flatnonzero(tokens == eos_id)
    docs, start = [], 0
    for cut in cuts.tolist() + [len(tokens)]:
        if cut > start:
            docs.append(tokens[start:cut])
        start = cut + 1
    return docs
