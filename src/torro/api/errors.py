"""Every error of the API as ``{"error": {"code": ..., "message": ...}}``.

The code is a short snake_case word a client can branch on; the message
is one lower-case line for a person. Neither ever holds what the client
sent (a key, a token, a license): a message names the field at fault and
the rule it broke, not the value.

=====  ==========================  ========================================
 400   ``malformed_json``          the body is not JSON
 400   ``invalid_key``             a key that is not hex digits
 400   ``bad_request``             not HTTP/1.1 at all (answered by the
                                   server, torro.api.server)
 401   ``unauthorized``            no Authorization header, or not Bearer
 403   ``forbidden``               wrong token, read-only token on a full
                                   endpoint, or no token configured
 404   ``not_found``               no such endpoint, or an unknown or
                                   pruned key index
 405   ``method_not_allowed``      the endpoint exists for another method
 413   ``body_too_large``          over :data:`torro.api.limits.MAX_BODY`
 422   ``invalid_request``         a field of the wrong type or out of
                                   range
 429   ``rate_limited``            too many requests from one address
 500   ``internal_error``          a bug; the traceback is in system.log
 503   ``unavailable``             the key store cannot serve (damaged,
                                   empty, rotation refused)
 503   ``unhealthy``               ``GET status`` of an unhealthy daemon
=====  ==========================  ========================================
"""

import logging
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from torro import logs


system_log = logging.getLogger(logs.SYSTEM)

# The reason phrase of statuses whose code is not given explicitly.
_DEFAULT_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    422: "invalid_request",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


class ErrorDetail(BaseModel):
    """What went wrong: a code to branch on and a line to read."""

    code: str
    message: str


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


class ApiError(Exception):
    """An error a route answers with, as its status and error body.

    :param status: the HTTP status, 4xx or 5xx.
    :param message: one lower-case line, without what the client sent.
    :param code: the error code; by default the one of ``status``.
    :param headers: extra response headers (Retry-After, Allow).
    """

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or _DEFAULT_CODES.get(status, "error")
        self.headers = dict(headers or {})


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def error_response(
    status: int,
    message: str,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """Return the JSON response of one error."""
    code = code or _DEFAULT_CODES.get(status, "error")
    return JSONResponse(
        error_body(code, message),
        status_code=status,
        headers=dict(headers or {}),
    )


def describe(status: int) -> str:
    """Return the description of an error status in the document."""
    code = _DEFAULT_CODES.get(status, "error")
    return code.replace("_", " ").capitalize()


async def api_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, exc.code, exc.headers)


async def http_error_handler(
    request: Request, exc: Exception
) -> JSONResponse:
    """Answer Starlette's own errors (no route, wrong method) our way."""
    status = getattr(exc, "status_code", 500)
    headers = getattr(exc, "headers", None) or {}
    if status == 404:
        message = "no such endpoint: /openapi.json lists them"
    elif status == 405:
        message = f"{request.method} is not allowed here"
    else:
        message = str(getattr(exc, "detail", "")).lower() or "error"
    return error_response(status, message, headers=headers)


class InternalErrorMiddleware:
    """Answer 500 with the error body, never a traceback.

    Whatever a route raises that no handler took ends here: the
    traceback goes to ``system.log``, the client gets one line.

    :param app: the application to wrap.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            # the traceback in the message, not exc_info, so that the
            # system log holds it whatever the level
            system_log.error(
                "unexpected error in the API on %s %s: %s",
                scope.get("method"),
                scope.get("path"),
                logs.traceback_text(exc),
            )
            if started:
                raise
            response = error_response(
                500, "internal error: the system log has the details"
            )
            await response(scope, receive, send)
