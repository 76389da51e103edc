"""Tests for torro.rotation: the schedule, one rotation, subscribers."""

import json
import logging
import os
import random
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
from fakes import START, FakeClock

from torro import keygen, logs
from torro.errors import ClockError, IntegrityError
from torro.material import fingerprint
from torro.rotation import (
    DERIVATION_NICENESS,
    KeyRotationDaemon,
    RotationPolicy,
)
from torro.sealing import MasterKey, Sealer
from torro.store import KeyRecord, KeyStore, files

INTERVAL = 1000
DAY = 24 * 60 * 60 * 1000
POLICY = RotationPolicy(rotation_interval_ms=INTERVAL, derivation_rounds=1000)


class ZeroRandom:
    """A broken random source: every byte is zero."""

    def token_bytes(self, n: int) -> bytes:
        return bytes(n)


def open_store(
    root: Path, master: MasterKey, clock: FakeClock, **options: Any
) -> KeyStore:
    return KeyStore(root, Sealer(master), clock=clock, **options)


def daemon_for(
    root: Path, master: MasterKey, clock: FakeClock, **options: Any
) -> KeyRotationDaemon:
    """Build a store and its daemon, as a freshly started process does."""
    store = open_store(root, master, clock)
    return KeyRotationDaemon(store, POLICY, clock=clock, **options)


def indexes_on_disk(root: Path) -> list[int]:
    names = os.listdir(root / "history")
    return sorted(int(name[4:-5]) for name in names)


# the schedule


def test_first_tick_on_empty_store_makes_key_0(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    daemon = daemon_for(root, master, clock)

    rotation = daemon.tick()

    assert rotation is not None
    assert rotation.record.index == 0
    assert rotation.record.timestamp == START
    assert rotation.removed == []
    assert daemon.stats.rotations == 1
    assert daemon.stats.failed_rotations == 0


def test_schedule_follows_the_stored_timestamp(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    daemon = daemon_for(root, master, clock)
    daemon.tick()

    assert daemon.next_rotation() == START + INTERVAL
    assert not daemon.is_due(START + INTERVAL - 1)
    assert daemon.is_due(START + INTERVAL)
    clock.now = START + INTERVAL - 1
    assert not daemon.is_due()
    assert daemon.tick() is None
    clock.now = START + INTERVAL
    assert daemon.is_due()


def test_restart_keeps_the_schedule(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    daemon_for(root, master, clock).tick()
    clock.now = START + INTERVAL - 1

    restarted = daemon_for(root, master, clock)

    assert restarted.tick() is None
    assert restarted.next_rotation() == START + INTERVAL
    assert indexes_on_disk(root) == [0]
    clock.now = START + INTERVAL
    rotation = restarted.tick()
    assert rotation is not None and rotation.record.index == 1


def test_long_downtime_rotates_once(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    daemon_for(root, master, clock).tick()
    clock.now = START + 10 * INTERVAL

    restarted = daemon_for(root, master, clock)
    first = restarted.tick()
    second = restarted.tick()

    assert first is not None
    assert first.record.index == 1
    assert first.record.timestamp == START + 10 * INTERVAL
    assert second is None
    assert restarted.next_rotation() == START + 11 * INTERVAL
    assert indexes_on_disk(root) == [0, 1]


def test_rotate_without_force_waits_until_due(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    daemon = daemon_for(root, master, clock)
    daemon.rotate()

    assert daemon.rotate() is None
    assert daemon.rotate(now=START + INTERVAL) is not None
    assert indexes_on_disk(root) == [0, 1]


# the clock


def test_key_dated_in_the_future_blocks_rotation_until_clock_passes(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    clock.now = START + DAY
    daemon_for(root, master, clock).tick()
    clock.now = START

    daemon = daemon_for(root, master, clock)
    daemon.store.load()

    assert daemon.store.clock_problem() == (
        "the current key (index 0) is dated 86400 s in the future: the "
        "clock is behind; rotation waits until it catches up"
    )
    assert daemon.tick() is None
    assert daemon.stats.failed_rotations == 0
    assert indexes_on_disk(root) == [0]

    clock.now = START + DAY + INTERVAL
    rotation = daemon.tick()
    assert daemon.store.clock_problem() is None
    assert rotation is not None
    assert rotation.record.timestamp == START + DAY + INTERVAL


def test_key_dated_within_skew_allowance_is_no_clock_problem(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    daemon = daemon_for(root, master, clock)
    daemon.tick()

    assert daemon.store.clock_problem(START - 5 * 60 * 1000) is None
    assert daemon.store.clock_problem(START - 5 * 60 * 1000 - 1) == (
        "the current key (index 0) is dated 300 s in the future: the "
        "clock is behind; rotation waits until it catches up"
    )


def test_clock_going_back_never_dates_a_key_before_the_previous(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    daemon = daemon_for(root, master, clock)
    daemon.tick()
    clock.now = START - 1000

    rotation = daemon.rotate(force=True)

    assert rotation is not None
    assert rotation.record.timestamp == START
    assert daemon.store.verify() == []


def test_tick_judges_the_clock_by_the_daemon_clock(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    """The store's own clock is far behind; the daemon's decides."""
    store = open_store(root, master, FakeClock(START - DAY))
    daemon = KeyRotationDaemon(store, POLICY, clock=clock)
    daemon.tick()
    clock.now = START + INTERVAL

    rotation = daemon.tick()

    assert rotation is not None
    assert rotation.record.index == 1


# subscribers


def test_subscribers_get_each_new_record(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    daemon = daemon_for(root, master, clock)
    seen: list[KeyRecord] = []
    unsubscribe = daemon.subscribe(seen.append)

    first = daemon.tick()
    clock.now += INTERVAL
    second = daemon.tick()
    unsubscribe()
    clock.now += INTERVAL
    daemon.tick()

    assert first is not None and second is not None
    assert seen == [first.record, second.record]


def test_failing_subscriber_does_not_stop_rotation(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    daemon = daemon_for(root, master, clock)
    seen: list[KeyRecord] = []

    def fail(record: KeyRecord) -> None:
        raise RuntimeError("subscriber is broken")

    daemon.subscribe(fail)
    daemon.subscribe(seen.append)

    rotation = daemon.tick()

    assert rotation is not None
    assert seen == [rotation.record]
    assert daemon.stats.rotations == 1
    assert daemon.stats.failed_rotations == 0
    assert daemon.store.current == rotation.record


def test_rotation_by_another_store_is_noticed_once(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    daemon = daemon_for(root, master, clock)
    daemon.tick()
    seen: list[KeyRecord] = []
    daemon.subscribe(seen.append)
    clock.now += INTERVAL // 2

    other = daemon_for(root, master, clock).rotate(force=True)
    first = daemon.tick()
    second = daemon.tick()

    assert other is not None
    assert first is None and second is None
    assert seen == [other.record]
    assert daemon.store.current == other.record
    assert indexes_on_disk(root) == [0, 1]


# failures


def test_rejected_key_stores_nothing_and_next_tick_retries(
    root: Path, master: MasterKey, clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    daemon = daemon_for(root, master, clock, random=ZeroRandom())
    seen: list[KeyRecord] = []
    daemon.subscribe(seen.append)

    with caplog.at_level(logging.INFO):
        assert daemon.tick() is None

    assert [
        (r.name, r.levelname, r.getMessage()) for r in caplog.records
        if r.name == logs.SECURITY
    ] == [(
        logs.SECURITY, "WARNING",
        "new key for index 0 rejected, nothing stored: key "
        f"{fingerprint(bytes(32))} looks degenerate: byte entropy 0.00 "
        "bits is below 3.50; generate a new key",
    )]

    zero_key = fingerprint(bytes(32))
    assert daemon.stats.failed_rotations == 1
    assert daemon.stats.rotations == 0
    assert daemon.stats.last_error == (
        f"key {zero_key} looks degenerate: byte entropy 0.00 bits is below "
        "3.50; generate a new key"
    )
    assert daemon.store.is_empty()
    assert seen == []

    daemon.random = keygen.SYSTEM_RANDOM
    rotation = daemon.tick()
    assert rotation is not None
    assert rotation.record.index == 0
    assert seen == [rotation.record]
    assert daemon.stats.failed_rotations == 1


def test_damaged_store_stops_rotation_without_raising(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    daemon = daemon_for(root, master, clock)
    daemon.tick()
    path = root / "current.json"
    document = json.loads(path.read_bytes())
    document["timestamp"] += 1
    files.write_file(path, json.dumps(document).encode())
    clock.now += INTERVAL

    assert daemon.tick() is None
    assert isinstance(daemon.store.problem, IntegrityError)
    assert daemon.store.problem.path == str(path)
    with pytest.raises(IntegrityError):
        daemon.rotate(force=True)
    assert indexes_on_disk(root) == [0]


def test_rotation_resumes_once_a_damaged_record_is_repaired(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    """Found by a user: a daemon whose store was damaged, then repaired,
    never rotated again until restarted (only the head files were
    watched for changes)."""
    daemon = daemon_for(root, master, clock)
    for _ in range(3):
        daemon.rotate(force=True)
    path = root / "history" / "key-1.json"
    original = path.read_bytes()
    document = json.loads(original)
    document["timestamp"] += 1
    path.write_text(json.dumps(document))
    clock.now += INTERVAL

    assert daemon.tick() is None
    assert daemon.store.problem is not None
    assert daemon.store.problem.path == str(path)

    path.write_bytes(original)
    rotation = daemon.tick()

    assert daemon.store.problem is None
    assert rotation is not None
    assert rotation.record.index == 3


@pytest.mark.parametrize("how", ["removed", "moved away", "replaced"])
def test_a_store_taken_away_under_a_daemon_stops_rotation(
    root: Path, master: MasterKey, clock: FakeClock, tmp_path: Path,
    how: str,
) -> None:
    """Found by a user: a running daemon whose store files disappeared
    started a new chain at index 0, giving indexes 0 to 4 to new keys."""
    daemon = daemon_for(root, master, clock)
    for _ in range(5):
        daemon.rotate(force=True)
    older = tmp_path / "older"
    if how == "replaced":
        other = daemon_for(older, master, clock)
        other.rotate(force=True)
    if how == "removed":
        shutil.rmtree(root)
    else:
        os.rename(root, tmp_path / "elsewhere")
        if how == "replaced":
            os.rename(older, root)
    clock.now += 10 * INTERVAL

    assert daemon.tick() is None

    problem = daemon.store.problem
    assert problem is not None
    assert problem.path == str(root)
    assert problem.reason.startswith(
        "went back from next index 5 to "
    )
    assert not (root / "history" / "key-0.json").exists() \
        or how == "replaced"


def test_forced_rotation_refuses_while_the_clock_is_behind(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    """Found by a user: torro daemon rotate made a key dated a day ahead,
    like the one before it, while the daemon waited for the clock."""
    daemon = daemon_for(root, master, clock)
    daemon.rotate(force=True)
    clock.now -= DAY

    with pytest.raises(ClockError) as caught:
        daemon.rotate(force=True)

    assert str(caught.value) == (
        "the current key (index 0) is dated 86400 s in the future: the "
        "clock is behind; rotation waits until it catches up; fix the "
        "clock first"
    )
    assert indexes_on_disk(root) == [0]


# background derivation (a daemon that also serves the HTTP API)


class SeededRandom:
    """A repeatable random source that notes the niceness it ran at."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)
        self.niceness: list[int] = []

    def token_bytes(self, n: int) -> bytes:
        self.niceness.append(
            os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        )
        return self._random.randbytes(n)


def test_background_derivation_makes_the_same_chain_at_lower_priority(
    tmp_path: Path, master: MasterKey, clock: FakeClock
) -> None:
    """Deriving in a thread of its own changes nothing of the keys: with
    the same random bytes both daemons make the same chain. The thread
    runs niced by DERIVATION_NICENESS (capped at 19), the caller not."""
    chains = []
    sources = []
    for background in (False, True):
        source = SeededRandom(7)
        daemon = daemon_for(
            tmp_path / f"keys-{background}", master, clock,
            random=source, background_derivation=background,
        )
        for _ in range(3):
            daemon.rotate(force=True)
        chains.append([
            daemon.store.material(index).reveal() for index in range(3)
        ])
        sources.append(source)

    assert chains[0] == chains[1]
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert set(sources[0].niceness) == {own}
    lowered = min(19, own + DERIVATION_NICENESS)
    # the first key is drawn by the caller; each derivation in the thread
    assert sources[1].niceness[0] == own
    assert set(sources[1].niceness[1:]) == {lowered}
