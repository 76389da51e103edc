"""Starting the API: where it listens, and a start that cannot listen."""

import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from torro.api.server import listen
from torro.config import load_settings

if TYPE_CHECKING:
    from api_daemon import ApiDaemon
    from runner import Torro

# Seconds a stop may take with connections open: the server's graceful
# wait (torro.api.server.GRACEFUL_STOP) and room for a busy machine.
STOP_WITHIN = 6.0


def test_a_port_in_use_stops_the_start_before_the_store_is_made(
    torro: "Torro",
) -> None:
    """The socket is opened before the store: a start that cannot listen
    makes no key and no master key, and says so in one line."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        outcome = torro.run(
            "daemon", "run",
            env={"KEY_DAEMON_API": "true", "KEY_DAEMON_PORT": str(port)},
        )
    assert outcome.code == 1
    assert outcome.stderr.splitlines()[-1] == (
        f"torro: error: the HTTP API cannot listen on 127.0.0.1:{port}: "
        "Address already in use; pick another KEY_DAEMON_PORT, or set "
        "KEY_DAEMON_API=false"
    )
    assert not (torro.cwd / "keys").exists()
    assert not (torro.cwd / "keys.master-key").exists()


def test_a_host_that_is_no_address_is_a_bad_setting(torro: "Torro") -> None:
    outcome = torro.run(
        "daemon", "run",
        env={"KEY_DAEMON_API": "true", "KEY_DAEMON_HOST": "999.1.1.1"},
    )
    assert outcome.code == 2
    last = outcome.stderr.splitlines()[-1]
    assert last.startswith(
        "torro: error: the HTTP API cannot listen on 999.1.1.1:3001: "
        "KEY_DAEMON_HOST=999.1.1.1 is not an address of this machine"
    )
    assert not (torro.cwd / "keys").exists()


def ipv6_loopback() -> bool:
    try:
        with socket.create_server(("::1", 0), family=socket.AF_INET6):
            return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
def test_an_ipv6_address_is_logged_as_a_url(
    api_factory: Callable[..., "ApiDaemon"],
) -> None:
    """The logged URL puts an IPv6 address in brackets, so it can be
    pasted into curl as it is."""
    api = api_factory(KEY_DAEMON_HOST="::1")
    assert api.url.startswith("http://[::1]:")
    assert api.get("/api/daemon/status").status_code == 200


def test_idle_and_half_sent_connections_do_not_hold_up_a_stop(
    api_factory: Callable[..., "ApiDaemon"],
) -> None:
    """A client that sends half a request line and waits, and one idle on
    keep-alive, do not keep SIGTERM from ending the daemon promptly."""
    api = api_factory()
    host, port = api.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port))) as half, \
            socket.create_connection((host, int(port))) as idle:
        half.sendall(b"GET /api/daemon/status HTTP/1.1\r\n")
        idle.sendall(
            b"GET /api/daemon/status HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        assert idle.recv(12) == b"HTTP/1.1 200"
        started = time.monotonic()
        assert api.stop() == 0
        assert time.monotonic() - started < STOP_WITHIN


def test_accepted_connections_send_replies_without_delay() -> None:
    """Replies leave as written (TCP_NODELAY): without it, a reply in two
    writes waits for the client's delayed ACK, some 40 ms a request."""
    settings = load_settings({"KEY_DAEMON_PORT": "0"}, env_file=None)
    with listen(settings) as listener:
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.getsockopt(
                    socket.IPPROTO_TCP, socket.TCP_NODELAY
                ) != 0
