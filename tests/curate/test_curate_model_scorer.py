"""The model-based scorer: `train-scorer --kind model` fine-tunes a regression head in a child process on the
n-gram scorer's split, measures it through the score worker, and the curate `score` step uses it, torch-free."""

from __future__ import annotations

import json
import random

import numpy as np
import pyarrow.parquet as pq
import pytest
from fake_llm import rule_score
from test_curate_annotate import _annotated_corpus, document, write_docs

from groundup.curate import run as curate
from groundup.curate import scorer

FINETUNE = ["--train.max_steps", "80", "--optim.lr", "3e-3", "--optim.warmup_steps", "10", "--batch_size", "16",
            "--device", "cpu", "--threads", "1", "--train.eval_every", "0", "--train.checkpoint_every", "0",
            "--train.progress_bar", "false", "--train.log_every", "50"]


@pytest.fixture(scope="module")
def annotated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("annotated")
    return _annotated_corpus(tmp, 300)


@pytest.fixture(scope="module")
def base(annotated, tmp_path_factory):
    """A tiny random Llama-style model dir, its tokenizer trained on the documents (a word is a token or two)."""
    import torch

    from groundup.model.config import ModelConfig
    from groundup.model.io import save_model_dir
    from groundup.model.transformer import Transformer
    from groundup.tokenizer import Tokenizer
    from groundup.tokenizer import run as tokenizer_stage

    tmp = tmp_path_factory.mktemp("scorer")
    corpus = write_docs(tmp / "corpus.jsonl", annotated[1])
    tokenizer = tokenizer_stage.run(tokenizer_stage.Config(data=str(corpus), out=tmp / "tokenizer", vocab_size=600))
    torch.manual_seed(0)
    model = Transformer(ModelConfig.from_name("tiny-llama", n_layer=1, n_embd=32, n_head=4, n_kv_head=2,
                                              vocab_size=Tokenizer.from_file(tokenizer).vocab_size, block_size=160))
    return save_model_dir(tmp / "base", model, tokenizer_file=tokenizer, stage="test-base", config={})


def test_model_scorer_trains_on_the_ngram_split_and_scores_in_the_curate_stage(annotated, base, tmp_path):
    ann, _ = annotated
    ngram = scorer.run(scorer.Config(annotations=[str(ann)], out=tmp_path / "ngram", threshold=3))
    out = scorer.run(scorer.Config(annotations=[str(ann)], out=tmp_path / "model", threshold=3, kind="model",
                                   model=base, finetune_args=FINETUNE))
    metrics = json.loads((out / "metrics.json").read_text())
    ngram_metrics = json.loads((ngram / "metrics.json").read_text())
    # the same held-out documents as the n-gram scorer, reported the same way
    assert metrics["held_out_documents"] == ngram_metrics["held_out_documents"] > 30
    assert sum(metrics["confusion"].values()) == metrics["held_out_documents"]
    assert set(metrics) >= {"f1", "precision", "recall", "confusion_rounded", "mean_absolute_error"}
    settings = json.loads((out / "scorer.json").read_text())
    assert settings["kind"] == "model" and settings["threshold"] == 3
    assert json.loads((out / "classifier.json").read_text())["task"] == "regression"
    # it learnt something: better than always predicting the mean
    result = json.loads((out / "result.json").read_text())
    assert result["val_loss"] < result["mean_baseline_val_loss"], result

    # the score step with a model scorer (its worker process): the in-process model's scores in the shards,
    # drops under the threshold counted
    from groundup.infer.classify import predict_scores
    from groundup.model.classifier import load_classifier_dir

    rng = random.Random(9)
    fresh = [document(rng, s) + f" f{i}" for i, s in enumerate([0, 1, 5, 5, 4, 0, 5, 1])]
    model, tokenizer, meta = load_classifier_dir(out)
    direct = np.array(predict_scores(model, tokenizer, meta, fresh))
    write_docs(tmp_path / "curate_in" / "new.jsonl", fresh)
    threshold = float(np.median(direct))
    result = curate.run(curate.Config(input=[str(tmp_path / "curate_in")], out=tmp_path / "curated", workers=1,
                                      recipe=curate.RecipeConfig(steps=[{"score": {"scorer": str(out),
                                                                                   "threshold": threshold}}])))
    stats = json.loads((result / "stats.json").read_text())
    kept = direct >= threshold
    assert stats["steps"]["score"]["dropped"] == {f"score under {threshold:g}": int((~kept).sum())}
    rows = pq.read_table(next((result / "shards").glob("*.parquet"))).to_pylist()
    by_text = dict(zip(fresh, direct.tolist(), strict=True))
    assert sorted(r["text"] for r in rows) == sorted(t for t, k in zip(fresh, kept, strict=True) if k)
    assert all(abs(r["score"] - by_text[r["text"]]) < 1e-3 for r in rows)
    assert rule_score(fresh[2]) == 5  # the documents are the annotator's kind


def test_model_scorer_errors_are_one_line(tmp_path, base):
    with pytest.raises(ValueError, match="needs --model"):
        scorer._train_model_scorer(scorer.Config(kind="model"), [], [])
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "scorer.json").write_text(json.dumps({"kind": "model", "threshold": 3}))
    with pytest.raises(FileNotFoundError, match="needs classifier.json"):
        scorer.load_scorer(tmp_path / "s")
    # a classifier dir with a class head, not a regression one: the worker says so
    (tmp_path / "s" / "classifier.json").write_text(json.dumps({"labels": ["a", "b"], "max_len": 8, "pad_id": 0}))
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        (tmp_path / "s" / name).write_bytes((base / name).read_bytes())
    worker, _ = scorer.load_scorer(tmp_path / "s")
    with pytest.raises(RuntimeError, match="did not start: .*not a regression head"):
        worker.predict(["some text"])
