"""Tests for torro.store.keystore: the promises of the documented layout."""

import errno
import hashlib
import hmac
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fakes import START, FakeClock
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from torro.locks import FileLock
from torro.errors import IntegrityError, MasterKeyError, StoreError
from torro.material import KeyMaterial
from torro.rotation import KeyRotationDaemon, RotationPolicy
from torro.sealing import InvalidSeal, MasterKey, Sealer
from torro.store import KeyRecord, KeyStore, NewChainEntry, files, now_ms
from torro.store.records import canonical_json

INTERVAL = 1000
POLICY = RotationPolicy(rotation_interval_ms=INTERVAL, derivation_rounds=1000)
RECORD_FIELDS = [
    "key",
    "index",
    "timestamp",
    "algorithm",
    "length",
    "derivedFrom",
    "state",
    "fingerprint",
    "masterKeyId",
    "previousChecksum",
    "checksum",
]
ROTATE_IN_PROCESS = """
import os, sys, time
from pathlib import Path
from torro.rotation import KeyRotationDaemon, RotationPolicy
from torro.sealing import MasterKey, Sealer
from torro.store import KeyStore
master = MasterKey(bytes.fromhex(os.environ["TEST_MASTER_KEY"]))
store = KeyStore(Path(sys.argv[1]), Sealer(master), max_history=100)
policy = RotationPolicy(rotation_interval_ms=1000, derivation_rounds=1000)
daemon = KeyRotationDaemon(store, policy)
print("ready", flush=True)
sys.stdin.readline()
for _ in range(int(sys.argv[2])):
    print(daemon.rotate(force=True).record.index, flush=True)
    time.sleep(0.005)  # idle outside the lock, as a daemon is
"""


class Crash(Exception):
    """Stands for the process dying: nothing in torro catches it."""


def open_store(
    root: Path, master: MasterKey, clock: FakeClock, **options: Any
) -> KeyStore:
    options.setdefault("max_history", 100)
    return KeyStore(root, Sealer(master), clock=clock, **options)


def reopen(
    root: Path, master: MasterKey, clock: FakeClock, **options: Any
) -> KeyStore:
    """Open the store afresh, as a restarted process would, and load it."""
    store = open_store(root, master, clock, **options)
    store.load()
    return store


def rotate(
    store: KeyStore, clock: FakeClock, times: int = 1
) -> list[KeyRecord]:
    daemon = KeyRotationDaemon(store, POLICY, clock=clock)
    records = []
    for _ in range(times):
        clock.now += INTERVAL
        rotation = daemon.rotate(force=True)
        assert rotation is not None
        records.append(rotation.record)
    return records


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Map every path under ``root`` to its bytes (None for directories)."""
    tree: dict[str, bytes | None] = {}
    for directory, names, file_names in os.walk(root):
        base = Path(directory)
        for name in names:
            tree[str((base / name).relative_to(root))] = None
        for name in file_names:
            path = base / name
            tree[str(path.relative_to(root))] = path.read_bytes()
    return tree


def store_files(root: Path) -> list[str]:
    return sorted(name for name, data in snapshot(root).items()
                  if data is not None)


def read_json(path: Path) -> Any:
    return json.loads(path.read_bytes())


def write_json(path: Path, document: Any) -> None:
    files.write_file(path, json.dumps(document, indent=2).encode() + b"\n")


def record_path(root: Path, index: int) -> Path:
    return root / "history" / f"key-{index}.json"


def rewind(root: Path, saved: dict[str, bytes]) -> None:
    """Put files back as they were, replacing them (never in place)."""
    for name, data in saved.items():
        files.write_file(root / name, data)


def saved_files(root: Path, *names: str) -> dict[str, bytes]:
    return {name: (root / name).read_bytes() for name in names}


def fail_replacing(
    monkeypatch: pytest.MonkeyPatch, target: Path
) -> None:
    """Make renaming a file over ``target`` fail as on a full disk."""
    real_replace = os.replace

    def replace(source: Any, destination: Any) -> None:
        if Path(destination) == target:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_replace(source, destination)

    monkeypatch.setattr(os, "replace", replace)


def recovered(
    root: Path, master: MasterKey, clock: FakeClock, **options: Any
) -> KeyStore:
    """Open the store as the next writer does: lock, load, repair."""
    store = open_store(root, master, clock, **options)
    with store.locked():
        pass
    assert store.problem is None
    assert store.verify() == []
    return store


def assert_consistent(root: Path, store: KeyStore) -> None:
    """Check that current.json, history.json and the backup agree."""
    assert store.current is not None
    current = store.current.index
    current_bytes = (root / "current.json").read_bytes()
    assert current_bytes == record_path(root, current).read_bytes()
    assert current_bytes == (root / "backup" / "current.json").read_bytes()
    history = (root / "history.json").read_bytes()
    assert history == (root / "backup" / "history.json").read_bytes()
    document = json.loads(history)
    assert document["current"] == current
    assert document["nextIndex"] == store.next_index
    assert [entry["index"] for entry in document["keys"]] == sorted(
        store.records
    )


@pytest.fixture
def eight_keys(
    root: Path, master: MasterKey, clock: FakeClock
) -> list[KeyRecord]:
    """A store holding keys 0 to 7, key 7 current."""
    return rotate(open_store(root, master, clock), clock, 8)


# layout and format


def test_store_holds_exactly_the_documented_files(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    rotate(open_store(root, master, clock), clock, 3)

    assert store_files(root) == [
        ".lock",
        "backup/current.json",
        "backup/history.json",
        "current.json",
        "history.json",
        "history/key-0.json",
        "history/key-1.json",
        "history/key-2.json",
    ]
    current = (root / "current.json").read_bytes()
    assert current == record_path(root, 2).read_bytes()
    assert current == (root / "backup" / "current.json").read_bytes()


def test_record_has_the_documented_fields_in_order(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    store = open_store(root, master, clock)
    first, second = rotate(store, clock, 2)

    document = read_json(record_path(root, 1))

    assert list(document) == RECORD_FIELDS
    assert document["key"].startswith("torro:v1:")
    assert {name: document[name] for name in RECORD_FIELDS[1:]} == {
        "index": 1,
        "timestamp": START + 2 * INTERVAL,
        "algorithm": "sha256",
        "length": 32,
        "derivedFrom": 0,
        "state": "active",
        "fingerprint": store.material(1).fingerprint,
        "masterKeyId": master.key_id,
        "previousChecksum": first.checksum,
        "checksum": second.checksum,
    }


def test_first_record_starts_the_chain(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    rotate(open_store(root, master, clock), clock)

    document = read_json(record_path(root, 0))

    assert document["index"] == 0
    assert document["derivedFrom"] is None
    assert document["previousChecksum"] is None
    assert document["timestamp"] == START + INTERVAL


def test_record_checksum_is_hmac_over_canonical_fields(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    rotate(open_store(root, master, clock), clock, 2)
    document = read_json(record_path(root, 1))
    checksum = document.pop("checksum")

    checksum_key = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=b"torro checksum key v1",
    ).derive(master.reveal())
    payload = json.dumps(
        document, sort_keys=True, separators=(",", ":")
    ).encode()

    assert checksum == hmac.new(
        checksum_key, payload, hashlib.sha256
    ).hexdigest()


def test_history_json_lists_metadata_and_is_checksummed(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    store = open_store(root, master, clock, max_history=2)
    records = rotate(store, clock, 3)

    document = read_json(root / "history.json")
    checksum = document.pop("checksum")

    assert document == {
        "format": 1,
        "current": 2,
        "nextIndex": 3,
        "masterKeyId": master.key_id,
        "keys": [records[1].metadata(), records[2].metadata()],
        "retiredFingerprints": [records[0].fingerprint],
        "lostKeys": [],
    }
    assert "key" not in document["keys"][0]
    assert store.sealer.checksum_matches(canonical_json(document), checksum)


def test_no_file_holds_key_material_in_the_clear(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    store = open_store(root, master, clock)
    records = rotate(store, clock, 4)
    secrets = [store.material(r.index).reveal_hex() for r in records]
    history = (root / "history.json").read_bytes()

    for name, data in snapshot(root).items():
        for secret in secrets:
            assert data is None or secret.encode() not in data, name
    for record in records:
        assert record.key_text.encode() not in history
        assert record.key_text.startswith("torro:v1:")
    assert b"torro:v1:" not in history


def test_unencrypted_store_writes_lowercase_hex(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    store = open_store(root, master, clock, encryption=False)
    rotate(store, clock, 2)

    document = read_json(record_path(root, 1))

    assert document["key"] == store.material(1).reveal_hex()
    assert document["key"] == document["key"].lower()
    assert len(document["key"]) == 64
    assert document["key"].encode() not in (
        (root / "history.json").read_bytes()
    )
    assert reopen(root, master, clock).problem is None


def test_permissions_ignore_the_umask(
    root: Path, master: MasterKey, clock: FakeClock, umask_zero: None
) -> None:
    rotate(open_store(root, master, clock, max_history=2), clock, 4)

    tree = snapshot(root)
    modes = {
        name: stat.S_IMODE((root / name).stat().st_mode) for name in tree
    }
    modes["."] = stat.S_IMODE(root.stat().st_mode)

    assert {name: mode for name, mode in modes.items()
            if tree.get(name, None) is None} == {
        ".": 0o700, "history": 0o700, "backup": 0o700,
    }
    assert set(modes.values()) == {0o700, 0o600}
    assert sorted(name for name, mode in modes.items() if mode == 0o600) \
        == store_files(root)


# chain and indexes


def test_records_chain_by_index_and_checksum(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    records = rotate(open_store(root, master, clock), clock, 6)

    assert [r.index for r in records] == list(range(6))
    for previous, record in zip(records, records[1:]):
        assert record.derived_from == previous.index
        assert record.previous_checksum == previous.checksum
        assert record.timestamp == previous.timestamp + INTERVAL


@pytest.mark.parametrize("max_history", range(1, 13))
def test_retention_keeps_exactly_the_newest_keys(
    root: Path, master: MasterKey, clock: FakeClock, max_history: int
) -> None:
    store = open_store(root, master, clock, max_history=max_history)
    rotations = max_history + 5
    fingerprints = []

    for count in range(1, rotations + 1):
        (record,) = rotate(store, clock)
        fingerprints.append(record.fingerprint)
        kept = list(range(max(0, count - max_history), count))
        assert sorted(os.listdir(root / "history")) == sorted(
            f"key-{index}.json" for index in kept
        )

    kept = list(range(rotations - max_history, rotations))
    history = read_json(root / "history.json")
    assert sorted(store.records) == kept
    assert [entry["index"] for entry in history["keys"]] == kept
    assert history["nextIndex"] == rotations == store.next_index
    assert history["retiredFingerprints"] == sorted(fingerprints[:5])
    assert store.retired_fingerprints == set(fingerprints[:5])
    assert store.seen_fingerprints == set(fingerprints)

    again = reopen(root, master, clock, max_history=max_history)
    assert again.problem is None
    assert again.current == store.current
    assert again.next_index == rotations
    assert again.seen_fingerprints == set(fingerprints)
    (following,) = rotate(again, clock)
    assert following.index == rotations


def test_retention_sweep_after_reload_keeps_every_index_once(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    indexes = []
    for _ in range(4):
        store = open_store(root, master, clock, max_history=2)
        indexes.extend(r.index for r in rotate(store, clock, 3))

    assert indexes == list(range(12))
    assert sorted(reopen(root, master, clock).records) == [10, 11]


def test_material_names_a_pruned_index(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    store = open_store(root, master, clock, max_history=2)
    rotate(store, clock, 4)

    with pytest.raises(StoreError) as pruned:
        store.material(1)
    with pytest.raises(StoreError) as unknown:
        store.material(4)

    assert str(pruned.value) == (
        "key 1 is not retained (the oldest retained key is 2); torro keys "
        "history lists them"
    )
    assert str(unknown.value) == (
        "no key with index 4: indexes run from 2 to 3"
    )


# tampering


def detected(
    root: Path, master: MasterKey, clock: FakeClock
) -> IntegrityError:
    """Load the store afresh; return the problem verify() lists first."""
    store = reopen(root, master, clock)
    assert isinstance(store.problem, IntegrityError)
    problems = store.verify()
    assert problems[0].path == store.problem.path
    assert problems[0].reason == store.problem.reason
    return store.problem


def test_edited_middle_record_is_detected(
    root: Path, master: MasterKey, clock: FakeClock,
    eight_keys: list[KeyRecord],
) -> None:
    path = record_path(root, 3)
    document = read_json(path)
    document["timestamp"] += 1
    write_json(path, document)

    problem = detected(root, master, clock)

    assert problem.path == str(path)
    assert problem.reason == (
        "checksum does not match (the record was edited)"
    )


def test_edited_current_json_is_detected(
    root: Path, master: MasterKey, clock: FakeClock,
    eight_keys: list[KeyRecord],
) -> None:
    path = root / "current.json"
    document = read_json(path)
    document["timestamp"] -= 1
    write_json(path, document)

    problem = detected(root, master, clock)

    assert problem.path == str(path)
    assert problem.reason == (
        "checksum does not match (the record was edited)"
    )


@pytest.mark.parametrize("index", [0, 3, 6])
def test_deleted_record_is_detected(
    root: Path, master: MasterKey, clock: FakeClock,
    eight_keys: list[KeyRecord], index: int,
) -> None:
    path = record_path(root, index)
    path.unlink()

    problem = detected(root, master, clock)

    assert problem.path == str(path)
    assert problem.reason == "missing; history.json lists it"


def test_deleted_current_record_is_detected(
    root: Path, master: MasterKey, clock: FakeClock,
    eight_keys: list[KeyRecord],
) -> None:
    path = record_path(root, 7)
    path.unlink()

    problem = detected(root, master, clock)

    assert problem.path == str(path)
    assert problem.reason == "missing; history.json lists it"


def test_swapped_records_are_detected(
    root: Path, master: MasterKey, clock: FakeClock,
    eight_keys: list[KeyRecord],
) -> None:
    third, fourth = record_path(root, 3), record_path(root, 4)
    data_3, data_4 = third.read_bytes(), fourth.read_bytes()
    third.write_bytes(data_4)
    fourth.write_bytes(data_3)

    problem = detected(root, master, clock)

    assert problem.path == str(third)
    assert problem.reason == (
        "holds key 4, not key 3 (records were swapped or renamed)"
    )


def test_renamed_record_is_detected(
    root: Path, master: MasterKey, clock: FakeClock,
    eight_keys: list[KeyRecord],
) -> None:
    os.rename(record_path(root, 5), record_path(root, 9))

    problem = detected(root, master, clock)

    assert problem.path == str(record_path(root, 9))
    assert problem.reason == (
        "holds key 5, not key 9 (records were swapped or renamed)"
    )
    paths = [p.path for p in reopen(root, master, clock).verify()]
    assert str(record_path(root, 5)) in paths


def test_record_replayed_from_another_store_is_detected(
    tmp_path: Path, root: Path, master: MasterKey, clock: FakeClock,
    eight_keys: list[KeyRecord],
) -> None:
    """Same master key, same index, valid checksum: only the chain tells."""
    other = tmp_path / "other"
    rotate(open_store(other, master, clock), clock, 8)
    path = record_path(root, 5)
    path.write_bytes(record_path(other, 5).read_bytes())

    problem = detected(root, master, clock)

    assert problem.path == str(path)
    assert problem.reason == (
        "does not chain to key-4.json (a record between them was removed, "
        "or one was replaced)"
    )


def test_history_json_one_rotation_old_is_repaired_as_crash_window(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    """It is what a crash between history.json and current.json renames
    that did not both reach the disk leaves: key 7 is adopted again."""
    store = open_store(root, master, clock)
    rotate(store, clock, 7)
    old_history = (root / "history.json").read_bytes()
    (last,) = rotate(store, clock)
    (root / "history.json").write_bytes(old_history)

    repaired = recovered(root, master, clock)

    assert repaired.current == last
    assert repaired.next_index == 8
    assert_consistent(root, repaired)
    assert rotate(repaired, clock)[0].index == 8


def test_history_json_one_rotation_old_with_pruning_is_detected(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    store = open_store(root, master, clock, max_history=3)
    rotate(store, clock, 7)
    old_history = (root / "history.json").read_bytes()
    rotate(store, clock)
    (root / "history.json").write_bytes(old_history)

    store = reopen(root, master, clock, max_history=3)

    assert isinstance(store.problem, IntegrityError)
    assert store.problem.path == str(root / "history.json")
    assert store.problem.reason == (
        "lists key 4, which is gone, and not key 7 (an older copy of "
        "history.json)"
    )


def test_history_json_two_rotations_old_is_detected(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    store = open_store(root, master, clock)
    rotate(store, clock, 6)
    old_history = (root / "history.json").read_bytes()
    rotate(store, clock, 2)
    (root / "history.json").write_bytes(old_history)

    problem = detected(root, master, clock)

    assert problem.path == str(root / "history.json")
    assert problem.reason == (
        "does not list key 7 (an older copy of history.json)"
    )


def test_sealed_key_moved_to_another_record_is_caught_with_checks_off(
    root: Path, master: MasterKey, clock: FakeClock,
    eight_keys: list[KeyRecord],
) -> None:
    """A record's own checksum is verified even with integrity checks off.

    The seal itself binds the index as well (see test_sealing.py): the
    moved key would not open under index 4 either.
    """
    path = record_path(root, 4)
    document = read_json(path)
    document["key"] = eight_keys[5].key_text
    write_json(path, document)
    store = reopen(root, master, clock, integrity_check=False)

    assert store.problem is not None
    assert store.problem.path == str(path)
    assert store.problem.reason == (
        "checksum does not match (the record was edited)"
    )
    with pytest.raises(InvalidSeal):
        store.sealer.open(4, eight_keys[5].key_text)


def test_rotation_refuses_while_store_has_a_problem(
    root: Path, master: MasterKey, clock: FakeClock,
    eight_keys: list[KeyRecord],
) -> None:
    path = record_path(root, 2)
    document = read_json(path)
    document["algorithm"] = "sha512"
    write_json(path, document)
    (root / ".current.json.abcd1234.tmp").write_bytes(b"left over")
    before = snapshot(root)
    store = open_store(root, master, clock)

    with pytest.raises(IntegrityError) as caught:
        rotate(store, clock)

    assert caught.value.path == str(path)
    assert snapshot(root) == before
    with pytest.raises(IntegrityError):
        with store.locked():
            store.commit(
                store.build_record(
                    KeyMaterial(os.urandom(32)),
                    timestamp=clock.now,
                    algorithm="sha256",
                    derived_from=7,
                ),
                KeyMaterial(os.urandom(32)),
            )
    assert snapshot(root) == before


# the master key


def test_wrong_master_key_is_refused_and_nothing_changes(
    root: Path, master: MasterKey, clock: FakeClock,
    eight_keys: list[KeyRecord],
) -> None:
    before = snapshot(root)
    other = MasterKey(os.urandom(32))
    store = open_store(root, other, clock)
    expected = (
        f"the master key (id {other.key_id}) is not the one that sealed "
        f"{root / 'current.json'} (id {master.key_id}): set "
        "KEY_DAEMON_MASTER_KEY_FILE or KEY_DAEMON_MASTER_KEY to this "
        "store's master key; nothing was changed"
    )

    with pytest.raises(MasterKeyError) as on_load:
        store.load()
    with pytest.raises(MasterKeyError) as on_lock:
        with store.locked():
            pass
    with pytest.raises(MasterKeyError):
        rotate(store, clock)

    assert str(on_load.value) == expected
    assert str(on_lock.value) == expected
    assert snapshot(root) == before
    FileLock(root / ".lock").acquire(timeout=0)  # released


def test_wrong_master_key_is_refused_without_current_json(
    root: Path, master: MasterKey, clock: FakeClock,
    eight_keys: list[KeyRecord],
) -> None:
    """Found by a user: a reset went ahead under another master key
    once current.json was gone, and restarted the store under it."""
    (root / "current.json").unlink()
    before = snapshot(root)
    other = MasterKey(os.urandom(32))
    store = open_store(root, other, clock)
    daemon = KeyRotationDaemon(
        store, RotationPolicy(rotation_interval_ms=1000,
                              derivation_rounds=1000),
        clock=clock,
    )

    with pytest.raises(MasterKeyError) as caught:
        daemon.reset()

    assert str(caught.value) == (
        f"the master key (id {other.key_id}) did not write the key store "
        f"{root} (its files name id {master.key_id}): set "
        "KEY_DAEMON_MASTER_KEY_FILE or KEY_DAEMON_MASTER_KEY to this "
        "store's master key; nothing was changed"
    )
    assert snapshot(root) == before
    assert not list(root.parent.glob("keys.archive-*"))


# crash windows


HEAD = ("current.json", "history.json",
        "backup/current.json", "backup/history.json")


def test_crash_after_record_write_adopts_the_record(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    """Only history/key-3.json was written."""
    store = open_store(root, master, clock)
    rotate(store, clock, 3)
    before = saved_files(root, *HEAD)
    rotate(store, clock)
    rewind(root, before)
    new_record = record_path(root, 3).read_bytes()

    repaired = recovered(root, master, clock)

    assert repaired.current is not None
    assert repaired.current.index == 3
    assert repaired.next_index == 4
    assert not repaired.needs_recovery
    assert (root / "current.json").read_bytes() == new_record
    assert_consistent(root, repaired)
    assert rotate(repaired, clock)[0].index == 4


def test_crash_before_current_json_rewrites_it(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    """history/key-3.json and history.json were written, not the rest."""
    store = open_store(root, master, clock)
    rotate(store, clock, 3)
    before = saved_files(
        root, "current.json", "backup/current.json", "backup/history.json"
    )
    rotate(store, clock)
    rewind(root, before)

    repaired = recovered(root, master, clock)

    assert repaired.current is not None
    assert repaired.current.index == 3
    assert repaired.next_index == 4
    assert_consistent(root, repaired)
    assert rotate(repaired, clock)[0].index == 4


def test_crash_after_record_write_prunes_on_adoption(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    """Adopting the record applies retention, as the rotation would."""
    store = open_store(root, master, clock, max_history=3)
    records = rotate(store, clock, 3)
    before = saved_files(root, *HEAD)
    kept = record_path(root, 0).read_bytes()
    rotate(store, clock)
    rewind(root, before)
    files.write_file(record_path(root, 0), kept)

    repaired = recovered(root, master, clock, max_history=3)

    assert sorted(repaired.records) == [1, 2, 3]
    assert not record_path(root, 0).exists()
    assert repaired.retired_fingerprints == {records[0].fingerprint}
    assert_consistent(root, repaired)


def test_unlocked_reader_sees_the_crash_state_as_the_new_key(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    store = open_store(root, master, clock)
    rotate(store, clock, 3)
    before = saved_files(root, *HEAD)
    rotate(store, clock)
    rewind(root, before)
    tree = snapshot(root)

    reader = reopen(root, master, clock)

    assert reader.problem is None
    assert reader.current is not None and reader.current.index == 3
    assert reader.next_index == 4
    assert reader.needs_recovery
    assert snapshot(root) == tree


@pytest.mark.parametrize(
    "written",
    [["history/key-0.json"], ["history/key-0.json", "history.json"]],
    ids=["record", "record-and-history"],
)
def test_crash_in_first_rotation_adopts_key_0(
    root: Path, master: MasterKey, clock: FakeClock, written: list[str]
) -> None:
    rotate(open_store(root, master, clock), clock)
    for name in HEAD:
        if name not in written:
            (root / name).unlink()
    assert reopen(root, master, clock).problem is None

    repaired = recovered(root, master, clock)

    assert repaired.current is not None
    assert repaired.current.index == 0
    assert repaired.next_index == 1
    assert_consistent(root, repaired)
    assert rotate(repaired, clock)[0].index == 1


def test_leftover_temp_files_are_removed(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    rotate(open_store(root, master, clock), clock, 2)
    expected = store_files(root)
    temps = [
        root / ".current.json.abcd1234.tmp",
        root / "history" / ".key-2.json.abcd1234.tmp",
        root / "backup" / ".history.json.abcd1234.tmp",
    ]
    for path in temps:
        path.write_bytes(b"partial")

    repaired = recovered(root, master, clock)

    assert store_files(root) == expected
    assert rotate(repaired, clock)[0].index == 2


@pytest.mark.parametrize("zeroed", [False, True], ids=["whole", "zeroed"])
def test_record_below_retention_floor_is_removed(
    root: Path, master: MasterKey, clock: FakeClock, zeroed: bool
) -> None:
    """A crash while destroying a pruned record may leave it zeroed."""
    store = open_store(root, master, clock, max_history=3)
    rotate(store, clock, 4)
    content = record_path(root, 1).read_bytes()
    rotate(store, clock)
    leftover = record_path(root, 1)
    files.write_file(leftover, bytes(len(content)) if zeroed else content)
    assert reopen(root, master, clock, max_history=3).problem is None

    repaired = recovered(root, master, clock, max_history=3)

    assert not leftover.exists()
    assert sorted(repaired.records) == [2, 3, 4]
    assert_consistent(root, repaired)
    assert rotate(repaired, clock)[0].index == 5


def test_crash_while_pruning_is_completed(
    root: Path, master: MasterKey, clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = open_store(root, master, clock, max_history=2)
    rotate(store, clock, 3)

    def crash(path: Path) -> bool:
        raise Crash(path.name)

    monkeypatch.setattr(files, "destroy_file", crash)
    with pytest.raises(Crash):
        rotate(store, clock)
    monkeypatch.undo()
    assert record_path(root, 1).exists()

    repaired = recovered(root, master, clock)

    assert sorted(os.listdir(root / "history")) == [
        "key-2.json", "key-3.json"
    ]
    assert rotate(repaired, clock)[0].index == 4


@pytest.mark.parametrize(
    "stale", [HEAD[2:], HEAD[2:3], HEAD[3:]],
    ids=["both", "current", "history"],
)
def test_stale_backup_is_rewritten_and_not_a_problem(
    root: Path, master: MasterKey, clock: FakeClock,
    stale: tuple[str, ...],
) -> None:
    store = open_store(root, master, clock)
    rotate(store, clock, 2)
    old_backup = saved_files(root, *stale)
    rotate(store, clock)
    rewind(root, old_backup)
    # An intact copy one rotation behind is no problem for verify.
    assert reopen(root, master, clock).verify() == []

    repaired = recovered(root, master, clock)

    assert_consistent(root, repaired)
    assert rotate(repaired, clock)[0].index == 3


@pytest.mark.parametrize("name", HEAD[2:], ids=["current", "history"])
def test_missing_backup_is_rewritten(
    root: Path, master: MasterKey, clock: FakeClock, name: str
) -> None:
    store = open_store(root, master, clock)
    rotate(store, clock, 2)
    (root / name).unlink()

    repaired = recovered(root, master, clock)

    assert_consistent(root, repaired)


def test_swap_cut_short_is_completed_by_the_next_writer(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    """A new store waits under its staging name; the old one is gone."""
    store = open_store(root, master, clock)
    records = rotate(store, clock, 3)
    tree = snapshot(root)
    os.rename(root, root.with_name("keys.staging"))

    repaired = recovered(root, master, clock)

    assert repaired.current == records[-1]
    assert snapshot(root) == tree
    assert not root.with_name("keys.staging").exists()


def test_staging_left_beside_a_store_is_removed(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    store = open_store(root, master, clock)
    rotate(store, clock, 2)
    tree = snapshot(root)
    staging = root.with_name("keys.staging")
    staging.mkdir()
    (staging / "current.json").write_bytes(b"half of a new store")

    recovered(root, master, clock)

    assert not staging.exists()
    assert snapshot(root) == tree


# write failures


@pytest.mark.parametrize(
    "name", ["history/key-3.json", "history.json", "current.json"],
    ids=["record", "history", "current"],
)
def test_full_disk_before_current_json_changes_nothing(
    root: Path, master: MasterKey, clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch, name: str,
) -> None:
    store = open_store(root, master, clock)
    rotate(store, clock, 3)
    before = snapshot(root)
    fail_replacing(monkeypatch, root / name)

    with pytest.raises(StoreError) as caught:
        rotate(store, clock)

    monkeypatch.undo()
    assert str(caught.value) == (
        f"cannot write {root / name}: No space left on device; free space "
        "on that filesystem; nothing was changed"
    )
    assert snapshot(root) == before
    again = recovered(root, master, clock)
    assert again.current is not None and again.current.index == 2
    assert rotate(store, clock)[0].index == 3
    assert reopen(root, master, clock).verify() == []


def test_full_disk_on_fsync_changes_nothing(
    root: Path, master: MasterKey, clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = open_store(root, master, clock)
    rotate(store, clock, 3)
    before = snapshot(root)

    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync)

    with pytest.raises(StoreError) as caught:
        rotate(store, clock)

    monkeypatch.undo()
    assert str(caught.value) == (
        f"cannot write {record_path(root, 3)}: No space left on device; "
        "free space on that filesystem; nothing was changed"
    )
    assert snapshot(root) == before
    again = reopen(root, master, clock)
    assert again.current is not None and again.current.index == 2
    assert rotate(store, clock)[0].index == 3


@pytest.mark.parametrize("name", HEAD[2:], ids=["current", "history"])
def test_full_disk_on_backup_still_rotates(
    root: Path, master: MasterKey, clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch, name: str,
) -> None:
    """Once current.json names the new key the rotation has happened;
    the backup is written again by the next writer."""
    store = open_store(root, master, clock)
    rotate(store, clock, 3)
    fail_replacing(monkeypatch, root / name)

    (record,) = rotate(store, clock)

    monkeypatch.undo()
    assert record.index == 3
    assert store.current == record
    assert reopen(root, master, clock).current == record
    repaired = recovered(root, master, clock)
    assert_consistent(root, repaired)
    assert rotate(repaired, clock)[0].index == 4


# reading while another process writes


def test_load_is_not_fooled_by_a_rotation_during_the_read(
    root: Path, master: MasterKey, clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reader without the lock reads history.json, then another
    process rotates and prunes, then the reader lists the records."""
    writer = open_store(root, master, clock, max_history=3)
    rotate(writer, clock, 4)
    reader = open_store(root, master, clock, max_history=3)
    list_records: Callable[[], dict[int, Path]] = reader.layout.record_files
    calls = 0

    def rotate_then_list() -> dict[int, Path]:
        nonlocal calls
        calls += 1
        if calls == 1:
            rotate(writer, clock)
        return list_records()

    monkeypatch.setattr(reader.layout, "record_files", rotate_then_list)

    reader.load()

    assert reader.problem is None
    assert reader.current == writer.current
    assert sorted(reader.records) == [2, 3, 4]
    assert not reader.changed_on_disk()


def test_changed_on_disk_notices_another_writer(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    first = open_store(root, master, clock)
    rotate(first, clock, 2)
    second = reopen(root, master, clock)
    assert not second.changed_on_disk()

    rotate(first, clock)

    assert second.changed_on_disk()
    assert second.refresh() is True
    assert second.current == first.current
    assert second.refresh() is False


# the lock


def test_two_processes_rotating_share_one_chain(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    environment = dict(os.environ, TEST_MASTER_KEY=master.reveal().hex())
    command = [sys.executable, "-c", ROTATE_IN_PROCESS, str(root), "20"]
    processes = [
        subprocess.Popen(
            command, env=environment,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    for process in processes:
        assert process.stdout is not None
        assert process.stdout.readline() == b"ready\n"
    for process in processes:  # both start rotating at once
        assert process.stdin is not None
        process.stdin.close()
    made = []
    for process in processes:
        assert process.stdout is not None
        made.append([int(line) for line in process.stdout])
        assert process.wait(timeout=60) == 0

    first, second = made
    assert sorted(first + second) == list(range(40))
    assert min(first) < max(second) and min(second) < max(first)

    # The writers ran on the real clock: judge their keys by it.
    clock.now = now_ms()
    store = reopen(root, master, clock)

    assert store.problem is None
    assert store.next_index == 40
    assert sorted(store.records) == list(range(40))
    assert len(store.seen_fingerprints) == 40
    records = [store.records[index] for index in range(40)]
    for previous, record in zip(records, records[1:]):
        assert record.previous_checksum == previous.checksum
        assert record.timestamp >= previous.timestamp
    assert store.verify() == []


def test_writing_requires_the_lock(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    store = open_store(root, master, clock)
    material = KeyMaterial(os.urandom(32))
    record = store.build_record(
        material, timestamp=clock.now, algorithm="sha256", derived_from=None
    )

    with pytest.raises(RuntimeError) as caught:
        store.commit(record, material)

    assert str(caught.value) == "the store lock must be held to write"
    assert not root.exists()


def test_commit_refuses_an_index_that_is_not_next(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    store = open_store(root, master, clock)
    rotate(store, clock, 2)
    material = KeyMaterial(os.urandom(32))

    with store.locked():
        record = store.build_record(
            material, timestamp=clock.now, algorithm="sha256",
            derived_from=1, index=1,
        )
        with pytest.raises(StoreError) as caught:
            store.commit(record, material)

    assert str(caught.value) == (
        "record index 1 is not the next index 2"
    )


def test_commit_by_hand_makes_the_record_current(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    store = open_store(root, master, clock)
    material = KeyMaterial(os.urandom(32))

    with store.locked():
        record = store.build_record(
            material, timestamp=clock.now, algorithm="sha256",
            derived_from=None,
        )
        removed = store.commit(record, material)

    assert removed == []
    assert store.current == record
    assert store.current_material() == material
    again = reopen(root, master, clock)
    assert again.current == record
    assert again.current_material() == material


# verify: the archive and the clock


def test_verify_checks_archived_records_and_restore_sets_them_aside(
    root: Path, master: MasterKey, clock: FakeClock, tmp_path: Path
) -> None:
    """Found by a user: a damaged archived record passed verify; and
    once verify saw it, nothing could clear it."""
    store = open_store(root, master, clock, max_history=2)
    entries = [
        NewChainEntry(KeyMaterial(os.urandom(32)), index, START + index,
                      "sha256", index - 1 if index else None)
        for index in range(6)
    ]
    with store.locked():
        store.write_chain(entries[4:], next_index=6, archived=entries[:4])
    assert store.verify() == []
    other = open_store(tmp_path / "other", master, clock)
    rotate(other, clock, 4)

    (root / "archive" / "key-1.json").write_bytes(b"{")
    shutil.copy(tmp_path / "other" / "history" / "key-3.json",
                root / "archive" / "key-3.json")

    assert [(p.path, p.reason) for p in store.verify()] == [
        (str(root / "archive" / "key-1.json"),
         "not a key record: not valid JSON"),
        (str(root / "archive" / "key-3.json"),
         "does not chain to key-2.json (an archived record was replaced)"),
    ]
    with store.locked():
        restored = store.restore()
    assert restored.archive_set_aside == [1, 3]
    assert store.verify() == []
    assert len(list((root / "archive").glob("set-aside-*"))) == 2


def test_verify_reports_a_current_key_dated_in_the_future(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    """Found by a user: torro keys verify, a fresh process, said ok."""
    rotate(open_store(root, master, clock), clock)
    clock.now -= 24 * 60 * 60 * 1000
    store = open_store(root, master, clock)

    assert [(p.path, p.reason) for p in store.verify()] == [(
        str(root / "current.json"),
        "the current key (index 0) is dated 86400 s in the future: the "
        "clock is behind; rotation waits until it catches up",
    )]


def test_store_directories_opened_to_others_are_made_private_again(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    """Found by a user: a store directory left 0777 stayed 0777."""
    store = open_store(root, master, clock)
    rotate(store, clock, 2)
    os.chmod(root, 0o777)
    os.chmod(root / "history", 0o755)

    with reopen(root, master, clock).locked():
        pass

    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "history").stat().st_mode) == 0o700


def test_reset_refuses_a_directory_holding_other_files(
    master: MasterKey, clock: FakeClock, tmp_path: Path
) -> None:
    """Found by a user: with KEY_STORAGE_PATH=. a reset --purge destroyed
    .env, a database and a nested store."""
    root = tmp_path / "work"
    store = open_store(root, master, clock)
    rotate(store, clock, 2)
    (root / "licenses.db").write_text("precious")
    (root / "logs").mkdir()
    before = snapshot(root)
    daemon = KeyRotationDaemon(store, POLICY, clock=clock)

    with pytest.raises(StoreError) as caught:
        daemon.reset(purge=True)

    assert str(caught.value) == (
        f"{root} holds files that are not the key store's ({root}/"
        f"licenses.db, {root}/logs): a reset or an import replaces the "
        "whole directory, so it must hold the key store alone; move them "
        "away, or point KEY_STORAGE_PATH at a directory of its own "
        "(nothing was changed)"
    )
    assert snapshot(root) == before
    assert (root / "licenses.db").read_text() == "precious"
