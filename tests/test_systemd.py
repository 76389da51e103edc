"""Tests for torro.systemd: sd_notify messages on a real datagram socket.

The socket stands in for systemd's: the messages are what sd_notify(3)
specifies (newline-separated NAME=value lines in one datagram).
"""

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from torro.systemd import Notifier


@pytest.fixture
def manager_socket(tmp_path: Path) -> Iterator[socket.socket]:
    """A datagram socket bound where NOTIFY_SOCKET will point."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(5)
    try:
        yield sock
    finally:
        sock.close()


def received(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode("utf-8")
    return dict(line.split("=", 1) for line in data.split("\n"))


def test_ready_watchdog_and_stopping_reach_the_socket(
    manager_socket: socket.socket,
) -> None:
    notifier = Notifier(manager_socket.getsockname(), watchdog_usec=30_000_000)
    notifier.ready("current key 4")
    assert received(manager_socket) == {
        "READY": "1", "STATUS": "current key 4", "MAINPID": str(os.getpid()),
    }
    notifier.watchdog()
    assert received(manager_socket) == {"WATCHDOG": "1"}
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    reloading = received(manager_socket)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert reloading.keys() == {"RELOADING", "MONOTONIC_USEC"}
    assert reloading["RELOADING"] == "1"
    assert before <= int(reloading["MONOTONIC_USEC"]) <= after
    notifier.stopping()
    assert received(manager_socket) == {
        "STOPPING": "1", "STATUS": "stopping",
    }
    assert notifier.watchdog_interval == 15.0


def test_a_status_stays_one_line(
    manager_socket: socket.socket,
) -> None:
    notifier = Notifier(manager_socket.getsockname())
    # a failed start's message names a path that holds a line break
    notifier.status("cannot read /srv/keys\nREADY=1/\udcff")
    assert manager_socket.recv(4096) == (
        b"STATUS=cannot read /srv/keys READY=1/?"
    )
    notifier.ready("ready\nWATCHDOG=1")
    assert received(manager_socket)["STATUS"] == "ready WATCHDOG=1"


def test_abstract_socket_name() -> None:
    name = f"torro-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert Notifier("@" + name).send("READY=1")
        assert sock.recv(100) == b"READY=1"


def test_without_a_manager_nothing_is_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)
    notifier = Notifier.from_environment()
    assert notifier.address is None
    assert notifier.send("READY=1") is False
    assert notifier.watchdog_interval is None


def test_watchdog_of_another_process_is_not_ours(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert Notifier.from_environment().watchdog_interval is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert Notifier.from_environment().watchdog_interval == 5.0
    monkeypatch.setenv("WATCHDOG_USEC", "junk")
    assert Notifier.from_environment().watchdog_interval is None


def test_a_socket_gone_is_logged_once_and_never_raises(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    notifier = Notifier(str(tmp_path / "nobody-listens"), 1_000_000)
    for _ in range(3):
        notifier.watchdog()
    warnings = [record for record in caplog.records
                if "cannot notify the service manager" in record.message]
    assert len(warnings) == 1
