"""Reliability campaign, "corruption and tampering": damage each file.

A real store is built with the CLI (``torro daemon rotate`` six times,
four keys retained, so two were pruned), with a copy of the whole store
taken after each rotation. Each case copies the finished store into a
directory of its own and does one kind of damage to one file:

* files: ``current.json``, ``history.json``, ``history/key-N.json`` (a
  middle record, the current key's record, the oldest retained record),
  ``backup/current.json``, ``backup/history.json`` and the master key
  file;
* faults: truncate it, flip a byte (one character turned into another of
  the same kind, so that the file still parses: in the sealed key, the
  checksum, the index, the timestamp and the other fields), delete it,
  swap it with another file of the same kind (another record of this
  store, or the same file of a twin store sealed under the same master
  key, or another master key), and replay an older copy taken before
  later rotations. A record never changes once written, so its "older
  copy" is a pruned record put back; the master key never changes, so it
  has no replay case.

Then, as real CLI processes, as an operator would: ``torro keys
verify``, ``torro keys show N --reveal --json`` (N the damaged record,
or the current key), ``torro license issue`` wherever a key is shown, a
``torro daemon run`` with ``torro daemon status --json`` while it runs,
and ``torro daemon rotate``. Each must either succeed with the
right keys or end in one clear line: exit 1 or 2 (never 70, never a
traceback) naming the damaged file (or the master key) and saying what
to do. Whatever key is shown, whatever signs a license, whatever a
rotation derives from, must be byte for byte the original key of that
index; a daemon or status on a damaged store must say so.
``torro keys verify`` must name the damaged file first. The documented
recoveries are then run (``torro keys restore``, or the right master
key put back) and the store must verify, keep every key that still had
an intact copy somewhere, report lost exactly the keys whose only copy
was destroyed, and rotate on without reusing an index.

Everything runs under umask 000; the modes of the store and the logs
are checked after each case, and every output, response and log is
swept for the keys and the master key (outputs of ``--reveal``, asked
for, excepted).

The plain suite runs one case per kind of file (chosen by a seed); the
campaign runs the whole matrix (``pytest -m campaign -s
tests/store/test_tamper_campaign.py``), two cases at a time. Set
TORRO_TAMPER_SEED to replay a sample, or TORRO_TAMPER_ONLY to a part of
the cases' names (``history.json: swap``) to run only those.

The faults the campaign found have tests of their own at the end.
"""

import concurrent.futures
import dataclasses
import json
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import leaks
import pytest
from fakes import FakeClock
from runner import Outcome, Torro

from torro import licenses
from torro.errors import MasterKeyError
from torro.rotation import KeyRotationDaemon, RotationPolicy
from torro.sealing import MasterKey, Sealer, read_master_key_file
from torro.store import KeyStore
from torro.store.keystore import Restored

if TYPE_CHECKING:
    import campaign


ROTATIONS = 6
MAX_HISTORY = 4
CURRENT = ROTATIONS - 1
RETAINED = list(range(ROTATIONS - MAX_HISTORY, ROTATIONS))
OLDEST = RETAINED[0]
MIDDLE = OLDEST + 1
DEFAULT_SEED = 20261204
WORKERS = 2
START_TIMEOUT = 15.0
# Settings of every command of a case: the store's retention, and a
# rotation interval long enough that a daemon never rotates on its own
# while a case looks at it.
CASE_SETTINGS = {
    "KEY_DAEMON_MAX_HISTORY": str(MAX_HISTORY),
    "KEY_DAEMON_ROTATION_INTERVAL": "3600000",
    "KEY_DAEMON_SLEEP_INTERVAL": "1000",
}
STARTED = re.compile(r" started: pid \d+, store \S+, current key (\w+),")
# What a character may be turned into: another of its own kind, so that
# a flipped file still parses and the damage reaches the deeper checks.
ALPHABETS = (
    "0123456789",
    "0123456789abcdef",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
)
MASTER_KEY = "master key"
# An error says what to do: run a command, set a variable, or wait for
# the repair it names.
ADVICE = ("torro ", "KEY_DAEMON_", "writes it again")


@dataclasses.dataclass
class Base:
    """The store every case starts from, and what it held.

    :param cwd: where it was built; ``keys`` and ``keys.master-key``.
    :param snapshots: copies of the store after each rotation, by the
        number of rotations done.
    :param keys: every key made, pruned ones included, as hex by index.
    :param checksums: every record's checksum, by index.
    :param twin: a store with as many rotations under the same master
        key (swapped and replayed files come from it).
    :param foreign_master: a master key file of another store.
    """

    cwd: Path
    snapshots: dict[int, Path]
    keys: dict[int, str]
    checksums: dict[int, str]
    twin: Path
    foreign_master: Path

    @property
    def store(self) -> Path:
        return self.cwd / "keys"

    @property
    def master_file(self) -> Path:
        return self.cwd / "keys.master-key"


@dataclasses.dataclass(frozen=True)
class Case:
    """One kind of damage to one file.

    :param target: the damaged file, relative to the store, or
        :data:`MASTER_KEY`.
    :param fault: truncate, flip, delete, swap or replay.
    :param detail: where or with what, in a few words.
    :param damage: does the damage to a case's working directory.
    :param destroys: the keys whose only copy the damage destroys: a
        restore must report exactly these lost.
    :param files: how many files the damage touches.
    """

    target: str
    fault: str
    detail: str
    damage: Callable[[Path, Base], None]
    destroys: frozenset[int] = frozenset()
    files: int = 1

    @property
    def kind(self) -> str:
        return re.sub(r"key-\d+", "key-N", self.target)

    @property
    def name(self) -> str:
        return f"{self.target}: {self.fault} ({self.detail})"

    @property
    def names(self) -> tuple[str, ...]:
        """The words an error about the damaged file must hold."""
        if self.target == MASTER_KEY:
            return (MASTER_KEY,)
        return (self.target,)


# -- doing the damage ------------------------------------------------------

def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` as the store would: mode 0600."""
    path.write_bytes(data)
    os.chmod(path, 0o600)


def truncate(target: str, keep: float) -> Callable[[Path, Base], None]:
    def damage(cwd: Path, base: Base) -> None:
        path = target_path(cwd, target)
        data = path.read_bytes()
        with open(path, "r+b") as file:
            file.truncate(int(len(data) * keep))
    return damage


def field_offset(text: str, field: str, occurrence: int, offset: int) -> int:
    """Return the position of a character in a JSON field's value.

    :param offset: from the first character of the value (after the
        opening quote of a string; past ``torro:v1:`` of a sealed key);
        negative counts from the value's end.
    """
    matches = list(re.finditer(rf'"{field}":\s*"?', text))
    start = matches[occurrence].end()
    if text.startswith("torro:v1:", start):
        start += len("torro:v1:")
    end = start
    while end < len(text) and text[end] not in '",}\n':
        end += 1
    return start + offset if offset >= 0 else end + offset


def turned(character: str) -> str:
    """Return another character of the same kind (digit, hex, base64)."""
    for alphabet in ALPHABETS:
        if character in alphabet:
            position = alphabet.index(character)
            return alphabet[(position + 1) % len(alphabet)]
    return chr(ord(character) ^ 0x01)


def flip(
    target: str, field: str, offset: int = 0, occurrence: int = 0
) -> Callable[[Path, Base], None]:
    def damage(cwd: Path, base: Base) -> None:
        path = target_path(cwd, target)
        text = path.read_bytes().decode("ascii")
        if field == "byte":
            position = offset
        else:
            position = field_offset(text, field, occurrence, offset)
        data = bytearray(text.encode("ascii"))
        data[position] = ord(turned(text[position]))
        write_private(path, bytes(data))
    return damage


def delete(target: str) -> Callable[[Path, Base], None]:
    def damage(cwd: Path, base: Base) -> None:
        target_path(cwd, target).unlink()
    return damage


def copy_from(
    target: str, source: Callable[[Base], Path]
) -> Callable[[Path, Base], None]:
    """Put another file's bytes in place of ``target``."""
    def damage(cwd: Path, base: Base) -> None:
        path = target_path(cwd, target)
        data = source(base).read_bytes()
        if path.exists():
            os.chmod(path, 0o600)
        write_private(path, data)
        if target == MASTER_KEY:
            os.chmod(path, 0o400)
    return damage


def exchange(first: str, second: str) -> Callable[[Path, Base], None]:
    """Swap the contents of two files of the store."""
    def damage(cwd: Path, base: Base) -> None:
        one, other = cwd / "keys" / first, cwd / "keys" / second
        data = one.read_bytes()
        write_private(one, other.read_bytes())
        write_private(other, data)
    return damage


def target_path(cwd: Path, target: str) -> Path:
    if target == MASTER_KEY:
        path = cwd / "keys.master-key"
        os.chmod(path, 0o600)
        return path
    return cwd / "keys" / target


def master_key_damage(
    damage: Callable[[Path, Base], None],
) -> Callable[[Path, Base], None]:
    """Damage the master key file and leave it 0400, as it was."""
    def wrapped(cwd: Path, base: Base) -> None:
        damage(cwd, base)
        path = cwd / "keys.master-key"
        if path.exists():
            os.chmod(path, 0o400)
    return wrapped


# -- the matrix ------------------------------------------------------------

# Where a record's byte is flipped: the field, and the position in its
# value (negative from its end).
RECORD_FLIPS = [
    ("key", 20), ("checksum", 10), ("index", 0),
    ("timestamp", -1), ("masterKeyId", 0), ("previousChecksum", 20),
]


def record_cases(target: str, index: int) -> list[Case]:
    """Truncate, flip and delete one record file (current.json or a
    key-N.json, whose index is ``index``)."""
    is_spare = target == "current.json" or index == CURRENT
    destroys = frozenset() if is_spare else frozenset({index})
    cases = [
        Case(target, "truncate", "half", truncate(target, 0.5), destroys),
        Case(target, "delete", "gone", delete(target), destroys),
    ]
    cases += [
        Case(target, "flip", f"{field}[{offset}]",
             flip(target, field, offset), destroys)
        for field, offset in RECORD_FLIPS
    ]
    return cases


def snapshot_file(rotations: int, name: str) -> Callable[[Base], Path]:
    return lambda base: base.snapshots[rotations] / name


def twin_file(name: str) -> Callable[[Base], Path]:
    return lambda base: base.twin / name


def all_cases() -> list[Case]:
    """Every case of the campaign, in a fixed order."""
    cases: list[Case] = []
    middle = f"history/key-{MIDDLE}.json"
    newest = f"history/key-{CURRENT}.json"
    oldest = f"history/key-{OLDEST}.json"
    pruned = f"history/key-{OLDEST - 1}.json"

    # current.json: a spare copy of the current record
    cases += record_cases("current.json", CURRENT)
    cases += [
        Case("current.json", "swap", f"with key-{CURRENT - 1}.json",
             copy_from("current.json", lambda base: base.store
                       / f"history/key-{CURRENT - 1}.json")),
        Case("current.json", "swap", f"with key-{OLDEST}.json",
             copy_from("current.json", lambda base: base.store / oldest)),
        Case("current.json", "swap", "with the twin store's",
             copy_from("current.json", twin_file("current.json"))),
        Case("current.json", "replay", "1 rotation old",
             copy_from("current.json",
                       snapshot_file(ROTATIONS - 1, "current.json"))),
        Case("current.json", "replay", "3 rotations old",
             copy_from("current.json",
                       snapshot_file(ROTATIONS - 3, "current.json"))),
    ]

    # history.json
    history = "history.json"
    cases += [
        Case(history, "truncate", "empty", truncate(history, 0)),
        Case(history, "delete", "gone", delete(history)),
        Case(history, "flip", "checksum[5]", flip(history, "checksum", 5)),
        Case(history, "flip", "current", flip(history, "current")),
        Case(history, "flip", "a key's checksum",
             flip(history, "checksum", 7, occurrence=2)),
        Case(history, "flip", "masterKeyId",
             flip(history, "masterKeyId", 2, occurrence=-1)),
        Case(history, "swap", "with the twin store's",
             copy_from(history, twin_file(history))),
        Case(history, "replay", "1 rotation old, a key pruned since",
             copy_from(history, snapshot_file(ROTATIONS - 1, history))),
        Case(history, "replay", "2 rotations old",
             copy_from(history, snapshot_file(ROTATIONS - 2, history))),
    ]

    # history/key-N.json: a middle record, the newest, the oldest
    cases += record_cases(middle, MIDDLE)
    cases += [
        Case(middle, "swap", f"with key-{MIDDLE + 1}.json",
             exchange(middle, f"history/key-{MIDDLE + 1}.json"),
             files=2),
        Case(middle, "swap", "with the twin store's",
             copy_from(middle, twin_file(middle)), frozenset({MIDDLE})),
        Case(pruned, "replay", "a pruned record put back",
             copy_from(pruned, snapshot_file(OLDEST, pruned))),
    ]
    cases += [
        Case(newest, "delete", "gone", delete(newest)),
        Case(newest, "flip", "checksum[10]", flip(newest, "checksum", 10)),
        Case(newest, "swap", "with the twin store's",
             copy_from(newest, twin_file(newest))),
        Case(oldest, "delete", "gone", delete(oldest),
             frozenset({OLDEST})),
        Case(oldest, "flip", "previousChecksum[20]",
             flip(oldest, "previousChecksum", 20), frozenset({OLDEST})),
    ]

    # the backup
    for name in ("current.json", "history.json"):
        target = f"backup/{name}"
        cases += [
            Case(target, "truncate", "half", truncate(target, 0.5)),
            Case(target, "delete", "gone", delete(target)),
            Case(target, "flip", "checksum[10]",
                 flip(target, "checksum", 10)),
            Case(target, "swap", "with the twin store's",
                 copy_from(target, twin_file(name))),
            Case(target, "replay", "2 rotations old",
                 copy_from(target, snapshot_file(ROTATIONS - 2, name))),
        ]
    cases.append(Case(
        "backup/current.json", "swap", f"with key-{MIDDLE}.json",
        copy_from("backup/current.json",
                  lambda base: base.store / middle),
    ))

    # the master key file
    cases += [
        Case(MASTER_KEY, "truncate", "half",
             master_key_damage(truncate(MASTER_KEY, 0.5))),
        Case(MASTER_KEY, "flip", "a hex digit (another valid key)",
             master_key_damage(flip(MASTER_KEY, "byte", 17))),
        Case(MASTER_KEY, "flip", "the newline",
             master_key_damage(flip(MASTER_KEY, "byte", 64))),
        Case(MASTER_KEY, "delete", "gone",
             master_key_damage(delete(MASTER_KEY))),
        Case(MASTER_KEY, "swap", "another store's master key",
             master_key_damage(copy_from(
                 MASTER_KEY, lambda base: base.foreign_master))),
    ]
    return cases


def sample(cases: list[Case], rng: random.Random) -> list[Case]:
    """Return one case per kind of file, in the matrix's order."""
    kinds: dict[str, list[Case]] = {}
    for case in cases:
        kinds.setdefault(case.kind, []).append(case)
    chosen = {id(rng.choice(group)) for group in kinds.values()}
    return [case for case in cases if id(case) in chosen]


# -- building the store ----------------------------------------------------

def build_base(torro: Torro, tmp_path: Path) -> Base:
    """Rotate a real store six times; keep a copy after each rotation."""
    snapshots = {}
    for rotations in range(1, ROTATIONS + 1):
        rotated = torro.run("daemon", "rotate", env=CASE_SETTINGS)
        assert rotated.code == 0, rotated.stderr
        snapshot = tmp_path / "snapshots" / str(rotations)
        shutil.copytree(torro.cwd / "keys", snapshot)
        snapshots[rotations] = snapshot
    master = read_master_key_file(torro.cwd / "keys.master-key")

    # every key, as the store held it when it was retained
    keys: dict[int, str] = {}
    checksums: dict[int, str] = {}
    for snapshot in snapshots.values():
        store = KeyStore(snapshot, Sealer(master), max_history=MAX_HISTORY,
                         read_only=True)
        store.load()
        for index, record in store.records.items():
            hexed = store.material(index).reveal_hex()
            assert keys.setdefault(index, hexed) == hexed
            checksums[index] = record.checksum

    # a twin store under the same master key, as an attacker with write
    # access could make from the daemon's own code
    twin = tmp_path / "twin"
    store = KeyStore(twin, Sealer(master), max_history=MAX_HISTORY)
    daemon = KeyRotationDaemon(store, RotationPolicy(
        rotation_interval_ms=1000, derivation_rounds=1000,
    ))
    for _ in range(ROTATIONS):
        daemon.rotate(force=True)
    foreign = tmp_path / "foreign.master-key"
    foreign.write_text(os.urandom(32).hex() + "\n")
    return Base(torro.cwd, snapshots, keys, checksums, twin, foreign)


# -- one case --------------------------------------------------------------

@dataclasses.dataclass
class Result:
    """What one case did and what went wrong in it."""

    case: Case
    violations: list[str] = dataclasses.field(default_factory=list)
    texts: list[str] = dataclasses.field(default_factory=list)
    lost: int = 0
    summary: dict[str, str] = dataclasses.field(default_factory=dict)
    cwd: Path | None = None


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*")) if path.is_file()
    }


def log_text(cwd: Path, name: str) -> str:
    try:
        return (cwd / "logs" / name).read_text()
    except FileNotFoundError:
        return ""


class CaseRun:
    """Damage a copy of the store and check what every command does."""

    def __init__(self, case: Case, base: Base, cwd: Path,
                 environ: dict[str, str], ring_lock: threading.Lock) -> None:
        self.case = case
        self.base = base
        self.cwd = cwd
        self.torro = Torro(cwd, environ)
        self.result = Result(case, cwd=cwd)
        self.ring_lock = ring_lock

    def fail(self, what: str) -> None:
        self.result.violations.append(what)

    def run(self, *args: str) -> Outcome:
        outcome = self.torro.run(*args, env=CASE_SETTINGS)
        if "--reveal" not in args:
            self.result.texts.append(outcome.stdout + outcome.stderr)
        return outcome

    # -- judging outcomes

    def names_damage(self, text: str) -> bool:
        return any(name in text for name in self.case.names)

    def clean_error(self, outcome: Outcome, what: str) -> str | None:
        """Check a failed command's error; return its message."""
        if "Traceback" in outcome.stdout + outcome.stderr:
            self.fail(f"{what}: a traceback")
        if outcome.code not in (1, 2):
            self.fail(f"{what}: exit {outcome.code}: {outcome.stderr!r}")
        lines = outcome.stderr.splitlines()
        if len(lines) != 1 or not lines[0].startswith("torro: error: "):
            self.fail(f"{what}: not one error line: {outcome.stderr!r}")
            return None
        message = lines[0]
        if not self.names_damage(message):
            self.fail(f"{what}: does not name {self.case.names}: {message}")
        if not any(advice in message for advice in ADVICE):
            self.fail(f"{what}: says not what to do: {message}")
        return message

    def check_revealed(self, outcome: Outcome, index: int) -> None:
        what = f"keys show {index} --reveal"
        if outcome.code != 0:
            self.clean_error(outcome, what)
            self.result.summary["show"] = "error"
            return
        row = json.loads(outcome.stdout)
        if row["index"] != index or row["key"] != self.base.keys[index]:
            self.fail(f"{what}: served a wrong key for index {index}")
        self.result.summary["show"] = "ok"

    def check_license(self, outcome: Outcome) -> None:
        what = "license issue"
        if outcome.code != 0:
            self.clean_error(outcome, what)
            self.result.summary["license"] = "error"
            return
        # a license that verifies against the original keys was signed
        # with the original current key
        with self.ring_lock:
            store = KeyStore(
                self.base.store,
                Sealer(read_master_key_file(self.base.master_file)),
                max_history=MAX_HISTORY, read_only=True,
            )
            store.load()
            try:
                found = licenses.verify_license(
                    outcome.stdout.strip(), licenses.StoreKeyRing(store)
                )
            except licenses.LicenseError as exc:
                self.fail(f"{what}: signed with a wrong key ({exc.reason})")
            else:
                if found.kid != CURRENT:
                    self.fail(f"{what}: signed with key {found.kid}")
        self.result.summary["license"] = "ok"

    # -- the case

    def execute(self) -> Result:
        try:
            self._execute()
        except Exception as exc:
            # reported with the case, so that one does not hide the others
            self.fail(f"the check itself failed: {exc!r}")
        finally:
            self.torro.kill_leftovers()
        return self.result

    def _execute(self) -> None:
        case, base, cwd = self.case, self.base, self.cwd
        shutil.copytree(base.store, cwd / "keys")
        shutil.copy2(base.master_file, cwd / "keys.master-key")
        case.damage(cwd, base)
        before = tree_bytes(cwd / "keys")

        verified = self.run("keys", "verify")
        if verified.code == 0:
            self.result.summary["verify"] = "ok"
        else:
            message = self.clean_error(verified, "keys verify") or ""
            self.result.summary["verify"] = message
        index = CURRENT
        record = re.fullmatch(r"history/key-(\d+)\.json", case.target)
        if record and int(record.group(1)) in RETAINED:
            index = int(record.group(1))
        self.check_revealed(
            self.run("keys", "show", str(index), "--reveal", "--json"),
            index,
        )
        if self.result.summary["show"] == "ok":
            # it loads and checks the store as keys show does: signing is
            # worth a process only where a key is served
            self.check_license(self.run(
                "license", "issue", "--subject", "tamper", "--expires", "1d",
            ))
        self.check_daemon()
        if case.target == MASTER_KEY and tree_bytes(cwd / "keys") != before:
            self.fail("the store changed under a wrong master key")
        self.check_rotate()
        self.recover()
        self.check_recovered()

    def check_daemon(self) -> None:
        stderr_path = self.cwd / "daemon.stderr"
        with open(stderr_path, "wb") as stderr:
            daemon = self.torro.popen(
                "daemon", "run", env=CASE_SETTINGS,
                stdout=subprocess.DEVNULL, stderr=stderr,
            )
        deadline = time.monotonic() + START_TIMEOUT
        started = None
        while daemon.poll() is None and time.monotonic() < deadline:
            started = STARTED.search(log_text(self.cwd, "system.log"))
            if started:
                break
            time.sleep(0.02)
        status = None
        if started:
            status = self.run("daemon", "status", "--json")
            daemon.send_signal(signal.SIGTERM)
        try:
            code = daemon.wait(timeout=10)
        except subprocess.TimeoutExpired:
            daemon.kill()
            code = daemon.wait()
            self.fail("the daemon did not stop on SIGTERM")
        stderr_text = stderr_path.read_text()
        self.result.texts.append(stderr_text)
        if "Traceback" in stderr_text:
            self.fail("daemon run: a traceback")
        problem = self.store_problem()
        if started is None:
            self.result.summary["daemon"] = "refused"
            last = stderr_text.splitlines()[-1:] or [""]
            if code not in (1, 2) or not last[0].startswith("torro: error"):
                self.fail(f"daemon run: exit {code}, {last[0]!r}")
            elif not self.names_damage(last[0]):
                self.fail(f"daemon run: does not name "
                          f"{self.case.names}: {last[0]}")
            status = self.run("daemon", "status", "--json")
            self.check_status(status, running=False, problem=problem)
            return
        self.result.summary["daemon"] = "started"
        if code != 0:
            self.fail(f"daemon run: exit {code} on SIGTERM")
        if problem is None and started.group(1) != str(CURRENT):
            self.fail(f"daemon started on key {started.group(1)}")
        if problem is not None:
            # it serves nothing (the API refuses while the store has a
            # problem) and must say why
            security = log_text(self.cwd, "security.log")
            failed = [line for line in security.splitlines()
                      if "integrity check failed" in line]
            if not failed or not self.names_damage(failed[0]):
                self.fail(f"daemon on a damaged store logged {failed}")
        assert status is not None
        self.check_status(status, running=True, problem=problem)

    def check_status(self, status: Outcome, running: bool,
                     problem: str | None) -> None:
        what = "daemon status"
        report = json.loads(status.stdout)
        self.result.summary["status"] = \
            f"{status.code} {report['integrity']}"
        if running and status.code == 0:
            if problem is not None:
                self.fail(f"{what}: healthy on a damaged store ({problem})")
            if report["current_index"] != CURRENT:
                self.fail(f"{what}: current {report['current_index']}")
            return
        if status.code not in (1, 3) or (running and status.code != 1):
            self.fail(f"{what}: exit {status.code}")
        if report["integrity"] == "ok" and problem is not None:
            self.fail(f"{what}: integrity ok on a damaged store")
        if report["integrity"] not in ("ok", "empty") and (
            report["problem"] is None
            or not self.names_damage(report["problem"])
        ):
            self.fail(f"{what}: problem {report['problem']!r}")

    def check_rotate(self) -> None:
        rotated = self.run("daemon", "rotate")
        if rotated.code != 0:
            self.clean_error(rotated, "daemon rotate")
            self.result.summary["rotate"] = "error"
            return
        self.result.summary["rotate"] = "ok"
        # a rotation derives from the current key: it must be the original
        store = self.open_store(self.cwd / "keys", self.base.master_file)
        store.load()
        new = store.current
        if new is None or new.index != CURRENT + 1:
            self.fail(f"rotate made {new and new.index}")
            return
        if new.previous_checksum != self.base.checksums[CURRENT] \
                or new.derived_from != CURRENT:
            self.fail("rotate did not derive from the original current key")

    def open_store(self, root: Path, master_file: Path) -> KeyStore:
        return KeyStore(root, Sealer(read_master_key_file(master_file)),
                        max_history=MAX_HISTORY)

    def store_problem(self) -> str | None:
        """Return the store's first problem, as a reader sees it now."""
        try:
            store = self.open_store(self.cwd / "keys",
                                    self.cwd / "keys.master-key")
            store.load()
        except Exception as exc:
            return str(exc)
        return None if store.problem is None else str(store.problem)

    def recover(self) -> None:
        """Run the documented recovery, if the store needs one."""
        if self.case.target == MASTER_KEY:
            path = self.cwd / "keys.master-key"
            if path.exists():
                os.chmod(path, 0o600)
            shutil.copy2(self.base.master_file, path)
            self.result.summary["recovery"] = "master key put back"
            return
        store = self.open_store(self.cwd / "keys", self.base.master_file)
        if not store.verify():
            self.result.summary["recovery"] = "none needed"
            return
        restored = self.run("keys", "restore")
        self.result.summary["recovery"] = "restore"
        if restored.code != 0:
            self.clean_error(restored, "keys restore")
            return
        lost = {
            int(index)
            for index in re.findall(r"^lost key (\d+) ", restored.stdout,
                                    re.MULTILINE)
        }
        if lost != set(self.case.destroys):
            self.fail(f"restore reported lost {sorted(lost)}, the damage "
                      f"destroyed {sorted(self.case.destroys)}")

    def check_recovered(self) -> None:
        """The store verifies, keeps its keys and rotates on."""
        root = self.cwd / "keys"
        store = self.open_store(root, self.base.master_file)
        problems = store.verify()
        if problems:
            self.fail(f"after recovery: {problems[0]}")
            return
        store.load()
        assert store.current is not None
        # keys a rotation of the case pruned since are not lost
        floor = store.current.index - MAX_HISTORY
        for index in RETAINED:
            if index in self.case.destroys or index <= floor:
                continue
            if index not in store.records:
                self.fail(f"after recovery: key {index} lost")
                self.result.lost += 1
            elif store.material(index).reveal_hex() != self.base.keys[index]:
                self.fail(f"after recovery: key {index} changed")
                self.result.lost += 1
        fingerprints = [r.fingerprint for r in store.records.values()]
        if len(set(fingerprints)) != len(fingerprints):
            self.fail("after recovery: a key is held twice")
            self.result.lost += 1
        highest = max(store.records)
        with store.locked():
            pass
        daemon = KeyRotationDaemon(store, RotationPolicy(
            rotation_interval_ms=3600000, derivation_rounds=1000,
        ))
        record = daemon.rotate(force=True).record
        if record.index <= max(highest, CURRENT):
            self.fail(f"after recovery: rotated to index {record.index}")
            self.result.lost += 1
        leaks.check_modes(root, self.cwd / "logs")


def run_matrix(
    cases: list[Case], base: Base, torro: Torro, tmp_path: Path
) -> list[Result]:
    ring_lock = threading.Lock()
    runs = [
        CaseRun(case, base, tmp_path / "cases" / f"{number:03d}",
                torro.environ, ring_lock)
        for number, case in enumerate(cases)
    ]
    for run in runs:
        run.cwd.mkdir(parents=True)
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        return list(pool.map(CaseRun.execute, runs))


def report(results: list[Result]) -> str:
    lines = []
    for result in results:
        summary = ", ".join(f"{k} {v}" for k, v in result.summary.items()
                            if k != "verify")
        verify = result.summary.get("verify", "?")
        state = "FAILED " if result.violations else ""
        lines.append(f"  {state}{result.case.name}: {summary}; "
                     f"verify: {verify}")
        for violation in result.violations:
            lines.append(f"      ! {violation}")
    return "\n".join(lines)


@pytest.mark.scenario("corruption and tampering")
@pytest.mark.parametrize(
    "whole",
    [
        pytest.param(False, id="one-per-file"),
        pytest.param(True, id="whole-matrix", marks=pytest.mark.campaign),
    ],
)
def test_damaged_files_end_in_a_named_error_or_recovery(
    torro: Torro, tmp_path: Path, umask_zero: None, whole: bool,
    tally: "campaign.Tally",
) -> None:
    seed = int(os.environ.get("TORRO_TAMPER_SEED", DEFAULT_SEED))
    began = time.monotonic()
    base = build_base(torro, tmp_path)
    cases = all_cases()
    only = os.environ.get("TORRO_TAMPER_ONLY")
    if only:
        cases = [case for case in cases if only in case.name]
    elif not whole:
        cases = sample(cases, random.Random(seed))
        print(f"\ntamper campaign: seed {seed} (replay with "
              f"TORRO_TAMPER_SEED={seed})")
    results = run_matrix(cases, base, torro, tmp_path)
    print(report(results))
    failed = [result for result in results if result.violations]
    tally.trials = len(results)
    tally.faults = sum(result.case.files for result in results)
    tally.survived = len(results) - len(failed)
    tally.lost = sum(result.lost for result in results)
    print(f"tamper campaign: {len(results)} cases, {len(failed)} failed, "
          f"{time.monotonic() - began:.1f} s")
    assert not failed, "\n" + report(failed)

    texts = [o.stdout + o.stderr for o in torro.outcomes]
    for result in results:
        assert result.cwd is not None
        leaks.sweep(tally, texts=result.texts, logs=result.cwd / "logs",
                    store=result.cwd / "keys",
                    master_key_file=base.master_file)
    leaks.sweep(tally, texts=texts, logs=torro.cwd / "logs",
                store=base.store, master_key_file=base.master_file)


# -- the faults the campaign found -----------------------------------------

def small_store(root: Path, master: MasterKey, clock: FakeClock,
                rotations: int) -> dict[int, str]:
    """Rotate a store under a fake clock; return each key's hex."""
    store = KeyStore(root, Sealer(master), clock=clock, max_history=10)
    daemon = KeyRotationDaemon(store, RotationPolicy(
        rotation_interval_ms=1000, derivation_rounds=1000,
    ), clock=clock)
    for _ in range(rotations):
        clock.now += 1000
        daemon.rotate(force=True)
    return {i: store.material(i).reveal_hex() for i in store.records}


def restored_keys(
    root: Path, master: MasterKey, clock: FakeClock
) -> tuple[Restored, dict[int, str]]:
    """Restore the store; check it verifies; return what it holds."""
    store = KeyStore(root, Sealer(master), clock=clock, max_history=10)
    with store.locked():
        restored = store.restore()
    store = KeyStore(root, Sealer(master), clock=clock, max_history=10)
    assert store.verify() == []
    store.load()
    assert store.problem is None
    return restored, {
        i: store.material(i).reveal_hex() for i in store.records
    }


def test_master_key_id_flipped_in_current_json_is_damage_not_a_wrong_key(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    """Found by the campaign: one byte of current.json's masterKeyId
    was reported as a wrong master key, and stopped torro keys restore
    too, although history.json and every record verify under the key."""
    keys = small_store(root, master, clock, 3)
    path = root / "current.json"
    document = json.loads(path.read_text())
    key_id = document["masterKeyId"]
    document["masterKeyId"] = turned(key_id[0]) + key_id[1:]
    path.write_text(json.dumps(document))

    store = KeyStore(root, Sealer(master), clock=clock)
    store.load()
    assert store.problem is not None
    assert store.problem.path == str(path)
    assert "master key id" in store.problem.reason

    restored, after = restored_keys(root, master, clock)
    assert restored.lost == {}
    assert after == keys


def test_swapped_records_are_restored_not_lost(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    """Found by the campaign: two records whose contents were swapped
    were both reported lost by torro keys restore, although each was
    intact in the other's file."""
    keys = small_store(root, master, clock, 5)
    one, other = root / "history/key-2.json", root / "history/key-3.json"
    data = one.read_bytes()
    one.write_bytes(other.read_bytes())
    other.write_bytes(data)

    restored, after = restored_keys(root, master, clock)
    assert restored.lost == {}
    assert after == keys


def test_history_json_of_another_store_does_not_stop_restore(
    root: Path, master: MasterKey, clock: FakeClock, tmp_path: Path
) -> None:
    """Found by the campaign: a history.json taken from another store
    under the same master key verifies, was taken as the listing, and
    torro keys restore then said nothing opens under the master key,
    although backup/history.json listed every record."""
    keys = small_store(root, master, clock, 4)
    twin = tmp_path / "twin"
    small_store(twin, master, clock, 4)
    shutil.copy(twin / "history.json", root / "history.json")

    restored, after = restored_keys(root, master, clock)
    assert restored.lost == {}
    assert after == keys


def test_malformed_master_key_file_error_says_what_to_do(
    tmp_path: Path,
) -> None:
    """Found by the campaign: a truncated master key file was named,
    with the format it must have, but not what to do."""
    path = tmp_path / "keys.master-key"
    path.write_text(os.urandom(16).hex() + "\n")

    with pytest.raises(MasterKeyError) as caught:
        read_master_key_file(path)

    message = str(caught.value)
    assert str(path) in message
    assert "KEY_DAEMON_MASTER_KEY_FILE" in message
