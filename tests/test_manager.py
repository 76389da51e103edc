"""Tests for torro.manager: the status report and the daemon loop in-process.

The daemon's signals and process life are tested with real processes in
test_daemon_process.py; here the status values are checked exactly, with an
injected time, and the loop runs in this process, stopped by a timer.
"""

import datetime
import os
import re
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fakes import START

from torro import logs, manager, process
from torro.config import Settings, load_settings
from torro.errors import ConfigError, MasterKeyError
from torro.manager import DaemonManager, daemon_status
from torro.rotation import KeyRotationDaemon, RotationPolicy
from torro.store import open_store


INTERVAL = 60_000
SLEEP = 100
DAY = 24 * 60 * 60 * 1000


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


def make_settings(tmp_path: Path, **changes: str) -> Settings:
    environ = {
        "KEY_STORAGE_PATH": str(tmp_path / "keys"),
        "KEY_DAEMON_LOG_DIR": str(tmp_path / "logs"),
        "KEY_DAEMON_PID_FILE": str(tmp_path / "torro.pid"),
        "KEY_DAEMON_SLEEP_INTERVAL": str(SLEEP),
        "KEY_DAEMON_ROTATION_INTERVAL": str(INTERVAL),
        "KEY_DAEMON_DERIVATION_ROUNDS": "1000",
        "KEY_DAEMON_MASTER_KEY": secrets.token_hex(32),
        "KEY_DAEMON_API": "false",
    }
    environ.update(changes)
    return load_settings(environ, env_file=None)


def rotate_at(settings: Settings, *moments: int) -> None:
    """Rotate once at each moment, in ms since the epoch."""
    store = open_store(settings)
    daemon = KeyRotationDaemon(store, RotationPolicy.from_settings(settings))
    for moment in moments:
        daemon.rotate(force=True, now=moment)


def iso(ms: int) -> str:
    moment = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


# -- daemon_status --------------------------------------------------------

def test_status_of_an_empty_store(settings: Settings, tmp_path: Path) -> None:
    status = daemon_status(settings)

    assert status.to_dict() == {
        "running": False,
        "pid": None,
        "current_index": None,
        "fingerprint": None,
        "key_age_seconds": None,
        "last_rotation": None,
        "next_rotation": None,
        "history_size": 0,
        "integrity": "empty",
        "overdue": False,
        "problem": None,
        "store": str(tmp_path / "keys"),
    }
    assert not status.healthy
    assert os.listdir(tmp_path) == []


def test_status_after_rotations(settings: Settings, tmp_path: Path) -> None:
    rotate_at(settings, START, START + INTERVAL, START + 2 * INTERVAL + 7)
    current = open_store(settings)
    current.load()
    assert current.current is not None
    fingerprint = current.current.fingerprint
    last = START + 2 * INTERVAL + 7

    status = daemon_status(settings, now=last + 12_345)

    assert status.to_dict() == {
        "running": False,
        "pid": None,
        "current_index": 2,
        "fingerprint": fingerprint,
        "key_age_seconds": 12.345,
        "last_rotation": iso(last),
        "next_rotation": iso(last + INTERVAL),
        "history_size": 3,
        "integrity": "ok",
        "overdue": False,
        "problem": None,
        "store": str(tmp_path / "keys"),
    }
    assert status.last_rotation == "2026-01-01T00:02:00.007Z"


def test_status_follows_the_pid_file_lock(settings: Settings) -> None:
    rotate_at(settings, START)
    pid_file = process.PidFile(settings.pid_file)
    now = START + 1000

    pid_file.acquire()
    try:
        running = daemon_status(settings, now=now)
    finally:
        pid_file.release()
    settings.pid_file.write_text(f"{os.getpid()}\n")
    stale = daemon_status(settings, now=now)

    assert (running.running, running.pid, running.healthy) == (
        True, os.getpid(), True
    )
    assert (stale.running, stale.pid, stale.healthy) == (False, None, False)


def test_status_of_an_edited_record(settings: Settings) -> None:
    rotate_at(settings, START, START + INTERVAL, START + 2 * INTERVAL)
    record = settings.storage_path / "history" / "key-1.json"
    record.write_text(record.read_text().replace(
        f'"timestamp": {START + INTERVAL}',
        f'"timestamp": {START + INTERVAL + 1}',
    ))

    status = daemon_status(settings, now=START + 2 * INTERVAL)

    assert status.integrity == "failed"
    assert status.problem is not None
    assert status.problem.startswith(
        f"{record}: checksum does not match (the record was edited)"
    )
    assert status.current_index == 2


def test_status_under_another_master_key(
    settings: Settings, tmp_path: Path
) -> None:
    rotate_at(settings, START)
    other = make_settings(tmp_path)

    status = daemon_status(other, now=START)

    assert status.integrity == "unreadable"
    assert status.problem is not None
    assert "is not the one that sealed" in status.problem
    assert status.current_index is None


def test_overdue_after_two_rotation_intervals_past_due(
    settings: Settings,
) -> None:
    rotate_at(settings, START)
    limit = START + INTERVAL + 2 * INTERVAL

    on_time = daemon_status(settings, now=limit)
    late = daemon_status(settings, now=limit + 1000)
    days_late = daemon_status(settings, now=START + INTERVAL + 86_400_000)

    assert (on_time.overdue, on_time.problem) == (False, None)
    assert late.overdue
    assert late.problem == (
        f"rotation overdue by {2 * INTERVAL // 1000 + 1} s: see the system "
        "log"
    )
    assert days_late.problem == (
        "rotation overdue by 86400 s: see the system log"
    )
    assert late.integrity == "ok"


def test_key_dated_in_the_future_makes_status_unhealthy(
    settings: Settings,
) -> None:
    """Found by a user: after the clock went back a day, status said
    healthy with a negative key age while rotation waited."""
    rotate_at(settings, START + DAY)

    status = daemon_status(settings, now=START)

    assert status.integrity == "clock_behind"
    assert status.problem == (
        "the current key (index 0) is dated 86400 s in the future: the "
        "clock is behind; rotation waits until it catches up"
    )
    assert not status.healthy


# -- DaemonManager, in this process ---------------------------------------

@pytest.fixture
def restore_process_state() -> Iterator[None]:
    """Put back the signal handlers and log handlers a daemon installs."""
    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGXFSZ)
    saved = {signum: signal.getsignal(signum) for signum in handled}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)
    logs.reset_logging()


def after(seconds: float, action: Callable[[], None]) -> threading.Timer:
    timer = threading.Timer(seconds, action)
    timer.start()
    return timer


@pytest.mark.usefixtures("restore_process_state")
def test_run_reports_ready_and_stops(settings: Settings) -> None:
    reports: list[str] = []
    seen: dict[str, object] = {}
    daemon = DaemonManager(settings, echo=False, ready=reports.append)

    def look_then_stop() -> None:
        seen["pid file"] = settings.pid_file.read_text()
        seen["status"] = daemon_status(settings)
        daemon.stop()

    timer = after(0.3, look_then_stop)
    assert daemon.run() == 0
    timer.join()

    assert reports == ["ready"]
    assert seen["pid file"] == f"{os.getpid()}\n"
    status = seen["status"]
    assert isinstance(status, manager.DaemonStatus)
    assert (status.running, status.current_index, status.integrity) == (
        True, 0, "ok"
    )
    assert not settings.pid_file.exists()
    lines = (settings.log_dir / "system.log").read_text().splitlines()
    assert re.search(r" INFO daemon \S+ started: pid \d+, store ", lines[0])
    assert lines[-1].endswith(" INFO daemon stopped (SIGTERM)")


@pytest.mark.usefixtures("restore_process_state")
def test_start_failure_is_reported_and_changes_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    rotate_at(settings, START)
    before = {
        path: path.read_bytes()
        for path in settings.storage_path.rglob("*") if path.is_file()
    }
    reports: list[str] = []
    daemon = DaemonManager(
        make_settings(tmp_path), echo=False, ready=reports.append
    )

    with pytest.raises(MasterKeyError):
        daemon.run()

    assert len(reports) == 1
    assert reports[0].startswith("error: the master key (id ")
    assert not settings.pid_file.exists()
    assert before == {
        path: path.read_bytes()
        for path in settings.storage_path.rglob("*") if path.is_file()
    }


@pytest.mark.usefixtures("restore_process_state")
def test_unreadable_log_dir_is_reported(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    settings = make_settings(
        tmp_path, KEY_DAEMON_LOG_DIR=str(tmp_path / "file" / "logs")
    )
    reports: list[str] = []

    with pytest.raises(ConfigError):
        DaemonManager(settings, echo=False, ready=reports.append).run()

    assert len(reports) == 1
    assert reports[0].startswith("error: cannot create log directory ")
    assert not (tmp_path / "keys").exists()


@pytest.mark.usefixtures("restore_process_state")
def test_damaged_store_does_not_spin(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    rotate_at(settings, START, START + INTERVAL)
    record = settings.storage_path / "history" / "key-0.json"
    record.write_text(record.read_text().replace(
        f'"timestamp": {START}', f'"timestamp": {START + 1}'
    ))
    ticks = []
    tick = KeyRotationDaemon.tick

    def counted(self: KeyRotationDaemon, now: int | None = None) -> object:
        ticks.append(now)
        return tick(self, now)

    monkeypatch.setattr(KeyRotationDaemon, "tick", counted)
    daemon = DaemonManager(settings, echo=False, ready=lambda _: None)
    timer = after(0.55, daemon.stop)
    daemon.run()
    timer.join()

    # the key is long overdue, but the store refuses rotation: one pass
    # per sleep interval of 100 ms, not one per 10 ms
    assert 3 <= len(ticks) <= 8
    security = (settings.log_dir / "security.log").read_text()
    assert security.count("rotation stopped: ") == 1


@pytest.mark.usefixtures("restore_process_state")
def test_sighup_applies_reloadable_settings(
    settings: Settings, tmp_path: Path
) -> None:
    fresh = settings.model_copy(update={
        "rotation_interval_ms": 90_000,
        "max_history": 7,
        "storage_path": tmp_path / "elsewhere",
    })
    daemon = DaemonManager(
        settings, echo=False, ready=lambda _: None, reload=lambda: fresh
    )
    seen: dict[str, object] = {}

    def hang_up_then_stop() -> None:
        os.kill(os.getpid(), signal.SIGHUP)
        time.sleep(0.3)
        seen["policy"] = getattr(daemon.daemon, "policy", None)
        seen["max history"] = getattr(daemon.store, "max_history", None)
        seen["storage"] = daemon.settings.storage_path
        daemon.stop()

    timer = after(0.2, hang_up_then_stop)
    daemon.run()
    timer.join()

    assert seen == {
        "policy": RotationPolicy.from_settings(fresh),
        "max history": 7,
        "storage": settings.storage_path,
    }
    lines = (settings.log_dir / "system.log").read_text()
    assert "restart the daemon to apply KEY_STORAGE_PATH, KEY_HISTORY_PATH" \
        in lines
    assert "configuration reloaded: KEY_DAEMON_ROTATION_INTERVAL, " \
        "KEY_DAEMON_MAX_HISTORY changed" in lines
    assert not (tmp_path / "elsewhere").exists()
