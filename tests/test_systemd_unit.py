"""The systemd unit in deploy/: systemd's own checker, and its directives.

``systemd-analyze verify`` parses the unit as systemd would and checks
that its commands exist; it exits 0 even for unknown or malformed
directives, which it only reports, so the output is checked too.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


UNIT = Path(__file__).resolve().parent.parent / "deploy" / \
    "torro-daemon.service"
TORRO = Path(sys.executable).with_name("torro")


def directives(text: str) -> list[tuple[str, str, str]]:
    """Return (section, name, value) of every directive, in order.

    A name may repeat (``SystemCallFilter=``), so no dict.
    """
    found = []
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        name, _, value = line.partition("=")
        found.append((section, name.strip(), value.strip()))
    return found


def values(name: str, section: str = "Service") -> list[str]:
    """Return every value the unit gives ``name`` in ``section``."""
    return [
        value for where, key, value in directives(UNIT.read_text())
        if where == section and key == name
    ]


def test_systemd_analyze_verify_finds_nothing_wrong(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    text = UNIT.read_text()
    assert values("ExecStart") == ["/opt/torro/venv/bin/torro daemon run"]
    # the copy runs this checkout's torro, so that verify finds it
    copy = tmp_path / "torro-daemon.service"
    copy.write_text(text.replace(
        "ExecStart=/opt/torro/venv/bin/torro",
        f"ExecStart={TORRO}",
    ))

    done = subprocess.run(
        [analyze, "verify", str(copy)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )

    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    about_the_unit = [
        line for line in output.splitlines()
        if "torro-daemon" in line or str(tmp_path) in line
    ]
    assert about_the_unit == []


def test_systemd_analyze_reports_a_bad_directive(tmp_path: Path) -> None:
    """The check above can fail: verify names a directive it rejects."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    copy = tmp_path / "torro-daemon.service"
    copy.write_text(UNIT.read_text().replace(
        "ExecStart=/opt/torro/venv/bin/torro",
        f"ExecStart={TORRO}",
    ).replace("WatchdogSec=", "WatchdogSecs="))

    done = subprocess.run(
        [analyze, "verify", str(copy)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )

    output = done.stdout + done.stderr
    assert f"{copy}:" in output
    assert "Unknown key 'WatchdogSecs'" in output


def test_the_unit_notifies_and_keeps_a_watchdog() -> None:
    assert values("Type") == ["notify"]
    assert values("NotifyAccess") == ["main"]
    [watchdog] = values("WatchdogSec")
    assert int(watchdog) > 0
    assert values("ExecReload") == ["/bin/kill -HUP $MAINPID"]
    assert values("Restart") == ["on-failure"]
    assert values("WantedBy", "Install") == ["multi-user.target"]


def test_the_unit_is_sandboxed_with_its_store_and_logs_writable() -> None:
    assert values("NoNewPrivileges") == ["yes"]
    assert values("ProtectSystem") == ["strict"]
    assert values("PrivateTmp") == ["yes"]
    # empty: no capability at all
    assert values("CapabilityBoundingSet") == [""]
    assert values("User") == ["torro"]
    environment = dict(
        value.split("=", 1) for value in values("Environment")
    )
    writable = " ".join(values("ReadWritePaths")).split()
    store = Path(environment["KEY_STORAGE_PATH"])
    logs = Path(environment["KEY_DAEMON_LOG_DIR"])
    pid_file = Path(environment["KEY_DAEMON_PID_FILE"])
    for path in (store, logs, pid_file):
        assert any(path.is_relative_to(w) for w in writable), path
    assert values("WorkingDirectory") == ["/var/lib/torro"]


def test_the_master_key_is_a_credential_never_in_the_environment() -> None:
    assert values("LoadCredential") == ["master-key:/etc/torro/master-key"]
    environment = dict(
        value.split("=", 1) for value in values("Environment")
    )
    # the daemon finds $CREDENTIALS_DIRECTORY/master-key by itself
    assert "KEY_DAEMON_MASTER_KEY" not in environment
    assert "KEY_DAEMON_MASTER_KEY_FILE" not in environment
