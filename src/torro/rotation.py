"""Decide when a key is due, rotate it, and tell subscribers.

A key is due when it is older than the rotation interval, judged from the
timestamp stored with it, never from when the process started: a restart
neither resets nor doubles the schedule, and after a long downtime the key
is rotated once, not once per missed interval.

One rotation, under the store lock: reload the store (another process may
have rotated meanwhile), derive the next key from the current one, validate
it, seal it, write it (see torro.store.keystore), then tell subscribers.
"""

import contextlib
import dataclasses
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from torro import keygen, logs
from torro.config import Settings
from torro.errors import ClockError, KeyValidationError, TorroError
from torro.material import KeyMaterial
from torro.store import KeyRecord, KeyStore, NewChainEntry


log = logging.getLogger(logs.ROTATION)
security_log = logging.getLogger(logs.SECURITY)
system_log = logging.getLogger(logs.SYSTEM)

Subscriber = Callable[[KeyRecord], None]
T = TypeVar("T")

# How much lower (in nice steps) a background derivation runs.
DERIVATION_NICENESS = 10
# A rotation that keeps failing (a full disk) is logged as an error once
# per rotation interval, and at least this often (ms); the attempts in
# between at debug level.
FAILURE_REPORT_MAX_MS = 3_600_000


@dataclasses.dataclass(frozen=True)
class RotationPolicy:
    """How keys are made and how long they stay current.

    :param rotation_interval_ms: how long a key stays current.
    :param key_length: bytes per key.
    :param algorithm: hash for the derivation (sha256, sha384, sha512).
    :param derivation_rounds: PBKDF2 rounds.
    :param validation_enabled: check each new key before storing it.
    """

    rotation_interval_ms: int
    key_length: int = 32
    algorithm: str = "sha256"
    derivation_rounds: int = 10000
    validation_enabled: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> "RotationPolicy":
        return cls(
            rotation_interval_ms=settings.rotation_interval_ms,
            key_length=settings.key_length,
            algorithm=settings.algorithm,
            derivation_rounds=settings.derivation_rounds,
            validation_enabled=settings.validation_enabled,
        )


@dataclasses.dataclass
class RotationTimings:
    """Seconds spent in each step of one rotation.

    ``lock`` covers taking the store lock and reading the store again;
    ``storage`` ends when the new key is durably current; ``retention``
    is the removal of the keys beyond retention.
    """

    lock: float = 0.0
    kdf: float = 0.0
    validation: float = 0.0
    sealing: float = 0.0
    storage: float = 0.0
    retention: float = 0.0


@dataclasses.dataclass(frozen=True)
class Rotation:
    """The outcome of one rotation."""

    record: KeyRecord
    removed: list[int]
    timings: RotationTimings
    duration: float


@dataclasses.dataclass(frozen=True)
class Reset:
    """The outcome of a reset."""

    record: KeyRecord
    archive: Path | None
    old_indexes: list[int]


@dataclasses.dataclass
class RotationStats:
    """Counters of one process's rotations, for status and metrics."""

    rotations: int = 0
    failed_rotations: int = 0
    last_duration: float | None = None
    last_error: str | None = None


class KeyRotationDaemon:
    """Rotate the keys of one key store on schedule.

    :param store: the key store it rotates.
    :param policy: how keys are made and when they are due.
    :param random: where fresh salt and entropy come from.
    :param clock: returns the time in ms since the epoch; the store's
        clock by default.
    :param background_derivation: derive each key in a thread of lower
        CPU priority (see :func:`_at_low_priority`), for a process that
        also serves requests.
    """

    def __init__(
        self,
        store: KeyStore,
        policy: RotationPolicy,
        *,
        random: keygen.RandomSource = keygen.SYSTEM_RANDOM,
        clock: Callable[[], int] | None = None,
        background_derivation: bool = False,
    ) -> None:
        self.store = store
        self.policy = policy
        self.random = random
        self.clock = clock or store.clock
        self.background_derivation = background_derivation
        self.stats = RotationStats()
        self._subscribers: list[Subscriber] = []
        self._reported: str | None = None
        self._known_current: int | None = None
        # failed attempts in a row, and when the last was logged as an
        # error (time.monotonic())
        self._failed_attempts = 0
        self._failure_reported_at: float | None = None

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback`` with the record of each new current key.

        :returns: a function that removes the subscription.
        """
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    def next_rotation(self) -> int | None:
        """Return when the current key falls due, in ms since the epoch."""
        current = self.store.current
        if current is None:
            return None
        return current.timestamp + self.policy.rotation_interval_ms

    def is_due(self, now: int | None = None) -> bool:
        due = self.next_rotation()
        if due is None:
            return True
        now = self.clock() if now is None else now
        return now >= due

    def rotate(
        self, *, force: bool = False, now: int | None = None
    ) -> Rotation | None:
        """Rotate the key now, or only if it is due unless ``force``.

        :returns: the rotation, or None when the key was not due (another
            process may have rotated it while this one waited for the
            lock).
        :raises TorroError: when the store is damaged or the new key
            failed validation; nothing was stored.
        """
        started = time.perf_counter()
        with self.store.locked():
            locked = time.perf_counter() - started
            if self.store.problem is not None:
                raise self.store.problem
            now = self.clock() if now is None else now
            clock_problem = self.store.clock_problem(now)
            if clock_problem is not None and force:
                # A key made now would be dated in the future as well.
                raise ClockError(f"{clock_problem}; fix the clock first")
            if clock_problem is not None or not (force or self.is_due(now)):
                self._notice_change()
                return None
            rotation = self._rotate_locked(now)
            rotation.timings.lock = locked
        duration = time.perf_counter() - started
        rotation = dataclasses.replace(rotation, duration=duration)
        self.stats.rotations += 1
        self.stats.last_duration = duration
        record = rotation.record
        log.info(
            "rotated to key %d (fingerprint %s, derived from %s) in %.0f ms",
            record.index,
            record.fingerprint,
            "nothing" if record.derived_from is None
            else f"key {record.derived_from}",
            duration * 1000,
        )
        self._notify(record)
        return rotation

    def reset(self, *, purge: bool = False, now: int | None = None) -> Reset:
        """Put the whole key ring aside and start a new chain.

        The old store moves to an archive folder beside it, or is
        destroyed with ``purge``. The new chain starts at the next unused
        index, so no index is ever given twice, and remembers the old
        keys' fingerprints so none of them can come back.
        """
        store = self.store
        with store.locked():
            now = self.clock() if now is None else now
            old_indexes = store.indexes_on_disk()
            next_index = max([store.next_index, *(i + 1 for i in old_indexes)])
            material = keygen.generate_first_key(
                self.policy.key_length, self.random
            )
            seen = store.seen_fingerprints
            self._validate(material, next_index)
            archive = None if purge else store.archive_path()
            entry = NewChainEntry(
                material, next_index, now, self.policy.algorithm, None
            )
            store.write_chain(
                [entry],
                next_index=next_index + 1,
                retired_fingerprints=seen,
                replaced=archive,
            )
        record = store.current
        assert record is not None
        security_log.warning(
            "key store %s reset: %s (%d keys), new chain starts at key %d",
            store.root,
            "old store destroyed" if archive is None
            else f"old store archived in {archive}",
            len(old_indexes),
            record.index,
        )
        self._notify(record)
        return Reset(record, archive, old_indexes)

    def tick(self, now: int | None = None) -> Rotation | None:
        """Run one pass of the schedule: rotate if due, log any failure.

        An error in one pass is logged and counted, and the next pass
        runs as usual.
        """
        try:
            # One reading of the daemon's clock judges both the skew and
            # the schedule; the store's clock may be another.
            now = self.clock() if now is None else now
            self.store.refresh()
            self._notice_change()
            if self.store.problem is not None:
                message = f"rotation stopped: {self.store.problem}"
                self._report_once(message, message)
                return None
            clock_problem = self.store.clock_problem(now)
            if clock_problem:
                # The message counts the seconds; the key it is about
                # says whether it is news.
                assert self.store.current is not None
                self._report_once(
                    f"clock behind key {self.store.current.index}",
                    clock_problem,
                )
                return None
            self._reported = None
            if not self.is_due(now):
                self._end_failures()
                return None
            rotation = self.rotate(now=now)
            self._end_failures()
            return rotation
        except KeyValidationError as exc:
            # rotate() has told the security log.
            self._count_failure(exc)
            log.warning("rotation failed, next cycle retries: %s", exc)
        except TorroError as exc:
            self._count_failure(exc)
            self._report_failure(exc)
        except Exception as exc:
            self._count_failure(exc)
            self._report_failure(exc, unexpected=True)
        return None

    def _rotate_locked(self, now: int) -> Rotation:
        store = self.store
        policy = self.policy
        timings = RotationTimings()
        previous = store.current

        clock = time.perf_counter()
        if previous is None:
            material = keygen.generate_first_key(
                policy.key_length, self.random
            )
        else:
            previous_material = store.current_material()

            def derive() -> KeyMaterial:
                return keygen.derive_next_key(
                    previous_material,
                    algorithm=policy.algorithm,
                    rounds=policy.derivation_rounds,
                    length=policy.key_length,
                    random=self.random,
                )

            material = (
                _at_low_priority(derive) if self.background_derivation
                else derive()
            )
        timings.kdf = time.perf_counter() - clock

        clock = time.perf_counter()
        self._validate(material, store.next_index)
        timings.validation = time.perf_counter() - clock

        clock = time.perf_counter()
        timestamp = now if previous is None else max(now, previous.timestamp)
        record = store.build_record(
            material,
            timestamp=timestamp,
            algorithm=policy.algorithm,
            derived_from=None if previous is None else previous.index,
        )
        timings.sealing = time.perf_counter() - clock

        clock = time.perf_counter()
        removed = store.commit(record, material, remove=False)
        timings.storage = time.perf_counter() - clock

        clock = time.perf_counter()
        store.remove_records(removed)
        timings.retention = time.perf_counter() - clock
        return Rotation(record, removed, timings, 0.0)

    def _validate(self, material: KeyMaterial, index: int) -> None:
        """Check a new key when validation is on; log and raise if bad."""
        if not self.policy.validation_enabled:
            return
        try:
            keygen.validate_key(
                material.reveal_hex(),
                self.policy.key_length,
                self.store.seen_fingerprints,
            )
        except KeyValidationError as exc:
            security_log.warning(
                "new key for index %d rejected, nothing stored: %s",
                index, exc,
            )
            raise

    def _notice_change(self) -> None:
        current = self.store.current
        if current is None or current.index == self._known_current:
            return
        if self._known_current is not None:
            log.info("key %d became current in another process",
                     current.index)
            self._notify(current)
        else:
            self._known_current = current.index

    def _notify(self, record: KeyRecord) -> None:
        self._known_current = record.index
        for callback in list(self._subscribers):
            try:
                callback(record)
            except Exception as exc:
                system_log.error(
                    "rotation subscriber %r failed", callback, exc_info=exc
                )

    def _count_failure(self, exc: BaseException) -> None:
        self.stats.failed_rotations += 1
        self.stats.last_error = str(exc) or type(exc).__name__

    def _report_failure(
        self, exc: Exception, *, unexpected: bool = False
    ) -> None:
        """Log a failed rotation: at once, then once per cycle while it
        lasts.

        A failure that lasts (a full disk, a file size limit) fails every
        wake-up. Its first attempt is an error line, and so is the first
        attempt of each rotation interval after it (at least one an hour),
        with the count of attempts; the attempts in between are logged at
        debug level, so a short sleep interval does not flood the log.
        """
        self._failed_attempts += 1
        attempts = self._failed_attempts
        moment = time.monotonic()
        period = min(
            self.policy.rotation_interval_ms, FAILURE_REPORT_MAX_MS
        ) / 1000
        reported = self._failure_reported_at
        if reported is not None and moment - reported < period:
            system_log.debug(
                "rotation failed again (attempt %d), next cycle retries: %s",
                attempts, exc,
            )
            return
        self._failure_reported_at = moment
        what = "rotation failed" if attempts == 1 \
            else f"rotation still failing after {attempts} attempts"
        if unexpected:
            system_log.error(
                "%s unexpectedly, next cycle retries", what, exc_info=exc
            )
        else:
            system_log.error("%s, next cycle retries: %s", what, exc)

    def _end_failures(self) -> None:
        """Say that rotation works again after failed attempts."""
        if self._failed_attempts:
            current = self.store.current
            system_log.info(
                "rotation works again after %d failed attempts, key %s is "
                "current", self._failed_attempts,
                "none" if current is None else current.index,
            )
        self._failed_attempts = 0
        self._failure_reported_at = None

    def _report_once(self, what: str, message: str) -> None:
        """Log why rotation is stopped, once for as long as it lasts."""
        if what == self._reported:
            return
        self._reported = what
        security_log.error(message)


def _at_low_priority(function: Callable[[], T]) -> T:
    """Call ``function`` in a thread of lower CPU priority; wait for it.

    PBKDF2 releases the GIL, so the HTTP API's event loop runs while a
    key is derived, but on a machine of two cores the two still compete
    for a CPU: with rotations back to back, bench/api.py saw the p99 of
    validate-key grow 1.5 to 2 times, and 1.2 to 1.3 times once niced.
    Niced by :data:`DERIVATION_NICENESS`, the derivation takes a CPU that
    request handling leaves, and takes longer only while every CPU is
    busy. Only on Linux, where the nice value is a thread's own.
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(
        1, "torro-derivation", initializer=_lower_priority
    ) as pool:
        return pool.submit(function).result()


def _lower_priority() -> None:
    if not sys.platform.startswith("linux"):
        return
    thread = threading.get_native_id()
    with contextlib.suppress(OSError):
        niceness = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(
            os.PRIO_PROCESS,
            thread,
            min(19, niceness + DERIVATION_NICENESS),
        )
