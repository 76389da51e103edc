"""The API follows what other processes do to the store.

An operator may rotate or reset with the CLI while the daemon runs, and
a disk or a person may damage a record in place. The API must never go
on signing with, or accepting, a key the store has retired, and its
health check must tell of damage the CLI sees.
"""

import json
import time
from collections.abc import Callable

import jwt
from api_checks import FULL_TOKEN, ApiDaemon, reveal, validate

# Every request looks for another process's change before it is served;
# the status is polled only to give a busy machine room.
NOTICE_TIMEOUT = 5.0


# The daemon's retention, which the CLI must share.
CLI_ENV: dict[str, str | None] = {"KEY_DAEMON_MAX_HISTORY": "2"}


def wait_for_current(api: ApiDaemon, index: int) -> dict[str, object]:
    """Poll the public status until it names key ``index`` as current."""
    deadline = time.monotonic() + NOTICE_TIMEOUT
    while True:
        status = api.get("/api/daemon/status").json()
        if status["current_index"] == index:
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.05)


def test_cli_rotations_retire_keys_in_the_api_at_once(
    api_factory: Callable[..., ApiDaemon],
) -> None:
    """Two `torro daemon rotate` runs beside a daemon keeping two keys:
    the API's status, JWKS, validate-key and license checks all follow,
    and a license of the pruned key fails with key_retired through the
    API as through the CLI."""
    api = api_factory(KEY_DAEMON_MAX_HISTORY="2")
    key_0 = reveal(api, 0)["key"]
    revealed = api.get("/api/daemon/current-key", FULL_TOKEN)
    assert revealed.headers["cache-control"] == "no-store"
    issued = api.post(
        "/api/licenses", FULL_TOKEN,
        json={"subject": "acme", "expires": 4102444800},
    ).json()
    assert issued["kid"] == 0

    for expected in (1, 2):
        outcome = api.torro.run("daemon", "rotate", env=CLI_ENV)
        assert outcome.code == 0, outcome.stderr
        assert outcome.stdout.startswith(f"rotated to key {expected} ")
    wait_for_current(api, 2)

    jwks = api.get("/.well-known/jwks.json").json()
    assert sorted(int(key["kid"]) for key in jwks["keys"]) == [1, 2]
    assert validate(api, key_0)["valid"] is False
    checked = api.post(
        "/api/licenses/validate", json={"license": issued["license"]}
    ).json()
    assert (checked["valid"], checked["reason"]) == (False, "key_retired")
    verified = api.torro.run(
        "license", "verify", issued["license"], "--json",
        env=CLI_ENV,
    )
    assert json.loads(verified.stdout)["reason"] == "key_retired"

    fresh = api.post(
        "/api/licenses", FULL_TOKEN,
        json={"subject": "acme", "expires": 4102444800},
    ).json()
    assert fresh["kid"] == 2
    assert jwt.get_unverified_header(fresh["license"])["kid"] == "2"
    assert "became current in another process" in api.log("key-daemon.log")


def test_a_record_edited_in_place_makes_the_health_check_fail(
    api: ApiDaemon,
) -> None:
    """A retained record whose fingerprint is edited, leaving current.json
    and history.json alone, turns GET status to 503 with the file named,
    as `torro daemon status` does; the security log says why."""
    for _ in range(2):
        assert api.post("/api/daemon/force-rotation", FULL_TOKEN) \
            .status_code == 200
    path = api.cwd / "keys" / "history" / "key-1.json"
    record = json.loads(path.read_text())
    record["fingerprint"] = "0" * 16
    path.write_text(json.dumps(record))

    reply = api.get("/api/daemon/status")
    assert reply.status_code == 503
    body = reply.json()
    assert body["integrity"] == "failed"
    assert body["problem"].startswith("keys/history/key-1.json: ")
    assert body["error"]["code"] == "unhealthy"
    status = api.torro.run("daemon", "status")
    assert status.code == 1
    assert "key-1.json" in status.stdout
    assert "key-1.json" in api.log("security.log")
    assert api.post("/api/daemon/force-rotation", FULL_TOKEN) \
        .status_code == 503


def test_the_first_request_after_a_cli_reset_signs_with_the_new_chain(
    api: ApiDaemon,
) -> None:
    """`torro daemon reset` archives every key: the very next request,
    sent as soon as the command returns, neither reveals nor signs with
    an archived key."""
    old = reveal(api, 0)["key"]
    outcome = api.torro.run("daemon", "reset", "--yes")
    assert outcome.code == 0, outcome.stderr
    issued = api.post(
        "/api/licenses", FULL_TOKEN,
        json={"subject": "acme", "expires": 4102444800},
    ).json()
    assert issued["kid"] == 1
    current = api.get("/api/daemon/current-key", FULL_TOKEN).json()
    assert (current["index"], current["key"] != old) == (1, True)
    assert validate(api, old)["valid"] is False
