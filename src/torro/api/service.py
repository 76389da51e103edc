"""What the HTTP API can ask of the daemon it runs in.

Route handlers stay thin: they check the caller, call one method here and
format the reply. Reads use the key store's published view and never
wait for a rotation; changes (a forced rotation, a reset) take
:attr:`DaemonService.lock`, which the rotation loop also holds while it
runs a pass, so only one thread of the process changes the store at a
time (the store's own file lock keeps other processes out).
"""

import dataclasses
import hmac
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from torro.config import Settings
from torro.errors import StoreError, TorroError
from torro.material import KeyMaterial, fingerprint
from torro.rotation import KeyRotationDaemon, Reset, Rotation
from torro.store import KeyStore
from torro.store.keystore import StoreView


# A key still current this many rotation intervals after it fell due is
# overdue: the daemon is unhealthy.
OVERDUE_INTERVALS = 2
# Seconds between two full reads of the store by GET status: damage to a
# record that leaves the main files alone shows only then.
VERIFY_INTERVAL = 10.0

T = TypeVar("T")


class Unavailable(TorroError):
    """The key store cannot serve a request now (damaged or empty)."""


@dataclasses.dataclass(frozen=True)
class KeyMatch:
    """What a key sent to ``validate-key`` is in the key ring.

    :param index: the index of the retained key it is, or None.
    :param current: it is the current key.
    :param fingerprint: the fingerprint of the key, when it is one of
        the ring's; None otherwise.
    """

    index: int | None
    current: bool
    fingerprint: str | None

    @property
    def valid(self) -> bool:
        return self.index is not None


class ViewKeyRing:
    """The key ring of one :class:`StoreView`, for torro.licenses.

    A view never changes, so a license is checked against one consistent
    state however many rotations run meanwhile. An index below the
    view's next index that it no longer retains counts as retired.

    :param view: the key store's view of the moment.
    """

    def __init__(self, view: StoreView) -> None:
        self.view = view

    def current_index(self) -> int:
        current = self.view.current
        if current is None:
            raise Unavailable("the key store holds no key yet")
        return current.index

    def key(self, index: int) -> tuple[KeyMaterial, str]:
        record = self.view.records.get(index)
        if record is None:
            raise KeyError(index)
        return self.view.material(index), record.algorithm

    def retained(self) -> list[int]:
        return sorted(self.view.records)

    def is_retired(self, index: int) -> bool:
        return (
            0 <= index < self.view.next_index
            and index not in self.view.records
        )


@dataclasses.dataclass(frozen=True)
class Health:
    """Whether the daemon is healthy, and why not.

    :param problem: one line saying what is wrong, or None.
    """

    healthy: bool
    integrity: str
    problem: str | None
    current_index: int | None
    last_rotation: int | None
    next_rotation: int | None


class DaemonService:
    """The running daemon, as its HTTP API sees it.

    :param settings: the daemon's configuration.
    :param store: its key store.
    :param daemon: its rotation daemon (schedule, stats, subscribers).
    """

    def __init__(
        self,
        settings: Settings,
        store: KeyStore,
        daemon: KeyRotationDaemon,
    ) -> None:
        self.settings = settings
        self.store = store
        self.daemon = daemon
        self.lock = threading.Lock()
        # on the monotonic clock: a wall clock step moves no uptime
        self.started = time.monotonic()
        self._verified = 0.0
        # The JWK Set of the last view asked for, by that view.
        self._jwks: tuple[StoreView, dict[str, Any]] | None = None
        # The Prometheus registry of GET /metrics, made at its first
        # scrape (see torro.api.routes.stats).
        self.metrics_registry: Any = None
        self.lock_metrics = threading.Lock()

    @property
    def view(self) -> StoreView:
        return self.store.view

    def sync(self, *, verify: bool = False, wait: bool = False) -> None:
        """Catch up with changes to the store made by another process.

        The rotation loop looks once per sleep interval; every request
        looks too (a stat of the store's main files), so that the API
        never signs with or accepts a key another process has retired.
        On a change the loop's own pass runs here (see
        :meth:`KeyRotationDaemon.tick`): it reloads, reports damage
        once, and rotates if a key fell due. With ``verify``, every
        :data:`VERIFY_INTERVAL` the whole store is read again.

        While a pass runs elsewhere (a rotation in flight, or another
        request catching up), nothing is done, unless ``wait``: that pass
        publishes a fresh view when it ends. Requests that sign or
        reveal a key wait for it; checks do not.
        """
        now = time.monotonic()
        full = verify and now - self._verified >= VERIFY_INTERVAL
        if not full and not self.store.changed_on_disk():
            return
        if not self.lock.acquire(blocking=wait):
            return
        try:
            if full:
                self._verified = now
                self.store.invalidate()
            self.daemon.tick()
        finally:
            self.lock.release()

    def read(
        self, use: Callable[[StoreView], T], *, fresh: bool = False
    ) -> T:
        """Call ``use`` with a view of the key store that can serve.

        A view can go stale while it is used: a rotation may prune a key
        whose file the view still names. A StoreError from a view that
        is no longer the latest is therefore tried once more with the
        latest view.

        :param fresh: wait for a pass in flight before reading (see
            :meth:`sync`), for a request that signs or reveals a key.
        :raises Unavailable: when the store is damaged or holds no key.
        :raises StoreError: when a record cannot be read.
        """
        self.sync(wait=fresh)
        view = self._serving_view()
        try:
            return use(view)
        except StoreError:
            if self.view is view:
                raise
        return use(self._serving_view())

    def _serving_view(self) -> StoreView:
        view = self.view
        if view.problem is not None:
            raise Unavailable(
                "the key store failed its integrity check: GET "
                "/api/daemon/status and the security log say why"
            )
        if view.current is None:
            raise Unavailable("the key store holds no key yet")
        return view

    def find_key(self, key: bytes) -> KeyMatch:
        """Tell whether ``key`` is a retained key of the ring, and which.

        The key is looked up by its fingerprint, then compared with the
        stored key in constant time.
        """
        wanted = fingerprint(key)

        def lookup(view: StoreView) -> KeyMatch:
            index = view.by_fingerprint.get(wanted)
            if index is None:
                return KeyMatch(None, False, None)
            stored = view.material(index).reveal()
            if not hmac.compare_digest(stored, key):
                return KeyMatch(None, False, None)
            assert view.current is not None
            return KeyMatch(index, index == view.current.index, wanted)

        return self.read(lookup)

    def jwks(self) -> dict[str, Any]:
        """Return the JWK Set of the retained keys (torro.licenses.jwks).

        Made once per view of the store: only a rotation changes it.
        """
        from torro import licenses

        def build(view: StoreView) -> dict[str, Any]:
            cached = self._jwks
            if cached is not None and cached[0] is view:
                return cached[1]
            document = licenses.jwks(ViewKeyRing(view))
            self._jwks = (view, document)
            return document

        return self.read(build)

    def now_ms(self) -> int:
        return self.daemon.clock()

    def health(self) -> Health:
        """Judge the daemon's health from the store as it is on disk."""
        self.sync(verify=True)
        view = self.view
        now = self.now_ms()
        interval = self.daemon.policy.rotation_interval_ms
        current = view.current
        last = None if current is None else current.timestamp
        due = None if last is None else last + interval
        problem = None
        integrity = "ok"
        if view.problem is not None:
            integrity, problem = "failed", str(view.problem)
        elif current is None:
            integrity, problem = "empty", "the key store holds no key yet"
        elif self.store.clock_problem(now) is not None:
            integrity = "clock_behind"
            problem = self.store.clock_problem(now)
        elif due is not None and now - due > OVERDUE_INTERVALS * interval:
            problem = (
                f"rotation overdue by {(now - due) // 1000} s: see the "
                "system log"
            )
        return Health(
            healthy=problem is None,
            integrity=integrity,
            problem=problem,
            current_index=None if current is None else current.index,
            last_rotation=last,
            next_rotation=due,
        )

    def rotate(self) -> Rotation:
        """Rotate now, under the store lock, as ``torro daemon rotate``.

        A rotation that fails is counted in the stats as the rotation
        loop counts its own.
        """
        with self.lock:
            try:
                rotation = self.daemon.rotate(force=True)
            except TorroError as exc:
                self.daemon.stats.failed_rotations += 1
                self.daemon.stats.last_error = str(exc)
                raise
        assert rotation is not None
        return rotation

    def reset(self, *, purge: bool = False) -> Reset:
        """Archive (or destroy) every key and start a new chain."""
        with self.lock:
            return self.daemon.reset(purge=purge)

    def stats(self) -> dict[str, Any]:
        """Return the figures of ``GET stats`` and ``/metrics``."""
        self.sync()
        stats = self.daemon.stats
        view = self.view
        now = self.now_ms()
        current = view.current
        return {
            "rotations": stats.rotations,
            "failed_rotations": stats.failed_rotations,
            "last_rotation_duration_seconds": stats.last_duration,
            "current_key_age_seconds": (
                None if current is None
                else round((now - current.timestamp) / 1000, 3)
            ),
            "history_size": len(view.records),
            "uptime_seconds": round(time.monotonic() - self.started, 3),
            "next_rotation": self.daemon.next_rotation(),
        }
