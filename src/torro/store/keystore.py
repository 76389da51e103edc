"""The key store: one key ring on disk, in the documented layout.

:class:`KeyStore` is the only writer of a key store (see torro.store.layout
for where each file lives, and torro.store.reader for how a store is read
and judged). It loads and verifies, repairs what a crash left behind,
commits new keys, applies retention, keeps the backup, restores from it,
and replaces the whole store for a reset or an import.

Rules this module keeps (docs/storage.md explains them for operators):

1. Indexes strictly increase and are never reused: the next index is
   stored in history.json, and carried over by a reset.
2. A record is durable before history.json or current.json names it.
3. current.json names the newest complete record.
4. Each record's checksum covers the checksum of the record before it.
5. Only this module writes under the store, and only under the lock.

A crash can leave four states behind, each repaired by the next writer
(:meth:`KeyStore.recover`): temporary files (removed), a new record that
history.json does not name yet (adopted when it chains to the current
record), a current.json one rotation behind history.json (rewritten), and
records below the retention floor (removed). Anything else is an integrity
failure: rotation stops and ``torro keys verify`` names the first bad file.
"""

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from torro import logs
from torro.errors import IntegrityError, StoreError
from torro.locks import FileLock
from torro.material import KeyMaterial
from torro.sealing import Sealer
from torro.store import files
from torro.store.layout import StoreLayout
from torro.store.reader import Snapshot, StoreReader
from torro.store.records import KeyRecord, KeyState, canonical_json
from torro.store.restore import plan_restore


# A timestamp this far ahead of the clock is accepted, to allow for skew.
CLOCK_SKEW_ALLOWANCE_MS = 5 * 60 * 1000
LOCK_TIMEOUT = 30.0
HISTORY_FORMAT = 1
# Reads of a store that another process keeps writing, before giving up
# on a still view (the next refresh reads again).
READ_ATTEMPTS = 3

log = logging.getLogger(logs.ROTATION)
security_log = logging.getLogger(logs.SECURITY)
system_log = logging.getLogger(logs.SYSTEM)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclasses.dataclass(frozen=True)
class NewChainEntry:
    """A key to write into a new chain (see :meth:`KeyStore.write_chain`)."""

    material: KeyMaterial
    index: int
    timestamp: int
    algorithm: str
    derived_from: int | None


class StoreView:
    """The state of a key store at one moment, safe to read from any
    thread while the store's owner moves on.

    The key store replaces its view after each load and commit, so a
    reader that takes :attr:`KeyStore.view` once sees one consistent
    state: a current key, the retained records and the next index that
    belong together. Key material is opened on first use and kept.
    """

    def __init__(
        self,
        current: KeyRecord | None,
        records: dict[int, KeyRecord],
        next_index: int,
        problem: IntegrityError | None,
        open_record: Callable[[KeyRecord], KeyMaterial],
    ) -> None:
        self.current = current
        self.records = records
        self.next_index = next_index
        self.problem = problem
        self.by_fingerprint = {
            record.fingerprint: index for index, record in records.items()
        }
        self._open_record = open_record
        self._materials: dict[int, KeyMaterial] = {}

    def material(self, index: int) -> KeyMaterial:
        """Return a retained key's material; KeyError when not retained."""
        material = self._materials.get(index)
        if material is None:
            material = self._open_record(self.records[index])
            self._materials[index] = material
        return material

    def remember(self, index: int, material: KeyMaterial) -> None:
        self._materials[index] = material

    @property
    def oldest(self) -> int | None:
        return min(self.records, default=None)

    def is_retired(self, index: int) -> bool:
        """Tell whether ``index`` was a key of this ring, now pruned."""
        oldest = self.oldest
        return oldest is not None and 0 <= index < oldest


@dataclasses.dataclass(frozen=True)
class Restored:
    """What :meth:`KeyStore.restore` did.

    :param current: the current key afterwards.
    :param rewritten: the files written again.
    :param lost: keys with no intact copy left: index, checksum and
        fingerprint (when known) of each.
    :param set_aside: indexes of record files moved to archive/.
    :param archive_set_aside: indexes of damaged archived records moved
        aside within archive/.
    :param changed: False when the store needed nothing.
    """

    current: KeyRecord
    rewritten: list[str]
    lost: dict[int, dict[str, Any]]
    set_aside: list[int]
    archive_set_aside: list[int] = dataclasses.field(default_factory=list)
    changed: bool = True


class KeyStore:
    """One key ring in a directory, in the documented layout.

    :param root: the key store directory (KEY_STORAGE_PATH).
    :param sealer: seals new keys and checksums records under the master
        key; also used, with ``encryption`` off, for checksums alone.
    :param history_dir: where key-N.json files live (KEY_HISTORY_PATH),
        ``root/history`` by default.
    :param encryption: seal the key material of new records.
    :param max_history: how many keys are retained; older ones are removed
        at the next rotation.
    :param integrity_check: verify every record's checksum and the chain on
        load; the current record is always verified.
    :param clock: returns the time in ms since the epoch.
    :param read_only: never write, not even to complete a reset another
        process left half done (a reader without write permission leaves
        that to the next writer).
    """

    def __init__(
        self,
        root: Path,
        sealer: Sealer,
        *,
        history_dir: Path | None = None,
        encryption: bool = True,
        max_history: int = 100,
        integrity_check: bool = True,
        clock: Callable[[], int] = now_ms,
        read_only: bool = False,
    ) -> None:
        self.layout = StoreLayout(root, history_dir)
        self.read_only = read_only
        self.root = root
        self.history_dir = self.layout.history_dir
        self.current_path = self.layout.current_path
        self.history_path = self.layout.history_path
        self.backup_dir = self.layout.backup_dir
        self.archive_dir = self.layout.archive_dir
        self.sealer = sealer
        self._reader = StoreReader(self.layout, sealer)
        # Each retained record's metadata as canonical JSON, by checksum.
        self._fragments: dict[str, bytes] = {}
        self.encryption = encryption
        self.max_history = max_history
        self.integrity_check = integrity_check
        self.clock = clock
        self._lock = FileLock(self.layout.lock_path)

        self.records: dict[int, KeyRecord] = {}
        self.current: KeyRecord | None = None
        self.next_index = 0
        self.retired_fingerprints: set[str] = set()
        self._seen: set[str] = set()
        # The highest next index this object has seen: a store never goes
        # back, so a lower one means its files were taken away.
        self._high_water = 0
        # What readers in other threads see: replaced whole after each
        # load and commit, never changed in place.
        self.view = StoreView(None, {}, 0, None, self._open_retained)
        # Keys a restore found no intact copy of (see torro.store.restore).
        self.lost: dict[int, dict[str, Any]] = {}
        self.problem: IntegrityError | None = None
        self._loaded = False
        self._stale = True
        self._signature: tuple[Any, ...] = ()
        self._current_material: KeyMaterial | None = None

    # -- reading -------------------------------------------------------

    def is_empty(self) -> bool:
        """Tell whether the store holds nothing of a key ring yet."""
        return self.layout.is_empty()

    def load(self) -> None:
        """Read and verify the store without writing anything.

        A wrong master key raises :class:`MasterKeyError`. Integrity
        failures do not raise: the first one is kept in :attr:`problem`,
        and rotation refuses to run while it is set.
        """
        self._complete_swaps()
        # Without the lock, another process may rotate while this one
        # reads: read again until current.json and history.json held
        # still, so that half of one rotation is never judged a problem.
        for _ in range(READ_ATTEMPTS):
            signature = self._head_signature()
            found = self._reader.read(self.integrity_check)
            if self._head_signature() == signature:
                break
        if found.next_index < self._high_water and not found.problems:
            found.problems.append(IntegrityError(
                str(self.root),
                f"went back from next index {self._high_water} to "
                f"{found.next_index} while this process used it: its "
                "files were removed, moved or replaced by an older copy",
                "put the store back (torro keys restore, or from a backup "
                "of your own); rotation stays stopped until then",
            ))
        self._high_water = max(self._high_water, found.next_index)
        self.records = found.records
        self.current = found.current
        self.next_index = found.next_index
        self.retired_fingerprints = found.retired
        self.lost = found.lost
        self._seen = set(found.retired)
        self._seen.update(r.fingerprint for r in found.records.values())
        previous = self.problem
        self.problem = found.problems[0] if found.problems else None
        self._found = found
        self._current_material = None
        self._loaded = True
        self._stale = False
        self._signature = signature
        self._publish()
        # A damaged store is read again at every pass until it is fixed:
        # its problem is logged when it appears or changes, not each time.
        if self.problem is not None and (
            previous is None or str(previous) != str(self.problem)
        ):
            security_log.error(
                "key store integrity check failed: %s", self.problem
            )
        elif self.problem is None and previous is not None:
            security_log.warning(
                "key store integrity check passes again (was: %s)", previous
            )

    @property
    def needs_recovery(self) -> bool:
        return bool(self._loaded and self._found.repairs)

    @property
    def seen_fingerprints(self) -> set[str]:
        """Fingerprints of every key the store has held, retired included.

        Kept up to date rather than rebuilt, so that checking a new key
        against every key ever held costs one set lookup.
        """
        return self._seen

    def clock_problem(self, now: int | None = None) -> str | None:
        """Describe a current key dated in the future, or return None.

        A key made under a clock that was ahead, or read under one that
        jumped back, must not be rotated away before its time: rotation
        waits until the clock catches up.
        """
        return _clock_problem(
            self.current, self.clock() if now is None else now
        )

    def current_material(self) -> KeyMaterial:
        """Return the current key's material (opened once, then cached)."""
        if self.current is None:
            raise StoreError(
                f"{self.root} holds no key yet: run torro daemon rotate"
            )
        if self._current_material is None:
            self._current_material = self._reader.open_record(
                self.current_path, self.current
            )
        return self._current_material

    def _publish(self) -> None:
        """Replace :attr:`view` with one of the state just reached."""
        self.view = StoreView(
            current=self.current,
            records=dict(self.records),
            next_index=self.next_index,
            problem=self.problem,
            open_record=self._open_retained,
        )
        if self._current_material is not None and self.current is not None:
            self.view.remember(self.current.index, self._current_material)

    def _open_retained(self, record: KeyRecord) -> KeyMaterial:
        path = self.history_dir / record.file_name
        return self._reader.open_record(path, record)

    def material(self, index: int) -> KeyMaterial:
        """Return the material of a retained key by index."""
        record = self.records.get(index)
        if record is None:
            raise StoreError(self.unknown_index_message(index))
        if self.current is not None and index == self.current.index:
            return self.current_material()
        path = self.history_dir / record.file_name
        return self._reader.open_record(path, record)

    def unknown_index_message(self, index: int) -> str:
        if index < self.next_index and self.records:
            oldest = min(self.records)
            if index < oldest:
                return (
                    f"key {index} is not retained (the oldest retained "
                    f"key is {oldest}); torro keys history lists them"
                )
        return (
            f"no key with index {index}: indexes run from "
            f"{min(self.records, default=0)} to {self.next_index - 1}"
        )

    def changed_on_disk(self) -> bool:
        """Tell whether another process may have changed the store.

        A store with a problem counts as changed: it is read again until
        an operator has fixed it.
        """
        if self._stale or not self._loaded or self.problem is not None:
            return True
        if self._head_signature() != self._signature:
            return True
        pending = self.layout.record_path(self.next_index)
        return pending.exists()

    def invalidate(self) -> None:
        """Make the next :meth:`refresh` read the whole store again.

        For damage no file's name, size or time shows, such as a record
        edited in place.
        """
        self._stale = True

    def refresh(self) -> bool:
        """Reload the store if it changed on disk; tell whether it did."""
        if not self.changed_on_disk():
            return False
        self.load()
        return True

    def verify(
        self, progress: Callable[[int, int], None] | None = None
    ) -> list[IntegrityError]:
        """Check every record, open every key, and compare the backup.

        :param progress: called with (records checked, records to check)
            as each retained and archived record is opened.
        :returns: every problem found, the first bad record first.
        """
        self._complete_swaps()
        found = self._reader.read(checks=True)
        problems = list(found.problems)
        records = sorted(found.records.values(), key=_by_index)
        total = len(records) + len(self.layout.record_files(self.archive_dir))
        for done, record in enumerate(records, 1):
            if progress is not None:
                progress(done, total)
            path = self.history_dir / record.file_name
            try:
                material = self._reader.open_record(path, record)
            except IntegrityError as exc:
                problems.append(exc)
                continue
            if material.fingerprint != record.fingerprint:
                problems.append(IntegrityError(
                    str(path), "key does not match its fingerprint"
                ))
        for done, (_, _, problem) in enumerate(
            self._archived_records(), len(records) + 1
        ):
            if progress is not None:
                progress(done, total)
            if problem is not None:
                problems.append(problem)
        problems.extend(self._check_backup())
        clock_problem = _clock_problem(found.current, self.clock())
        if clock_problem is not None and not found.problems:
            problems.append(IntegrityError(
                str(self.current_path), clock_problem,
                "check the system clock",
            ))
        return problems

    def _archived_records(
        self,
    ) -> Iterator[tuple[int, KeyRecord | None, IntegrityError | None]]:
        """Yield each archived record, checked: checksum, seal, and each
        link between consecutive indexes (an imported chain has gaps).

        :returns: (index, record or None, problem or None) in index order.
        """
        previous: KeyRecord | None = None
        paths = self.layout.record_files(self.archive_dir)
        for index in sorted(paths):
            path = str(paths[index])
            try:
                data = files.read_file(paths[index])
                if data is None:
                    continue
                record = self._reader.parse(path, data, index)
                self._reader.verify_record(path, record)
                self._reader.open_record(path, record)
            except IntegrityError as exc:
                previous = None
                yield index, None, exc
                continue
            linked = previous is None or previous.index != index - 1 \
                or record.previous_checksum == previous.checksum
            previous = record
            yield index, record, None if linked else IntegrityError(
                path,
                f"does not chain to key-{index - 1}.json (an archived "
                "record was replaced)",
                "run torro keys restore",
            )

    # -- writing -------------------------------------------------------

    @contextlib.contextmanager
    def locked(self, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
        """Hold the store lock, with the store reloaded and repaired.

        Every write happens inside this block, and only one process at a
        time is inside it. The store is read again in full, so that what
        another process wrote, or damaged, since this one last looked is
        never written over.
        """
        if self.read_only:
            raise RuntimeError(f"the key store {self.root} is read-only here")
        # A swap cut short leaves no root, only its staging directory:
        # completed first, or an empty root would hide it.
        files.check_owner(self.root)
        self._complete_swaps()
        files.ensure_directory(self.root)
        with self._lock.hold(timeout):
            self.load()
            self.recover()
            yield

    def recover(self) -> None:
        """Repair what an interrupted write left behind (lock held)."""
        self._require_lock()
        found = self._found
        if found.problems:
            # Nothing is touched until an operator has looked.
            return
        for directory in (self.root, self.history_dir, self.backup_dir):
            for path in files.remove_temp_files(directory):
                system_log.info("removed leftover temporary file %s", path)
        self._tighten_modes()
        self._remove_incomplete_staging()
        if found.pending is not None or found.stale_current \
                or found.stale_history:
            self._finish_commit(found)
        for index in found.leftovers:
            path = self.layout.record_path(index)
            if files.destroy_file(path):
                log.info("removed key %d, beyond retention", index)
        if found.leftovers:
            files.sync_directory(self.history_dir)
        if self.current is not None:
            self._refresh_backup()
        found.repairs.clear()
        found.leftovers.clear()
        self._signature = self._head_signature()
        self._publish()

    def build_record(
        self,
        material: KeyMaterial,
        *,
        timestamp: int,
        algorithm: str,
        derived_from: int | None,
        index: int | None = None,
        previous_checksum: str | None = None,
        encryption: bool | None = None,
        chain_start: bool = False,
    ) -> KeyRecord:
        """Seal a key into the record that follows the current one."""
        if index is None:
            index = self.next_index
        if previous_checksum is None and not chain_start \
                and self.current is not None:
            previous_checksum = self.current.checksum
        seal = self.encryption if encryption is None else encryption
        if seal:
            key_text = self.sealer.seal(index, material)
        else:
            key_text = material.reveal_hex()
        record = KeyRecord(
            key_text=key_text,
            index=index,
            timestamp=timestamp,
            algorithm=algorithm,
            length=len(material),
            derived_from=derived_from,
            state=KeyState.ACTIVE,
            fingerprint=material.fingerprint,
            master_key_id=self.sealer.master_key_id,
            previous_checksum=previous_checksum,
        )
        checksum = self.sealer.checksum(record.checksum_payload())
        return dataclasses.replace(record, checksum=checksum)

    def commit(
        self,
        record: KeyRecord,
        material: KeyMaterial,
        *,
        remove: bool = True,
    ) -> list[int]:
        """Make ``record`` the current key, durably (lock held).

        Writes the record, then history.json and current.json, then the
        backup (not flushed: see :meth:`recover`), then removes the keys
        beyond retention. A write that fails before current.json names the
        record is undone and raises :class:`StoreError`; once it names
        it, the rotation has happened, and a failure of the backup or of
        a removal is only logged, for the next writer to complete.

        :param remove: destroy the files of the keys beyond retention;
            without it the caller calls :meth:`remove_records`.
        :returns: the indexes beyond retention.
        """
        self._require_lock()
        if self.problem is not None:
            raise self.problem
        if record.index != self.next_index:
            raise StoreError(
                f"record index {record.index} is not the next index "
                f"{self.next_index}"
            )
        records = dict(self.records)
        records[record.index] = record
        pruned = _beyond_retention(records, self.max_history)
        retired = set(self.retired_fingerprints)
        for index in pruned:
            retired.add(records.pop(index).fingerprint)
        history = self._history_bytes(
            records, record.index, record.index + 1, retired
        )
        record_bytes = record.to_json()

        # Each flush counts: history.json and current.json are flushed
        # under their temporary names after the record's rename, so the
        # same commit carries that rename and the directory flush after it
        # is cheap. The record is durable before anything names it.
        self._stale = True
        files.ensure_directory(self.history_dir)
        record_path = self.history_dir / record.file_name
        staged: list[Path] = []
        history_written = False
        try:
            files.write_file(record_path, record_bytes)
            staged.append(files.stage_file(self.history_path, history))
            staged.append(files.stage_file(self.current_path, record_bytes))
            files.sync_directory(self.history_dir)
            files.install_file(staged[0], self.history_path)
            history_written = True
            files.install_file(staged[1], self.current_path)
        except StoreError:
            # Until current.json names the record, a failed write leaves
            # the store as it was, so "nothing was changed" holds.
            self._undo_commit(record_path, staged, history_written)
            raise

        # The rotation has happened: what fails from here on is written
        # again, or removed, by the next writer.
        with self._warn_on_error("flush", self.root):
            files.sync_directory(self.root)
        self.records = records
        self.current = record
        self.next_index = record.index + 1
        self._high_water = max(self._high_water, self.next_index)
        self.retired_fingerprints = retired
        self._seen.add(record.fingerprint)
        self._current_material = material
        self._stale = False
        self._publish()
        with self._warn_on_error("back up", self.backup_dir):
            self._write_backup(record_bytes, history, durable=False)
        self._signature = self._head_signature()
        if remove:
            self.remove_records(pruned)
        return pruned

    def remove_records(self, indexes: list[int]) -> None:
        """Destroy the files of keys that history.json no longer lists.

        :meth:`commit` does it for the keys beyond retention, unless told
        to leave it to its caller.
        """
        for index in indexes:
            path = self.layout.record_path(index)
            with self._warn_on_error("remove", path):
                files.destroy_file(path)
                log.info("removed key %d, beyond retention of %d keys",
                         index, self.max_history)

    def _undo_commit(
        self, record_path: Path, staged: list[Path], history_written: bool
    ) -> None:
        # history.json first, so that nothing ever names a missing record.
        try:
            for temp in staged:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
            if history_written:
                if self.current is None:
                    os.unlink(self.history_path)
                else:
                    files.write_file(self.history_path, self._history_bytes(
                        self.records, self.current.index, self.next_index,
                        self.retired_fingerprints,
                    ))
                files.sync_directory(self.root)
            # out of sight first: a reader must not find it zeroed
            files.withdraw_file(record_path)
        except (StoreError, OSError) as exc:
            system_log.error(
                "could not undo the failed rotation (%s): the next writer "
                "completes it", exc,
            )

    @contextlib.contextmanager
    def _warn_on_error(self, action: str, path: Path) -> Iterator[None]:
        try:
            yield
        except StoreError as exc:
            system_log.warning(
                "rotated, but could not %s %s: %s; the next writer does it",
                action, path, exc,
            )

    def restore(self) -> "Restored":
        """Rebuild current.json and history.json from what survives.

        Lock held. The records, history.json, current.json and the backup
        are each verified under the master key, and the store is rebuilt
        from those that pass, by the rules of torro.store.restore: a
        missing or damaged record comes back from a spare copy when there
        is one, a key with no intact copy is reported lost, and files that
        do not fit are set aside in archive/, never deleted.

        :raises StoreError: when nothing opens under the master key.
        """
        self._require_lock()
        archive_set_aside = self._set_aside_damaged_archive()
        if self.problem is None and self.current is not None:
            return Restored(
                self.current, [], {}, [],
                archive_set_aside=archive_set_aside,
                changed=bool(archive_set_aside),
            )
        plan = plan_restore(
            self._intact_records(),
            self._intact_spares(),
            self._intact_listings(),
        )
        if plan is None:
            raise StoreError(
                f"nothing in {self.root} opens under the master key: no "
                "record, history.json or backup to rebuild from; restore "
                "the directory from a backup of your own, or start over "
                "with torro daemon reset"
            )

        files.ensure_directory(self.history_dir)
        rewritten = []
        for index, record in sorted(plan.copies.items()):
            path = self.layout.record_path(index)
            files.write_file(path, record.to_json())
            rewritten.append(str(path))
        set_aside = self._set_aside(
            index for index in self.layout.record_files()
            if index not in plan.kept and index >= plan.lowest
        )
        files.sync_directory(self.history_dir)
        current = plan.current
        history = self._history_bytes(
            plan.kept, current.index, plan.next_index, plan.retired,
            plan.lost,
        )
        current_bytes = current.to_json()
        files.write_file(self.history_path, history)
        files.write_file(self.current_path, current_bytes)
        files.sync_directory(self.root)
        self._write_backup(current_bytes, history, durable=True)
        rewritten += [str(self.history_path), str(self.current_path)]
        security_log.warning(
            "restored the key store %s: current key %d, %d keys kept, "
            "lost %s, set aside %s",
            self.root, current.index, len(plan.kept),
            sorted(plan.lost) or "none", set_aside or "none",
        )
        self._stale = True
        self.load()
        self.recover()
        if self.problem is not None:
            raise self.problem
        return Restored(
            current, rewritten, plan.lost, set_aside,
            archive_set_aside=archive_set_aside,
        )

    def _tighten_modes(self) -> None:
        """Make the store's directories 0700 again if someone opened them.
        """
        for directory in (self.root, self.history_dir, self.backup_dir,
                          self.archive_dir):
            try:
                mode = directory.stat().st_mode & 0o777
            except FileNotFoundError:
                continue
            if mode & 0o077:
                os.chmod(directory, files.DIR_MODE)
                security_log.warning(
                    "%s was open to group or others (mode %o): made it "
                    "0700 again", directory, mode,
                )

    def _intact_records(self) -> dict[int, KeyRecord]:
        intact = {}
        for index, path in self.layout.record_files().items():
            record = self._intact(path, index)
            if record is not None:
                intact[index] = record
        return intact

    def _intact_spares(self) -> list[KeyRecord]:
        spares = []
        for path in (self.current_path, self.backup_dir / "current.json"):
            record = self._intact(path, None)
            if record is not None:
                spares.append(record)
        # A record swapped or renamed into another's file is still an
        # intact copy of its own key.
        for index, path in self.layout.record_files().items():
            record = self._intact(path, None)
            if record is not None and record.index != index:
                spares.append(record)
        return spares

    def _intact_listings(self) -> list[dict[str, Any]]:
        listings = []
        for path in (self.history_path, self.backup_dir / "history.json"):
            data = files.read_file(path)
            if data is None:
                continue
            try:
                listings.append(self._reader.parse_history(str(path), data))
            except IntegrityError:
                continue
        return listings

    def _intact(self, path: Path, index: int | None) -> KeyRecord | None:
        """Return the record at ``path`` if it verifies and opens."""
        data = files.read_file(path)
        if data is None:
            return None
        try:
            record = self._reader.parse(str(path), data, index)
            self._reader.verify_record(str(path), record)
            self._reader.open_record(path, record)
        except IntegrityError:
            return None
        return record

    def _set_aside(
        self, indexes: Iterable[int], directory: Path | None = None
    ) -> list[int]:
        """Move record files out of the store's way, into archive/.

        :param directory: where the records are, history/ by default.
        """
        directory = directory or self.history_dir
        moved = []
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        for index in sorted(indexes):
            if not moved:
                files.ensure_directory(self.archive_dir)
            path = directory / f"key-{index}.json"
            target = self.archive_dir / f"set-aside-{stamp}-{path.name}"
            os.replace(path, target)
            moved.append(index)
        if moved:
            files.sync_directory(self.archive_dir)
        return moved

    def _set_aside_damaged_archive(self) -> list[int]:
        damaged = [
            index for index, _, problem in self._archived_records()
            if problem is not None
        ]
        if damaged:
            security_log.warning(
                "set aside damaged archived keys %s in %s", damaged,
                self.archive_dir,
            )
        return self._set_aside(damaged, self.archive_dir)

    def write_chain(
        self,
        entries: list[NewChainEntry],
        *,
        next_index: int,
        retired_fingerprints: Iterable[str] = (),
        archived: list[NewChainEntry] = (),
        replaced: Path | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """Replace the whole store with a new chain, atomically (lock held).

        The new store is built beside the old one and swapped in with two
        renames; a crash between them is completed by the next process to
        open the store. The old store moves to ``replaced``, or is
        destroyed when ``replaced`` is None.

        :param entries: the retained keys, oldest first; the last becomes
            current.
        :param archived: keys that go to archive/ instead of the history.
        :param progress: called with (keys written, keys to write).
        """
        self._require_lock()
        if not entries:
            raise StoreError("a new chain needs at least one key")
        self.layout.refuse_foreign_entries(
            "a reset or an import replaces the whole directory, so it must "
            "hold the key store alone; move them away, or point "
            "KEY_STORAGE_PATH at a directory of its own (nothing was "
            "changed)"
        )
        staging = self.layout.staging_path(self.root)
        history_staging = None
        if self.layout.external_history:
            history_staging = self.layout.staging_path(self.history_dir)
        if history_staging is not None:
            # Made before anything is staged, so that a build cut short
            # is never taken for a finished one (see _complete_swaps).
            files.ensure_directory(self.history_dir)
        for path in (staging, history_staging):
            if path is None or not os.path.lexists(path):
                continue
            if path.is_dir():
                files.destroy_tree(path)
            else:
                path.unlink()
        builder = KeyStore(
            staging,
            self.sealer,
            history_dir=history_staging,
            encryption=self.encryption,
            max_history=max(self.max_history, len(entries)),
            clock=self.clock,
        )
        builder._write_new_chain(
            entries, next_index, set(retired_fingerprints), archived,
            progress,
        )

        old = replaced or self.root.with_name(
            f"{self.root.name}.replaced-{int(time.time())}"
        )
        if history_staging is not None:
            os.rename(self.history_dir, old.with_name(old.name + "-history"))
            _finish_swap(history_staging, self.history_dir)
        os.rename(self.root, old)
        _finish_swap(staging, self.root)
        files.sync_directory(self.root.parent)
        if replaced is None:
            files.destroy_tree(old)
            if history_staging is not None:
                files.destroy_tree(old.with_name(old.name + "-history"))
        self._stale = True
        self.load()

    def _write_new_chain(
        self,
        entries: list[NewChainEntry],
        next_index: int,
        retired: set[str],
        archived: list[NewChainEntry],
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        for directory in (self.root, self.history_dir, self.backup_dir):
            files.ensure_directory(directory)
        total = len(archived) + len(entries)
        previous: str | None = None
        if archived:
            files.ensure_directory(self.archive_dir)
            for done, entry in enumerate(archived, 1):
                record = self._entry_record(entry, previous)
                files.write_file(
                    self.archive_dir / record.file_name, record.to_json()
                )
                previous = record.checksum
                retired.add(record.fingerprint)
                if progress is not None:
                    progress(done, total)
            files.sync_directory(self.archive_dir)
        records: dict[int, KeyRecord] = {}
        for done, entry in enumerate(entries, len(archived) + 1):
            record = self._entry_record(entry, previous)
            files.write_file(
                self.history_dir / record.file_name, record.to_json()
            )
            records[record.index] = record
            previous = record.checksum
            if progress is not None:
                progress(done, total)
        files.sync_directory(self.history_dir)
        current = records[entries[-1].index]
        history = self._history_bytes(
            records, current.index, next_index, retired
        )
        current_bytes = current.to_json()
        files.write_file(self.history_path, history)
        files.write_file(self.current_path, current_bytes)
        self._write_backup(current_bytes, history, durable=True)
        files.sync_directory(self.root)

    def _entry_record(
        self, entry: NewChainEntry, previous: str | None
    ) -> KeyRecord:
        return self.build_record(
            entry.material,
            index=entry.index,
            timestamp=entry.timestamp,
            algorithm=entry.algorithm,
            derived_from=entry.derived_from,
            previous_checksum=previous,
            chain_start=previous is None,
        )

    def archive_path(self) -> Path:
        """Return a new name beside the store for an archived store."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        path = self.root.with_name(f"{self.root.name}.archive-{stamp}")
        counter = 1
        while path.exists():
            counter += 1
            path = self.root.with_name(
                f"{self.root.name}.archive-{stamp}-{counter}"
            )
        return path

    # -- internals -----------------------------------------------------

    def _require_lock(self) -> None:
        if not self._lock.held:
            raise RuntimeError("the store lock must be held to write")

    def indexes_on_disk(self) -> list[int]:
        """Return the index of every record file, retained or archived."""
        indexes = set(self.layout.record_files())
        indexes.update(self.layout.record_files(self.archive_dir))
        return sorted(indexes)

    def _head_signature(self) -> tuple[Any, ...]:
        signature = []
        for path in (self.current_path, self.history_path):
            try:
                stat = os.stat(path)
            except FileNotFoundError:
                signature.append(None)
            else:
                signature.append(
                    (stat.st_ino, stat.st_mtime_ns, stat.st_size)
                )
        return tuple(signature)

    def _history_bytes(
        self,
        records: dict[int, KeyRecord],
        current: int,
        next_index: int,
        retired: set[str],
        lost: dict[int, dict[str, Any]] | None = None,
    ) -> bytes:
        """Return history.json: its canonical JSON, checksum first.

        The file is the very text the checksum covers, so it is built once
        from each record's metadata, serialised when the record was first
        seen, rather than from a fresh document every rotation.
        """
        fragments = {}
        for index in sorted(records):
            record = records[index]
            fragment = self._fragments.get(record.checksum)
            if fragment is None:
                fragment = canonical_json(record.metadata())
            fragments[record.checksum] = fragment
        self._fragments = fragments
        # canonical_json of the document: keys sorted, no spaces.
        payload = b"".join((
            b'{"current":%d,"format":%d,"keys":[' % (current, HISTORY_FORMAT),
            b",".join(fragments.values()),
            b'],"lostKeys":',
            canonical_json([
                entry for _, entry in sorted((lost or self.lost).items())
            ]),
            b',"masterKeyId":', canonical_json(self.sealer.master_key_id),
            b',"nextIndex":%d,"retiredFingerprints":' % next_index,
            canonical_json(sorted(retired)),
            b"}",
        ))
        checksum = self.sealer.checksum(payload)
        return b'{"checksum":"%s",%s\n' % (checksum.encode(), payload[1:])

    def _finish_commit(self, found: Snapshot) -> None:
        current = found.current
        assert current is not None
        # The rotation that wrote an adopted record would have pruned.
        for index in _beyond_retention(self.records, self.max_history):
            record = self.records.pop(index)
            self.retired_fingerprints.add(record.fingerprint)
            found.leftovers.append(index)
        history = self._history_bytes(
            self.records, current.index, self.next_index,
            self.retired_fingerprints,
        )
        system_log.warning(
            "completing an interrupted rotation: key %d is current",
            current.index,
        )
        files.write_file(self.history_path, history)
        files.write_file(self.current_path, current.to_json())
        files.sync_directory(self.root)
        found.pending = None
        found.stale_current = found.stale_history = False

    def _write_backup(
        self, current: bytes, history: bytes, *, durable: bool
    ) -> None:
        files.ensure_directory(self.backup_dir)
        files.write_file(
            self.backup_dir / "current.json", current, durable=durable
        )
        files.write_file(
            self.backup_dir / "history.json", history, durable=durable
        )
        if durable:
            files.sync_directory(self.backup_dir)

    def _refresh_backup(self) -> None:
        current = files.read_file(self.current_path)
        history = files.read_file(self.history_path)
        if current is None or history is None:
            return
        if files.read_file(self.backup_dir / "current.json") == current \
                and files.read_file(self.backup_dir / "history.json") \
                == history:
            return
        self._write_backup(current, history, durable=True)
        system_log.info("refreshed the backup in %s", self.backup_dir)

    def _check_backup(self) -> list[IntegrityError]:
        """Check the backup copies: present, and intact when they differ.

        A copy one rotation behind is no problem (the next start or
        rotation writes it again); a damaged or missing one is.
        """
        problems = []
        for original in (self.current_path, self.history_path):
            name = original.name
            path = self.backup_dir / name
            backup = files.read_file(path)
            if backup is None:
                problems.append(IntegrityError(
                    str(path), "missing",
                    "the next rotation or start writes it again",
                ))
            elif backup != files.read_file(original) \
                    and not self._intact_copy(path, backup):
                problems.append(IntegrityError(
                    str(path), "damaged",
                    "the next rotation or start writes it again",
                ))
        return problems

    def _intact_copy(self, path: Path, data: bytes) -> bool:
        try:
            if path.name == "history.json":
                self._reader.parse_history(str(path), data)
            else:
                record = self._reader.parse(str(path), data, None)
                self._reader.verify_record(str(path), record)
        except IntegrityError:
            return False
        return True

    def _complete_swaps(self) -> None:
        # A store is swapped in by renaming it over from its staging name;
        # a staging directory whose target is gone is complete.
        if self.read_only:
            return
        for target in (self.history_dir, self.root):
            staging = self.layout.staging_path(target)
            if not target.exists() and staging.is_dir():
                with contextlib.suppress(FileNotFoundError):
                    os.rename(staging, target)
                    system_log.warning(
                        "completed an interrupted swap of %s", target
                    )

    def _remove_incomplete_staging(self) -> None:
        for target in (self.root, self.history_dir):
            staging = self.layout.staging_path(target)
            if target.exists() and staging.is_dir():
                files.destroy_tree(staging)
                system_log.warning(
                    "removed %s, left by an interrupted reset or import",
                    staging,
                )


def _clock_problem(current: KeyRecord | None, now: int) -> str | None:
    if current is None:
        return None
    ahead = current.timestamp - now
    if ahead <= CLOCK_SKEW_ALLOWANCE_MS:
        return None
    return (
        f"the current key (index {current.index}) is dated "
        f"{ahead // 1000} s in the future: the clock is behind; rotation "
        "waits until it catches up"
    )


def _finish_swap(staging: Path, target: Path) -> None:
    # A reader that found the target gone may have completed the swap.
    try:
        os.rename(staging, target)
    except FileNotFoundError:
        if not target.is_dir():
            raise StoreError(
                f"{staging} vanished while it was renamed to {target}"
            ) from None


def _by_index(record: KeyRecord) -> int:
    return record.index


def _beyond_retention(
    records: dict[int, KeyRecord], max_history: int
) -> list[int]:
    indexes = sorted(records)
    return indexes[: max(0, len(indexes) - max_history)]
