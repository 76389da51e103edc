"""Limits on what one request, and one client, may ask of the API.

:class:`BodyLimitMiddleware` refuses a body over :data:`MAX_BODY` bytes
with 413 before any route reads it. :class:`RateLimitMiddleware` keeps a
token bucket per client address for the public POST endpoints and
answers 429, with Retry-After, when a client's bucket is empty.

The client address is the TCP peer: ``X-Forwarded-For`` is not trusted.
Behind a reverse proxy every client therefore shares the proxy's bucket.
"""

import logging
import math
import time
from collections.abc import Callable, Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from torro import logs
from torro.api.errors import error_response


# Bytes a request body may hold: a license (8 KiB at most) in its JSON
# envelope fits with room to spare.
MAX_BODY = 16 * 1024
# Client addresses remembered at most; beyond it, idle ones are dropped.
MAX_CLIENTS = 4096

security_log = logging.getLogger(logs.SECURITY)


class BodyLimitMiddleware:
    """Answer 413 to a request whose body is over ``max_body`` bytes.

    The body is read here, up to the limit, and handed on whole: a
    declared Content-Length over the limit is refused unread, and a body
    sent in chunks is cut off as soon as it passes the limit.

    :param app: the application to wrap.
    :param max_body: the most bytes a body may hold.
    """

    def __init__(self, app: ASGIApp, max_body: int = MAX_BODY) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body:
            await self._refuse(scope, receive, send)
            return

        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                # the client left: nobody is there to answer
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body,
                    "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send
    ) -> None:
        response = error_response(
            413, f"the body is over {self.max_body} bytes"
        )
        await response(scope, receive, send)


class RateLimiter:
    """A token bucket per client address.

    Each bucket holds up to ``per_minute`` requests and refills at
    ``per_minute`` a minute: a client may send a minute's allowance at
    once, then one request per ``60 / per_minute`` seconds.

    :param per_minute: requests a minute per client (KEY_DAEMON_RATE_LIMIT).
    :param clock: seconds from any fixed point, never going back.
    :param max_clients: addresses remembered before idle ones are dropped.
    """

    def __init__(
        self,
        per_minute: int,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        if per_minute < 1:
            raise ValueError(
                f"per_minute must be 1 or more, not {per_minute}"
            )
        self.capacity = float(per_minute)
        self.refill = per_minute / 60.0
        self.clock = clock
        self.max_clients = max_clients
        # address -> (tokens left, when they were counted)
        self._buckets: dict[str, tuple[float, float]] = {}
        self.limited: set[str] = set()

    def take(self, client: str) -> float:
        """Spend one request of ``client``'s allowance.

        :returns: 0 when the request may go on, otherwise the seconds
            until the client may send the next one.
        """
        now = self.clock()
        tokens, counted = self._buckets.get(client, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - counted) * self.refill)
        if tokens >= 1.0:
            self._buckets[client] = (tokens - 1.0, now)
            self.limited.discard(client)
            if len(self._buckets) > self.max_clients:
                self._forget_idle(now)
            return 0.0
        self._buckets[client] = (tokens, now)
        return (1.0 - tokens) / self.refill

    def _forget_idle(self, now: float) -> None:
        """Drop buckets that have refilled: they hold nothing to keep."""
        for client, (tokens, counted) in list(self._buckets.items()):
            if tokens + (now - counted) * self.refill >= self.capacity:
                del self._buckets[client]
                self.limited.discard(client)
        # every client is busy: forget the longest unseen
        excess = len(self._buckets) - self.max_clients
        if excess > 0:
            oldest = sorted(self._buckets, key=lambda c: self._buckets[c][1])
            for client in oldest[:excess]:
                del self._buckets[client]
                self.limited.discard(client)


class RateLimitMiddleware:
    """Answer 429 to a client over its allowance on some endpoints.

    :param app: the application to wrap.
    :param limiter: the buckets of every client.
    :param paths: the paths limited, for POST requests.
    """

    def __init__(
        self,
        app: ASGIApp,
        limiter: RateLimiter,
        paths: Iterable[str],
    ) -> None:
        self.app = app
        self.limiter = limiter
        self.paths = frozenset(paths)

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send
    ) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] not in self.paths
        ):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        address = client[0] if client else "unknown"
        wait = self.limiter.take(address)
        if not wait:
            await self.app(scope, receive, send)
            return
        if address not in self.limiter.limited:
            # once per episode, so that a flood does not flood the log
            self.limiter.limited.add(address)
            security_log.warning(
                "api: rate limit reached by %s on POST %s (429 until it "
                "slows down)",
                address,
                scope["path"],
            )
        retry = max(1, math.ceil(wait))
        response = error_response(
            429,
            f"too many requests from this address: retry in {retry} s",
            headers={"Retry-After": str(retry)},
        )
        await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
