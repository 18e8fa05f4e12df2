"""Speculative decoding in the engine: greedy output identical to the target alone, sampled output
distributed as the target's, the acceptance rate counted, a draft of another tokenizer refused."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from groundup.infer.engine import Engine
from groundup.infer.generate import generate, generate_tokens
from groundup.infer.sampling import SamplingParams
from groundup.infer.speculative import accept_sampled, load_draft
from groundup.model.config import ModelConfig
from groundup.model.io import load_model_dir
from groundup.model.transformer import Transformer

GREEDY = SamplingParams(temperature=0, max_new_tokens=24, stop_at_eos=False)


@pytest.mark.parametrize("k", [1, 4])
def test_serve_speculative_equals_target(serve_model_dir, serve_draft_dir, k):
    target, tokenizer = load_model_dir(serve_model_dir)
    draft, _ = load_model_dir(serve_draft_dir)
    ids = tokenizer.encode("def foo(x):")
    expected = list(generate_tokens(target, ids, GREEDY, vocab_limit=tokenizer.vocab_size))
    weak = Engine(target, tokenizer, max_seqs=2, draft=draft, draft_tokens=k, threaded=False)
    got = weak.generate(ids, GREEDY, logprobs=0)[0]
    assert got.token_ids == expected
    assert weak.stats.draft_tokens_proposed > 0
    plain = Engine(target, tokenizer, max_seqs=2, threaded=False).generate(ids, GREEDY, logprobs=0)[0]
    assert [e.logprob for e in got.logprobs] == [e.logprob for e in plain.logprobs]
    # the target as its own draft: every guess is accepted, so the steps shrink to ~24 / (k + 1)
    same = Engine(target, tokenizer, max_seqs=2, draft=target, draft_tokens=k, threaded=False)
    assert same.generate(ids, GREEDY)[0].token_ids == expected
    assert same.stats.draft_acceptance_rate == 1.0
    assert same.stats.decode_steps <= -(-24 // (k + 1)) + 1


def test_serve_speculative_batches_many_requests_alike(serve_model_dir, serve_draft_dir):
    """Requests decoded together, some with penalties or sampling, give each one's tokens alone; greedy
    ones the target's own."""
    target, tokenizer = load_model_dir(serve_model_dir)
    draft, _ = load_model_dir(serve_draft_dir)
    engine = Engine(target, tokenizer, max_seqs=4, draft=draft, draft_tokens=3, threaded=False)
    texts = ["def foo(x):", "import os\n", "class A:", "x = 1", "for i in"]
    params = [GREEDY, SamplingParams(temperature=0, max_new_tokens=16, repetition_penalty=1.5, stop_at_eos=False),
              SamplingParams(temperature=0.9, seed=7, max_new_tokens=20, stop_at_eos=False), GREEDY, GREEDY]
    alone = [engine.generate(tokenizer.encode(t), p)[0].token_ids for t, p in zip(texts, params, strict=True)]
    for text, p, tokens in zip(texts, params, alone, strict=True):
        if p is GREEDY:
            assert tokens == list(generate_tokens(target, tokenizer.encode(text), p, vocab_limit=tokenizer.vocab_size))
    events = {}
    for i, (text, p) in enumerate(zip(texts, params, strict=True)):
        engine.submit(_request(tokenizer.encode(text), p, events, i))
    while len([e for e in events.values() if e.finish_reason]) < len(texts):
        engine.step()
    assert [events[i].token_ids for i in range(len(texts))] == alone


def _request(ids, params, events, i):
    from groundup.infer.engine import Event, Request

    events[i] = Event(index=0)
    return Request(prompt_ids=ids, params=params, on_event=events[i].absorb)


def test_accept_sampled_follows_the_target_distribution():
    """The acceptance rule's first token is distributed as the target's p, whatever the draft's q (chi-square)."""
    gen = torch.Generator().manual_seed(0)
    p = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05])
    q = torch.tensor([0.05, 0.1, 0.15, 0.2, 0.5])
    p2 = torch.tensor([0.1, 0.1, 0.6, 0.1, 0.1])
    n, counts = 6000, torch.zeros(5)
    for _ in range(n):
        guess = int(torch.multinomial(q, 1, generator=gen))
        tokens = accept_sampled([guess], q[None], torch.stack([p, p2]), gen)
        counts[tokens[0]] += 1
    chi2 = float(((counts - n * p) ** 2 / (n * p)).sum())
    assert chi2 < 18.5  # 4 degrees of freedom: p = 0.001


def _chi_square_ok(counts: torch.Tensor, probs: torch.Tensor) -> bool:
    """Whether ``counts`` fit ``probs`` by a chi-square test (cells expecting under 5 pooled), within about
    four standard deviations of the statistic's mean."""
    n = float(counts.sum())
    expected = n * probs
    keep = expected >= 5
    chi2 = float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())
    rest_obs, rest_exp = float(counts[~keep].sum()), float(expected[~keep].sum())
    if rest_exp > 0:
        chi2 += (rest_obs - rest_exp) ** 2 / rest_exp
    dof = int(keep.sum()) + (1 if rest_exp > 0 else 0) - 1
    return chi2 < dof + 4 * (2 * dof) ** 0.5


def test_engine_sampled_speculation_follows_the_target_distribution():
    """On an 8-token vocabulary, tokens 1-2 and 2-3 of sampled speculative decoding (the second and third
    come from a round of two guesses) are distributed as the target's own, computed exactly."""
    from groundup.infer.engine import Event, Request

    def tiny(seed: int, width: int) -> Transformer:
        torch.manual_seed(seed)
        return Transformer(ModelConfig(vocab_size=8, block_size=16, n_layer=1, n_head=2, n_embd=width,
                                       init_std=0.5)).eval()

    target, draft = tiny(0, 16), tiny(1, 8)
    prompt = [3, 1]
    grid = torch.cartesian_prod(torch.arange(8), torch.arange(8))  # (64, 2): every (t1, t2)
    with torch.inference_mode():
        p1 = target(torch.tensor([prompt]))[0, -1].softmax(-1)  # (8,)
        p2 = target(torch.tensor([[*prompt, t] for t in range(8)]))[:, -1].softmax(-1)  # (8, 8): t1 -> t2
        p3 = target(torch.cat([torch.tensor(prompt).expand(64, 2), grid], 1))[:, -1].softmax(-1).view(8, 8, 8)
    joint12 = (p1[:, None] * p2).flatten()
    joint23 = (p1[:, None, None] * p2[:, :, None] * p3).sum(0).flatten()
    engine = Engine(target, max_seqs=16, draft=draft, draft_tokens=2, threaded=False)
    counts12, counts23 = torch.zeros(64), torch.zeros(64)
    for r in range(125):  # 2000 samples, 16 choices a request (the prompt prefilled once)
        merged = [Event(index=i) for i in range(16)]
        engine.submit(Request(prompt_ids=prompt, n=16, params=SamplingParams(temperature=1.0, seed=100 * r,
                                                                             max_new_tokens=4),
                              on_event=lambda e, m=merged: m[e.index].absorb(e)))
        while not all(m.finish_reason for m in merged):
            engine.step()
        for m in merged:
            t = m.token_ids
            counts12[t[0] * 8 + t[1]] += 1
            counts23[t[1] * 8 + t[2]] += 1
    assert engine.stats.draft_tokens_proposed >= 2 * 2000
    assert _chi_square_ok(counts12, joint12)
    assert _chi_square_ok(counts23, joint23)


def test_generate_stage_with_a_draft_prints_the_target_greedy_text(serve_model_dir, serve_draft_dir, capsys):
    """`groundup generate --draft DIR`: the text is the target's own greedy continuation; sampling works too."""
    from groundup import cli

    target, tokenizer = load_model_dir(serve_model_dir)
    params = SamplingParams(temperature=0, max_new_tokens=20, stop_at_eos=False)
    expected = generate(target, tokenizer, "def foo(x):", params).text
    assert cli.main(["generate", "--model", str(serve_model_dir), "--draft", str(serve_draft_dir),
                     "--prompt", "def foo(x):", "--echo", "false", "--sampling.temperature", "0",
                     "--sampling.max_new_tokens", "20", "--sampling.stop_at_eos", "false"]) == 0
    captured = capsys.readouterr()
    assert captured.out == expected + "\n"
    assert "draft accepted" in captured.err
    sampled = generate(target, tokenizer, "x", SamplingParams(temperature=0.7, seed=1, max_new_tokens=8),
                       draft=load_model_dir(serve_draft_dir)[0])
    assert sampled.completion_tokens >= 1 and sampled.draft_acceptance is not None


def test_a_draft_with_another_tokenizer_is_refused(serve_model_dir, serve_draft_dir, tmp_path):
    _, tokenizer = load_model_dir(serve_model_dir)
    other = tmp_path / "draft"
    shutil.copytree(serve_draft_dir, other)
    spec = json.loads((other / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = spec["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[300:302]
    vocab[a], vocab[b] = vocab[b], vocab[a]  # two tokens swap ids: same size, another vocabulary
    (other / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(ValueError, match="does not share the target's tokenizer"):
        load_draft(other, tokenizer)
    assert load_draft(serve_draft_dir, tokenizer) is not None


def test_the_server_decodes_with_a_draft_and_reports_its_acceptance(serve_model_dir, serve_draft_dir,
                                                                     make_live_server):
    """`groundup serve --engine.draft DIR`: completions are the target's own greedy text, and /metrics carries
    the draft's acceptance."""
    import httpx

    target, tokenizer = load_model_dir(serve_model_dir)
    expected = generate(target, tokenizer, "def foo(x):", SamplingParams(temperature=0, max_new_tokens=16,
                                                                         stop_at_eos=False)).text
    server = make_live_server(serve_model_dir, served_model_name="tiny",
                              engine={"draft": serve_draft_dir, "draft_tokens": 3, "max_seqs": 2})
    body = {"model": "tiny", "prompt": "def foo(x):", "max_tokens": 16, "temperature": 0, "ignore_eos": True}
    answer = httpx.post(f"{server.url}/v1/completions", json=body, timeout=60).json()
    assert answer["choices"][0]["text"] == expected
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    proposed = next(float(line.split()[-1]) for line in metrics.splitlines()
                    if line.startswith("groundup_draft_tokens_proposed_total"))
    assert proposed > 0 and "groundup_draft_acceptance_rate" in metrics
