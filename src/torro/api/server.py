"""Serve the HTTP API from the daemon's process, beside the rotation loop.

The server runs its own event loop in a thread of its own; the rotation
loop keeps the main thread and its signal handlers. Key derivation
therefore never runs on the event loop, and a rotation in progress does
not hold up requests.
"""

import logging
import threading
import time
from typing import Any

from torro import logs
from torro.config import Settings, check_tls
from torro.errors import DaemonError


START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0

system_log = logging.getLogger(logs.SYSTEM)


class ApiServer:
    """The uvicorn server of one daemon, in a background thread.

    :param app: the ASGI application (see torro.api.create_app).
    :param settings: where to listen, and the TLS files if any.
    """

    def __init__(self, app: Any, settings: Settings) -> None:
        import uvicorn

        tls = {}
        if settings.tls_cert is not None and settings.tls_key is not None:
            check_tls(settings.tls_cert, settings.tls_key)
            tls = {
                "ssl_certfile": str(settings.tls_cert),
                "ssl_keyfile": str(settings.tls_key),
            }
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            lifespan="on",
            server_header=False,
            # The client address is the TCP peer (see torro.api.limits):
            # uvicorn would otherwise take X-Forwarded-For from loopback.
            proxy_headers=False,
            **tls,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._serve, name="torro-api", daemon=True
        )
        self._failure: BaseException | None = None
        self.scheme = "https" if tls else "http"
        self.host = settings.host
        self.port = settings.port

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def start(self) -> None:
        """Start serving; return once the socket listens.

        :raises DaemonError: when the server cannot listen (port taken,
            TLS files unreadable).
        """
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                reason = self._failure or "it did not start in time"
                raise DaemonError(
                    f"the HTTP API cannot listen on {self.host}:{self.port}:"
                    f" {reason}; pick another KEY_DAEMON_PORT, or set "
                    "KEY_DAEMON_API=false"
                )
            time.sleep(0.01)
        sockets = [
            sock for server in self._server.servers
            for sock in server.sockets
        ]
        if sockets:
            self.port = sockets[0].getsockname()[1]
        system_log.info("HTTP API listening on %s", self.url)

    def stop(self) -> None:
        """Stop accepting requests, finish those in flight, and return."""
        self._server.should_exit = True
        self._thread.join(STOP_TIMEOUT)

    def _serve(self) -> None:
        # Off the main thread, uvicorn leaves the process's signals to the
        # rotation loop.
        try:
            self._server.run()
        except BaseException as exc:
            self._failure = _reason(exc)
            system_log.error("HTTP API stopped: %s", self._failure)


def _reason(exc: BaseException) -> BaseException:
    if isinstance(exc, SystemExit) and exc.__context__ is not None:
        return exc.__context__
    return exc
