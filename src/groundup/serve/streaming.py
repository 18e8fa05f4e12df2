"""Server-sent events: one ``data: {json}`` line per chunk, then ``data: [DONE]`` (OpenAI's streaming format).

The route builds its chunks (``make_chunk``); this module runs the engine requests, interleaves their
events as they come, cancels them if the client leaves, and gives the concurrency permit back when the
engine has ended every choice, even if the response body never started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable

import fastapi
from fastapi.responses import StreamingResponse

from groundup.infer.engine import Event, Request
from groundup.serve.dispatch import submit_all, usage_of
from groundup.serve.errors import APIError, engine_fault, error_body, request_id
from groundup.serve.state import ConcurrencyPermit, ServerState

MakeChunk = Callable[[int, Event], dict | None]
"""(index of the engine request, event) -> the chunk to send, or None to send nothing."""


def sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def stream_response(state: ServerState, http: fastapi.Request, reqs: list[Request], make_chunk: MakeChunk, *,
                    usage_chunk: Callable[[dict], dict] | None = None,
                    first_chunks: list[dict] | None = None) -> StreamingResponse:
    """Submit ``reqs`` and stream their events; ``usage_chunk`` (given the usage) ends the stream when set."""
    loop = asyncio.get_running_loop()
    permit = ConcurrencyPermit(state).acquire()  # 429 is answered before the stream starts
    unfinished = [sum(r.n for r in reqs)]

    def on_finished() -> None:
        unfinished[0] -= 1
        if unfinished[0] == 0:
            permit.release()

    events: asyncio.Queue = asyncio.Queue()  # (request index, event) of every request of this stream
    for pi, r in enumerate(reqs):
        r.on_event = _put_tagged(loop, events, pi, on_finished)
    try:
        submit_all(state, reqs)
    except APIError:
        permit.release()
        raise
    body = _events(state, request_id(http), reqs, events, make_chunk, usage_chunk, first_chunks or [])
    return StreamingResponse(body, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _events(state: ServerState, rid: str, reqs: list[Request], events: asyncio.Queue, make_chunk: MakeChunk,
                  usage_chunk: Callable[[dict], dict] | None, first_chunks: list[dict]) -> AsyncIterator[str]:
    try:
        for chunk in first_chunks:
            yield sse(chunk)
        remaining = sum(r.n for r in reqs)
        generated = [[Event(index=i) for i in range(r.n)] for r in reqs]
        while remaining:
            pi, ev = await events.get()
            generated[pi][ev.index].token_ids += ev.token_ids
            if ev.finish_reason == "error":  # the status line is sent already: say so in the stream
                yield sse(error_body(engine_fault(ev.error, rid), rid))
            chunk = make_chunk(pi, ev)
            if chunk is not None:
                yield sse(chunk)
            if ev.finish_reason is not None:
                remaining -= 1
        if usage_chunk is not None:
            yield sse(usage_chunk(usage_of(reqs, generated)))
        yield sse("[DONE]")
    finally:
        for r in reqs:  # a client that left: stop generating (no-op for finished requests)
            state.engine.cancel(r.request_id)


def _put_tagged(loop: asyncio.AbstractEventLoop, q: asyncio.Queue, pi: int, on_finished: Callable[[], None]):
    def on_event(ev: Event) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is listening any more
            loop.call_soon_threadsafe(q.put_nowait, (pi, ev))
            if ev.finish_reason is not None:
                loop.call_soon_threadsafe(on_finished)

    return on_event
