"""Run the rotation daemon in this process, and report on it.

:class:`DaemonManager` owns what the daemon is as a process: its logs, its
PID file, its signals and its loop. The loop wakes every sleep interval
(sooner when the key falls due before), runs one pass of the schedule, and
acts on the signals received meanwhile. Signal handlers only record the
signal: SIGTERM and SIGINT let a rotation in flight finish before the loop
ends, SIGHUP reopens the log files and reloads the configuration.

Under systemd (``Type=notify``) the manager also tells the service
manager how the daemon is doing, through :class:`~torro.systemd.Notifier`:
READY=1 once the store is loaded and the API listens, WATCHDOG=1 from the
loop, RELOADING=1 and READY=1 around a SIGHUP, STOPPING=1 when it stops.
"""

import dataclasses
import datetime
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torro import __version__, logs, process
from torro.config import Settings, load_settings, unknown_variables
from torro.errors import (
    KeyValidationError,
    StoreError,
    TorroError,
    os_error_message,
)
from torro.api.service import DaemonService
from torro.rotation import KeyRotationDaemon, RotationPolicy
from torro.store import KeyStore, open_store, store_is_empty
from torro.systemd import Notifier


# Settings a running daemon can take on at SIGHUP; the others need a
# restart.
RELOADABLE = frozenset({
    "KEY_DAEMON_SLEEP_INTERVAL",
    "KEY_DAEMON_ROTATION_INTERVAL",
    "KEY_DAEMON_KEY_LENGTH",
    "KEY_DAEMON_ALGORITHM",
    "KEY_DAEMON_DERIVATION_ROUNDS",
    "KEY_DAEMON_MAX_HISTORY",
    "KEY_DAEMON_VALIDATION_ENABLED",
    "KEY_DAEMON_INTEGRITY_CHECK",
    "KEY_DAEMON_LOG_LEVEL",
    "KEY_DAEMON_ENCRYPTION",
})
# The shortest nap between two passes, so a key due now is not spun on.
MIN_SLEEP_MS = 10
# A key still current this many rotation intervals after it fell due is
# overdue: status reports the daemon unhealthy.
OVERDUE_INTERVALS = 2

if TYPE_CHECKING:
    from torro.api.server import ApiServer

system_log = logging.getLogger(logs.SYSTEM)


class DaemonManager:
    """Run one key store's rotation daemon until told to stop.

    :param settings: the configuration the daemon starts with.
    :param echo: also write log lines to stderr (the foreground daemon).
    :param ready: called with "ready" once the store is loaded, or with
        "error: ..." when the start failed.
    :param reload: returns fresh settings on SIGHUP.
    :param notifier: where systemd is told how the daemon is doing; by
        default the one the environment names, if any.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        echo: bool = True,
        ready: Callable[[str], None] = process.report_ready,
        reload: Callable[[], Settings] = load_settings,
        notifier: Notifier | None = None,
    ) -> None:
        self.settings = settings
        self.echo = echo
        self.ready = ready
        self.reload = reload
        self.notifier = notifier if notifier is not None \
            else Notifier.from_environment()
        self.store: KeyStore | None = None
        self.daemon: KeyRotationDaemon | None = None
        self.service: DaemonService | None = None
        self.server: ApiServer | None = None
        self.started = time.time()
        self._wake = threading.Event()
        self._stop_signal: int | None = None
        self._reload_requested = False
        # time.monotonic() at which the next WATCHDOG=1 is due
        self._watchdog_due = 0.0
        self._pid_file = process.PidFile(settings.pid_file)

    def run(self) -> int:
        """Start, loop until SIGTERM or SIGINT, and stop; return 0.

        :raises TorroError: when the daemon cannot start; the store is
            left as it was.
        """
        settings = self.settings
        # before the PID file names this process, so that a `torro daemon
        # stop` that finds it never meets the default SIGTERM action
        self._install_signal_handlers()
        try:
            logs.configure_logging(settings.log_dir, settings.log_level,
                                   self.echo, settings.log_format)
            self._pid_file.acquire()
        except TorroError as exc:
            self.ready(f"error: {exc}")
            self.notifier.status(f"daemon did not start: {exc}")
            raise
        try:
            try:
                self._start()
            except (TorroError, OSError) as exc:
                # an OSError is the system refusing something (a name too
                # long, no permission): the operator's to fix, and the
                # reason must reach `torro daemon start`
                problem = exc if isinstance(exc, TorroError) \
                    else os_error_message(exc)
                system_log.error("daemon did not start: %s", problem)
                self.ready(f"error: {problem}")
                self.notifier.status(f"daemon did not start: {problem}")
                raise
            message = self._ready_message()
            self.ready(message)
            self.notifier.ready(message)
            self._loop()
            self.notifier.stopping()
            self._stop_server()
            # logged before the PID file goes, so that `torro daemon stop`
            # returns only once the line is written
            reason = signal.Signals(self._stop_signal).name \
                if self._stop_signal else "request"
            system_log.info("daemon stopped (%s)", reason)
        finally:
            self._stop_server()
            self._pid_file.release()
        return 0

    def _stop_server(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def _ready_message(self) -> str:
        """Say "ready", with why rotation cannot run if it cannot."""
        assert self.store is not None
        problem = self.store.problem or self.store.clock_problem()
        if problem is None:
            return "ready"
        return f"ready, but rotation is stopped: {problem}"

    def stop(self) -> None:
        """Ask the loop to end after the current pass."""
        self._stop_signal = self._stop_signal or signal.SIGTERM
        self._wake.set()

    def _start(self) -> None:
        settings = self.settings
        listener = None
        if settings.api_enabled:
            from torro.api.server import listen

            # Before the store: a port in use creates nothing on disk.
            listener = listen(settings)
        try:
            self._start_with(listener)
        except BaseException:
            if listener is not None and self.server is None:
                listener.close()
            raise

    def _start_with(self, listener: socket.socket | None) -> None:
        settings = self.settings
        store = open_store(settings)
        daemon = KeyRotationDaemon(
            store,
            RotationPolicy.from_settings(settings),
            background_derivation=settings.api_enabled,
        )
        # Taking the lock loads and verifies the store, and completes what
        # a crash interrupted, before anything else happens.
        with store.locked():
            pass
        self.store, self.daemon = store, daemon
        if store.current is None and store.problem is None:
            try:
                daemon.rotate(force=True)
            except KeyValidationError:
                # Logged by the rotation; the loop tries again.
                pass
        self.service = DaemonService(settings, store, daemon)
        if listener is not None:
            from torro.api import create_app
            from torro.api.server import ApiServer

            self.server = ApiServer(
                create_app(self.service), settings, listener
            )
            self.server.start()
        current = store.current
        system_log.info(
            "daemon %s started: pid %d, store %s, current key %s, "
            "encryption %s",
            __version__,
            os.getpid(),
            settings.storage_path,
            "none" if current is None else current.index,
            "on" if settings.encryption else "off",
        )
        for line in unknown_variables():
            system_log.warning("%s", line)
        if not settings.integrity_check:
            system_log.warning(
                "KEY_DAEMON_INTEGRITY_CHECK is off: the chain and "
                "history.json are not checked against the records on load"
            )

    def _loop(self) -> None:
        assert self.daemon is not None
        assert self.service is not None
        while self._stop_signal is None:
            passed = self.daemon.clock()
            with self.service.lock:
                self.daemon.tick()
            if self._stop_signal is not None:
                break
            self._nap(self._sleep_seconds(passed))
            if self._reload_requested:
                self._reload_requested = False
                self.notifier.reloading()
                self._apply_reload()
                self.notifier.ready(self._ready_message())

    def _nap(self, seconds: float) -> None:
        """Wait ``seconds``, or until a signal; feed the watchdog meanwhile.

        The watchdog is fed from the loop's own thread, between passes:
        a loop that hangs starves it, and systemd restarts the daemon.
        """
        deadline = time.monotonic() + seconds
        while True:
            until_feed = self._feed_watchdog()
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if until_feed is not None:
                left = min(left, until_feed)
            if self._wake.wait(left):
                break
        self._wake.clear()

    def _feed_watchdog(self) -> float | None:
        """Send WATCHDOG=1 if one is due.

        :returns: seconds until the next one is due, or None when systemd
            set no watchdog.
        """
        interval = self.notifier.watchdog_interval
        if interval is None:
            return None
        now = time.monotonic()
        if now >= self._watchdog_due:
            self.notifier.watchdog()
            self._watchdog_due = now + interval
        return self._watchdog_due - now

    def _sleep_seconds(self, passed: int) -> float:
        """Return how long to sleep after the pass that began at ``passed``.

        The nap ends when the key falls due, or after a sleep interval. A
        key that was due at the pass and is still current was not rotated
        (the store is damaged or the rotation failed): the next try waits
        a whole sleep interval rather than spinning.
        """
        assert self.daemon is not None
        sleep_ms = self.settings.sleep_interval_ms
        due = self.daemon.next_rotation()
        if due is not None and due > passed:
            until_due = due - self.daemon.clock()
            sleep_ms = min(sleep_ms, max(until_due, MIN_SLEEP_MS))
        return sleep_ms / 1000

    def _install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_reload_signal)
        # A write over the file size limit must fail with EFBIG, so the
        # rotation can report it, instead of killing the process.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    def _on_stop_signal(self, signum: int, frame: Any) -> None:
        self._stop_signal = signum
        self._wake.set()

    def _on_reload_signal(self, signum: int, frame: Any) -> None:
        self._reload_requested = True
        self._wake.set()

    def _apply_reload(self) -> None:
        logs.reopen_logs()
        try:
            fresh = self.reload()
        except TorroError as exc:
            system_log.error(
                "configuration not reloaded, the old one stays: %s", exc
            )
            return
        for line in unknown_variables():
            system_log.warning("%s", line)
        changed = self.settings.reload_differences(fresh)
        needs_restart = [name for name in changed if name not in RELOADABLE]
        if needs_restart:
            system_log.warning(
                "restart the daemon to apply %s; the running daemon keeps "
                "the old values", ", ".join(needs_restart)
            )
        applied = [name for name in changed if name in RELOADABLE]
        if not applied:
            system_log.info(
                "log files reopened; %s",
                "nothing else applied" if needs_restart
                else "configuration unchanged",
            )
            return
        self.settings = _merge(self.settings, fresh, needs_restart)
        logs.set_level(self.settings.log_level)
        assert self.store is not None and self.daemon is not None
        self.store.max_history = self.settings.max_history
        self.store.integrity_check = self.settings.integrity_check
        self.store.encryption = self.settings.encryption
        self.daemon.policy = RotationPolicy.from_settings(self.settings)
        system_log.info("configuration reloaded: %s changed",
                        ", ".join(applied))


def _merge(old: Settings, fresh: Settings, keep: list[str]) -> Settings:
    """Return ``fresh`` with the settings named in ``keep`` from ``old``."""
    fields = {
        name: getattr(old, name)
        for name, field in Settings.model_fields.items()
        if field.validation_alias in keep
    }
    return fresh.model_copy(update=fields) if fields else fresh


@dataclasses.dataclass
class DaemonStatus:
    """What ``torro daemon status`` reports."""

    running: bool
    pid: int | None
    current_index: int | None = None
    fingerprint: str | None = None
    key_age_seconds: float | None = None
    last_rotation: str | None = None
    next_rotation: str | None = None
    history_size: int = 0
    integrity: str = "unknown"
    overdue: bool = False
    problem: str | None = None
    store: str = ""

    @property
    def healthy(self) -> bool:
        return self.running and self.integrity == "ok" and not self.overdue

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def daemon_status(settings: Settings, now: int | None = None) -> DaemonStatus:
    """Report whether the daemon runs and how its key store stands.

    Reads the store without writing anything, not even a master key.
    """
    pid = process.read_daemon_pid(settings.pid_file)
    status = DaemonStatus(
        running=pid is not None, pid=pid, store=str(settings.storage_path)
    )
    if store_is_empty(settings.storage_path, settings.history_dir):
        status.integrity = "empty"
        return status
    try:
        store = open_store(settings, create_master_key=False)
        store.load()
    except TorroError as exc:
        status.integrity = "unreadable"
        status.problem = str(exc)
        return status
    now = store.clock() if now is None else now
    status.history_size = len(store.records)
    if store.problem is not None:
        status.integrity = "failed"
        status.problem = str(store.problem)
    elif store.current is None:
        status.integrity = "empty"
    elif store.clock_problem(now) is not None:
        status.integrity = "clock_behind"
        status.problem = store.clock_problem(now)
    else:
        status.integrity = "ok"
    current = store.current
    if current is not None:
        status.current_index = current.index
        status.fingerprint = current.fingerprint
        status.key_age_seconds = round((now - current.timestamp) / 1000, 3)
        status.last_rotation = iso_time(current.timestamp)
        status.next_rotation = iso_time(
            current.timestamp + settings.rotation_interval_ms
        )
        overdue = now - current.timestamp - settings.rotation_interval_ms
        if overdue > OVERDUE_INTERVALS * settings.rotation_interval_ms:
            status.overdue = True
            status.problem = status.problem or (
                f"rotation overdue by {overdue // 1000} s: see the system "
                "log"
            )
    return status


def open_existing_store(settings: Settings) -> KeyStore:
    """Open the key store for a command that only reads or repairs it.

    Nothing is created, not even a master key.

    :raises StoreError: when the store holds no key yet.
    """
    if store_is_empty(settings.storage_path, settings.history_dir):
        raise StoreError(
            f"the key store {settings.storage_path} holds no key yet: start "
            "the daemon with torro daemon start, or create the first key "
            "with torro daemon rotate"
        )
    return open_store(settings, create_master_key=False)


def iso_time(ms: int) -> str:
    moment = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

