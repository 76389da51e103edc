"""Reliability campaign, "write failures": rotations that cannot write.

A real ``torro daemon run`` rotates every few hundred ms while its writes
are made to fail, in two ways:

* the file size limit (RLIMIT_FSIZE) of the running daemon is lowered
  with prlimit, to 0 (nothing can be written), to the size of a record
  (a record fits, history.json does not) or to the size of history.json
  (the next, longer history.json does not fit). The log files are files
  too: under a limit they have outgrown, the daemon says once on stderr
  that it cannot write them, and its log lines still reach stderr, which
  is a pipe here as under a service manager;
* the store lies on a small tmpfs (as root, where mounting one works)
  that a filler file fills, leaving 0, 1 or 2 pages free, so that the
  new record, history.json or current.json is the write that fails.
  The logs are elsewhere.

Each fault lands a random moment after a rotation, and must hold:

* rotation fails cleanly: while the fault lasts the store does not
  change, current.json stays the newest complete record,
  ``torro keys verify`` says ok, and no temporary or truncated file is
  left behind (a temporary file seen across two failed attempts is one
  left behind);
* ``torro daemon rotate`` under the same fault prints one line,
  ``torro: error: cannot write ...``, exits 1 and changes nothing;
* the daemon keeps running and retries every wake-up, without spinning
  (at most one attempt per sleep interval), and logs the failure once
  per cycle: an error line naming the file and the cause at the first
  failed attempt, then one a rotation interval ("still failing after N
  attempts"), each attempt in between at debug level; no traceback;
* once the fault is gone, the next rotation makes the next index (no
  index skipped or repeated, no key lost), and the log says rotation
  works again.

Only the soft limit is lowered: raising a hard limit again needs a
privilege that a container may withhold even from root. The two faults
this campaign found have tests of their own at the end of the module.

The short version runs in the default suite; the long one is a campaign
(``pytest -m campaign -s tests/test_write_failure_campaign.py``). The
seed is printed; set TORRO_WRITE_SEED to replay a run.
"""

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import leaks
import pytest
from fakes import FakeClock
from runner import COMMAND_TIMEOUT, Outcome

from torro import logs, rotation
from torro.errors import StoreError
from torro.rotation import KeyRotationDaemon, RotationPolicy
from torro.sealing import MasterKey, Sealer
from torro.store import KeyStore, files

if TYPE_CHECKING:
    import campaign
    from runner import Torro


# A wake-up every 20 ms, a key due every 200 ms: under a fault the
# daemon tries ten times a cycle, and says so at debug level (the level
# here, so that each attempt shows) and once a cycle as an error.
SLEEP_MS = 20
ROTATION_MS = 200
WRITE_SETTINGS = {
    "KEY_DAEMON_SLEEP_INTERVAL": str(SLEEP_MS),
    "KEY_DAEMON_ROTATION_INTERVAL": str(ROTATION_MS),
    "KEY_DAEMON_DERIVATION_ROUNDS": "1000",
    "KEY_DAEMON_MAX_HISTORY": "100000",
    "KEY_DAEMON_LOG_LEVEL": "debug",
    "KEY_DAEMON_API": "false",
}
DEFAULT_SEED = 20261204
# Failed attempts watched while a fault lasts, after the store settled;
# the watch also lasts until a second error line (the next cycle's).
ATTEMPTS_UNDER_FAULT = 3
# The CLI is run under the fault in the first trial, then in one in
# CLI_ONE_IN (two interpreter starts cost more than a trial).
CLI_ONE_IN = 4
TMPFS_SIZE = 2 * 1024 * 1024
PAGE = 4096
WAIT = 15.0

ROTATED = re.compile(r" rotated to key (\d+) ")
FAILED = re.compile(
    r" ERROR rotation (failed|still failing after \d+ attempts), next "
    r"cycle retries: (.*)$"
)
AGAIN = re.compile(
    r" DEBUG rotation failed again \(attempt \d+\), next cycle retries: "
)
WORKS_AGAIN = re.compile(
    r" INFO rotation works again after \d+ failed attempts, key (\d+) is "
    r"current$"
)
# The first start's, and a rotation that the fault caught after it had
# happened (documented: the next writer writes the backup again).
EXPECTED_WARNING = re.compile(
    r" WARN (created a new master key in |rotated, but could not back up "
    r"\S+: cannot write )"
)
TEMP_NAME = re.compile(r"\..+\.[0-9a-f]+\.tmp")
RECORD_NAME = re.compile(r"key-(\d+)\.json")


class Stderr:
    """The lines a daemon writes to its stderr pipe, read by a thread."""

    def __init__(self, daemon: subprocess.Popen[bytes]) -> None:
        assert daemon.stderr is not None
        self.lines: list[str] = []
        self._stream = daemon.stderr
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for raw in self._stream:
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def close(self) -> None:
        self._thread.join(timeout=10)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def rotated(self, since: int = 0) -> list[int]:
        return [
            int(match.group(1)) for line in self.lines[since:]
            if (match := ROTATED.search(line))
        ]

    def errors(self, since: int = 0) -> list[str]:
        """Return the error lines of failed rotations since ``since``."""
        return [line for line in self.lines[since:] if FAILED.search(line)]

    def attempts(self, since: int = 0) -> int:
        """Count the failed rotations since ``since``, logged either way.
        """
        return sum(
            1 for line in self.lines[since:]
            if FAILED.search(line) or AGAIN.search(line)
        )


@contextlib.contextmanager
def store_lock(root: Path) -> Iterator[None]:
    """Hold the store lock (the flock every writer takes), if there is
    one yet."""
    try:
        fd = os.open(root / ".lock", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@dataclasses.dataclass(frozen=True)
class Store:
    """Every file of a key store, by path relative to its root."""

    files: dict[str, bytes]

    @classmethod
    def read(cls, root: Path) -> "Store":
        """Read the store under its lock: a rotation the daemon retries
        meanwhile is seen before it starts or once it is undone, never
        half done (its new record written, history.json not yet)."""
        files = {}
        with store_lock(root):
            for path in root.rglob("*"):
                if path.is_file():
                    with contextlib.suppress(FileNotFoundError):
                        files[str(path.relative_to(root))] = \
                            path.read_bytes()
        return cls(files)

    @property
    def temps(self) -> set[str]:
        return {name for name in self.files
                if TEMP_NAME.fullmatch(Path(name).name)}

    def without_temps(self) -> dict[str, bytes]:
        return {name: data for name, data in self.files.items()
                if name not in self.temps}

    def records(self) -> dict[int, dict[str, Any]]:
        found = {}
        for name, data in self.files.items():
            match = RECORD_NAME.fullmatch(name.removeprefix("history/"))
            if name.startswith("history/") and match:
                found[int(match.group(1))] = json.loads(data)
        return found

    def current_index(self) -> int:
        return json.loads(self.files["current.json"])["index"]


def check_consistent(store: Store, where: str) -> int:
    """Assert a store no write has left half done; return its current.

    Every file parses whole (nothing truncated), history.json names every
    record from 0 and nothing more, current.json is the newest record,
    byte for byte, and fingerprints differ.
    """
    files = store.without_temps()
    for name, data in files.items():
        if name.endswith(".json"):
            try:
                json.loads(data)
            except ValueError:
                pytest.fail(f"{where}: {name} is truncated or damaged")
    history = json.loads(files["history.json"])
    indexes = [key["index"] for key in history["keys"]]
    top = indexes[-1]
    records = store.records()
    assert indexes == list(range(top + 1)), f"{where}: history {indexes}"
    assert sorted(records) == indexes, \
        f"{where}: records {sorted(records)}, history.json names {indexes}"
    assert history["current"] == top and history["nextIndex"] == top + 1, \
        where
    assert files["current.json"] == files[f"history/key-{top}.json"], \
        f"{where}: current.json is not key-{top}.json"
    fingerprints = {record["fingerprint"] for record in records.values()}
    assert len(fingerprints) == len(records), f"{where}: a key repeats"
    return top


class Fault(Protocol):
    """A way to make the daemon's writes fail, and to end it."""

    kind: str

    def apply(self) -> str:
        """Make writes fail; return what was done, for messages."""

    def keep_up(self) -> None:
        """Undo what a rotation in flight may have undone of the fault."""

    def preexec(self) -> None:
        """Put a CLI command under the fault (in the child)."""

    def remove(self) -> None:
        """Let writes succeed again."""


class FileSizeLimit:
    """Lower the file size limit of a running daemon, and lift it."""

    kind = "file size limit"

    def __init__(self, pid: int, keys: Path, rng: random.Random) -> None:
        self.pid = pid
        self.keys = keys
        self.rng = rng
        self.limit = 0
        self.hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)[1]

    def apply(self) -> str:
        choice = self.rng.choice(["zero", "record", "history"])
        if choice == "zero":
            self.limit = 0
        elif choice == "record":
            # a record fits, history.json does not
            self.limit = len((self.keys / "current.json").read_bytes()) + 64
        else:
            # history.json as it is fits, one entry more does not
            self.limit = (self.keys / "history.json").stat().st_size
        # the soft limit only: raising a hard limit needs a privilege
        # that a container may not grant, even to root
        resource.prlimit(
            self.pid, resource.RLIMIT_FSIZE, (self.limit, self.hard)
        )
        return f"RLIMIT_FSIZE {self.limit} ({choice})"

    def keep_up(self) -> None:
        """Nothing to do: the limit holds until lifted."""

    def preexec(self) -> None:
        """Put the same limit on a CLI command."""
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, self.hard))

    def remove(self) -> None:
        resource.prlimit(
            self.pid, resource.RLIMIT_FSIZE, (self.hard, self.hard)
        )


class FullDisk:
    """Fill the tmpfs the store lies on, leaving a few pages, and free it.
    """

    kind = "full tmpfs"

    def __init__(self, mount: Path, rng: random.Random) -> None:
        self.filler = mount / "filler"
        self.mount = mount
        self.rng = rng
        self.leave = 0

    def apply(self) -> str:
        self.leave = self.rng.choice([0, 1, 2])
        self.keep_up()
        return f"tmpfs full, {self.leave} pages left"

    def keep_up(self) -> None:
        """Fill again what the daemon freed (a rotation in flight)."""
        block = bytes(PAGE)
        with open(self.filler, "ab", buffering=0) as filler:
            while self._free() > self.leave * PAGE:
                try:
                    filler.write(block)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break

    def _free(self) -> int:
        stats = os.statvfs(self.mount)
        return stats.f_bavail * stats.f_frsize

    def preexec(self) -> None:
        """Nothing to do: the disk is full for every process."""

    def remove(self) -> None:
        self.filler.unlink()


@pytest.fixture
def tmpfs(torro: "Torro") -> Iterator[Path]:
    """A small tmpfs under the working directory, unmounted at teardown.

    Skipped where it cannot be mounted (not root, or no permission).
    """
    mount = torro.cwd / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700",
         "tmpfs", str(mount)],
        capture_output=True, text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        # the daemon first, or the mount is busy
        torro.kill_leftovers()
        subprocess.run(["umount", str(mount)], check=False)
        if os.path.ismount(mount):
            subprocess.run(["umount", "-l", str(mount)], check=False)


def run_under(
    torro: "Torro", fault: Fault, *args: str, env: dict[str, str]
) -> Outcome:
    """Run one torro command under ``fault``; record its outcome."""
    done = subprocess.run(
        torro.command(args, False),
        cwd=torro.cwd,
        env=torro.env(**env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        preexec_fn=fault.preexec,
    )
    outcome = Outcome(args, done.returncode, done.stdout, done.stderr)
    torro.outcomes.append(outcome)
    return outcome


def check_cli_under(
    torro: "Torro", fault: Fault, settings: dict[str, str], top: int,
    where: str,
) -> None:
    """Check ``daemon rotate`` and ``keys verify`` while ``fault`` lasts.

    The rotation prints one line and exits 1; verify says ok (it may
    catch the daemon's attempt with the new record written, not yet
    named: a rotation in flight).
    """
    rotated = run_under(torro, fault, "daemon", "rotate", env=settings)
    assert rotated.code == 1, f"{where}: {rotated}"
    assert rotated.stdout == "", where
    lines = rotated.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "torro: error: cannot write "
    ), f"{where}: {rotated.stderr}"
    verified = torro.run("keys", "verify", env=settings)
    assert verified.code == 0, f"{where}: {verified.stderr}"
    assert verified.stdout.startswith((
        f"ok: {top + 1} keys ", f"ok: {top + 2} keys ",
    )), f"{where}: {verified.stdout}"


def run_scenario(
    torro: "Torro",
    tally: "campaign.Tally",
    *,
    trials: int,
    keys: Path,
    settings: dict[str, str],
    make_fault: Callable[[int, random.Random], Fault],
    seed: int,
) -> None:
    """Start a daemon and put it through ``trials`` write failures."""
    rng = random.Random(seed)
    cwd = torro.cwd
    daemon = torro.popen(
        "daemon", "run", env=settings,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    stderr = Stderr(daemon)
    fault = make_fault(daemon.pid, rng)
    known: dict[int, str] = {}
    survived = 0
    began = time.monotonic()
    try:
        torro.wait_until(
            lambda: stderr.rotated(), timeout=WAIT,
            what="the daemon's first key",
        )
        for trial in range(trials):
            where = f"seed {seed}, trial {trial + 1}/{trials}"
            # a random moment after a rotation
            seen = len(stderr.lines)
            torro.wait_until(
                lambda seen=seen: stderr.rotated(seen), timeout=WAIT,
                what=f"a rotation ({where})",
            )
            time.sleep(rng.uniform(0, ROTATION_MS / 1000))
            before = len(stderr.lines)
            # the failures come after it, whenever the test sees them
            failing_since = time.monotonic()
            where += f", {fault.apply()}"
            torro.wait_until(
                lambda before=before: stderr.attempts(before),
                timeout=WAIT, what=f"a failed rotation ({where})",
            )
            # the rotation in flight may have ended either way; from the
            # next failure on, nothing may change
            fault.keep_up()
            settled = len(stderr.lines)
            torro.wait_until(
                lambda settled=settled: stderr.attempts(settled),
                timeout=WAIT, what=f"a failed rotation ({where})",
            )
            held = Store.read(keys)
            top = check_consistent(held, where)

            if trial == 0 or rng.randrange(CLI_ONE_IN) == 0:
                check_cli_under(torro, fault, settings, top, where)

            # the daemon retries each wake-up; each failed attempt leaves
            # the store as it was
            watched = len(stderr.lines)
            while stderr.attempts(watched) < ATTEMPTS_UNDER_FAULT \
                    or len(stderr.errors(before)) < 2:
                count = stderr.attempts(watched)
                torro.wait_until(
                    lambda count=count: stderr.attempts(watched) > count,
                    timeout=WAIT, what=f"a failed rotation ({where})",
                )
                now = Store.read(keys)
                assert now.without_temps() == held.without_temps(), \
                    f"{where}: the store changed under the fault"
                left = now.temps & held.temps
                assert not left, f"{where}: temporary files left: {left}"
                held = Store(held.files | now.files)
            assert daemon.poll() is None, f"{where}: the daemon exited"
            assert not stderr.rotated(settled), \
                f"{where}: rotated under the fault"

            # one error line a cycle, one attempt a wake-up at most
            failing = time.monotonic() - failing_since
            errors = stderr.errors(before)
            attempts = stderr.attempts(before)
            assert " ERROR rotation failed, next cycle retries: cannot " \
                "write " in errors[0], f"{where}: {errors[0]}"
            assert all(" still failing after " in line
                       for line in errors[1:]), f"{where}: {errors}"
            assert len(errors) <= failing * 1000 / ROTATION_MS + 1, \
                f"{where}: {len(errors)} error lines in {failing:.2f} s"
            assert len(errors) < attempts <= \
                failing * 1000 / SLEEP_MS + 1, \
                f"{where}: {attempts} attempts in {failing:.2f} s"

            # space comes back: the next rotation makes the next index
            fault.remove()
            lifted = len(stderr.lines)
            torro.wait_until(
                lambda: any(WORKS_AGAIN.search(line)
                            for line in stderr.lines[lifted:]),
                timeout=WAIT,
                what=f"a rotation once the fault is gone ({where})",
            )
            assert stderr.rotated(lifted)[0] == top + 1, \
                f"{where}: rotated to {stderr.rotated(lifted)}, not " \
                f"{top + 1}"
            for index, record in Store.read(keys).records().items():
                known.setdefault(index, record["checksum"])
            survived += 1

        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=WAIT) == 0, stderr.text[-2000:]
        stderr.close()
        where = f"seed {seed}, after the last trial"
        final = Store.read(keys)
        assert not final.temps, f"{where}: {final.temps}"
        top = check_consistent(final, where)
        assert final.files["backup/current.json"] == \
            final.files["current.json"], f"{where}: backup behind"
        rotations = stderr.rotated()
        assert rotations == list(range(rotations[0], top + 1)), \
            f"{where}: rotations logged {rotations}"
        for index, checksum in known.items():
            assert final.records()[index]["checksum"] == checksum, \
                f"{where}: key {index} lost or written again"
        assert "Traceback" not in stderr.text, where
        unexpected = [
            line for line in stderr.lines
            if (" ERROR " in line or " WARN " in line)
            and not FAILED.search(line) and not EXPECTED_WARNING.search(line)
        ]
        assert not unexpected, f"{where}: {unexpected}"
        # a log file the limit stops is reported once a fault, not a line
        log_failures = [line for line in stderr.lines
                        if line.startswith("torro: cannot write log ")]
        assert len(log_failures) <= len(logs.CHANNEL_FILES) * trials, \
            f"{where}: {log_failures}"
        verified = torro.run("keys", "verify", env=settings)
        assert verified.code == 0, f"{where}: {verified.stderr}"

        texts = [stderr.text]
        texts += [outcome.stdout + outcome.stderr
                  for outcome in torro.outcomes]
        leaks.sweep(tally, texts=texts, logs=cwd / "logs", store=keys,
                    master_key_file=keys.with_name("keys.master-key"))
        leaks.check_modes(keys, cwd / "logs")
    finally:
        final_records = Store.read(keys).records()
        lost = len(set(known) - set(final_records))
        print(f"{fault.kind} campaign (seed {seed}): {trials} faults, "
              f"{survived} survived, {lost} keys lost, "
              f"{time.monotonic() - began:.1f} s")
        tally.trials, tally.faults = trials, trials
        tally.survived, tally.lost = survived, lost


@pytest.mark.scenario("write failures: file size limit")
@pytest.mark.parametrize(
    "trials",
    [
        pytest.param(3, id="3-faults"),
        pytest.param(30, id="30-faults", marks=pytest.mark.campaign),
    ],
)
def test_file_size_limit_fails_rotations_cleanly(
    torro: "Torro", umask_zero: None, trials: int, tally: "campaign.Tally"
) -> None:
    seed = int(os.environ.get("TORRO_WRITE_SEED", DEFAULT_SEED + trials))
    keys = torro.cwd / "keys"
    run_scenario(
        torro, tally, trials=trials, keys=keys, settings=WRITE_SETTINGS,
        make_fault=lambda pid, rng: FileSizeLimit(pid, keys, rng),
        seed=seed,
    )


@pytest.mark.scenario("write failures: full tmpfs")
@pytest.mark.parametrize(
    "trials",
    [
        pytest.param(3, id="3-faults"),
        pytest.param(30, id="30-faults", marks=pytest.mark.campaign),
    ],
)
def test_full_disk_fails_rotations_cleanly(
    torro: "Torro", tmpfs: Path, umask_zero: None, trials: int,
    tally: "campaign.Tally",
) -> None:
    seed = int(os.environ.get("TORRO_WRITE_SEED", DEFAULT_SEED + trials))
    keys = tmpfs / "keys"
    settings = WRITE_SETTINGS | {"KEY_STORAGE_PATH": str(keys)}
    run_scenario(
        torro, tally, trials=trials, keys=keys, settings=settings,
        make_fault=lambda pid, rng: FullDisk(tmpfs, rng),
        seed=seed,
    )


def test_a_failed_rotation_never_shows_readers_a_zeroed_record(
    root: Path, master: MasterKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by this campaign: undoing a rotation whose history.json did
    not fit zeroed the new record at its own name before removing it, and
    ``torro keys verify`` run meanwhile said "key-N.json: not a key
    record: not valid JSON; run torro keys restore"."""
    store = KeyStore(root, Sealer(master))
    daemon = KeyRotationDaemon(
        store, RotationPolicy(rotation_interval_ms=1, derivation_rounds=1000)
    )
    for _ in range(2):
        daemon.rotate(force=True)
    before = Store.read(root)
    real_stage = files.stage_file
    real_fdatasync = os.fdatasync
    found: list[list[str]] = []

    def stage_file(path: Path, data: bytes, *, durable: bool = True) -> Path:
        if path.name == "history.json":
            raise StoreError(f"cannot write {path}: No space left on device")
        return real_stage(path, data, durable=durable)

    def fdatasync(fd: int) -> None:
        # the zeros are on disk: what does a reader make of the store?
        real_fdatasync(fd)
        reader = KeyStore(root, Sealer(master))
        found.append([str(problem) for problem in reader.verify()])

    monkeypatch.setattr(files, "stage_file", stage_file)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    with pytest.raises(StoreError):
        daemon.rotate(force=True)
    monkeypatch.undo()

    assert found == [[]]
    after = Store.read(root)
    assert not after.temps
    assert after.without_temps() == before.without_temps()
    assert daemon.rotate(force=True).record.index == 2


def test_a_record_over_a_lowered_file_size_limit_is_still_undone(
    root: Path, master: MasterKey, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Found by this campaign: a limit lowered while a rotation was in
    flight made overwriting its record with zeros fail with EFBIG, so the
    undo stopped there ("could not undo the failed rotation") and left
    the record, which the next writer then made current although the
    rotation had said "nothing was changed"."""
    store = KeyStore(root, Sealer(master))
    daemon = KeyRotationDaemon(
        store, RotationPolicy(rotation_interval_ms=1, derivation_rounds=1000)
    )
    for _ in range(2):
        daemon.rotate(force=True)
    before = Store.read(root)
    real_stage = files.stage_file

    def stage_file(path: Path, data: bytes, *, durable: bool = True) -> Path:
        if path.name == "history.json":
            raise StoreError(f"cannot write {path}: File too large")
        return real_stage(path, data, durable=durable)

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))

    monkeypatch.setattr(files, "stage_file", stage_file)
    monkeypatch.setattr(os, "pwrite", pwrite)
    with pytest.raises(StoreError):
        daemon.rotate(force=True)
    monkeypatch.undo()

    assert "could not undo" not in caplog.text
    after = Store.read(root)
    assert not after.temps
    assert after.without_temps() == before.without_temps()
    assert daemon.rotate(force=True).record.index == 2


def test_a_lasting_write_failure_does_not_flood_the_log_every_wake_up(
    root: Path, master: MasterKey, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Found by this campaign: on a full disk the daemon logged the same
    error at every wake-up, some 50 lines a second with a 20 ms sleep
    interval. Now: an error at the first attempt and once a rotation
    interval, the attempts in between at debug level, and a line when
    rotation works again."""
    clock = FakeClock()
    store = KeyStore(root, Sealer(master), clock=clock)
    daemon = KeyRotationDaemon(
        store,
        RotationPolicy(rotation_interval_ms=60_000, derivation_rounds=1000),
        clock=clock,
    )
    daemon.rotate(force=True)
    clock.now += 60_000
    moment = [1000.0]
    monkeypatch.setattr(rotation.time, "monotonic", lambda: moment[0])
    real_stage = files.stage_file

    def stage_file(path: Path, data: bytes, *, durable: bool = True) -> Path:
        if path.name == "history.json":
            raise StoreError(f"cannot write {path}: No space left on device")
        return real_stage(path, data, durable=durable)

    monkeypatch.setattr(files, "stage_file", stage_file)
    with caplog.at_level(logging.DEBUG, logs.SYSTEM):
        for _ in range(5):
            assert daemon.tick() is None
            moment[0] += 10.0
        moment[0] += 60.0
        assert daemon.tick() is None
        monkeypatch.setattr(files, "stage_file", real_stage)
        assert daemon.tick() is not None

    lines = [(record.levelname, record.getMessage().split(":")[0])
             for record in caplog.records if record.name == logs.SYSTEM]
    assert lines == [
        ("ERROR", "rotation failed, next cycle retries"),
        *[("DEBUG", f"rotation failed again (attempt {attempt}), next "
                    "cycle retries") for attempt in range(2, 6)],
        ("ERROR", "rotation still failing after 6 attempts, next cycle "
                  "retries"),
        ("INFO", "rotation works again after 6 failed attempts, key 1 is "
                 "current"),
    ]
    assert daemon.stats.failed_rotations == 6
