"""Reliability campaign, "time": the wall clock jumps under a real daemon.

A real ``torro daemon run`` (HTTP API on) runs under libfaketime, its
wall clock the real time plus an offset the test rewrites at run time
(the ``FAKETIME_TIMESTAMP_FILE``, reread on every call); the monotonic
clock and file times are left alone, so the daemon sees what an NTP step
would show it. The commands the test runs share that clock. The clock
jumps back by a day, is put right, jumps forward by a week, goes back
from a week ahead to the true time, and forward again; the long version
makes random jumps (back by a day, by up to three days or by less than
the skew allowance; forward by a week, by up to a month or by a few
intervals; back to where a clock that caught up stands), some while the
daemon is stopped, with restarts and forced rotations between them.
After each jump, by where the clock stands against the current key:

* behind its date by more than the skew allowance: no rotation, the
  daemon does not spin, ``torro daemon status`` exits 1 with integrity
  ``clock_behind``, ``torro daemon rotate`` fails with one line naming
  the clock, the API's status answers 503 naming it and its
  force-rotation 503, and the security log says so once;
* past the key's interval: one rotation, promptly, dated at the new
  time, and no second one within an interval of it (one catch-up, not
  one per missed interval); the health check passes;
* otherwise no rotation before the key falls due.

Throughout, the chain holds: indexes contiguous, timestamps never going
back, every key distinct and never rewritten, and no two scheduled
rotations within one rotation interval. The daemon runs under umask 000,
ends cleanly on SIGTERM, and ``torro keys verify`` passes at the end.
Without libfaketime the test is skipped (.ci/run installs it).

The short version runs in the default suite; the long one is a campaign
(``pytest -m campaign -s tests/test_clock_campaign.py``). The seed is
printed; set TORRO_CLOCK_SEED to replay a run.
"""

import dataclasses
import json
import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import leaks
import pytest

from torro.api.service import DaemonService
from torro.config import load_settings
from torro.locks import FileLock
from torro.manager import OVERDUE_INTERVALS
from torro.rotation import KeyRotationDaemon, RotationPolicy
from torro.store import open_store
from torro.store.keystore import CLOCK_SKEW_ALLOWANCE_MS, LOCK_TIMEOUT

if TYPE_CHECKING:
    import campaign
    from runner import Outcome, Torro


LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
ROTATION_MS = 1000
SLEEP_MS = 100
# An admin token of the daemon's API, long enough for the configuration.
TOKEN = "clock-campaign-admin-token-0123456789"
CLOCK_SETTINGS = {
    "KEY_DAEMON_SLEEP_INTERVAL": str(SLEEP_MS),
    "KEY_DAEMON_ROTATION_INTERVAL": str(ROTATION_MS),
    "KEY_DAEMON_DERIVATION_ROUNDS": "1000",
    "KEY_DAEMON_MAX_HISTORY": "100000",
    "KEY_DAEMON_API": "true",
    "KEY_DAEMON_HOST": "127.0.0.1",
    "KEY_DAEMON_PORT": "0",
    "KEY_DAEMON_ADMIN_TOKENS": TOKEN,
}
LISTENING = re.compile(r"HTTP API listening on (http://\S+)")
DAY = 86400
WEEK = 7 * DAY
DEFAULT_SEED = 20261205
# How long a due key may wait for its rotation on a busy machine: a
# sleep interval, plus a derivation and the writes, plus slack.
ROTATION_TIMEOUT = 5.0
START_TIMEOUT = 15.0
# How long to watch a daemon that must not rotate.
BLOCKED_WATCH = 1.3 * ROTATION_MS / 1000
# After a catch-up rotation, how long no second one may come.
CATCH_UP_WATCH = 0.6 * ROTATION_MS / 1000
# A jump is made before the current key is this share of an interval old.
SETTLED_AGE = 0.4
# A daemon waiting on a blocked key must use at most this share of a CPU.
IDLE_CPU_SHARE = 0.5
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# libfaketime 0.9.10 (Debian 12) breaks clock_nanosleep(CLOCK_MONOTONIC,
# TIMER_ABSTIME) when the monotonic clock is not faked: it passes the
# kernel a negative time, so Python 3.11's time.sleep fails with EINVAL
# (libfaketime issue 426). Every torro process on the stepped clock sleeps
# through a monotonic wait instead, which libfaketime leaves alone.
SLEEP_FIX = '''"""Sleep on the monotonic clock (libfaketime issue 426)."""
import threading
import time


def _sleep(seconds: float) -> None:
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    threading.Event().wait(seconds)


time.sleep = _sleep
'''


class SteppedClock:
    """The daemon's wall clock: the real time plus an offset in seconds.

    :param folder: where the offset file and the sleep fix go.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / "faketime.rc"
        self.fix = folder / "sleep-fix"
        self.fix.mkdir()
        (self.fix / "sitecustomize.py").write_text(SLEEP_FIX)
        self.offset = 0
        self.furthest = 0
        self.step_to(0)

    def env(self) -> dict[str, str | None]:
        """Return the settings that put a torro command on this clock."""
        return {
            "LD_PRELOAD": str(LIBFAKETIME),
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            # file times stay true, as under an NTP step
            "NO_FAKE_STAT": "1",
            "FAKETIME": None,
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(self.fix), os.environ.get("PYTHONPATH")])
            ),
        }

    def step_to(self, offset: int) -> None:
        """Make the clock read the real time plus ``offset`` seconds."""
        staging = self.path.with_suffix(".tmp")
        staging.write_text(f"{offset:+d}\n")
        # atomic: a reader never finds the file empty (no offset at all)
        os.replace(staging, self.path)
        self.offset = offset
        self.furthest = max(self.furthest, offset)

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000 + self.offset * 1000


@dataclasses.dataclass
class Jumps:
    """What the jumps of one run led to."""

    jumps: int = 0
    blocked: int = 0
    catch_ups: int = 0
    waits: int = 0
    rotations: int = 0
    forced: int = 0
    restarts: int = 0

    def line(self, seed: int, survived: int, lost: int,
             elapsed: float) -> str:
        return (
            f"clock campaign (seed {seed}): {self.jumps} jumps, "
            f"{self.blocked} left the clock behind the key, "
            f"{self.catch_ups} made the key due, {self.waits} neither; "
            f"{self.rotations} rotations ({self.forced} forced), "
            f"{self.restarts} restarts, {survived} jumps survived, "
            f"{lost} keys lost, {elapsed:.1f} s"
        )


def read_json(path: Path) -> Any:
    return json.loads(path.read_bytes())


def current(keys: Path) -> dict[str, Any]:
    return read_json(keys / "current.json")


def check_chain(keys: Path, forced: set[int]) -> list[dict[str, Any]]:
    """Assert the chain on disk holds; return its records by index.

    ``forced`` are the indexes made by ``torro daemon rotate``, which may
    come sooner than a rotation interval after the key before. The store
    is read under its lock, so no rotation is half way.
    """
    with FileLock(keys / ".lock").hold(LOCK_TIMEOUT):
        return _check_chain(keys, forced)


def _check_chain(keys: Path, forced: set[int]) -> list[dict[str, Any]]:
    names = os.listdir(keys / "history")
    assert not [name for name in names if name.endswith(".tmp")], names
    records = sorted(
        (read_json(keys / "history" / name) for name in names),
        key=lambda record: record["index"],
    )
    indexes = [record["index"] for record in records]
    assert indexes == list(range(len(records))), f"indexes {indexes}"
    history = read_json(keys / "history.json")
    assert [key["index"] for key in history["keys"]] == indexes
    for key, record in zip(history["keys"], records, strict=True):
        assert key["timestamp"] == record["timestamp"], key["index"]
        assert key["checksum"] == record["checksum"], key["index"]
    assert current(keys) == records[-1]
    fingerprints = {record["fingerprint"] for record in records}
    assert len(fingerprints) == len(records), "a key repeats"
    for before, after in zip(records, records[1:]):
        index = after["index"]
        gap = after["timestamp"] - before["timestamp"]
        assert gap >= 0, f"key {index} is dated {-gap} ms before key " \
            f"{index - 1}"
        if index not in forced:
            assert gap >= ROTATION_MS, \
                f"key {index} came {gap} ms after key {index - 1}: two " \
                "rotations in one interval"
    return records


def cpu_seconds(pid: int) -> float:
    """Return the CPU time ``pid`` has used, user and system."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def log_text(cwd: Path, name: str) -> str:
    try:
        return (cwd / "logs" / name).read_text()
    except FileNotFoundError:
        return ""


def clock_lines(cwd: Path, index: int) -> int:
    """Count the security log's errors about key ``index`` being ahead
    (a refused forced rotation is a warning of its own)."""
    mark = f" ERROR the current key (index {index}) is dated "
    return sum(
        mark in line for line in log_text(cwd, "security.log").splitlines()
    )


class ClockTrial:
    """A daemon on a stepped clock, and the checks after each jump."""

    def __init__(self, torro: "Torro", tmp_path: Path) -> None:
        self.torro = torro
        self.cwd = torro.cwd
        self.keys = self.cwd / "keys"
        self.clock = SteppedClock(tmp_path)
        self.stderr_path = tmp_path / "daemon.stderr"
        self.env = {**CLOCK_SETTINGS, **self.clock.env()}
        self.daemon: subprocess.Popen[bytes] | None = None
        self.forced: set[int] = set()
        self.seen: dict[int, str] = {}
        self.jumps = Jumps()
        # the key the running daemon has logged the clock behind, if any
        self.logged_behind: int | None = None
        self.url = ""
        self.started = 0.0
        # every HTTP response, for the secrets sweep
        self.responses: list[str] = []

    # -- the daemon ------------------------------------------------------

    def start(self) -> None:
        """Start the daemon under umask 000; wait until it has a key."""
        starts = log_text(self.cwd, "system.log").count(" started: pid ")
        self.started = time.monotonic()
        with open(self.stderr_path, "ab") as stderr:
            self.daemon = self.torro.popen(
                "daemon", "run", env=self.env,
                stdout=subprocess.DEVNULL, stderr=stderr, umask=0,
            )
        daemon = self.daemon
        self.torro.wait_until(
            lambda: log_text(self.cwd, "system.log").count(
                " started: pid ") > starts or daemon.poll() is not None,
            timeout=START_TIMEOUT,
            what="the daemon to start",
        )
        self.assert_running()
        self.url = LISTENING.findall(log_text(self.cwd, "system.log"))[-1]

    def stop(self) -> None:
        assert self.daemon is not None
        self.assert_running()
        self.daemon.send_signal(signal.SIGTERM)
        assert self.daemon.wait(timeout=10) == 0
        assert log_text(self.cwd, "system.log").splitlines()[-1].endswith(
            " INFO daemon stopped (SIGTERM)"
        )

    def restart(self) -> None:
        """Stop the daemon and start it again on the same clock.

        A daemon that starts with the clock behind its key says so.
        """
        self.stop()
        key = self.top()
        lines_before = clock_lines(self.cwd, key["index"])
        self.start()
        self.jumps.restarts += 1
        self.logged_behind = None
        if self.behind(key):
            self.torro.wait_until(
                lambda: clock_lines(self.cwd, key["index"]) > lines_before,
                what="the restarted daemon to log the clock behind",
            )
            self.logged_behind = key["index"]

    def assert_running(self) -> None:
        assert self.daemon is not None
        assert self.daemon.poll() is None, \
            f"the daemon exited {self.daemon.returncode}: " \
            f"{self.stderr_path.read_text()[-2000:]}"

    def run(self, *args: str) -> "Outcome":
        return self.torro.run(*args, env=self.env, umask=0)

    # -- what the store says ---------------------------------------------

    def top(self) -> dict[str, Any]:
        return current(self.keys)

    def settle(self) -> dict[str, Any]:
        """Return the current key once no rotation is about to come.

        On a clock that runs right the daemon rotates every interval; a
        jump is made early in an interval, so that what follows it is
        the jump's doing, not a rotation already under way.
        """
        key = self.top()
        if self.behind(key):
            return key
        age = self.clock.now_ms() - key["timestamp"]
        if age >= SETTLED_AGE * ROTATION_MS:
            key = self.wait_for_key(key["index"])
        return key

    def timestamps(self) -> list[tuple[int, int]]:
        """Return each key's index and timestamp, oldest first."""
        history = read_json(self.keys / "history.json")
        return [(key["index"], key["timestamp"]) for key in history["keys"]]

    def behind(self, key: dict[str, Any]) -> bool:
        """Tell whether the clock is behind ``key`` beyond the skew."""
        ahead = key["timestamp"] - self.clock.now_ms()
        return ahead > CLOCK_SKEW_ALLOWANCE_MS

    def wait_for_key(self, after: int) -> dict[str, Any]:
        """Wait for a key newer than ``after``; return its record."""
        self.torro.wait_until(
            lambda: self.top()["index"] > after,
            timeout=ROTATION_TIMEOUT,
            what=f"a rotation after key {after} (clock "
            f"{self.clock.offset:+d} s)",
        )
        return self.top()

    def check(self) -> None:
        """Check the chain, and that no key seen before has changed."""
        records = check_chain(self.keys, self.forced)
        for record in records:
            checksum = self.seen.setdefault(
                record["index"], record["checksum"]
            )
            assert checksum == record["checksum"], \
                f"key {record['index']} was written again"
        self.jumps.rotations = len(records)

    def request(self, method: str, path: str) -> httpx.Response:
        """Call the daemon's API with the admin token; keep the answer."""
        response = httpx.request(
            method, self.url + path,
            headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10,
        )
        self.responses.append(f"{response.headers}\n{response.text}")
        return response

    def status(self) -> tuple[int, dict[str, Any]]:
        outcome = self.run("daemon", "status", "--json")
        assert outcome.stderr == "", outcome.stderr
        return outcome.code, json.loads(outcome.stdout)

    def assert_healthy(self, command: bool = False) -> None:
        """Assert the API, and with ``command`` also ``torro daemon
        status``, report the daemon healthy.

        On a machine busy enough to hold a rotation back, "overdue" is
        the truth and is accepted when the key is that old.
        """
        health = self.request("GET", "/api/daemon/status")
        body = health.json()
        assert body["integrity"] == "ok", health.text
        assert health.status_code == 200 or self.overdue(body), health.text
        if not command:
            return
        code, status = self.status()
        assert status["running"] and status["pid"] == self.daemon_pid
        assert status["integrity"] == "ok", status
        assert code == 0 or self.overdue(status), status

    def check_uptime(self) -> None:
        """Assert the API's uptime ignores the wall clock's jumps."""
        stats = self.request("GET", "/api/daemon/stats").json()
        uptime = stats["uptime_seconds"]
        assert 0 <= uptime <= time.monotonic() - self.started, \
            f"uptime {uptime} s, clock {self.clock.offset:+d} s"

    def overdue(self, status: dict[str, Any]) -> bool:
        """Tell whether ``status`` says overdue of a key that is so."""
        problem = status.get("problem") or ""
        age = self.clock.now_ms() - self.top()["timestamp"]
        slack = ROTATION_MS // 2
        return problem.startswith("rotation overdue by ") \
            and age > (1 + OVERDUE_INTERVALS) * ROTATION_MS - slack

    @property
    def daemon_pid(self) -> int:
        assert self.daemon is not None
        return self.daemon.pid

    # -- a jump and what must follow -------------------------------------

    def jump(self, offset: int, *, down: bool = False) -> str:
        """Step the clock to ``offset`` s and check what follows.

        :param down: step it while the daemon is stopped, as after a
            downtime or a reboot, and start the daemon again.
        :returns: what the jump led to: "blocked", "catch-up" or "wait".
        """
        self.assert_running()
        key = self.settle()
        lines_before = clock_lines(self.cwd, key["index"])
        if down:
            self.stop()
            key = self.top()
        self.clock.step_to(offset)
        self.jumps.jumps += 1
        now = self.clock.now_ms()
        if down:
            self.start()
            self.jumps.restarts += 1
            self.logged_behind = None
        if self.behind(key):
            self.expect_blocked(key, lines_before)
            self.jumps.blocked += 1
            outcome = "blocked"
        else:
            self.logged_behind = None
            if now >= key["timestamp"] + ROTATION_MS:
                self.expect_catch_up(key, now)
                self.jumps.catch_ups += 1
                outcome = "catch-up"
            else:
                self.expect_wait(key, now)
                self.jumps.waits += 1
                outcome = "wait"
        self.assert_running()
        self.check()
        return outcome

    def expect_blocked(
        self, key: dict[str, Any], lines_before: int
    ) -> None:
        """The clock is behind the key: nothing rotates, all say why.

        ``lines_before`` counts the security log's lines about the key
        before the jump.
        """
        index = key["index"]
        cpu_before = cpu_seconds(self.daemon_pid)
        watched = time.monotonic()
        # the commands run while the daemon is watched
        shown, rotated = self.torro.run_together(
            ("daemon", "status", "--json"), ("daemon", "rotate"),
            env=self.env,
        )
        time.sleep(max(0.0, watched + BLOCKED_WATCH - time.monotonic()))

        # status tells the truth, under the same clock
        assert shown.stderr == "", shown.stderr
        status = json.loads(shown.stdout)
        assert status["running"] and status["current_index"] == index
        assert status["integrity"] == "clock_behind", status
        assert "the clock is behind" in status["problem"], status
        assert shown.code == 1, status

        # a forced rotation says what is wrong in one line
        assert rotated.code == 1, rotated
        assert rotated.stdout == ""
        assert len(rotated.error_lines) == 1, rotated.stderr
        assert rotated.error_lines[0].startswith(
            f"torro: error: the current key (index {index}) is dated "
        ), rotated.stderr
        assert "the clock is behind" in rotated.stderr
        assert rotated.stderr.rstrip().endswith("fix the clock first")

        # and so does the API
        health = self.request("GET", "/api/daemon/status")
        assert health.status_code == 503, health.text
        assert "the clock is behind" in health.text, health.text
        forced = self.request("POST", "/api/daemon/force-rotation")
        assert forced.status_code == 503, forced.text
        assert forced.json()["error"]["code"] == "unavailable", forced.text
        self.check_uptime()

        elapsed = time.monotonic() - watched
        used = cpu_seconds(self.daemon_pid) - cpu_before
        assert used < IDLE_CPU_SHARE * elapsed, \
            f"the daemon used {used:.2f} s of CPU in {elapsed:.2f} s " \
            "while the clock was behind: it spins"
        assert self.top()["index"] == index, \
            f"key {index} was rotated away while the clock was behind it"
        # the daemon logs it once for as long as it lasts
        logged = clock_lines(self.cwd, index) - lines_before
        expected = 0 if self.logged_behind == index else 1
        assert logged == expected, \
            f"the clock behind key {index} logged {logged} times, not " \
            f"{expected}: " + log_text(self.cwd, "security.log")[-2000:]
        self.logged_behind = index

    def expect_catch_up(self, key: dict[str, Any], jumped: int) -> None:
        """The key is due: one rotation, dated now, and no second one."""
        self.wait_for_key(key["index"])
        # the next key, whether or not the one after has come since
        rotated = read_json(
            self.keys / "history" / f"key-{key['index'] + 1}.json"
        )
        assert rotated["timestamp"] >= jumped - 100, \
            f"key {rotated['index']} is dated " \
            f"{jumped - rotated['timestamp']} ms before the jump"
        # judged by the keys' dates, not by when this test got to look
        time.sleep(CATCH_UP_WATCH)
        soon = [
            (index, stamp) for index, stamp in self.timestamps()
            if index > rotated["index"]
            and stamp < rotated["timestamp"] + ROTATION_MS
        ]
        assert not soon, \
            f"the daemon rotated again within an interval of the " \
            f"catch-up to key {rotated['index']} at " \
            f"{rotated['timestamp']}: {soon}"
        self.assert_healthy()
        self.check_uptime()

    def expect_wait(self, key: dict[str, Any], jumped: int) -> None:
        """The key is not due yet: nothing rotates before it is."""
        due = key["timestamp"] + ROTATION_MS
        # watch until just before it falls due, at most a while
        time.sleep(max(0.0, min(BLOCKED_WATCH, (due - jumped) / 1000 - 0.2)))
        if self.clock.now_ms() < due - 50:
            assert self.top()["index"] == key["index"], \
                f"key {key['index']} was rotated before it fell due"
        self.assert_healthy(command=True)

    def force(self) -> None:
        """Rotate with ``torro daemon rotate`` while the clock is right."""
        outcome = self.run("daemon", "rotate")
        assert outcome.code == 0, outcome.stderr
        index = int(outcome.stdout.split()[3])
        self.forced.add(index)
        self.jumps.forced += 1

    def lost(self) -> int:
        """Count the keys seen that are gone or changed."""
        try:
            records = {
                record["index"]: record["checksum"]
                for record in check_chain(self.keys, self.forced)
            }
        except (AssertionError, OSError, ValueError):
            records = {}
        return sum(
            records.get(index) != checksum
            for index, checksum in self.seen.items()
        )

    def finish(self, tally: "campaign.Tally") -> None:
        """Stop the daemon and sweep everything it let out for secrets."""
        self.assert_healthy(command=True)
        self.stop()
        stderr = self.stderr_path.read_text()
        assert "Traceback" not in stderr
        system = log_text(self.cwd, "system.log")
        assert "rotation failed" not in system, system[-3000:]
        verified = self.torro.run("keys", "verify", env=self.env)
        assert verified.code == 0, verified.stderr
        leaks.check_modes(self.keys, self.cwd / "logs")
        texts = [stderr, *self.responses]
        texts += [outcome.stdout + outcome.stderr
                  for outcome in self.torro.outcomes]
        leaks.sweep(tally, texts=texts, logs=self.cwd / "logs",
                    store=self.keys,
                    master_key_file=self.cwd / "keys.master-key",
                    tokens=[TOKEN])


Move = tuple[str, int, str | None]
# The short version: back a day, put right, forward a week, back from a
# week ahead to the true time, forward again. Each jump names what it
# must lead to.
SHORT_MOVES: list[Move] = [
    ("jump", -DAY, "blocked"),
    ("jump", 0, "catch-up"),
    ("jump", WEEK, "catch-up"),
    ("jump", 0, "blocked"),
    ("jump", WEEK + 60, "catch-up"),
]
LONG_STEPS = 30


def random_moves(rng: random.Random, steps: int) -> list[Move]:
    """Return ``steps`` random moves: jumps (by offset), jumps while the
    daemon is down, restarts and forced rotations.

    A jump goes back from the furthest the clock has been (by a day, by
    up to three days, or by less than the skew allowance), forward (by a
    week, by up to a month, or by a few rotation intervals), or back to
    the furthest it has been, which is where a clock that caught up
    stands.
    """
    skew = CLOCK_SKEW_ALLOWANCE_MS // 1000
    moves: list[Move] = []
    furthest = 0
    for _ in range(steps):
        roll = rng.random()
        if roll < 0.06:
            moves.append(("restart", 0, None))
            continue
        if roll < 0.14:
            moves.append(("force", 0, None))
            continue
        move = "down" if roll < 0.3 else "jump"
        direction = rng.random()
        if direction < 0.35:
            offset = furthest - rng.choice([
                DAY,
                rng.randint(skew + 60, 3 * DAY),
                rng.randint(1, skew - 60),
            ])
        elif direction < 0.7:
            offset = furthest + rng.choice([
                WEEK,
                rng.randint(3600, 30 * DAY),
                rng.randint(1, 3 * ROTATION_MS // 1000),
            ])
        else:
            offset = furthest
        furthest = max(furthest, offset)
        moves.append((move, offset, None))
    return moves


@pytest.fixture
def trial(torro: "Torro", tmp_path: Path) -> ClockTrial:
    if not LIBFAKETIME.is_file():
        pytest.skip(f"libfaketime is missing ({LIBFAKETIME}): install the "
                    "faketime package")
    return ClockTrial(torro, tmp_path)


@pytest.mark.scenario("time: wall clock jumps")
@pytest.mark.parametrize(
    "steps",
    [
        pytest.param(0, id="5-jumps"),
        pytest.param(LONG_STEPS, id=f"{LONG_STEPS}-random-moves",
                     marks=pytest.mark.campaign),
    ],
)
def test_clock_jumps_rotate_once_and_never_date_a_key_back(
    trial: ClockTrial, steps: int, tally: "campaign.Tally"
) -> None:
    seed = int(os.environ.get("TORRO_CLOCK_SEED", DEFAULT_SEED + steps))
    moves = random_moves(random.Random(seed), steps) if steps \
        else SHORT_MOVES
    if steps:
        print(f"\nclock campaign: seed {seed}, {steps} moves "
              f"(replay with TORRO_CLOCK_SEED={seed})")
    began = time.monotonic()
    survived = 0
    try:
        trial.start()
        assert trial.wait_for_key(0)["index"] == 1
        trial.check()
        for number, (move, offset, expected) in enumerate(moves):
            where = f"move {number + 1}/{len(moves)} ({move} {offset:+d} s)"
            try:
                if move == "restart":
                    trial.restart()
                elif move == "force":
                    if not trial.behind(trial.top()):
                        trial.force()
                else:
                    outcome = trial.jump(offset, down=move == "down")
                    assert expected in (None, outcome), \
                        f"led to {outcome}, not {expected}"
                    survived += 1
                trial.check()
            except AssertionError as exc:
                raise AssertionError(f"seed {seed}, {where}: {exc}") \
                    from exc
        if steps:
            # a clock that caught up ends the run with a rotation
            assert trial.jump(trial.clock.furthest + 60) == "catch-up"
            survived += 1
        trial.finish(tally)
    finally:
        print(trial.jumps.line(seed, survived, trial.lost(),
                               time.monotonic() - began))
        tally.trials = tally.faults = trial.jumps.jumps
        tally.survived, tally.lost = survived, trial.lost()


def test_wall_clock_jump_does_not_change_the_uptime(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API's uptime counts on the monotonic clock: a wall clock step
    once made it negative (back a day) or a week long (forward)."""
    settings = load_settings({
        "KEY_STORAGE_PATH": str(tmp_path / "keys"),
        "KEY_DAEMON_LOG_DIR": str(tmp_path / "logs"),
        "KEY_DAEMON_DERIVATION_ROUNDS": "1000",
        "KEY_DAEMON_MASTER_KEY": os.urandom(32).hex(),
        "KEY_DAEMON_API": "false",
    }, env_file=None)
    store = open_store(settings)
    daemon = KeyRotationDaemon(store, RotationPolicy.from_settings(settings))
    daemon.rotate(force=True)
    started = time.monotonic()
    service = DaemonService(settings, store, daemon)
    true_time = time.time

    for jump in (-DAY, WEEK):
        monkeypatch.setattr(time, "time", lambda: true_time() + jump)
        uptime = service.stats()["uptime_seconds"]
        assert 0 <= uptime <= time.monotonic() - started + 1, \
            f"uptime {uptime} s after a jump of {jump:+d} s"
