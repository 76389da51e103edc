"""Bring in a key directory of the original Node.js daemon.

The original layout is plaintext::

    <source>/
      current.json          the record of the key it used last
      history/key-N.json    one record per key, N its index
      hashes/, passwords/   other features' files, not key records

and each record is ``{"key": "<hex>", "index": N, "timestamp": <ms>,
"algorithm": "sha256", "length": 32, "derivedFrom": N - 1 or null}``.

An import has two steps. :func:`read_source` reads and judges the source
and returns an :class:`ImportPlan`; it writes nothing, so a source that
cannot be imported leaves no trace. :func:`write_plan` then writes the
plan into an empty key store. :func:`import_directory` does both.

Each record lands in one of three lists:

- **imported**: a trusted record. On its own, it has exactly the six
  fields, of the right JSON types (true and false are not numbers); its
  index is the N of its file name; its algorithm is one of
  :data:`torro.keygen.ALGORITHMS`; its length is 16 to 1024 bytes and its
  key exactly that many bytes of lowercase hex; derivedFrom is null or an
  index below its own; it is dated no more than the allowed clock skew in
  the future; and, when validating, its key passes
  :func:`torro.keygen.validate_key` (it is not degenerate). Together with
  the others that pass on their own, its timestamp fits their order (see
  below) and, when validating, its key is not one imported already.
- **skipped**: anything else named like a record, with a one-line reason.
  A skipped record is not imported; the source keeps it. Its index and
  key may still be in use where the Node.js daemon ran (licenses signed
  with it), so neither is ever made again: see below.
- **doubtful**: imported, but worth a look: it was derived from a key the
  source does not hold, or not from the key before it in the source;
  another file also records its index; or current.json disagrees with it.

Timestamps must not decrease with the index. One record dated wrongly,
forward or backward, must not cost the records around it, so the order
is judged over all records that pass on their own: the longest run of
them, in index order, whose timestamps never decrease is kept, and only
the records outside it are skipped. When runs of that length compete, the
one keeping later records wins, as the newest key becomes current.

The newest trusted record becomes the current key, whatever current.json
of the source says. Nothing is destroyed: the newest ``max_history`` keys
are retained, the older ones go to the store's archive/, sealed like the
rest, with their fingerprints retired. Index, timestamp, algorithm, length
and derivedFrom are kept exactly.

Nothing of the source is used twice. The store's next index is above
every index the source claims: the N of every file named key-N.json and
every integer "index" field of those files and of current.json, whether
imported or skipped (up to :data:`MAX_SAFE_INDEX`). The fingerprint of
every skipped key that is hex of the length its record states is retired,
unless the same key is imported.

No reason, report or log line holds key material: records are named by
file and index only.
"""

import bisect
import dataclasses
import json
import logging
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torro import keygen, logs
from torro.errors import KeyValidationError, StoreError
from torro.material import KeyMaterial
from torro.store.keystore import (
    CLOCK_SKEW_ALLOWANCE_MS,
    KeyStore,
    NewChainEntry,
)
from torro.store.layout import RECORD_NAME, store_is_empty
from torro.store.records import DOCUMENTED_FIELDS, field_problem


MIN_KEY_LENGTH = 16
MAX_KEY_LENGTH = 1024
# A record of the longest key is about 2.3 KiB; anything much larger is
# not a key record and is not read into memory.
MAX_RECORD_SIZE = 64 * 1024
# The Node.js daemon held indexes as JavaScript numbers, exact up to
# 2**53 - 1; a larger one is not an index it made, and rotation never
# reaches it, so it does not raise the next index.
MAX_SAFE_INDEX = 2**53 - 1

CURRENT_NAME = "current.json"
HISTORY_NAME = "history"

_LOWER_HEX = re.compile(r"[0-9a-f]*")
_ANY_HEX = re.compile(r"[0-9a-fA-F]*")
# Names quoted in reasons; anything else might be a misplaced key.
_PLAIN_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")
_LONG_HEX = re.compile(r"[0-9a-fA-F]{8,}")

security_log = logging.getLogger(logs.SECURITY)


@dataclasses.dataclass
class ImportReport:
    """What an import brought in, left out and found worth a look.

    :param imported: indexes imported (retained and archived), ascending.
    :param archived: indexes that went to archive/, beyond retention.
    :param skipped: (file name relative to the source, reason) for each
        file named like a record that was not imported.
    :param doubtful: (index, reason) for imported keys worth a look.
    :param ignored: entries of the source that are not key records, such
        as ``hashes/``; folders end with a slash.
    :param current_index: the index of the key that became current.
    :param next_index: the index the next rotation gives its key: above
        every index the source claims, so none is used twice.
    :param retired_skipped: the skipped files whose keys were retired, so
        that the store never makes them again.
    """

    imported: list[int]
    archived: list[int]
    skipped: list[tuple[str, str]]
    doubtful: list[tuple[int, str]]
    ignored: list[str]
    current_index: int
    next_index: int
    retired_skipped: list[str]

    @property
    def retained(self) -> list[int]:
        """Indexes imported into history/ rather than archive/."""
        archived = set(self.archived)
        return [index for index in self.imported if index not in archived]


class _Rejected(Exception):
    """A record is not trusted; the message is the one-line reason."""


@dataclasses.dataclass
class _Candidate:
    """A file named like a record, as read from the source."""

    name: str
    # the N of key-N.json; None for current.json
    name_index: int | None
    document: dict[str, Any] | None = None
    problem: str | None = None
    # what the file claims however it is judged (see _loose_fields)
    claimed_indexes: set[int] = dataclasses.field(default_factory=set)
    fingerprints: set[str] = dataclasses.field(default_factory=set)

    @property
    def index(self) -> int | None:
        """The index the record claims, when it has a well-typed one."""
        if self.document is None:
            return None
        index: int = self.document["index"]
        return index


@dataclasses.dataclass
class _Trusted:
    """A record that passed every check, with its key material."""

    name: str
    index: int
    timestamp: int
    algorithm: str
    derived_from: int | None
    material: KeyMaterial
    document: dict[str, Any]

    def entry(self) -> NewChainEntry:
        return NewChainEntry(
            self.material,
            self.index,
            self.timestamp,
            self.algorithm,
            self.derived_from,
        )


@dataclasses.dataclass
class ImportPlan:
    """A judged source: what an import of it would write and leave out.

    Made by :func:`read_source`, written by :func:`write_plan`. It holds
    the key material of the records to import, in memory only.

    :param source: the directory that was read.
    :param records: the trusted records, by ascending index; the last one
        becomes the current key. Empty when nothing can be imported.
    :param skipped: (file name, reason), in the order of the source.
    :param doubtful: (index, reason) for trusted records worth a look.
    :param ignored: entries of the source that are not key records.
    :param next_index: one above every index the source claims,
        imported or skipped.
    :param retired_fingerprints: the fingerprints of the skipped keys
        that are not imported; the store retires them.
    :param retired_skipped: the skipped files those keys came from.
    """

    source: Path
    records: list[_Trusted]
    skipped: list[tuple[str, str]]
    doubtful: list[tuple[int, str]]
    ignored: list[str]
    next_index: int
    retired_fingerprints: frozenset[str]
    retired_skipped: list[str]

    @property
    def indexes(self) -> list[int]:
        """The indexes that would be imported, ascending."""
        return [record.index for record in self.records]

    def require_records(self) -> None:
        """Refuse a plan with nothing to import.

        :raises StoreError: no record of the source can be imported; the
            message says why and what to do.
        """
        if self.records:
            return
        if not self.skipped:
            raise StoreError(
                f"no record in {self.source} can be imported: its "
                "history/ holds no key-N.json and it has no current.json; "
                "give the Node.js daemon's key directory; nothing was "
                "written"
            )
        count = len(self.skipped)
        raise StoreError(
            f"no record in {self.source} can be imported: all {count} "
            f"skipped, each for the reason given; check that it is the "
            "Node.js daemon's key directory (current.json and "
            "history/key-N.json), or restore its records from a backup "
            "and import again; nothing was written"
        )


def import_directory(
    source: Path, store: KeyStore, *, validate: bool = True
) -> ImportReport:
    """Import a Node.js daemon's key directory into an empty key store.

    The source is read in full and judged before the store is touched,
    as :func:`read_source` does; then the plan is written as
    :func:`write_plan` does. The source is never written.

    :param source: the Node.js daemon's key directory (holding
        current.json and history/).
    :param store: an empty key store.
    :param validate: check each key with :func:`torro.keygen.validate_key`
        (degenerate keys, keys seen twice); the format checks always run.
    :returns: what was imported, archived, skipped and found doubtful.
    :raises StoreError: the store already holds keys, the source is not a
        key directory, or no record in it can be trusted; nothing was
        written.
    """
    _require_empty(store)
    plan = read_source(source, now=store.clock(), validate=validate)
    return write_plan(plan, store)


def read_source(
    source: Path, *, now: int, validate: bool = True
) -> ImportPlan:
    """Read and judge a Node.js daemon's key directory; write nothing.

    :param source: the Node.js daemon's key directory.
    :param now: the time in ms since the epoch, for the clock skew check.
    :param validate: check each key with :func:`torro.keygen.validate_key`.
    :returns: the plan; its records are empty when nothing can be
        imported (see :meth:`ImportPlan.require_records`).
    :raises StoreError: the source is not a key directory or cannot be
        listed.
    """
    scan = _scan(source)
    judge = _Judge(now, validate)
    judge.run(scan.history, scan.current)
    judge.skipped.extend(scan.skipped)
    records = [judge.trusted[index] for index in sorted(judge.trusted)]

    # what the source claims, imported or not, is never used again
    claimed = set(scan.claimed_indexes)
    claimed.update(record.index for record in records)
    imported = {record.material.fingerprint for record in records}
    retired: set[str] = set()
    retired_skipped = []
    for candidate in scan.candidates():
        claimed |= candidate.claimed_indexes
        left_out = candidate.fingerprints - imported
        if left_out:
            retired |= left_out
            retired_skipped.append(candidate.name)

    return ImportPlan(
        source=source,
        records=records,
        skipped=sorted(judge.skipped, key=_skipped_order),
        doubtful=sorted(judge.doubtful),
        ignored=sorted(scan.ignored),
        next_index=max(claimed, default=-1) + 1,
        retired_fingerprints=frozenset(retired),
        retired_skipped=sorted(retired_skipped, key=_name_order),
    )


def write_plan(
    plan: ImportPlan,
    store: KeyStore,
    progress: Callable[[int, int], None] | None = None,
) -> ImportReport:
    """Write a judged source into an empty key store as one new chain.

    The records are written under the store lock, the newest
    ``store.max_history`` in history/ and the rest in archive/. The
    store's next index is the plan's, and the skipped keys' fingerprints
    are retired with those of the archived keys. Each
    skipped record is logged as a warning, each doubtful one at info, to
    the security log.

    :param progress: called with (keys written, keys to write).
    :raises StoreError: the store already holds keys, or the plan has no
        record; nothing was written.
    """
    _require_empty(store)
    for name, reason in plan.skipped:
        security_log.warning("import: skipped %s: %s", name, reason)
    plan.require_records()

    trusted = plan.records
    keep = max(1, store.max_history)
    retained, archived = trusted[-keep:], trusted[:-keep]
    with store.locked():
        _require_empty(store)
        store.write_chain(
            [record.entry() for record in retained],
            next_index=plan.next_index,
            retired_fingerprints=plan.retired_fingerprints,
            archived=[record.entry() for record in archived],
            progress=progress,
        )

    report = ImportReport(
        imported=plan.indexes,
        archived=[record.index for record in archived],
        skipped=list(plan.skipped),
        doubtful=list(plan.doubtful),
        ignored=list(plan.ignored),
        current_index=trusted[-1].index,
        next_index=plan.next_index,
        retired_skipped=list(plan.retired_skipped),
    )
    for index, reason in report.doubtful:
        security_log.info("import: key %d is doubtful: %s", index, reason)
    for name in report.retired_skipped:
        security_log.info(
            "import: retired the key of skipped %s: it is never made "
            "again", name,
        )
    security_log.info(
        "imported %s into %s: imported %d (retained %d, archived %d), "
        "skipped %d, doubtful %d, current index %d, next index %d",
        plan.source, store.root, len(report.imported), len(retained),
        len(archived), len(report.skipped), len(report.doubtful),
        report.current_index, report.next_index,
    )
    return report


def require_empty_store(root: Path, history_dir: Path | None = None) -> None:
    """Refuse to import into a key store that holds keys, reading only.

    For callers that check before they build the store (which may create
    its master key).

    :raises StoreError: the store at ``root`` already holds keys.
    """
    if not store_is_empty(root, history_dir):
        raise _not_empty(root)


def _require_empty(store: KeyStore) -> None:
    if not store.is_empty():
        raise _not_empty(store.root)


def _not_empty(root: Path) -> StoreError:
    return StoreError(
        f"the key store {root} already holds keys: point "
        "KEY_STORAGE_PATH at a new directory (or move the store away) "
        "before importing; nothing was changed"
    )


@dataclasses.dataclass
class _Scan:
    """The files of a source, read but not judged yet."""

    history: dict[int, _Candidate]
    current: _Candidate | None
    skipped: list[tuple[str, str]]
    ignored: list[str]
    # the N of folders named key-N.json, which are never read
    claimed_indexes: set[int]

    def candidates(self) -> list[_Candidate]:
        found = list(self.history.values())
        if self.current is not None:
            found.append(self.current)
        return found


def _scan(source: Path) -> _Scan:
    """Read every file named like a record; sort out everything else."""
    if not source.is_dir():
        raise StoreError(
            f"{source} is not a directory: give the Node.js daemon's key "
            "directory (the one holding current.json and history/)"
        )
    history_dir = source / HISTORY_NAME
    current_path = source / CURRENT_NAME
    if not history_dir.exists() and not current_path.exists():
        raise StoreError(
            f"{source} holds neither current.json nor history/: give the "
            "Node.js daemon's key directory"
        )
    if history_dir.exists() and not history_dir.is_dir():
        raise StoreError(
            f"{history_dir} is not a directory: give the Node.js daemon's "
            "key directory"
        )

    scan = _Scan({}, None, [], [], set())
    for entry in _entries(source):
        if entry.name in (HISTORY_NAME, CURRENT_NAME):
            continue
        scan.ignored.append(
            entry.name + "/" if entry.is_dir() else entry.name
        )

    if history_dir.is_dir():
        for entry in _entries(history_dir):
            name = f"{HISTORY_NAME}/{entry.name}"
            match = RECORD_NAME.fullmatch(entry.name)
            index = None if match is None else int(match.group(1))
            if entry.is_dir():
                scan.skipped.append(
                    (name + "/", "a folder, not a key record")
                )
                if index is not None and index <= MAX_SAFE_INDEX:
                    scan.claimed_indexes.add(index)
            elif index is None:
                scan.skipped.append(
                    (name, "not a key record name (key-N.json)")
                )
            else:
                scan.history[index] = _read_candidate(
                    Path(entry.path), name, index
                )

    if current_path.is_dir():
        scan.skipped.append(
            (CURRENT_NAME + "/", "a folder, not a key record")
        )
    elif current_path.exists():
        scan.current = _read_candidate(current_path, CURRENT_NAME, None)
    return scan


def _entries(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return list(entries)
    except OSError as exc:
        raise StoreError(
            f"cannot read {directory}: {exc.strerror}; check its owner and "
            "mode"
        ) from None


def _read_candidate(
    path: Path, name: str, name_index: int | None
) -> _Candidate:
    candidate = _Candidate(name, name_index)
    if name_index is not None and name_index <= MAX_SAFE_INDEX:
        candidate.claimed_indexes.add(name_index)
    try:
        data = _read(path)
        fields = _loose_fields(data)
        candidate.claimed_indexes |= _claimed_indexes(fields)
        candidate.fingerprints = _claimed_fingerprints(fields)
        candidate.document = _parse(data)
    except _Rejected as exc:
        candidate.problem = str(exc)
    return candidate


def _read(path: Path) -> bytes:
    """Read a regular file of at most :data:`MAX_RECORD_SIZE` bytes.

    Anything else is rejected without a blocking open: a named pipe
    would wait for a writer forever, and opening a device may act on it.
    """
    try:
        status = os.stat(path)
        _require_regular(status.st_mode)
        with open(path, "rb", opener=_open_nonblocking) as stream:
            # the path may have been replaced since it was looked at
            status = os.fstat(stream.fileno())
            _require_regular(status.st_mode)
            if status.st_size > MAX_RECORD_SIZE:
                raise _Rejected(
                    f"{status.st_size} bytes, too large for a key record "
                    f"(at most {MAX_RECORD_SIZE})"
                )
            return stream.read(MAX_RECORD_SIZE + 1)
    except OSError as exc:
        raise _Rejected(
            f"cannot be read ({exc.strerror or exc}); check its owner and "
            "mode"
        ) from None


def _open_nonblocking(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NONBLOCK | os.O_NOCTTY)


def _require_regular(mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    if stat.S_ISFIFO(mode):
        raise _Rejected("a named pipe (FIFO), not a key record")
    if stat.S_ISSOCK(mode):
        raise _Rejected("a socket, not a key record")
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        raise _Rejected("a device, not a key record")
    raise _Rejected("not a regular file")


class _Fields(list[tuple[str, Any]]):
    """The fields of one JSON object in file order, repeats included."""


def _loose_fields(data: bytes) -> _Fields:
    """Return the fields of a file's JSON object, however bad they are."""
    try:
        fields = json.loads(data, object_pairs_hook=_Fields)
    except (ValueError, RecursionError):
        return _Fields()
    return fields if isinstance(fields, _Fields) else _Fields()


def _claimed_indexes(fields: _Fields) -> set[int]:
    """Return every "index" of a file that could be a key's index.

    Read loosely, so that a skipped record still counts: each JSON
    integer from 0 to :data:`MAX_SAFE_INDEX`, repeated fields included.
    """
    return {
        value for name, value in fields
        if name == "index" and type(value) is int
        and 0 <= value <= MAX_SAFE_INDEX
    }


def _claimed_fingerprints(fields: _Fields) -> set[str]:
    """Return the fingerprints of the keys a file holds, read loosely.

    A key counts when it is hex, in either case, of a length its record
    states, whatever else is wrong with the record.
    """
    lengths = {
        value for name, value in fields
        if name == "length" and type(value) is int and value > 0
    }
    return {
        KeyMaterial.from_hex(value.lower()).fingerprint
        for name, value in fields
        if name == "key" and type(value) is str
        and len(value) % 2 == 0 and len(value) // 2 in lengths
        and _ANY_HEX.fullmatch(value)
    }


def _parse(data: bytes) -> dict[str, Any]:
    """Return a record's fields, checked for presence and type only."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _Rejected("not UTF-8 text") from None
    try:
        document = json.loads(text, object_pairs_hook=_no_repeated_names)
    except _Rejected:
        raise
    except ValueError:
        raise _Rejected("not valid JSON") from None
    except RecursionError:
        raise _Rejected("nested too deeply for a key record") from None
    if not isinstance(document, dict):
        raise _Rejected("not a JSON object")
    problem = field_problem(document, DOCUMENTED_FIELDS)
    if problem is not None:
        raise _Rejected(problem)
    extra = sorted(set(document) - set(DOCUMENTED_FIELDS))
    if extra:
        raise _Rejected(
            "unexpected field " + ", ".join(_shown(name) for name in extra)
        )
    return document


def _no_repeated_names(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for name, value in pairs:
        if name in document:
            raise _Rejected(f"field {_shown(name)} appears twice")
        document[name] = value
    return document


class _Judge:
    """Decide which records of the source are trusted.

    Each record is judged on its own first. The records that pass are
    then judged together: their timestamps must fit one order and, when
    validating, no key may be held twice. Only then is current.json
    compared with what was kept.
    """

    def __init__(self, now: int, validate: bool) -> None:
        self.now = now
        self.validate = validate
        self.trusted: dict[int, _Trusted] = {}
        self.skipped: list[tuple[str, str]] = []
        self.doubtful: list[tuple[int, str]] = []
        # indexes claimed by skipped records, for derivedFrom reasons
        self._skipped_indexes: set[int] = set()
        # the history/ record of the index current.json records, when it
        # passed on its own; current.json is compared with it at the end
        self._beside_current: _Trusted | None = None
        # the index current.json records, when it was trusted or a copy
        self._current_names: int | None = None

    def run(
        self, history: dict[int, _Candidate], current: _Candidate | None
    ) -> None:
        misnamed = []
        by_index: dict[int, _Candidate] = {}
        for index, candidate in sorted(history.items()):
            if candidate.index is not None and candidate.index != index:
                misnamed.append(candidate)
            else:
                by_index[index] = candidate

        current_index = None
        if current is not None and current.document is not None:
            current_index = current.index
            if current_index is not None and current_index < 0:
                current.problem = f"index {current_index} is negative"
                current.document = None
                current_index = None

        # each record on its own
        for index, candidate in by_index.items():
            self._judge(candidate, index)
        if current_index is not None:
            assert current is not None
            self._judge_current(
                current, by_index.get(current_index), current_index
            )

        # the records together
        self._keep_in_order()
        if self.validate:
            self._skip_repeated_keys()
        if current_index is not None:
            assert current is not None
            self._settle_current(
                current, by_index.get(current_index), current_index
            )

        for candidate in misnamed:
            self._judge_misnamed(candidate)
        if current is not None and current_index is None:
            # unreadable, or not a record at all
            self._skip(current, current.problem or "")
        if self.trusted:
            self._note_current(current)
            self._note_derivations()

    # -- one record on its own -------------------------------------------

    def _judge(self, candidate: _Candidate, index: int) -> None:
        """Trust or skip ``candidate``, read as the record of ``index``."""
        if candidate.document is None:
            self._skip(candidate, candidate.problem or "")
            return
        try:
            record = self._check(candidate, candidate.document, index)
        except _Rejected as exc:
            self._skip(candidate, str(exc))
            return
        self.trusted[index] = record

    def _check(
        self, candidate: _Candidate, document: dict[str, Any], index: int
    ) -> _Trusted:
        algorithm = document["algorithm"]
        if algorithm not in keygen.ALGORITHMS:
            raise _Rejected(
                f"algorithm {_shown(algorithm)} is not one of "
                + ", ".join(keygen.ALGORITHMS)
            )
        length = document["length"]
        if not MIN_KEY_LENGTH <= length <= MAX_KEY_LENGTH:
            raise _Rejected(
                f"length {length} is outside {MIN_KEY_LENGTH} to "
                f"{MAX_KEY_LENGTH} bytes"
            )
        text = document["key"]
        if _LOWER_HEX.fullmatch(text) is None:
            raise _Rejected("key is not lowercase hex (0-9a-f)")
        if len(text) != 2 * length:
            raise _Rejected(
                f"key has {len(text)} hex characters, expected "
                f"{2 * length} for a {length}-byte key"
            )

        derived_from = document["derivedFrom"]
        if derived_from is not None and not 0 <= derived_from < index:
            raise _Rejected(
                f"derivedFrom {derived_from} is not an index below "
                f"{index}"
            )
        timestamp = document["timestamp"]
        if timestamp < 0:
            raise _Rejected(f"timestamp {timestamp} is negative")
        ahead = timestamp - self.now
        if ahead > CLOCK_SKEW_ALLOWANCE_MS:
            raise _Rejected(
                f"dated {ahead // 1000} s in the future, beyond the "
                f"{CLOCK_SKEW_ALLOWANCE_MS // 1000} s allowed for clock "
                "skew: check the clock of the machine that made it, and "
                "of this one; imported, a key dated in the future would "
                "stop rotation"
            )

        material = self._material(text, length)
        return _Trusted(
            name=candidate.name,
            index=index,
            timestamp=timestamp,
            algorithm=algorithm,
            derived_from=derived_from,
            material=material,
            document=document,
        )

    def _material(self, text: str, length: int) -> KeyMaterial:
        if not self.validate:
            return KeyMaterial.from_hex(text)
        try:
            # keys held twice are found once the order is known
            return keygen.validate_key(text, length, frozenset())
        except KeyValidationError as exc:
            if exc.reason == "low_entropy":
                detail = keygen.check_entropy(bytes.fromhex(text))
                raise _Rejected(f"key looks degenerate: {detail}") from None
            raise _Rejected(f"key failed validation ({exc.reason})") from None

    def _skip(self, candidate: _Candidate, reason: str) -> None:
        self.skipped.append((candidate.name, reason))
        claimed = candidate.index
        if claimed is None:
            claimed = candidate.name_index
        if claimed is not None:
            self._skipped_indexes.add(claimed)

    def _drop(self, record: _Trusted, reason: str) -> None:
        """Skip a record that passed on its own."""
        del self.trusted[record.index]
        self.skipped.append((record.name, reason))
        self._skipped_indexes.add(record.index)

    # -- the records together --------------------------------------------

    def _keep_in_order(self) -> None:
        """Skip the records whose timestamps break the order of the rest."""
        records = [self.trusted[index] for index in sorted(self.trusted)]
        kept = _longest_in_order([record.timestamp for record in records])

        following: list[_Trusted | None] = [None] * len(records)
        after = None
        for position in reversed(range(len(records))):
            following[position] = after
            if kept[position]:
                after = records[position]

        before = None
        for position, record in enumerate(records):
            if kept[position]:
                before = record
            else:
                self._drop(
                    record,
                    _order_reason(record, before, following[position]),
                )

    def _skip_repeated_keys(self) -> None:
        first_holder: dict[str, _Trusted] = {}
        for index in sorted(self.trusted):
            record = self.trusted[index]
            first = first_holder.setdefault(
                record.material.fingerprint, record
            )
            if first is not record:
                self._drop(
                    record,
                    f"holds the same key as {first.name}, imported before "
                    "it",
                )

    # -- current.json and misnamed records -------------------------------

    def _judge_current(
        self, current: _Candidate, primary: _Candidate | None, index: int
    ) -> None:
        """Judge current.json on its own, as the record of ``index``.

        Beside a history/ record of ``index`` that passed on its own, it
        is not judged: :meth:`_settle_current` compares the two.
        """
        beside = self.trusted.get(index)
        if beside is not None:
            self._beside_current = beside
            return
        if primary is not None and primary.document is not None \
                and current.document == primary.document:
            self._skip(
                current,
                f"the same record as {primary.name}, skipped for the same "
                "reason",
            )
            return
        self._judge(current, index)

    def _settle_current(
        self, current: _Candidate, primary: _Candidate | None, index: int
    ) -> None:
        """Compare current.json, which records ``index``, with what is kept.
        """
        kept = self.trusted.get(index)
        beside = self._beside_current
        if beside is None:
            # judged on its own; kept, or skipped with its reason already
            if kept is None:
                return
            self._current_names = index
            if primary is None:
                note = "only in current.json, not in history/"
            else:
                note = (
                    f"imported from current.json: {primary.name} was "
                    "skipped"
                )
            self.doubtful.append((index, note))
            return

        same = current.document == beside.document
        if kept is not beside:
            if same:
                reason = (
                    f"the same record as {beside.name}, skipped for the "
                    "same reason"
                )
            else:
                reason = (
                    f"records index {index} with another key or other "
                    f"fields than {beside.name}, which is skipped too"
                )
            self._skip(current, reason)
        elif same:
            self._current_names = index
        else:
            self._skip(
                current,
                f"records index {index} with another key or other fields "
                f"than {beside.name}, which is imported",
            )
            self.doubtful.append((
                index,
                "current.json records this index with another key or "
                "other fields (skipped)",
            ))

    def _judge_misnamed(self, candidate: _Candidate) -> None:
        claimed = candidate.index
        assert candidate.document is not None and claimed is not None
        reason = f"records index {claimed}, not {candidate.name_index}"
        kept = self.trusted.get(claimed)
        if kept is None:
            reason += (
                f" (renamed or misplaced); no trusted record of index "
                f"{claimed} was imported"
            )
        elif candidate.document["key"] == kept.document["key"]:
            reason += f" (the same key as {kept.name}, which is imported)"
            self.doubtful.append((
                claimed,
                f"{candidate.name} also records index {claimed}, with the "
                "same key (skipped)",
            ))
        else:
            reason += (
                f" (a second key {claimed}, as racing rotators leave "
                f"behind); {kept.name} keeps index {claimed}"
            )
            self.doubtful.append((
                claimed,
                f"{candidate.name} also records index {claimed}, with "
                "another key (skipped)",
            ))
        self._skip(candidate, reason)

    # -- notes on what is kept -------------------------------------------

    def _note_current(self, current: _Candidate | None) -> None:
        """Say which key becomes current where current.json disagrees."""
        newest = max(self.trusted)
        if current is None:
            self.doubtful.append((
                newest,
                "the source has no current.json; this newest record "
                "becomes current",
            ))
        elif self._current_names is not None:
            if self._current_names != newest:
                self.doubtful.append((
                    newest,
                    f"current.json names key {self._current_names} as "
                    "current; this newest record becomes current",
                ))
        else:
            for position, (name, reason) in enumerate(self.skipped):
                if name == CURRENT_NAME:
                    self.skipped[position] = (
                        name, f"{reason}; key {newest} becomes current",
                    )

    def _note_derivations(self) -> None:
        """Flag keys not derived from the key before them in the source.

        The key before is the nearest lower index any record of the
        source claims, trusted or skipped.
        """
        held = sorted(set(self.trusted) | self._skipped_indexes)
        for index in sorted(self.trusted):
            source = self.trusted[index].derived_from
            if source is None:
                continue
            if source in self.trusted:
                where = ""
            elif source in self._skipped_indexes:
                where = ", whose record was skipped"
            else:
                where = ", which is not in the source"
            lower = bisect.bisect_left(held, index)
            before = held[lower - 1] if lower else None
            if before is not None and source < before:
                where += f", not from key {before} before it"
            if where:
                self.doubtful.append((
                    index, f"derived from key {source}{where}",
                ))


def _longest_in_order(timestamps: list[int]) -> list[bool]:
    """Mark the longest run whose timestamps never decrease.

    The run keeps positions in their order, not necessarily adjacent
    ones. Of the runs of that length, the one keeping later positions
    wins: the last position that ends such a run, then the last before
    it that can precede it, and so on. O(n log n).
    """
    # ends[k]: the smallest timestamp that ends a run of k + 1
    ends: list[int] = []
    longest_ending: list[int] = []
    for timestamp in timestamps:
        length = bisect.bisect_right(ends, timestamp)
        if length == len(ends):
            ends.append(timestamp)
        else:
            ends[length] = timestamp
        longest_ending.append(length + 1)

    kept = [False] * len(timestamps)
    wanted = len(ends)
    bound: int | None = None
    for position in reversed(range(len(timestamps))):
        timestamp = timestamps[position]
        if wanted and longest_ending[position] == wanted \
                and (bound is None or timestamp <= bound):
            kept[position] = True
            bound = timestamp
            wanted -= 1
    return kept


def _order_reason(
    record: _Trusted, before: _Trusted | None, after: _Trusted | None
) -> str:
    """Say how a record skipped for its timestamp breaks the order.

    :param before: the nearest record kept before it, by index.
    :param after: the nearest record kept after it.
    """
    if before is not None and record.timestamp < before.timestamp:
        gap = before.timestamp - record.timestamp
        where = f"{_span(gap)} before {before.name}, the record kept before"
    else:
        # outside the longest run, so out of order with one neighbour
        assert after is not None and record.timestamp > after.timestamp
        gap = record.timestamp - after.timestamp
        where = f"{_span(gap)} after {after.name}, the record kept after"
    return f"dated out of order with its neighbours ({where} it)"


def _span(ms: int) -> str:
    """Say a duration in ms as an operator reads it, rounded down."""
    for unit, size in (
        ("days", 86_400_000),
        ("h", 3_600_000),
        ("min", 60_000),
        ("s", 1000),
    ):
        if ms >= 2 * size:
            return f"{ms // size} {unit}"
    return f"{ms} ms"


def _shown(text: str) -> str:
    """Quote a name from the source, unless it might be key material."""
    if len(text) <= 24 and _PLAIN_NAME.fullmatch(text) \
            and not _LONG_HEX.fullmatch(text):
        return repr(text)
    return f"(a {len(text)}-character name, not shown)"


def _skipped_order(item: tuple[str, str]) -> tuple[int, int, str]:
    return _name_order(item[0])


def _name_order(name: str) -> tuple[int, int, str]:
    """Order names of the source: history/ by index, then current.json."""
    if name.startswith(f"{HISTORY_NAME}/"):
        match = RECORD_NAME.fullmatch(name[len(HISTORY_NAME) + 1:])
        if match:
            return (0, int(match.group(1)), name)
        return (1, 0, name)
    return (2, 0, name)
