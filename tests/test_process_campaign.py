"""Reliability campaign, "process control": hostile PID files and starts.

A seeded random mix of the situations an operator's machine throws at
``torro daemon start``, ``status`` and ``stop``, each against real
processes, all under umask 000:

* ``stale``: the daemon is SIGKILLed at a random moment (mid-rotation
  as often as not), leaving its PID file behind;
* ``unrelated``: the PID file names a live unrelated process (a
  ``sleep`` spawned here), with no daemon running;
* ``junk``: the PID file holds junk (empty, text, signs, huge numbers,
  bytes that are not ASCII);
* ``overwritten``: someone writes the ``sleep``'s PID, junk or 0 over
  the PID file of a running daemon;
* ``starts``: two or three ``torro daemon start`` at the same moment,
  over a clean, stale, junk or unrelated PID file;
* ``stop-during-start``: ``torro daemon stop`` a random moment after a
  ``torro daemon start`` began;
* ``start-while-running``: a second start beside a running daemon.

After each trial exactly one daemon runs (found by its command line and
working directory in /proc, not by the PID file), ``torro daemon status
--json`` names its PID and exits 0 (1 when it says why it is unhealthy),
the ``sleep`` was never signalled, and the PID file is 0600. Whenever
the daemon was stopped cleanly, ``torro keys verify`` passes. At the end
no key is lost, no index repeated, no secret is in any output or log,
and the store and logs are 0600/0700.

The short version (three trials) runs in the default suite;
``pytest -m campaign`` runs 20 (about 3 s each). The seed is printed; set
TORRO_PROCESS_SEED to replay a run.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import leaks
import pytest
from runner import FAST_SETTINGS, Outcome

from torro import process

if TYPE_CHECKING:
    import campaign
    from runner import Torro


SETTINGS = {
    **FAST_SETTINGS,
    # rotations go on while the trials run; nothing is ever pruned
    "KEY_DAEMON_MAX_HISTORY": "100000",
}
DEFAULT_SEED = 20261206
KINDS = (
    "stale",
    "unrelated",
    "junk",
    "overwritten",
    "starts",
    "stop-during-start",
    "start-while-running",
)
JUNK = (
    b"",
    b"\n",
    b"hello\n",
    b"-1\n",
    b"0\n",
    b"+42\n",
    b"99999999999999999999999999\n",
    b"1 2\n",
    b"\xff\xfe\x00\x01",
    b"\xd9\xa4\xd9\xa5\n",
    b"4" * 4096,
)
# The default suite's trials: the kinds most likely to go wrong.
DEFAULT_KINDS = ("overwritten", "starts", "stop-during-start")
STOP_DURING_START_MAX_DELAY = 0.6
# A process that locks a PID file as the daemon does, then waits.
HOLDER = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from torro.process import PidFile\n"
    "PidFile(Path(sys.argv[1])).acquire()\n"
    "print('locked', flush=True)\n"
    "time.sleep(600)\n"
)


def umask_zero() -> None:
    os.umask(0)


def run(torro: "Torro", *args: str) -> Outcome:
    """Run one command under umask 000."""
    return torro.run(*args, env=SETTINGS, umask=0)


def run_together(torro: "Torro", *commands: tuple[str, ...]) -> list[Outcome]:
    """Run several commands at the same moment, under umask 000."""
    children = [
        torro.popen(
            *args, env=SETTINGS, text=True, preexec_fn=umask_zero,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        for args in commands
    ]
    outcomes = []
    for args, child in zip(commands, children, strict=True):
        stdout, stderr = child.communicate(timeout=60)
        outcomes.append(Outcome(args, child.returncode, stdout, stderr))
    torro.outcomes.extend(outcomes)
    return outcomes


def is_alive(pid: int) -> bool:
    """Tell whether ``pid`` runs (a zombie does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1]
    except FileNotFoundError:
        return False
    return state.split()[0] != "Z"


def status(torro: "Torro") -> tuple[int, dict[str, object]]:
    outcome = run(torro, "daemon", "status", "--json")
    assert outcome.stderr == "", outcome.stderr
    return outcome.code, json.loads(outcome.stdout)


def check_not_running(torro: "Torro", where: str) -> None:
    """No daemon runs, and status says so: exit 3, no PID."""
    assert torro.daemon_processes() == [], where
    code, document = status(torro)
    assert (code, document["running"], document["pid"]) == \
        (3, False, None), f"{where}: {document}"


def check_running(torro: "Torro", where: str) -> int:
    """Exactly one daemon runs, and status names it; return its PID."""
    real = torro.daemon_processes()
    assert len(real) == 1, f"{where}: daemons running: {real}"
    code, document = status(torro)
    assert (document["running"], document["pid"]) == (True, real[0]), \
        f"{where}: status says {document}, the daemon is pid {real[0]}"
    healthy = document["integrity"] == "ok" and not document["overdue"]
    assert code == (0 if healthy else 1), f"{where}: {code} {document}"
    assert document["integrity"] == "ok", f"{where}: {document}"
    return real[0]


def start(torro: "Torro", where: str) -> int:
    """Start a daemon; it must start. Return its PID."""
    outcome = run(torro, "daemon", "start")
    assert outcome.code == 0, f"{where}: {outcome}"
    pid = int(outcome.stdout.rsplit("pid ", 1)[1].rstrip(")\n"))
    assert outcome.stdout == f"daemon started (pid {pid})\n", where
    assert torro.daemon_processes() == [pid], where
    return pid


def stop_cleanly(torro: "Torro", where: str) -> None:
    """Stop the daemon if one runs; then the store must verify."""
    real = torro.daemon_processes()
    stopped = run(torro, "daemon", "stop")
    assert stopped.code == 0, f"{where}: {stopped}"
    if real:
        assert stopped.stdout == f"daemon stopped (pid {real[0]})\n", \
            f"{where}: {stopped.stdout!r}, the daemon was {real}"
    else:
        assert stopped.stdout == "no daemon is running\n", where
    assert torro.daemon_processes() == [], where
    verified = run(torro, "keys", "verify")
    assert verified.code == 0, f"{where}: {verified}"
    assert verified.stdout.startswith("ok: "), where


def ensure_running(torro: "Torro", where: str) -> int:
    real = torro.daemon_processes()
    return real[0] if real else start(torro, where)


def plant(torro: "Torro", rng: random.Random, sleeper: int) -> str:
    """Leave a hostile PID file with no daemon running; name it."""
    choice = rng.choice(("clean", "stale", "junk", "unrelated"))
    if choice == "stale":
        pid = ensure_running(torro, "planting a stale PID file")
        os.kill(pid, signal.SIGKILL)
        torro.wait_until(lambda: not is_alive(pid), what="the kill")
    elif choice == "junk":
        torro.pid_file.write_bytes(rng.choice(JUNK))
    elif choice == "unrelated":
        torro.pid_file.write_text(f"{sleeper}\n")
    return choice


def trial(
    torro: "Torro", kind: str, rng: random.Random, sleeper: int, where: str
) -> int:
    """Make one hostile situation of ``kind``; return the faults made."""
    faults = 1
    if kind == "stale":
        pid = ensure_running(torro, where)
        time.sleep(rng.uniform(0, 0.3))
        os.kill(pid, signal.SIGKILL)
        torro.wait_until(lambda: not is_alive(pid), what="the kill")
        assert torro.pid_file.read_text() == f"{pid}\n", where
        check_not_running(torro, where)
        start(torro, where)
    elif kind in ("unrelated", "junk"):
        stop_cleanly(torro, where)
        if kind == "unrelated":
            torro.pid_file.write_text(f"{sleeper}\n")
        else:
            torro.pid_file.write_bytes(rng.choice(JUNK))
        check_not_running(torro, where)
        if rng.random() < 0.5:
            stopped = run(torro, "daemon", "stop")
            assert (stopped.code, stopped.stdout) == \
                (0, "no daemon is running\n"), f"{where}: {stopped}"
        assert start(torro, where) != sleeper, where
    elif kind == "overwritten":
        pid = ensure_running(torro, where)
        text = rng.choice((f"{sleeper}\n", f"{sleeper}\n", "hello\n", "0"))
        with open(torro.pid_file, "r+") as pid_file:
            pid_file.truncate()
            pid_file.write(text)
        assert check_running(torro, where) == pid
        stopped = run(torro, "daemon", "stop")
        assert (stopped.code, stopped.stdout) == \
            (0, f"daemon stopped (pid {pid})\n"), f"{where}: {stopped}"
        torro.wait_until(lambda: not is_alive(pid), what="the stop")
        check_not_running(torro, where)
    elif kind == "starts":
        stop_cleanly(torro, where)
        if plant(torro, rng, sleeper) != "clean":
            faults += 1
        count = rng.choice((2, 3))
        outcomes = run_together(torro, *[("daemon", "start")] * count)
        winners = [outcome for outcome in outcomes if outcome.code == 0]
        assert len(winners) == 1, f"{where}: {outcomes}"
        real = torro.daemon_processes()
        assert len(real) == 1, f"{where}: {real}"
        assert winners[0].stdout == f"daemon started (pid {real[0]})\n", \
            where
        for loser in outcomes:
            if loser.code != 0:
                assert loser.code == 1, f"{where}: {loser}"
                assert loser.stdout == "", where
                assert loser.stderr.startswith(
                    f"torro: error: a daemon is already running (pid "
                    f"{real[0]}"
                ), f"{where}: {loser}"
                assert len(loser.error_lines) == 1, where
    elif kind == "stop-during-start":
        stop_cleanly(torro, where)
        if plant(torro, rng, sleeper) != "clean":
            faults += 1
        starting = torro.popen(
            "daemon", "start", env=SETTINGS, text=True,
            preexec_fn=umask_zero,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        time.sleep(rng.uniform(0, STOP_DURING_START_MAX_DELAY))
        stopped = run(torro, "daemon", "stop")
        stdout, stderr = starting.communicate(timeout=60)
        torro.outcomes.append(
            Outcome(("daemon", "start"), starting.returncode, stdout, stderr)
        )
        assert (starting.returncode, stderr) == (0, ""), \
            f"{where}: {stdout} {stderr}"
        pid = int(stdout.rsplit("pid ", 1)[1].rstrip(")\n"))
        assert stopped.code == 0, f"{where}: {stopped}"
        if stopped.stdout == "no daemon is running\n":
            # the stop came before the daemon locked its PID file
            assert torro.daemon_processes() == [pid], where
        else:
            assert stopped.stdout == f"daemon stopped (pid {pid})\n", \
                f"{where}: {stopped.stdout!r}, started {pid}"
            torro.wait_until(lambda: not is_alive(pid), what="the stop")
            check_not_running(torro, where)
    elif kind == "start-while-running":
        pid = ensure_running(torro, where)
        again = run(torro, "daemon", "start")
        assert (again.code, again.stdout) == (1, ""), f"{where}: {again}"
        assert again.error_lines == [
            f"torro: error: a daemon is already running (pid {pid}): stop "
            "it with torro daemon stop"
        ], where
    else:
        raise AssertionError(kind)
    return faults


def check_store(keys: Path, known: dict[int, str]) -> int:
    """Record every key's checksum; return the keys lost or repeated."""
    history = json.loads((keys / "history.json").read_text())
    indexes = [key["index"] for key in history["keys"]]
    assert indexes == list(range(len(indexes))), indexes
    records = {}
    for path in (keys / "history").glob("key-*.json"):
        record = json.loads(path.read_text())
        records[record["index"]] = record
    lost = sum(
        1 for index, checksum in known.items()
        if index not in records or records[index]["checksum"] != checksum
    )
    fingerprints = [record["fingerprint"] for record in records.values()]
    lost += len(fingerprints) - len(set(fingerprints))
    for index, record in records.items():
        known.setdefault(index, record["checksum"])
    return lost


@pytest.mark.scenario("process control: PID files and starts")
@pytest.mark.parametrize(
    "trials",
    [
        pytest.param(len(DEFAULT_KINDS), id="3-trials"),
        pytest.param(20, id="20-trials", marks=pytest.mark.campaign),
    ],
)
def test_hostile_pid_files_and_starts_leave_one_daemon(
    torro: "Torro", trials: int, tally: "campaign.Tally"
) -> None:
    seed = int(os.environ.get("TORRO_PROCESS_SEED", DEFAULT_SEED + trials))
    rng = random.Random(seed)
    print(f"\nprocess campaign: seed {seed}, {trials} trials "
          f"(replay with TORRO_PROCESS_SEED={seed})")
    cwd = torro.cwd
    keys = cwd / "keys"
    sleeper = torro.spawn(["sleep", "600"])
    # the default kinds, then every kind once in a seeded order, then a
    # seeded random mix
    kinds = list(DEFAULT_KINDS) + rng.sample(KINDS, len(KINDS))
    kinds += [rng.choice(KINDS) for _ in range(trials - len(kinds))]
    kinds = kinds[:trials]
    known: dict[int, str] = {}
    counted: dict[str, int] = {}
    began = time.monotonic()
    try:
        start(torro, "first start")
        for number, kind in enumerate(kinds, 1):
            where = f"seed {seed}, trial {number}/{trials} ({kind})"
            tally.faults += trial(torro, kind, rng, sleeper.pid, where)
            tally.trials += 1
            counted[kind] = counted.get(kind, 0) + 1
            ensure_running(torro, where)
            check_running(torro, where)
            assert sleeper.poll() is None, \
                f"{where}: the unrelated process was signalled"
            assert (torro.pid_file.stat().st_mode & 0o777) == 0o600, where
            tally.lost = check_store(keys, known)
            assert tally.lost == 0, f"{where}: keys lost or repeated"
            tally.survived += 1

        stop_cleanly(torro, "the end")
        check_not_running(torro, "the end")
        assert sleeper.poll() is None, "the unrelated process was signalled"
        tally.lost = check_store(keys, known)
        assert tally.lost == 0, "keys lost or repeated"
        for outcome in torro.outcomes:
            assert "Traceback" not in outcome.stderr, outcome
        assert "Traceback" not in (cwd / "logs/system.log").read_text()
        leaks.check_modes(keys, cwd / "logs")
        leaks.sweep(
            tally,
            texts=[o.stdout + o.stderr for o in torro.outcomes],
            logs=cwd / "logs", store=keys,
            master_key_file=cwd / "keys.master-key",
        )
    finally:
        print(f"process campaign (seed {seed}): {tally.trials} trials, "
              f"{tally.faults} hostile situations {counted}, "
              f"{tally.survived} survived, {len(known)} keys, "
              f"{time.monotonic() - began:.1f} s")


@pytest.mark.parametrize("text", ["sleeper", "junk", "zero"])
def test_pid_file_overwritten_under_a_running_daemon_is_not_trusted(
    tmp_path: Path, text: str
) -> None:
    """Found by the campaign: with the number in a daemon's locked PID
    file replaced by another live process's PID, status named that
    process as the daemon and stop sent it SIGTERM, leaving the daemon
    running. The holder of the lock is now looked up instead."""
    pid_file = tmp_path / "torro.pid"
    sleeper = subprocess.Popen(["sleep", "600"])
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(pid_file)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "locked\n"
        assert process.read_daemon_pid(pid_file) == holder.pid
        written = {"sleeper": f"{sleeper.pid}\n", "junk": "hello\n",
                   "zero": "0\n"}[text]
        with open(pid_file, "r+") as opened:
            opened.truncate()
            opened.write(written)

        assert process.read_daemon_pid(pid_file) == holder.pid
        assert process.stop_daemon(pid_file, timeout=10) == holder.pid
        assert holder.wait(timeout=10) == -signal.SIGTERM
        assert sleeper.poll() is None
        assert process.read_daemon_pid(pid_file) is None
    finally:
        for child in (sleeper, holder):
            if child.poll() is None:
                child.kill()
            child.wait()
