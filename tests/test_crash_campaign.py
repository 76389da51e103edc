"""Reliability campaign, "crashes": SIGKILL the daemon again and again.

A real ``torro daemon run`` rotates as fast as it can (a 1 ms schedule
and enough derivation rounds that a rotation takes a few ms) and is killed
with SIGKILL after a random delay, most often while a rotation is in
flight; now and then it is killed while it starts, before or during the
recovery of the previous crash. After each kill:

* the files on disk are in one of the states a crash may leave
  (keystore module docstring): history.json contiguous from 0, every
  record it names present, at most one complete record beyond it
  (pending), current.json the newest record or one rotation behind
  history.json, the backup current or one rotation behind;
* no complete record seen after an earlier kill is lost or changed, and
  all fingerprints differ (no index lost or repeated);
* ``torro keys verify`` exits 0 and says ok, or names a file of backup/
  as missing when the kill landed while the backup was rewritten (the
  next start writes it again);
* the next start recovers: it reports the newest complete record as its
  current key, logs no integrity problem, and removes the temporary files
  the kill left behind.

At the end ``torro daemon rotate`` (a writer that recovers, then rotates)
must leave a clean store: no temporary file, current.json the newest
record, history.json naming every record, the backup identical.

The short version runs in the default suite; the 200-kill version is a
campaign (``pytest -m campaign -s tests/test_crash_campaign.py``).
The seed is printed; set TORRO_CRASH_SEED to replay a run.
"""

import dataclasses
import json
import os
import random
import re
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import leaks
import pytest

if TYPE_CHECKING:
    import campaign
    from runner import Torro


# Rotate back to back: each wake-up is due, each rotation takes a few ms of
# derivation plus its writes (more rounds make kills land in the
# derivation rather than the writes). Nothing is ever pruned.
CRASH_SETTINGS = {
    "KEY_DAEMON_SLEEP_INTERVAL": "1",
    "KEY_DAEMON_ROTATION_INTERVAL": "1",
    "KEY_DAEMON_DERIVATION_ROUNDS": "5000",
    "KEY_DAEMON_MAX_HISTORY": "100000",
    "KEY_DAEMON_API": "false",
}
DEFAULT_SEED = 20261203
# Most kills land a random moment after the daemon has started (and so
# recovered); one in EARLY_KILL_ONE_IN lands a random moment after the
# process was spawned, often during the interpreter start or the recovery.
EARLY_KILL_ONE_IN = 6
EARLY_KILL_MAX_DELAY = 0.6
KILL_MAX_DELAY = 0.15
START_TIMEOUT = 15.0

RECORD_NAME = re.compile(r"key-(\d+)\.json")
TEMP_NAME = re.compile(r"\..+\.[0-9a-f]+\.tmp")
STARTED = re.compile(r" started: pid \d+, store \S+, current key (\w+),")
ROTATED = re.compile(r" rotated to key (\d+) ")
# The names a key store may hold, besides temporary files.
STORE_NAMES = {
    ".": {".lock", "current.json", "history.json", "history", "backup"},
    "backup": {"current.json", "history.json"},
}


@dataclasses.dataclass
class Disk:
    """The key store files, as a kill left them."""

    records: dict[int, bytes]
    temps: set[str]
    strays: list[str]
    current: bytes | None
    history: bytes | None
    backup_current: bytes | None
    backup_history: bytes | None

    def record(self, index: int) -> dict[str, Any]:
        return json.loads(self.records[index])


@dataclasses.dataclass
class Kills:
    """Where the kills of one run landed."""

    kills: int = 0
    early: int = 0
    windows: int = 0
    temp: int = 0
    pending: int = 0
    stale_current: int = 0
    stale_backup: int = 0
    missing_backup: int = 0

    def line(self, seed: int, survived: int, lost: int, rotations: int,
             elapsed: float) -> str:
        return (
            f"crash campaign (seed {seed}): {self.kills} kills "
            f"({self.early} while starting), {self.windows} in a crash "
            f"window [temp files {self.temp}, pending record "
            f"{self.pending}, current.json behind {self.stale_current}, "
            f"backup behind {self.stale_backup}, backup missing "
            f"{self.missing_backup}], {survived} starts recovered, "
            f"{lost} keys lost, {rotations} rotations, {elapsed:.1f} s"
        )


def read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def read_disk(keys: Path) -> Disk:
    records: dict[int, bytes] = {}
    temps: set[str] = set()
    strays: list[str] = []
    for where, directory in (("", keys), ("backup/", keys / "backup"),
                             ("history/", keys / "history")):
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            continue
        for name in names:
            if TEMP_NAME.fullmatch(name):
                temps.add(where + name)
            elif where == "history/" and RECORD_NAME.fullmatch(name):
                index = int(RECORD_NAME.fullmatch(name).group(1))
                records[index] = (directory / name).read_bytes()
            elif name not in STORE_NAMES.get(where.rstrip("/") or ".", ()):
                strays.append(where + name)
    return Disk(
        records=records,
        temps=temps,
        strays=strays,
        current=read(keys / "current.json"),
        history=read(keys / "history.json"),
        backup_current=read(keys / "backup/current.json"),
        backup_history=read(keys / "backup/history.json"),
    )


def check_after_kill(
    disk: Disk, known: dict[int, str], kills: Kills, where: str
) -> None:
    """Assert the strongest state a SIGKILL may leave; count its window.

    ``known`` maps the index of every complete record seen so far to its
    checksum; it is updated with the new ones.
    """
    assert not disk.strays, f"{where}: unexpected files {disk.strays}"

    # no complete record lost or changed, no fingerprint twice
    for index, checksum in known.items():
        assert index in disk.records, f"{where}: key {index} lost"
        assert disk.record(index)["checksum"] == checksum, \
            f"{where}: key {index} was written again"
    fingerprints = [disk.record(i)["fingerprint"] for i in disk.records]
    assert len(set(fingerprints)) == len(fingerprints), \
        f"{where}: a fingerprint repeats"
    for index in disk.records:
        record = disk.record(index)
        assert record["index"] == index, f"{where}: key-{index}.json"
        known.setdefault(index, record["checksum"])

    windows = []
    if disk.temps:
        windows.append("temp")
    if disk.history is None:
        # killed during the very first commit
        assert set(disk.records) <= {0}, f"{where}: {sorted(disk.records)}"
        assert disk.current is None, f"{where}: current.json, no history"
        if disk.records:
            windows.append("pending")
    else:
        history = json.loads(disk.history)
        indexes = [key["index"] for key in history["keys"]]
        top = indexes[-1]
        assert indexes == list(range(top + 1)), \
            f"{where}: history.json indexes {indexes[:3]}..{indexes[-3:]}"
        assert history["current"] == top, where
        assert history["nextIndex"] == top + 1, where
        missing = set(indexes) - set(disk.records)
        assert not missing, f"{where}: history.json names missing {missing}"
        for key in history["keys"]:
            record = disk.record(key["index"])
            assert key["checksum"] == record["checksum"], where
            assert key["fingerprint"] == record["fingerprint"], where
        beyond = set(disk.records) - set(indexes)
        assert beyond <= {top + 1}, f"{where}: records beyond {top}: {beyond}"
        assert disk.current is not None, f"{where}: no current.json"
        current = json.loads(disk.current)["index"]
        if beyond:
            windows.append("pending")
            assert current == top, f"{where}: pending {top + 1}, current " \
                f"{current}, history {top}"
        else:
            assert current in (top - 1, top), \
                f"{where}: current {current}, history {top}"
            if current == top - 1:
                windows.append("stale_current")
        assert disk.current == disk.records[current], \
            f"{where}: current.json differs from key-{current}.json"

        # the backup: current, one rotation behind, or (written without
        # a flush, old file removed first) briefly missing
        if disk.backup_current is None or disk.backup_history is None:
            windows.append("missing_backup")
        else:
            backup = json.loads(disk.backup_current)["index"]
            assert backup in (current - 1, current), \
                f"{where}: backup current {backup}, current {current}"
            assert disk.backup_current == disk.records[backup], where
            backup_history = json.loads(disk.backup_history)
            backup_indexes = [k["index"] for k in backup_history["keys"]]
            assert backup_history["current"] in (top - 1, top), where
            assert backup_indexes == indexes[:len(backup_indexes)], where
            if disk.backup_current != disk.current \
                    or disk.backup_history != disk.history:
                windows.append("stale_backup")

    kills.kills += 1
    if windows:
        kills.windows += 1
    for window in windows:
        setattr(kills, window, getattr(kills, window) + 1)


def log_text(cwd: Path, name: str) -> str:
    try:
        return (cwd / "logs" / name).read_text()
    except FileNotFoundError:
        return ""


def started_lines(cwd: Path) -> list[str]:
    return STARTED.findall(log_text(cwd, "system.log"))


def problem_lines(cwd: Path, since: int = 0) -> list[str]:
    """Return the errors in security.log from character ``since`` on."""
    return [
        line for line in log_text(cwd, "security.log")[since:].splitlines()
        if " ERROR " in line or " CRITICAL " in line
    ]


def check_clean_store(keys: Path, known: dict[int, str], where: str) -> int:
    """Assert a store no writer is in the middle of; return its top."""
    disk = read_disk(keys)
    assert not disk.temps, f"{where}: temporary files {disk.temps}"
    assert not disk.strays, f"{where}: unexpected files {disk.strays}"
    assert disk.history is not None and disk.current is not None, where
    history = json.loads(disk.history)
    indexes = [key["index"] for key in history["keys"]]
    top = indexes[-1]
    assert indexes == list(range(top + 1)), where
    assert set(disk.records) == set(indexes), where
    assert json.loads(disk.current)["index"] == top, where
    assert disk.current == disk.records[top], where
    assert disk.backup_current == disk.current, f"{where}: backup behind"
    assert disk.backup_history == disk.history, f"{where}: backup behind"
    for index, checksum in known.items():
        assert disk.record(index)["checksum"] == checksum, \
            f"{where}: key {index} lost or written again"
    fingerprints = {disk.record(i)["fingerprint"] for i in disk.records}
    assert len(fingerprints) == len(disk.records), where
    return top


@pytest.mark.scenario("crashes: SIGKILL during rotation")
@pytest.mark.parametrize(
    "trials",
    [
        pytest.param(6, id="6-kills"),
        pytest.param(200, id="200-kills", marks=pytest.mark.campaign),
    ],
)
def test_sigkill_during_rotation_loses_and_repeats_nothing(
    torro: "Torro", tmp_path: Path, trials: int, tally: "campaign.Tally"
) -> None:
    seed = int(os.environ.get("TORRO_CRASH_SEED", DEFAULT_SEED + trials))
    rng = random.Random(seed)
    print(f"\ncrash campaign: seed {seed}, {trials} kills "
          f"(replay with TORRO_CRASH_SEED={seed})")
    cwd = torro.cwd
    keys = cwd / "keys"
    stderr_path = tmp_path / "daemon.stderr"
    known: dict[int, str] = {}
    kills = Kills()
    survived = 0
    # kills after which every check held
    checked = 0
    # temporary files seen after a kill, and not yet past a finished start
    unrecovered: set[str] = set()
    expected_current: int | None = None
    began = time.monotonic()

    try:
        for trial in range(trials):
            where = f"seed {seed}, trial {trial + 1}/{trials}"
            starts_before = len(started_lines(cwd))
            # `keys verify` logs what it finds there too: only what the
            # daemon logs counts here
            security_before = len(log_text(cwd, "security.log"))
            early = trial > 0 and rng.randrange(EARLY_KILL_ONE_IN) == 0
            delay = rng.uniform(
                0, EARLY_KILL_MAX_DELAY if early else KILL_MAX_DELAY
            )
            with open(stderr_path, "ab") as stderr:
                daemon = torro.popen(
                    "daemon", "run", env=CRASH_SETTINGS,
                    stdout=subprocess.DEVNULL, stderr=stderr,
                    preexec_fn=lambda: os.umask(0),
                )
            if not early:
                torro.wait_until(
                    lambda daemon=daemon, before=starts_before:
                    len(started_lines(cwd)) > before
                    or daemon.poll() is not None,
                    timeout=START_TIMEOUT,
                    what=f"the daemon to start ({where})",
                )
            time.sleep(delay)
            assert daemon.poll() is None, \
                f"{where}: the daemon exited " \
                f"{daemon.returncode}: {stderr_path.read_text()[-2000:]}"
            daemon.kill()
            assert daemon.wait(timeout=10) == -9, where
            kills.early += early

            # the start before this kill, if it finished, recovered the
            # previous kill: its current key is the newest complete record
            started = started_lines(cwd)[starts_before:]
            assert len(started) <= 1, where
            if started:
                if expected_current is not None:
                    assert started[0] == str(expected_current), \
                        f"{where}: started with current key {started[0]}, " \
                        f"the newest complete record was {expected_current}"
                survived += 1
            problems = problem_lines(cwd, security_before)
            assert not problems, \
                f"{where}: the daemon logged an integrity problem: {problems}"

            disk = read_disk(keys)
            if started:
                left = unrecovered & disk.temps
                assert not left, f"{where}: the start left {left} behind"
                unrecovered = set(disk.temps)
            else:
                unrecovered |= disk.temps
            check_after_kill(disk, known, kills, where)
            expected_current = max(disk.records, default=0)

            verified = torro.run("keys", "verify", env=CRASH_SETTINGS, umask=0)
            if disk.backup_current is None or disk.backup_history is None:
                # documented: "missing: the next rotation or start writes
                # it again"; the next start is checked to do so
                assert verified.code in (0, 1), f"{where}: {verified}"
                if verified.code == 1:
                    assert "backup" in verified.stderr \
                        and "missing" in verified.stderr, \
                        f"{where}: {verified.stderr}"
            else:
                assert verified.code == 0, f"{where}: {verified.stderr}"
                assert verified.stdout.startswith("ok: "), \
                    f"{where}: {verified.stdout}"
            checked += 1

        # a last writer recovers the last kill and leaves a clean store
        where = f"seed {seed}, after the last kill"
        security_before = len(log_text(cwd, "security.log"))
        rotated = torro.run("daemon", "rotate", env=CRASH_SETTINGS, umask=0)
        assert rotated.code == 0, f"{where}: {rotated.stderr}"
        assert rotated.stdout.startswith(
            f"rotated to key {expected_current + 1} "
        ), f"{where}: {rotated.stdout}"
        top = check_clean_store(keys, known, where)
        assert top == expected_current + 1, where
        verified = torro.run("keys", "verify", env=CRASH_SETTINGS, umask=0)
        assert verified.code == 0, f"{where}: {verified.stderr}"
        assert verified.stdout == (
            f"ok: {top + 1} keys verified, chain intact, current key {top}\n"
        ), f"{where}: {verified.stdout}"

        # nothing logged twice, nothing logged that is not kept
        logged = [
            int(index)
            for index in ROTATED.findall(log_text(cwd, "key-daemon.log"))
        ]
        assert len(logged) == len(set(logged)), \
            f"{where}: an index was rotated to twice"
        assert set(logged) <= set(range(top + 1)), where
        assert not problem_lines(cwd, security_before), where
        assert "Traceback" not in stderr_path.read_text(), where

        # no secret in what the daemon and the commands let out
        texts = [stderr_path.read_text()]
        texts += [outcome.stdout + outcome.stderr
                  for outcome in torro.outcomes]
        leaks.sweep(tally, texts=texts, logs=cwd / "logs", store=keys,
                    master_key_file=cwd / "keys.master-key")
        # every process ran under umask 000
        leaks.check_modes(keys, cwd / "logs", cwd / "keys.master-key")
    finally:
        lost = len(set(known) - set(read_disk(keys).records))
        print(kills.line(seed, survived, lost, max(known, default=-1) + 1,
                         time.monotonic() - began))
        tally.trials, tally.faults = trials, kills.kills
        tally.survived, tally.lost = checked, lost
