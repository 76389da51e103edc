"""Tests for restoring a damaged key store (torro.store.restore).

Each scenario damages a real store on disk, restores it, and checks that
every key that has an intact copy somewhere is still there, that the store
then loads without a problem, and that rotation continues the chain.
"""

import json
import os
import shutil
from pathlib import Path

import pytest
from fakes import FakeClock

from torro.errors import IntegrityError, StoreError
from torro.rotation import KeyRotationDaemon, RotationPolicy
from torro.sealing import MasterKey, Sealer
from torro.store import KeyStore
from torro.store.keystore import Restored

POLICY = RotationPolicy(rotation_interval_ms=1000, derivation_rounds=1000)


def make_store(root: Path, master: MasterKey, clock: FakeClock) -> KeyStore:
    return KeyStore(root, Sealer(master), clock=clock, max_history=10)


def rotate(store: KeyStore, clock: FakeClock, times: int) -> None:
    daemon = KeyRotationDaemon(store, POLICY, clock=clock)
    for _ in range(times):
        clock.now += 1000
        daemon.rotate(force=True)


def restore(root: Path, master: MasterKey, clock: FakeClock) -> Restored:
    store = make_store(root, master, clock)
    with store.locked():
        return store.restore()


def after_restore(
    root: Path, master: MasterKey, clock: FakeClock
) -> KeyStore:
    """Reopen the store, check it is sound, and rotate once more."""
    store = make_store(root, master, clock)
    store.load()
    assert store.problem is None
    assert store.verify() == []
    return store


def material_hex(store: KeyStore) -> dict[int, str]:
    return {i: store.material(i).reveal_hex() for i in store.records}


@pytest.fixture
def six(root: Path, master: MasterKey, clock: FakeClock) -> dict[int, str]:
    """A store holding keys 0 to 5; returns each key's hex."""
    store = make_store(root, master, clock)
    rotate(store, clock, 6)
    return material_hex(store)


def test_a_sound_store_needs_nothing(
    root: Path, master: MasterKey, clock: FakeClock, six: dict[int, str]
) -> None:
    restored = restore(root, master, clock)

    assert restored.changed is False
    assert restored.current.index == 5


def test_a_backup_two_rotations_old_loses_nothing(
    root: Path, master: MasterKey, clock: FakeClock, six: dict[int, str],
    tmp_path: Path,
) -> None:
    """Found by a user: restore put back an old history.json over a
    valid one, and the store named records it no longer listed."""
    store = make_store(root, master, clock)
    old = tmp_path / "old-backup"
    shutil.copytree(root / "backup", old)
    rotate(store, clock, 2)
    shutil.rmtree(root / "backup")
    shutil.copytree(old, root / "backup")
    (root / "current.json").unlink()
    (root / "history.json").unlink()

    restored = restore(root, master, clock)

    assert restored.current.index == 7
    assert restored.lost == {}
    store = after_restore(root, master, clock)
    assert sorted(store.records) == list(range(8))
    assert material_hex(store) | six == material_hex(store)
    rotate(store, clock, 1)
    assert store.current is not None and store.current.index == 8


def test_a_deleted_middle_record_is_reported_lost(
    root: Path, master: MasterKey, clock: FakeClock, six: dict[int, str]
) -> None:
    fingerprint = json.loads(
        (root / "history" / "key-2.json").read_bytes()
    )["fingerprint"]
    (root / "history" / "key-2.json").unlink()

    restored = restore(root, master, clock)

    assert list(restored.lost) == [2]
    assert restored.lost[2]["fingerprint"] == fingerprint
    assert restored.current.index == 5
    store = after_restore(root, master, clock)
    assert sorted(store.records) == [0, 1, 3, 4, 5]
    assert fingerprint in store.seen_fingerprints
    assert store.next_index == 6


def test_current_json_and_its_backup_both_damaged(
    root: Path, master: MasterKey, clock: FakeClock, six: dict[int, str]
) -> None:
    """Found by a user: restore sent the operator in a circle."""
    (root / "current.json").unlink()
    (root / "backup" / "current.json").write_bytes(b"{")

    restored = restore(root, master, clock)

    assert restored.current.index == 5
    store = after_restore(root, master, clock)
    assert material_hex(store) == six


def test_only_the_records_left(
    root: Path, master: MasterKey, clock: FakeClock, six: dict[int, str]
) -> None:
    for name in ("current.json", "history.json"):
        (root / name).unlink()
    shutil.rmtree(root / "backup")

    restored = restore(root, master, clock)

    assert restored.current.index == 5
    store = after_restore(root, master, clock)
    assert material_hex(store) == six
    assert store.next_index == 6


def test_the_current_record_comes_back_from_current_json(
    root: Path, master: MasterKey, clock: FakeClock, six: dict[int, str]
) -> None:
    (root / "history" / "key-5.json").write_bytes(b"")

    restored = restore(root, master, clock)

    assert str(root / "history" / "key-5.json") in restored.rewritten
    store = after_restore(root, master, clock)
    assert material_hex(store) == six


def test_a_replaced_record_is_set_aside_not_deleted(
    root: Path, master: MasterKey, clock: FakeClock, six: dict[int, str],
    tmp_path: Path,
) -> None:
    other = make_store(tmp_path / "other", master, clock)
    rotate(other, clock, 4)
    intruder = (tmp_path / "other" / "history" / "key-3.json").read_bytes()
    (root / "history" / "key-3.json").write_bytes(intruder)

    restored = restore(root, master, clock)

    assert list(restored.lost) == [3]
    assert restored.set_aside == [3]
    aside = list((root / "archive").glob("set-aside-*-key-3.json"))
    assert [path.read_bytes() for path in aside] == [intruder]
    store = after_restore(root, master, clock)
    assert sorted(store.records) == [0, 1, 2, 4, 5]


def test_nothing_that_opens_is_refused(
    root: Path, master: MasterKey, clock: FakeClock, six: dict[int, str]
) -> None:
    for path in root.rglob("*.json"):
        path.write_bytes(b"{")
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}

    with pytest.raises(StoreError) as caught:
        restore(root, master, clock)

    assert str(caught.value) == (
        f"nothing in {root} opens under the master key: no record, "
        "history.json or backup to rebuild from; restore the directory "
        "from a backup of your own, or start over with torro daemon reset"
    )
    assert before == {
        p: p.read_bytes() for p in root.rglob("*") if p.is_file()
    }


def test_restore_never_deletes_a_record_file(
    root: Path, master: MasterKey, clock: FakeClock, six: dict[int, str]
) -> None:
    (root / "history.json").write_bytes(b"garbage")
    (root / "history" / "key-9.json").write_bytes(os.urandom(40))

    restore(root, master, clock)

    assert len(list((root / "archive").glob("set-aside-*-key-9.json"))) == 1
    after_restore(root, master, clock)


@pytest.mark.parametrize("index", [0, 2])
def test_a_lost_key_that_comes_back_is_taken_back_not_removed(
    root: Path, master: MasterKey, clock: FakeClock, six: dict[int, str],
    tmp_path: Path, index: int,
) -> None:
    """Found by a user: a key restore had reported lost was destroyed as
    "beyond retention" by the next rotation once its file came back."""
    record = root / "history" / f"key-{index}.json"
    saved = tmp_path / "saved.json"
    os.rename(record, saved)
    assert list(restore(root, master, clock).lost) == [index]

    shutil.copy(saved, record)
    store = make_store(root, master, clock)
    store.load()
    assert store.problem is not None
    assert (store.problem.path, store.problem.reason) == (
        str(record),
        f"holds key {index}, which torro keys restore reported lost",
    )
    with pytest.raises(IntegrityError):
        rotate(store, clock, 1)
    assert record.read_bytes() == saved.read_bytes()

    restored = restore(root, master, clock)

    assert restored.lost == {}
    store = after_restore(root, master, clock)
    assert material_hex(store) == six
    rotate(store, clock, 1)
    assert record.read_bytes() == saved.read_bytes()
