"""Rewrap a key store: seal every record again under a new master key.

The master key is in every record twice: the sealing subkey encrypts the
key material, and the checksum subkey signs the record (its checksum also
covers the previous record's checksum, which chains them). A rewrap
therefore writes every record again: the material is opened under the
old master key and sealed under the new one, ``masterKeyId`` becomes the
new key's id, and the checksums are computed again along the chain.
Unsealed records (made with KEY_DAEMON_ENCRYPTION off) stay unsealed:
only their checksums change. Indexes, timestamps, fingerprints, the
retired fingerprints and the next index do not change, so licenses
signed before still verify.

Crash safety comes from never editing the store in place. The rewrap:

1. builds a complete copy of the store under the new master key beside
   it, in ``<store>.staging`` (and ``<history>.staging`` for a history
   directory outside the store): retained records, archived records,
   records set aside by a restore, current.json, history.json and the
   backup, each written and flushed, then checked under the new key;
2. writes the journal ``<store>.rewrap.json`` beside the store, holding
   the ids of both master keys (never a key): from here the rewrap is
   decided and only ever finishes;
3. swaps the copy in with renames: the store to ``<store>.rewrap-old``,
   the copy to the store's name (the history directory first, when it
   lives elsewhere);
4. when the master key came from the default ``<store>.master-key``,
   replaces that file with the new key, keeping the old one as
   ``<store>.master-key.old-<old key id>``;
5. destroys ``<store>.rewrap-old`` (files overwritten, then removed) and
   marks the journal finished; it stays as the record of the last
   rewrap (times and key ids, no secret).

A crash before the journal leaves the store as it was, under the old
key; the copy is removed by the next writer or the next rewrap. A crash
after it leaves every record under exactly one of the two keys, and
every other command refuses the store, naming the journal, until
``torro keys rewrap`` runs again with the same new key file and
finishes. Running it again after it finished changes nothing; the
finished journal tells that run apart from a mistaken rewrap to the key
the store is sealed under already. A journal that exists but cannot be
read (its mode, its owner) or is no journal stops every command too,
named with the reason: without it, nobody can tell whether a rewrap is
unfinished.

The rewrap refuses to run while the daemon runs (KEY_DAEMON_PID_FILE): a
running daemon holds the old master key and could not read the store
after the swap. It holds the store lock while it reads, copies and swaps,
so no other writer works meanwhile; one that was waiting for the lock
then stops, saying the master key does not open the store, and one that
comes later is refused by the journal until the rewrap is finished.
A second rewrap of the same store is refused through
``<store>.rewrap.lock``, held for the whole run.

``TORRO_REWRAP_KILL_AT=N`` is a testing hook: the process kills itself
(SIGKILL) after the Nth step of the rewrap, so that the tests can stop
it at every step in turn.
"""

import contextlib
import dataclasses
import json
import logging
import os
import re
import signal
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torro import logs, process
from torro.config import Settings
from torro.errors import (
    DaemonError,
    LockTimeout,
    MasterKeyError,
    StoreError,
)
from torro.locks import FileLock
from torro.material import KeyMaterial
from torro.sealing import (
    MASTER_KEY_FILE_LIMIT,
    MasterKey,
    Sealer,
    default_master_key_path,
    read_master_key_file,
    resolve_master_key,
    write_master_key_file,
)
from torro.store import files
from torro.store.keystore import LOCK_TIMEOUT, KeyStore
from torro.store.layout import RECORD_NAME, StoreLayout
from torro.store.reader import StoreReader
from torro.store.records import KeyRecord, RecordError, parse_record


JOURNAL_FORMAT = 1
# The journal's state: the copy is complete and is being swapped in, or
# the whole rewrap is done.
SWAPPING = "swapping"
FINISHED = "finished"
KILL_AT_VARIABLE = "TORRO_REWRAP_KILL_AT"
# The name restore gives a record it sets aside in archive/.
SET_ASIDE_NAME = re.compile(r"set-aside-[0-9A-Z]+-key-(0|[1-9][0-9]*)\.json")
# A clock past every key's date: the copy is judged on its files alone.
_FAR_FUTURE_MS = 2**62
# A journal is a few hundred bytes; anything far larger is not one.
_JOURNAL_LIMIT = 64 * 1024

Progress = Callable[[int, int], None]

security_log = logging.getLogger(logs.SECURITY)
system_log = logging.getLogger(logs.SYSTEM)


@dataclasses.dataclass(frozen=True)
class RewrapResult:
    """What a rewrap did.

    :param old_key_id: the master key the store was sealed under; None
        when the store already was under the new one and nothing was done.
    :param new_key_id: the master key it is sealed under now.
    :param retained: retained keys written again.
    :param archived: archived keys (archive/key-N.json) written again.
    :param set_aside: records set aside by a restore written again.
    :param unsealed: records stored unsealed (KEY_DAEMON_ENCRYPTION was
        off when they were made): checksummed again, still unsealed.
    :param resumed: this run finished a rewrap a crash interrupted.
    :param default_key_file: the default master key file, replaced with
        the new key; None when the master key came from the settings.
    :param old_key_copy: where the old key of the default file is kept.
    """

    old_key_id: str | None
    new_key_id: str
    retained: int = 0
    archived: int = 0
    set_aside: int = 0
    unsealed: int = 0
    resumed: bool = False
    default_key_file: Path | None = None
    old_key_copy: Path | None = None

    @property
    def changed(self) -> bool:
        return self.old_key_id is not None


@dataclasses.dataclass(frozen=True)
class _Item:
    """One record file to write again: where it goes, and its content."""

    place: str
    name: str
    record: KeyRecord
    material: KeyMaterial


def journal_path(root: Path) -> Path:
    """Return where the journal of a rewrap of ``root`` is kept."""
    return root.with_name(f"{root.name}.rewrap.json")


def old_store_path(directory: Path) -> Path:
    """Return where a rewrap moves the old ``directory`` before it goes.
    """
    return directory.with_name(f"{directory.name}.rewrap-old")


def refuse_unfinished(root: Path) -> None:
    """Refuse a key store whose rewrap a crash interrupted.

    Called by every command that opens the store: until the rewrap is
    finished, its records are under two master keys.

    :raises StoreError: naming the journal and the command that finishes;
        or the journal cannot be read, so nobody can tell.
    """
    path = journal_path(root)
    document = read_journal(path)
    if document is None or document["state"] == FINISHED:
        return
    raise StoreError(
        f"the key store {root} is in the middle of a master key rewrap "
        f"({path}): run torro keys rewrap --new-master-key-file with the "
        f"file holding the new master key (id "
        f"{document['newMasterKeyId']}) to finish it"
    )


def read_journal(path: Path) -> dict[str, Any] | None:
    """Return the rewrap journal in ``path``; None when there is none.

    A journal that exists but cannot be read, or is not one, is an
    error: whether a rewrap is unfinished cannot be told without it.

    :raises StoreError: naming the journal, why, and what to do.
    """
    data = _read_journal_bytes(path)
    if data is None:
        return None
    try:
        document = json.loads(data)
    except ValueError:
        document = None
    if not isinstance(document, dict) \
            or document.get("state") not in (SWAPPING, FINISHED) \
            or not isinstance(document.get("newMasterKeyId"), str):
        raise StoreError(
            f"{path} is not a rewrap journal: it was damaged; check "
            "whether the store's files name the old or the new master key "
            "id (masterKeyId) and restore them from a backup"
        )
    return document


def _read_journal_bytes(path: Path) -> bytes | None:
    """Return the content of the journal file; None when there is none.

    Read with the store's own precautions (:func:`files.read_bounded`),
    but with messages about the journal.
    """
    try:
        return files.read_bounded(path, _JOURNAL_LIMIT)
    except files.NotARegularFile as exc:
        if exc.what == "too large":
            return b""  # not a journal: reported as damaged
        raise _journal_not_a_file(path, exc.what) from None
    except OSError as exc:
        if not os.path.lexists(path):
            # No journal can be seen there (a name too long, a directory
            # that cannot be searched): the store's own checks say why.
            return None
        raise _journal_unreadable(path, exc) from None


def _journal_unreadable(path: Path, exc: OSError) -> StoreError:
    return StoreError(
        f"cannot read the master key rewrap journal {path}: "
        f"{exc.strerror}; check its owner and mode (torro must read it to "
        "tell whether a rewrap of the key store is finished)"
    )


def _journal_not_a_file(path: Path, what: str) -> StoreError:
    return StoreError(
        f"cannot read the master key rewrap journal {path}: it is {what}, "
        "not a file; torro keys rewrap only ever writes a file there, so "
        "move it away"
    )


def rewrap(
    settings: Settings,
    new_key_file: Path,
    *,
    progress: Progress | None = None,
) -> RewrapResult:
    """Seal every record of the store again under the key in a file.

    See the module docstring for the steps and what a crash leaves.

    :param settings: where the store is and which master key opens it.
    :param new_key_file: the new master key, 64 hex characters, mode 0400
        or 0600, outside the store.
    :param progress: called with (records written, records to write).
    :raises MasterKeyError: the new key file cannot be used, or holds the
        key the store is sealed under already.
    :raises DaemonError: the daemon runs.
    :raises StoreError: the store does not verify, holds files that are
        not the key store's, or cannot be written.
    """
    return _Rewrap(settings, new_key_file, progress).run()


class _Rewrap:
    """One run of ``torro keys rewrap``."""

    def __init__(
        self,
        settings: Settings,
        new_key_file: Path,
        progress: Progress | None,
    ) -> None:
        self.settings = settings
        self.new_key_file = new_key_file
        self.progress = progress
        self.layout = StoreLayout(
            settings.storage_path, settings.history_dir
        )
        self.root = self.layout.root
        self.journal = journal_path(self.root)
        self.targets = [self.root]
        if self.layout.external_history:
            # the history directory first, as a reset swaps them
            self.targets.insert(0, self.layout.history_dir)
        self.default_key_file: Path | None = None
        if settings.master_key is None and settings.master_key_file is None:
            self.default_key_file = default_master_key_path(self.root)
        self._journal: dict[str, Any] = {}
        self._steps = 0
        self._kill_at = _kill_at()

    # -- the run -----------------------------------------------------

    def run(self) -> RewrapResult:
        new = self._read_new_key()
        self._refuse_running_daemon()
        # before the lock file and the copy are made beside the store
        files.check_owner(self.root)
        lock = FileLock(
            self.root.with_name(f"{self.root.name}.rewrap.lock")
        )
        try:
            lock.acquire(0)
        except LockTimeout:
            raise StoreError(
                f"another torro keys rewrap is running on {self.root}: "
                "wait for it to finish"
            ) from None
        try:
            self._remove_own_temp_files()
            journal = self._read_journal()
            if journal is not None and journal.get("state") != FINISHED:
                return self._resume(journal, new)
            if self._store_key_id() == new.key_id:
                done = journal is not None \
                    and journal.get("newMasterKeyId") == new.key_id
                if not done:
                    self._refuse_current_key(new)
                self._check_sealed_under(new, swapped=False)
                return RewrapResult(
                    None, new.key_id, default_key_file=self.default_key_file
                )
            return self._start(new)
        finally:
            lock.release(remove=True)

    def _start(self, new: MasterKey) -> RewrapResult:
        """Rewrap a store that no rewrap has touched yet."""
        if self.layout.is_empty():
            raise StoreError(
                f"the key store {self.root} holds no key: there is nothing "
                "to rewrap"
            )
        old = self._current_key()
        self._refuse_current_key(new, old)
        store = KeyStore(
            self.root,
            Sealer(old),
            history_dir=self.settings.history_dir,
            max_history=self.settings.max_history,
            integrity_check=True,
        )
        with store.locked():
            self._refuse_damage(store)
            items = self._read_items(store)
            self._remove_leftovers()
            self._build(store, items, Sealer(new))
            self._write_journal(old.key_id, new.key_id, _count(items))
            self._swap()
        security_log.warning(
            "rewrapped the key store %s: %d records sealed again under "
            "master key id %s (was %s)",
            self.root, len(items), new.key_id, old.key_id,
        )
        return self._complete(old.key_id, new)

    def _resume(
        self, journal: dict[str, Any], new: MasterKey
    ) -> RewrapResult:
        """Finish a rewrap that a crash interrupted after its journal."""
        wanted = journal.get("newMasterKeyId")
        if wanted != new.key_id:
            raise MasterKeyError(
                f"the rewrap of {self.root} that is in progress "
                f"({self.journal}) is to master key id {wanted}, but "
                f"{self.new_key_file} holds id {new.key_id}: give the file "
                f"holding master key id {wanted} to finish it"
            )
        self._journal = journal
        old_id = str(journal.get("oldMasterKeyId"))
        for target in self.targets:
            staging = self.layout.staging_path(target)
            if not target.exists() and staging.is_dir():
                os.rename(staging, target)
                files.sync_directory(target.parent)
                self._step(f"swapped in {target}")
        root_staging = self.layout.staging_path(self.root)
        if not root_staging.is_dir() \
                and self._store_key_id() == old_id:
            # The copy is gone and the store is still the old one: the
            # rewrap never swapped anything, so it starts over.
            system_log.warning(
                "the rewrap journal %s names a copy that is gone: "
                "starting the rewrap again", self.journal,
            )
            return self._start(new)
        system_log.warning(
            "finishing the rewrap of %s to master key id %s",
            self.root, new.key_id,
        )
        with FileLock(self.layout.lock_path).hold(LOCK_TIMEOUT):
            self._swap()
        result = self._complete(old_id, new)
        security_log.warning(
            "finished the rewrap of the key store %s under master key id "
            "%s (was %s)", self.root, new.key_id, old_id,
        )
        return dataclasses.replace(result, resumed=True)

    def _complete(self, old_id: str, new: MasterKey) -> RewrapResult:
        """Check the swapped store, replace the default key file, clean up.
        """
        self._check_sealed_under(new)
        copy = None
        if self.default_key_file is not None:
            copy = self._replace_default_key(old_id, new)
        for target in self.targets:
            old = old_store_path(target)
            if os.path.lexists(old):
                files.destroy_tree(old)
                self._step(f"destroyed {old}")
        self._finish_journal()
        counts = {
            field: int(self._journal.get(name, 0))
            for field, name in _COUNTED.items()
        }
        return RewrapResult(
            old_id,
            new.key_id,
            default_key_file=self.default_key_file,
            old_key_copy=copy,
            **counts,
        )

    # -- checks ------------------------------------------------------

    def _read_new_key(self) -> MasterKey:
        """Read and check the new master key file, with the rewrap's own
        messages (the option, not KEY_DAEMON_MASTER_KEY_FILE, named it).
        """
        path = self.new_key_file
        where = f"new master key file {path}"
        try:
            status = os.stat(path)
        except FileNotFoundError:
            raise MasterKeyError(
                f"{where} does not exist: make one with (umask 077; "
                f"openssl rand -hex 32 > {path})"
            ) from None
        except OSError as exc:
            raise MasterKeyError(
                f"cannot read {where}: {exc.strerror}"
            ) from None
        if not stat.S_ISREG(status.st_mode):
            raise MasterKeyError(
                f"{where} is not a regular file: give a file holding 64 "
                "hex characters"
            )
        mode = stat.S_IMODE(status.st_mode)
        if mode & 0o077:
            raise MasterKeyError(
                f"{where} is open to group or others (mode {mode:o}): "
                f"chmod 0400 {path} first"
            )
        self._require_outside_store(path)
        if status.st_size > MASTER_KEY_FILE_LIMIT:
            raise MasterKeyError(
                f"{where} must hold exactly 64 hex characters (one 32-byte "
                "key), optionally followed by a newline"
            )
        try:
            read_master_key_file(path)
        except MasterKeyError:
            raise MasterKeyError(
                f"{where} must hold exactly 64 hex characters (one 32-byte "
                "key), optionally followed by a newline: make one with "
                "openssl rand -hex 32"
            ) from None
        # read again as the configuration's keys are: registered with the
        # logs, which redact it should it ever reach a line
        return resolve_master_key(
            None, path, self.root, False, may_create=False
        )

    def _require_outside_store(self, path: Path) -> None:
        """Refuse a new key file inside the store or a directory that a
        rewrap replaces or destroys."""
        places = []
        for target in self.targets + [self.layout.history_dir]:
            places += [
                target,
                self.layout.staging_path(target),
                old_store_path(target),
            ]
        try:
            key_file = path.resolve()
            resolved = [(place, place.resolve()) for place in places]
        except (OSError, RuntimeError):
            return
        for place, directory in resolved:
            if key_file.is_relative_to(directory):
                raise MasterKeyError(
                    f"new master key file {path} is inside {place}: keep "
                    "the master key outside the key store, so a copy of "
                    "the store cannot open the keys"
                )

    def _refuse_current_key(
        self, new: MasterKey, current: MasterKey | None = None
    ) -> None:
        """Refuse a new key that is the one the settings name already.

        The message says what the store names too: after a rewrap with
        settings left on the old key, that key is no longer the store's.
        """
        if current is None:
            try:
                current = self._current_key()
            except MasterKeyError:
                return
        if current.key_id != new.key_id:
            return
        sealed = self._store_key_id()
        if sealed == new.key_id:
            raise MasterKeyError(
                f"{self.new_key_file} holds the master key the settings "
                f"name and the store is sealed under already (id "
                f"{new.key_id}): give a new key (openssl rand -hex 32); "
                "nothing was changed"
            )
        if sealed is None:
            raise MasterKeyError(
                f"{self.new_key_file} holds the master key the settings "
                f"name already (id {new.key_id}): give a new key (openssl "
                "rand -hex 32); nothing was changed"
            )
        since = ""
        journal = read_journal(self.journal)
        if journal is not None and journal["state"] == FINISHED \
                and journal["newMasterKeyId"] == sealed:
            since = f" since the rewrap of {journal.get('finished', '?')}"
        raise MasterKeyError(
            f"{self.new_key_file} holds master key id {new.key_id}, the one "
            f"{self._key_source()} holds, but the key store {self.root} "
            f"is sealed under master key id {sealed}{since}: "
            f"{self._point_at(sealed)}; nothing was changed"
        )

    def _key_source(self) -> str:
        """Name the setting (or default file) the store's key comes from.
        """
        if self.settings.master_key is not None:
            return "KEY_DAEMON_MASTER_KEY"
        if self.settings.master_key_file is not None:
            return "KEY_DAEMON_MASTER_KEY_FILE " \
                f"({self.settings.master_key_file})"
        return f"the default master key file {self.default_key_file}"

    def _point_at(self, key_id: str) -> str:
        """Say how to make the settings name the master key ``key_id``."""
        if self.settings.master_key is not None:
            return f"set KEY_DAEMON_MASTER_KEY to the master key with id " \
                f"{key_id}"
        if self.settings.master_key_file is not None:
            return "point KEY_DAEMON_MASTER_KEY_FILE at the file holding " \
                f"master key id {key_id}"
        return f"put the master key with id {key_id} in " \
            f"{self.default_key_file} (mode 0400), or point " \
            "KEY_DAEMON_MASTER_KEY_FILE at the file holding it"

    def _refuse_running_daemon(self) -> None:
        pid = process.read_daemon_pid(self.settings.pid_file)
        if pid is not None:
            # A service manager (PM2, Supervisor) restarts a daemon that
            # torro daemon stop stopped behind its back.
            raise DaemonError(
                f"the daemon is running (pid {pid}, PID file "
                f"{self.settings.pid_file}): stop it first (torro daemon "
                "stop, or through the service manager that runs it: "
                "systemctl stop, supervisorctl stop, pm2 stop), run torro "
                "keys rewrap, then start it with the new master key; "
                "nothing was changed"
            )

    def _current_key(self) -> MasterKey:
        settings = self.settings
        return resolve_master_key(
            settings.master_key.get_secret_value()
            if settings.master_key is not None else None,
            settings.master_key_file,
            self.root,
            False,
            may_create=False,
        )

    def _refuse_damage(self, store: KeyStore) -> None:
        """Refuse a store that does not verify: a rewrap copies what it
        can open, and must not turn damage into something that verifies.
        """
        if store.current is None and store.problem is None:
            raise StoreError(
                f"the key store {self.root} holds no key: there is nothing "
                "to rewrap"
            )
        clock = store.clock_problem()
        problems = [
            problem for problem in store.verify()
            if clock is None or problem.reason != clock
        ]
        if problems:
            raise StoreError(
                f"the key store does not verify, so nothing was rewrapped: "
                f"{problems[0]}"
            )
        self.layout.refuse_foreign_entries(
            "a rewrap replaces the whole directory, so move them away "
            "first; nothing was changed"
        )

    def _check_sealed_under(
        self, master: MasterKey, *, swapped: bool = True
    ) -> None:
        """Check that the store loads under ``master`` with no problem.

        :param swapped: this run swapped the copy in (and the old store
            waits to be destroyed); else the store claimed to be sealed
            under ``master`` already and nothing was done.
        """
        check = KeyStore(
            self.root,
            Sealer(master),
            history_dir=self.settings.history_dir,
            integrity_check=True,
            read_only=True,
        )
        check.load()
        if check.problem is not None and not swapped:
            raise StoreError(
                f"the key store names master key id {master.key_id}, the "
                f"key in {self.new_key_file}, but does not verify under it: "
                f"{check.problem}; nothing was changed"
            )
        if check.problem is not None:
            raise StoreError(
                f"the key store does not verify under the new master key "
                f"(id {master.key_id}): {check.problem}; nothing of the old "
                "store is destroyed until it does"
            )

    def _store_key_id(self) -> str | None:
        """Return the master key id current.json (else history.json)
        names, unverified: which key to expect, not proof of it."""
        for path in (self.layout.current_path, self.layout.history_path):
            try:
                data = files.read_file(path)
            except StoreError:
                continue
            if data is None:
                continue
            try:
                key_id = json.loads(data).get("masterKeyId")
            except (ValueError, AttributeError):
                continue
            if isinstance(key_id, str):
                return key_id
        return None

    # -- reading what is to be written again ---------------------------

    def _read_items(self, store: KeyStore) -> list[_Item]:
        """Open every record of the store under the old master key."""
        reader = StoreReader(self.layout, store.sealer)
        items = []
        history = self.layout.history_dir.name
        for index in sorted(store.records):
            record = store.records[index]
            path = self.layout.record_path(index)
            material = reader.open_record(path, record)
            items.append(_Item(history, record.file_name, record, material))

        archive = self.layout.archive_dir
        try:
            names = sorted(os.listdir(archive))
        except FileNotFoundError:
            names = []
        for name in names:
            path = archive / name
            if name.startswith(".") and name.endswith(files.TEMP_SUFFIX):
                continue
            match = RECORD_NAME.fullmatch(name) \
                or SET_ASIDE_NAME.fullmatch(name)
            if match is None:
                raise StoreError(
                    f"{path} is not a record of the key store: a rewrap "
                    "replaces the whole directory, so move it away first; "
                    "nothing was changed"
                )
            index = int(match.group(1)) \
                if RECORD_NAME.fullmatch(name) else None
            record, material = self._open_file(reader, path, index)
            items.append(_Item("archive", name, record, material))
        return items

    def _open_file(
        self, reader: StoreReader, path: Path, index: int | None
    ) -> tuple[KeyRecord, KeyMaterial]:
        data = files.read_file(path) or b""
        try:
            record = parse_record(data)
        except RecordError as exc:
            raise self._unreadable(path, f"not a key record: {exc}")
        if index is not None and record.index != index:
            raise self._unreadable(path, f"holds key {record.index}")
        if record.master_key_id != reader.sealer.master_key_id \
                or not reader.sealer.checksum_matches(
                    record.checksum_payload(), record.checksum
                ):
            raise self._unreadable(
                path, "it does not verify under the current master key"
            )
        try:
            material = reader.open_record(path, record)
        except StoreError:
            raise self._unreadable(
                path, "its key does not open under the current master key"
            ) from None
        if material.fingerprint != record.fingerprint:
            raise self._unreadable(path, "its key does not match its "
                                   "fingerprint")
        return record, material

    def _unreadable(self, path: Path, reason: str) -> StoreError:
        return StoreError(
            f"{path}: {reason}; a rewrap seals every record again, so move "
            "the file out of the store (or restore it) first; nothing was "
            "changed"
        )

    # -- writing -------------------------------------------------------

    def _remove_leftovers(self) -> None:
        """Remove what an earlier rewrap cut short before its journal.

        A copy being built is removed (the store lock's recovery already
        removed most); an old store left over is refused, since the
        journal that would explain it is gone.
        """
        for target in self.targets:
            staging = self.layout.staging_path(target)
            if os.path.lexists(staging):
                files.destroy_tree(staging)
            old = old_store_path(target)
            if os.path.lexists(old):
                raise StoreError(
                    f"{old} is left from an earlier rewrap and no journal "
                    "explains it: it holds a copy of the store under an "
                    "older master key; destroy it (or move it away) and "
                    "run torro keys rewrap again; nothing was changed"
                )

    def _build(
        self, store: KeyStore, items: list[_Item], sealer: Sealer
    ) -> None:
        """Write the whole store again under ``sealer`` beside the store.
        """
        staging = self.layout.staging_path(self.root)
        if self.layout.external_history:
            history = self.layout.staging_path(self.layout.history_dir)
        else:
            history = staging / self.layout.history_dir.name
        builder = KeyStore(staging, sealer, history_dir=history)
        places = {
            self.layout.history_dir.name: history,
            "archive": builder.archive_dir,
        }
        for directory in (staging, history, builder.backup_dir):
            files.ensure_directory(directory)
        if any(item.place == "archive" for item in items):
            files.ensure_directory(builder.archive_dir)

        # In index order, so that each record's link to the one before it
        # is known when it is written. Only records of the chain are
        # links; a set-aside copy is written, never linked to.
        order = sorted(
            items,
            key=lambda item: (item.record.index,
                              SET_ASIDE_NAME.fullmatch(item.name) is not None),
        )
        links: dict[str, str] = {}
        written: dict[int, KeyRecord] = {}
        for done, item in enumerate(order, 1):
            record = _reseal(item.record, item.material, sealer, links)
            if SET_ASIDE_NAME.fullmatch(item.name) is None:
                links[item.record.checksum] = record.checksum
            if item.place != "archive":
                written[record.index] = record
            files.write_file(places[item.place] / item.name,
                             record.to_json())
            self._step(f"staged {item.place}/{item.name}")
            if self.progress is not None:
                self.progress(done, len(order))

        current = written[store.current.index]
        history_bytes = builder._history_bytes(
            written, current.index, store.next_index,
            store.retired_fingerprints, store.lost,
        )
        current_bytes = current.to_json()
        files.write_file(builder.history_path, history_bytes)
        files.write_file(builder.current_path, current_bytes)
        files.write_file(builder.backup_dir / "current.json", current_bytes)
        files.write_file(builder.backup_dir / "history.json", history_bytes)
        for directory in {staging, history, builder.backup_dir,
                          builder.archive_dir, staging.parent,
                          history.parent}:
            if directory.is_dir():
                files.sync_directory(directory)
        self._step("staged current.json, history.json and the backup")
        self._check_copy(store, staging, history, sealer)

    def _check_copy(
        self,
        store: KeyStore,
        staging: Path,
        history: Path,
        sealer: Sealer,
    ) -> None:
        """Verify the copy under the new key before anything depends on
        it; remove it and stop when it does not hold the same keys."""
        copy = KeyStore(
            staging,
            sealer,
            history_dir=history,
            integrity_check=True,
            clock=lambda: _FAR_FUTURE_MS,
            read_only=True,
        )
        problems = copy.verify()
        copy.load()
        same = (
            copy.current is not None
            and store.current is not None
            and copy.current.index == store.current.index
            and copy.next_index == store.next_index
            and {i: r.fingerprint for i, r in copy.records.items()}
            == {i: r.fingerprint for i, r in store.records.items()}
        )
        if problems or not same:
            for directory in {staging, history}:
                files.destroy_tree(directory)
            reason = problems[0] if problems else "it holds other keys"
            raise StoreError(
                f"the copy sealed under the new master key does not "
                f"verify ({reason}): nothing was changed; this is a bug, "
                "please report it"
            )

    def _write_journal(
        self, old_id: str, new_id: str, counts: dict[str, int]
    ) -> None:
        document = {
            "format": JOURNAL_FORMAT,
            "state": SWAPPING,
            "oldMasterKeyId": old_id,
            "newMasterKeyId": new_id,
            "store": str(self.root.absolute()),
            "historyDir": str(self.layout.history_dir.absolute())
            if self.layout.external_history else None,
            "defaultMasterKeyFile": None if self.default_key_file is None
            else str(self.default_key_file),
            **{name: counts[field] for field, name in _COUNTED.items()},
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self._journal = document
        self._save_journal("wrote the journal")

    def _save_journal(self, step: str) -> None:
        data = json.dumps(self._journal, indent=2).encode() + b"\n"
        files.write_file(self.journal, data)
        files.sync_directory(self.journal.parent)
        self._step(step)

    def _read_journal(self) -> dict[str, Any] | None:
        document = read_journal(self.journal)
        if document is None:
            return None
        if document.get("state") == FINISHED:
            # the record of an earlier rewrap, of whatever store was here
            return document
        recorded = (document.get("store"), document.get("historyDir"))
        expected = (
            str(self.root.absolute()),
            str(self.layout.history_dir.absolute())
            if self.layout.external_history else None,
        )
        if recorded != expected:
            raise StoreError(
                f"{self.journal} is the journal of a rewrap of "
                f"{recorded[0]} (history {recorded[1] or 'inside it'}): "
                "finish it with the same KEY_STORAGE_PATH and "
                "KEY_HISTORY_PATH"
            )
        return document

    def _finish_journal(self) -> None:
        self._journal["state"] = FINISHED
        self._journal["finished"] = time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime()
        )
        self._save_journal("marked the journal finished")

    def _swap(self) -> None:
        """Put the copy in place of the store, one rename at a time.

        Each step is skipped when an earlier run did it, so that a rerun
        continues where a crash stopped.
        """
        for target in self.targets:
            staging = self.layout.staging_path(target)
            if not staging.is_dir():
                continue
            if os.path.lexists(target):
                os.rename(target, old_store_path(target))
                self._step(f"moved {target} aside")
            os.rename(staging, target)
            files.sync_directory(target.parent)
            self._step(f"swapped in {target}")

    def _replace_default_key(
        self, old_id: str, new: MasterKey
    ) -> Path:
        """Put the new key in the default master key file, keeping the
        old one beside it; return where the old one is kept."""
        path = self.default_key_file
        assert path is not None
        copy = path.with_name(f"{path.name}.old-{old_id}")
        held = read_master_key_file(path)
        if held.key_id == new.key_id:
            return copy
        if held.key_id != old_id:
            raise MasterKeyError(
                f"{path} holds master key id {held.key_id}, not the old "
                f"one ({old_id}) this rewrap replaces: copy the new master "
                "key over it (mode 0400), or point KEY_DAEMON_MASTER_KEY_FILE "
                "at the new key file"
            )
        try:
            os.link(path, copy)
        except FileExistsError:
            if read_master_key_file(copy).key_id != old_id:
                raise MasterKeyError(
                    f"{copy} exists and does not hold master key id "
                    f"{old_id}: move it away and run torro keys rewrap "
                    "again to finish"
                ) from None
        self._step(f"kept the old master key in {copy}")
        _write_key_file(path, new)
        self._step(f"wrote the new master key to {path}")
        return copy

    def _remove_own_temp_files(self) -> None:
        """Remove the temporary files a crashed rewrap left beside the
        store: of its journal and of the default master key file."""
        prefixes = [f".{self.journal.name}."]
        if self.default_key_file is not None:
            prefixes.append(f".{self.default_key_file.name}.")
        parent = self.root.parent
        try:
            names = os.listdir(parent)
        except FileNotFoundError:
            return
        for name in names:
            if name.endswith(files.TEMP_SUFFIX) \
                    and any(name.startswith(p) for p in prefixes):
                with contextlib.suppress(OSError):
                    files.destroy_file(parent / name)

    def _step(self, name: str) -> None:
        """Count a step; kill the process here when the test hook says so.
        """
        self._steps += 1
        if self._steps == self._kill_at:
            os.write(2, f"torro: test hook: killed after step {self._steps}"
                        f" ({name})\n".encode())
            os.kill(os.getpid(), signal.SIGKILL)


def _reseal(
    record: KeyRecord,
    material: KeyMaterial,
    sealer: Sealer,
    links: dict[str, str],
) -> KeyRecord:
    """Return ``record`` sealed and checksummed under ``sealer``.

    :param links: the new checksum of every record written so far, by
        its old checksum. A link to a record that is gone (the oldest
        retained key points to a removed one) cannot be computed again
        and keeps its value, which nothing checks.
    """
    previous = record.previous_checksum
    if previous is not None:
        previous = links.get(previous, previous)
    key_text = sealer.seal(record.index, material) if record.sealed \
        else record.key_text
    fresh = dataclasses.replace(
        record,
        key_text=key_text,
        master_key_id=sealer.master_key_id,
        previous_checksum=previous,
        checksum="",
    )
    return dataclasses.replace(
        fresh, checksum=sealer.checksum(fresh.checksum_payload())
    )


# The counts of a RewrapResult, by their names in the journal.
_COUNTED = {
    "retained": "retained",
    "archived": "archived",
    "set_aside": "setAside",
    "unsealed": "unsealed",
}


def _count(items: list[_Item]) -> dict[str, int]:
    set_aside = sum(
        SET_ASIDE_NAME.fullmatch(item.name) is not None for item in items
    )
    archived = sum(item.place == "archive" for item in items) - set_aside
    return {
        "retained": len(items) - archived - set_aside,
        "archived": archived,
        "set_aside": set_aside,
        "unsealed": sum(not item.record.sealed for item in items),
    }


def _write_key_file(path: Path, master: MasterKey) -> None:
    """Replace a master key file atomically with ``master``, mode 0400."""
    try:
        write_master_key_file(path, master, replace=True)
    except OSError as exc:
        raise MasterKeyError(
            f"cannot replace master key file {path}: {exc.strerror}; copy "
            "the new master key over it (mode 0400) and run torro keys "
            "rewrap again to finish"
        ) from None


def _kill_at() -> int | None:
    value = os.environ.get(KILL_AT_VARIABLE, "")
    return int(value) if value.isdigit() else None
