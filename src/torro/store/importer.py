"""Bring in a key directory of the original Node.js daemon.

The original layout is plaintext::

    <source>/
      current.json          the record of the key it used last
      history/key-N.json    one record per key, N its index
      hashes/, passwords/   other features' files, not key records

and each record is ``{"key": "<hex>", "index": N, "timestamp": <ms>,
"algorithm": "sha256", "length": 32, "derivedFrom": N - 1 or null}``.

The source is only read. Each record is judged on its own and against the
records before it (by index), and lands in one of three lists of the
:class:`ImportReport`:

- **imported**: a trusted record. It has exactly the six fields, of the
  right JSON types (true and false are not numbers); its index is the N of
  its file name; its algorithm is one of :data:`torro.keygen.ALGORITHMS`;
  its length is 16 to 1024 bytes and its key exactly that many bytes of
  lowercase hex; derivedFrom is null or an index below its own; it is not
  dated before the trusted record before it, nor more than the allowed
  clock skew in the future; and, when validating, its key passes
  :func:`torro.keygen.validate_key` (not degenerate, not a key already
  imported).
- **skipped**: anything else named like a record, with a one-line reason.
  A skipped record is not imported; the source keeps it.
- **doubtful**: imported, but worth a look: it was derived from a key the
  source does not hold, another file also records its index, or
  current.json disagrees with it.

The newest trusted record becomes the current key, whatever current.json
of the source says. Nothing is destroyed: the newest ``max_history`` keys
are retained, the older ones go to the store's archive/, sealed like the
rest, with their fingerprints retired. Index, timestamp, algorithm, length
and derivedFrom are kept exactly.

No reason, report or log line holds key material: records are named by
file and index only.
"""

import dataclasses
import json
import logging
import os
import re
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
from torro.store.layout import RECORD_NAME
from torro.store.records import DOCUMENTED_FIELDS, field_problem


MIN_KEY_LENGTH = 16
MAX_KEY_LENGTH = 1024
# A record of the longest key is about 2.3 KiB; anything much larger is
# not a key record and is not read into memory.
MAX_RECORD_SIZE = 64 * 1024

CURRENT_NAME = "current.json"
HISTORY_NAME = "history"

_LOWER_HEX = re.compile(r"[0-9a-f]*")
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
    """

    imported: list[int]
    archived: list[int]
    skipped: list[tuple[str, str]]
    doubtful: list[tuple[int, str]]
    ignored: list[str]
    current_index: int

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


def import_directory(
    source: Path, store: KeyStore, *, validate: bool = True
) -> ImportReport:
    """Import a Node.js daemon's key directory into an empty key store.

    The source is read in full and judged before the store is touched;
    then the trusted keys are written as one new chain, under the store
    lock, the newest ``store.max_history`` in history/ and the rest in
    archive/. The source is never written.

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
    history, current, skipped, ignored = _scan(source)
    judge = _Judge(store.clock(), validate)
    judge.run(history, current)
    judge.skipped.extend(skipped)
    report_skipped = sorted(judge.skipped, key=_skipped_order)
    for name, reason in report_skipped:
        security_log.warning("import: skipped %s: %s", name, reason)
    if not judge.trusted:
        raise StoreError(
            f"no record in {source} can be imported ({len(report_skipped)} "
            "skipped, see the security log): nothing was written"
        )

    trusted = [judge.trusted[index] for index in sorted(judge.trusted)]
    keep = max(1, store.max_history)
    retained, archived = trusted[-keep:], trusted[:-keep]
    with store.locked():
        _require_empty(store)
        store.write_chain(
            [record.entry() for record in retained],
            next_index=trusted[-1].index + 1,
            archived=[record.entry() for record in archived],
        )

    report = ImportReport(
        imported=[record.index for record in trusted],
        archived=[record.index for record in archived],
        skipped=report_skipped,
        doubtful=sorted(judge.doubtful),
        ignored=sorted(ignored),
        current_index=trusted[-1].index,
    )
    for index, reason in report.doubtful:
        security_log.info("import: key %d is doubtful: %s", index, reason)
    security_log.info(
        "imported %s into %s: imported %d (retained %d, archived %d), "
        "skipped %d, doubtful %d, current index %d",
        source, store.root, len(report.imported), len(retained),
        len(archived), len(report.skipped), len(report.doubtful),
        report.current_index,
    )
    return report


def _require_empty(store: KeyStore) -> None:
    if not store.is_empty():
        raise StoreError(
            f"the key store {store.root} already holds keys: point "
            "KEY_STORAGE_PATH at a new directory (or move the store away) "
            "before importing; nothing was changed"
        )


def _scan(
    source: Path,
) -> tuple[
    dict[int, _Candidate], _Candidate | None, list[tuple[str, str]],
    list[str],
]:
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

    skipped: list[tuple[str, str]] = []
    ignored: list[str] = []
    for entry in _entries(source):
        if entry.name in (HISTORY_NAME, CURRENT_NAME):
            continue
        ignored.append(entry.name + "/" if entry.is_dir() else entry.name)

    history: dict[int, _Candidate] = {}
    if history_dir.is_dir():
        for entry in _entries(history_dir):
            name = f"{HISTORY_NAME}/{entry.name}"
            if entry.is_dir():
                skipped.append((name + "/", "a folder, not a key record"))
                continue
            match = RECORD_NAME.fullmatch(entry.name)
            if match is None:
                skipped.append((name, "not a key record name (key-N.json)"))
                continue
            index = int(match.group(1))
            history[index] = _read_candidate(Path(entry.path), name, index)

    current = None
    if current_path.is_dir():
        skipped.append((CURRENT_NAME + "/", "a folder, not a key record"))
    elif current_path.exists():
        current = _read_candidate(current_path, CURRENT_NAME, None)
    return history, current, skipped, ignored


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
    try:
        candidate.document = _parse(_read(path))
    except _Rejected as exc:
        candidate.problem = str(exc)
    return candidate


def _read(path: Path) -> bytes:
    try:
        with open(path, "rb") as stream:
            status = os.fstat(stream.fileno())
            if not _is_regular(status.st_mode):
                raise _Rejected("not a regular file")
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


def _is_regular(mode: int) -> bool:
    return (mode & 0o170000) == 0o100000


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
    """Decide, index by index, which records are trusted."""

    def __init__(self, now: int, validate: bool) -> None:
        self.now = now
        self.validate = validate
        self.trusted: dict[int, _Trusted] = {}
        self.skipped: list[tuple[str, str]] = []
        self.doubtful: list[tuple[int, str]] = []
        # indexes claimed by skipped records, for derivedFrom reasons
        self._skipped_indexes: set[int] = set()
        self._seen: dict[str, str] = {}
        self._previous: _Trusted | None = None
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

        indexes = set(by_index)
        if current_index is not None:
            indexes.add(current_index)
        for index in sorted(indexes):
            primary = by_index.get(index)
            if primary is not None:
                self._judge(primary, index)
            if index == current_index:
                assert current is not None
                self._judge_current(current, primary, index)

        for candidate in misnamed:
            self._judge_misnamed(candidate)
        if current is not None and current_index is None:
            # unreadable, or not a record at all
            self._skip(current, current.problem or "")
        if self.trusted:
            self._note_current(current)
            self._note_derivations()

    # -- one record ----------------------------------------------------

    def _judge(self, candidate: _Candidate, index: int) -> bool:
        """Trust or skip ``candidate``, read as the record of ``index``."""
        if candidate.document is None:
            self._skip(candidate, candidate.problem or "")
            return False
        try:
            record = self._check(candidate, candidate.document, index)
        except _Rejected as exc:
            self._skip(candidate, str(exc))
            return False
        self.trusted[index] = record
        self._seen[record.material.fingerprint] = record.name
        self._previous = record
        return True

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
                "skew"
            )
        previous = self._previous
        if previous is not None and timestamp < previous.timestamp:
            raise _Rejected(
                f"dated {previous.timestamp - timestamp} ms before "
                f"{previous.name} (key {previous.index}), the trusted "
                "record before it"
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
            return keygen.validate_key(text, length, self._seen)
        except KeyValidationError as exc:
            if exc.reason == "duplicate":
                first = self._seen[KeyMaterial.from_hex(text).fingerprint]
                raise _Rejected(
                    f"holds the same key as {first}, imported before it"
                ) from None
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

    # -- current.json and misnamed records -----------------------------

    def _judge_current(
        self, current: _Candidate, primary: _Candidate | None, index: int
    ) -> None:
        """Judge current.json, which records ``index``."""
        kept = self.trusted.get(index)
        if kept is not None:
            if current.document == kept.document:
                self._current_names = index
                return
            self._skip(
                current,
                f"records index {index} with another key or other fields "
                f"than {kept.name}, which is imported",
            )
            self.doubtful.append((
                index,
                "current.json records this index with another key or "
                "other fields (skipped)",
            ))
            return
        if primary is not None and primary.document is not None \
                and current.document == primary.document:
            self._skip(
                current,
                f"the same record as {primary.name}, skipped for the same "
                "reason",
            )
            return
        if not self._judge(current, index):
            return
        self._current_names = index
        if primary is None:
            self.doubtful.append((
                index, "only in current.json, not in history/",
            ))
        else:
            self.doubtful.append((
                index,
                f"imported from current.json: {primary.name} was skipped",
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
        for index in sorted(self.trusted):
            source = self.trusted[index].derived_from
            if source is None or source in self.trusted:
                continue
            if source in self._skipped_indexes:
                where = "whose record was skipped"
            else:
                where = "which is not in the source"
            self.doubtful.append((
                index, f"derived from key {source}, {where}",
            ))


def _shown(text: str) -> str:
    """Quote a name from the source, unless it might be key material."""
    if len(text) <= 24 and _PLAIN_NAME.fullmatch(text) \
            and not _LONG_HEX.fullmatch(text):
        return repr(text)
    return f"(a {len(text)}-character name, not shown)"


def _skipped_order(item: tuple[str, str]) -> tuple[int, int, str]:
    name = item[0]
    if name.startswith(f"{HISTORY_NAME}/"):
        match = RECORD_NAME.fullmatch(name[len(HISTORY_NAME) + 1:])
        if match:
            return (0, int(match.group(1)), name)
        return (1, 0, name)
    return (2, 0, name)
