"""The engine: batch-invariant greedy decoding, continuous batching, sampling parameters, cancellation."""

from __future__ import annotations

import os
import queue
import threading
import time

import pytest
import torch

from groundup.infer.decode import Decoder
from groundup.infer.engine import Engine, Event, Request, release_openmp_pool
from groundup.infer.generate import generate_tokens
from groundup.infer.sampling import SamplingParams
from groundup.model.io import load_model_dir

GREEDY = SamplingParams(temperature=0, max_new_tokens=24, stop_at_eos=False)
TEXTS = ["def foo(x):", "import os\n", "class A:", "# hello world", "x = 1", "for i in range", "while True:",
         "return None", "print(", "if __name__"]


@pytest.mark.parametrize("layout", ["plain", "transposed", "packed"])
@pytest.mark.parametrize("which", ["serve_model_dir", "serve_llama_dir"])
def test_serve_decoder_rows_match_model(which, layout, request):
    """Per-row positions into slots give the model's own logits (GPT-2 and Llama shapes, GQA), with the
    model's linear layers, transposed weight copies or oneDNN-packed weights."""
    model, _ = load_model_dir(request.getfixturevalue(which))
    if layout == "packed" and not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN")
    ids = torch.randint(0, 300, (1, 20), generator=torch.Generator().manual_seed(0))
    decoder = Decoder(model, num_slots=6, layout=layout)
    with torch.inference_mode():
        reference = model(ids)[0]  # (T, V)
    prefill = decoder.prefill(3, ids[0, :12].tolist(), all_positions=True)
    torch.testing.assert_close(prefill, reference[:12], atol=1e-5, rtol=1e-5)
    for t in range(12, 20):  # decode in slot 3 among five dummy rows
        logits = decoder.rows([0, 1, 2, 3, 4, 5], [0, 0, 0, t, 0, 0], [0, 0, 0, int(ids[0, t]), 0, 0])
        torch.testing.assert_close(logits[3], reference[t], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", ["transposed", "packed"])
def test_serve_decode_rows_are_alike_at_any_batch(layout, serve_llama_dir):
    """A row's logits are bit-identical whatever the other rows, from the padded row count up, and whether
    it runs as a decode row or as one of several rows of its slot (a speculative verification): the
    property the engine's batch invariance and speculative decoding rest on (checked on this machine's kernels)."""
    if layout == "packed" and not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN")
    model, _ = load_model_dir(serve_llama_dir)
    decoder = Decoder(model, num_slots=12, layout=layout)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 300, (12,), generator=gen).tolist()
    starts = torch.randint(0, 40, (12,), generator=gen).tolist()
    for slot in range(12):
        decoder.prefill(slot, torch.randint(0, 300, (40,), generator=gen).tolist())
    full = decoder.rows(list(range(12)), starts, ids)
    for n in sorted({decoder.pad_rows(k) for k in range(1, 12)}):
        part = decoder.rows(list(range(n)), starts[:n], ids[:n])
        assert torch.equal(part, full[:n]), f"{layout}: rows differ at a batch of {n}"
    # Slot 5 verifies three positions in one forward; each equals a decode step of that position.
    verify = decoder.rows([5, 5, 5, 7], [starts[5], starts[5] + 1, starts[5] + 2, starts[7]], [ids[5], 11, 12, ids[7]])
    assert torch.equal(verify[0], full[5]) and torch.equal(verify[3], full[7])
    step = decoder.rows(list(range(12)), [starts[5] + 1 if s == 5 else starts[s] for s in range(12)],
                        [11 if s == 5 else ids[s] for s in range(12)])
    assert torch.equal(verify[1], step[5])


@pytest.fixture(scope="module")
def engine(serve_model_dir):
    model, tokenizer = load_model_dir(serve_model_dir)
    eng = Engine(model, tokenizer, max_seqs=8)
    yield eng
    eng.shutdown()


def test_serve_engine_matches_generate(engine):
    """Alone, the engine's greedy tokens are those of the reference single-sequence generator."""
    ids = engine.tokenizer.encode(TEXTS[0])
    expected = list(generate_tokens(engine.model, ids, GREEDY, vocab_limit=engine.tokenizer.vocab_size))
    assert engine.generate(ids, GREEDY)[0].token_ids == expected


def test_serve_engine_batch_invariant_and_continuous(engine):
    """Ten requests at once (more than the 8 slots, so some wait and join as others leave, with different
    lengths) give bit-identical greedy tokens and logprobs to each request run alone."""
    prompts = [engine.tokenizer.encode(t) for t in TEXTS]
    params = [SamplingParams(temperature=0, max_new_tokens=8 + 3 * i, stop_at_eos=False) for i in range(10)]
    alone = [engine.generate(p, q, logprobs=0)[0] for p, q in zip(prompts, params, strict=True)]
    steps_before = engine.stats.decode_steps
    results: dict[int, Event] = {}

    def run(i: int) -> None:
        results[i] = engine.generate(prompts[i], params[i], logprobs=0)[0]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(10):
        assert results[i].token_ids == alone[i].token_ids, f"request {i} changed in a batch"
        assert [e.logprob for e in results[i].logprobs] == [e.logprob for e in alone[i].logprobs]
        assert len(results[i].token_ids) == params[i].max_new_tokens and results[i].finish_reason == "length"
    # batched: far fewer decode steps than the 10 requests' tokens one at a time
    assert engine.stats.decode_steps - steps_before < sum(q.max_new_tokens for q in params) / 2


def test_serve_engine_sampling_params(engine):
    ids = engine.tokenizer.encode("def foo")
    seeded = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, min_p=0.01, seed=7, max_new_tokens=12,
                            stop_at_eos=False)
    a, b = engine.generate(ids, seeded, n=2)
    again = engine.generate(ids, seeded, n=2)
    assert [a.token_ids, b.token_ids] == [again[0].token_ids, again[1].token_ids]  # seeds reproduce
    assert a.token_ids != b.token_ids  # choice i uses seed + i
    # logit_bias forces a token; a stop token ends at once
    forced = engine.generate(ids, SamplingParams(temperature=0, logit_bias={100: 100.0}, max_new_tokens=5,
                                                 stop_at_eos=False))[0]
    assert forced.token_ids == [100] * 5
    stopped = engine.generate(ids, SamplingParams(temperature=0, logit_bias={100: 100.0}, stop_token_ids=[100],
                                                  max_new_tokens=5))[0]
    assert stopped.token_ids == [100] and stopped.finish_reason == "stop" and stopped.stop_reason == 100
    # repetition penalty changes a greedy run that repeats
    plain = engine.generate(ids, SamplingParams(temperature=0, max_new_tokens=30, stop_at_eos=False))[0]
    penalized = engine.generate(ids, SamplingParams(temperature=0, max_new_tokens=30, stop_at_eos=False,
                                                    repetition_penalty=5.0, frequency_penalty=2.0))[0]
    assert len(set(penalized.token_ids)) >= len(set(plain.token_ids))
    assert penalized.token_ids != plain.token_ids


def test_serve_engine_stop_string_and_prompt_logprobs(engine):
    tok = engine.tokenizer
    ids = tok.encode("def foo(x):")
    free = engine.generate(ids, SamplingParams(temperature=0, max_new_tokens=20, stop_at_eos=False))[0]
    stop = free.text[3:6]
    cut = engine.generate(ids, SamplingParams(temperature=0, max_new_tokens=20, stop=[stop], stop_at_eos=False))[0]
    assert cut.finish_reason == "stop" and cut.stop_reason == stop
    assert cut.text == free.text[: free.text.index(stop)]
    # prompt logprobs: each prompt token's log-probability given its prefix, from a full forward, under the
    # model's whole vocabulary (as `groundup evaluate` scores; only sampling leaves out the padding rows)
    req = Request(prompt_ids=ids, params=SamplingParams(temperature=0, max_new_tokens=1), prompt_logprobs=3)
    done: queue.Queue = queue.Queue()
    req.on_event = done.put
    engine.submit(req)
    while done.get().finish_reason is None:
        pass
    with torch.inference_mode():
        logits = engine.model(torch.tensor([ids]))[0]
        logprobs = logits.log_softmax(-1)
    assert req.prompt_token_logprobs[0] is None
    for t in range(1, len(ids)):
        entry = req.prompt_token_logprobs[t]
        assert entry.token_id == ids[t] and abs(entry.logprob - float(logprobs[t - 1, ids[t]])) < 1e-4
        assert len(entry.top) == 3 and entry.top[0][1] >= entry.logprob - 1e-6


def test_serve_engine_cancel_and_bad_requests(engine):
    ids = engine.tokenizer.encode("x")
    done: queue.Queue = queue.Queue()
    req = Request(prompt_ids=ids, params=SamplingParams(temperature=0, max_new_tokens=10_000, stop_at_eos=False),
                  on_event=done.put)
    rid = engine.submit(req)
    done.get(timeout=30)  # it runs
    engine.cancel(rid)
    while (event := done.get(timeout=30)).finish_reason is None:
        pass
    assert event.finish_reason == "cancelled"
    with pytest.raises(ValueError, match="context"):
        engine.submit(Request(prompt_ids=[1] * 300, params=GREEDY))
    with pytest.raises(ValueError, match="vocabulary"):
        engine.submit(Request(prompt_ids=[10_000], params=GREEDY))
    # the engine still serves
    assert engine.generate(ids, SamplingParams(temperature=0, max_new_tokens=3))[0].finish_reason in ("length", "stop")


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through /proc")
def test_release_openmp_pool_frees_the_idle_workers():
    """The engine frees its creator's idle OpenMP workers (they would slow the engine thread's own)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.ones(10**7).add_(1)  # a parallel region: this thread gets a pool of workers
        before = len(os.listdir("/proc/self/task"))
        assert release_openmp_pool()
        deadline = time.monotonic() + 2  # the freed workers exit on their own
        while len(os.listdir("/proc/self/task")) >= before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(os.listdir("/proc/self/task")) < before
    finally:
        torch.set_num_threads(threads)


def test_compiled_decode_steps_give_the_models_logits(serve_llama_dir):
    """`compile=True`: decode and verification rows through one torch.compile graph (reading the rows' keys,
    writing the step's back) give the uncompiled step's logits, and leave the cache as it would."""
    model, _ = load_model_dir(serve_llama_dir)
    eager = Decoder(model, num_slots=3, layout="packed" if torch.backends.mkldnn.is_available() else "plain")
    compiled = Decoder(model, num_slots=3, layout="plain", compile=True)
    gen = torch.Generator().manual_seed(3)
    for slot in range(3):
        prompt = torch.randint(0, 300, (10 + slot,), generator=gen).tolist()
        eager.prefill(slot, prompt)
        compiled.prefill(slot, prompt)
    steps = [([0, 1, 2], [10, 11, 12], [5, 6, 7]), ([1], [12], [9]), ([2, 2, 2, 0], [13, 14, 15, 11], [1, 2, 3, 4])]
    for slots, positions, tokens in steps:
        torch.testing.assert_close(compiled.rows(slots, positions, tokens), eager.rows(slots, positions, tokens),
                                   atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(compiled.cache.k[:, :3, :, :16], eager.cache.k[:, :3, :, :16], atol=1e-4, rtol=1e-4)
    # by default a compiled decoder multiplies by the model's own weights (inductor cannot lower oneDNN's packed ones)
    assert Decoder(model, num_slots=1, compile=True).view is model
