"""Serve the HTTP API from the daemon's process, beside the rotation loop.

The server runs its own event loop in a thread of its own; the rotation
loop keeps the main thread and its signal handlers. Key derivation
therefore never runs on the event loop, and a rotation in progress does
not hold up requests.
"""

import errno
import json
import logging
import os
import socket
import threading
import time
from typing import Any

from torro import logs
from torro.config import Settings, check_tls
from torro.errors import ConfigError, DaemonError


START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
# Seconds a stop waits for requests in flight before closing connections.
GRACEFUL_STOP = 2
# Connections the kernel queues before the server accepts them.
BACKLOG = 2048

system_log = logging.getLogger(logs.SYSTEM)


def listen(settings: Settings) -> socket.socket:
    """Open the API's listening socket, before the daemon touches the store.

    A port in use or TLS files that cannot serve stop the start here, in
    one line, with nothing on disk created or changed.

    :raises DaemonError: when the address cannot be listened on.
    :raises ConfigError: when the host is no address, or the TLS
        certificate or key cannot be used.
    """
    if settings.tls_cert is not None and settings.tls_key is not None:
        check_tls(settings.tls_cert, settings.tls_key)
    where = f"{settings.host}:{settings.port}"
    try:
        family, _, _, _, address = socket.getaddrinfo(
            settings.host, settings.port, type=socket.SOCK_STREAM,
            flags=socket.AI_PASSIVE,
        )[0]
        listener = socket.create_server(
            address, family=family, backlog=BACKLOG
        )
        # asyncio sets TCP_NODELAY only on sockets made with IPPROTO_TCP,
        # which create_server does not give: without it a reply in two
        # writes waits for the client's delayed ACK (some 40 ms). The
        # sockets accepted inherit it.
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return listener
    except socket.gaierror as exc:
        raise ConfigError(
            f"the HTTP API cannot listen on {where}: KEY_DAEMON_HOST="
            f"{settings.host} is not an address of this machine "
            f"({exc.strerror}); use one such as 127.0.0.1 or 0.0.0.0"
        ) from None
    except OSError as exc:
        advice = "pick another KEY_DAEMON_PORT"
        if exc.errno == errno.EADDRNOTAVAIL:
            advice = "use an address of this machine as KEY_DAEMON_HOST"
        raise DaemonError(
            f"the HTTP API cannot listen on {where}: "
            f"{os.strerror(exc.errno) if exc.errno else exc}; {advice}, "
            "or set KEY_DAEMON_API=false"
        ) from None


class ApiServer:
    """The uvicorn server of one daemon, in a background thread.

    :param app: the ASGI application (see torro.api.create_app).
    :param settings: the TLS files, if any.
    :param listener: the socket from :func:`listen`; closed by
        :meth:`stop`.
    """

    def __init__(
        self, app: Any, settings: Settings, listener: socket.socket
    ) -> None:
        import uvicorn

        tls = {}
        if settings.tls_cert is not None and settings.tls_key is not None:
            tls = {
                "ssl_certfile": str(settings.tls_cert),
                "ssl_keyfile": str(settings.tls_key),
            }
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="on",
            server_header=False,
            # The client address is the TCP peer (see torro.api.limits):
            # uvicorn would otherwise take X-Forwarded-For from loopback.
            proxy_headers=False,
            # idle or half-sent connections do not hold up a stop
            timeout_graceful_shutdown=GRACEFUL_STOP,
            # a request that is not HTTP is answered in the error shape
            http=_json_error_protocol(),
            **tls,
        )
        self._server = uvicorn.Server(config)
        self._listener = listener
        self._thread = threading.Thread(
            target=self._serve, name="torro-api", daemon=True
        )
        self._failure: BaseException | None = None
        self.scheme = "https" if tls else "http"
        self.host, self.port = listener.getsockname()[:2]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def start(self) -> None:
        """Start serving; return once requests are answered.

        :raises DaemonError: when the server does not start.
        """
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                reason = self._failure or "it did not start in time"
                raise DaemonError(
                    f"the HTTP API on {self.url} did not start: {reason}; "
                    "set KEY_DAEMON_API=false to run without it"
                )
            time.sleep(0.01)
        system_log.info("HTTP API listening on %s", self.url)

    def stop(self) -> None:
        """Stop accepting requests, finish those in flight, and return."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(STOP_TIMEOUT)
        self._listener.close()

    def _serve(self) -> None:
        # Off the main thread, uvicorn leaves the process's signals to the
        # rotation loop.
        try:
            self._server.run(sockets=[self._listener])
        except BaseException as exc:
            self._failure = _reason(exc)
            system_log.error("HTTP API stopped: %s", self._failure)


def _json_error_protocol() -> type[Any]:
    """Return uvicorn's HTTP/1.1 protocol, its 400 answer made JSON.

    A request that h11 cannot parse (a request line or header that is
    not HTTP, headers too long to buffer, a broken chunk) never reaches
    the application: uvicorn answers it 400 in plain text. This one
    answers ``{"error": {"code": "bad_request", ...}}`` like every
    other error.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    from torro.api.errors import error_body

    body = json.dumps(error_body(
        "bad_request",
        "the request is not valid HTTP/1.1: check its request line, "
        "headers and body framing",
    ), separators=(",", ":")).encode()

    class JsonErrorH11Protocol(H11Protocol):  # type: ignore[misc]
        def send_400_response(self, msg: str) -> None:
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ]
            for event in (
                h11.Response(status_code=400, headers=headers,
                             reason=b"Bad Request"),
                h11.Data(data=body),
                h11.EndOfMessage(),
            ):
                self.transport.write(self.conn.send(event))
            self.transport.close()

    return JsonErrorH11Protocol


def _reason(exc: BaseException) -> BaseException:
    if isinstance(exc, SystemExit) and exc.__context__ is not None:
        return exc.__context__
    return exc
