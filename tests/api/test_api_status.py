"""GET /api/daemon/status: health for anyone, details for an admin.

The documented health check, ``curl -f http://localhost:PORT/api/daemon/
status || exit 1``, is run as written against a healthy daemon and
against two unhealthy ones made the way they happen in production: a
store whose record was edited under the running daemon (integrity), and
a store whose lock another process holds past the rotation's due time
(overdue by more than two rotation intervals).
"""

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest
from api_checks import (
    FULL_TOKEN,
    READ_TOKEN,
    ApiDaemon,
    all_logs,
    assert_error,
    assert_no_key_material,
    iso_ms,
    reveal,
    token_id,
)


PUBLIC_FIELDS = {
    "running", "healthy", "integrity", "current_index", "last_rotation",
    "next_rotation", "problem",
}
MASTER_KEY = "5e" * 32
HOUR_MS = 3_600_000


def health_check(api: ApiDaemon) -> int:
    """Run the documented health check; return the shell's exit code."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    port = api.url.rsplit(":", 1)[1]
    command = f"curl -f http://localhost:{port}/api/daemon/status || exit 1"
    done = subprocess.run(
        ["sh", "-c", command], capture_output=True, timeout=30,
        check=False,
    )
    return done.returncode


def wait_for_status(api: ApiDaemon, status: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while api.get("/api/daemon/status").status_code != status:
        assert time.monotonic() < deadline, f"status never became {status}"
        time.sleep(0.05)


@contextlib.contextmanager
def store_lock_held(api: ApiDaemon) -> Iterator[None]:
    """Hold a daemon's store lock (flock) from this process, as another
    torro process would."""
    fd = os.open(api.cwd / "keys" / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def test_healthy_daemon_answers_200_with_public_fields_only(
    api: ApiDaemon,
) -> None:
    """Without a token, status is 200 with the schedule and the health,
    no configuration, no stats and no key; the documented curl health
    check exits 0."""
    response = api.get("/api/daemon/status")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == PUBLIC_FIELDS
    record = json.loads((api.cwd / "keys" / "current.json").read_text())
    assert body["running"] is True
    assert body["healthy"] is True
    assert body["integrity"] == "ok"
    assert body["problem"] is None
    assert body["current_index"] == 0
    assert iso_ms(body["last_rotation"]) == record["timestamp"]
    assert iso_ms(body["next_rotation"]) == record["timestamp"] + HOUR_MS
    assert_no_key_material(response.text, [reveal(api, 0)["key"]])
    assert health_check(api) == 0


def test_admin_status_adds_redacted_configuration_and_stats(
    api_factory: Callable[..., ApiDaemon],
) -> None:
    """With a read-only or a full token, status adds the configuration,
    every secret shown only as set, and the figures of GET stats; the
    master key and the tokens appear nowhere in the answer or the logs.
    A wrong token is refused rather than served the public view, and
    each admin call is logged by token id."""
    api = api_factory(KEY_DAEMON_MASTER_KEY=MASTER_KEY)
    secrets = (MASTER_KEY, FULL_TOKEN, READ_TOKEN)
    for token in (READ_TOKEN, FULL_TOKEN):
        response = api.get("/api/daemon/status", token=token)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == PUBLIC_FIELDS | {"configuration", "stats"}
        configuration = body["configuration"]
        assert configuration["KEY_DAEMON_MASTER_KEY"] == "(set, redacted)"
        assert configuration["KEY_DAEMON_ADMIN_TOKENS"] == "(set, redacted)"
        assert configuration["KEY_DAEMON_READ_TOKENS"] == "(set, redacted)"
        assert configuration["KEY_DAEMON_ROTATION_INTERVAL"] == "3600000"
        assert configuration["KEY_DAEMON_ADMIN_TOKEN_FILE"] == "admin-tokens"
        assert configuration["KEY_DAEMON_RATE_LIMIT"] == "60"
        stats = body["stats"]
        assert stats["current_index"] == body["current_index"] == 0
        assert stats["history_size"] == 1
        assert stats["failed_rotations"] == 0
        assert stats["last_rotation"] == body["last_rotation"]
        assert stats["next_rotation"] == body["next_rotation"]
        for secret in secrets:
            assert secret not in response.text

    message = assert_error(
        api.get("/api/daemon/status", token="not-a-token-of-this-daemon"),
        403, "forbidden",
    )
    assert message == "the token is not valid"
    assert_error(
        api.client.get("/api/daemon/status",
                       headers={"Authorization": "Basic x"}),
        401, "unauthorized",
    )
    security = api.log("security.log")
    for token, role in ((READ_TOKEN, "read"), (FULL_TOKEN, "full")):
        assert (
            f"api: GET /api/daemon/status by {role} token {token_id(token)}"
            " from 127.0.0.1"
        ) in security
    assert "refused GET /api/daemon/status from 127.0.0.1: unknown token " \
        "(403)" in security
    logs = all_logs(api)
    for secret in secrets:
        assert secret not in logs


def test_store_damaged_under_the_daemon_is_503_until_repaired(
    api_factory: Callable[..., ApiDaemon],
) -> None:
    """A record edited under the running daemon fails the integrity
    check at the next pass: status answers 503 with the problem, the
    curl health check fails, the key endpoints and validate-key answer
    503 errors, a forced rotation is refused and counted as failed, and
    metrics report unhealthy. Putting the file back heals all of it."""
    api = api_factory(KEY_DAEMON_SLEEP_INTERVAL="100")
    key = reveal(api, 0)["key"]
    current = api.cwd / "keys" / "current.json"
    original = current.read_bytes()
    record = json.loads(original)
    record["timestamp"] -= 1
    current.write_text(json.dumps(record))

    wait_for_status(api, 503, timeout=10)
    response = api.get("/api/daemon/status")
    body = response.json()
    assert body["running"] is True
    assert body["healthy"] is False
    assert body["integrity"] == "failed"
    assert "current.json" in body["problem"]
    assert body["error"] == {"code": "unhealthy", "message": body["problem"]}
    assert health_check(api) != 0

    for path in ("/api/daemon/current-key", "/api/daemon/key/0",
                 "/api/daemon/history"):
        message = assert_error(
            api.get(path, token=FULL_TOKEN), 503, "unavailable"
        )
        assert "integrity check" in message
    assert_error(
        api.post("/api/daemon/validate-key", json={"key": key}),
        503, "unavailable",
    )
    refused = api.post("/api/daemon/force-rotation", token=FULL_TOKEN)
    assert "rotation refused" in assert_error(refused, 503, "unavailable")
    stats = api.get("/api/daemon/stats", token=READ_TOKEN).json()
    assert stats["failed_rotations"] == 1
    metrics = api.get("/metrics").text
    assert "torro_healthy 0.0" in metrics
    assert "torro_rotation_failures_total 1.0" in metrics
    assert "key store integrity check failed" in api.log("security.log")

    current.write_bytes(original)
    wait_for_status(api, 200, timeout=10)
    assert health_check(api) == 0
    rotated = api.post("/api/daemon/force-rotation", token=FULL_TOKEN)
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["index"] == 1
    assert_no_key_material(all_logs(api), [key])


def test_rotation_overdue_by_two_intervals_is_503(
    api_factory: Callable[..., ApiDaemon],
) -> None:
    """While another process holds the store lock the daemon cannot
    rotate; once the current key is overdue by more than two rotation
    intervals, status answers 503 with integrity still ok, the curl
    health check fails and metrics say unhealthy. When the lock is
    dropped the daemon rotates and is healthy again."""
    api = api_factory(
        KEY_DAEMON_ROTATION_INTERVAL="500", KEY_DAEMON_SLEEP_INTERVAL="100"
    )
    assert api.get("/api/daemon/status").status_code == 200
    with store_lock_held(api):
        wait_for_status(api, 503, timeout=10)
        seen = time.time() * 1000
        body = api.get("/api/daemon/status").json()
        assert body["healthy"] is False
        assert body["integrity"] == "ok"
        assert "overdue" in body["problem"]
        assert body["error"] == {
            "code": "unhealthy", "message": body["problem"],
        }
        due = iso_ms(body["next_rotation"])
        assert due == iso_ms(body["last_rotation"]) + 500
        assert seen - due > 2 * 500
        assert health_check(api) != 0
        assert "torro_healthy 0.0" in api.get("/metrics").text
    wait_for_status(api, 200, timeout=10)
    healthy = api.get("/api/daemon/status").json()
    assert healthy["current_index"] > body["current_index"]
    assert health_check(api) == 0
