"""A real ``torro daemon run`` with its HTTP API on a free loopback port.

The :func:`api` fixture (made available to the tests by conftest.py)
starts the daemon as an operator would, in its own process, with one full
token, one read-only token and a token file, and hands out an httpx
client bound to the server's address. The schedule is slow (one
rotation an hour) so that the keys change only when a test forces a
rotation; :func:`start_api` starts one with other settings.
"""

import dataclasses
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

if TYPE_CHECKING:
    from runner import Torro

# Tokens of the test daemon: long enough for the configuration's rule.
FULL_TOKEN = "full-token-for-the-api-tests-0123456789"
READ_TOKEN = "read-token-for-the-api-tests-0123456789"
API_SETTINGS = {
    "KEY_DAEMON_API": "true",
    "KEY_DAEMON_HOST": "127.0.0.1",
    "KEY_DAEMON_PORT": "0",
    "KEY_DAEMON_SLEEP_INTERVAL": "1000",
    "KEY_DAEMON_ROTATION_INTERVAL": "3600000",
    "KEY_DAEMON_ADMIN_TOKENS": FULL_TOKEN,
    "KEY_DAEMON_READ_TOKENS": READ_TOKEN,
    "KEY_DAEMON_ADMIN_TOKEN_FILE": "admin-tokens",
}
START_TIMEOUT = 20.0

_LISTENING = re.compile(r"HTTP API listening on (https?://\S+)")


@dataclasses.dataclass
class ApiDaemon:
    """A running daemon and a client of its API.

    :param url: the base URL the server listens on.
    :param process: the ``torro daemon run`` process.
    :param torro: the runner, for CLI commands in the same directory.
    :param client: an httpx client with ``url`` as its base.
    """

    url: str
    process: subprocess.Popen[bytes]
    torro: "Torro"
    client: httpx.Client

    @property
    def cwd(self) -> Path:
        return self.torro.cwd

    def headers(self, token: str = FULL_TOKEN) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def get(self, path: str, token: str | None = None,
            **options: object) -> httpx.Response:
        """GET ``path``, with ``token`` as a bearer token if given."""
        headers = self.headers(token) if token else {}
        return self.client.get(path, headers=headers, **options)

    def post(self, path: str, token: str | None = None,
             **options: object) -> httpx.Response:
        """POST to ``path``, with ``token`` as a bearer token if given."""
        headers = self.headers(token) if token else {}
        return self.client.post(path, headers=headers, **options)

    def log(self, name: str) -> str:
        """Return the text of one of the daemon's log files."""
        try:
            return (self.cwd / "logs" / name).read_text()
        except FileNotFoundError:
            return ""

    def stop(self) -> int:
        """Stop the daemon with SIGTERM; return its exit code."""
        self.client.close()
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(timeout=15)


def start_api(torro: "Torro", **settings: str | None) -> ApiDaemon:
    """Start ``torro daemon run`` with the API; wait until it listens.

    :param settings: changes to :data:`API_SETTINGS` (None unsets one).
    """
    environ: dict[str, str | None] = {**API_SETTINGS, **settings}
    stderr_path = torro.cwd / "daemon.stderr"
    with open(stderr_path, "ab") as stderr:
        process = torro.popen(
            "daemon", "run", env=environ,
            stdout=subprocess.DEVNULL, stderr=stderr,
        )
    found: list[str] = []

    def listening() -> bool:
        try:
            text = (torro.cwd / "logs" / "system.log").read_text()
        except FileNotFoundError:
            text = ""
        found[:] = _LISTENING.findall(text)[-1:]
        return bool(found) or process.poll() is not None

    torro.wait_until(
        listening, timeout=START_TIMEOUT, what="the HTTP API to listen"
    )
    assert process.poll() is None, stderr_path.read_text()
    url = found[0]
    client = httpx.Client(base_url=url, timeout=15.0, verify=False)
    return ApiDaemon(url, process, torro, client)


@pytest.fixture
def api(torro: "Torro") -> Iterator[ApiDaemon]:
    """A daemon on a new store with its API up, stopped at teardown."""
    daemon = start_api(torro)
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def api_factory(torro: "Torro") -> Iterator[Callable[..., ApiDaemon]]:
    """Start daemons with settings of the test's choosing."""
    started: list[ApiDaemon] = []

    def start(**settings: str | None) -> ApiDaemon:
        daemon = start_api(torro, **settings)
        started.append(daemon)
        return daemon

    try:
        yield start
    finally:
        for daemon in started:
            daemon.stop()
