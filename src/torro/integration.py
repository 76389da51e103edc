"""Read a torro key store from another process: the license server's side.

A license server runs beside the daemon, not inside it. It needs the
current key to sign licenses, the retained keys to verify old ones, and
word of each rotation. :class:`DaemonIntegration` gives it all three from
the store directory and the master key, and never writes:

- It reads the store as any reader does (:meth:`KeyStore.load`), and
  never takes the store lock, never completes an interrupted write and
  never creates a master key file, so it works on a store and a master
  key file it may only read.
- It serves one loaded view of the store at a time. A new view replaces
  it only when the whole store checked out and ``current.json`` names the
  view's current key, the point at which a rotation has happened; half of
  a rotation is never served.
- When a reload fails (a damaged store, a file it cannot read), it keeps
  serving the last good view, says so once in its log, and tries again
  on the next change or check.
- It notices a rotation by the rename of ``current.json`` (file-system
  events through watchfiles when installed) and also checks the store by
  a stat every ``poll_interval`` seconds, which is all it does when
  watchfiles is missing or watching fails. Subscribers hear of each new
  current key from that background thread.

Everything it logs goes to the logger :data:`LOGGER_NAME`; key material
never does.
"""

import dataclasses
import hmac
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import ModuleType, TracebackType
from typing import TYPE_CHECKING, Self

from torro.errors import MasterKeyError, StoreError, TorroError
from torro.material import KeyMaterial
from torro.sealing import (
    MASTER_KEY_LENGTH,
    MasterKey,
    Sealer,
    parse_master_key,
    resolve_master_key,
)
from torro.store import files
from torro.store.keystore import KeyStore
from torro.store.layout import store_is_empty
from torro.store.records import RecordError, parse_record

if TYPE_CHECKING:
    from torro.licenses import License


LOGGER_NAME = "torro.integration"
# The files whose replacement means a rotation (or a repair) happened.
HEAD_FILES = frozenset({"current.json", "history.json"})
# How long start() lets a rotation in progress finish before it serves
# the newest complete record anyway (a crash left the rotation half done).
START_SETTLE_TIMEOUT = 1.0
START_SETTLE_STEP = 0.05
# watchfiles: the longest a batch of changes is gathered, and the quiet
# time that ends a batch, in ms.
WATCH_DEBOUNCE_MS = 200
WATCH_STEP_MS = 20
# How long close() waits for the background thread.
CLOSE_TIMEOUT = 5.0

log = logging.getLogger(LOGGER_NAME)

Subscriber = Callable[["KeyInfo"], None]


@dataclasses.dataclass(frozen=True)
class KeyInfo:
    """One key of the key ring, as a license server needs it.

    :param index: the key's position in the key ring, never reused.
    :param fingerprint: identifies the key in output (see torro.material).
    :param timestamp: when the key was made, in ms since the epoch.
    :param algorithm: the hash of the derivation that made it.
    :param material: the key itself; its repr shows only its fingerprint.
    """

    index: int
    fingerprint: str
    timestamp: int
    algorithm: str
    material: KeyMaterial


class DaemonIntegration:
    """A read-only client of the key store a torro daemon keeps.

    Start it (or use it as a context manager), then ask for keys from any
    thread. Readers are served from one loaded view of the store, swapped
    whole under a lock, so a call never mixes two views.

    :param storage_path: the key store directory (KEY_STORAGE_PATH).
    :param master_key: the store's master key: 64 hex characters or the
        base64 of 32 bytes as text, the 32 raw bytes, or a
        :class:`MasterKey`. Give it or ``master_key_file``, not both;
        with neither, the default file beside the store is read
        (:func:`torro.sealing.default_master_key_path`). Nothing is ever
        created.
    :param master_key_file: a file holding the master key as 64 hex
        characters (KEY_DAEMON_MASTER_KEY_FILE).
    :param history_path: where the key-N.json records live
        (KEY_HISTORY_PATH), ``<storage>/history`` by default.
    :param poll_interval: seconds between two checks of the store by a
        stat. It is how fast a rotation is seen when file-system events
        are not available, and a safety net when they are.
    :param watch: follow file-system events through watchfiles when it is
        installed; False polls only.
    :raises ValueError: both a master key and a master key file given, or
        a poll interval that is not positive.
    """

    def __init__(
        self,
        storage_path: Path | str,
        master_key: str | bytes | MasterKey | None = None,
        *,
        master_key_file: Path | None = None,
        history_path: Path | None = None,
        poll_interval: float = 0.25,
        watch: bool = True,
    ) -> None:
        if master_key is not None and master_key_file is not None:
            raise ValueError(
                "give master_key or master_key_file, not both"
            )
        if not poll_interval > 0:
            raise ValueError(
                f"poll_interval must be more than 0 seconds, not "
                f"{poll_interval!r}"
            )
        # Absolute, so that a later chdir of the process changes nothing.
        self.storage_path = Path(storage_path).absolute()
        self.history_dir = (
            None if history_path is None else Path(history_path).absolute()
        )
        self.poll_interval = poll_interval
        self.watch = watch
        self._master_key = master_key
        self._master_key_file = master_key_file
        self._sealer: Sealer | None = None

        # The view readers are served from; replaced whole, never changed.
        self._store: KeyStore | None = None
        # Guards the swap of the view, the material cache and the
        # subscriber list; held only for moments, never during I/O.
        self._lock = threading.Lock()
        # Serialises reloads: the background thread's and key()'s.
        self._reload_lock = threading.Lock()
        # A store whose load found a problem, loaded again until it
        # passes, so that its problem is reported when it changes only.
        self._retry: KeyStore | None = None
        self._error: str | None = None
        # Key material opened so far, by record checksum.
        self._materials: dict[str, KeyMaterial] = {}
        self._subscribers: list[Subscriber] = []
        # The newest current key subscribers have heard of (background
        # thread only).
        self._notified = -1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watching = False

    # -- lifecycle -----------------------------------------------------

    def start(self) -> None:
        """Load the store, then follow it from a background thread.

        :raises StoreError: the store holds no key yet, or is damaged
            (there is no last good view to serve yet).
        :raises MasterKeyError: the master key is missing, malformed or
            not the store's.
        :raises RuntimeError: already started.
        """
        if self._thread is not None:
            raise RuntimeError("this DaemonIntegration is already started")
        if store_is_empty(self.storage_path, self.history_dir):
            raise StoreError(self._no_key_message())
        self._sealer = Sealer(self._resolve_master_key())
        store = self._first_load()
        self._publish(store)
        assert store.current is not None
        self._notified = store.current.index

        watchfiles = _import_watchfiles() if self.watch else None
        if self.watch and watchfiles is None:
            log.info(
                "watchfiles is not installed: checking %s every %g s",
                self.storage_path, self.poll_interval,
            )
        self._stop.clear()
        self._watching = watchfiles is not None
        self._thread = threading.Thread(
            target=self._follow,
            args=(watchfiles,),
            name="torro-integration",
            daemon=True,
        )
        self._thread.start()
        log.info(
            "following the key store %s: current key %d",
            self.storage_path, store.current.index,
        )

    def close(self) -> None:
        """Stop following the store; the last view can still be read.

        Safe to call more than once, and from a subscriber.
        """
        self._stop.set()
        thread = self._thread
        self._thread = None
        self._watching = False
        if thread is not None and thread is not threading.current_thread():
            thread.join(CLOSE_TIMEOUT)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- reading -------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """Whether the last look at the store found it readable and intact.

        False before :meth:`start` and while a reload fails; the last good
        keys are served meanwhile.
        """
        return self._store is not None and self._error is None

    @property
    def last_error(self) -> str | None:
        """Why the last reload failed, or None when it did not."""
        return self._error

    @property
    def watching(self) -> bool:
        """Whether rotations are followed by file-system events.

        False when polling only: watch=False, watchfiles missing, or
        watching failed.
        """
        return self._watching

    def current_key(self) -> KeyInfo:
        """Return the current key: the one that signs new licenses."""
        store = self._view()
        assert store.current is not None
        return self._info(store, store.current.index)

    def key(self, index: int) -> KeyInfo:
        """Return the current or a retained key by its index.

        An index beyond the newest key this client knows makes it reload
        the store once (another process may have rotated) before it says
        no.

        :raises KeyError: no such key, or the key is no longer retained;
            the message says which.
        """
        store = self._view()
        if index not in store.records and index >= store.next_index:
            self._reload()
            store = self._view()
        if index not in store.records:
            raise KeyError(store.unknown_index_message(index))
        return self._info(store, index)

    def history(self) -> list[KeyInfo]:
        """Return every retained key, the current one first, newest first.
        """
        store = self._view()
        return [
            self._info(store, index)
            for index in sorted(store.records, reverse=True)
        ]

    def validate_key(self, key_hex: str) -> KeyInfo | None:
        """Tell whether ``key_hex`` is the current or a retained key.

        Every retained key is compared, in constant time for keys of equal
        length, whichever matches. The key is never logged.

        :param key_hex: a key as hex digits, in either case.
        :returns: the key's :class:`KeyInfo`, or None for any other key
            and for anything that is not hex of even length.
        """
        if not isinstance(key_hex, str):
            return None
        try:
            candidate = KeyMaterial.from_hex(key_hex.lower()).reveal()
        except ValueError:
            return None
        found = None
        for info in self.history():
            matched = hmac.compare_digest(candidate, info.material.reveal())
            if matched and found is None:
                found = info
        return found

    def issue_license(
        self,
        *,
        subject: str,
        expires: int,
        features: Sequence[str] = (),
        offline: bool = False,
        not_before: int | None = None,
    ) -> str:
        """Sign a license with the current key (see torro.licenses).

        The store is looked at first (a stat of its main files), so that
        a key rotated or reset away by another process is never used.

        :param subject: who holds the license.
        :param expires: when it stops being valid, seconds since the
            epoch.
        :param features: what it grants.
        :param offline: sign by EdDSA, for clients holding only the JWKS.
        :param not_before: when it starts to be valid; now by default.
        :raises ValueError: for a subject, feature or time out of range.
        """
        from torro import licenses

        # never sign with a key another process retired a moment ago
        if self._view().changed_on_disk():
            self._reload()
        return licenses.issue_license(
            licenses.StoreKeyRing(self._view()),
            subject=subject,
            expires=expires,
            features=features,
            offline=offline,
            not_before=not_before,
        )

    def verify_license(self, token: str) -> "License":
        """Check a license against the retained keys; return its claims.

        A ``kid`` beyond the newest key this client knows makes it reload
        the store once (another process may just have rotated) before it
        says ``unknown_kid``.

        :raises torro.licenses.LicenseError: the license is not valid;
            its ``reason`` says why.
        """
        from torro import licenses

        try:
            return licenses.verify_license(
                token, licenses.StoreKeyRing(self._view())
            )
        except licenses.LicenseError as exc:
            if exc.reason != "unknown_kid":
                raise
        self._reload()
        return licenses.verify_license(
            token, licenses.StoreKeyRing(self._view())
        )

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback`` with each new current key, oldest first.

        Calls come from the background thread, within one poll interval
        of the rename of ``current.json`` (much sooner when watching).
        Several rotations seen at once give one call each, in index order.
        A callback that raises is logged and the others are still called.

        :returns: a function that ends the subscription.
        """
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    # -- loading -------------------------------------------------------

    def _resolve_master_key(self) -> MasterKey:
        given = self._master_key
        if isinstance(given, str):
            given = parse_master_key(
                given, "the master key given to DaemonIntegration"
            )
        elif isinstance(given, bytes):
            if len(given) != MASTER_KEY_LENGTH:
                raise MasterKeyError(
                    f"the master key given to DaemonIntegration is "
                    f"{len(given)} bytes, not {MASTER_KEY_LENGTH}: pass the "
                    "raw bytes, or the 64 hex characters as text"
                )
            given = MasterKey(given)
        # resolve_master_key also registers the key with the logs, which
        # redact it should it ever reach a line; it creates nothing.
        return resolve_master_key(
            None if given is None else given.reveal().hex(),
            self._master_key_file,
            self.storage_path,
            False,
            may_create=False,
        )

    def _new_store(self) -> KeyStore:
        assert self._sealer is not None
        return KeyStore(
            self.storage_path,
            self._sealer,
            history_dir=self.history_dir,
            read_only=True,
        )

    def _first_load(self) -> KeyStore:
        """Load the store for start(), letting a rotation in progress end.
        """
        deadline = time.monotonic() + START_SETTLE_TIMEOUT
        while True:
            store = self._new_store()
            try:
                store.load()
            except OSError as exc:
                raise StoreError(
                    f"cannot read the key store {self.storage_path}: "
                    f"{exc.strerror or exc}"
                ) from None
            if store.problem is not None:
                raise store.problem
            if store.current is None:
                raise StoreError(self._no_key_message())
            if self._named_current(store) \
                    or time.monotonic() >= deadline:
                return store
            time.sleep(START_SETTLE_STEP)

    def _reload(self) -> bool:
        """Load the store again; serve it if it checks out.

        :returns: whether a new view is served.
        """
        with self._reload_lock:
            store = self._retry or self._new_store()
            self._retry = None
            try:
                store.load()
                failure = self._judge(store)
            except (TorroError, OSError) as exc:
                failure = _describe(exc)
            else:
                if store.problem is not None:
                    self._retry = store
            if failure is not None:
                self._fail(failure)
                return False
            if not self._named_current(store):
                # The rotation is under way: current.json names the new
                # key last, and only then has the rotation happened.
                assert store.current is not None
                log.debug(
                    "key %d is not current yet: current.json does not "
                    "name it", store.current.index,
                )
                return False
            self._publish(store)
            return True

    def _judge(self, store: KeyStore) -> str | None:
        """Return why a freshly loaded store must not be served, or None.
        """
        if store.problem is not None:
            return str(store.problem)
        if store.current is None:
            return (
                f"{self.storage_path} holds no key now: it was moved or "
                "removed, or a reset is replacing it"
            )
        served = self._store
        if served is not None and store.next_index < served.next_index:
            return (
                f"{self.storage_path} went back from next index "
                f"{served.next_index} to {store.next_index}: its files "
                "were removed or replaced by an older copy"
            )
        # The current key is opened now, not when a reader asks: a view
        # whose current key does not open is never served.
        store.current_material()
        return None

    def _named_current(self, store: KeyStore) -> bool:
        """Tell whether current.json names the loaded store's current key.
        """
        assert store.current is not None
        try:
            data = files.read_file(store.current_path)
            named = None if data is None else parse_record(data)
        except (StoreError, RecordError):
            return False
        return named is not None \
            and named.checksum == store.current.checksum

    def _publish(self, store: KeyStore) -> None:
        assert store.current is not None
        kept = {record.checksum for record in store.records.values()}
        with self._lock:
            self._store = store
            self._materials = {
                checksum: material
                for checksum, material in self._materials.items()
                if checksum in kept
            }
        if self._error is not None:
            log.info(
                "the key store %s reads again: serving key %d",
                self.storage_path, store.current.index,
            )
        self._error = None

    def _fail(self, message: str) -> None:
        served = self._store
        if message != self._error and served is not None:
            assert served.current is not None
            log.warning(
                "cannot reload the key store %s: %s; still serving the "
                "last good keys (current key %d)",
                self.storage_path, message, served.current.index,
            )
        self._error = message

    def _no_key_message(self) -> str:
        return (
            f"{self.storage_path} holds no key yet: start the torro daemon "
            "(or run torro daemon rotate) before reading its keys"
        )

    def _view(self) -> KeyStore:
        with self._lock:
            store = self._store
        if store is None:
            raise RuntimeError(
                "the key store is not loaded: call start() first"
            )
        return store

    def _info(self, store: KeyStore, index: int) -> KeyInfo:
        record = store.records[index]
        with self._lock:
            material = self._materials.get(record.checksum)
        if material is None:
            # Opened from the record in memory: no file is read again.
            material = store.material(index)
            with self._lock:
                self._materials[record.checksum] = material
        return KeyInfo(
            index=record.index,
            fingerprint=record.fingerprint,
            timestamp=record.timestamp,
            algorithm=record.algorithm,
            material=material,
        )

    # -- following -----------------------------------------------------

    def _follow(self, watchfiles: ModuleType | None) -> None:
        """Run the background thread: watch when possible, else poll."""
        while watchfiles is not None and not self._stop.is_set():
            try:
                self._watch_once(watchfiles)
            except FileNotFoundError:
                # The directory went between its stat and the watch (a
                # reset): _watch_once waits for the new one.
                if not self._stop.wait(self.poll_interval):
                    self._check()
            except Exception as exc:
                self._watching = False
                log.warning(
                    "cannot watch %s (%s): checking it every %g s instead",
                    self.storage_path, _describe(exc), self.poll_interval,
                )
                break
        while not self._stop.wait(self.poll_interval):
            self._check()

    def _watch_once(self, watchfiles: ModuleType) -> None:
        """Watch the store directory until it is replaced or close().

        A reset renames the whole directory away and a new one into
        place; events would then come from the old one, so the watch
        starts again on the new.
        """
        identity = _identity(self.storage_path)
        if identity is None:
            # Between the two renames of a reset: look again shortly.
            if not self._stop.wait(self.poll_interval):
                self._check()
            return
        paths = [self.storage_path]
        if self.history_dir is not None and self.history_dir.is_dir() \
                and not self.history_dir.is_relative_to(self.storage_path):
            paths.append(self.history_dir)
        # Events may be missed (a full queue, a directory replaced): each
        # timeout checks the store by a stat as well.
        timeout = max(1, round(self.poll_interval * 1000))
        for _ in watchfiles.watch(
            *paths,
            watch_filter=_is_head_file,
            debounce=WATCH_DEBOUNCE_MS,
            step=WATCH_STEP_MS,
            stop_event=self._stop,
            rust_timeout=timeout,
            yield_on_timeout=True,
            raise_interrupt=False,
        ):
            self._check()
            if _identity(self.storage_path) != identity:
                return

    def _check(self) -> None:
        """Reload the store if it changed, then tell subscribers.

        Runs in the background thread; nothing it meets stops the thread.
        """
        try:
            store = self._view()
            if self._error is not None or store.changed_on_disk():
                self._reload()
            self._notify(self._view())
        except Exception:
            log.exception(
                "checking the key store %s failed unexpectedly",
                self.storage_path,
            )

    def _notify(self, store: KeyStore) -> None:
        assert store.current is not None
        current = store.current.index
        if current <= self._notified:
            return
        new = [
            index for index in sorted(store.records)
            if self._notified < index <= current
        ]
        self._notified = current
        with self._lock:
            subscribers = list(self._subscribers)
        for index in new:
            info = self._info(store, index)
            _call_each(subscribers, info)


def _call_each(subscribers: Iterable[Subscriber], info: KeyInfo) -> None:
    for callback in subscribers:
        try:
            callback(info)
        except Exception:
            log.exception(
                "a subscriber (%s) failed on key %d",
                getattr(callback, "__qualname__", type(callback).__name__),
                info.index,
            )


def _is_head_file(change: object, path: str) -> bool:
    return os.path.basename(path) in HEAD_FILES


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TorroError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror}"
    return f"{type(exc).__name__}: {exc}"


def _import_watchfiles() -> ModuleType | None:
    try:
        import watchfiles
    except ImportError:
        return None
    return watchfiles
