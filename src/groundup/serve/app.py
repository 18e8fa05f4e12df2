"""The FastAPI app: error handlers, one middleware (request id, API key, body size, response counts), the routers."""

from __future__ import annotations

import hmac

import fastapi

from groundup.serve import routes
from groundup.serve.errors import (
    REQUEST_ID_HEADER,
    APIError,
    error_response,
    install_error_handlers,
    request_id,
    unexpected_error,
)
from groundup.serve.routes.monitoring import OPEN_PATHS
from groundup.serve.state import ServerState


def create_app(state: ServerState) -> fastapi.FastAPI:
    """The app over ``state``, mounting every router of :data:`groundup.serve.routes.ROUTERS`."""
    app = fastapi.FastAPI(title="groundup", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = state
    install_error_handlers(app)

    @app.middleware("http")
    async def _guard(http: fastapi.Request, call_next):
        rid = request_id(http)
        refused = check_access(state, http)
        if refused is not None:
            response = error_response(refused, rid)
        else:
            try:
                response = await call_next(http)
            except Exception as exc:  # a bug in a route: 500 with the request id (and the traceback in the log)
                response = error_response(unexpected_error(exc, rid), rid)
        response.headers[REQUEST_ID_HEADER] = rid
        state.responses[response.status_code] += 1
        return response

    for router in routes.ROUTERS:
        app.include_router(router)
    return app


def check_access(state: ServerState, http: fastapi.Request) -> APIError | None:
    """The API key (on every route but /health and /metrics) and the declared body size, before any route runs."""
    sent = http.headers.get("authorization", "").encode()
    if state.api_key and http.url.path not in OPEN_PATHS and \
            not hmac.compare_digest(sent, f"Bearer {state.api_key}".encode()):
        return APIError(401, "missing or invalid API key (send 'Authorization: Bearer <key>')", code="invalid_api_key")
    size = http.headers.get("content-length")
    if size is not None and (not size.isdigit() or int(size) > state.limits.max_request_bytes):
        return APIError(413, f"request body over {state.limits.max_request_bytes} bytes", code="request_too_large")
    return None
