"""The real logrotate rotating a running daemon's logs.

The configuration is deploy/logrotate/torro with its paths pointed at a
test directory. A daemon rotates keys every few tens of milliseconds, so
``key-daemon.log`` grows all the time, while ``logrotate -f`` runs
several times. Afterwards every rotation the daemon made must be logged
exactly once, in order, across the rotated and current files; each
file must be 0600; and what the daemon logs after a rotation must land
in the new file, not in the one renamed.
"""

import grp
import gzip
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from leaks import check_modes

if TYPE_CHECKING:
    from runner import Torro


LOGROTATE = shutil.which("logrotate") or (
    "/usr/sbin/logrotate" if os.path.exists("/usr/sbin/logrotate") else None
)
SNIPPET = Path(__file__).resolve().parents[1] / "deploy/logrotate/torro"
# What the snippet names, and what the test puts in its place.
SNIPPET_LOG_DIR = "/var/log/torro/"
SNIPPET_PID_FILE = "/var/lib/torro/torro-daemon.pid"
SNIPPET_USER = "su torro torro"

ROTATED = re.compile(r" rotated to key (\d+) ")
LINE = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z (DEBUG|INFO|WARN|ERROR) "
)
LOG_NAME = re.compile(
    r"(key-daemon|security|system)\.log(\.[1-9][0-9]*(\.gz)?)?"
)
REOPENED = "log files reopened"
# logrotate runs while the daemon writes (the snippet keeps 14 files).
RUNS = 10
# A new key every 40 ms: about 25 lines a second in key-daemon.log.
FAST_ROTATION = {
    "KEY_DAEMON_SLEEP_INTERVAL": "20",
    "KEY_DAEMON_ROTATION_INTERVAL": "40",
    "KEY_DAEMON_MAX_HISTORY": "3",
}

pytestmark = pytest.mark.skipif(
    LOGROTATE is None, reason="logrotate is not installed"
)


def logrotate_config(log_dir: Path, pid_file: Path) -> str:
    """Return the snippet with its paths and user made the test's."""
    user = pwd.getpwuid(os.geteuid()).pw_name
    group = grp.getgrgid(os.getegid()).gr_name
    text = SNIPPET.read_text()
    for old, new in (
        (SNIPPET_LOG_DIR, f"{log_dir}/"),
        (SNIPPET_PID_FILE, str(pid_file)),
        (SNIPPET_USER, f"su {user} {group}"),
    ):
        assert old in text, f"the snippet no longer holds {old}"
        text = text.replace(old, new)
    return text


def read_log(path: Path) -> str:
    """Return a log file's text, gunzipped when it ends in .gz."""
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8") as stream:
            return stream.read()
    return path.read_text(encoding="utf-8")


def current_text(log_dir: Path, name: str) -> str:
    """Return the text of the current (unrotated) log file, or ''."""
    try:
        return (log_dir / name).read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""


def generations(log_dir: Path, name: str) -> list[Path]:
    """Return a log's files oldest first: name.N.gz ... name.1, name."""
    found = {
        path for path in log_dir.iterdir()
        if path.name == name or path.name.startswith(f"{name}.")
    }

    def age(path: Path) -> int:
        rest = path.name[len(name):].removesuffix(".gz")
        return int(rest[1:]) if rest else 0

    return sorted(found, key=age, reverse=True)


def rotation_count(log_dir: Path) -> int:
    """Return how many rotations the current key-daemon.log holds."""
    return len(ROTATED.findall(current_text(log_dir, "key-daemon.log")))


def test_logrotate_loses_and_repeats_no_line(
    torro: "Torro", tmp_path: Path
) -> None:
    assert shutil.which("pkill"), "the snippet's postrotate needs pkill"
    log_dir = torro.cwd / "logs"
    config = tmp_path / "logrotate.conf"
    config.write_text(logrotate_config(log_dir, torro.pid_file))
    # logrotate ignores a configuration others may write to
    config.chmod(0o600)
    state = tmp_path / "logrotate.state"
    stderr_path = tmp_path / "daemon.stderr"
    with open(stderr_path, "wb") as stderr:
        daemon = torro.popen(
            "daemon", "run", env=FAST_ROTATION,
            stdout=subprocess.DEVNULL, stderr=stderr,
        )
    torro.wait_until(
        lambda: " started: pid " in current_text(log_dir, "system.log")
        or daemon.poll() is not None,
        what="the daemon to start",
    )
    assert daemon.poll() is None, stderr_path.read_text()
    # a service manager's own output, beside the logs: not ours to rotate
    (log_dir / "supervisor.log").write_text("kept by supervisord\n")

    renamed_size = None
    for run in range(RUNS):
        torro.wait_until(
            lambda: rotation_count(log_dir) >= 3,
            what="rotations logged in the new key-daemon.log",
        )
        if renamed_size is not None:
            # after the daemon reopened, nothing more went to the old file
            assert (log_dir / "key-daemon.log.1").stat().st_size \
                == renamed_size

        done = subprocess.run(
            [LOGROTATE, "-f", "-s", str(state), str(config)],
            capture_output=True, text=True, timeout=30,
        )
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""

        # the postrotate SIGHUP makes the daemon reopen its files; the
        # line saying so is the first of the new system.log
        torro.wait_until(
            lambda: REOPENED in current_text(log_dir, "system.log"),
            what=f"the daemon to reopen its logs after run {run + 1}",
        )
        renamed_size = (log_dir / "key-daemon.log.1").stat().st_size

    torro.wait_until(
        lambda: rotation_count(log_dir) >= 3,
        what="rotations logged after the last logrotate run",
    )
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=30) == 0, stderr_path.read_text()
    assert (log_dir / "key-daemon.log.1").stat().st_size == renamed_size

    # only the logs and their generations: no .backup or stray file
    assert (log_dir / "supervisor.log").read_text() == "kept by supervisord\n"
    (log_dir / "supervisor.log").unlink()
    names = sorted(path.name for path in log_dir.iterdir())
    assert all(LOG_NAME.fullmatch(name) for name in names), names
    key_files = generations(log_dir, "key-daemon.log")
    assert [path.name for path in key_files] == [
        *(f"key-daemon.log.{n}.gz" for n in range(RUNS, 1, -1)),
        "key-daemon.log.1",
        "key-daemon.log",
    ]

    # every rotation once, in order, and the last one is the current key
    per_file = [
        [int(i) for i in ROTATED.findall(read_log(path))]
        for path in key_files
    ]
    assert all(per_file), [len(indexes) for indexes in per_file]
    logged = [index for indexes in per_file for index in indexes]
    record = json.loads((torro.cwd / "keys/current.json").read_text())
    newest = int(record["index"])
    assert logged == list(range(logged[0], newest + 1))
    assert logged[0] == 0

    # whole lines only, in every file
    for path in log_dir.iterdir():
        for line in read_log(path).splitlines():
            assert LINE.match(line), f"{path.name}: {line!r}"

    # one SIGHUP per run (sharedscripts), each logged once
    reopened = sum(
        read_log(path).count(REOPENED)
        for path in generations(log_dir, "system.log")
    )
    assert reopened == RUNS

    for path in log_dir.iterdir():
        assert os.stat(path).st_mode & 0o777 == 0o600, path.name
    check_modes(log_dir)
