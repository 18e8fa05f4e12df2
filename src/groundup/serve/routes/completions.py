"""``POST /v1/completions``: text completion, echo and the log-probabilities of prompt and completion.

With ``echo`` and ``logprobs`` the answer scores the prompt as lm-evaluation-harness's
``local-completions`` model reads it: ``tokens`` rebuild the prompt text, ``token_logprobs[0]`` is null
(the first token has no prefix) and every other prompt token's log-probability is given its prefix;
``max_tokens=0`` scores without generating.
"""

from __future__ import annotations

import time
import uuid

import fastapi

from groundup.infer.engine import Event, Request, TokenLogprob
from groundup.serve.dispatch import run_requests, usage_of
from groundup.serve.protocol import CompletionRequest
from groundup.serve.state import ServerState, State
from groundup.serve.streaming import MakeChunk, stream_response
from groundup.serve.validation import check_body_size, check_model, completion_requests

router = fastapi.APIRouter()

Entry = tuple[int, float | None, list[tuple[int, float]] | None]
"""A token of the answer: id, log-probability (None for the prompt's first), top alternatives (None there too)."""


@router.post("/v1/completions")
async def completions(body: CompletionRequest, http: fastapi.Request, state: State):
    await check_body_size(state, http)
    check_model(state, body.model)
    reqs = completion_requests(state, body)
    rid = f"cmpl-{uuid.uuid4().hex}"
    if body.stream:
        usage = None
        if body.stream_options and body.stream_options.include_usage:
            def usage(u: dict) -> dict:
                return {"id": rid, "object": "text_completion", "created": int(time.time()),
                        "model": state.model_name, "choices": [], "usage": u}
        return stream_response(state, http, reqs, chunk_maker(state, rid, body, reqs), usage_chunk=usage)
    results = await run_requests(state, http, reqs)
    choices = []
    for pi, (req, merged) in enumerate(zip(reqs, results, strict=True)):
        for ev in merged:
            choices.append(choice(state, body, req, ev, pi * body.n + ev.index, echo=body.echo))
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": state.model_name,
            "choices": choices, "usage": usage_of(reqs, results)}


def choice(state: ServerState, body: CompletionRequest, req: Request, ev: Event, index: int, *, echo: bool) -> dict:
    """One choice: the text (after the prompt when echoing) and its logprobs when asked for."""
    text, entries = ev.text, generated_entries(ev.logprobs)
    if echo:
        text = state.tokenizer.decode(req.prompt_ids) + text
        entries = prompt_entries(req) + entries
    return {"index": index, "text": text,
            "logprobs": completion_logprobs(state, entries) if body.logprobs is not None else None,
            "finish_reason": ev.finish_reason, "stop_reason": ev.stop_reason}


def chunk_maker(state: ServerState, rid: str, body: CompletionRequest, reqs: list[Request]) -> MakeChunk:
    echoed: set[tuple[int, int]] = set()  # (request, choice) whose prompt went out already

    def make(pi: int, ev: Event) -> dict | None:
        if not ev.text and not ev.token_ids and ev.finish_reason is None:
            return None
        echo = body.echo and (pi, ev.index) not in echoed
        echoed.add((pi, ev.index))
        out = choice(state, body, reqs[pi], ev, pi * body.n + ev.index, echo=echo)
        del out["stop_reason"]
        return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": state.model_name,
                "choices": [out]}

    return make


def prompt_entries(req: Request) -> list[Entry]:
    """Every prompt token, scored (when the engine scored the prompt) or not."""
    scored = req.prompt_token_logprobs or [None] * len(req.prompt_ids)
    return [(token, e.logprob, e.top) if e is not None else (token, None, None)
            for token, e in zip(req.prompt_ids, scored, strict=True)]


def generated_entries(logprobs: list[TokenLogprob]) -> list[Entry]:
    return [(e.token_id, e.logprob, e.top) for e in logprobs]


def completion_logprobs(state: ServerState, entries: list[Entry]) -> dict:
    """OpenAI's legacy completions logprobs: tokens, token_logprobs, top_logprobs, text_offset (characters into
    the choice's text)."""
    tokens, token_logprobs, top, offsets = [], [], [], []
    pos = 0
    for token_id, logprob, alternatives in entries:
        text = state.engine.token_text(token_id)
        tokens.append(text)
        token_logprobs.append(logprob)
        if alternatives is None:
            top.append(None)
        else:
            alts: dict[str, float] = {}
            for t, lp in alternatives:
                alts.setdefault(state.engine.token_text(t), lp)
            top.append(alts)
        offsets.append(pos)
        pos += len(text)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets}
