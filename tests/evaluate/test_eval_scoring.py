"""Log-likelihood scoring: batch invariance, rolling windows, perplexity on text files and token shards."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
import torch.nn.functional as F

from groundup.evaluate.lm import rolling_windows, score_documents
from groundup.evaluate.suite import TaskSettings, evaluate_task, load_tasks
from groundup.infer.score import ScoreRequest as Request
from groundup.infer.score import score_requests


def random_requests(n: int, vocab: int, max_len: int, seed: int = 0) -> list[Request]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        ctx = tuple(rng.randrange(vocab) for _ in range(rng.randint(1, max_len + 10)))  # some longer than the window
        cont = tuple(rng.randrange(vocab) for _ in range(rng.randint(1, 8)))
        out.append(Request(ctx, cont))
    return out


def test_scores_identical_at_batch_sizes_1_7_32(eval_model):
    model, _ = eval_model
    requests = random_requests(45, model.config.vocab_size, model.config.block_size)
    runs = [score_requests(model, requests, batch_size=b) for b in (1, 7, 32)]
    assert [s.loglikelihood for s in runs[0]] == [s.loglikelihood for s in runs[1]] == \
        [s.loglikelihood for s in runs[2]]
    assert [s.is_greedy for s in runs[0]] == [s.is_greedy for s in runs[2]]


def test_multiple_choice_identical_at_batch_sizes_1_7_32(eval_model, mc_file):
    model, tokenizer = eval_model
    (task,) = load_tasks([mc_file])
    outs = [evaluate_task(model, tokenizer, task, TaskSettings(batch_size=b, limit=20)) for b in (1, 7, 32)]
    assert outs[0][0] == outs[1][0] == outs[2][0]  # acc, acc_norm, stderr: exactly equal
    assert [s["loglikelihoods"] for s in outs[0][1]] == [s["loglikelihoods"] for s in outs[2][1]]


def test_score_equals_a_direct_forward(eval_model):
    """One request against log_softmax of the whole sequence's logits, computed independently."""
    model, _ = eval_model
    ctx, cont = (5, 17, 200, 3, 9), (44, 12, 7)
    (score,) = score_requests(model, [Request(ctx, cont)])
    with torch.no_grad():
        logits = model(torch.tensor([ctx + cont[:-1]]))[0]
    logprobs = F.log_softmax(logits.double(), -1)
    expected = sum(float(logprobs[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))
    assert score.loglikelihood == pytest.approx(expected, abs=1e-4)
    assert score.tokens == 3


@pytest.mark.parametrize("n, stride", [(1, None), (10, None), (64, None), (65, None), (200, None), (200, 16),
                                       (200, 1), (129, 64)])
def test_rolling_windows_score_every_token_once(n, stride):
    tokens = list(range(1000, 1000 + n))
    windows = list(rolling_windows(tokens, prefix_token=0, max_length=64, stride=stride))
    predicted = [t for _, cont in windows for t in cont]
    assert predicted == tokens
    for ctx, cont in windows:
        assert len(ctx) + len(cont) - 1 <= 64  # fits the model's window
        full = ctx + cont
        # each window is a contiguous slice of [prefix] + tokens: context immediately precedes the targets
        stream = [0] + tokens
        start = stream.index(full[0]) if full[0] != 0 else 0
        assert stream[start:start + len(full)] == full
    if stride and n > 64:
        assert all(len(ctx) >= 64 - stride for ctx, _ in windows[1:])  # context of at least max_length - stride


def test_rolling_windows_match_lm_eval():
    utils = pytest.importorskip("lm_eval.utils", reason="lm-eval is not installed")
    tokens = list(range(1, 300))
    for max_len, stride in ((64, 64), (64, 16), (32, 1)):
        theirs = [utils.make_disjoint_window(w) for w in utils.get_rolling_token_windows(
            tokens, prefix_token=0, max_seq_len=max_len, context_len=max_len - stride + 1)]
        assert [tuple(map(list, w)) for w in theirs] == \
            list(rolling_windows(tokens, prefix_token=0, max_length=max_len, stride=stride))


def test_smaller_stride_gives_more_context_and_differs(eval_model):
    model, tokenizer = eval_model
    text = " ".join(["the cat sat on the mat and the dog ran over the log"] * 30)
    disjoint = score_documents(model, tokenizer, [text])[0]
    overlapped = score_documents(model, tokenizer, [text], stride=16)[0]
    assert disjoint.tokens == overlapped.tokens == len(tokenizer.encode(text))
    assert disjoint.loglikelihood != overlapped.loglikelihood


def test_perplexity_metrics_are_consistent(eval_model, text_file):
    model, tokenizer = eval_model
    (task,) = load_tasks([text_file])
    results, samples = evaluate_task(model, tokenizer, task, TaskSettings())
    m = results[task.name]
    nll = -sum(s["loglikelihood"] for s in samples)
    assert m["bits_per_byte"] == pytest.approx(nll / m["bytes"] / math.log(2))
    assert m["byte_perplexity"] == pytest.approx(2 ** m["bits_per_byte"])
    assert m["perplexity"] == pytest.approx(math.exp(nll / m["tokens"]))
    assert m["n"] == 12


def test_token_shard_perplexity_equals_text_perplexity(eval_model, tmp_path):
    """The same documents as a token shard (EOS-separated, like `groundup tokenize`) and as JSONL."""
    import json

    import numpy as np

    model, tokenizer = eval_model
    docs = ["the cat sat on the mat", "a dog ran far " * 20, "green house near the river"]
    ids = []
    for d in docs:
        ids += tokenizer.encode(d) + [tokenizer.eos_id]
    shard = tmp_path / "tokens"
    shard.mkdir()
    np.asarray(ids, dtype=np.uint16).tofile(shard / "val.bin")
    (shard / "meta.json").write_text(json.dumps({"dtype": "uint16", "tokens": {"val": len(ids)}}))
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    a = evaluate_task(model, tokenizer, load_tasks([shard / "val.bin"])[0], TaskSettings())[0]
    b = evaluate_task(model, tokenizer, load_tasks([jsonl])[0], TaskSettings())[0]
    (ma,), (mb,) = a.values(), b.values()
    assert ma["n"] == 3
    assert ma["bits_per_byte"] == pytest.approx(mb["bits_per_byte"], rel=1e-12)


def test_pretraining_and_evaluate_give_the_same_held_out_bits_per_byte(spine_tokens, tmp_path):
    """The one scorer: a pretraining run's held_out_bits_per_byte is `groundup evaluate`'s bits_per_byte on
    the same held-out shard, to the last bit."""
    from groundup.evaluate import run as evaluate_stage
    from groundup.model.config import ModelConfig
    from groundup.train import pretrain
    from groundup.train.loop import LoopConfig

    cfg = pretrain.Config(tokens=spine_tokens, out=tmp_path / "model", device="cpu", batch_size=4,
                          model=ModelConfig(vocab_size=320, block_size=64, n_layer=1, n_head=2, n_embd=32),
                          train=LoopConfig(max_steps=3, eval_every=0, checkpoint_every=0, progress_bar=False))
    out = pretrain.run(cfg)
    manifest = json.loads((out / "manifest.json").read_text())
    held_out = manifest["result"]["held_out_bits_per_byte"]
    results = evaluate_stage.run(evaluate_stage.Config(model=out, tasks=[str(spine_tokens / "val.bin")],
                                                       out=tmp_path / "eval"))
    (metrics,) = json.loads((results / "results.json").read_text())["results"].values()
    assert metrics["bits_per_byte"] == held_out
