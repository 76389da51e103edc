"""The README's "Operating it" procedures, run as written.

Every procedure of "Back up", "Rotate the master key" and "Recover" runs
here with real ``torro`` processes of the venv, the real ``flock``,
``tar``, ``cp`` and ``openssl``, in a temporary directory that stands
for the machine's root: ``/var/lib/torro``, ``/var/log/torro``,
``/etc/torro`` and ``/backup`` of the README become the same paths under
it. The CLI gets the deploy files' settings, as the README says it must.

To keep the README and these tests in step, each command line a test
runs is first looked up in README.md: a procedure's line verbatim, and a
``torro`` command by its row of the CLI table (every option it is given
must be in that row). A test fails when the README no longer says what
it runs.
"""

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from runner import COMMAND_TIMEOUT, Outcome, Torro, clean_environ, wait_until


README = Path(__file__).resolve().parents[1] / "README.md"
# The venv's bin directory: `torro` in a README line is the venv's.
VENV_BIN = Path(sys.executable).parent

# The README's lines, before the paths are moved under the test's root.
MAKE_MASTER_KEY = "(umask 077; openssl rand -hex 32 > /etc/torro/master-key)"
BACKUP = (
    "(umask 077; flock /var/lib/torro/keys/.lock tar -C /var/lib/torro "
    "-czf /backup/torro-keys.tar.gz keys)"
)
BRING_BACK = "tar -C /var/lib/torro -xzf /backup/torro-keys.tar.gz"
COPY_CURRENT = "cp keys/backup/current.json keys/current.json"
MASTER_KEY_ROTATION = (
    "torro daemon stop",
    "(umask 077; openssl rand -hex 32 > /etc/torro/master-key.new)",
    "torro keys rewrap --new-master-key-file /etc/torro/master-key.new",
    "mv /etc/torro/master-key "
    "/etc/torro/master-key.old-$(date +%Y%m%d%H%M%S)",
    "mv /etc/torro/master-key.new /etc/torro/master-key",
    "torro daemon start",
)
# The README's absolute paths, moved under the test's root in one pass.
README_PATHS = re.compile(
    r"(?<![\w./-])(/var/lib/torro|/var/log/torro|/etc/torro|/backup)"
    r"(?=[/\s)]|$)"
)

# A schedule that never rotates during a test, and one that rotates
# several times a second.
SLOW_MS = "3600000"
FAST_MS = "200"
BASE_SETTINGS = {
    "KEY_DAEMON_SLEEP_INTERVAL": "50",
    "KEY_DAEMON_ROTATION_INTERVAL": SLOW_MS,
    "KEY_DAEMON_DERIVATION_ROUNDS": "1000",
    "KEY_DAEMON_API": "false",
}
FAST = {"KEY_DAEMON_ROTATION_INTERVAL": FAST_MS}
WITH_API = {
    "KEY_DAEMON_API": "true",
    "KEY_DAEMON_HOST": "127.0.0.1",
    "KEY_DAEMON_PORT": "0",
}
ROTATED = re.compile(r" rotated to key (\d+) \(fingerprint ([0-9a-f]{16}),")
LISTENING = re.compile(r"HTTP API listening on (http://\S+)")
ARCHIVED = re.compile(
    r"old keys archived in (\S+); new chain starts at key (\d+)\n"
)
POINT_AT = re.compile(
    r"next: point KEY_DAEMON_MASTER_KEY_FILE at (\S+) before starting "
    r"the daemon\n"
)
openssl = pytest.mark.skipif(
    shutil.which("openssl") is None, reason="openssl is not installed"
)

Changes = dict[str, str | None]


@functools.cache
def readme() -> str:
    return README.read_text()


def assert_documented(text: str) -> None:
    """Fail unless README.md says ``text`` verbatim."""
    assert text in readme(), (
        f"README.md no longer says {text!r}: bring this test in step"
    )


def assert_in_cli_table(args: tuple[str, ...]) -> None:
    """Fail unless the CLI table has a row for ``torro args`` listing
    every option given."""
    rows = re.findall(r"^\| `(torro [^`]+)`", readme(), re.MULTILINE)
    command = " ".join(["torro", *args[:2]])
    found = [row for row in rows if f"{row} ".startswith(f"{command} ")]
    assert found, f"README.md's CLI table has no row for {command}"
    for option in (arg for arg in args if arg.startswith("--")):
        assert f"{option}" in found[0], (
            f"README.md's row {found[0]!r} does not list {option}"
        )


class Host:
    """A machine set up as the README's "Operating it" section says.

    :param root: the directory standing for ``/``.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cwd = self.path("/var/lib/torro")
        for folder in ("/var/lib/torro", "/etc/torro", "/backup"):
            self.path(folder).mkdir(parents=True)
        settings = {
            **BASE_SETTINGS,
            # the deploy files' settings, as the CLI needs them
            "KEY_STORAGE_PATH": str(self.path("/var/lib/torro/keys")),
            "KEY_DAEMON_PID_FILE": str(
                self.path("/var/lib/torro/torro-daemon.pid")
            ),
            "KEY_DAEMON_MASTER_KEY_FILE": str(
                self.path("/etc/torro/master-key")
            ),
            "KEY_DAEMON_LOG_DIR": str(self.path("/var/log/torro")),
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        self.runner = Torro(self.cwd, clean_environ(**settings))
        self.keys = self.path("/var/lib/torro/keys")
        self.logs = self.path("/var/log/torro")

    def path(self, readme_path: str) -> Path:
        """Return where the README's absolute ``readme_path`` is here."""
        return self.root / readme_path.lstrip("/")

    def local(self, line: str) -> str:
        """Return the README's ``line`` with its paths moved here."""
        return README_PATHS.sub(
            lambda match: str(self.path(match.group(1))), line
        )

    def shell(
        self, line: str, env: Changes | None = None, stdin: str = ""
    ) -> Outcome:
        """Run a README line as written, through ``sh -c``."""
        assert_documented(line)
        return self.shell_unchecked(line, env, stdin)

    def shell_unchecked(
        self, line: str, env: Changes | None = None, stdin: str = ""
    ) -> Outcome:
        """Run ``line`` through ``sh -c`` whether or not the README has it.
        """
        done = subprocess.run(
            ["sh", "-c", self.local(line)],
            cwd=self.cwd,
            env=self.runner.env(**(env or {})),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
        )
        assert "Traceback" not in done.stderr, done.stderr
        return Outcome((line,), done.returncode, done.stdout, done.stderr)

    def torro(
        self, *args: str, env: Changes | None = None, stdin: str = ""
    ) -> Outcome:
        """Run the venv's ``torro args``, a command of the CLI table."""
        assert_in_cli_table(args)
        outcome = self.runner.run(*args, env=env, stdin=stdin, script=True)
        assert "Traceback" not in outcome.stderr, outcome.stderr
        return outcome

    def ok(self, *args: str, env: Changes | None = None) -> str:
        """Run ``torro args``; fail unless it exits 0; return stdout."""
        outcome = self.torro(*args, env=env)
        assert outcome.code == 0, (args, outcome.stderr)
        return outcome.stdout

    def make_master_key(self) -> None:
        """Make /etc/torro/master-key, by the README's line if possible."""
        if shutil.which("openssl") is None:
            key_file = self.path("/etc/torro/master-key")
            key_file.write_text(os.urandom(32).hex() + "\n")
            key_file.chmod(0o600)
            return
        assert self.shell(MAKE_MASTER_KEY).code == 0

    # -- the daemon ----------------------------------------------------

    def start(self, env: Changes | None = None) -> int:
        """``torro daemon start`` as the README says; return the PID."""
        started = self.shell("torro daemon start", env)
        assert started.code == 0, started.stderr
        match = re.fullmatch(r"daemon started \(pid (\d+)\)\n",
                             started.stdout)
        assert match, started.stdout
        return int(match.group(1))

    def stop(self) -> None:
        """``torro daemon stop`` as the README says; fail unless it did."""
        stopped = self.shell("torro daemon stop")
        assert stopped.code == 0, stopped.stderr
        assert stopped.stdout.startswith("daemon stopped (pid ")

    def start_with_api(self, env: Changes | None = None) -> httpx.Client:
        """Start the daemon with its API on a free port; return a client.
        """
        before = len(LISTENING.findall(self.log("system.log")))
        self.start({**WITH_API, **(env or {})})
        wait_until(
            lambda: len(LISTENING.findall(self.log("system.log"))) > before,
            what="the HTTP API to listen",
        )
        url = LISTENING.findall(self.log("system.log"))[-1]
        return httpx.Client(base_url=url, timeout=10.0)

    def status(self, env: Changes | None = None) -> tuple[int, Any]:
        """Return the exit code and document of ``daemon status --json``.
        """
        outcome = self.torro("daemon", "status", "--json", env=env)
        return outcome.code, json.loads(outcome.stdout)

    def history(self, env: Changes | None = None) -> list[tuple[int, str]]:
        """Return the retained keys' indexes and fingerprints."""
        rows = json.loads(self.ok("keys", "history", "--json", env=env))
        return [(row["index"], row["fingerprint"]) for row in rows]

    def verify(self, env: Changes | None = None) -> str:
        """Return what ``torro keys verify`` printed; fail unless ok."""
        return self.ok("keys", "verify", env=env)

    def current(self, keys: Path | None = None) -> dict[str, Any]:
        """Return the record in current.json of ``keys`` (the store)."""
        path = (keys or self.keys) / "current.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return {"index": -1}

    def log(self, name: str) -> str:
        """Return the text of one of the daemon's logs ("" before it)."""
        try:
            return (self.logs / name).read_text()
        except FileNotFoundError:
            return ""

    def rotations(self) -> list[tuple[int, str]]:
        """Return each rotation logged: index and fingerprint, in order."""
        return [
            (int(index), fingerprint)
            for index, fingerprint in ROTATED.findall(
                self.log("key-daemon.log")
            )
        ]

    def wait_for_index(self, index: int) -> None:
        """Wait until the store's current key is ``index`` or newer."""
        wait_until(
            lambda: self.current()["index"] >= index,
            what=f"the daemon to rotate to key {index}",
        )


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    """A machine set up as the README says, with its master key made;
    every daemon started on it is killed at teardown."""
    machine = Host(tmp_path / "root")
    try:
        machine.make_master_key()
        yield machine
    finally:
        machine.runner.kill_leftovers()


def verified_line(count: int, current: int) -> str:
    return f"ok: {count} keys verified, chain intact, current key {current}\n"


def fingerprint_of(record: dict[str, Any]) -> tuple[int, str]:
    return record["index"], record["fingerprint"]


def tar_members(tarball: Path) -> list[str]:
    with tarfile.open(tarball) as archive:
        return archive.getnames()


def tar_current(tarball: Path) -> dict[str, Any]:
    """Return the record in the tarball's keys/current.json."""
    with tarfile.open(tarball) as archive:
        member = archive.extractfile("keys/current.json")
        assert member is not None
        return json.loads(member.read())


# -- Back up -------------------------------------------------------------

def test_backup_under_the_lock_while_the_daemon_rotates(host: Host) -> None:
    fast = {**FAST, "KEY_DAEMON_MAX_HISTORY": "5"}
    pid = host.start(fast)
    host.wait_for_index(3)

    # the premise: holding the flock keeps every writer out, and a
    # rotation due meanwhile waits for it
    held = subprocess.run(
        ["flock", str(host.keys / ".lock"), "sh", "-c",
         "cat current.json; echo; echo ---; sleep 1; cat current.json"],
        cwd=host.keys, capture_output=True, text=True, check=True,
    )
    first, last = held.stdout.split("\n---\n")
    assert json.loads(first) == json.loads(last)
    host.wait_for_index(json.loads(first)["index"] + 1)

    tarball = host.path("/backup/torro-keys.tar.gz")
    copies = []
    for attempt in range(4):
        backed_up = host.shell(BACKUP, fast)
        assert (backed_up.code, backed_up.stderr) == (0, "")
        assert tarball.stat().st_mode & 0o077 == 0
        members = tar_members(tarball)
        # the store and nothing else: no master key travels with it
        assert all(name.split("/")[0] == "keys" for name in members)
        assert "keys/current.json" in members
        elsewhere = host.root / f"elsewhere-{attempt}"
        elsewhere.mkdir()
        subprocess.run(
            ["tar", "-C", str(elsewhere), "-xzf", str(tarball)], check=True
        )
        copy = {"KEY_STORAGE_PATH": str(elsewhere / "keys")}
        current = host.current(elsewhere / "keys")
        assert host.verify(copy) == verified_line(5, current["index"])
        copies.append((current, host.history(copy)))
        time.sleep(0.25)

    # the daemon ran on through every copy, and rotates still
    _, status = host.status(fast)
    assert (status["running"], status["pid"]) == (True, pid)
    assert status["integrity"] == "ok", status
    host.wait_for_index(copies[-1][0]["index"] + 2)
    host.stop()
    assert host.verify() == verified_line(5, host.current()["index"])

    # each copy's keys are keys the live store made, as it made them
    made = host.rotations()
    assert [index for index, _ in made] == list(range(len(made)))
    for current, history in copies:
        assert fingerprint_of(current) in made
        assert set(history) <= set(made)
        assert history[0] == fingerprint_of(current)
    assert len({current["index"] for current, _ in copies}) > 1


def test_bring_back_a_backup_after_a_lost_disk(host: Host) -> None:
    assert_documented(BRING_BACK)
    host.start(FAST)
    host.wait_for_index(2)
    assert host.shell(BACKUP, FAST).code == 0
    tarball = host.path("/backup/torro-keys.tar.gz")
    backup = tar_current(tarball)
    copied = backup["index"]
    host.wait_for_index(copied + 2)
    host.stop()
    lost = dict(host.rotations())

    # the disk is lost; the copy comes back
    shutil.rmtree(host.keys)
    brought = host.shell_unchecked(BRING_BACK)
    assert (brought.code, brought.stderr) == (0, "")
    assert host.verify() == verified_line(copied + 1, copied)

    # the daemon serves the copy's current key ...
    pid = host.start()
    code, status = host.status()
    assert code == 0, status
    assert (status["pid"], status["current_index"], status["fingerprint"]) \
        == (pid, copied, backup["fingerprint"])
    host.stop()

    # ... then rotates on from it; the lost keys' indexes go to new keys,
    # as the README warns
    host.start(FAST)
    host.wait_for_index(copied + 2)
    host.stop()
    assert host.verify() == verified_line(
        host.current()["index"] + 1, host.current()["index"]
    )
    record = json.loads(
        (host.keys / f"history/key-{copied + 1}.json").read_text()
    )
    assert record["derivedFrom"] == copied
    assert record["fingerprint"] != lost[copied + 1]


# -- Recover: a damaged store --------------------------------------------

def delete_current(host: Host) -> str:
    (host.keys / "current.json").unlink()
    return f"{host.keys}/current.json: missing or unreadable; run torro " \
        "keys restore"


def garble_history(host: Host) -> str:
    (host.keys / "history.json").write_text('{"keys": [{"index": 1')
    return f"{host.keys}/history.json: not valid JSON; run torro keys restore"


def delete_history(host: Host) -> str:
    (host.keys / "history.json").unlink()
    return f"{host.keys}/history.json: missing; run torro keys restore"


@pytest.mark.parametrize(
    ("damage", "repair"),
    [
        (delete_current, "torro keys restore"),
        (delete_current, COPY_CURRENT),
        (garble_history, "torro keys restore"),
        (delete_history, "torro keys restore"),
    ],
    ids=["current.json deleted, restore", "current.json deleted, cp",
         "history.json damaged, restore", "history.json deleted, restore"],
)
def test_repair_a_damaged_store(
    host: Host, damage: Callable[[Host], str], repair: str
) -> None:
    for _ in range(3):
        assert host.shell("torro daemon rotate").code == 0
    history = host.history()
    assert [index for index, _ in history] == [2, 1, 0]
    current = host.current()

    problem = damage(host)
    failed = host.torro("keys", "verify")
    assert failed.code == 1
    assert failed.error_lines[0] == f"torro: error: {problem}"

    repaired = host.shell(repair)
    assert (repaired.code, repaired.stderr) == (0, "")
    if repair == "torro keys restore":
        assert repaired.stdout.endswith("restored: current key 2\n")
    assert host.verify() == verified_line(3, 2)
    assert host.history() == history
    assert host.current() == current

    pid = host.start()
    code, status = host.status()
    assert code == 0, status
    assert (status["pid"], status["current_index"], status["fingerprint"]) \
        == (pid, 2, current["fingerprint"])
    host.stop()


# -- Recover: a manual rotation --------------------------------------------

def test_manual_rotation_without_and_with_a_daemon(host: Host) -> None:
    # without a daemon: the first key of an empty store, then the next
    made = []
    for index in (0, 1):
        rotated = host.shell("torro daemon rotate")
        assert rotated.code == 0, rotated.stderr
        made.append(fingerprint_of(host.current()))
        assert rotated.stdout == (
            f"rotated to key {index} (fingerprint {made[-1][1]})\n"
        )
    assert host.current()["derivedFrom"] == 0
    assert host.verify() == verified_line(2, 1)

    # with one: the daemon serves the new key at its next wake-up
    client = host.start_with_api()
    with client:
        assert client.get("/api/daemon/status").json()["current_index"] == 1
        rotated = host.shell("torro daemon rotate")
        assert rotated.code == 0, rotated.stderr
        record = host.current()
        assert (record["index"], record["derivedFrom"]) == (2, 1)
        assert rotated.stdout == (
            f"rotated to key 2 (fingerprint {record['fingerprint']})\n"
        )
        wait_until(
            lambda: client.get("/api/daemon/status").json()["current_index"]
            == 2,
            what="the daemon to serve key 2",
        )
        code, status = host.status()
        assert code == 0, status
        assert (status["current_index"], status["fingerprint"]) == \
            fingerprint_of(record)
    host.stop()
    assert host.verify() == verified_line(3, 2)


# -- Recover: start over -------------------------------------------------

def test_reset_archives_beside_the_store_and_continues_the_indexes(
    host: Host,
) -> None:
    assert_documented("torro daemon reset [--yes] [--purge]")
    for _ in range(3):
        assert host.shell("torro daemon rotate").code == 0
    license_before = host.ok(
        "license", "issue", "--subject", "acme", "--expires", "30d"
    ).strip()
    old_history = host.history()
    archives = []

    # with the daemon running, by --yes
    client = host.start_with_api()
    with client:
        reset = host.torro("daemon", "reset", "--yes")
        assert reset.code == 0, reset.stderr
        match = ARCHIVED.fullmatch(reset.stdout)
        assert match, reset.stdout
        archives.append(Path(match.group(1)))
        assert int(match.group(2)) == 3
        wait_until(
            lambda: client.get("/api/daemon/status").json()["current_index"]
            == 3,
            what="the daemon to serve the new chain's key 3",
        )
        code, status = host.status()
        assert code == 0, status
    host.stop()
    new_chain = host.history()
    assert [index for index, _ in new_chain] == [3]
    assert host.current()["derivedFrom"] is None

    # without it, as the README's line says, answering its question
    reset = host.shell("torro daemon reset", stdin="y\n")
    assert reset.code == 0, reset.stderr
    assert reset.stdout.startswith(
        f"archive every key in {host.keys} and start a new chain? [y/N]: "
    )
    match = ARCHIVED.search(reset.stdout)
    assert match, reset.stdout
    archives.append(Path(match.group(1)))
    assert int(match.group(2)) == 4
    assert host.verify() == verified_line(1, 4)

    # each old store is whole, beside the live one, never reused
    assert archives[0] != archives[1]
    for archive, history in zip(archives, [old_history, new_chain],
                                strict=True):
        assert archive.parent == host.keys.parent
        assert re.fullmatch(r"keys\.archive-\d{8}T\d{6}Z(-\d+)?",
                            archive.name)
        copy = {"KEY_STORAGE_PATH": str(archive)}
        assert host.history(copy) == history
    failed = host.torro("license", "verify", license_before)
    assert failed.code == 1
    assert failed.error_lines == [
        "torro: error: license invalid (key_retired): key 2 is no longer "
        "retained"
    ]

    host.start()
    code, status = host.status()
    assert (code, status["current_index"]) == (0, 4)
    host.stop()


# -- Rotate the master key -----------------------------------------------

@openssl
@pytest.mark.parametrize("key_file", ["default", "environment", "replaced"])
def test_rotate_the_master_key_as_written(host: Host, key_file: str) -> None:
    """``default``: no master key setting, so <store>.master-key;
    ``environment``: KEY_DAEMON_MASTER_KEY_FILE, pointed at the new file
    as the rewrap says; ``replaced``: the same setting, the file replaced
    by the new one with the block's two ``mv``."""
    assert_documented("```sh\n" + "\n".join(MASTER_KEY_ROTATION) + "\n```")
    env: Changes = {}
    if key_file == "default":
        env["KEY_DAEMON_MASTER_KEY_FILE"] = None
    new_key = host.path("/etc/torro/master-key.new")

    # a running daemon, with licenses of older keys and of the current
    host.start(env)
    licenses = [
        host.ok("license", "issue", "--subject", "acme", "--expires",
                "30d", env=env).strip(),
        host.ok("license", "issue", "--subject", "acme", "--expires",
                "30d", "--offline", env=env).strip(),
    ]
    assert host.shell("torro daemon rotate", env).code == 0
    licenses.append(
        host.ok("license", "issue", "--subject", "acme", "--expires",
                "30d", "--feature", "pro", env=env).strip()
    )
    history = host.history(env)
    assert [index for index, _ in history] == [1, 0]
    old_key = host.path(
        "/var/lib/torro/keys.master-key" if key_file == "default"
        else "/etc/torro/master-key"
    ).read_text()

    stop, make_key, rewrap, keep_old, put_new, start = MASTER_KEY_ROTATION
    stopped = host.shell(stop, env)
    assert stopped.stdout.startswith("daemon stopped (pid ")
    assert host.shell(make_key, env).code == 0
    assert re.fullmatch(r"[0-9a-f]{64}\n", new_key.read_text())
    assert new_key.stat().st_mode & 0o077 == 0
    rewrapped = host.shell(rewrap, env)
    assert rewrapped.code == 0, rewrapped.stderr
    lines = rewrapped.stdout.splitlines()
    assert lines[0].startswith("rewrapped 2 keys (2 retained, 0 archived) ")

    if key_file == "default":
        default = host.path("/var/lib/torro/keys.master-key")
        assert default.read_text() == new_key.read_text()
        kept = list(default.parent.glob("keys.master-key.old-*"))
        assert len(kept) == 1 and kept[0].read_text() == old_key
        assert lines[1:] == [
            f"the default master key file {default} holds the new key; the "
            f"old key is kept in {kept[0]}: destroy it once no backup "
            "sealed under it is needed"
        ]
        old_env: Changes = {"KEY_DAEMON_MASTER_KEY_FILE": str(kept[0])}
    else:
        # one line says what to do; the next line of the block, run
        # before doing it, starts nothing and changes nothing
        assert len(lines) == 2, lines
        assert POINT_AT.fullmatch(lines[1] + "\n")
        assert Path(POINT_AT.fullmatch(lines[1] + "\n").group(1)) == new_key
        refused = host.shell(start, env)
        assert refused.code == 1
        assert len(refused.error_lines) == 1, refused.stderr
        assert "is not the one that sealed" in refused.stderr
        assert refused.stderr.endswith("; nothing was changed\n")
        old_env = {
            "KEY_DAEMON_MASTER_KEY_FILE": str(
                host.path("/etc/torro/master-key")
            )
        }
        if key_file == "environment":
            env["KEY_DAEMON_MASTER_KEY_FILE"] = str(new_key)
        else:
            assert host.shell(keep_old, env).code == 0
            assert host.shell(put_new, env).code == 0
            (old_copy,) = host.path("/etc/torro").glob("master-key.old-*")
            assert re.fullmatch(r"master-key\.old-\d{14}", old_copy.name)
            assert old_copy.read_text() == old_key
            old_env = {"KEY_DAEMON_MASTER_KEY_FILE": str(old_copy)}
    started = host.shell(start, env)
    assert started.code == 0, started.stderr

    code, status = host.status(env)
    assert code == 0, status
    assert (status["running"], status["current_index"]) == (True, 1)
    assert host.history(env) == history
    for token, kid in zip(licenses, [0, 0, 1], strict=True):
        verified = host.ok("license", "verify", token, env=env)
        assert verified.startswith(f"valid: subject acme, key {kid}")
    # the daemon rotates on under the new key
    assert host.shell("torro daemon rotate", env).code == 0
    code, status = host.status(env)
    assert (code, status["current_index"]) == (0, 2)
    assert host.shell("torro daemon stop", env).code == 0
    assert host.verify(env) == verified_line(3, 2)

    # the old key opens nothing any more
    refused = host.torro("keys", "verify", env={**env, **old_env})
    assert refused.code == 1
    assert "is not the one that sealed" in refused.stderr
