"""A quality scorer learnt from annotations: a hashed word n-gram linear model, fastText-style, on CPU; or a
regression head on a groundup model, trained by the fine-tuning stage and run in a worker process.

Words are normalized and hashed as in :mod:`groundup.curate.decontam`; each word and each pair of
neighbouring words (``ngrams=2``) lands in one of ``2**bits`` buckets. A document's score is
``bias + sum(weights[buckets]) / sqrt(number of features)``: a linear regression of the annotated 0-5
score (fastText averages its features; the square root keeps a short page's few strong words from being
diluted as much in a long one). Training is plain SGD on the squared error, in numpy. Scoring runs on
a whole batch of documents in a handful of array operations.

``groundup train-scorer`` writes a scorer dir: ``scorer.json`` (settings, bias, threshold), ``weights.npy``
(float32, one per bucket) and ``metrics.json`` (held-out F1 at the threshold, precision, recall, the 2x2
confusion matrix and the one of rounded scores). The ``score`` recipe step loads it.

``--kind model`` learns the scores with a regression head on a groundup model's pooled hidden states
instead. Curation imports no model and no torch, so the work is done in other processes: training by
``groundup finetune classify --task regression`` (run as a command, on the same train/held-out split as the
n-gram model: the split files are handed to it), scoring by :mod:`groundup.infer.score_worker`, which reads
batches of texts on its stdin and answers their scores on its stdout (:class:`ModelScorer`). The scorer dir
is then the classifier dir that fine-tuning wrote, with ``scorer.json`` (``kind: model``, threshold) and the
same ``metrics.json`` added, computed here through the worker on the held-out documents.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from groundup.artifacts import write_json
from groundup.curate.decontam import word_hashes
from groundup.curate.steps import KEEP, Filter
from groundup.curate.text import Document

log = logging.getLogger(__name__)

SCORER_FILE = "scorer.json"
WEIGHTS_FILE = "weights.npy"
_PAIR = np.uint64(0x9E3779B97F4A7C15)


def batch_features(texts: list[str], bits: int, ngrams: int) -> tuple[np.ndarray, np.ndarray]:
    """The bucket of every feature of every text, and the text each belongs to (texts joined by newlines)."""
    words, starts = word_hashes("\n".join(texts))
    bounds = np.cumsum([len(t.lower().encode("utf-8", errors="surrogatepass")) + 1 for t in texts])
    text_of = np.searchsorted(bounds, starts, side="right")
    features, owners = [words], [text_of]
    if ngrams >= 2 and words.size > 1:
        same = text_of[1:] == text_of[:-1]
        features.append((words[:-1] * _PAIR + words[1:])[same])
        owners.append(text_of[1:][same])
    shift = np.uint64(64 - bits)
    return (np.concatenate(features) >> shift).astype(np.int64), np.concatenate(owners)


@dataclass
class HashedNgramModel:
    bits: int = 20
    ngrams: int = 2
    bias: float = 0.0
    weights: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))

    def __post_init__(self) -> None:
        if self.weights.size == 0:
            self.weights = np.zeros(1 << self.bits, dtype=np.float32)

    def predict(self, texts: list[str]) -> np.ndarray:
        """The score of each text (float64)."""
        if not texts:
            return np.zeros(0)
        buckets, owner = batch_features(texts, self.bits, self.ngrams)
        sums = np.bincount(owner, weights=self.weights[buckets], minlength=len(texts))
        counts = np.bincount(owner, minlength=len(texts))
        return self.bias + sums / np.sqrt(np.maximum(counts, 1))

    def fit(self, texts: list[str], scores: list[float], *, epochs: int = 10, lr: float = 0.1,
            seed: int = 0) -> None:
        """SGD on the squared error, one document at a time, in a shuffled order each epoch."""
        per_doc = [batch_features([t], self.bits, self.ngrams)[0] for t in texts]
        self.bias = float(np.mean(scores)) if scores else 0.0
        order = list(range(len(texts)))
        rng = random.Random(seed)
        for epoch in range(epochs):
            rng.shuffle(order)
            rate = lr / (1 + epoch)
            for i in order:
                buckets = per_doc[i]
                scale = 1.0 / np.sqrt(max(buckets.size, 1))
                error = self.bias + float(self.weights[buckets].sum()) * scale - scores[i]
                np.add.at(self.weights, buckets, np.float32(-rate * error * scale))
                self.bias -= rate * error * 0.01

    def save(self, out: Path, extra: dict) -> None:
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / WEIGHTS_FILE, self.weights)
        write_json(out / SCORER_FILE, {"kind": "hashed-ngram-linear", "bits": self.bits, "ngrams": self.ngrams,
                                       "bias": self.bias, **extra})


class ModelScorer:
    """A classifier dir's regression head, run by :mod:`groundup.infer.score_worker` in a child process
    (started on first use, again in each process this object is copied to; it ends when its stdin closes)."""

    def __init__(self, path: str | Path, *, device: str = "cpu", threads: int | None = 1, batch_size: int = 32):
        self.path, self.device, self.threads, self.batch_size = Path(path), device, threads, batch_size
        self._process: subprocess.Popen | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_process": None}

    def _start(self) -> subprocess.Popen:
        command = [sys.executable, "-m", "groundup.infer.score_worker", str(self.path), "--device", self.device,
                   "--batch-size", str(self.batch_size)]
        if self.threads:
            command += ["--threads", str(self.threads)]
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                   encoding="utf-8", bufsize=1)
        hello = self._read(process)
        if not hello.get("ready"):
            process.wait()
            raise RuntimeError(f"the score worker for {self.path} did not start: {hello.get('error', hello)}")
        return process

    def _read(self, process: subprocess.Popen) -> dict:
        line = process.stdout.readline()
        if not line:
            code = process.wait()
            raise RuntimeError(f"the score worker for {self.path} exited (status {code}); its error is above")
        return json.loads(line)

    def predict(self, texts: list[str]) -> np.ndarray:
        """The score of each text (float64)."""
        if not texts:
            return np.zeros(0)
        if self._process is None or self._process.poll() is not None:
            self._process = self._start()
        self._process.stdin.write(json.dumps({"texts": texts}) + "\n")
        self._process.stdin.flush()
        reply = self._read(self._process)
        if "error" in reply:
            raise RuntimeError(f"the score worker for {self.path}: {reply['error']}")
        return np.asarray(reply["scores"], dtype=np.float64)

    def close(self) -> None:
        if self._process is not None:
            self._process.stdin.close()
            self._process.wait()
            self._process.stdout.close()
            self._process = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown: the worker ends with its stdin anyway
            self.close()


def load_scorer(path: str | Path, *, device: str = "cpu") -> tuple[HashedNgramModel | ModelScorer, dict]:
    """The model of a scorer dir and its settings; a clear error for a folder that is not one."""
    path = Path(path)
    if not (path / SCORER_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a scorer dir (no {SCORER_FILE}); make one with `groundup train-scorer`")
    settings = json.loads((path / SCORER_FILE).read_text())
    if settings.get("kind") == "model":
        if not (path / "classifier.json").is_file():
            raise FileNotFoundError(f"{path}: a model scorer dir needs classifier.json (from `groundup finetune "
                                    f"classify --task regression`)")
        return ModelScorer(path, device=device), settings
    if settings.get("kind") != "hashed-ngram-linear":
        raise ValueError(f"{path}: unknown scorer kind {settings.get('kind')!r}")
    if not (path / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a scorer dir (no {WEIGHTS_FILE}); make one with `groundup train-scorer`")
    weights = np.load(path / WEIGHTS_FILE)
    return HashedNgramModel(settings["bits"], settings["ngrams"], settings["bias"], weights), settings


def binary_metrics(predicted: np.ndarray, truth: np.ndarray, threshold: float) -> dict:
    """F1, precision, recall and the confusion matrix of ``score >= threshold``, and of the rounded scores."""
    p, t = predicted >= threshold, truth >= threshold
    tp, fp, fn, tn = int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum()), int((~p & ~t).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    rounded = np.zeros((6, 6), dtype=int)
    for a, b in zip(np.clip(np.rint(truth), 0, 5).astype(int), np.clip(np.rint(predicted), 0, 5).astype(int),
                    strict=True):
        rounded[a, b] += 1
    return {"threshold": threshold, "f1": round(f1, 4), "precision": round(precision, 4),
            "recall": round(recall, 4), "confusion": {"true_positive": tp, "false_positive": fp,
                                                       "false_negative": fn, "true_negative": tn},
            "confusion_rounded": {"rows": "annotated score 0-5", "columns": "predicted score 0-5",
                                  "counts": rounded.tolist()},
            "mean_absolute_error": round(float(np.abs(predicted - truth).mean()), 4) if truth.size else None}


@dataclass(kw_only=True)
class Config:
    """Learn a quality scorer from `groundup annotate`'s scores: a hashed word n-gram linear model (fastText-style),
    or a regression head on a groundup model (--kind model)."""

    annotations: list[str] | str = field(default_factory=list)
    """Annotation folders or annotations.jsonl files (records with `text` and `score`)."""
    out: Path = Path("runs/scorer")
    """The scorer dir: scorer.json, weights.npy, metrics.json."""
    threshold: float = 3.0
    """Keep a document at this score or above (FineWeb-Edu's 3); held-out F1 is reported at it."""
    held_out: float = 0.2
    """Share of the annotated documents (chosen by text hash) kept out of training to measure F1."""
    bits: int = 20
    """2**bits feature buckets."""
    ngrams: int = 2
    """1: words; 2: words and pairs of neighbouring words."""
    epochs: int = 10
    """Passes over the training documents."""
    lr: float = 0.1
    """SGD learning rate (divided by 1 + epoch)."""
    seed: int = 0
    """Shuffling seed."""
    kind: Literal["ngram", "model"] = "ngram"
    """'ngram': the hashed n-gram linear model (numpy, seconds); 'model': a regression head on the pooled hidden
    states of `model`, trained by `groundup finetune classify --task regression` in a child process."""
    model: Path | None = None
    """The base model dir of --kind model (a pretrained groundup model dir)."""
    pooling: Literal["mean", "last_token"] = "mean"
    """--kind model: the head reads the mean of the hidden states, or the last token's."""
    finetune_args: list[str | int | float | bool] = field(default_factory=list)
    """--kind model: more flags for `groundup finetune classify` ('[--train.max_steps, 400, --optim.lr, 1e-3]')."""


def _annotation_records(specs: list[str]) -> list[dict]:
    from groundup.curate.annotate import read_annotations

    records = []
    for spec in specs:
        path = Path(spec)
        path = path / "annotations.jsonl" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"no annotations at {spec} (expected annotations.jsonl from `groundup annotate`)")
        records.extend(r for r in read_annotations(path) if isinstance(r.get("text"), str))
    return records


def run(cfg: Config) -> Path:
    specs = [cfg.annotations] if isinstance(cfg.annotations, str) else list(cfg.annotations)
    records = _annotation_records(specs)
    if len(records) < 10:
        raise ValueError(f"{len(records)} annotated documents in {specs}: too few to learn a scorer from")
    held = [int(r["hash"][:8], 16) % 10_000 < cfg.held_out * 10_000 for r in records]
    train = [r for r, h in zip(records, held, strict=True) if not h]
    test = [r for r, h in zip(records, held, strict=True) if h]
    if cfg.kind == "model":
        return _train_model_scorer(cfg, train, test)
    if cfg.kind != "ngram":
        raise ValueError(f"unknown scorer kind {cfg.kind!r} (ngram or model)")
    model = HashedNgramModel(cfg.bits, cfg.ngrams)
    model.fit([r["text"] for r in train], [float(r["score"]) for r in train], epochs=cfg.epochs, lr=cfg.lr,
              seed=cfg.seed)
    metrics = {"train_documents": len(train), "held_out_documents": len(test)}
    if test:
        metrics.update(binary_metrics(model.predict([r["text"] for r in test]),
                                      np.array([float(r["score"]) for r in test]), cfg.threshold))
    out = Path(cfg.out)
    model.save(out, {"threshold": cfg.threshold})
    write_json(out / "metrics.json", metrics)
    log.info("train-scorer: held-out F1 %.3f at %.1f on %d documents", metrics.get("f1", float("nan")),
             cfg.threshold, len(test))
    return out


def _train_model_scorer(cfg: Config, train: list[dict], test: list[dict]) -> Path:
    """--kind model: fine-tune a regression head in a child process, then measure it through the score worker."""
    if cfg.model is None:
        raise ValueError("train-scorer --kind model needs --model, the base model dir to put the regression head on")
    if not (Path(cfg.model) / "config.json").is_file():
        raise FileNotFoundError(f"--model {cfg.model} is not a model dir (no config.json)")
    out = Path(cfg.out)
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "groundup", "finetune", "classify", "--task", "regression",
                   "--pooling", cfg.pooling, "--model", str(cfg.model), "--out", str(out), "--seed", str(cfg.seed),
                   "--data", _write_split(Path(tmp) / "train.jsonl", train)]
        if test:
            command += ["--val_data", _write_split(Path(tmp) / "held_out.jsonl", test)]
        else:
            command += ["--val_fraction", "0"]
        log.info("train-scorer: %s", " ".join(command))
        extra = [str(a).lower() if isinstance(a, bool) else str(a) for a in cfg.finetune_args]
        code = subprocess.run([*command, *extra]).returncode
        if code != 0:
            raise RuntimeError(f"train-scorer --kind model: `groundup finetune classify` failed (status {code}); "
                               f"its error is above")
    write_json(out / SCORER_FILE, {"kind": "model", "threshold": cfg.threshold, "base_model": str(cfg.model),
                                   "pooling": cfg.pooling})
    metrics = {"kind": "model", "train_documents": len(train), "held_out_documents": len(test)}
    if test:
        scorer = ModelScorer(out, threads=None)
        try:
            predicted = scorer.predict([r["text"] for r in test])
        finally:
            scorer.close()
        metrics.update(binary_metrics(predicted, np.array([float(r["score"]) for r in test]), cfg.threshold))
    write_json(out / "metrics.json", metrics)
    log.info("train-scorer: held-out F1 %.3f at %.1f on %d documents", metrics.get("f1", float("nan")),
             cfg.threshold, len(test))
    return out


def _write_split(path: Path, records: list[dict]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps({"text": r["text"], "score": float(r["score"])}, ensure_ascii=False) + "\n")
    return str(path)


@dataclass
class ScoreFilter(Filter):
    """Score each document with a scorer dir (`groundup train-scorer`), keep the score, drop those under a threshold."""

    name = "score"

    scorer: str = ""
    """The scorer dir."""
    threshold: float | None = None
    """Drop documents scoring under this (None: the scorer's own threshold)."""
    device: str = "cpu"
    """A model scorer's device: 'cpu', 'cuda', 'cuda:N' or 'auto' (its worker process runs the model)."""

    def __post_init__(self) -> None:
        if not self.scorer:
            raise ValueError("score needs a scorer dir (scorer: runs/scorer)")
        self._model, settings = load_scorer(self.scorer, device=self.device)
        self._threshold = settings.get("threshold", 3.0) if self.threshold is None else self.threshold

    def filter(self, doc: Document) -> tuple[bool, str]:
        return self.filter_batch([doc])[0]

    def filter_batch(self, docs: list[Document]) -> list[tuple[bool, str]]:
        decisions = []
        for doc, score in zip(docs, self._model.predict([d.text for d in docs]).tolist(), strict=True):
            doc.meta["score"] = round(score, 4)
            decisions.append(KEEP if score >= self._threshold else (False, f"score under {self._threshold:g}"))
        return decisions
