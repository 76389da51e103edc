"""Tests for torro.store.importer: the Node.js daemon's key directory.

The fixture in tests/fixtures/node-keys is real output of a buggy
daemon. Analysed by hand: history/ holds 919 files for indexes 0 to 921;
3, 7 and 11 are missing, so keys 4, 8 and 12 are derived from keys the
source does not hold; history/key-19.json records a second index 18 (two
racing rotators), so no genuine key 19 exists and key 20 is derived from a
key the source does not hold; current.json equals key-921.json. hashes/
and passwords/ belong to other features.
"""

import contextlib
import dataclasses
import hashlib
import itertools
import json
import os
import shutil
import signal
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from torro import keygen, logs
from torro.errors import KeyValidationError, StoreError
from torro.material import KeyMaterial
from torro.rotation import KeyRotationDaemon, RotationPolicy
from torro.sealing import MasterKey, Sealer
from torro.store import importer
from torro.store.importer import (
    ImportReport,
    import_directory,
    read_source,
    write_plan,
)
from torro.store.keystore import (
    CLOCK_SKEW_ALLOWANCE_MS,
    KeyStore,
    now_ms,
)
from torro.store.layout import store_is_empty
from torro.store.records import parse_record


if TYPE_CHECKING:
    from runner import Torro

FIXTURE = Path(__file__).parents[1] / "fixtures" / "node-keys"
needs_fixture = pytest.mark.skipif(
    not FIXTURE.is_dir(), reason="the Node.js fixture is not available"
)

# From the analysis above, not from running the importer.
FIXTURE_MISSING = {3, 7, 11, 19}
FIXTURE_IMPORTED = [i for i in range(922) if i not in FIXTURE_MISSING]
FIXTURE_RETAINED = list(range(822, 922))
FIXTURE_ARCHIVED = [i for i in FIXTURE_IMPORTED if i < 822]
FIXTURE_SKIPPED = [(
    "history/key-19.json",
    "records index 18, not 19 (a second key 18, as racing rotators leave "
    "behind); history/key-18.json keeps index 18",
)]
FIXTURE_DOUBTFUL = [
    (4, "derived from key 3, which is not in the source"),
    (8, "derived from key 7, which is not in the source"),
    (12, "derived from key 11, which is not in the source"),
    (18, "history/key-19.json also records index 18, with another key "
         "(skipped)"),
    (20, "derived from key 19, which is not in the source"),
]

T0 = 1_758_794_540_863
NOW = T0 + 24 * 3600 * 1000
SALT = hashlib.shake_256(b"pinned salt").digest(keygen.SALT_LENGTH)
ENTROPY = hashlib.shake_256(b"pinned entropy").digest(32)


class PinnedRandom:
    """Random source that gives the fixed salt, then the fixed entropy."""

    def __init__(self) -> None:
        self.outputs = [SALT, ENTROPY]

    def token_bytes(self, n: int) -> bytes:
        output = self.outputs.pop(0)
        assert len(output) == n, f"asked for {n}, pinned {len(output)}"
        return output


def make_store(
    root: Path,
    *,
    max_history: int = 100,
    sealer: Sealer | None = None,
    clock: Callable[[], int] | None = None,
) -> KeyStore:
    return KeyStore(
        root,
        sealer or Sealer(MasterKey(os.urandom(32))),
        max_history=max_history,
        clock=clock or now_ms,
    )


def key_hex(label: str, length: int = 32) -> str:
    """Return reproducible key hex that passes the entropy check."""
    return hashlib.shake_256(label.encode()).digest(length).hex()


def record(index: int, /, **fields: Any) -> dict[str, Any]:
    """Return a source record of ``index``, one second after the last."""
    document = {
        "key": key_hex(f"key {index}"),
        "index": index,
        "timestamp": T0 + index * 1000,
        "algorithm": "sha256",
        "length": 32,
        "derivedFrom": index - 1 if index else None,
    }
    document.update(fields)
    return document


def write_source(root: Path, files: dict[str, Any]) -> Path:
    """Write a source directory; bytes as is, anything else as JSON."""
    root.mkdir()
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if not isinstance(content, bytes):
            content = json.dumps(content, indent=2).encode()
        path.write_bytes(content)
    return root


def baseline(**extra: Any) -> dict[str, Any]:
    """Keys 0 and 1, with current.json a copy of key 1."""
    files: dict[str, Any] = {
        "history/key-0.json": record(0),
        "history/key-1.json": record(1),
        "current.json": record(1),
    }
    files.update(extra)
    return files


CLOCK_ADVICE = (
    "check the clock of the machine that made it, and of this one; "
    "imported, a key dated in the future would stop rotation"
)


def tree_digest(root: Path) -> dict[str, tuple[int, str]]:
    """Map every path under ``root`` to its mode and content hash."""
    found = {}
    for directory, names, file_names in os.walk(root):
        for name in names + file_names:
            path = Path(directory) / name
            status = path.lstat()
            digest = ""
            if stat.S_ISREG(status.st_mode):
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found[str(path.relative_to(root))] = (status.st_mode, digest)
    return found


def source_keys(root: Path) -> dict[str, str]:
    """Map every record file of a source to the key hex it holds."""
    keys = {}
    for path in [root / "current.json", *(root / "history").iterdir()]:
        document = json.loads(path.read_bytes())
        keys[str(path.relative_to(root))] = document["key"]
    return keys


def report_text(report: ImportReport) -> str:
    return repr(report) + json.dumps(dataclasses.asdict(report))


# -- the fixture -----------------------------------------------------------


def racing_fingerprint() -> str:
    """The fingerprint of the second key 18, in history/key-19.json."""
    document = json.loads((FIXTURE / "history/key-19.json").read_bytes())
    return KeyMaterial.from_hex(document["key"]).fingerprint


@dataclasses.dataclass
class FixtureImport:
    store: KeyStore
    report: ImportReport
    log_dir: Path
    source_before: dict[str, tuple[int, str]]
    source_after: dict[str, tuple[int, str]]


@pytest.fixture(scope="module")
def imported(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[FixtureImport]:
    """Import the fixture once, with max_history 100, logging to files."""
    if not FIXTURE.is_dir():
        pytest.skip("the Node.js fixture is not available")
    tmp = tmp_path_factory.mktemp("fixture-import")
    log_dir = tmp / "logs"
    store = make_store(tmp / "keys")
    before = tree_digest(FIXTURE)
    logs.configure_logging(log_dir, "debug")
    try:
        report = import_directory(FIXTURE, store)
    finally:
        logs.reset_logging()
    yield FixtureImport(store, report, log_dir, before, tree_digest(FIXTURE))


@needs_fixture
def test_fixture_report(imported: FixtureImport) -> None:
    report = imported.report
    assert report.imported == FIXTURE_IMPORTED
    assert len(report.imported) == 918
    assert report.archived == FIXTURE_ARCHIVED
    assert len(report.archived) == len(report.imported) - 100 == 818
    assert report.retained == FIXTURE_RETAINED
    assert report.skipped == FIXTURE_SKIPPED
    assert report.doubtful == FIXTURE_DOUBTFUL
    assert report.ignored == ["hashes/", "passwords/"]
    assert report.current_index == 921
    assert report.next_index == 922
    assert report.retired_skipped == ["history/key-19.json"]


@needs_fixture
def test_fixture_store_holds_the_retained_keys(
    imported: FixtureImport,
) -> None:
    store = make_store(imported.store.root, sealer=imported.store.sealer)
    assert store.verify() == []
    store.load()
    assert store.problem is None
    assert sorted(store.records) == FIXTURE_RETAINED
    assert store.current is not None and store.current.index == 921
    assert store.next_index == 922
    assert sorted(os.listdir(store.history_dir)) == sorted(
        f"key-{index}.json" for index in FIXTURE_RETAINED
    )
    for index in (822, 900, 921):
        source = json.loads(
            (FIXTURE / "history" / f"key-{index}.json").read_bytes()
        )
        assert store.material(index).reveal_hex() == source["key"]
        kept = store.records[index]
        assert kept.sealed
        assert kept.timestamp == source["timestamp"]
        assert kept.derived_from == source["derivedFrom"]


@needs_fixture
def test_fixture_archive_opens_to_the_source_keys(
    imported: FixtureImport,
) -> None:
    store = imported.store
    names = sorted(os.listdir(store.archive_dir))
    assert names == sorted(f"key-{i}.json" for i in FIXTURE_ARCHIVED)

    previous = None
    for index in FIXTURE_ARCHIVED:
        archived = parse_record(
            (store.archive_dir / f"key-{index}.json").read_bytes()
        )
        source = json.loads(
            (FIXTURE / "history" / f"key-{index}.json").read_bytes()
        )
        assert archived.sealed
        material = store.sealer.open(index, archived.key_text)
        assert material.reveal_hex() == source["key"]
        assert archived.index == index
        assert archived.timestamp == source["timestamp"]
        assert archived.derived_from == source["derivedFrom"]
        assert archived.algorithm == source["algorithm"]
        assert archived.length == source["length"]
        assert archived.fingerprint == material.fingerprint
        assert archived.fingerprint in store.retired_fingerprints
        assert store.sealer.checksum_matches(
            archived.checksum_payload(), archived.checksum
        )
        assert archived.previous_checksum == previous
        previous = archived.checksum
    # the retained chain continues the archived one
    assert store.records[822].previous_checksum == previous
    # and the skipped second key 18 is retired with them
    assert len(store.retired_fingerprints) == 818 + 1
    assert racing_fingerprint() in store.retired_fingerprints


@needs_fixture
def test_fixture_keeps_racing_and_doubtful_records_exactly(
    imported: FixtureImport,
) -> None:
    store = imported.store
    key_18 = json.loads((FIXTURE / "history/key-18.json").read_bytes())
    archived = parse_record((store.archive_dir / "key-18.json").read_bytes())
    assert archived.timestamp == key_18["timestamp"]
    opened = store.sealer.open(18, archived.key_text)
    assert opened.reveal_hex() == key_18["key"]
    for index, derived_from in ((4, 3), (20, 19)):
        archived = parse_record(
            (store.archive_dir / f"key-{index}.json").read_bytes()
        )
        assert archived.derived_from == derived_from


@needs_fixture
def test_fixture_rotation_continues_the_chain(
    imported: FixtureImport, tmp_path: Path
) -> None:
    root = tmp_path / "keys"
    shutil.copytree(imported.store.root, root)
    store = make_store(root, sealer=imported.store.sealer)
    daemon = KeyRotationDaemon(
        store,
        RotationPolicy(rotation_interval_ms=3_600_000,
                       derivation_rounds=1000),
        random=PinnedRandom(),
    )

    rotation = daemon.rotate(force=True)

    assert rotation is not None
    assert rotation.record.index == 922
    assert rotation.record.derived_from == 921
    current = json.loads((FIXTURE / "current.json").read_bytes())
    previous = KeyMaterial.from_hex(current["key"])
    expected = keygen.derive_next_key(
        previous, algorithm="sha256", rounds=1000, length=32,
        random=PinnedRandom(),
    )
    by_hand = hashlib.sha256(
        hashlib.pbkdf2_hmac("sha256", previous.reveal(), SALT, 1000, 32)
        + ENTROPY
    ).digest()
    assert expected.reveal() == by_hand
    reloaded = make_store(root, sealer=store.sealer)
    reloaded.load()
    assert reloaded.current is not None
    assert reloaded.current.index == 922
    assert reloaded.current_material() == expected
    assert reloaded.verify() == []
    assert min(reloaded.records) == 823


@needs_fixture
def test_fixture_source_unchanged(imported: FixtureImport) -> None:
    assert imported.source_after == imported.source_before
    assert len(imported.source_before) == 925


@needs_fixture
def test_fixture_no_key_material_in_report_or_logs(
    imported: FixtureImport,
) -> None:
    keys = source_keys(FIXTURE)
    assert len(keys) == 920
    text = report_text(imported.report)
    log_text = {
        path.name: path.read_text()
        for path in imported.log_dir.iterdir()
    }
    assert set(log_text) == set(logs.CHANNEL_FILES.values())
    for key in keys.values():
        assert key not in text
        for content in log_text.values():
            assert key not in content
            assert key.upper() not in content


@needs_fixture
def test_fixture_security_log_lines(imported: FixtureImport) -> None:
    lines = (imported.log_dir / "security.log").read_text().splitlines()
    warnings = [line for line in lines if " WARN " in line]
    assert len(warnings) == 1
    assert warnings[0].endswith(
        "import: skipped history/key-19.json: " + FIXTURE_SKIPPED[0][1]
    )
    summary = [line for line in lines if " imported " in line]
    assert len(summary) == 1
    assert summary[0].endswith(
        f"imported {FIXTURE} into {imported.store.root}: imported 918 "
        "(retained 100, archived 818), skipped 1, doubtful 5, current "
        "index 921, next index 922"
    )
    assert " INFO " in summary[0]
    assert any(
        line.endswith(
            "import: retired the key of skipped history/key-19.json: it "
            "is never made again"
        )
        for line in lines
    )


@needs_fixture
def test_fixture_with_long_retention_archives_nothing(
    tmp_path: Path,
) -> None:
    store = make_store(tmp_path / "keys", max_history=1000)

    report = import_directory(FIXTURE, store)

    assert report.imported == FIXTURE_IMPORTED
    assert report.archived == []
    assert report.retained == FIXTURE_IMPORTED
    assert report.skipped == FIXTURE_SKIPPED
    assert report.doubtful == FIXTURE_DOUBTFUL
    assert not store.archive_dir.exists()
    assert sorted(store.records) == FIXTURE_IMPORTED
    assert store.retired_fingerprints == {racing_fingerprint()}
    assert store.verify() == []


# -- crafted sources: what is skipped, and why -------------------------------

SKIP_CASES: dict[str, tuple[str, Any, str]] = {
    "bad json": (
        "history/key-2.json", b'{"key": ', "not valid JSON",
    ),
    "empty file": ("history/key-2.json", b"", "not valid JSON"),
    "not utf-8": (
        "history/key-2.json", b'{"key": "\xff\xfe"}', "not UTF-8 text",
    ),
    "not an object": ("history/key-2.json", [record(2)],
                      "not a JSON object"),
    "repeated field": (
        "history/key-2.json",
        json.dumps(record(2))[:-1].encode() + b', "index": 2}',
        "field 'index' appears twice",
    ),
    "missing field": (
        "history/key-2.json",
        {k: v for k, v in record(2).items() if k != "derivedFrom"},
        "field 'derivedFrom' is missing",
    ),
    "unexpected field": (
        "history/key-2.json", record(2, comment="x"),
        "unexpected field 'comment'",
    ),
    "unexpected field named like a key": (
        "history/key-2.json", record(2, **{key_hex("extra"): 1}),
        "unexpected field (a 64-character name, not shown)",
    ),
    "timestamp as string": (
        "history/key-2.json", record(2, timestamp=str(T0 + 2000)),
        "field 'timestamp' is not an integer",
    ),
    "length as float": (
        "history/key-2.json", record(2, length=32.0),
        "field 'length' is not an integer",
    ),
    "bool index": (
        "history/key-2.json", record(2, index=True),
        "field 'index' is not an integer",
    ),
    "bool derivedFrom": (
        "history/key-2.json", record(2, derivedFrom=True),
        "field 'derivedFrom' is not an integer or null",
    ),
    "uppercase hex": (
        "history/key-2.json", record(2, key=key_hex("key 2").upper()),
        "key is not lowercase hex (0-9a-f)",
    ),
    "short key": (
        "history/key-2.json", record(2, key=key_hex("key 2")[:62]),
        "key has 62 hex characters, expected 64 for a 32-byte key",
    ),
    "length too small": (
        "history/key-2.json",
        record(2, key=key_hex("key 2", 8), length=8),
        "length 8 is outside 16 to 1024 bytes",
    ),
    "unknown algorithm": (
        "history/key-2.json", record(2, algorithm="md5"),
        "algorithm 'md5' is not one of sha256, sha384, sha512",
    ),
    "derived from a later key": (
        "history/key-2.json", record(2, derivedFrom=2),
        "derivedFrom 2 is not an index below 2",
    ),
    "negative timestamp": (
        "history/key-2.json", record(2, timestamp=-1),
        "timestamp -1 is negative",
    ),
    "timestamp going backwards": (
        "history/key-2.json", record(2, timestamp=T0 - 5),
        "dated out of order with its neighbours (1005 ms before "
        "history/key-1.json, the record kept before it)",
    ),
    "future timestamp": (
        "history/key-2.json",
        record(2, timestamp=NOW + CLOCK_SKEW_ALLOWANCE_MS + 3_600_000),
        "dated 3900 s in the future, beyond the 300 s allowed for clock "
        f"skew: {CLOCK_ADVICE}",
    ),
    "duplicate key": (
        "history/key-2.json", record(2, key=key_hex("key 0")),
        "holds the same key as history/key-0.json, imported before it",
    ),
    "all zeros": (
        "history/key-2.json", record(2, key="00" * 32),
        "key looks degenerate: byte entropy 0.00 bits is below 3.50",
    ),
    "counting bytes": (
        "history/key-2.json", record(2, key=bytes(range(32)).hex()),
        "key looks degenerate: difference entropy 0.00 bits is below 3.47",
    ),
    "file name mismatch": (
        "history/key-2.json", record(5),
        "records index 5, not 2 (renamed or misplaced); no trusted record "
        "of index 5 was imported",
    ),
    "not a record name": (
        "history/key-02.json", record(2),
        "not a key record name (key-N.json)",
    ),
    "temporary file": (
        "history/.key-2.json.tmp", record(2),
        "not a key record name (key-N.json)",
    ),
    "nested too deeply": (
        # before, RecursionError ended the import with a traceback
        "history/key-2.json", b"[" * 5000,
        "nested too deeply for a key record",
    ),
    "too large": (
        "history/key-2.json", b" " * (importer.MAX_RECORD_SIZE + 1),
        f"{importer.MAX_RECORD_SIZE + 1} bytes, too large for a key record "
        f"(at most {importer.MAX_RECORD_SIZE})",
    ),
}


@pytest.mark.parametrize("case", sorted(SKIP_CASES))
def test_skip_reason(case: str, tmp_path: Path) -> None:
    name, content, reason = SKIP_CASES[case]
    files = baseline(**{name: content})
    source = write_source(tmp_path / "node", files)
    store = make_store(tmp_path / "keys", clock=lambda: NOW)

    report = import_directory(source, store)

    assert report.skipped == [(name, reason)]
    assert report.imported == [0, 1]
    assert report.current_index == 1
    assert report.doubtful == []
    assert store.verify() == []
    text = report_text(report)
    for key in source_keys_of(files):
        assert key not in text


def source_keys_of(files: dict[str, Any]) -> list[str]:
    keys = []
    for content in files.values():
        if isinstance(content, dict) and isinstance(content["key"], str):
            keys.append(content["key"])
            keys.extend(k for k in content if len(k) == 64)
    return keys


def test_bool_index_is_not_index_one(tmp_path: Path) -> None:
    # true == 1 in Python; a record must not pass as key 1 with it
    source = write_source(tmp_path / "node", baseline(**{
        "history/key-1.json": record(1, index=True),
        "current.json": record(0),
    }))

    report = import_directory(source, make_store(tmp_path / "keys"))

    assert report.skipped == [
        ("history/key-1.json", "field 'index' is not an integer"),
    ]
    assert report.imported == [0]
    assert report.doubtful == []


def test_unreadable_record_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = write_source(tmp_path / "node", baseline(**{
        "history/key-2.json": record(2),
    }))
    locked = source / "history" / "key-2.json"

    def deny(path: Any, *args: Any, **kwargs: Any) -> Any:
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied")
        return open(path, *args, **kwargs)

    monkeypatch.setattr(importer, "open", deny, raising=False)
    report = import_directory(source, make_store(tmp_path / "keys"))

    assert report.skipped == [(
        "history/key-2.json",
        "cannot be read (Permission denied); check its owner and mode",
    )]
    assert report.imported == [0, 1]


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail what runs inside if it takes longer, even blocked in open()."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("name", ["history/key-6.json", "current.json"])
def test_named_pipe_skipped_without_waiting_for_a_writer(
    tmp_path: Path, name: str
) -> None:
    # before, open() waited forever for a writer to the pipe
    files = baseline()
    files.pop(name, None)
    source = write_source(tmp_path / "node", files)
    os.mkfifo(source / name)
    store = make_store(tmp_path / "keys")

    with deadline(10):
        report = import_directory(source, store)

    reason = "a named pipe (FIFO), not a key record"
    if name == "current.json":
        reason += "; key 1 becomes current"
    assert report.skipped == [(name, reason)]
    assert report.imported == [0, 1]
    assert report.next_index == (7 if name != "current.json" else 2)


def test_device_skipped_without_opening_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = write_source(tmp_path / "node", baseline())
    (source / "history" / "key-2.json").symlink_to("/dev/null")
    opened = []

    def record_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(str(path))
        return open(path, *args, **kwargs)

    monkeypatch.setattr(importer, "open", record_open, raising=False)
    plan = read_source(source, now=NOW)

    assert plan.skipped == [
        ("history/key-2.json", "a device, not a key record"),
    ]
    assert not any(path.endswith("key-2.json") for path in opened)


def test_folders_sorted_out(tmp_path: Path) -> None:
    source = write_source(tmp_path / "node", baseline(**{
        "history/old/key-2.json": record(2),
        "hashes/current.json": {"hash": "00"},
        "passwords/admin.json": {"hash": "00"},
        "notes.txt": b"kept by hand\n",
    }))
    (source / "history" / "key-3.json").mkdir()

    report = import_directory(source, make_store(tmp_path / "keys"))

    assert report.ignored == ["hashes/", "notes.txt", "passwords/"]
    assert report.skipped == [
        ("history/key-3.json/", "a folder, not a key record"),
        ("history/old/", "a folder, not a key record"),
    ]
    assert report.imported == [0, 1]


def test_second_record_of_an_index(tmp_path: Path) -> None:
    racing = record(1, key=key_hex("racing 1"), timestamp=T0 + 1002)
    source = write_source(tmp_path / "node", baseline(**{
        "history/key-2.json": racing,
        "history/key-3.json": record(3),
    }))

    report = import_directory(source, make_store(tmp_path / "keys"))

    assert report.imported == [0, 1, 3]
    assert report.skipped == [(
        "history/key-2.json",
        "records index 1, not 2 (a second key 1, as racing rotators leave "
        "behind); history/key-1.json keeps index 1",
    )]
    assert report.doubtful == [
        (1, "history/key-2.json also records index 1, with another key "
            "(skipped)"),
        (3, "current.json names key 1 as current; this newest record "
            "becomes current"),
        (3, "derived from key 2, which is not in the source"),
    ]
    assert report.current_index == 3


def test_derived_from_a_skipped_record(tmp_path: Path) -> None:
    source = write_source(tmp_path / "node", baseline(**{
        "history/key-1.json": record(1, key="00" * 32),
        "history/key-2.json": record(2),
        "current.json": record(2),
    }))

    report = import_directory(source, make_store(tmp_path / "keys"))

    assert report.imported == [0, 2]
    assert report.skipped == [(
        "history/key-1.json",
        "key looks degenerate: byte entropy 0.00 bits is below 3.50",
    )]
    assert report.doubtful == [
        (2, "derived from key 1, whose record was skipped"),
    ]


def test_without_validation_degenerate_and_repeated_keys_import(
    tmp_path: Path,
) -> None:
    source = write_source(tmp_path / "node", baseline(**{
        "history/key-1.json": record(1, key="00" * 32),
        "history/key-2.json": record(2, key=key_hex("key 0")),
        "current.json": record(2, key=key_hex("key 0")),
    }))
    store = make_store(tmp_path / "keys")

    report = import_directory(source, store, validate=False)

    assert report.imported == [0, 1, 2]
    assert report.skipped == []
    assert store.material(1).reveal() == bytes(32)


# -- the order of timestamps -------------------------------------------------


def chain(count: int, **changed: dict[str, Any]) -> dict[str, Any]:
    """Keys 0 to count - 1, current.json a copy of the last; ``changed``
    maps "key-N" to fields that differ from :func:`record`."""
    files = {}
    for index in range(count):
        fields = changed.get(f"key-{index}", {})
        files[f"history/key-{index}.json"] = record(index, **fields)
    files["current.json"] = files[f"history/key-{count - 1}.json"]
    return files


def test_forward_jumped_timestamp_skips_only_that_record(
    tmp_path: Path,
) -> None:
    # before, every later key was skipped as dated before key 3
    jumped = {"timestamp": T0 + 3000 + 3_600_000}
    source = write_source(tmp_path / "node", chain(10, **{"key-3": jumped}))

    report = import_directory(
        source, make_store(tmp_path / "keys", clock=lambda: NOW)
    )

    assert report.imported == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert report.skipped == [(
        "history/key-3.json",
        "dated out of order with its neighbours (59 min after "
        "history/key-4.json, the record kept after it)",
    )]
    assert report.doubtful == [
        (4, "derived from key 3, whose record was skipped"),
    ]
    assert report.current_index == 9


def test_backward_jumped_timestamp_skips_only_that_record(
    tmp_path: Path,
) -> None:
    jumped = {"timestamp": T0 + 1500}
    source = write_source(tmp_path / "node", chain(10, **{"key-6": jumped}))

    report = import_directory(source, make_store(tmp_path / "keys"))

    assert report.imported == [0, 1, 2, 3, 4, 5, 7, 8, 9]
    assert report.skipped == [(
        "history/key-6.json",
        "dated out of order with its neighbours (3 s before "
        "history/key-5.json, the record kept before it)",
    )]
    assert report.doubtful == [
        (7, "derived from key 6, whose record was skipped"),
    ]
    assert report.current_index == 9


def test_order_tie_keeps_the_later_record(tmp_path: Path) -> None:
    # key 1 too late or key 2 too early: the same count either way, and
    # the later record wins
    source = write_source(tmp_path / "node", baseline(**{
        "history/key-2.json": record(2, timestamp=T0 + 995),
    }))

    report = import_directory(source, make_store(tmp_path / "keys"))

    assert report.imported == [0, 2]
    assert report.skipped == [
        ("history/key-1.json",
         "dated out of order with its neighbours (5 ms after "
         "history/key-2.json, the record kept after it)"),
        ("current.json",
         "the same record as history/key-1.json, skipped for the same "
         "reason; key 2 becomes current"),
    ]
    assert report.doubtful == [
        (2, "derived from key 1, whose record was skipped"),
    ]


def test_equal_timestamps_are_in_order(tmp_path: Path) -> None:
    same = {"timestamp": T0}
    source = write_source(tmp_path / "node", chain(
        3, **{"key-1": same, "key-2": same},
    ))

    report = import_directory(source, make_store(tmp_path / "keys"))

    assert report.imported == [0, 1, 2]
    assert report.skipped == []


def test_future_records_skipped_before_the_order_is_judged(
    tmp_path: Path,
) -> None:
    # keys 1-3 alone would outnumber key 4 in a run; they are in the
    # future, so they do not count
    future = NOW + CLOCK_SKEW_ALLOWANCE_MS + 3_600_000
    source = write_source(tmp_path / "node", chain(5, **{
        f"key-{index}": {"timestamp": future + index} for index in (1, 2, 3)
    }))

    report = import_directory(
        source, make_store(tmp_path / "keys", clock=lambda: NOW)
    )

    assert report.imported == [0, 4]
    assert report.skipped == [
        (f"history/key-{index}.json",
         "dated 3900 s in the future, beyond the 300 s allowed for clock "
         f"skew: {CLOCK_ADVICE}")
        for index in (1, 2, 3)
    ]
    assert report.doubtful == [
        (4, "derived from key 3, whose record was skipped"),
    ]


def test_out_of_order_record_only_in_current_json(tmp_path: Path) -> None:
    source = write_source(tmp_path / "node", baseline(**{
        "current.json": record(2, timestamp=T0 - 10_000),
    }))

    report = import_directory(source, make_store(tmp_path / "keys"))

    assert report.imported == [0, 1]
    assert report.skipped == [(
        "current.json",
        "dated out of order with its neighbours (11 s before "
        "history/key-1.json, the record kept before it); key 1 becomes "
        "current",
    )]
    assert report.doubtful == []


def test_current_json_beside_an_out_of_order_record(tmp_path: Path) -> None:
    early = T0 - 5000
    source = write_source(tmp_path / "node", baseline(**{
        "history/key-2.json": record(2, timestamp=early),
        "current.json": record(2, key=key_hex("other 2"), timestamp=early),
    }))

    report = import_directory(source, make_store(tmp_path / "keys"))

    assert report.imported == [0, 1]
    assert report.skipped == [
        ("history/key-2.json",
         "dated out of order with its neighbours (6 s before "
         "history/key-1.json, the record kept before it)"),
        ("current.json",
         "records index 2 with another key or other fields than "
         "history/key-2.json, which is skipped too; key 1 becomes current"),
    ]
    assert report.doubtful == []


def test_repeated_key_found_among_records_in_order(tmp_path: Path) -> None:
    # key 1 is out of order; key 3 repeats key 2, which is imported
    source = write_source(tmp_path / "node", chain(4, **{
        "key-1": {"timestamp": T0 + 60_000},
        "key-3": {"key": key_hex("key 2")},
    }))

    report = import_directory(source, make_store(tmp_path / "keys"))

    assert report.imported == [0, 2]
    assert report.skipped == [
        ("history/key-1.json",
         "dated out of order with its neighbours (58 s after "
         "history/key-2.json, the record kept after it)"),
        ("history/key-3.json",
         "holds the same key as history/key-2.json, imported before it"),
        ("current.json",
         "the same record as history/key-3.json, skipped for the same "
         "reason; key 2 becomes current"),
    ]


def jumped_fixture(tmp_path: Path, index: int, shift_ms: int) -> Path:
    """Copy the fixture with the timestamp of key ``index`` shifted."""
    source = tmp_path / "node"
    shutil.copytree(FIXTURE, source)
    path = source / "history" / f"key-{index}.json"
    document = json.loads(path.read_bytes())
    document["timestamp"] += shift_ms
    path.write_text(json.dumps(document, indent=2))
    return source


def fixture_timestamp(index: int) -> int:
    path = FIXTURE / "history" / f"key-{index}.json"
    timestamp: int = json.loads(path.read_bytes())["timestamp"]
    return timestamp


def after_the_fixture() -> int:
    """A clock 30 days after the fixture's newest key."""
    return fixture_timestamp(921) + 30 * 86_400_000


@needs_fixture
def test_fixture_forward_jump_skips_only_the_outlier(tmp_path: Path) -> None:
    # the user test: before, keys 601-921 were skipped and 600 was current
    source = jumped_fixture(tmp_path, 600, 1_200_000_000)
    store = make_store(tmp_path / "keys", clock=after_the_fixture)

    report = import_directory(source, store)

    gap = fixture_timestamp(600) + 1_200_000_000 - fixture_timestamp(601)
    assert report.imported == [i for i in FIXTURE_IMPORTED if i != 600]
    assert report.skipped == [
        *FIXTURE_SKIPPED,
        ("history/key-600.json",
         f"dated out of order with its neighbours ({gap // 86_400_000} "
         "days after history/key-601.json, the record kept after it)"),
    ]
    assert report.doubtful == sorted([
        *FIXTURE_DOUBTFUL,
        (601, "derived from key 600, whose record was skipped"),
    ])
    assert report.current_index == 921
    assert store.current_material().reveal_hex() == json.loads(
        (FIXTURE / "current.json").read_bytes()
    )["key"]


@needs_fixture
def test_fixture_backward_jump_skips_only_that_record(tmp_path: Path) -> None:
    source = jumped_fixture(tmp_path, 600, -1_200_000)

    report = import_directory(
        source, make_store(tmp_path / "keys", clock=after_the_fixture)
    )

    gap = fixture_timestamp(599) - (fixture_timestamp(600) - 1_200_000)
    assert 2 * 60_000 <= gap < 2 * 3_600_000
    assert report.imported == [i for i in FIXTURE_IMPORTED if i != 600]
    assert report.skipped == [
        *FIXTURE_SKIPPED,
        ("history/key-600.json",
         f"dated out of order with its neighbours ({gap // 60_000} min "
         "before history/key-599.json, the record kept before it)"),
    ]
    assert report.current_index == 921


ORDER_CASES = [
    ([], []),
    ([5], [True]),
    ([1, 2, 3], [True, True, True]),
    ([3, 3, 3], [True, True, True]),
    # one forward jump, one backward jump
    ([1, 100, 2, 3], [True, False, True, True]),
    ([1, 2, 0, 3], [True, True, False, True]),
    # a tie keeps the later record
    ([0, 1000, 995], [True, False, True]),
    ([2, 1], [False, True]),
    # the longest run wins over the first records
    ([10, 11, 12, 1, 2, 3, 4], [False, False, False, True, True, True, True]),
]


@pytest.mark.parametrize(("timestamps", "kept"), ORDER_CASES)
def test_longest_in_order(timestamps: list[int], kept: list[bool]) -> None:
    assert importer._longest_in_order(timestamps) == kept


def longest_in_order_by_hand(timestamps: list[int]) -> list[bool]:
    """Try every subset, longest first; prefer later positions."""
    positions = range(len(timestamps))
    for size in range(len(timestamps), 0, -1):
        runs = [
            run for run in itertools.combinations(positions, size)
            if all(timestamps[a] <= timestamps[b]
                   for a, b in itertools.pairwise(run))
        ]
        if runs:
            best = max(runs, key=lambda run: sorted(run, reverse=True))
            return [position in best for position in positions]
    return []


@given(st.lists(st.integers(0, 6), max_size=9))
def test_longest_in_order_matches_trying_every_subset(
    timestamps: list[int],
) -> None:
    assert importer._longest_in_order(timestamps) == (
        longest_in_order_by_hand(timestamps)
    )


# -- derivedFrom -------------------------------------------------------------

DERIVATION_CASES: dict[str, tuple[dict[str, Any], list[tuple[int, str]]]] = {
    "from an older key than the one before": (
        chain(4, **{"key-3": {"derivedFrom": 0}}),
        [(3, "derived from key 0, not from key 2 before it")],
    ),
    "past a skipped record": (
        chain(3, **{"key-1": {"key": "00" * 32}, "key-2": {"derivedFrom": 0}}),
        [(2, "derived from key 0, not from key 1 before it")],
    ),
    "from a missing key older than the one before": (
        {k: v for k, v in chain(4, **{"key-3": {"derivedFrom": 1}}).items()
         if k != "history/key-1.json"},
        [(2, "derived from key 1, which is not in the source"),
         (3, "derived from key 1, which is not in the source, not from "
             "key 2 before it")],
    ),
    "from the missing key just before": (
        {k: v for k, v in chain(3).items() if k != "history/key-1.json"},
        [(2, "derived from key 1, which is not in the source")],
    ),
    "null": (chain(3, **{"key-2": {"derivedFrom": None}}), []),
}


@pytest.mark.parametrize("case", sorted(DERIVATION_CASES))
def test_derivation_doubt(case: str, tmp_path: Path) -> None:
    files, doubtful = DERIVATION_CASES[case]
    source = write_source(tmp_path / "node", files)

    report = import_directory(source, make_store(tmp_path / "keys"))

    assert report.doubtful == doubtful
    assert max(report.imported) == report.current_index


# -- current.json ------------------------------------------------------------


def test_current_json_naming_an_older_key(tmp_path: Path) -> None:
    source = write_source(tmp_path / "node", baseline(**{
        "current.json": record(0),
    }))

    report = import_directory(source, make_store(tmp_path / "keys"))

    assert report.imported == [0, 1]
    assert report.skipped == []
    assert report.doubtful == [(
        1, "current.json names key 0 as current; this newest record "
           "becomes current",
    )]
    assert report.current_index == 1


def test_current_json_with_another_key(tmp_path: Path) -> None:
    source = write_source(tmp_path / "node", baseline(**{
        "current.json": record(1, key=key_hex("other 1")),
    }))
    store = make_store(tmp_path / "keys")

    report = import_directory(source, store)

    assert report.imported == [0, 1]
    assert report.skipped == [(
        "current.json",
        "records index 1 with another key or other fields than "
        "history/key-1.json, which is imported; key 1 becomes current",
    )]
    assert report.doubtful == [(
        1, "current.json records this index with another key or other "
           "fields (skipped)",
    )]
    assert store.current_material().reveal_hex() == key_hex("key 1")


def test_current_json_only_record_of_the_newest_key(tmp_path: Path) -> None:
    source = write_source(tmp_path / "node", baseline(**{
        "current.json": record(2),
    }))
    store = make_store(tmp_path / "keys")

    report = import_directory(source, store)

    assert report.imported == [0, 1, 2]
    assert report.skipped == []
    assert report.doubtful == [(2, "only in current.json, not in history/")]
    assert report.current_index == 2
    assert store.current_material().reveal_hex() == key_hex("key 2")


def test_current_json_replaces_a_skipped_history_record(
    tmp_path: Path,
) -> None:
    source = write_source(tmp_path / "node", baseline(**{
        "history/key-1.json": b"{",
    }))

    report = import_directory(source, make_store(tmp_path / "keys"))

    assert report.imported == [0, 1]
    assert report.skipped == [("history/key-1.json", "not valid JSON")]
    assert report.doubtful == [(
        1, "imported from current.json: history/key-1.json was skipped",
    )]


def test_current_json_copy_of_a_skipped_record(tmp_path: Path) -> None:
    bad = record(1, algorithm="md5")
    source = write_source(tmp_path / "node", baseline(**{
        "history/key-1.json": bad,
        "current.json": bad,
    }))

    report = import_directory(source, make_store(tmp_path / "keys"))

    assert report.imported == [0]
    assert report.skipped == [
        ("history/key-1.json",
         "algorithm 'md5' is not one of sha256, sha384, sha512"),
        ("current.json",
         "the same record as history/key-1.json, skipped for the same "
         "reason; key 0 becomes current"),
    ]
    assert report.doubtful == []


def test_current_json_unreadable(tmp_path: Path) -> None:
    source = write_source(tmp_path / "node", baseline(**{
        "current.json": b"not json",
    }))

    report = import_directory(source, make_store(tmp_path / "keys"))

    assert report.skipped == [
        ("current.json", "not valid JSON; key 1 becomes current"),
    ]
    assert report.doubtful == []


def test_no_current_json(tmp_path: Path) -> None:
    files = baseline()
    del files["current.json"]
    source = write_source(tmp_path / "node", files)

    report = import_directory(source, make_store(tmp_path / "keys"))

    assert report.imported == [0, 1]
    assert report.doubtful == [(
        1, "the source has no current.json; this newest record becomes "
           "current",
    )]


# -- nothing of the source is used twice ------------------------------------


def rotate_once(store: KeyStore) -> Any:
    daemon = KeyRotationDaemon(
        store,
        RotationPolicy(rotation_interval_ms=3_600_000,
                       derivation_rounds=1000),
        random=PinnedRandom(),
    )
    return daemon.rotate(force=True)


def test_future_dated_current_key_index_is_never_reused(
    tmp_path: Path,
) -> None:
    # the user case: the Node.js daemon's current key 3, dated 10 min
    # ahead, was skipped and the next rotation made another key 3
    ahead = NOW + 10 * 60_000
    files = chain(4, **{"key-3": {"timestamp": ahead}})
    source = write_source(tmp_path / "node", files)
    store = make_store(tmp_path / "keys", clock=lambda: NOW)

    report = import_directory(source, store)

    assert report.imported == [0, 1, 2]
    assert report.skipped == [
        ("history/key-3.json",
         "dated 600 s in the future, beyond the 300 s allowed for clock "
         f"skew: {CLOCK_ADVICE}"),
        ("current.json",
         "the same record as history/key-3.json, skipped for the same "
         "reason; key 2 becomes current"),
    ]
    assert report.current_index == 2
    assert report.next_index == 4
    assert store.next_index == 4
    rotation = rotate_once(store)
    assert rotation is not None
    assert rotation.record.index == 4
    assert rotation.record.derived_from == 2
    reloaded = make_store(store.root, sealer=store.sealer)
    assert reloaded.verify() == []
    reloaded.load()
    assert sorted(reloaded.records) == [0, 1, 2, 4]
    assert reloaded.next_index == 5


def test_future_dated_current_key_is_retired(tmp_path: Path) -> None:
    files = chain(4, **{"key-3": {"timestamp": NOW + 10 * 60_000}})
    source = write_source(tmp_path / "node", files)
    store = make_store(tmp_path / "keys", clock=lambda: NOW)

    report = import_directory(source, store)

    assert report.retired_skipped == ["history/key-3.json", "current.json"]
    fingerprint = KeyMaterial.from_hex(key_hex("key 3")).fingerprint
    assert store.retired_fingerprints == {fingerprint}
    reloaded = make_store(store.root, sealer=store.sealer)
    reloaded.load()
    assert fingerprint in reloaded.seen_fingerprints
    with pytest.raises(KeyValidationError) as raised:
        keygen.validate_key(key_hex("key 3"), 32, reloaded.seen_fingerprints)
    assert raised.value.reason == "duplicate"


CLAIM_CASES: dict[str, tuple[dict[str, Any], int]] = {
    "name of an unreadable file": ({"history/key-7.json": b"{"}, 8),
    "name of a folder": ({"history/key-12.json/x": b""}, 13),
    "index of a misnamed record": (
        {"history/key-2.json": record(9, timestamp=T0 + 2000)}, 10,
    ),
    "index of a record with a stray field": (
        {"history/key-2.json": record(8, comment="x")}, 9,
    ),
    "second index of a repeated field": (
        {"history/key-2.json":
         json.dumps(record(2))[:-1].encode() + b', "index": 11}'},
        12,
    ),
    "index of current.json": (
        {"current.json": record(6, algorithm="md5")}, 7,
    ),
    "name of a record skipped for its order": (
        {"history/key-5.json": record(5, timestamp=T0 - 5)}, 6,
    ),
    "index beyond what the Node.js daemon could make": (
        {"history/key-2.json": record(2 ** 60, comment="x")}, 3,
    ),
}


@pytest.mark.parametrize("case", sorted(CLAIM_CASES))
def test_next_index_above_every_index_the_source_claims(
    case: str, tmp_path: Path
) -> None:
    extra, next_index = CLAIM_CASES[case]
    source = write_source(tmp_path / "node", baseline(**extra))
    store = make_store(tmp_path / "keys", clock=lambda: NOW)

    report = import_directory(source, store)

    assert report.imported == [0, 1]
    assert report.next_index == next_index
    reloaded = make_store(store.root, sealer=store.sealer)
    reloaded.load()
    assert reloaded.next_index == next_index
    assert reloaded.verify() == []


RETIRED_CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "unknown algorithm": (
        "history/key-2.json", record(2, algorithm="md5"),
    ),
    "uppercase hex": (
        "history/key-2.json", record(2, key=key_hex("key 2").upper()),
    ),
    "stray field": ("history/key-2.json", record(2, comment="x")),
    "second key of an index": (
        "history/key-2.json", record(1, key=key_hex("key 2")),
    ),
    "out of order": (
        "history/key-2.json", record(2, timestamp=T0 - 5),
    ),
    "current.json with another key": (
        "current.json", record(1, key=key_hex("key 2")),
    ),
    "degenerate": ("history/key-2.json", record(2, key="00" * 32)),
}


@pytest.mark.parametrize("case", sorted(RETIRED_CASES))
def test_skipped_well_formed_key_is_retired(
    case: str, tmp_path: Path
) -> None:
    name, content = RETIRED_CASES[case]
    source = write_source(tmp_path / "node", baseline(**{name: content}))
    store = make_store(tmp_path / "keys", clock=lambda: NOW)

    report = import_directory(source, store)

    assert [skipped for skipped, _ in report.skipped] == [name]
    assert report.retired_skipped == [name]
    material = KeyMaterial.from_hex(content["key"].lower())
    assert store.retired_fingerprints == {material.fingerprint}
    assert store.verify() == []


@pytest.mark.parametrize("content", [
    record(2, key=key_hex("key 2")[:62]),
    record(2, key=key_hex("key 2", 16)),
    record(2, key="zz" * 32),
    record(2, key=key_hex("key 2"), length=True),
    b'{"key": "' + key_hex("key 2").encode() + b'", "length": 32',
], ids=["short", "other length", "not hex", "bool length", "bad json"])
def test_skipped_key_of_no_stated_length_is_not_retired(
    tmp_path: Path, content: Any
) -> None:
    source = write_source(tmp_path / "node", baseline(**{
        "history/key-2.json": content,
    }))
    store = make_store(tmp_path / "keys")

    report = import_directory(source, store)

    assert len(report.skipped) == 1
    assert report.retired_skipped == []
    assert store.retired_fingerprints == set()


def test_skipped_copy_of_an_imported_key_is_not_retired(
    tmp_path: Path,
) -> None:
    # retiring it would retire the current key 1 itself
    source = write_source(tmp_path / "node", baseline(**{
        "history/key-2.json": record(2, key=key_hex("key 1")),
        "current.json": record(1, timestamp=T0 + 5000),
    }))
    store = make_store(tmp_path / "keys")

    report = import_directory(source, store)

    assert [name for name, _ in report.skipped] == [
        "history/key-2.json", "current.json",
    ]
    assert report.current_index == 1
    assert report.retired_skipped == []
    assert store.retired_fingerprints == set()
    assert report.next_index == 3
    assert rotate_once(store).record.index == 3


# -- the store and the source ------------------------------------------------


def test_retention_sends_older_keys_to_the_archive(tmp_path: Path) -> None:
    files = {f"history/key-{i}.json": record(i) for i in range(5)}
    files["current.json"] = record(4)
    source = write_source(tmp_path / "node", files)
    store = make_store(tmp_path / "keys", max_history=2)

    report = import_directory(source, store)

    assert report.imported == [0, 1, 2, 3, 4]
    assert report.archived == [0, 1, 2]
    assert sorted(store.records) == [3, 4]
    assert sorted(os.listdir(store.archive_dir)) == [
        "key-0.json", "key-1.json", "key-2.json",
    ]
    assert store.retired_fingerprints == {
        KeyMaterial.from_hex(key_hex(f"key {i}")).fingerprint
        for i in range(3)
    }
    reloaded = make_store(store.root, sealer=store.sealer, max_history=2)
    assert reloaded.verify() == []


def test_history_outside_the_store(tmp_path: Path) -> None:
    # KEY_HISTORY_PATH apart from KEY_STORAGE_PATH, neither created yet
    source = write_source(tmp_path / "node", baseline())
    sealer = Sealer(MasterKey(os.urandom(32)))
    store = KeyStore(
        tmp_path / "keys", sealer, history_dir=tmp_path / "history",
    )

    report = import_directory(source, store)

    assert report.imported == [0, 1]
    assert sorted(os.listdir(tmp_path / "history")) == [
        "key-0.json", "key-1.json",
    ]
    assert sorted(os.listdir(tmp_path)) == ["history", "keys", "node"]
    reloaded = KeyStore(
        tmp_path / "keys", sealer, history_dir=tmp_path / "history",
    )
    assert reloaded.verify() == []


def test_non_empty_store_refused(tmp_path: Path) -> None:
    source = write_source(tmp_path / "node", baseline())
    store = make_store(tmp_path / "keys")
    import_directory(source, store)
    before = tree_digest(store.root)

    with pytest.raises(StoreError) as raised:
        import_directory(source, make_store(store.root, sealer=store.sealer))

    message = str(raised.value)
    assert message == (
        f"the key store {store.root} already holds keys: point "
        "KEY_STORAGE_PATH at a new directory (or move the store away) "
        "before importing; nothing was changed"
    )
    assert "\n" not in message
    assert tree_digest(store.root) == before


def kill_import(root: Path) -> Path:
    """Leave what an import killed while building leaves: the store
    directory with its lock only, and part of keys.staging/."""
    root.mkdir()
    (root / ".lock").touch()
    staging = root.with_name(root.name + ".staging")
    (staging / "history").mkdir(parents=True)
    (staging / "history" / "key-0.json").write_bytes(b'{"key": "se')
    (staging / ".history.json.1234.tmp").write_bytes(b"{")
    return staging


def test_import_after_a_killed_import(tmp_path: Path) -> None:
    # before, the store was taken for one holding keys, and import refused
    source = write_source(tmp_path / "node", baseline())
    store = make_store(tmp_path / "keys")
    staging = kill_import(store.root)
    assert store_is_empty(store.root)
    importer.require_empty_store(store.root)

    report = import_directory(source, store)

    assert report.imported == [0, 1]
    assert not staging.exists()
    reloaded = make_store(store.root, sealer=store.sealer)
    assert reloaded.verify() == []
    reloaded.load()
    assert reloaded.current_material().reveal_hex() == key_hex("key 1")


def test_import_after_a_killed_import_with_history_outside(
    tmp_path: Path,
) -> None:
    source = write_source(tmp_path / "node", baseline())
    sealer = Sealer(MasterKey(os.urandom(32)))
    history = tmp_path / "history"
    store = KeyStore(tmp_path / "keys", sealer, history_dir=history)
    staging = kill_import(store.root)
    history.mkdir()
    history_staging = tmp_path / "history.staging"
    history_staging.mkdir()
    (history_staging / "key-0.json").write_bytes(b"{")
    assert store_is_empty(store.root, history)

    report = import_directory(source, store)

    assert report.imported == [0, 1]
    assert not staging.exists()
    assert not history_staging.exists()
    reloaded = KeyStore(store.root, sealer, history_dir=history)
    assert reloaded.verify() == []


def test_store_filled_while_importing_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # another process imports first: the check under the lock sees it
    source = write_source(tmp_path / "node", baseline())
    first = make_store(tmp_path / "keys")
    import_directory(source, first)
    before = tree_digest(first.root)
    late = make_store(first.root, sealer=first.sealer)
    # the checks before the lock see an empty store
    answers = iter([True, True])
    real = late.is_empty
    monkeypatch.setattr(late, "is_empty", lambda: next(answers, real()))

    with pytest.raises(StoreError, match="already holds keys"):
        import_directory(source, late)
    # taking the lock creates the lock file; nothing else changes
    after = tree_digest(first.root)
    after.pop(".lock")
    before.pop(".lock", None)
    assert after == before


def test_source_unchanged(tmp_path: Path) -> None:
    source = write_source(tmp_path / "node", baseline(**{
        "history/key-2.json": b"{",
        "hashes/current.json": {"hash": "00"},
    }))
    before = tree_digest(source)
    stamps = {p: p.stat().st_mtime_ns for p in source.rglob("*")}

    import_directory(source, make_store(tmp_path / "keys"))

    assert tree_digest(source) == before
    assert {p: p.stat().st_mtime_ns for p in source.rglob("*")} == stamps


def test_source_not_a_directory(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"")
    store = make_store(tmp_path / "keys")

    with pytest.raises(StoreError, match=f"^{path} is not a directory"):
        import_directory(path, store)
    assert not store.root.exists()


def test_source_without_records(tmp_path: Path) -> None:
    source = write_source(tmp_path / "node", {"hashes/x.json": {}})
    store = make_store(tmp_path / "keys")

    with pytest.raises(
        StoreError, match=f"^{source} holds neither current.json nor history/"
    ):
        import_directory(source, store)
    assert not store.root.exists()


def test_source_with_no_trusted_record(tmp_path: Path) -> None:
    source = write_source(tmp_path / "node", {
        "history/key-0.json": b"{",
        "current.json": b"{",
    })
    store = make_store(tmp_path / "keys")

    with pytest.raises(StoreError) as raised:
        import_directory(source, store)

    assert str(raised.value) == (
        f"no record in {source} can be imported: all 2 skipped, each for "
        "the reason given; check that it is the Node.js daemon's key "
        "directory (current.json and history/key-N.json), or restore its "
        "records from a backup and import again; nothing was written"
    )
    assert not store.root.exists()


# -- reading before writing --------------------------------------------------


def test_read_source_writes_nothing(tmp_path: Path) -> None:
    source = write_source(tmp_path / "node", baseline(**{
        "history/key-2.json": b"{",
    }))
    before = tree_digest(tmp_path)

    plan = read_source(source, now=NOW)

    assert tree_digest(tmp_path) == before
    assert plan.indexes == [0, 1]
    assert plan.skipped == [("history/key-2.json", "not valid JSON")]
    store = make_store(tmp_path / "keys")
    report = write_plan(plan, store)
    assert report.imported == [0, 1]
    assert report.skipped == plan.skipped
    assert store.verify() == []


def test_read_source_with_no_trusted_record_plans_nothing(
    tmp_path: Path,
) -> None:
    source = write_source(tmp_path / "node", {
        "history/key-0.json": b"{",
        "history/notes.txt": b"x",
        "current.json": b"[]",
    })
    store = make_store(tmp_path / "keys")

    plan = read_source(source, now=NOW)

    assert plan.records == []
    assert plan.skipped == [
        ("history/key-0.json", "not valid JSON"),
        ("history/notes.txt", "not a key record name (key-N.json)"),
        ("current.json", "not a JSON object"),
    ]
    with pytest.raises(StoreError, match="^no record in .* all 3 skipped"):
        plan.require_records()
    with pytest.raises(StoreError, match="^no record in .* all 3 skipped"):
        write_plan(plan, store)
    assert sorted(os.listdir(tmp_path)) == ["node"]


def test_empty_history_says_what_to_do(tmp_path: Path) -> None:
    source = tmp_path / "node"
    (source / "history").mkdir(parents=True)

    plan = read_source(source, now=NOW)

    with pytest.raises(StoreError) as raised:
        plan.require_records()
    assert str(raised.value) == (
        f"no record in {source} can be imported: its history/ holds no "
        "key-N.json and it has no current.json; give the Node.js daemon's "
        "key directory; nothing was written"
    )


def test_require_empty_store_reads_only(tmp_path: Path) -> None:
    source = write_source(tmp_path / "node", baseline())
    store = make_store(tmp_path / "keys")
    importer.require_empty_store(store.root)
    assert not store.root.exists()
    import_directory(source, store)

    with pytest.raises(StoreError, match="already holds keys"):
        importer.require_empty_store(store.root)


# -- torro keys import -------------------------------------------------------


def test_cli_import_prints_each_record(
    torro: "Torro", tmp_path: Path
) -> None:
    source = write_source(tmp_path / "node", baseline(**{
        "history/key-2.json": b"{",
        "history/key-3.json": record(3, derivedFrom=0),
        "hashes/x.json": {},
    }))

    outcome = torro.run("keys", "import", str(source))

    assert (outcome.code, outcome.stderr) == (0, "")
    assert outcome.stdout.splitlines() == [
        "skipped history/key-2.json: not valid JSON",
        "doubtful key 3: current.json names key 1 as current; this newest "
        "record becomes current",
        "doubtful key 3: derived from key 0, not from key 2 before it",
        "ignored hashes/: not key records",
        "imported 3 keys: 3 retained, 0 beyond KEY_DAEMON_MAX_HISTORY=100 "
        "archived in keys/archive; current key 3",
    ]
    security = (torro.cwd / "logs" / "security.log").read_text()
    assert "import: skipped history/key-2.json: not valid JSON" in security


@needs_fixture
def test_cli_import_of_the_fixture_with_a_forward_jump(
    torro: "Torro", tmp_path: Path
) -> None:
    source = jumped_fixture(tmp_path, 600, 1_200_000_000)

    outcome = torro.run("keys", "import", str(source))

    assert (outcome.code, outcome.stderr) == (0, "")
    lines = outcome.stdout.splitlines()
    assert lines[1].startswith(
        "skipped history/key-600.json: dated out of order with its "
        "neighbours ("
    )
    assert "doubtful key 601: derived from key 600, whose record was " \
        "skipped" in lines
    assert lines[-1] == (
        "imported 917 keys: 100 retained, 817 beyond "
        "KEY_DAEMON_MAX_HISTORY=100 archived in keys/archive; current key "
        "921"
    )


FAILED_IMPORTS = ["empty directory", "garbage", "empty history", "file"]


def failed_source(case: str, tmp_path: Path) -> Path:
    source = tmp_path / "node"
    if case == "empty directory":
        source.mkdir()
    elif case == "empty history":
        (source / "history").mkdir(parents=True)
    elif case == "garbage":
        write_source(source, {
            "current.json": b"garbage",
            "history/key-0.json": b"garbage",
            "history/key-1.json": b"garbage",
        })
    else:
        source.write_bytes(b"garbage")
    return source


@pytest.mark.parametrize("case", FAILED_IMPORTS)
def test_cli_failed_import_creates_nothing(
    torro: "Torro", tmp_path: Path, case: str
) -> None:
    # before, the master key file and logs/ were created all the same
    source = failed_source(case, tmp_path)

    outcome = torro.run("keys", "import", str(source))

    assert outcome.code == (2 if case == "file" else 1)
    assert "Traceback" not in outcome.stderr
    assert len(outcome.error_lines) == 1
    assert outcome.error_lines[0].startswith("torro: error: ")
    assert os.listdir(torro.cwd) == []


def test_cli_import_of_garbage_prints_each_skipped_record(
    torro: "Torro", tmp_path: Path
) -> None:
    # before, only "(3 skipped, see the security log)"
    source = failed_source("garbage", tmp_path)

    outcome = torro.run("keys", "import", str(source))

    assert outcome.stdout.splitlines() == [
        "skipped history/key-0.json: not valid JSON",
        "skipped history/key-1.json: not valid JSON",
        "skipped current.json: not valid JSON",
    ]
    assert outcome.error_lines == [
        f"torro: error: no record in {source} can be imported: all 3 "
        "skipped, each for the reason given; check that it is the Node.js "
        "daemon's key directory (current.json and history/key-N.json), or "
        "restore its records from a backup and import again; nothing was "
        "written",
    ]


def test_cli_import_into_a_store_holding_keys_changes_nothing(
    torro: "Torro", tmp_path: Path
) -> None:
    source = write_source(tmp_path / "node", baseline())
    assert torro.run("keys", "import", str(source)).code == 0
    before = tree_digest(torro.cwd)

    outcome = torro.run("keys", "import", str(source))

    assert (outcome.code, outcome.stdout) == (1, "")
    assert outcome.error_lines == [
        "torro: error: the key store keys already holds keys: point "
        "KEY_STORAGE_PATH at a new directory (or move the "
        "store away) before importing; nothing was changed",
    ]
    assert tree_digest(torro.cwd) == before


def test_cli_import_skips_a_named_pipe(
    torro: "Torro", tmp_path: Path
) -> None:
    # before, torro keys import hung forever
    source = write_source(tmp_path / "node", baseline())
    os.mkfifo(source / "history" / "key-6.json")

    outcome = torro.run("keys", "import", str(source))

    assert (outcome.code, outcome.stderr) == (0, "")
    assert outcome.stdout.splitlines()[0] == (
        "skipped history/key-6.json: a named pipe (FIFO), not a key record"
    )


def test_cli_import_after_a_killed_import(
    torro: "Torro", tmp_path: Path
) -> None:
    # before: status said empty, verify wanted a backup, import refused
    source = write_source(tmp_path / "node", baseline())
    assert torro.run("keys", "import", str(source)).code == 0
    store = torro.cwd / "keys"
    master_keys = set(os.listdir(torro.cwd)) - {"keys", "logs"}
    assert len(master_keys) == 1
    # the killed import: its master key, keys/ with the lock only and part
    # of the new store in keys.staging/
    staging = store.with_name("keys.staging")
    os.rename(store, staging)
    for name in ("current.json", "history.json", "backup"):
        shutil.rmtree(staging / name, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            (staging / name).unlink()
    store.mkdir()
    (store / ".lock").touch()

    status = torro.run("daemon", "status", "--json")
    verify = torro.run("keys", "verify")
    imported = torro.run("keys", "import", str(source))

    assert json.loads(status.stdout)["integrity"] == "empty"
    assert verify.code == 1
    assert "holds no key yet" in verify.stderr
    assert (imported.code, imported.stderr) == (0, "")
    assert imported.stdout.splitlines()[-1].endswith("current key 1")
    assert not staging.exists()
    assert set(os.listdir(torro.cwd)) - {"keys", "logs"} == master_keys
    again = torro.run("keys", "verify")
    assert (again.code, again.stdout) == (
        0, "ok: 2 keys verified, chain intact, current key 1\n",
    )
