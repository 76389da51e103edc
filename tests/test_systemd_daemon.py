"""``torro daemon run`` as systemd runs it: notifications and credentials.

The test binds the datagram socket systemd would pass in NOTIFY_SOCKET and
reads what the real daemon process sends (sd_notify(3)); it sets
WATCHDOG_USEC and CREDENTIALS_DIRECTORY as systemd does for a unit with
WatchdogSec= and LoadCredential=.
"""

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from torro.sealing import MasterKey


if TYPE_CHECKING:
    from runner import Torro


# Half of it is the daemon's feeding period: 0.2 s.
WATCHDOG_USEC = 400_000
# No rotation and no wake-up of the schedule during a test: a WATCHDOG=1
# can only come from the loop waking for the watchdog itself.
SLOW_SCHEDULE = {
    "KEY_DAEMON_SLEEP_INTERVAL": "60000",
    "KEY_DAEMON_ROTATION_INTERVAL": "3600000",
}
API = {
    "KEY_DAEMON_API": "true",
    "KEY_DAEMON_HOST": "127.0.0.1",
    "KEY_DAEMON_PORT": "0",
}
NOTIFY_TIMEOUT = 15.0
LISTENING = re.compile(r"HTTP API listening on (http://\S+)")


class Manager:
    """The service manager's end of NOTIFY_SOCKET: a bound datagram socket.

    :param path: where to bind it (short: a socket path has 108 bytes).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))

    def receive(
        self, timeout: float = NOTIFY_TIMEOUT
    ) -> dict[str, str] | None:
        """Return the next notification as NAME: value, or None if none
        came within ``timeout`` s."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return None
        lines = data.decode("utf-8").split("\n")
        return dict(line.split("=", 1) for line in lines)

    def next_other_than_watchdog(self) -> dict[str, str]:
        """Return the next notification that is not WATCHDOG=1."""
        deadline = time.monotonic() + NOTIFY_TIMEOUT
        while (left := deadline - time.monotonic()) > 0:
            message = self.receive(left)
            if message is not None and message != {"WATCHDOG": "1"}:
                return message
        pytest.fail("no notification other than WATCHDOG=1 came")

    def everything_within(self, seconds: float) -> list[dict[str, str]]:
        """Return every notification received in the next ``seconds``."""
        found = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            message = self.receive(left)
            if message is not None:
                found.append(message)
        return found


@pytest.fixture
def manager() -> Iterator[Manager]:
    with tempfile.TemporaryDirectory(prefix="torro-sd-") as folder:
        manager = Manager(Path(folder) / "notify")
        try:
            yield manager
        finally:
            manager.sock.close()


def start(
    torro: "Torro", manager: Manager, **env: str | None
) -> subprocess.Popen[bytes]:
    """Start ``torro daemon run`` with NOTIFY_SOCKET set.

    Its stderr goes to :func:`stderr_path`, beside the working directory.
    """
    with open(stderr_path(torro), "ab") as stderr:
        return torro.popen(
            "daemon", "run",
            env={"NOTIFY_SOCKET": str(manager.path), **env},
            stdout=subprocess.DEVNULL, stderr=stderr,
        )


def stderr_path(torro: "Torro") -> Path:
    return torro.cwd.parent / "daemon.stderr"


def api_url(cwd: Path) -> str:
    found = LISTENING.findall((cwd / "logs" / "system.log").read_text())
    assert found, "the daemon logged no API address"
    return found[-1]


def test_ready_watchdog_reload_and_stop_reach_systemd(
    torro: "Torro", manager: Manager
) -> None:
    daemon = start(
        torro, manager,
        WATCHDOG_USEC=str(WATCHDOG_USEC), **API, **SLOW_SCHEDULE,
    )

    # READY=1 comes first, once the store is made and the API answers
    ready = manager.receive()
    assert ready == {
        "READY": "1", "STATUS": "ready", "MAINPID": str(daemon.pid),
    }, stderr_path(torro).read_text()
    current = json.loads((torro.cwd / "keys/current.json").read_text())
    assert current["index"] == 0
    status = httpx.get(f"{api_url(torro.cwd)}/api/daemon/status",
                       timeout=10)
    assert status.status_code == 200
    assert status.json()["current_index"] == 0

    # WATCHDOG=1 every 0.2 s, though the schedule sleeps a minute
    beats = manager.everything_within(1.5)
    assert beats.count({"WATCHDOG": "1"}) >= 2, beats
    assert all(beat == {"WATCHDOG": "1"} for beat in beats), beats

    # SIGHUP: RELOADING=1 stamped on CLOCK_MONOTONIC, then READY=1
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    daemon.send_signal(signal.SIGHUP)
    reloading = manager.next_other_than_watchdog()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert reloading.keys() == {"RELOADING", "MONOTONIC_USEC"}
    assert reloading["RELOADING"] == "1"
    assert before <= int(reloading["MONOTONIC_USEC"]) <= after
    assert manager.next_other_than_watchdog() == ready
    system_log = (torro.cwd / "logs/system.log").read_text()
    assert "log files reopened; configuration unchanged" in system_log

    # SIGTERM: STOPPING=1, and a clean exit
    daemon.send_signal(signal.SIGTERM)
    assert manager.next_other_than_watchdog() == {
        "STOPPING": "1", "STATUS": "stopping",
    }
    assert daemon.wait(timeout=15) == 0
    assert "daemon stopped (SIGTERM)" in \
        (torro.cwd / "logs/system.log").read_text()


def test_no_watchdog_beats_without_a_watchdog_of_ours(
    torro: "Torro", manager: Manager
) -> None:
    """WATCHDOG_PID naming another process: systemd watches that one."""
    daemon = start(
        torro, manager,
        WATCHDOG_USEC=str(WATCHDOG_USEC), WATCHDOG_PID="1",
        **SLOW_SCHEDULE,
    )
    ready = manager.receive()
    assert ready is not None and ready["READY"] == "1"

    assert manager.everything_within(0.8) == []

    daemon.send_signal(signal.SIGTERM)
    assert manager.receive() == {"STOPPING": "1", "STATUS": "stopping"}
    assert daemon.wait(timeout=15) == 0


def test_a_failed_start_never_says_ready(
    torro: "Torro", manager: Manager
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        daemon = start(
            torro, manager,
            WATCHDOG_USEC=str(WATCHDOG_USEC),
            **{**API, "KEY_DAEMON_PORT": str(port)},
        )
        assert daemon.wait(timeout=30) == 1
    assert manager.everything_within(0.2) == [{
        "STATUS": f"daemon did not start: the HTTP API cannot listen on "
        f"127.0.0.1:{port}: Address already in use; pick another "
        "KEY_DAEMON_PORT, or set KEY_DAEMON_API=false",
    }]


def test_without_notify_socket_the_daemon_runs_as_before(
    torro: "Torro", manager: Manager
) -> None:
    daemon = torro.popen(
        "daemon", "run",
        env={"WATCHDOG_USEC": str(WATCHDOG_USEC), **SLOW_SCHEDULE},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    torro.wait_until(
        lambda: (torro.cwd / "keys/current.json").exists(),
        what="the first key",
    )
    assert manager.everything_within(0.5) == []
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=15) == 0


# -- the master key as a systemd credential -------------------------------

@pytest.fixture
def credentials(tmp_path: Path) -> tuple[Path, MasterKey]:
    """A credentials directory as LoadCredential=master-key:... makes it.
    """
    directory = tmp_path / "credentials"
    directory.mkdir(mode=0o700)
    master = MasterKey(secrets.token_bytes(32))
    key_file = directory / "master-key"
    key_file.write_text(master.reveal().hex() + "\n")
    key_file.chmod(0o400)
    return directory, master


def test_the_daemon_seals_under_the_credential(
    torro: "Torro", manager: Manager,
    credentials: tuple[Path, MasterKey],
) -> None:
    directory, master = credentials
    env = {"CREDENTIALS_DIRECTORY": str(directory)}

    shown = torro.run("config", "show", env=env)
    assert shown.code == 0, shown.stderr
    assert (f"KEY_DAEMON_MASTER_KEY_FILE={directory}/master-key\n"
            in shown.stdout)
    assert "KEY_DAEMON_MASTER_KEY=(not set)\n" in shown.stdout

    daemon = start(torro, manager, **env, **SLOW_SCHEDULE)
    ready = manager.receive()
    assert ready is not None and ready["READY"] == "1"
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=15) == 0

    current = json.loads((torro.cwd / "keys/current.json").read_text())
    assert current["masterKeyId"] == master.key_id
    # no master key made beside the store
    assert sorted(os.listdir(torro.cwd)) == ["keys", "logs"]
    # the same key opens the store from a shell, given as a file
    verified = torro.run(
        "keys", "verify",
        env={"KEY_DAEMON_MASTER_KEY_FILE": str(directory / "master-key")},
    )
    assert verified.code == 0, verified.stderr
    for outcome in (shown, verified):
        assert master.reveal().hex() not in outcome.stdout + outcome.stderr


def test_a_master_key_setting_beats_the_credential(
    torro: "Torro", credentials: tuple[Path, MasterKey], tmp_path: Path,
) -> None:
    directory, _ = credentials
    other = tmp_path / "other-master-key"
    other.write_text(secrets.token_hex(32) + "\n")
    other.chmod(0o400)

    by_file = torro.run("config", "show", env={
        "CREDENTIALS_DIRECTORY": str(directory),
        "KEY_DAEMON_MASTER_KEY_FILE": str(other),
    })
    by_value = torro.run("config", "show", env={
        "CREDENTIALS_DIRECTORY": str(directory),
        "KEY_DAEMON_MASTER_KEY": secrets.token_hex(32),
    })
    empty = tmp_path / "empty-credentials"
    empty.mkdir()
    no_credential = torro.run("config", "show", env={
        "CREDENTIALS_DIRECTORY": str(empty),
    })

    assert f"KEY_DAEMON_MASTER_KEY_FILE={other}\n" in by_file.stdout
    assert "KEY_DAEMON_MASTER_KEY_FILE=(not set)\n" in by_value.stdout
    assert "KEY_DAEMON_MASTER_KEY=(set, redacted)\n" in by_value.stdout
    assert "KEY_DAEMON_MASTER_KEY_FILE=(not set)\n" in no_credential.stdout


def test_a_credential_inside_the_store_is_refused(torro: "Torro") -> None:
    """The outside-the-store check holds for the credential too."""
    store = torro.cwd / "keys"
    store.mkdir(mode=0o700)
    (store / "master-key").write_text(secrets.token_hex(32) + "\n")

    checked = torro.run(
        "config", "check", env={"CREDENTIALS_DIRECTORY": str(store)}
    )

    assert checked.code == 2
    # the long path is cut short in the message
    assert checked.stderr.startswith(
        f"torro: error: KEY_DAEMON_MASTER_KEY_FILE={str(store)[:40]}"
    )
    assert checked.stderr.endswith(
        " is inside the key store keys: keep the master key outside it, "
        "so a copy of the store cannot open the keys\n"
    )
    assert len(checked.stderr.splitlines()) == 1
