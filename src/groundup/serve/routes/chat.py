"""``POST /v1/chat/completions``: a conversation through the model dir's chat template, answered or streamed."""

from __future__ import annotations

import time
import uuid

import fastapi

from groundup.infer.engine import Event, TokenLogprob
from groundup.serve.dispatch import run_requests, usage_of
from groundup.serve.protocol import ChatCompletionRequest
from groundup.serve.state import ServerState, State
from groundup.serve.streaming import MakeChunk, stream_response
from groundup.serve.validation import chat_request, check_body_size, check_model

router = fastapi.APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, http: fastapi.Request, state: State):
    await check_body_size(state, http)
    check_model(state, body.model)
    req = chat_request(state, body)
    rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    with_logprobs = req.logprobs is not None
    if body.stream:
        head = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": state.model_name}
        usage = None
        if body.stream_options and body.stream_options.include_usage:
            def usage(u: dict) -> dict:
                return {**head, "choices": [], "usage": u}
        first = {**head, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                      "finish_reason": None} for i in range(body.n)]}
        return stream_response(state, http, [req], chunk_maker(state, head, with_logprobs), usage_chunk=usage,
                               first_chunks=[first])
    (merged,) = await run_requests(state, http, [req])
    choices = [{"index": ev.index, "message": {"role": "assistant", "content": ev.text},
                "logprobs": chat_logprobs(state, ev.logprobs) if with_logprobs else None,
                "finish_reason": ev.finish_reason, "stop_reason": ev.stop_reason} for ev in merged]
    return {"id": rid, "object": "chat.completion", "created": created, "model": state.model_name,
            "choices": choices, "usage": usage_of([req], [merged])}


def chunk_maker(state: ServerState, head: dict, with_logprobs: bool) -> MakeChunk:
    def make(_: int, ev: Event) -> dict | None:
        if not ev.text and not ev.token_ids and ev.finish_reason is None:
            return None
        delta = {"content": ev.text} if ev.text or ev.finish_reason is None else {}
        return {**head, "choices": [{"index": ev.index, "delta": delta,
                                     "logprobs": chat_logprobs(state, ev.logprobs) if with_logprobs and ev.logprobs
                                     else None, "finish_reason": ev.finish_reason}]}

    return make


def chat_logprobs(state: ServerState, entries: list[TokenLogprob]) -> dict:
    def one(token_id: int, logprob: float) -> dict:
        data = state.tokenizer.decode_bytes([token_id])
        return {"token": data.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(data)}

    return {"content": [{**one(e.token_id, e.logprob), "top_logprobs": [one(t, lp) for t, lp in e.top]}
                        for e in entries]}
