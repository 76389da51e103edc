"""Read a key store from disk and judge what it finds.

:class:`StoreReader` reads the files of a key store without writing
anything, checks each record's checksum, seal and place in the chain, and
compares history.json and current.json with the records. What it finds is
a :class:`Snapshot`: the records that check out, the problems (integrity
failures, first bad file first), and the repairs an interrupted write left
for the next writer. Deciding to repair is the key store's job.
"""

import dataclasses
import json
from pathlib import Path
from typing import Any

from torro.errors import IntegrityError, MasterKeyError
from torro.material import KeyMaterial
from torro.sealing import InvalidSeal, Sealer
from torro.store import files
from torro.store.layout import StoreLayout
from torro.store.records import (
    KeyRecord,
    KeyState,
    RecordError,
    canonical_json,
    parse_record,
)


@dataclasses.dataclass
class Snapshot:
    """What one read of the store found, before any repair.

    :param pending: a record at the next index that history.json does
        not name yet (an interrupted rotation), to adopt.
    :param stale_current: current.json is one rotation behind.
    :param stale_history: history.json is one rotation behind.
    :param leftovers: indexes below the oldest retained key, to remove.
    :param lost: keys a restore found no intact copy of, by index, with
        their checksum and fingerprint.
    """

    records: dict[int, KeyRecord]
    current: KeyRecord | None
    next_index: int
    retired: set[str]
    problems: list[IntegrityError]
    repairs: list[str]
    pending: KeyRecord | None = None
    stale_current: bool = False
    stale_history: bool = False
    leftovers: list[int] = dataclasses.field(default_factory=list)
    lost: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)


class StoreReader:
    """Read one key store's files and judge them under a master key."""

    def __init__(self, layout: StoreLayout, sealer: Sealer) -> None:
        self.layout = layout
        self.sealer = sealer

    def read(self, checks: bool = True) -> Snapshot:
        """Read the store and find its problems and the repairs it needs.

        :param checks: check the chain links and history.json against
            the records; each record's own checksum is always checked.
        """
        found = Snapshot({}, None, 0, set(), [], [])
        current_data = files.read_file(self.layout.current_path)
        history_data = files.read_file(self.layout.history_path)
        paths = self.layout.record_files()

        if current_data is None and history_data is None and not paths:
            if self.layout.has_backup():
                found.problems.append(IntegrityError(
                    str(self.layout.current_path),
                    "missing, with history.json and every record, while "
                    "backup/ still holds a store",
                    "run torro keys restore",
                ))
            return found

        # The master key is checked first, on the current record when
        # there is one, so that a wrong one stops everything before any
        # other check or any write.
        if _master_key_id(current_data) is None:
            self._check_store_master_key(history_data, paths)
        if current_data is not None:
            path = str(self.layout.current_path)
            try:
                current = self.parse(path, current_data, None)
                if current.master_key_id != self.sealer.master_key_id \
                        and self._verifies_elsewhere(history_data, paths):
                    # the master key is right: current.json is wrong
                    raise IntegrityError(
                        path,
                        f"names master key id {current.master_key_id}, not "
                        "the one that wrote the rest of the store (the "
                        "record was edited or replaced)",
                        "run torro keys restore",
                    )
                self.check_master_key(path, current)
                self.verify_record(path, current)
                self.open_record(path, current)
                found.current = current
            except IntegrityError as exc:
                found.problems.append(exc)

        history = None
        if history_data is not None:
            try:
                history = self.parse_history(
                    str(self.layout.history_path), history_data
                )
            except IntegrityError as exc:
                found.problems.append(exc)

        # Below the oldest key history.json lists, a record is a leftover
        # of an interrupted removal, maybe already zeroed: never read.
        floor = min(history["keys"]) if history is not None else None
        previous: KeyRecord | None = None
        for index in sorted(paths):
            path = str(paths[index])
            if floor is not None and index < floor:
                if index in history["lost"]:
                    found.problems.append(_came_back(path, index))
                else:
                    found.leftovers.append(index)
                continue
            if previous is not None and previous.index != index - 1:
                # A gap: history.json names the missing record.
                previous = None
            try:
                data = files.read_file(path)
                if data is None:
                    continue
                record = self.parse(path, data, index)
                if record.master_key_id != self.sealer.master_key_id:
                    raise IntegrityError(
                        path,
                        f"sealed under another master key (id "
                        f"{record.master_key_id})",
                        "run torro keys restore",
                    )
                # A record's own checksum is always verified: any record may
                # become current by adoption.
                self.verify_record(path, record)
                if checks:
                    _check_link(path, record, previous)
            except IntegrityError as exc:
                found.problems.append(exc)
                previous = None
                continue
            found.records[index] = record
            previous = record

        if history is None:
            self._judge_without_history(found, history_data is None)
        else:
            self._judge_with_history(found, history, checks)
        return found

    def _check_store_master_key(
        self, history_data: bytes | None, paths: dict[int, Path]
    ) -> None:
        """Refuse a master key that wrote none of the store's main files.

        For a store whose current.json is missing or damaged. A damaged
        file says nothing and is left to the integrity checks; but when
        every file that names a master key names another one, the key is
        wrong, not the store.
        """
        candidates = [history_data]
        candidates.append(files.read_file(self.layout.backup_dir
                                          / "current.json"))
        if paths:
            candidates.append(files.read_file(paths[max(paths)]))
        named = set()
        for data in candidates:
            key_id = _master_key_id(data)
            if key_id is not None:
                named.add(key_id)
        if named and self.sealer.master_key_id not in named:
            raise MasterKeyError(
                f"the master key (id {self.sealer.master_key_id}) did not "
                f"write the key store {self.layout.root} (its files name id "
                f"{', '.join(sorted(named))}): set KEY_DAEMON_MASTER_KEY_FILE"
                " or KEY_DAEMON_MASTER_KEY to this store's master key; "
                "nothing was changed"
            )

    def _verifies_elsewhere(
        self, history_data: bytes | None, paths: dict[int, Path]
    ) -> bool:
        """Tell whether history.json or a record verifies under the
        master key: proof that the key is this store's, so that a
        current.json naming another one was damaged, not the key."""
        if history_data is not None:
            try:
                self.parse_history(
                    str(self.layout.history_path), history_data
                )
                return True
            except IntegrityError:
                pass
        for index in sorted(paths, reverse=True):
            data = files.read_file(paths[index])
            if data is None:
                continue
            try:
                record = self.parse(str(paths[index]), data, None)
                self.verify_record(str(paths[index]), record)
            except IntegrityError:
                continue
            if record.master_key_id == self.sealer.master_key_id:
                return True
        return False

    def _judge_without_history(
        self, found: Snapshot, missing: bool
    ) -> None:
        # Only the first write of a new chain can leave records and no
        # history.json: one record that starts a chain.
        records = found.records
        if missing and found.current is None and len(records) == 1:
            record = next(iter(records.values()))
            if record.previous_checksum is None:
                found.pending = found.current = record
                found.next_index = record.index + 1
                found.repairs.append(f"make key {record.index} current")
                return
        if missing and not found.problems:
            found.problems.append(IntegrityError(
                str(self.layout.history_path), "missing",
                "run torro keys restore",
            ))
        found.next_index = max(records, default=-1) + 1

    def _judge_with_history(
        self, found: Snapshot, history: dict[str, Any], checks: bool
    ) -> None:
        listed: dict[int, str] = history["keys"]
        head = history["current"]
        found.next_index = history["nextIndex"]
        found.retired = set(history["retiredFingerprints"])
        found.lost = history["lost"]
        records = found.records
        on_disk = set(records)
        bad_paths = {problem.path for problem in found.problems}
        missing = [
            index for index in sorted(listed)
            if index not in on_disk
            and str(self.layout.record_path(index)) not in bad_paths
        ]

        # Records history.json does not list (leftovers below it are
        # already set aside): the one at the next index, chained to the
        # current key, is an interrupted rotation; later ones that chain
        # on mean history.json is older than the records.
        newer = []
        for index in sorted(on_disk - set(listed)):
            record = records.pop(index)
            if index == found.next_index \
                    and record.previous_checksum == listed[head]:
                found.pending = record
            elif index > found.next_index and index - 1 in on_disk:
                newer.append(index)
            elif index in found.lost:
                found.problems.append(_came_back(
                    str(self.layout.record_path(index)), index
                ))
            else:
                found.problems.append(IntegrityError(
                    str(self.layout.history_dir / record.file_name),
                    "not listed in history.json",
                    "run torro keys restore",
                ))
        older = None
        if newer:
            older = f"does not list key {newer[-1]}"
        elif missing and found.pending is not None:
            older = (
                f"lists key {missing[0]}, which is gone, and not key "
                f"{found.pending.index}"
            )
        if older is not None:
            found.problems.append(IntegrityError(
                str(self.layout.history_path),
                f"{older} (an older copy of history.json)",
                "run torro keys restore",
            ))
            return
        if found.leftovers:
            found.repairs.append("remove keys beyond retention")

        for index in missing:
            found.problems.append(IntegrityError(
                str(self.layout.history_dir / f"key-{index}.json"),
                "missing; history.json lists it",
                "run torro keys restore",
            ))
        for index, checksum in sorted(listed.items()):
            record = records.get(index)
            if record is not None and checks \
                    and record.checksum != checksum:
                found.problems.append(IntegrityError(
                    str(self.layout.history_dir / record.file_name),
                    "is not the record history.json lists (replaced or "
                    "replayed)",
                    "run torro keys restore",
                ))

        newest = found.pending or records.get(head)
        current = found.current
        if current is None and newest is not None and not found.problems \
                and newest.previous_checksum is None:
            # The first rotation of a chain stopped before current.json.
            found.stale_current = True
        elif newest is None or current is None:
            if not found.problems:
                found.problems.append(IntegrityError(
                    str(self.layout.current_path), "missing or unreadable",
                    "run torro keys restore",
                ))
            return
        elif current.checksum == newest.checksum:
            found.stale_history = found.pending is not None
        elif newest.previous_checksum == current.checksum or (
            found.pending is not None
            and current.checksum == listed[head]
        ):
            # current.json is one rotation behind: the crash came after
            # the record, and maybe history.json, were written.
            found.stale_current = True
        elif current.index > newest.index:
            found.problems.append(IntegrityError(
                str(self.layout.history_path),
                f"names key {head} as current but current.json holds key "
                f"{current.index} (an older copy of history.json)",
                "run torro keys restore",
            ))
            return
        else:
            found.problems.append(IntegrityError(
                str(self.layout.current_path),
                f"holds key {current.index}, which is not the newest "
                f"record, key {newest.index} (replaced or replayed)",
                "run torro keys restore",
            ))
            return
        if found.pending is not None or found.stale_current:
            found.repairs.append(f"make key {newest.index} current")
        if found.pending is not None:
            records[newest.index] = newest
            found.next_index = newest.index + 1
        found.current = newest

    def parse(
        self, path: str, data: bytes, index: int | None
    ) -> KeyRecord:
        """Parse a record, checking its index against its file name."""
        try:
            record = parse_record(data)
        except RecordError as exc:
            raise IntegrityError(
                str(path), f"not a key record: {exc}",
                "run torro keys restore",
            ) from None
        if index is not None and record.index != index:
            raise IntegrityError(
                str(path),
                f"holds key {record.index}, not key {index} (records were "
                "swapped or renamed)",
                "run torro keys restore",
            )
        if record.state is not KeyState.ACTIVE:
            raise IntegrityError(
                str(path), f"state {record.state} is not supported yet"
            )
        return record

    def check_master_key(self, path: str, record: KeyRecord) -> None:
        if record.master_key_id != self.sealer.master_key_id:
            raise MasterKeyError(
                f"the master key (id {self.sealer.master_key_id}) is not "
                f"the one that sealed {path} (id {record.master_key_id}): "
                "set KEY_DAEMON_MASTER_KEY_FILE or KEY_DAEMON_MASTER_KEY to "
                "this store's master key; nothing was changed"
            )

    def verify_record(self, path: str, record: KeyRecord) -> None:
        if not self.sealer.checksum_matches(
            record.checksum_payload(), record.checksum
        ):
            raise IntegrityError(
                str(path), "checksum does not match (the record was edited)",
                "run torro keys restore",
            )

    def open_record(
        self, path: Path | str, record: KeyRecord
    ) -> KeyMaterial:
        """Return a record's key material, unsealed if it is sealed."""
        if record.sealed:
            try:
                material = self.sealer.open(record.index, record.key_text)
            except InvalidSeal as exc:
                raise IntegrityError(
                    str(path), str(exc), "run torro keys restore"
                ) from None
        else:
            try:
                material = KeyMaterial.from_hex(record.key_text)
            except ValueError:
                raise IntegrityError(
                    str(path), "key is not lowercase hex",
                    "run torro keys restore",
                ) from None
        if len(material) != record.length:
            raise IntegrityError(
                str(path),
                f"key is {len(material)} bytes, the record says "
                f"{record.length}",
            )
        return material

    def parse_history(self, path: str, data: bytes) -> dict[str, Any]:
        """Parse and verify history.json; return what the store needs."""
        def bad(reason: str) -> IntegrityError:
            return IntegrityError(
                str(path), reason,
                "run torro keys restore",
            )

        try:
            document = json.loads(data)
        except (UnicodeDecodeError, ValueError):
            raise bad("not valid JSON") from None
        if not isinstance(document, dict):
            raise bad("not a JSON object")
        checksum = document.pop("checksum", None)
        if not isinstance(checksum, str):
            raise bad("checksum is missing")
        master_key_id = document.get("masterKeyId")
        if master_key_id != self.sealer.master_key_id:
            raise bad(
                f"written under another master key (id {master_key_id})"
            )
        if not self.sealer.checksum_matches(
            canonical_json(document), checksum
        ):
            raise bad("checksum does not match (the file was edited)")
        try:
            keys = {
                entry["index"]: entry["checksum"]
                for entry in document["keys"]
            }
            fingerprints = {
                entry["index"]: entry["fingerprint"]
                for entry in document["keys"]
            }
            lost = {
                entry["index"]: entry
                for entry in document.get("lostKeys", [])
            }
            current = document["current"]
            next_index = document["nextIndex"]
            retired = document["retiredFingerprints"]
        except (KeyError, TypeError):
            raise bad("not a history document") from None
        if not keys or current not in keys or next_index <= max(keys):
            raise bad("names no current key, or a wrong next index")
        return {
            "keys": keys,
            "fingerprints": fingerprints,
            "lost": lost,
            "current": current,
            "nextIndex": next_index,
            "retiredFingerprints": retired,
        }


def _came_back(path: str, index: int) -> IntegrityError:
    return IntegrityError(
        path,
        f"holds key {index}, which torro keys restore reported lost",
        "run torro keys restore to take it back",
    )


def _master_key_id(data: bytes | None) -> str | None:
    if data is None:
        return None
    try:
        document = json.loads(data)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    key_id = document.get("masterKeyId")
    return key_id if isinstance(key_id, str) else None


def _check_link(
    path: str, record: KeyRecord, previous: KeyRecord | None
) -> None:
    if previous is None:
        return
    if record.previous_checksum != previous.checksum:
        raise IntegrityError(
            path,
            f"does not chain to key-{previous.index}.json (a record "
            "between them was removed, or one was replaced)",
            "run torro keys restore",
        )
    if record.timestamp < previous.timestamp:
        raise IntegrityError(
            path,
            f"is dated before key-{previous.index}.json",
            "run torro keys restore",
        )
