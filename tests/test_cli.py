"""The ``torro`` command, run as a subprocess in a clean directory.

Errors meant for the operator are one line on stderr, ``torro: error:
...``, with no traceback; the tests check the exit code, that line, and
what is (or is not) left on disk.
"""

import contextlib
import hashlib
import json
import os
import pwd
import re
import secrets
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from runner import one_error, run_here

from torro import cli
from torro.config import load_settings
from torro.rotation import KeyRotationDaemon, RotationPolicy
from torro.store import open_store


if TYPE_CHECKING:
    from runner import Outcome, Torro


BAD_SETTINGS = [
    ("KEY_DAEMON_SLEEP_INTERVAL", "abc"),
    ("KEY_DAEMON_SLEEP_INTERVAL", "0"),
    ("KEY_DAEMON_SLEEP_INTERVAL", "-5"),
    # longer than the rotation interval of 500 ms
    ("KEY_DAEMON_SLEEP_INTERVAL", "501"),
    ("KEY_DAEMON_ALGORITHM", "md5"),
    ("KEY_DAEMON_KEY_LENGTH", "8"),
    ("KEY_DAEMON_KEY_LENGTH", "2000"),
    ("KEY_DAEMON_DERIVATION_ROUNDS", "999"),
    ("KEY_DAEMON_MAX_HISTORY", "0"),
    ("KEY_DAEMON_LOG_LEVEL", "verbose"),
    ("KEY_DAEMON_ENCRYPTION", "maybe"),
]


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def tree_digest(root: Path) -> dict[str, tuple[int, str]]:
    """Return the mode and SHA-256 of every entry under ``root``."""
    digest = {}
    for path in sorted(root.rglob("*")):
        mode = stat.S_IMODE(path.lstat().st_mode)
        content = "" if path.is_dir() \
            else hashlib.sha256(path.read_bytes()).hexdigest()
        digest[str(path.relative_to(root))] = (mode, content)
    return digest


def rotate(torro: "Torro", times: int, **env: str | None) -> None:
    """Rotate ``times`` times as ``torro daemon rotate`` does.

    The library is called in this process, in the command's directory and
    environment, to spare an interpreter start per key; the command itself
    is tested on its own.
    """
    with contextlib.chdir(torro.cwd):
        settings = load_settings(torro.env(**env))
        daemon = KeyRotationDaemon(
            open_store(settings), RotationPolicy.from_settings(settings)
        )
        for _ in range(times):
            daemon.rotate(force=True)


def assert_rotates_to(
    torro: "Torro", index: int, **env: str | None
) -> None:
    """Run ``torro daemon rotate`` and check the key it made."""
    outcome = torro.run("daemon", "rotate", env=env)
    current = read_json(torro.cwd / "keys/current.json")
    assert current["index"] == index
    assert (outcome.code, outcome.stdout, outcome.stderr) == (
        0,
        f"rotated to key {index} (fingerprint {current['fingerprint']})\n",
        "",
    )


def shown_key(outcome: "Outcome") -> str:
    """Return the key a ``torro keys show --reveal`` printed."""
    match = re.search(r"^key: +([0-9a-f]+)$", outcome.stdout, re.MULTILINE)
    assert match is not None, outcome.stdout
    return match.group(1)


# -- configuration ------------------------------------------------------

@pytest.mark.parametrize(("name", "value"), BAD_SETTINGS)
def test_invalid_setting_is_refused_in_one_line(
    torro: "Torro", name: str, value: str
) -> None:
    outcomes = torro.run_together(
        ("daemon", "run"), ("config", "check"), env={name: value}
    )

    for outcome in outcomes:
        line = one_error(outcome, 2)
        assert f" {name}={value} " in line
    assert outcomes[0].stderr == outcomes[1].stderr
    assert os.listdir(torro.cwd) == []


def test_invalid_setting_in_env_file_is_refused(torro: "Torro") -> None:
    (torro.cwd / ".env").write_text("KEY_DAEMON_KEY_LENGTH=8\n")

    outcome = torro.run("daemon", "start")

    assert one_error(outcome, 2) == (
        "torro: error: KEY_DAEMON_KEY_LENGTH=8 is out of range: use a whole "
        "number of bytes from 16 to 1024"
    )
    assert os.listdir(torro.cwd) == [".env"]


def test_config_check_accepts_valid_settings(torro: "Torro") -> None:
    outcome = torro.run("config", "check")

    assert (outcome.code, outcome.stdout, outcome.stderr) == (
        0, "configuration ok\n", ""
    )
    assert os.listdir(torro.cwd) == []


def test_config_check_warns_of_a_misspelt_setting(torro: "Torro") -> None:
    # Fault found by a tester: a misspelt variable passed the check
    # silently, and the default stood in for it.
    (torro.cwd / ".env").write_text("KEY_DAEMON_LOG_LEVL=debug\n")
    outcome = torro.run("config", "check", env={
        "KEY_DAEMON_ROTATION_INTERVALL": "60000",
        "KEY_DAEMON_BOGUS": "1",
        "KEY_DAEMONS": "not ours",
    })

    assert (outcome.code, outcome.stdout) == (0, "configuration ok\n")
    assert outcome.stderr.splitlines() == [
        "torro: warning: KEY_DAEMON_BOGUS is not a setting and is ignored",
        "torro: warning: KEY_DAEMON_LOG_LEVL is not a setting and is "
        "ignored: did you mean KEY_DAEMON_LOG_LEVEL?",
        "torro: warning: KEY_DAEMON_ROTATION_INTERVALL is not a setting "
        "and is ignored: did you mean KEY_DAEMON_ROTATION_INTERVAL?",
    ]


@pytest.mark.parametrize(
    "environ",
    [
        {"KEY_DAEMON_DERIVATION_ROUNDS": "99999999999999999999"},
        {"KEY_DAEMON_DERIVATION_ROUNDS": "4294967296"},
        {"KEY_DAEMON_DERIVATION_ROUNDS": "2147483648"},
        {"KEY_DAEMON_ROTATION_INTERVAL": "1000000000000000"},
        {
            "KEY_DAEMON_SLEEP_INTERVAL": "10000000000000",
            "KEY_DAEMON_ROTATION_INTERVAL": "10000000000000",
        },
    ],
)
def test_config_check_refuses_values_that_crashed_later(
    here: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    environ: dict[str, str],
) -> None:
    # each passed the check, then ended in "unexpected ...; this is a
    # bug" (exit 70) in rotate, status or the daemon loop
    for name, value in environ.items():
        monkeypatch.setenv(name, value)

    code, out, err = run_here(capsys, "config", "check")

    assert (code, out) == (2, "")
    name, value = next(iter(environ.items()))
    assert err.startswith(f"torro: error: {name}={value} is out of range: ")
    assert err.endswith((" (10 years)\n", " to 10000000\n"))
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("KEY_STORAGE_PATH", "afile"),
        ("KEY_STORAGE_PATH", "/dev/null"),
        ("KEY_HISTORY_PATH", "afile"),
    ],
)
def test_config_check_refuses_a_store_path_that_other_commands_refuse(
    here: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
) -> None:
    # config check said "configuration ok" (exit 0) for a regular file,
    # which every other command refused
    (here / "afile").write_text("")
    monkeypatch.setenv(variable, value)

    checked = run_here(capsys, "config", "check")
    assert os.listdir(here) == ["afile"]
    rotated = run_here(capsys, "daemon", "rotate")

    assert checked == rotated
    assert checked == (
        2,
        "",
        (
            f"torro: error: {variable}={value} is not a directory: point "
            "it at a directory (it is created if missing)\n"
        ),
    )


def test_config_show_redacts_the_master_key(torro: "Torro") -> None:
    master_key = secrets.token_hex(32)
    env = {"KEY_DAEMON_MASTER_KEY": master_key}

    shown = torro.run("config", "show", env=env)
    as_json = torro.run("config", "show", "--json", env=env)

    assert shown.code == as_json.code == 0
    assert "KEY_DAEMON_MASTER_KEY=(set, redacted)\n" in shown.stdout
    assert "KEY_DAEMON_SLEEP_INTERVAL=100\n" in shown.stdout
    document = json.loads(as_json.stdout)
    assert document["KEY_DAEMON_MASTER_KEY"] == "(set, redacted)"
    for outcome in (shown, as_json):
        text = outcome.stdout + outcome.stderr
        assert master_key not in text
        assert master_key[:8] not in text
    assert os.listdir(torro.cwd) == []


# -- help and usage errors ----------------------------------------------

def test_help_and_version_exit_0(torro: "Torro") -> None:
    commands = [
        ("--help",), ("daemon", "--help"), ("daemon", "run", "--help"),
        ("keys", "show", "--help"), ("config", "--help"),
    ]
    *helps, version = torro.run_together(*commands, ("--version",))
    # once through the installed console script
    helps.append(torro.run("--help", script=True))
    commands.append(("--help",))

    for args, outcome in zip(commands, helps, strict=True):
        assert (outcome.code, outcome.stderr) == (0, "")
        command = " ".join(("torro", *args[:-1]))
        assert outcome.stdout.startswith(f"Usage: {command} [OPTIONS]")
    assert (version.code, version.stderr) == (0, "")
    assert re.fullmatch(r"torro, version \d+\.\d+\.\d+\S*\n", version.stdout)
    assert os.listdir(torro.cwd) == []


def test_unknown_command_exits_2(torro: "Torro") -> None:
    top, under_daemon = torro.run_together(
        ("frobnicate",), ("daemon", "explode")
    )

    assert one_error(top, 2) == (
        "torro: error: No such command 'frobnicate'. (see torro --help)"
    )
    assert one_error(under_daemon, 2) == (
        "torro: error: No such command 'explode'. (see torro daemon --help)"
    )


@pytest.mark.parametrize(
    "group", [(), ("daemon",), ("keys",), ("config",)], ids=str
)
def test_bare_group_prints_its_help_not_an_escaped_error(
    here: Path,
    capsys: pytest.CaptureFixture[str],
    group: tuple[str, ...],
) -> None:
    # it printed "torro: error: Usage: ...\n\n ..." on one line
    code, help_text, err = run_here(capsys, *group, "--help")
    assert (code, err) == (0, "")

    code, out, err = run_here(capsys, *group)

    assert (code, out, err) == (2, help_text, "")
    command = " ".join(("torro", *group))
    assert out.startswith(f"Usage: {command} [OPTIONS] COMMAND [ARGS]...\n")
    assert "\\n" not in out


def test_bare_module_prints_help(torro: "Torro") -> None:
    outcome = torro.run()

    assert (outcome.code, outcome.stderr) == (2, "")
    assert outcome.stdout.startswith("Usage: torro [OPTIONS] COMMAND")
    assert "\nCommands:\n" in outcome.stdout
    assert os.listdir(torro.cwd) == []


# -- stopping and the store's place -------------------------------------

def test_stop_reads_only_the_pid_file_setting(
    here: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a bad unrelated setting made stop exit 2: the daemon could not be
    # stopped
    monkeypatch.setenv("KEY_DAEMON_SLEEP_INTERVAL", "abc")
    (here / ".env").write_text(
        "KEY_DAEMON_KEY_LENGTH=8\nKEY_DAEMON_PID_FILE=run/daemon.pid\n"
    )
    asked = []

    def stop_daemon(pid_file: Path) -> int:
        asked.append(pid_file)
        return 4321

    code, out, err = run_here(capsys, "daemon", "stop")
    assert (code, out, err) == (0, "no daemon is running\n", "")

    monkeypatch.setattr(cli.process, "stop_daemon", stop_daemon)
    code, out, err = run_here(capsys, "daemon", "stop")
    assert (code, out, err) == (0, "daemon stopped (pid 4321)\n", "")
    assert asked == [Path("run/daemon.pid")]

    (here / ".env").write_text("KEY_DAEMON_PID_FILE=\n")
    code, out, err = run_here(capsys, "daemon", "stop")
    assert (code, out) == (2, "")
    assert err == (
        "torro: error: KEY_DAEMON_PID_FILE='' is empty: use the path of a "
        "file\n"
    )
    assert sorted(os.listdir(here)) == [".env"]


@pytest.mark.parametrize(
    ("storage", "store", "master_key"),
    [
        (".", ".", "../work.master-key"),
        ("deep/s3/..", "deep", "deep.master-key"),
    ],
)
def test_store_without_a_name_keeps_its_master_key_outside(
    here: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    storage: str,
    store: str,
    master_key: str,
) -> None:
    # "." ended in "unexpected ValueError: PosixPath('.') has an empty
    # name"; "deep/s3/.." put the master key inside the store
    monkeypatch.setenv("KEY_STORAGE_PATH", storage)

    code, out, err = run_here(capsys, "daemon", "rotate")

    assert (code, err) == (0, "")
    assert out.startswith("rotated to key 0 ")
    assert (here / store / "current.json").is_file()
    key_file = (here / master_key).resolve()
    assert key_file.is_file()
    assert (here / store).resolve() not in key_file.parents


# -- errors from the environment and bugs -------------------------------

@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("KEY_STORAGE_PATH", "afile"),
        ("KEY_STORAGE_PATH", "/dev/null"),
        ("KEY_HISTORY_PATH", "/dev/null"),
    ],
)
def test_store_path_that_is_no_directory_is_named_as_such(
    here: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
) -> None:
    # it said "no master key for the key store ...: it holds keys"
    (here / "afile").write_text("")
    monkeypatch.setenv(variable, value)

    for command in (("daemon", "rotate"), ("keys", "verify")):
        code, out, err = run_here(capsys, *command)

        assert (code, out) == (2, "")
        assert err == (
            f"torro: error: {variable}={value} is not a directory: point it "
            "at a directory (it is created if missing)\n"
        )
    assert sorted(os.listdir(here)) == ["afile", "logs"]


@pytest.mark.parametrize(
    ("variable", "commands"),
    [
        (
            "KEY_STORAGE_PATH",
            [("config", "check"), ("daemon", "rotate"), ("keys", "verify")],
        ),
        (
            "KEY_HISTORY_PATH",
            [("config", "check"), ("daemon", "rotate"), ("keys", "verify")],
        ),
        ("KEY_DAEMON_LOG_DIR", [("config", "check")]),
    ],
)
def test_path_under_a_regular_file_is_not_taken_for_a_store(
    here: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    commands: list[tuple[str, ...]],
) -> None:
    # KEY_STORAGE_PATH=afile/sub said "no master key for the key store
    # afile/sub: it holds keys but .../afile/sub.master-key does not exist"
    (here / "afile").write_text("")
    monkeypatch.setenv(variable, "afile/sub")

    for command in commands:
        code, out, err = run_here(capsys, *command)

        assert (code, out) == (2, "")
        assert err == (
            f"torro: error: {variable}=afile/sub is inside afile, which is "
            "not a directory: point it at a directory (it is created if "
            "missing)\n"
        )
    assert "afile" in os.listdir(here)
    assert not (here / "afile.master-key").exists()


def test_config_check_refuses_a_pid_file_under_a_regular_file(
    here: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # config check said "configuration ok"; daemon start then failed
    (here / "afile").write_text("")
    monkeypatch.setenv("KEY_DAEMON_PID_FILE", "afile/torro.pid")

    code, out, err = run_here(capsys, "config", "check")

    assert (code, out) == (2, "")
    assert err == (
        "torro: error: KEY_DAEMON_PID_FILE=afile/torro.pid is inside afile, "
        "which is not a directory: point it at a file in a directory (the "
        "directory is created if missing)\n"
    )
    assert os.listdir(here) == ["afile"]


def test_os_error_is_an_operator_error_not_a_bug(
    here: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # "unexpected OSError: [Errno 36] File name too long ...; this is a
    # bug" (exit 70)
    name = "k" * 300
    monkeypatch.setenv("KEY_STORAGE_PATH", name)

    code, out, err = run_here(capsys, "daemon", "rotate")

    assert (code, out) == (1, "")
    assert err == f"torro: error: {name}: File name too long\n"
    (line,) = (here / "logs/system.log").read_text().splitlines()
    assert " ERROR command failed: OSError: [Errno 36] " in line


def test_daemon_start_tells_why_the_system_refused_it(
    torro: "Torro",
) -> None:
    # Fault found by a tester: "the daemon exited with status 1; see the
    # system log", where daemon run and daemon rotate name the file.
    name = "k" * 300
    started = torro.run("daemon", "start", env={"KEY_STORAGE_PATH": name})

    assert (started.code, started.stdout) == (1, "")
    assert started.stderr == f"torro: error: {name}: File name too long\n"
    assert torro.run("daemon", "status").code == 3


def test_unexpected_error_logs_its_traceback_at_info_level(
    here: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the advice said "report it with the system log", which held one
    # line and no traceback below the debug level
    def broken(settings: object) -> None:
        raise RuntimeError("invariant broken\nhere")

    monkeypatch.setattr(cli, "_rotation_daemon", broken)

    code, out, err = run_here(capsys, "daemon", "rotate")

    system_log = here / "logs/system.log"
    assert (code, out) == (cli.EXIT_SOFTWARE, "")
    assert err == (
        "torro: error: unexpected RuntimeError: invariant broken\\nhere; "
        "this is a bug: please report it with the traceback in "
        f"{system_log}\n"
    )
    (line,) = system_log.read_text().splitlines()
    assert " ERROR unexpected error in the CLI: Traceback (most recent " \
        "call last):\\n" in line
    assert "in broken\\n" in line
    assert line.endswith("RuntimeError: invariant broken\\nhere")


def test_unexpected_error_without_logs_asks_for_its_line(
    here: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(settings: object) -> None:
        raise RuntimeError("invariant broken")

    monkeypatch.setattr(cli, "daemon_status", broken)

    code, out, err = run_here(capsys, "daemon", "status")

    assert (code, out) == (cli.EXIT_SOFTWARE, "")
    assert err == (
        "torro: error: unexpected RuntimeError: invariant broken; this is "
        "a bug: please report it with this line\n"
    )
    assert os.listdir(here) == []


# -- the master key -----------------------------------------------------

def test_master_key_from_the_environment(torro: "Torro") -> None:
    cwd = torro.cwd
    master = {"KEY_DAEMON_MASTER_KEY": secrets.token_hex(32)}
    rotate(torro, 1, **master)
    assert_rotates_to(torro, 1, **master)

    current = read_json(cwd / "keys/current.json")
    assert current["index"] == 1
    assert current["key"].startswith("torro:v1:")
    assert not (cwd / "keys.master-key").exists()
    verified = torro.run("keys", "verify", env=master)
    assert verified.stdout == "ok: 2 keys verified, chain intact, current " \
        "key 1\n"

    # another master key opens nothing and changes nothing
    before = tree_digest(cwd / "keys")
    other = {"KEY_DAEMON_MASTER_KEY": secrets.token_hex(32)}
    for command in (("daemon", "start"), ("daemon", "rotate"),
                    ("keys", "verify")):
        line = one_error(torro.run(*command, env=other), 1)
        assert "the master key (id " in line
        assert "is not the one that sealed keys/current.json" in line
    assert tree_digest(cwd / "keys") == before
    assert sorted(os.listdir(cwd)) == ["keys", "logs"]
    assert torro.daemon_processes() == []


def test_lost_master_key_file_changes_nothing(torro: "Torro") -> None:
    cwd = torro.cwd
    rotate(torro, 2)
    master_key = cwd / "keys.master-key"
    master_key.unlink()
    before = tree_digest(cwd / "keys")

    for outcome in torro.run_together(
        ("daemon", "start"), ("daemon", "rotate"), ("keys", "verify"),
        ("keys", "restore"),
    ):
        line = one_error(outcome, 1)
        assert line.startswith(
            "torro: error: no master key for the key store keys: it holds "
            f"keys but {master_key} does not exist"
        )

    assert not master_key.exists()
    assert tree_digest(cwd / "keys") == before
    assert sorted(os.listdir(cwd)) == ["keys", "logs"]
    status = torro.run("daemon", "status", "--json")
    assert status.code == 3
    assert json.loads(status.stdout)["integrity"] == "unreadable"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (None, "does not exist"),
        (lambda path: path.mkdir(), "is not a regular file"),
        (lambda path: path.write_text("0" * 5000), "is larger than 4096"),
        (lambda path: path.write_text("not a key\n"), "must hold exactly"),
    ],
)
def test_config_check_master_key_file_problem_is_a_bad_setting(
    here: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    make: Callable[[Path], object] | None,
    reason: str,
) -> None:
    # config check exited 1 for it; the README says a bad setting exits 2
    if make is not None:
        make(here / "master.key")
    monkeypatch.setenv("KEY_DAEMON_MASTER_KEY_FILE", "master.key")

    checked = run_here(capsys, "config", "check")
    rotated = run_here(capsys, "daemon", "rotate")

    assert checked[:2] == (2, "")
    assert checked[2].startswith(
        f"torro: error: master key file master.key {reason}"
    )
    assert len(checked[2].splitlines()) == 1
    # the other commands are left as they were
    assert rotated == (1, "", checked[2])


def test_master_key_file_inside_the_key_store_is_refused(
    here: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # it was accepted silently, so a copy of the store opened its keys
    (here / "keys").mkdir()
    (here / "keys/mk").write_text(secrets.token_hex(32) + "\n")
    monkeypatch.setenv("KEY_DAEMON_MASTER_KEY_FILE", "keys/mk")

    for command in (("config", "check"), ("daemon", "rotate")):
        code, out, err = run_here(capsys, *command)

        assert (code, out) == (2, "")
        assert err == (
            "torro: error: KEY_DAEMON_MASTER_KEY_FILE=keys/mk is inside the "
            "key store keys: keep the master key outside it, so a copy of "
            "the store cannot open the keys\n"
        )
    assert os.listdir(here / "keys") == ["mk"]


def test_without_encryption_the_key_is_stored_as_hex(torro: "Torro") -> None:
    env = {"KEY_DAEMON_ENCRYPTION": "false", "KEY_DAEMON_KEY_LENGTH": "24"}
    rotate(torro, 2, **env)

    current = read_json(torro.cwd / "keys/current.json")
    assert re.fullmatch(r"[0-9a-f]{48}", current["key"])
    shown = torro.run("keys", "show", "1", "--reveal", env=env)
    assert shown.code == 0
    assert shown_key(shown) == current["key"]


# -- keys history, show, verify, restore --------------------------------

def test_history_and_show_never_print_key_material(torro: "Torro") -> None:
    cwd = torro.cwd
    rotate(torro, 3)
    fingerprints = {
        key["index"]: key["fingerprint"]
        for key in read_json(cwd / "keys/history.json")["keys"]
    }

    history, listed = torro.run_together(
        ("keys", "history"), ("keys", "history", "--json")
    )
    assert history.code == 0
    rows = [line.split() for line in history.stdout.splitlines()[1:]]
    assert [(int(r[0]), r[2], r[3]) for r in rows] == [
        (2, fingerprints[2], "current"),
        (1, fingerprints[1], "retained"),
        (0, fingerprints[0], "retained"),
    ]
    assert [
        (row["index"], row["fingerprint"], row["role"])
        for row in json.loads(listed.stdout)
    ] == [(int(r[0]), r[2], r[3]) for r in rows]
    assert all("key" not in row for row in json.loads(listed.stdout))

    keys = {}
    for index, fingerprint in fingerprints.items():
        shown, revealed = torro.run_together(
            ("keys", "show", str(index)),
            ("keys", "show", str(index), "--reveal"),
        )
        assert shown.code == 0
        assert f"fingerprint:   {fingerprint}\n" in shown.stdout
        assert "key:" not in shown.stdout
        assert revealed.code == 0
        keys[index] = shown_key(revealed)
        assert re.fullmatch(r"[0-9a-f]{64}", keys[index])
    assert len(set(keys.values())) == 3

    others = [
        outcome.stdout + outcome.stderr for outcome in torro.outcomes
        if "--reveal" not in outcome.args
    ]
    security_log = (cwd / "logs/security.log").read_text()
    for key in keys.values():
        for start in range(len(key) - 7):
            piece = key[start:start + 8]
            assert all(piece not in text for text in others)
            assert piece not in security_log
    revealed_lines = [
        line for line in security_log.splitlines() if "revealed" in line
    ]
    assert [line.split(" ", 2)[2] for line in revealed_lines] == [
        f"key {index} (fingerprint {fingerprint}) revealed by torro keys "
        "show"
        for index, fingerprint in fingerprints.items()
    ]


@pytest.mark.parametrize(
    ("argument", "code", "expected"),
    [
        ("999", 1, "no key with index 999: indexes run from 0 to 1"),
        ("-1", 2, "No such option '-1'."),
        ("abc", 2, "Invalid value for 'INDEX': 'abc' is not a valid"),
    ],
)
def test_show_refuses_a_bad_index(
    torro: "Torro", argument: str, code: int, expected: str
) -> None:
    if code == 1:
        rotate(torro, 2)

    line = one_error(torro.run("keys", "show", argument), code)

    assert line.startswith(f"torro: error: {expected}")


def test_reading_commands_on_an_empty_store_create_nothing(
    torro: "Torro",
) -> None:
    *refused, status = torro.run_together(
        ("keys", "history"), ("keys", "verify"), ("keys", "show", "0"),
        ("keys", "restore"), ("daemon", "status", "--json"),
    )
    for outcome in refused:
        line = one_error(outcome, 1)
        assert line.startswith(
            "torro: error: the key store keys holds no key yet"
        )
    assert status.code == 3
    assert json.loads(status.stdout)["integrity"] == "empty"
    assert not (torro.cwd / "keys").exists()
    assert not (torro.cwd / "keys.master-key").exists()


def test_edited_record_fails_verify_and_stops_rotation(
    torro: "Torro",
) -> None:
    cwd = torro.cwd
    rotate(torro, 3)
    verified = torro.run("keys", "verify")
    assert (verified.code, verified.stdout) == (
        0, "ok: 3 keys verified, chain intact, current key 2\n"
    )

    record = cwd / "keys/history/key-1.json"
    data = record.read_bytes()
    digit = data.index(b'"timestamp": ') + len(b'"timestamp": ') + 5
    edited = b"1" if data[digit:digit + 1] != b"1" else b"2"
    record.write_bytes(data[:digit] + edited + data[digit + 1:])
    before = tree_digest(cwd / "keys")

    line = one_error(torro.run("keys", "verify"), 1)
    assert line.startswith(
        "torro: error: keys/history/key-1.json: checksum does not match"
    )
    line = one_error(torro.run("daemon", "rotate"), 1)
    assert "keys/history/key-1.json" in line
    line = one_error(torro.run("keys", "history"), 1)
    assert "keys/history/key-1.json" in line
    assert tree_digest(cwd / "keys") == before
    status = torro.run("daemon", "status", "--json")
    assert status.code == 3
    assert status.stderr == ""
    document = json.loads(status.stdout)
    assert document["integrity"] == "failed"
    assert "keys/history/key-1.json" in document["problem"]


@pytest.mark.parametrize("kind", ["link to /dev/zero", "fifo"])
def test_endless_store_file_is_named_not_read_until_memory_runs_out(
    torro: "Torro", kind: str
) -> None:
    """Fault found by a tester: history.json linked to /dev/zero made
    every command read until the OOM killer came; a FIFO made them wait
    forever. Each now names the file and what to do, and restore mends
    the store."""
    cwd = torro.cwd
    rotate(torro, 2)
    history = cwd / "keys/history.json"
    history.unlink()
    if kind == "fifo":
        os.mkfifo(history)
        what = "is not a regular file"
    else:
        history.symlink_to("/dev/zero")
        what = "is a symbolic link"
    expected = (
        f"keys/history.json {what}, so not a file of the key store: move "
        "it away, then run torro keys restore"
    )

    assert one_error(torro.run("keys", "verify"), 1) == \
        f"torro: error: {expected}"
    assert expected in one_error(torro.run("daemon", "rotate"), 1)
    status = torro.run("daemon", "status", "--json")
    assert json.loads(status.stdout)["problem"].endswith(expected)

    history.unlink()
    assert torro.run("keys", "restore").code == 0
    assert_rotates_to(torro, 2)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown")
def test_root_cli_leaves_the_daemon_users_store_alone(
    torro: "Torro",
) -> None:
    """Fault found by a tester: `torro daemon rotate` run as root on the
    store of a daemon running as its own user made root-owned 0600
    files, which the daemon could then not read. Root is refused before
    anything is written, and log files root creates go to the log
    directory's owner."""
    cwd = torro.cwd
    rotate(torro, 2)
    nobody = pwd.getpwnam("nobody")
    for path in [cwd / "keys", *(cwd / "keys").rglob("*")]:
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    shutil.rmtree(cwd / "logs", ignore_errors=True)
    (cwd / "logs").mkdir(mode=0o700)
    os.chown(cwd / "logs", nobody.pw_uid, nobody.pw_gid)
    before = tree_digest(cwd / "keys")

    line = one_error(torro.run("daemon", "rotate"), 1)
    assert line == (
        "torro: error: the key store keys belongs to nobody, and "
        "this command runs as root: run it as nobody (for instance with "
        "sudo -u nobody), so that the daemon can read what it writes"
    )
    assert tree_digest(cwd / "keys") == before
    assert {path.stat().st_uid for path in (cwd / "keys").rglob("*")} \
        == {nobody.pw_uid}
    logged = list((cwd / "logs").iterdir())
    assert logged and {path.stat().st_uid for path in logged} \
        == {nobody.pw_uid}

    new_key = cwd / "new.key"
    new_key.write_text("ab" * 32 + "\n")
    new_key.chmod(0o400)
    line = one_error(
        torro.run("keys", "rewrap", "--new-master-key-file", "new.key"), 1
    )
    assert line.startswith(
        "torro: error: the key store keys belongs to nobody, and this "
        "command runs as root"
    )
    assert tree_digest(cwd / "keys") == before
    assert sorted(path.name for path in cwd.iterdir()) == [
        "keys", "keys.master-key", "logs", "new.key"
    ]

    # reading is no writing: root may still look
    assert torro.run("keys", "verify").code == 0

    # a store not made yet is judged by the directory it would go in
    os.chown(cwd, nobody.pw_uid, nobody.pw_gid)
    line = one_error(torro.run(
        "daemon", "rotate", env={"KEY_STORAGE_PATH": "other"}
    ), 1)
    assert line.startswith(
        f"torro: error: {cwd}, where the key store other would be made, "
        "belongs to nobody, and this command runs as root"
    )
    assert not (cwd / "other").exists()


def test_restore_after_losing_current_json(torro: "Torro") -> None:
    cwd = torro.cwd
    rotate(torro, 2)
    current = cwd / "keys/current.json"
    original = current.read_bytes()

    current.unlink()
    line = one_error(torro.run("keys", "verify"), 1)
    assert "keys/current.json" in line
    restored = torro.run("keys", "restore")
    assert (restored.code, restored.stdout) == (
        0,
        "wrote keys/history.json\nwrote keys/current.json\n"
        "restored: current key 1\n",
    )
    assert current.read_bytes() == original
    verified = torro.run("keys", "verify")
    assert verified.stdout == "ok: 2 keys verified, chain intact, current " \
        "key 1\n"

    # by hand, as the operator documentation says
    current.unlink()
    shutil.copy(cwd / "keys/backup/current.json", current)
    verified = torro.run("keys", "verify")
    assert verified.stdout == "ok: 2 keys verified, chain intact, current " \
        "key 1\n"
    assert_rotates_to(torro, 2)


# -- reset ---------------------------------------------------------------

def test_reset_asks_first(torro: "Torro") -> None:
    rotate(torro, 2)
    before = tree_digest(torro.cwd / "keys")

    declined = torro.run("daemon", "reset", stdin="n\n")

    assert declined.code == 1
    assert declined.error_lines == ["torro: aborted"]
    assert declined.stdout.startswith("archive every key in keys and start")
    assert tree_digest(torro.cwd / "keys") == before
    assert sorted(os.listdir(torro.cwd)) == [
        "keys", "keys.master-key", "logs"
    ]


def test_reset_archives_and_never_reuses_an_index(torro: "Torro") -> None:
    cwd = torro.cwd
    rotate(torro, 3)
    old_history = read_json(cwd / "keys/history.json")
    started = time.gmtime(time.time() - 1)

    reset = torro.run("daemon", "reset", "--yes")

    assert reset.code == 0, reset.stderr
    [archive] = [p for p in cwd.iterdir() if p.name.startswith("keys.arch")]
    match = re.fullmatch(r"keys\.archive-(\d{8}T\d{6}Z)", archive.name)
    assert match is not None
    stamp = time.strptime(match.group(1), "%Y%m%dT%H%M%SZ")
    assert started <= stamp <= time.gmtime()
    assert reset.stdout == (
        f"old keys archived in {archive.name}; new chain starts at key 3\n"
    )
    assert read_json(archive / "history.json") == old_history
    assert sorted(os.listdir(archive / "history")) == [
        "key-0.json", "key-1.json", "key-2.json"
    ]
    current = read_json(cwd / "keys/current.json")
    assert (current["index"], current["derivedFrom"]) == (3, None)
    history = read_json(cwd / "keys/history.json")
    assert [key["index"] for key in history["keys"]] == [3]
    assert set(history["retiredFingerprints"]) >= {
        key["fingerprint"] for key in old_history["keys"]
    }
    verified = torro.run("keys", "verify")
    assert verified.stdout == "ok: 1 keys verified, chain intact, current " \
        "key 3\n"
    assert_rotates_to(torro, 4)


def test_reset_purge_leaves_no_archive(torro: "Torro") -> None:
    cwd = torro.cwd
    rotate(torro, 2)

    reset = torro.run("daemon", "reset", "--yes", "--purge")

    assert (reset.code, reset.stdout) == (
        0, "old keys destroyed; new chain starts at key 2\n"
    )
    assert sorted(os.listdir(cwd)) == ["keys", "keys.master-key", "logs"]
    assert read_json(cwd / "keys/current.json")["index"] == 2
    assert torro.run("keys", "verify").code == 0
    assert_rotates_to(torro, 3)


# -- permissions ---------------------------------------------------------

def test_files_are_private_whatever_the_umask(torro: "Torro") -> None:
    cwd = torro.cwd
    for _ in range(2):
        outcome = torro.run("daemon", "rotate", umask=0)
        assert outcome.code == 0, outcome.stderr

    modes = {
        str(path.relative_to(cwd)): stat.S_IMODE(path.stat().st_mode)
        for path in cwd.rglob("*")
    }
    assert modes.pop("keys.master-key") == 0o400
    for name in ("keys", "keys/history", "keys/backup", "logs"):
        assert modes.pop(name) == 0o700, name
    assert {name: mode for name, mode in modes.items() if mode != 0o600} \
        == {}
    assert set(modes) >= {
        "keys/current.json", "keys/history.json", "keys/history/key-0.json",
        "keys/history/key-1.json", "keys/backup/current.json",
        "logs/system.log", "logs/key-daemon.log", "logs/security.log",
    }
