"""Tests for torro.integration: a license server's read-only view of keys.

The keys are written by another process, or by another key store object
in this one (the client shares nothing with it but the directory), and
the client must follow them without ever writing.
"""

import base64
import errno
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

import pytest
from runner import wait_until

from torro import integration
from torro.errors import MasterKeyError, StoreError
from torro.integration import DaemonIntegration, KeyInfo
from torro.licenses import LicenseError, StoreKeyRing, issue_license
from torro.rotation import KeyRotationDaemon, RotationPolicy
from torro.sealing import MasterKey, Sealer, default_master_key_path
from torro.store import KeyRecord, KeyStore, files


if TYPE_CHECKING:
    from runner import Torro


POLICY = RotationPolicy(rotation_interval_ms=1000, derivation_rounds=1000)
# The promise: a rotation by another process is told within this.
SEEN_WITHIN = 1.0
LOGGER = "torro.integration"
# Audit events that change the file system (os.replace audits as
# os.rename, os.unlink as os.remove).
WRITE_EVENTS = {
    "os.chmod", "os.chown", "os.link", "os.mkdir", "os.remove",
    "os.rename", "os.rmdir", "os.symlink", "os.truncate", "os.utime",
    "shutil.copyfile", "shutil.copytree", "shutil.move", "shutil.rmtree",
}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC \
    | os.O_APPEND


# -- helpers -------------------------------------------------------------

class Writer:
    """Another writer of the store: its own key store object and daemon.
    """

    def __init__(self, root: Path, master: MasterKey, **options: Any):
        options.setdefault("max_history", 100)
        self.store = KeyStore(root, Sealer(master), **options)
        self.daemon = KeyRotationDaemon(self.store, POLICY)

    def rotate(self, times: int = 1) -> KeyRecord:
        record = None
        for _ in range(times):
            rotation = self.daemon.rotate(force=True)
            assert rotation is not None
            record = rotation.record
        assert record is not None
        return record

    def restore(self) -> None:
        with self.store.locked():
            self.store.restore()


class Recorder:
    """A subscriber that notes each key it is told of, and when."""

    def __init__(self) -> None:
        self.calls: list[tuple[KeyInfo, float]] = []
        self._lock = threading.Lock()

    def __call__(self, info: KeyInfo) -> None:
        with self._lock:
            self.calls.append((info, time.time()))

    @property
    def indexes(self) -> list[int]:
        with self._lock:
            return [info.index for info, _ in self.calls]

    def wait_for(self, count: int, timeout: float = 10.0) -> None:
        wait_until(
            lambda: len(self.indexes) >= count, timeout,
            f"{count} subscriber calls",
        )


class Clients:
    """Make clients for a test and close every one at teardown."""

    def __init__(self) -> None:
        self.made: list[DaemonIntegration] = []

    def make(self, root: Path, *args: Any, **options: Any
             ) -> DaemonIntegration:
        client = DaemonIntegration(root, *args, **options)
        self.made.append(client)
        return client

    def start(self, root: Path, *args: Any, **options: Any
              ) -> DaemonIntegration:
        client = self.make(root, *args, **options)
        client.start()
        return client


class WriteAudit:
    """Every file-system change this process makes under a directory.

    An audit hook cannot be removed, so one hook is installed once and
    hands events to whichever audit is active.
    """

    active: ClassVar[list["WriteAudit"]] = []
    _installed = False

    def __init__(self, under: Path) -> None:
        self.under = str(under)
        self.events: list[tuple[str, str]] = []
        if not WriteAudit._installed:
            sys.addaudithook(WriteAudit._dispatch)
            WriteAudit._installed = True

    @staticmethod
    def _dispatch(event: str, args: tuple[Any, ...]) -> None:
        for audit in WriteAudit.active:
            audit.note(event, args)

    def note(self, event: str, args: tuple[Any, ...]) -> None:
        if event == "open":
            path, mode, flags = args
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")
                      ) or (isinstance(flags, int) and flags & WRITE_FLAGS)
            paths = [path] if writes else []
        elif event in WRITE_EVENTS:
            paths = [arg for arg in args[:2]]
        else:
            return
        for path in paths:
            if isinstance(path, (str, bytes, os.PathLike)):
                text = os.fsdecode(path)
                if os.path.abspath(text).startswith(self.under):
                    self.events.append((event, text))

    def __enter__(self) -> Self:
        WriteAudit.active.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        WriteAudit.active.remove(self)


def tree_state(top: Path) -> dict[str, tuple[int, int, bytes | None]]:
    """Map every path under ``top`` to its mode, mtime and bytes."""
    state: dict[str, tuple[int, int, bytes | None]] = {}
    for path in [top, *sorted(top.rglob("*"))]:
        status = path.lstat()
        data = path.read_bytes() if path.is_file() else None
        state[str(path.relative_to(top))] = (
            status.st_mode, status.st_mtime_ns, data,
        )
    return state


def integration_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage() for record in caplog.records
        if record.name == LOGGER and record.levelno >= logging.WARNING
    ]


def count_loads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the client's loads of the store (not the writer's)."""
    loads: list[int] = []
    real_load = KeyStore.load

    def load(self: KeyStore) -> None:
        if self.read_only:
            loads.append(1)
        real_load(self)

    monkeypatch.setattr(KeyStore, "load", load)
    return loads


def reference(root: Path, master: MasterKey) -> KeyStore:
    """The store as a fresh reader in this test sees it."""
    store = KeyStore(root, Sealer(master))
    store.load()
    assert store.problem is None
    return store


def assert_matches(info: KeyInfo, store: KeyStore) -> None:
    record = store.records[info.index]
    assert info.fingerprint == record.fingerprint
    assert info.timestamp == record.timestamp
    assert info.algorithm == record.algorithm == "sha256"
    assert info.material.reveal_hex() \
        == store.material(info.index).reveal_hex()
    assert info.material.fingerprint == record.fingerprint


def start_daemon(torro: "Torro", master: MasterKey
                 ) -> subprocess.Popen[bytes]:
    """Run ``torro daemon run`` on a new store; wait for its first key."""
    daemon = torro.popen(
        "daemon", "run",
        env={"KEY_DAEMON_MASTER_KEY": master.reveal().hex()},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_until(
        lambda: (torro.cwd / "keys" / "current.json").exists()
        or daemon.poll() is not None,
        what="the daemon's first key",
    )
    assert daemon.poll() is None
    return daemon


def stop_daemon(daemon: subprocess.Popen[bytes]) -> None:
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=10) == 0


@pytest.fixture
def clients() -> Iterator[Clients]:
    made = Clients()
    try:
        yield made
    finally:
        for client in made.made:
            client.close()


@pytest.fixture
def writer(root: Path, master: MasterKey) -> Writer:
    """A store holding key 0, and the other process that writes it."""
    other = Writer(root, master)
    other.rotate()
    return other


# -- a second process follows the daemon ------------------------------

@pytest.mark.parametrize("watch", [True, False],
                         ids=["watchfiles", "polling"])
def test_second_process_sees_five_daemon_rotations_within_a_second(
    torro: "Torro", master: MasterKey, clients: Clients, watch: bool
) -> None:
    daemon = start_daemon(torro, master)
    root = torro.cwd / "keys"
    client = clients.make(root, master.reveal().hex(), watch=watch)
    recorder = Recorder()
    client.subscribe(recorder)
    client.start()
    assert client.watching is watch
    first = client.current_key().index

    recorder.wait_for(5)
    stop_daemon(daemon)

    seen = recorder.calls[:5]
    assert [info.index for info, _ in seen] == list(
        range(first + 1, first + 6)
    )
    store = reference(root, master)
    for info, arrived in seen:
        assert_matches(info, store)
        # The record file is renamed into place just before
        # current.json names it: the rotation happened after this.
        written = (root / "history" / f"key-{info.index}.json") \
            .stat().st_mtime
        assert 0 <= arrived - written < SEEN_WITHIN
        assert 0 <= arrived - info.timestamp / 1000 < SEEN_WITHIN
    assert client.healthy
    assert client.last_error is None


def test_client_writes_nothing_while_another_process_rotates(
    torro: "Torro", clients: Clients
) -> None:
    assert torro.run("daemon", "rotate").code == 0
    root = torro.cwd / "keys"
    master_key_file = default_master_key_path(root)
    top = torro.cwd

    with WriteAudit(top) as audit:
        # No master key given: the default file beside the store.
        client = clients.start(root, watch=True)
        recorder = Recorder()
        client.subscribe(recorder)
        for count in (1, 2):
            assert torro.run("daemon", "rotate").code == 0
            recorder.wait_for(count)
        before = tree_state(top)
        assert client.current_key().index == 2
        history = client.history()
        assert [info.index for info in history] == [2, 1, 0]
        assert client.validate_key(history[1].material.reveal_hex()) \
            == history[1]
        with pytest.raises(KeyError):
            client.key(3)  # reloads once
        time.sleep(3 * client.poll_interval)
        client.close()
        assert tree_state(top) == before
    assert audit.events == []
    assert master_key_file.exists()
    assert recorder.indexes == [1, 2]


def test_client_reads_a_store_it_may_not_write(
    tmp_path: Path, writer: Writer, root: Path, master: MasterKey,
    clients: Clients,
) -> None:
    writer.rotate(2)
    copy = tmp_path / "copy" / "keys"
    shutil.copytree(root, copy)
    key_file = tmp_path / "copy" / "master.key"
    key_file.write_text(master.reveal().hex() + "\n")
    every = [copy, *copy.rglob("*"), key_file]
    for path in every:
        path.chmod(stat.S_IMODE(path.stat().st_mode) & ~0o222)
    try:
        before = tree_state(tmp_path / "copy")
        with WriteAudit(tmp_path / "copy") as audit:
            client = clients.start(copy, master_key_file=key_file)
            assert client.current_key().index == 2
            assert [info.index for info in client.history()] == [2, 1, 0]
            with pytest.raises(KeyError):
                client.key(5)
            time.sleep(3 * client.poll_interval)
            client.close()
        assert audit.events == []
        assert tree_state(tmp_path / "copy") == before
    finally:
        for path in every:
            path.chmod(stat.S_IMODE(path.stat().st_mode) | 0o200)


@pytest.mark.parametrize("make_root", [False, True],
                         ids=["missing", "empty"])
def test_start_on_a_store_without_keys_fails_and_creates_nothing(
    tmp_path: Path, clients: Clients, make_root: bool
) -> None:
    root = tmp_path / "keys"
    if make_root:
        root.mkdir()
    client = clients.make(root)
    with pytest.raises(StoreError) as caught:
        client.start()
    assert str(caught.value) == (
        f"{root} holds no key yet: start the torro daemon (or run torro "
        "daemon rotate) before reading its keys"
    )
    assert sorted(tmp_path.rglob("*")) == ([root] if make_root else [])
    assert not default_master_key_path(root).exists()
    assert not client.healthy


# -- what it serves ---------------------------------------------------

def test_keys_match_what_the_store_holds(
    root: Path, master: MasterKey, writer: Writer, clients: Clients
) -> None:
    writer.rotate(3)
    client = clients.start(root, master)
    store = reference(root, master)

    current = client.current_key()
    assert current.index == 3
    assert_matches(current, store)
    history = client.history()
    assert [info.index for info in history] == [3, 2, 1, 0]
    for info in history:
        assert_matches(info, store)
        assert client.key(info.index) == info
    assert history[0] == current
    assert client.healthy
    assert client.last_error is None


def hex_text(master: MasterKey) -> str:
    return master.reveal().hex()


def base64_text(master: MasterKey) -> str:
    return base64.b64encode(master.reveal()).decode()


def raw_bytes(master: MasterKey) -> bytes:
    return master.reveal()


def same_object(master: MasterKey) -> MasterKey:
    return master


@pytest.mark.parametrize(
    "form", [hex_text, base64_text, raw_bytes, same_object],
)
def test_master_key_is_taken_in_every_form(
    root: Path, master: MasterKey, writer: Writer, clients: Clients,
    form: Callable[[MasterKey], Any],
) -> None:
    client = clients.start(root, form(master))
    assert client.current_key().index == 0


def test_master_key_is_read_from_a_file_or_beside_the_store(
    tmp_path: Path, root: Path, master: MasterKey, writer: Writer,
    clients: Clients,
) -> None:
    key_file = tmp_path / "secret" / "master.key"
    key_file.parent.mkdir()
    key_file.write_text(master.reveal().hex() + "\n")
    key_file.chmod(0o400)
    assert clients.start(root, master_key_file=key_file) \
        .current_key().index == 0

    default = default_master_key_path(root)
    default.write_text(master.reveal().hex() + "\n")
    default.chmod(0o400)
    assert clients.start(root).current_key().index == 0


def test_key_info_repr_hides_the_key(
    root: Path, master: MasterKey, writer: Writer, clients: Clients
) -> None:
    info = clients.start(root, master).current_key()
    assert info.material.reveal_hex() not in repr(info)
    assert f"fingerprint={info.fingerprint}" in repr(info)


def test_readers_before_start_say_to_start(
    root: Path, master: MasterKey, writer: Writer, clients: Clients
) -> None:
    client = clients.make(root, master)
    with pytest.raises(RuntimeError) as caught:
        client.current_key()
    assert str(caught.value) == (
        "the key store is not loaded: call start() first"
    )
    assert not client.healthy


def test_context_manager_starts_and_closes(
    root: Path, master: MasterKey, writer: Writer
) -> None:
    with DaemonIntegration(root, master) as client:
        assert client.current_key().index == 0
        thread = client._thread
        assert thread is not None and thread.is_alive()
    assert not thread.is_alive()
    # The last view can still be read.
    assert client.current_key().index == 0


# -- keys by index ----------------------------------------------------

def test_key_made_after_the_last_load_is_found_by_one_reload(
    root: Path, master: MasterKey, writer: Writer, clients: Clients,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No watching, and a poll too rare to happen: only key() reloads.
    client = clients.start(root, master, watch=False, poll_interval=3600)
    record = writer.rotate()
    loads = count_loads(monkeypatch)

    info = client.key(record.index)

    assert len(loads) == 1
    assert info.index == 1
    assert info.fingerprint == record.fingerprint
    assert client.current_key() == info
    client.key(0)
    assert len(loads) == 1


def test_unknown_index_reloads_once_then_raises_key_error(
    root: Path, master: MasterKey, writer: Writer, clients: Clients,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    writer.rotate(2)
    client = clients.start(root, master, watch=False, poll_interval=3600)
    loads = count_loads(monkeypatch)

    with pytest.raises(KeyError) as caught:
        client.key(7)

    assert caught.value.args == (
        "no key with index 7: indexes run from 0 to 2",
    )
    assert len(loads) == 1


def test_pruned_index_is_not_retained(
    root: Path, master: MasterKey, clients: Clients,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    other = Writer(root, master, max_history=2)
    other.rotate(4)
    client = clients.start(root, master, watch=False, poll_interval=3600)
    loads = count_loads(monkeypatch)

    with pytest.raises(KeyError) as caught:
        client.key(1)

    assert caught.value.args == ((
        "key 1 is not retained (the oldest retained key is 2); torro keys "
        "history lists them"
    ),)
    # Indexes are never reused: reloading could not bring it back.
    assert loads == []
    assert [info.index for info in client.history()] == [3, 2]


# -- validate_key -----------------------------------------------------

def test_validate_key_finds_the_current_and_retained_keys(
    root: Path, master: MasterKey, writer: Writer, clients: Clients,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    writer.rotate(2)
    client = clients.start(root, master)
    store = reference(root, master)
    caplog.clear()

    for index in (2, 1, 0):
        key_hex = store.material(index).reveal_hex()
        found = client.validate_key(key_hex)
        assert found is not None
        assert found.index == index
        assert found == client.key(index)
        assert key_hex not in caplog.text
    assert [r for r in caplog.records if r.name == LOGGER] == []


def odd_length(key_hex: str) -> str:
    return key_hex[:-1]


def one_byte_short(key_hex: str) -> str:
    return key_hex[:-2]


def one_byte_more(key_hex: str) -> str:
    return key_hex + "00"


def last_bit_flipped(key_hex: str) -> str:
    return key_hex[:-1] + format(int(key_hex[-1], 16) ^ 1, "x")


def with_spaces(key_hex: str) -> str:
    return f" {key_hex} "


def with_prefix(key_hex: str) -> str:
    return "0x" + key_hex


def garbage(key_hex: str) -> str:
    return "not a key"


def empty(key_hex: str) -> str:
    return ""


def unknown(key_hex: str) -> str:
    return os.urandom(32).hex()


def not_text(key_hex: str) -> Any:
    return bytes.fromhex(key_hex)


@pytest.mark.parametrize("change", [
    odd_length, one_byte_short, one_byte_more,
    last_bit_flipped, with_spaces, with_prefix, garbage, empty, unknown,
    not_text,
])
def test_validate_key_returns_none_for_anything_else(
    root: Path, master: MasterKey, writer: Writer, clients: Clients,
    caplog: pytest.LogCaptureFixture, change: Callable[[str], Any],
) -> None:
    caplog.set_level(logging.DEBUG)
    client = clients.start(root, master)
    key_hex = client.current_key().material.reveal_hex()
    caplog.clear()

    assert client.validate_key(change(key_hex)) is None
    assert [r for r in caplog.records if r.name == LOGGER] == []


def test_validate_key_refuses_a_key_beyond_retention(
    root: Path, master: MasterKey, clients: Clients
) -> None:
    other = Writer(root, master, max_history=2)
    other.rotate(2)
    oldest = reference(root, master).material(0).reveal_hex()
    client = clients.start(root, master, watch=False, poll_interval=0.02)
    assert client.validate_key(oldest) is not None

    other.rotate()
    wait_until(lambda: client.current_key().index == 2,
               what="the client to see key 2")
    assert client.validate_key(oldest) is None


# -- subscribers ------------------------------------------------------

@pytest.mark.parametrize("watch", [True, False],
                         ids=["watchfiles", "polling"])
def test_subscribers_hear_of_each_rotation_in_order(
    root: Path, master: MasterKey, writer: Writer, clients: Clients,
    watch: bool,
) -> None:
    client = clients.start(root, master, watch=watch)
    recorder = Recorder()
    client.subscribe(recorder)

    records = [writer.rotate() for _ in range(3)]
    recorder.wait_for(3)

    assert recorder.indexes == [1, 2, 3]
    for (info, arrived), record in zip(recorder.calls, records,
                                       strict=True):
        assert info.fingerprint == record.fingerprint
        assert arrived - record.timestamp / 1000 < SEEN_WITHIN
    assert client.current_key().index == 3


def test_a_failing_subscriber_does_not_stop_the_others(
    root: Path, master: MasterKey, writer: Writer, clients: Clients,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(info: KeyInfo) -> None:
        raise ValueError("broken on purpose")

    client = clients.start(root, master, poll_interval=0.02)
    recorder = Recorder()
    client.subscribe(broken)
    client.subscribe(recorder)

    writer.rotate(2)
    recorder.wait_for(2)

    assert recorder.indexes == [1, 2]
    failures = [
        record for record in caplog.records
        if record.name == LOGGER and record.levelno == logging.ERROR
    ]
    assert [record.getMessage() for record in failures] == [
        "a subscriber (test_a_failing_subscriber_does_not_stop_the_others"
        f".<locals>.broken) failed on key {index}"
        for index in (1, 2)
    ]
    assert failures[0].exc_info is not None
    assert client.healthy


def test_unsubscribe_ends_the_calls(
    root: Path, master: MasterKey, writer: Writer, clients: Clients
) -> None:
    client = clients.start(root, master, poll_interval=0.02)
    kept, dropped = Recorder(), Recorder()
    client.subscribe(kept)
    unsubscribe = client.subscribe(dropped)

    writer.rotate()
    kept.wait_for(1)
    unsubscribe()
    unsubscribe()
    writer.rotate()
    kept.wait_for(2)

    assert kept.indexes == [1, 2]
    assert dropped.indexes == [1]


# -- damage, half rotations, replaced stores --------------------------

@pytest.mark.parametrize("watch", [True, False],
                         ids=["watchfiles", "polling"])
def test_damaged_store_keeps_serving_the_last_good_keys(
    root: Path, master: MasterKey, writer: Writer, clients: Clients,
    caplog: pytest.LogCaptureFixture, watch: bool,
) -> None:
    caplog.set_level(logging.DEBUG)
    writer.rotate()
    client = clients.start(root, master, watch=watch, poll_interval=0.02)
    recorder = Recorder()
    client.subscribe(recorder)
    good = client.current_key()
    history = client.history()

    # Another process replaces current.json with something else.
    files.write_file(root / "current.json", b'{"index": 1}\n')
    damaged = KeyStore(root, Sealer(master))
    damaged.load()
    problem = str(damaged.problem)
    wait_until(lambda: not client.healthy, what="the client to notice")
    time.sleep(0.2)  # many more checks: still one warning

    assert client.current_key() == good
    assert client.history() == history
    assert client.key(0) == history[1]
    assert client.validate_key(good.material.reveal_hex()) == good
    assert client.last_error == problem
    assert integration_warnings(caplog) == [(
        f"cannot reload the key store {root}: {problem}; still serving "
        "the last good keys (current key 1)"
    )]
    for info in history:
        assert info.material.reveal_hex() not in caplog.text

    # An operator restores the store, and the daemon rotates again.
    writer.restore()
    wait_until(lambda: client.healthy, what="the client to recover")
    assert client.last_error is None
    assert client.current_key() == good
    record = writer.rotate()
    recorder.wait_for(1)

    assert recorder.indexes == [2]
    assert client.current_key().fingerprint == record.fingerprint
    assert client.healthy
    assert len(integration_warnings(caplog)) == 1
    assert f"the key store {root} reads again: serving key 1" in [
        r.getMessage() for r in caplog.records if r.name == LOGGER
    ]


def test_half_a_rotation_is_never_served(
    root: Path, master: MasterKey, writer: Writer, clients: Clients
) -> None:
    client = clients.start(root, master, watch=False, poll_interval=0.02)
    recorder = Recorder()
    client.subscribe(recorder)
    old_current = (root / "current.json").read_bytes()

    # The record and history.json of key 1 are in place, current.json
    # does not name it yet: what a reader may meet mid-rotation.
    writer.rotate()
    new_current = (root / "current.json").read_bytes()
    files.write_file(root / "current.json", old_current)
    time.sleep(0.2)

    assert client.current_key().index == 0
    assert client.healthy
    assert recorder.indexes == []
    with pytest.raises(KeyError):
        client.key(1)

    files.write_file(root / "current.json", new_current)
    recorder.wait_for(1)
    assert client.current_key().index == 1


def test_start_serves_an_interrupted_rotation_once_it_settles(
    root: Path, master: MasterKey, writer: Writer, clients: Clients
) -> None:
    old_current = (root / "current.json").read_bytes()
    writer.rotate()
    files.write_file(root / "current.json", old_current)

    started = time.monotonic()
    client = clients.start(root, master)

    # No rotation finishes it: a crash left it, and the next writer
    # makes key 1 current.
    assert time.monotonic() - started >= integration.START_SETTLE_TIMEOUT
    assert client.current_key().index == 1


def test_store_put_back_to_an_older_copy_is_refused(
    tmp_path: Path, root: Path, master: MasterKey, writer: Writer,
    clients: Clients, caplog: pytest.LogCaptureFixture,
) -> None:
    older = tmp_path / "older"
    shutil.copytree(root, older)
    writer.rotate(2)
    client = clients.start(root, master, poll_interval=0.02)

    os.rename(root, tmp_path / "newer")
    os.rename(older, root)
    wait_until(lambda: not client.healthy, what="the client to notice")

    message = (
        f"{root} went back from next index 3 to 1: its files were "
        "removed or replaced by an older copy"
    )
    assert client.last_error == message
    assert client.current_key().index == 2
    assert integration_warnings(caplog) == [(
        f"cannot reload the key store {root}: {message}; still serving "
        "the last good keys (current key 2)"
    )]


def test_reset_cut_short_is_left_to_the_next_writer(
    tmp_path: Path, root: Path, master: MasterKey, writer: Writer,
    clients: Clients,
) -> None:
    client = clients.start(root, master, poll_interval=0.02)
    recorder = Recorder()
    client.subscribe(recorder)
    # A reset renames the old store away, then the new one into place
    # from its staging name; a reader never does the second rename.
    staging = root.with_name(root.name + ".staging")
    shutil.copytree(root, staging)
    os.rename(root, tmp_path / "keys.replaced")

    wait_until(lambda: not client.healthy, what="the client to notice")
    time.sleep(0.1)

    assert not root.exists()
    assert staging.is_dir()
    assert client.last_error == (
        f"{root} holds no key now: it was moved or removed, or a reset is "
        "replacing it"
    )
    assert client.current_key().index == 0

    os.rename(staging, root)
    wait_until(lambda: client.healthy, what="the client to recover")
    writer.rotate()
    recorder.wait_for(1)
    assert recorder.indexes == [1]


def test_reset_by_another_process_is_followed(
    root: Path, master: MasterKey, writer: Writer, clients: Clients
) -> None:
    writer.rotate(2)
    client = clients.start(root, master)
    recorder = Recorder()
    client.subscribe(recorder)

    reset = writer.daemon.reset()
    recorder.wait_for(1)
    record = writer.rotate()
    recorder.wait_for(2)

    assert reset.record.index == 3
    assert recorder.indexes == [3, 4]
    assert client.watching
    assert [info.index for info in client.history()] == [4, 3]
    assert client.current_key().fingerprint == record.fingerprint


def test_readers_in_other_threads_see_whole_keys(
    root: Path, master: MasterKey, writer: Writer, clients: Clients
) -> None:
    client = clients.start(root, master, poll_interval=0.005)
    stop = threading.Event()
    problems: list[str] = []

    def read() -> None:
        while not stop.is_set():
            current = client.current_key()
            history = client.history()
            if current.material.fingerprint != current.fingerprint:
                problems.append(f"key {current.index} is not whole")
            if history[0].index < current.index:
                problems.append("history older than the current key")

    readers = [threading.Thread(target=read) for _ in range(2)]
    for reader in readers:
        reader.start()
    try:
        writer.rotate(5)
        wait_until(lambda: client.current_key().index == 5,
                   what="key 5")
    finally:
        stop.set()
        for reader in readers:
            reader.join()
    assert problems == []


# -- start, watching and close ---------------------------------------

def test_wrong_master_key_stops_start(
    root: Path, master: MasterKey, writer: Writer, clients: Clients
) -> None:
    other = MasterKey(os.urandom(32))
    client = clients.make(root, other)
    threads = threading.active_count()

    with pytest.raises(MasterKeyError) as caught:
        client.start()

    assert str(caught.value) == (
        f"the master key (id {other.key_id}) is not the one that sealed "
        f"{root / 'current.json'} (id {master.key_id}): set "
        "KEY_DAEMON_MASTER_KEY_FILE or KEY_DAEMON_MASTER_KEY to this "
        "store's master key; nothing was changed"
    )
    assert threading.active_count() == threads
    assert not client.healthy


def test_malformed_master_keys_are_refused(
    root: Path, master: MasterKey, writer: Writer, clients: Clients
) -> None:
    with pytest.raises(MasterKeyError) as caught:
        clients.start(root, "0123")
    assert str(caught.value) == (
        "the master key given to DaemonIntegration is not a 32-byte master "
        "key: give 64 hex characters or the base64 of 32 bytes (openssl "
        "rand -hex 32)"
    )
    with pytest.raises(MasterKeyError) as caught:
        clients.start(root, b"\x00" * 16)
    assert str(caught.value) == (
        "the master key given to DaemonIntegration is 16 bytes, not 32: "
        "pass the raw bytes, or the 64 hex characters as text"
    )
    missing = default_master_key_path(root)
    with pytest.raises(MasterKeyError) as caught:
        clients.start(root)
    assert str(caught.value).startswith(
        f"no master key for the key store {root}: it holds keys but "
        f"{missing} does not exist"
    )
    assert not missing.exists()


def test_bad_arguments_are_refused(root: Path, master: MasterKey) -> None:
    with pytest.raises(ValueError) as caught:
        DaemonIntegration(root, master, master_key_file=root / "key")
    assert str(caught.value) == "give master_key or master_key_file, not both"
    with pytest.raises(ValueError) as caught:
        DaemonIntegration(root, master, poll_interval=0)
    assert str(caught.value) == (
        "poll_interval must be more than 0 seconds, not 0"
    )


def test_start_twice_is_refused(
    root: Path, master: MasterKey, writer: Writer, clients: Clients
) -> None:
    client = clients.start(root, master)
    with pytest.raises(RuntimeError) as caught:
        client.start()
    assert str(caught.value) == "this DaemonIntegration is already started"


def test_without_watchfiles_it_polls(
    root: Path, master: MasterKey, writer: Writer, clients: Clients,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    monkeypatch.setitem(sys.modules, "watchfiles", None)
    client = clients.start(root, master)
    recorder = Recorder()
    client.subscribe(recorder)

    record = writer.rotate()
    recorder.wait_for(1)

    assert not client.watching
    assert recorder.calls[0][1] - record.timestamp / 1000 < SEEN_WITHIN
    assert (
        f"watchfiles is not installed: checking {root} every 0.25 s"
        in [r.getMessage() for r in caplog.records if r.name == LOGGER]
    )


def test_a_watch_that_fails_falls_back_to_polling(
    root: Path, master: MasterKey, writer: Writer, clients: Clients,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    import watchfiles

    def watch(*args: Any, **options: Any) -> Iterator[set[Any]]:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(watchfiles, "watch", watch)
    client = clients.start(root, master)
    recorder = Recorder()
    client.subscribe(recorder)

    writer.rotate()
    recorder.wait_for(1)

    assert not client.watching
    assert integration_warnings(caplog) == [(
        f"cannot watch {root} (inotify watch limit reached): checking it "
        "every 0.25 s instead"
    )]


@pytest.mark.parametrize("watch", [True, False],
                         ids=["watchfiles", "polling"])
def test_close_ends_the_thread_promptly(
    root: Path, master: MasterKey, writer: Writer, watch: bool
) -> None:
    client = DaemonIntegration(root, master, watch=watch, poll_interval=60)
    client.start()
    thread = client._thread
    assert thread is not None

    started = time.monotonic()
    client.close()
    client.close()

    assert time.monotonic() - started < 0.5
    assert not thread.is_alive()


def test_licenses_follow_the_rotations_of_another_process(
    root: Path, master: MasterKey, clients: Clients
) -> None:
    """A license server signs and checks licenses through the client: a
    license signed by another process with a key the client has not
    seen yet makes it reload once and verify; one whose key the other
    process pruned fails with key_retired."""
    other = Writer(root, master, max_history=2)
    other.rotate()
    client = clients.start(root, master, watch=False, poll_interval=3600)
    mine = client.issue_license(
        subject="acme", expires=4102444800, features=["pro"]
    )
    assert client.verify_license(mine).kid == 0

    other.rotate(2)
    theirs = issue_license(
        StoreKeyRing(other.store), subject="acme", expires=4102444800,
        offline=True,
    )
    found = client.verify_license(theirs)
    assert (found.kid, found.offline, found.subject) == (2, True, "acme")
    with pytest.raises(LicenseError) as caught:
        client.verify_license(mine)
    assert caught.value.reason == "key_retired"


def test_validate_key_takes_hex_in_either_case(
    root: Path, master: MasterKey, writer: Writer, clients: Clients
) -> None:
    """The HTTP API's validate-key takes either case; so does the client.
    """
    writer.rotate()
    client = clients.start(root, master)
    key = client.current_key().material.reveal_hex()

    assert client.validate_key(key.upper()) == client.current_key()
    assert client.validate_key(key[:-2]) is None
