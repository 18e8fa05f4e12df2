"""``POST /v1/chat/completions``: a conversation through the model dir's chat template, answered or streamed.

With tools, the answer's ``<tool_call>`` blocks become the message's ``tool_calls`` (streamed as
``delta.tool_calls``, as OpenAI streams them) and ``finish_reason`` is ``tool_calls``; see serve/tools.py.
"""

from __future__ import annotations

import time
import uuid

import fastapi

from groundup.infer.engine import Event, TokenLogprob
from groundup.serve.dispatch import run_requests, usage_of
from groundup.serve.protocol import ChatCompletionRequest
from groundup.serve.state import ServerState, State
from groundup.serve.streaming import MakeChunk, stream_response
from groundup.serve.tools import ToolCallParser, parse_tool_calls
from groundup.serve.validation import chat_request, check_body_size, check_model

router = fastapi.APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, http: fastapi.Request, state: State):
    await check_body_size(state, http)
    check_model(state, body.model)
    req, with_tools = chat_request(state, body)
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
        return stream_response(state, http, [req], chunk_maker(state, head, with_logprobs, with_tools),
                               usage_chunk=usage, first_chunks=[first])
    (merged,) = await run_requests(state, http, [req])
    choices = []
    for ev in merged:
        message, finish = {"role": "assistant", "content": ev.text}, ev.finish_reason
        if with_tools:
            content, calls = parse_tool_calls(ev.text)
            if calls:
                message = {"role": "assistant", "content": content or None, "tool_calls": calls}
                finish = tool_finish(finish)
        choices.append({"index": ev.index, "message": message,
                        "logprobs": chat_logprobs(state, ev.logprobs) if with_logprobs else None,
                        "finish_reason": finish, "stop_reason": ev.stop_reason})
    return {"id": rid, "object": "chat.completion", "created": created, "model": state.model_name,
            "choices": choices, "usage": usage_of([req], [merged])}


def tool_finish(finish_reason: str | None) -> str | None:
    """An answer that called tools and ended by itself finished with ``tool_calls`` (OpenAI's reason)."""
    return "tool_calls" if finish_reason == "stop" else finish_reason


def chunk_maker(state: ServerState, head: dict, with_logprobs: bool, with_tools: bool = False) -> MakeChunk:
    parsers: dict[int, ToolCallParser] = {}  # per choice, when the answer may call tools

    def make(_: int, ev: Event) -> dict | None:
        if not ev.text and not ev.token_ids and ev.finish_reason is None:
            return None
        finish = ev.finish_reason
        if with_tools:
            parser = parsers.setdefault(ev.index, ToolCallParser())
            delta = parser.feed(ev.text)
            if finish is not None:
                rest = parser.finish()
                delta.content += rest.content
                for entry in rest.tool_calls:
                    delta.add_call_entry(entry)
                if parser.calls:
                    finish = tool_finish(finish)
            delta = delta.as_dict()
            if not delta and finish is None and not (with_logprobs and ev.logprobs):
                return None  # held back: it may be the start of a tool call's tag
        else:
            delta = {"content": ev.text} if ev.text or finish is None else {}
        return {**head, "choices": [{"index": ev.index, "delta": delta,
                                     "logprobs": chat_logprobs(state, ev.logprobs) if with_logprobs and ev.logprobs
                                     else None, "finish_reason": finish}]}

    return make


def chat_logprobs(state: ServerState, entries: list[TokenLogprob]) -> dict:
    def one(token_id: int, logprob: float) -> dict:
        data = state.tokenizer.decode_bytes([token_id])
        return {"token": data.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(data)}

    return {"content": [{**one(e.token_id, e.logprob), "top_logprobs": [one(t, lp) for t, lp in e.top]}
                        for e in entries]}
