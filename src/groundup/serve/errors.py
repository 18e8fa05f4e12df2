"""Errors in OpenAI's shape, and which status each kind of failure gets.

Every error body is ``{"error": {"message", "type", "param", "code"}, "request_id": ...}``. A 4xx status
means the client can fix it: a body that is not JSON or has wrong types (400), a bad parameter value
(400), a missing or wrong API key (401), an unknown model or route (404), a body over the size limit
(413), too many requests at once (429). A 5xx status means the server failed: the engine failed on the
request (500), an unexpected exception (500), an optional part not installed (501). Every response
carries its request id in the ``x-request-id`` header (the client's own, when it sends a sane one); a
5xx also names it in the message and in the server's log line, so a user's report can be matched to
the log.
"""

from __future__ import annotations

import logging
import re
import uuid

import fastapi
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from groundup.extras import MissingExtraError, require_extra

log = logging.getLogger("groundup.serve")

REQUEST_ID_HEADER = "x-request-id"
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
LEGACY_FIELDS = {"functions": " (deprecated by OpenAI: send 'tools')",
                 "function_call": " (deprecated by OpenAI: send 'tool_choice')"}
"""Fields OpenAI deprecated, and what to send instead (named in the 400 answer)."""
_TYPE_OF_STATUS = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}


class APIError(Exception):
    """An answer other than 2xx; raised anywhere while handling a request, answered by the handler below."""

    def __init__(self, status: int, message: str, *, type: str | None = None, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or ("server_error" if status >= 500 else _TYPE_OF_STATUS.get(status, "invalid_request_error"))


def request_id(http: fastapi.Request) -> str:
    """This HTTP request's id: set once by the middleware, from the client's x-request-id header when sane."""
    rid = getattr(http.state, "request_id", None)
    if rid is None:
        sent = http.headers.get(REQUEST_ID_HEADER, "")
        rid = sent if _CLIENT_ID.fullmatch(sent) else f"req-{uuid.uuid4().hex}"
        http.state.request_id = rid
    return rid


def error_body(error: APIError, rid: str | None) -> dict:
    return {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code},
            "request_id": rid}


def error_response(error: APIError, rid: str | None = None) -> JSONResponse:
    headers = {REQUEST_ID_HEADER: rid} if rid else None
    return JSONResponse(error_body(error, rid), status_code=error.status, headers=headers)


def engine_fault(message: str | None, rid: str) -> APIError:
    """The engine ended a request with an error: a server fault, logged with the request id."""
    log.error("request %s: the engine failed: %s", rid, message)
    return APIError(500, f"the engine failed on this request: {message or 'unknown error'} (request id {rid})",
                    code="engine_error")


def unexpected_error(exc: BaseException, rid: str) -> APIError:
    """Any other exception while handling a request: a bug, logged with its traceback and the request id."""
    log.error("request %s: unexpected %s", rid, type(exc).__name__, exc_info=exc)
    return APIError(500, f"internal error: {type(exc).__name__} (request id {rid})", code="internal_error")


def missing_extra(what: str, module: str) -> APIError:
    """An optional dependency is not installed: the server cannot do this, whatever the client sends."""
    try:
        require_extra("serve", module, purpose=what)
    except MissingExtraError as e:
        return APIError(501, str(e), code="not_installed")
    return APIError(501, f"{what} is not available on this server", code="not_installed")


def install_error_handlers(app: fastapi.FastAPI) -> None:
    """Answer APIError, bad bodies and Starlette's HTTP errors (404, 405) in OpenAI's shape."""

    @app.exception_handler(APIError)
    async def _api_error(http: fastapi.Request, exc: APIError):
        rid = request_id(http)
        if exc.status >= 500 and exc.code not in ("engine_error", "internal_error"):  # those were logged already
            log.error("request %s: %d %s", rid, exc.status, exc.message)
        return error_response(exc, rid)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(http: fastapi.Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        if first.get("type") == "json_invalid":
            return error_response(APIError(400, "the request body is not valid JSON", code="invalid_json"),
                                  request_id(http))
        unknown = [".".join(str(p) for p in e.get("loc", ()) if p != "body") for e in errors
                   if e.get("type") == "extra_forbidden"]
        if unknown:  # OpenAI's answer to a field it does not know: 400 naming it, never a silent drop
            hint = LEGACY_FIELDS.get(unknown[0], "")
            return error_response(APIError(400, f"unrecognized request argument(s): {', '.join(unknown)}{hint}",
                                           param=unknown[0], code="unknown_parameter"), request_id(http))
        message = f"{where}: {first.get('msg', 'invalid value')}" if where else first.get("msg", "invalid request body")
        return error_response(APIError(400, message, param=where or None), request_id(http))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(http: fastapi.Request, exc: StarletteHTTPException):
        return error_response(APIError(exc.status_code, str(exc.detail)), request_id(http))
