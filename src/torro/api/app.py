"""The API application: its routes, errors, limits and OpenAPI document.

Built on Starlette alone: importing FastAPI as well adds some 5 MB to
the daemon's resident memory, which the API's budget (64 MB, with 46
as the aim) has little room for. Endpoints are
declared as data (torro.api.endpoints), and the OpenAPI document,
served at ``/openapi.json``, is generated from the same declarations
(torro.api.openapi).

Requests pass, outermost first: the catch-all for bugs (500 without a
traceback), the rate limit of the public POST endpoints (429), the body
size limit (413), then the routes, where each endpoint checks its
caller and its input. Every error leaves as ``{"error": {"code",
"message"}}`` (see torro.api.errors).
"""

import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from torro import __version__, logs
from torro.api import errors
from torro.api.auth import Authenticator
from torro.api.endpoints import route
from torro.api.limits import (
    MAX_BODY,
    BodyLimitMiddleware,
    RateLimiter,
    RateLimitMiddleware,
)
from torro.api.routes import all_endpoints
from torro.api.service import DaemonService, Unavailable
from torro.errors import TorroError


TITLE = "Torro key rotation daemon"
DESCRIPTION = (
    "The HTTP API of a Torro daemon: health, keys, rotation and licenses. "
    "Keys are named by index and fingerprint; key material is only ever "
    "returned to a full admin token."
)
# The public POST endpoints, rate limited per client address.
RATE_LIMITED = (
    "/api/daemon/validate-key",
    "/api/licenses/validate",
)
# Threads that run handlers. Handlers hold the GIL but for waits on the
# disk, the store lock and PBKDF2; more threads would only cost memory.
WORKER_THREADS = 8

system_log = logging.getLogger(logs.SYSTEM)


def build_app(service: DaemonService) -> Starlette:
    """Build the API of ``service``, configured by its settings.

    :param service: the running daemon the endpoints call.
    """
    settings = service.settings
    endpoints = all_endpoints()
    document = _Document(endpoints)

    async def openapi(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(document.get))

    app = Starlette(
        routes=[
            *(route(endpoint) for endpoint in endpoints),
            Route("/openapi.json", openapi, include_in_schema=False),
        ],
        middleware=[
            Middleware(errors.InternalErrorMiddleware),
            Middleware(
                RateLimitMiddleware,
                limiter=RateLimiter(settings.rate_limit),
                paths=RATE_LIMITED,
            ),
            Middleware(BodyLimitMiddleware, max_body=MAX_BODY),
        ],
        exception_handlers={
            errors.ApiError: errors.api_error_handler,
            HTTPException: errors.http_error_handler,
            TorroError: _store_error_handler,
        },
        lifespan=_lifespan,
    )
    # a path that does not match is 404, not a redirect to a guess
    app.router.redirect_slashes = False
    app.state.service = service
    app.state.authenticator = Authenticator(settings)
    return app


class _Document:
    """The OpenAPI document, generated on first request."""

    def __init__(self, endpoints: list[Any]) -> None:
        self._endpoints = endpoints
        self._document: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def get(self) -> dict[str, Any]:
        with self._lock:
            if self._document is None:
                from torro.api.openapi import build_document

                self._document = build_document(
                    self._endpoints,
                    title=TITLE,
                    version=__version__,
                    description=DESCRIPTION,
                )
            return self._document


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    import anyio.to_thread

    limiter = anyio.to_thread.current_default_thread_limiter()
    limiter.total_tokens = WORKER_THREADS
    yield


async def _store_error_handler(
    request: Request, exc: Exception
) -> Response:
    """Answer 503 when the key store cannot serve a request.

    The reason, which may name files, goes to the system log; the
    client is told where to look.
    """
    system_log.warning(
        "API %s %s: the key store cannot serve: %s",
        request.method,
        request.url.path[:200],
        exc,
    )
    if isinstance(exc, Unavailable):
        return errors.error_response(503, str(exc))
    return errors.error_response(
        503,
        "the key store cannot serve this request now: GET "
        "/api/daemon/status says why",
    )
