"""Hand engine requests to the engine thread and wait for their answers, for one HTTP request.

Each engine request has its own event queue, so no request can see another's tokens. A client that
disconnects cancels its requests, which frees their KV-cache slots at the next engine step. An engine
request that ends with an error is a server fault: HTTP 500 with the request id.
"""

from __future__ import annotations

import asyncio

import fastapi

from groundup.infer.engine import Event, Request
from groundup.serve.errors import APIError, engine_fault, request_id
from groundup.serve.state import ConcurrencyPermit, ServerState


def submit_all(state: ServerState, reqs: list[Request]) -> None:
    """Submit every request, or none: one the engine refuses cancels those already in."""
    for r in reqs:
        try:
            state.engine.submit(r)
        except ValueError as e:  # validation let through what the engine cannot run (a prompt too long for it)
            for done in reqs:
                if done.request_id > 0:
                    state.engine.cancel(done.request_id)
            raise APIError(400, str(e)) from None


async def run_requests(state: ServerState, http: fastapi.Request, reqs: list[Request]) -> list[list[Event]]:
    """Run requests to the end; cancel them if the client disconnects. One merged event per choice."""
    loop = asyncio.get_running_loop()
    with ConcurrencyPermit(state):
        queues = [r.async_events(loop) for r in reqs]
        submit_all(state, reqs)
        try:
            out = []
            for req, q in zip(reqs, queues, strict=True):
                merged = [Event(index=i) for i in range(req.n)]
                remaining = req.n
                while remaining:
                    try:
                        ev = await asyncio.wait_for(q.get(), timeout=1.0)
                    except asyncio.TimeoutError:
                        if await http.is_disconnected():  # nobody reads the answer; the finally cancels
                            raise APIError(400, "client disconnected", code="client_disconnected") from None
                        continue
                    remaining -= merged[ev.index].absorb(ev)
                out.append(merged)
        finally:
            for r in reqs:  # no-op for finished requests
                state.engine.cancel(r.request_id)
    failed = next((ev for merged in out for ev in merged if ev.finish_reason == "error"), None)
    if failed is not None:
        raise engine_fault(failed.error, request_id(http))
    return out


def usage_of(reqs: list[Request], results: list[list[Event]]) -> dict:
    prompt = sum(len(r.prompt_ids) for r in reqs)
    completion = sum(len(ev.token_ids) for merged in results for ev in merged)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
