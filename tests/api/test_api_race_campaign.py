"""Reliability campaign, "races": CLI and API rotations at once.

A running daemon with its HTTP API, four processes each calling
``torro daemon rotate`` in a loop, and a thread calling ``POST
/api/daemon/force-rotation`` in a loop, all until the same deadline.
Every rotation reported (the CLI's "rotated to key N", the API's JSON
index) is counted; afterwards:

* no index is reported twice;
* history.json holds indexes 0..max with no gap, and they are exactly
  key 0 (made by the daemon's start) plus every reported index: the
  schedule is one rotation an hour, so that only the forced rotations
  of this test happen and none goes unaccounted;
* ``torro keys verify`` exits 0 and says ok, with max + 1 keys;
* every fingerprint in history.json differs;
* GET status answers 200 with the max index as current.

A rotation may legitimately be refused when the store lock is held too
long (30 s) by another writer: such a refusal must be one clean line on
stderr, no traceback, and consume no index. They are counted apart.

Nothing is random here; the interleaving is the machine's.

The short version runs in the default suite; the 30 s version is a
campaign (``pytest -m campaign -s tests/api/test_api_race_campaign.py``).
"""

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

import leaks
import pytest
from api_daemon import FULL_TOKEN, READ_TOKEN, ApiDaemon

if TYPE_CHECKING:
    import campaign


CLI_WRITERS = 4
# Settings the daemon and the CLI share: nothing is ever pruned (every
# index stays in history.json to be checked), and the fewest derivation
# rounds the configuration accepts, so that a rotation is cheap and the
# writers meet on the lock often. The daemon's own schedule stays at one
# rotation an hour (API_SETTINGS).
SHARED_SETTINGS = {
    "KEY_DAEMON_DERIVATION_ROUNDS": "1000",
    "KEY_DAEMON_MAX_HISTORY": "1000000",
}

# Runs `torro daemon rotate` (argv[2:]) in a loop for argv[1] seconds;
# prints one JSON line a run.
ROTATE_LOOP = """\
import json, subprocess, sys, time
deadline = time.monotonic() + float(sys.argv[1])
while time.monotonic() < deadline:
    done = subprocess.run(
        sys.argv[2:], capture_output=True, text=True,
        stdin=subprocess.DEVNULL, timeout=120,
    )
    print(json.dumps({"code": done.returncode, "stdout": done.stdout,
                      "stderr": done.stderr}), flush=True)
"""
ROTATED_PREFIX = "rotated to key "


class Reports:
    """The rotations the writers said they made, and their refusals."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.indexes: list[tuple[int, str]] = []  # (index, writer)
        self.refused: list[tuple[str, str]] = []  # (writer, message)
        self.attempts = 0
        # every reply and output, for the secrets sweep
        self.texts: list[str] = []

    def rotated(self, index: int, writer: str) -> None:
        with self.lock:
            self.attempts += 1
            self.indexes.append((index, writer))

    def refusal(self, writer: str, message: str) -> None:
        with self.lock:
            self.attempts += 1
            self.refused.append((writer, message))


def check_cli_run(run: dict[str, object], writer: str,
                  reports: Reports) -> None:
    """Record one `torro daemon rotate`: a rotation or a clean refusal."""
    code, stdout, stderr = run["code"], str(run["stdout"]), str(run["stderr"])
    reports.texts.append(stdout + stderr)
    assert "Traceback" not in stderr, f"{writer}: {stderr}"
    if code == 0:
        lines = stdout.splitlines()
        assert len(lines) == 1 and lines[0].startswith(ROTATED_PREFIX), \
            f"{writer}: {run}"
        index = int(lines[0][len(ROTATED_PREFIX):].split()[0])
        reports.rotated(index, writer)
        return
    # a refusal (the lock held too long): one line, nothing on stdout
    assert stdout == "", f"{writer}: {run}"
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("torro: "), \
        f"{writer}: {run}"
    reports.refusal(writer, lines[0])


def force_rotations(api: ApiDaemon, deadline: float, reports: Reports,
                    problems: list[str]) -> None:
    """POST force-rotation until ``deadline``; note what went wrong."""
    try:
        while time.monotonic() < deadline:
            reply = api.post("/api/daemon/force-rotation", FULL_TOKEN)
            reports.texts.append(f"{reply.headers}\n{reply.text}")
            if reply.status_code == 200:
                reports.rotated(reply.json()["index"], "api")
            elif reply.status_code == 503:
                reports.refusal("api", reply.json()["error"]["message"])
            else:
                problems.append(f"api: {reply.status_code} {reply.text}")
                return
    # any error at all: reported by the test, not lost in the thread
    except Exception as exc:  # noqa: BLE001
        problems.append(f"api: {exc!r}")


@pytest.mark.scenario("races: CLI and API rotations at once")
@pytest.mark.parametrize(
    "duration",
    [
        pytest.param(3.0, id="3s"),
        pytest.param(30.0, id="30s", marks=pytest.mark.campaign),
    ],
)
def test_cli_and_api_rotations_at_once_lose_and_repeat_nothing(
    api_factory: Callable[..., ApiDaemon], duration: float,
    tally: "campaign.Tally",
) -> None:
    api = api_factory(**SHARED_SETTINGS)
    torro = api.torro
    print(f"\nrace campaign: {CLI_WRITERS} CLI writers and the API for "
          f"{duration:g} s")
    began = time.monotonic()
    reports = Reports()
    problems: list[str] = []

    argv = [sys.executable, "-c", ROTATE_LOOP, str(duration),
            *torro.command(("daemon", "rotate"), False)]
    loops = [
        subprocess.Popen(
            argv, cwd=torro.cwd, env=torro.env(**SHARED_SETTINGS),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )
        for _ in range(CLI_WRITERS)
    ]
    try:
        thread = threading.Thread(
            target=force_rotations,
            args=(api, time.monotonic() + duration, reports, problems),
        )
        thread.start()
        outputs = [loop.communicate(timeout=duration + 120) for loop in loops]
        thread.join(timeout=120)
        assert not thread.is_alive(), "the API thread is stuck"
    finally:
        for loop in loops:
            if loop.poll() is None:
                loop.kill()
            loop.wait()
    assert not problems, problems
    for number, (loop, (stdout, stderr)) in enumerate(
        zip(loops, outputs, strict=True)
    ):
        writer = f"cli {number}"
        assert loop.returncode == 0, f"{writer} loop: {stderr}"
        runs = [json.loads(line) for line in stdout.splitlines()]
        assert runs, f"{writer}: no rotation ran"
        for run in runs:
            check_cli_run(run, writer, reports)
    elapsed = time.monotonic() - began

    reported = [index for index, _ in reports.indexes]
    repeated = sorted(i for i, n in Counter(reported).items() if n > 1)
    history = json.loads((torro.cwd / "keys" / "history.json").read_text())
    indexes = [key["index"] for key in history["keys"]]
    top = max(indexes)
    expected = list(range(top + 1))
    gaps = sorted(set(expected) - set(indexes))
    unreported = sorted(set(indexes) - set(reported) - {0})
    missing = sorted(set(reported) - set(indexes))

    cli_count = sum(1 for _, writer in reports.indexes if writer != "api")
    api_count = len(reports.indexes) - cli_count
    tally.trials += reports.attempts
    tally.faults += CLI_WRITERS + 1
    tally.survived += len(reports.indexes)
    tally.lost += len(repeated) + len(gaps) + len(missing) + len(unreported)
    print(f"race campaign: {reports.attempts} rotations attempted, "
          f"{cli_count} by the CLI, {api_count} by the API, "
          f"{len(reports.refused)} refused, keys 0..{top}, "
          f"{elapsed:.1f} s")

    assert not repeated, f"indexes reported twice: {repeated}"
    assert indexes == expected, f"history.json gaps {gaps}, order " \
        f"{indexes[:3]}..{indexes[-3:]}"
    assert not missing, f"reported but not in history.json: {missing}"
    assert not unreported, f"in history.json, reported by nobody: " \
        f"{unreported}"
    assert top == len(reports.indexes), (top, len(reports.indexes))
    assert history["current"] == top
    assert cli_count > 0 and api_count > 0, (cli_count, api_count)
    # a refusal consumes no index: the count above already says so
    # (every index 1..top is a reported rotation); its message names the
    # lock
    for writer, message in reports.refused:
        assert "locked by another process" in message, (writer, message)

    fingerprints = [key["fingerprint"] for key in history["keys"]]
    assert len(set(fingerprints)) == len(fingerprints), \
        "a fingerprint repeats"

    verified = torro.run("keys", "verify", env=SHARED_SETTINGS)
    assert verified.code == 0, verified.stderr
    assert verified.stdout == (
        f"ok: {top + 1} keys verified, chain intact, current key {top}\n"
    ), verified.stdout

    status = api.get("/api/daemon/status")
    assert status.status_code == 200, status.text
    assert status.json()["current_index"] == top, status.json()
    assert api.process.poll() is None, "the daemon died"

    reports.texts.append(status.text)
    reports.texts += [outcome.stdout + outcome.stderr
                      for outcome in torro.outcomes]
    leaks.sweep(tally, texts=reports.texts, logs=torro.cwd / "logs",
                store=torro.cwd / "keys",
                master_key_file=torro.cwd / "keys.master-key",
                tokens=[FULL_TOKEN, READ_TOKEN])
