"""``torro daemon status`` as a monitoring check reads it: its exit code.

0 healthy, 1 running but unhealthy, 3 not running, each with a real
daemon started by ``torro daemon start`` in the test's directory and a
store damaged on disk as an intruder or a bad disk would.
"""

import json
from pathlib import Path
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from runner import Torro


# A slow schedule: no rotation rewrites history.json while a test edits it.
SLOW = {
    "KEY_DAEMON_SLEEP_INTERVAL": "1000",
    "KEY_DAEMON_ROTATION_INTERVAL": "3600000",
}


def flip_a_byte(path: Path) -> None:
    """Change one hex digit of the first fingerprint in ``path``."""
    data = bytearray(path.read_bytes())
    at = data.index(b'"fingerprint":"') + len(b'"fingerprint":"')
    data[at] = ord("1") if data[at] == ord("0") else ord("0")
    path.write_bytes(bytes(data))


def test_status_exit_codes_follow_the_daemon_and_its_store(
    torro: "Torro",
) -> None:
    """Not running: 3. Running on an intact store: 0. Running after a
    byte of history.json changed: 1, naming the file. Stopped with the
    store still damaged: 3 again, not running coming first."""
    torro.environ.update(SLOW)

    never = torro.run("daemon", "status")
    assert never.code == 3, never.stderr
    assert "daemon:         not running" in never.stdout

    started = torro.run("daemon", "start")
    assert started.code == 0, started.stderr
    healthy = torro.run("daemon", "status", "--json")
    assert healthy.code == 0, healthy.stdout + healthy.stderr
    document = json.loads(healthy.stdout)
    assert (document["running"], document["integrity"]) == (True, "ok")
    assert document["problem"] is None

    flip_a_byte(torro.cwd / "keys" / "history.json")
    damaged = torro.run("daemon", "status")
    assert damaged.code == 1, damaged.stdout + damaged.stderr
    assert "daemon:         running (pid " in damaged.stdout
    assert "key store:      keys (failed)" in damaged.stdout
    assert "problem:        keys/history.json: checksum does not match" \
        in damaged.stdout
    as_json = torro.run("daemon", "status", "--json")
    assert as_json.code == 1
    assert json.loads(as_json.stdout)["integrity"] == "failed"

    stopped = torro.run("daemon", "stop")
    assert stopped.code == 0, stopped.stderr
    after = torro.run("daemon", "status", "--json")
    assert after.code == 3
    document = json.loads(after.stdout)
    assert (document["running"], document["integrity"]) == (False, "failed")
    for outcome in torro.outcomes:
        assert outcome.stderr == "", outcome
