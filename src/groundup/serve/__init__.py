"""Serving: the OpenAI-compatible HTTP server (``groundup serve``) and the terminal chat (``groundup chat``).

Layout of the server, from the outside in::

    server.py       the stage: Config (sections ``engine`` and ``limits``), build_state, run (uvicorn)
    settings.py     the sections: EngineSettings (slots, context, prefill budget, draft model), RequestLimits
    app.py          create_app: error handlers, one middleware (request id, API key, body size, counts),
                    then every router of routes.ROUTERS
    routes/         one APIRouter per module (completions, chat, models, tokenize, monitoring);
                    routes.ROUTERS lists them
    protocol.py     the request bodies (pydantic; wrong types become 400)
    validation.py   a body in, engine Requests out: prompts, limits, sampling, grammar (4xx for client mistakes)
    dispatch.py     submit to the engine thread, await the events, cancel on disconnect (500 on engine faults)
    streaming.py    server-sent events over the same engine requests
    errors.py       APIError, OpenAI-shaped error bodies, request ids, the exception handlers
    metrics.py      /metrics' Prometheus text
    state.py        ServerState (engine, tokenizer, template, counters), ConcurrencyPermit, and ``State``,
                    the route parameter that receives the ServerState
    chat.py         the terminal chat stage (not part of the server)

A route function validates its body (validation.py), runs the engine requests (dispatch.py or
streaming.py) and shapes the answer itself. Adding an endpoint touches the files listed in
docs/serve.md under "Adding an endpoint" and nothing else.
"""
