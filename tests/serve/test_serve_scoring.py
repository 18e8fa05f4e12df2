"""Scoring through the server as harnesses do: echo + logprobs, max_tokens=0, room in the context, models.retrieve."""

from __future__ import annotations

import itertools
import json
import math
import queue

import httpx
import openai
import pytest

from groundup.infer.engine import Engine, Request
from groundup.infer.sampling import SamplingParams
from groundup.model.io import load_model_dir

PROMPT = "def foo(x):\n    return x + 1"


@pytest.fixture(scope="module")
def client(live_server):
    return openai.OpenAI(base_url=live_server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_serve_echo_tokens_rebuild_the_prompt(client):
    """lm-eval's local-completions request (echo, logprobs=1, max_tokens=1): the tokens spell the prompt, the
    offsets count their characters, only the first token has no log-probability."""
    out = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=1, echo=True, logprobs=1, temperature=0)
    choice = out.choices[0]
    lp = choice.logprobs
    n_prompt = out.usage.prompt_tokens
    assert "".join(lp.tokens[:n_prompt]) == PROMPT and "".join(lp.tokens) == choice.text
    assert lp.text_offset == list(itertools.accumulate((len(t) for t in lp.tokens[:-1]), initial=0))
    assert lp.tokens[0] == PROMPT[: len(lp.tokens[0])] and len(lp.tokens[0]) > 0
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(v < 0 for v in lp.token_logprobs[1:])
    assert all(len(top) == 1 and max(top.values()) >= v - 1e-6 for top, v in zip(lp.top_logprobs[1:],
                                                                                   lp.token_logprobs[1:], strict=True))


def test_serve_max_tokens_zero_scores_the_prompt(client):
    """max_tokens=0 with echo: the prompt's tokens and logprobs, nothing generated, the same numbers bit for bit
    as the prompt part of a max_tokens=1 answer."""
    scored = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=0, echo=True, logprobs=2)
    one = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=1, echo=True, logprobs=2, temperature=0)
    choice = scored.choices[0]
    assert choice.text == PROMPT and choice.finish_reason == "length"
    assert scored.usage.completion_tokens == 0 and scored.usage.prompt_tokens == one.usage.prompt_tokens
    assert choice.logprobs.tokens == one.choices[0].logprobs.tokens[:-1]
    assert choice.logprobs.token_logprobs == one.choices[0].logprobs.token_logprobs[:-1]
    # several prompts (token ids, as lm-eval sends them) in one request, each scored on its own
    ids = [[5, 6, 7, 8], [9, 10]]
    batch = client.completions.create(model="tiny", prompt=ids, max_tokens=0, echo=True, logprobs=0)
    assert [len(c.logprobs.tokens) for c in sorted(batch.choices, key=lambda c: c.index)] == [4, 2]


def test_serve_max_tokens_zero_streams_the_prompt(live_server):
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 0, "echo": True, "logprobs": 0, "stream": True}
    with httpx.stream("POST", live_server.url + "/v1/completions", json=body, timeout=60) as r:
        lines = [line for line in r.iter_lines() if line]
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert lines[-1] == "data: [DONE]" and "".join(c["choices"][0]["text"] for c in chunks) == PROMPT
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(("body", "param", "code"), [
    ({"prompt": PROMPT, "max_tokens": 0}, "max_tokens", None),  # nothing to give back without echo
    ({"prompt": [7] * 200, "max_tokens": 64}, "max_tokens", "context_length_exceeded"),  # 264 > the 256 positions
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens", None),  # chat generates
])
def test_serve_max_tokens_out_of_room_is_400(live_server, body, param, code):
    route = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    r = httpx.post(live_server.url + route, json={"model": "tiny", **body}, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and r.json()["error"]["code"] == code


def test_serve_default_max_tokens_fits_the_room(live_server):
    """No max_tokens: the default shrinks to the room the prompt leaves instead of failing."""
    prompt = [7] * 200  # 200 of the context's 256 positions; the chat default asks for 256
    r = httpx.post(live_server.url + "/v1/completions", json={"prompt": prompt, "ignore_eos": True}, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 16
    long_chat = {"messages": [{"role": "user", "content": "word " * 20}], "ignore_eos": True, "temperature": 0}
    r = httpx.post(live_server.url + "/v1/chat/completions", json=long_chat, timeout=120)
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] == 256


def test_serve_models_retrieve(client):
    assert client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_engine_score_only(serve_model_dir):
    """A score_only request prefills, scores and samples nothing; its prompt may fill the whole context."""
    model, tokenizer = load_model_dir(serve_model_dir)
    engine = Engine(model, tokenizer, max_seqs=2)
    try:
        ids = tokenizer.encode(PROMPT)

        def run(request: Request) -> list:
            done: queue.Queue = queue.Queue()
            request.on_event = done.put
            engine.submit(request)
            events = []
            while len([e for e in events if e.finish_reason]) < request.n:
                events.append(done.get(timeout=60))
            return events

        greedy = SamplingParams(temperature=0, max_new_tokens=1)
        scored = Request(prompt_ids=ids, params=greedy, n=2, prompt_logprobs=1, score_only=True)
        events = run(scored)
        assert [(e.finish_reason, e.token_ids) for e in events] == [("length", []), ("length", [])]
        generating = Request(prompt_ids=ids, params=greedy, prompt_logprobs=1)
        run(generating)
        assert [e and e.logprob for e in scored.prompt_token_logprobs] == \
            [e and e.logprob for e in generating.prompt_token_logprobs]
        full = (ids * 100)[: engine.max_len]
        run(Request(prompt_ids=full, params=greedy, prompt_logprobs=0, score_only=True))
        with pytest.raises(ValueError, match="context"):  # a prompt longer than the context
            engine.submit(Request(prompt_ids=full + ids[:1], params=greedy, prompt_logprobs=0, score_only=True))
        with pytest.raises(ValueError, match="prompt_logprobs"):
            engine.submit(Request(prompt_ids=ids, params=greedy, score_only=True))
    finally:
        engine.shutdown()


def test_serve_scores_a_padded_vocabulary_as_groundup_evaluate(client, serve_model):
    """The served model's vocabulary (384) is padded above its tokenizer's (320): the server scores under the
    whole vocabulary, as `groundup evaluate` (the one scorer), not only the tokenizer's ids."""
    from groundup.infer.score import ScoreRequest, score_requests

    model, tokenizer = serve_model
    ids = tokenizer.encode(PROMPT)
    scored = client.completions.create(model="tiny", prompt=ids, max_tokens=0, echo=True, logprobs=0)
    served = math.fsum(scored.choices[0].logprobs.token_logprobs[1:])
    (reference,) = score_requests(model, [ScoreRequest(tuple(ids[:1]), tuple(ids[1:]))])
    assert served == reference.loglikelihood
