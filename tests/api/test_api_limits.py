"""The rate limit and the body limit, without a daemon (torro.api.limits).

The rate limiter runs on a clock the test sets; the middlewares are
driven as ASGI applications with the messages a server would send.
"""

import asyncio
import json
import logging
from typing import Any

import pytest

from torro import logs
from torro.api.limits import (
    BodyLimitMiddleware,
    RateLimiter,
    RateLimitMiddleware,
)


class Clock:
    """Seconds that pass only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """An ASGI application that records what reached it and answers 200.
    """

    def __init__(self) -> None:
        self.calls = 0
        self.bodies: list[bytes] = []
        self.after: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        message = await receive()
        self.bodies.append(message.get("body", b""))
        assert message.get("more_body", False) is False
        self.after.append(await receive())
        await send({"type": "http.response.start", "status": 200,
                    "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def scope(
    method: str = "POST",
    path: str = "/api/daemon/validate-key",
    client: str = "192.0.2.1",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> dict[str, Any]:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "client": (client, 40000),
        "headers": headers or [],
    }


def run(
    app: Any,
    request: dict[str, Any],
    chunks: list[bytes] | None = None,
    disconnect: bool = False,
) -> tuple[list[dict[str, Any]], int]:
    """Run ``app`` on one request whose body comes in ``chunks``.

    :returns: the messages sent, and how many body messages were read.
    """
    pending = [
        {"type": "http.request", "body": chunk,
         "more_body": number < len(chunks or [b""]) - 1}
        for number, chunk in enumerate(chunks or [b""])
    ]
    if disconnect:
        pending[-1]["more_body"] = True
        pending.append({"type": "http.disconnect"})
    read = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal read
        if pending:
            read += 1
            return pending.pop(0)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(request, receive, send))
    return sent, read


def answer(sent: list[dict[str, Any]]) -> tuple[int, dict[str, str], Any]:
    """The status, headers and JSON body of the response sent."""
    start = sent[0]
    headers = {
        name.decode(): value.decode() for name, value in start["headers"]
    }
    body = b"".join(m.get("body", b"") for m in sent[1:])
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = body
    return start["status"], headers, parsed


# -- RateLimiter --------------------------------------------------------

def test_a_client_may_burst_a_minutes_allowance_then_waits() -> None:
    """Six a minute: six requests at once pass, the seventh waits ten
    seconds, the time one request takes to refill."""
    clock = Clock()
    limiter = RateLimiter(6, clock=clock)
    assert [limiter.take("a") for _ in range(6)] == [0.0] * 6
    assert limiter.take("a") == pytest.approx(10.0)


def test_refused_requests_do_not_push_the_wait_back() -> None:
    """Requests refused meanwhile spend nothing: the wait counts down
    with the clock, and when it is over one request passes."""
    clock = Clock()
    limiter = RateLimiter(6, clock=clock)
    for _ in range(6):
        limiter.take("a")
    for elapsed, wait in ((0, 10.0), (2.5, 7.5), (2.5, 5.0), (4.0, 1.0)):
        clock.now += elapsed
        assert limiter.take("a") == pytest.approx(wait)
        assert limiter.take("a") == pytest.approx(wait)
    clock.now += 1.0
    assert limiter.take("a") == 0.0
    assert limiter.take("a") == pytest.approx(10.0)


def test_the_bucket_never_holds_more_than_a_minutes_allowance() -> None:
    """After an hour idle a client still gets one minute's allowance."""
    clock = Clock()
    limiter = RateLimiter(3, clock=clock)
    limiter.take("a")
    clock.now += 3600
    assert [limiter.take("a") for _ in range(3)] == [0.0] * 3
    assert limiter.take("a") == pytest.approx(20.0)


def test_each_client_address_has_a_bucket_of_its_own() -> None:
    """One client's exhausted allowance leaves another's whole."""
    clock = Clock()
    limiter = RateLimiter(1, clock=clock)
    assert limiter.take("192.0.2.1") == 0.0
    assert limiter.take("192.0.2.1") == pytest.approx(60.0)
    assert limiter.take("192.0.2.2") == 0.0
    assert limiter.take("2001:db8::1") == 0.0


def test_a_limit_below_one_a_minute_is_refused() -> None:
    with pytest.raises(ValueError, match="1 or more"):
        RateLimiter(0)


def test_buckets_beyond_max_clients_forget_idle_clients_first() -> None:
    """Past max_clients, buckets that have refilled are dropped before
    any busy one, and busy clients stay limited."""
    clock = Clock()
    limiter = RateLimiter(1, clock=clock, max_clients=2)
    limiter.take("idle")
    clock.now += 60
    limiter.take("busy-1")
    limiter.take("busy-2")
    assert set(limiter._buckets) == {"busy-1", "busy-2"}
    assert limiter.take("busy-1") == pytest.approx(60.0)
    limiter.take("busy-3")
    assert len(limiter._buckets) <= 2


# -- RateLimitMiddleware ------------------------------------------------

def test_rate_limit_middleware_answers_429_with_retry_after(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Past its allowance a client gets 429 with Retry-After rounded up
    to whole seconds, without the application being called; GET and
    other paths are not limited; the security log says so once per
    episode, and again after the client has slowed down."""
    clock = Clock()
    app = Recorder()
    middleware = RateLimitMiddleware(
        app, RateLimiter(2, clock=clock),
        paths=["/api/daemon/validate-key"],
    )
    caplog.set_level(logging.WARNING, logger=logs.SECURITY)
    for _ in range(2):
        sent, _ = run(middleware, scope())
        assert answer(sent)[0] == 200
    clock.now += 0.5
    for _ in range(3):
        sent, read = run(middleware, scope())
        status, headers, body = answer(sent)
        assert status == 429
        assert headers["retry-after"] == "30"
        assert headers["content-type"] == "application/json"
        assert body["error"]["code"] == "rate_limited"
        assert read == 0
    assert app.calls == 2
    for request in (scope(method="GET"), scope(path="/api/daemon/stats"),
                    scope(client="192.0.2.2")):
        sent, _ = run(middleware, request)
        assert answer(sent)[0] == 200
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [(
        "api: rate limit reached by 192.0.2.1 on POST "
        "/api/daemon/validate-key (429 until it slows down)"
    )]
    clock.now += 30
    assert answer(run(middleware, scope())[0])[0] == 200
    answer(run(middleware, scope())[0])
    assert len(caplog.records) == 2


# -- BodyLimitMiddleware ------------------------------------------------

def test_a_body_of_exactly_the_limit_reaches_the_app_whole() -> None:
    """A body of max_body bytes in chunks is handed on as one message,
    and what the app receives next comes from the server."""
    app = Recorder()
    middleware = BodyLimitMiddleware(app, max_body=10)
    sent, _ = run(middleware, scope(), chunks=[b"0123", b"4567", b"89"])
    assert answer(sent)[0] == 200
    assert app.bodies == [b"0123456789"]
    assert app.after == [{"type": "http.disconnect"}]


def test_a_declared_length_over_the_limit_is_refused_unread() -> None:
    """A Content-Length over max_body is 413 before any byte is read."""
    app = Recorder()
    middleware = BodyLimitMiddleware(app, max_body=10)
    request = scope(headers=[(b"content-length", b"11")])
    sent, read = run(middleware, request, chunks=[b"x" * 11])
    status, _, body = answer(sent)
    assert (status, body["error"]["code"]) == (413, "body_too_large")
    assert body["error"]["message"] == "the body is over 10 bytes"
    assert read == 0
    assert app.calls == 0


def test_a_chunked_body_is_cut_off_once_past_the_limit() -> None:
    """A body without a length, or with one that lies, is refused as
    soon as it passes max_body; the chunks after are never read."""
    for headers in ([], [(b"content-length", b"4")]):
        app = Recorder()
        middleware = BodyLimitMiddleware(app, max_body=10)
        chunks = [b"0123", b"4567", b"890", b"never read"]
        sent, read = run(middleware, scope(headers=headers), chunks=chunks)
        assert answer(sent)[0] == 413
        assert read == 3
        assert app.calls == 0


def test_a_client_that_leaves_mid_body_gets_no_answer() -> None:
    """When the client disconnects before its body is complete, nothing
    is sent and the application is not called."""
    app = Recorder()
    middleware = BodyLimitMiddleware(app, max_body=10)
    sent, _ = run(middleware, scope(), chunks=[b"01"], disconnect=True)
    assert sent == []
    assert app.calls == 0
