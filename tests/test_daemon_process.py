"""The daemon as a real process: foreground run, signals, start and stop.

Every test runs ``torro`` as a subprocess in its own directory, as an
operator would from a shell, and checks the files the daemon leaves.
"""

import dataclasses
import datetime
import json
import os
import re
import signal
import stat
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from torro import process


if TYPE_CHECKING:
    from runner import Outcome, Torro


ROTATED = re.compile(r" rotated to key (\d+) ")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def current_index(cwd: Path) -> int:
    """Return the index in keys/current.json, or -1 while there is none."""
    try:
        return int(read_json(cwd / "keys" / "current.json")["index"])
    except (FileNotFoundError, ValueError):
        return -1


def history_indexes(cwd: Path) -> list[int]:
    history = read_json(cwd / "keys/history.json")
    return [key["index"] for key in history["keys"]]


def timestamps(cwd: Path) -> dict[int, int]:
    """Return each retained key's timestamp, by index."""
    return {
        key["index"]: key["timestamp"]
        for key in read_json(cwd / "keys/history.json")["keys"]
    }


def log_text(cwd: Path, name: str) -> str:
    try:
        return (cwd / "logs" / name).read_text()
    except FileNotFoundError:
        return ""


def rotated_indexes(cwd: Path) -> list[int]:
    """Return the index of each rotation logged, in log order."""
    return [
        int(match.group(1))
        for match in ROTATED.finditer(log_text(cwd, "key-daemon.log"))
    ]


def iso(ms: int) -> str:
    moment = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def is_alive(pid: int) -> bool:
    """Tell whether ``pid`` runs (a zombie does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1]
    except FileNotFoundError:
        return False
    return state.split()[0] != "Z"


def pid_in_file(torro: "Torro") -> int:
    return int(torro.pid_file.read_text())


def run_foreground(
    torro: "Torro", tmp_path: Path, **env: str | None
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start ``torro daemon run`` and wait until it has started."""
    stderr_path = tmp_path / "daemon.stderr"
    with open(stderr_path, "wb") as stderr:
        daemon = torro.popen(
            "daemon", "run", env=env,
            stdout=subprocess.DEVNULL, stderr=stderr,
        )
    torro.wait_until(
        lambda: " started: pid " in log_text(torro.cwd, "system.log")
        or daemon.poll() is not None,
        what="the daemon to start",
    )
    assert daemon.poll() is None, stderr_path.read_text()
    return daemon, stderr_path


def assert_one_error_line(outcome: "Outcome", start: str) -> None:
    assert outcome.stdout == ""
    assert len(outcome.error_lines) == 1, outcome.stderr
    assert outcome.error_lines[0].startswith(f"torro: error: {start}")


# -- torro daemon run, in the foreground --------------------------------

def test_foreground_daemon_seals_rotates_and_prunes(
    torro: "Torro", tmp_path: Path
) -> None:
    daemon, stderr_path = run_foreground(
        torro, tmp_path, KEY_DAEMON_MAX_HISTORY="3"
    )
    cwd = torro.cwd

    # the first key is sealed under a new master key beside the store
    first = read_json(cwd / "keys/current.json")
    assert first["index"] == 0
    assert first["key"].startswith("torro:v1:")
    master_key = cwd / "keys.master-key"
    assert stat.S_IMODE(master_key.stat().st_mode) == 0o400
    assert re.fullmatch(r"[0-9a-f]{64}\n", master_key.read_text())
    warnings = [
        line for line in log_text(cwd, "system.log").splitlines()
        if "master key" in line
    ]
    assert len(warnings) == 1
    assert " WARN created a new master key in " \
        f"{master_key} (mode 0400)" in warnings[0]

    torro.wait_until(lambda: current_index(cwd) >= 4, what="four rotations")
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=10) == 0

    last = current_index(cwd)
    assert history_indexes(cwd) == [last - 2, last - 1, last]
    assert sorted(os.listdir(cwd / "keys/history")) == sorted(
        f"key-{index}.json" for index in (last - 2, last - 1, last)
    )
    assert rotated_indexes(cwd) == list(range(last + 1))
    for index in (last - 1, last):
        record = read_json(cwd / f"keys/history/key-{index}.json")
        assert record["derivedFrom"] == index - 1
        assert record["key"].startswith("torro:v1:")
    times = timestamps(cwd)
    assert times[last] - times[last - 1] >= 500
    assert log_text(cwd, "system.log").splitlines()[-1].endswith(
        " INFO daemon stopped (SIGTERM)"
    )
    assert not torro.pid_file.exists()
    assert "Traceback" not in stderr_path.read_text()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_ends_the_daemon_cleanly(
    torro: "Torro", tmp_path: Path, signum: signal.Signals
) -> None:
    daemon, stderr_path = run_foreground(torro, tmp_path)
    assert pid_in_file(torro) == daemon.pid

    daemon.send_signal(signum)

    assert daemon.wait(timeout=10) == 0
    assert log_text(torro.cwd, "system.log").splitlines()[-1].endswith(
        f" INFO daemon stopped ({signum.name})"
    )
    assert not torro.pid_file.exists()
    assert "Traceback" not in stderr_path.read_text()


def test_sighup_reopens_logs_and_reloads_configuration(
    torro: "Torro", tmp_path: Path
) -> None:
    cwd = torro.cwd
    env_file = cwd / ".env"
    env_file.write_text("KEY_DAEMON_ROTATION_INTERVAL=500\n")
    daemon, stderr_path = run_foreground(
        torro, tmp_path, KEY_DAEMON_ROTATION_INTERVAL=None
    )
    system_log = cwd / "logs/system.log"

    # a changed reloadable value is applied, in a reopened log file
    os.rename(system_log, cwd / "logs/system.log.1")
    env_file.write_text("KEY_DAEMON_ROTATION_INTERVAL=700\n")
    daemon.send_signal(signal.SIGHUP)
    torro.wait_until(
        lambda: "configuration reloaded: KEY_DAEMON_ROTATION_INTERVAL "
        "changed" in log_text(cwd, "system.log"),
        what="the reload line in a new system.log",
    )
    assert "reloaded" not in (cwd / "logs/system.log.1").read_text()
    reloaded_at = current_index(cwd)
    torro.wait_until(lambda: current_index(cwd) >= reloaded_at + 2,
               what="two rotations after the reload")
    times = timestamps(cwd)
    newest = max(times)
    assert times[newest] - times[newest - 1] >= 700

    # a changed KEY_STORAGE_PATH needs a restart: the store stays
    env_file.write_text(
        "KEY_DAEMON_ROTATION_INTERVAL=700\nKEY_STORAGE_PATH=elsewhere\n"
    )
    daemon.send_signal(signal.SIGHUP)
    torro.wait_until(
        lambda: "restart the daemon to apply KEY_STORAGE_PATH"
        in log_text(cwd, "system.log"),
        what="the restart warning",
    )
    before = current_index(cwd)
    torro.wait_until(lambda: current_index(cwd) > before,
               what="a rotation in the old store")
    assert not (cwd / "elsewhere").exists()

    # a misspelt setting is named (found by a tester: the reload said
    # "configuration unchanged" and nothing more)
    env_file.write_text(
        "KEY_DAEMON_ROTATION_INTERVAL=700\nKEY_STORAGE_PATH=elsewhere\n"
        "KEY_DAEMON_ROTATON_INTERVAL=60000\n"
    )
    daemon.send_signal(signal.SIGHUP)
    torro.wait_until(
        lambda: "KEY_DAEMON_ROTATON_INTERVAL is not a setting and is "
        "ignored: did you mean KEY_DAEMON_ROTATION_INTERVAL?"
        in log_text(cwd, "system.log"),
        what="the misspelt setting's warning",
    )

    # an invalid value is logged and the daemon runs on as it was
    env_file.write_text("KEY_DAEMON_MAX_HISTORY=zero\n")
    daemon.send_signal(signal.SIGHUP)
    torro.wait_until(
        lambda: "configuration not reloaded, the old one stays: "
        "KEY_DAEMON_MAX_HISTORY=zero is not a whole number"
        in log_text(cwd, "system.log"),
        what="the rejected reload",
    )
    before = current_index(cwd)
    torro.wait_until(lambda: current_index(cwd) > before,
               what="a rotation after the rejected reload")
    assert daemon.poll() is None

    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=10) == 0
    assert rotated_indexes(cwd) == list(range(current_index(cwd) + 1))
    assert "Traceback" not in stderr_path.read_text()


# -- start, status, rotate, stop from another shell ---------------------

def test_start_status_rotate_stop(torro: "Torro") -> None:
    cwd = torro.cwd
    (cwd / ".env").write_text("KEY_DAEMON_ROTATION_INTERVAL=60000\n")
    torro.environ.pop("KEY_DAEMON_ROTATION_INTERVAL")

    started = torro.run("daemon", "start", script=True, umask=0)
    assert started.code == 0, started.stderr
    pid = pid_in_file(torro)
    assert started.stdout == f"daemon started (pid {pid})\n"
    assert started.stderr == ""
    assert torro.daemon_processes() == [pid]
    assert stat.S_IMODE(torro.pid_file.stat().st_mode) == 0o600

    status = torro.run("daemon", "status")
    assert status.code == 0
    assert f"daemon:         running (pid {pid})" in status.stdout
    status = torro.run("daemon", "status", "--json")
    assert status.code == 0
    document = json.loads(status.stdout)
    current = read_json(cwd / "keys/current.json")
    assert current["index"] == 0
    assert {
        name: document[name]
        for name in ("running", "pid", "current_index", "history_size",
                     "last_rotation", "next_rotation", "integrity")
    } == {
        "running": True,
        "pid": pid,
        "current_index": 0,
        "history_size": 1,
        "last_rotation": iso(current["timestamp"]),
        "next_rotation": iso(current["timestamp"] + 60000),
        "integrity": "ok",
    }

    again = torro.run("daemon", "start")
    assert again.code == 1
    assert_one_error_line(again, f"a daemon is already running (pid {pid}")

    rotated = torro.run("daemon", "rotate")
    assert rotated.code == 0, rotated.stderr
    current = read_json(cwd / "keys/current.json")
    assert (current["index"], current["derivedFrom"]) == (1, 0)
    assert rotated.stdout == (
        f"rotated to key 1 (fingerprint {current['fingerprint']})\n"
    )

    # the daemon carries on the chain from the key rotated beside it
    (cwd / ".env").write_text("KEY_DAEMON_ROTATION_INTERVAL=500\n")
    os.kill(pid, signal.SIGHUP)
    torro.wait_until(lambda: current_index(cwd) >= 3,
                     what="two more rotations")

    stopped = torro.run("daemon", "stop")
    assert (stopped.code, stopped.stdout) == (
        0, f"daemon stopped (pid {pid})\n"
    )
    assert log_text(cwd, "system.log").splitlines()[-1].endswith(
        " INFO daemon stopped (SIGTERM)"
    )
    assert not torro.pid_file.exists()
    torro.wait_until(lambda: not is_alive(pid), what="the daemon to exit")
    last = current_index(cwd)
    assert history_indexes(cwd) == list(range(last + 1))
    assert rotated_indexes(cwd) == list(range(last + 1))

    stopped = torro.run("daemon", "stop")
    assert (stopped.code, stopped.stdout) == (0, "no daemon is running\n")
    status = torro.run("daemon", "status")
    assert status.code == 3
    assert "daemon:         not running" in status.stdout
    status = torro.run("daemon", "status", "--json")
    assert status.code == 3
    document = json.loads(status.stdout)
    assert (document["running"], document["pid"]) == (False, None)
    assert document["current_index"] == last
    for outcome in torro.outcomes:
        assert "Traceback" not in outcome.stderr


def test_start_reports_why_the_daemon_did_not_start(torro: "Torro") -> None:
    (torro.cwd / "file").write_text("")

    outcome = torro.run("daemon", "start",
                        env={"KEY_DAEMON_LOG_DIR": "file/logs"})

    assert outcome.code == 1
    assert outcome.error_lines == [
        "torro: error: cannot create log directory file/logs: Not a "
        "directory: check KEY_DAEMON_LOG_DIR"
    ]
    assert sorted(os.listdir(torro.cwd)) == ["file"]


def test_start_on_a_damaged_store_warns(torro: "Torro") -> None:
    """Found by a user: start said only "daemon started" over a store
    whose damage stops rotation."""
    cwd = torro.cwd
    assert torro.run("daemon", "rotate").code == 0
    assert torro.run("daemon", "rotate").code == 0
    record = cwd / "keys/history/key-0.json"
    document = read_json(record)
    document["timestamp"] += 1
    record.write_text(json.dumps(document))

    started = torro.run("daemon", "start")

    assert started.code == 0
    assert started.stdout == f"daemon started (pid {pid_in_file(torro)})\n"
    assert started.error_lines == [
        f"torro: warning: rotation is stopped: {record.relative_to(cwd)}: "
        "checksum does not match (the record was edited); run torro keys "
        "restore"
    ]
    assert torro.run("daemon", "stop").code == 0


# -- crashes and stale PID files ----------------------------------------

def test_restart_after_kill_9_continues_the_chain(torro: "Torro") -> None:
    cwd = torro.cwd
    assert torro.run("daemon", "start").code == 0
    pid = pid_in_file(torro)
    torro.wait_until(lambda: current_index(cwd) >= 1, what="a rotation")

    os.kill(pid, signal.SIGKILL)
    torro.wait_until(lambda: not is_alive(pid), what="the daemon to die")
    status = torro.run("daemon", "status")
    assert status.code == 3
    assert "daemon:         not running" in status.stdout
    assert pid_in_file(torro) == pid
    crashed_at = current_index(cwd)

    started = torro.run("daemon", "start")
    assert started.code == 0, started.stderr
    new_pid = pid_in_file(torro)
    assert new_pid != pid
    assert started.stdout == f"daemon started (pid {new_pid})\n"
    torro.wait_until(lambda: current_index(cwd) > crashed_at + 1,
               what="rotations after the restart")
    assert torro.run("daemon", "stop").code == 0

    last = current_index(cwd)
    assert last > crashed_at
    assert history_indexes(cwd) == list(range(last + 1))
    # SIGKILL can land between a commit and its log line: the key killed
    # with may go unlogged, but nothing is logged twice, and every key the
    # second daemon made is logged.
    logged = rotated_indexes(cwd)
    assert logged == sorted(set(logged))
    assert set(range(crashed_at + 1, last + 1)) <= set(logged)
    assert set(logged) <= set(range(last + 1))
    verified = torro.run("keys", "verify")
    assert verified.code == 0
    assert verified.stdout.startswith(f"ok: {last + 1} keys verified")


def test_start_over_a_pid_file_holding_junk(torro: "Torro") -> None:
    torro.pid_file.write_text("hello\n")
    assert torro.run("daemon", "status").code == 3

    started = torro.run("daemon", "start")

    assert started.code == 0, started.stderr
    pid = pid_in_file(torro)
    assert started.stdout == f"daemon started (pid {pid})\n"
    stopped = torro.run("daemon", "stop")
    assert stopped.stdout == f"daemon stopped (pid {pid})\n"


@pytest.mark.parametrize("owner", ["pytest", "sleep"])
def test_pid_file_naming_an_unrelated_process(
    torro: "Torro", owner: str
) -> None:
    if owner == "pytest":
        other, alive = os.getpid(), lambda: True
    else:
        sleeper = torro.spawn(["sleep", "30"])
        other, alive = sleeper.pid, lambda: sleeper.poll() is None
    torro.pid_file.write_text(f"{other}\n")

    status = torro.run("daemon", "status")
    assert status.code == 3
    assert "daemon:         not running" in status.stdout
    stopped = torro.run("daemon", "stop")
    assert (stopped.code, stopped.stdout) == (0, "no daemon is running\n")
    assert alive() and is_alive(other)

    torro.pid_file.write_text(f"{other}\n")
    started = torro.run("daemon", "start")
    assert started.code == 0, started.stderr
    pid = pid_in_file(torro)
    assert pid != other
    assert torro.run("daemon", "stop").code == 0
    assert alive() and is_alive(other)


def test_pid_file_directories_are_not_writable_by_others(
    tmp_path: Path,
) -> None:
    pid_file = process.PidFile(tmp_path / "run" / "torro" / "torro.pid")

    previous = os.umask(0)
    try:
        pid_file.acquire()
    finally:
        os.umask(previous)
    try:
        modes = [
            stat.S_IMODE(path.stat().st_mode)
            for path in (tmp_path / "run", tmp_path / "run/torro",
                         pid_file.path)
        ]
        assert modes == [0o755, 0o755, 0o600]
        assert pid_file.path.read_text() == f"{os.getpid()}\n"
    finally:
        pid_file.release()
    assert not pid_file.path.exists()


def test_two_starts_at_once_leave_one_daemon(torro: "Torro") -> None:
    starts = [
        torro.popen("daemon", "start", stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [start.communicate(timeout=30) for start in starts]
    codes = sorted(start.returncode for start in starts)

    assert codes == [0, 1], outputs
    by_code = {
        start.returncode: out
        for start, out in zip(starts, outputs, strict=True)
    }
    winner_out, loser_err = by_code[0][0], by_code[1][1]
    pid = pid_in_file(torro)
    assert winner_out == f"daemon started (pid {pid})\n"
    assert len(loser_err.splitlines()) == 1
    assert loser_err.startswith("torro: error: a daemon is already running")
    assert torro.daemon_processes() == [pid]
    status = torro.run("daemon", "status", "--json")
    assert status.code == 0
    assert json.loads(status.stdout)["pid"] == pid
    assert torro.run("daemon", "stop").code == 0
    assert torro.daemon_processes() == []


# -- no key material anywhere -------------------------------------------

def test_no_key_material_in_logs_or_outputs(torro: "Torro") -> None:
    cwd = torro.cwd
    torro.environ["KEY_DAEMON_MAX_HISTORY"] = "20"
    assert torro.run("daemon", "start").code == 0
    torro.wait_until(lambda: current_index(cwd) >= 2, what="rotations")
    assert torro.run("daemon", "rotate").code == 0
    outcomes = torro.run_together(
        ("daemon", "status"),
        ("daemon", "status", "--json"),
        ("keys", "history"),
        ("keys", "history", "--json"),
        ("keys", "show", "1"),
        ("keys", "show", "--json", "2"),
        ("keys", "verify"),
        ("config", "show"),
    )
    assert [outcome.code for outcome in outcomes] == [0] * 8, outcomes
    torro.wait_until(lambda: current_index(cwd) >= 4, what="more rotations")
    assert torro.run("daemon", "stop").code == 0

    safe = list(torro.outcomes)
    retained = history_indexes(cwd)
    reveals = torro.run_together(*(
        ("keys", "show", str(index), "--reveal", "--json")
        for index in retained
    ))
    revealed = [json.loads(shown.stdout)["key"] for shown in reveals]
    # the reveals' stdout holds the keys; their stderr must not
    safe += [dataclasses.replace(shown, stdout="") for shown in reveals]
    assert retained == list(range(len(retained)))
    assert len(set(revealed)) == len(retained) >= 5
    secrets = revealed + [(cwd / "keys.master-key").read_text().strip()]

    texts = [outcome.stdout + outcome.stderr for outcome in safe]
    texts += [path.read_text() for path in (cwd / "logs").iterdir()]
    texts += [
        path.read_text() for path in (cwd / "keys").rglob("*")
        if path.is_file()
    ]
    assert len(texts) > 20
    for secret in secrets:
        assert re.fullmatch(r"[0-9a-f]{64}", secret)
        for text in texts:
            assert secret not in text
            assert secret.upper() not in text

