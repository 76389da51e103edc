"""What the HTTP API can ask of the daemon it runs in.

Route handlers stay thin: they check the caller, call one method here and
format the reply. Reads use the key store's published view and never
wait for a rotation; changes (a forced rotation, a reset) take
:attr:`DaemonService.lock`, which the rotation loop also holds while it
runs a pass, so only one thread of the process changes the store at a
time (the store's own file lock keeps other processes out).
"""

import dataclasses
import threading
import time
from typing import Any

from torro.config import Settings
from torro.rotation import KeyRotationDaemon, Reset, Rotation
from torro.store import KeyStore
from torro.store.keystore import StoreView


# A key still current this many rotation intervals after it fell due is
# overdue: the daemon is unhealthy.
OVERDUE_INTERVALS = 2


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
        self.started = time.time()

    @property
    def view(self) -> StoreView:
        return self.store.view

    def now_ms(self) -> int:
        return self.daemon.clock()

    def health(self) -> Health:
        """Judge the daemon's health from the store's latest view."""
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
        """Rotate now, under the store lock, as ``torro daemon rotate``."""
        with self.lock:
            rotation = self.daemon.rotate(force=True)
        assert rotation is not None
        return rotation

    def reset(self, *, purge: bool = False) -> Reset:
        """Archive (or destroy) every key and start a new chain."""
        with self.lock:
            return self.daemon.reset(purge=purge)

    def stats(self) -> dict[str, Any]:
        """Return the figures of ``GET stats`` and ``/metrics``."""
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
            "uptime_seconds": round(time.time() - self.started, 3),
            "next_rotation": self.daemon.next_rotation(),
        }
