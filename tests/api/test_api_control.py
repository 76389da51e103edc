"""force-rotation and reset over HTTP, checked against the store on disk.

A forced rotation must really rotate (a new current key, which the files
and the ``torro`` command both show) and answer its index, timestamp and
fingerprint, never the key. A reset needs ``{"confirm": "reset"}``,
archives the old store beside it and starts a new chain whose indexes
continue the old ones. A refused request changes nothing on disk.
"""

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from api_checks import (
    FULL_TOKEN,
    READ_TOKEN,
    ApiDaemon,
    all_logs,
    assert_error,
    assert_no_key_material,
    fingerprint_of,
    iso_ms,
    reveal,
    token_id,
    validate,
)


def store_digest(root: Path) -> dict[str, str]:
    """The SHA-256 of every file under ``root``, by relative path."""
    return {
        str(path.relative_to(root)): hashlib.sha256(
            path.read_bytes()
        ).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != ".lock"
    }


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def cli_history(api: ApiDaemon) -> list[dict[str, Any]]:
    outcome = api.torro.run("keys", "history", "--json")
    assert outcome.code == 0, outcome.stderr
    rows: list[dict[str, Any]] = json.loads(outcome.stdout)
    return rows


def test_force_rotation_rotates_and_answers_the_index_not_the_key(
    api: ApiDaemon,
) -> None:
    """Each forced rotation makes a new current key although none is due
    (the interval is an hour): current.json, history.json and the CLI
    name it, its fingerprint is that of the key key/{index} reveals, the
    answer holds no key, the stats count it, and the security log names
    the index and the token id."""
    before = api.get("/api/daemon/stats", token=READ_TOKEN).json()
    started = time.time() * 1000
    response = api.post("/api/daemon/force-rotation", token=FULL_TOKEN)
    finished = time.time() * 1000
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"index", "timestamp", "fingerprint",
                         "duration_seconds"}
    assert body["index"] == 1
    assert started - 5 <= iso_ms(body["timestamp"]) <= finished + 5
    assert 0 < body["duration_seconds"] < 10

    root = api.cwd / "keys"
    current = read_json(root / "current.json")
    assert current["index"] == 1
    assert current["fingerprint"] == body["fingerprint"]
    assert current["timestamp"] == iso_ms(body["timestamp"])
    assert current["derivedFrom"] == 0
    assert read_json(root / "history.json")["current"] == 1
    assert (root / "history" / "key-1.json").is_file()
    rows = cli_history(api)
    assert [(row["index"], row["role"]) for row in rows] == [
        (1, "current"), (0, "retained"),
    ]
    assert rows[0]["fingerprint"] == body["fingerprint"]

    keys = [reveal(api, 0)["key"], reveal(api, 1)["key"]]
    assert fingerprint_of(keys[1]) == body["fingerprint"]
    assert validate(api, keys[1])["current"] is True
    assert validate(api, keys[0]) == {
        "valid": True, "current": False, "index": 0,
        "fingerprint": fingerprint_of(keys[0]),
    }
    assert_no_key_material(response.text, keys)

    after = api.get("/api/daemon/stats", token=READ_TOKEN).json()
    assert after["rotations"] == before["rotations"] + 1
    assert after["current_index"] == 1
    assert round(after["last_rotation_duration_seconds"], 6) == \
        body["duration_seconds"]

    second = api.post("/api/daemon/force-rotation", token=FULL_TOKEN)
    assert second.status_code == 200
    assert second.json()["index"] == 2
    assert read_json(root / "current.json")["index"] == 2

    assert (
        f"api: key rotated to 1 (fingerprint {body['fingerprint']}) by "
        f"full token {token_id(FULL_TOKEN)} from 127.0.0.1"
    ) in api.log("security.log")
    logs = all_logs(api)
    assert_no_key_material(logs, keys)
    assert FULL_TOKEN not in logs


def test_refused_control_requests_change_nothing(api: ApiDaemon) -> None:
    """force-rotation and reset without a token (401), with a wrong one
    or a read-only one (403), leave every file of the store as it was."""
    root = api.cwd / "keys"
    before = store_digest(root)
    for path, body in (
        ("/api/daemon/force-rotation", None),
        ("/api/daemon/reset", {"confirm": "reset"}),
    ):
        assert_error(api.post(path, json=body), 401, "unauthorized")
        for token in (READ_TOKEN, "x" * 40):
            assert_error(api.post(path, token=token, json=body), 403,
                         "forbidden")
    assert store_digest(root) == before
    assert not list(api.cwd.glob("keys.archive-*"))


def test_reset_without_its_confirmation_changes_nothing(
    api: ApiDaemon,
) -> None:
    """reset refuses a missing body or bad JSON (400) and anything but
    exactly {"confirm": "reset"} (422), and the store stays as it was."""
    root = api.cwd / "keys"
    before = store_digest(root)
    for content in (b"", b"   ", b"{", b"confirm=reset"):
        response = api.post(
            "/api/daemon/reset", token=FULL_TOKEN, content=content
        )
        assert_error(response, 400, "malformed_json")
    for body in (
        {},
        {"confirm": "yes"},
        {"confirm": "RESET"},
        {"confirm": " reset"},
        {"confirm": True},
        {"confirm": ["reset"]},
        {"confirm": "reset", "purge": True},
        ["reset"],
        "reset",
        None,
    ):
        response = api.post(
            "/api/daemon/reset", token=FULL_TOKEN, content=json.dumps(body)
        )
        assert_error(response, 422, "invalid_request")
    assert store_digest(root) == before
    assert not list(api.cwd.glob("keys.archive-*"))
    assert reveal(api, 0)["role"] == "current"


def test_reset_archives_every_key_and_starts_a_new_chain(
    api: ApiDaemon,
) -> None:
    """A confirmed reset moves the old store to an archive beside it,
    starts a new chain at the next unused index, and from then on the
    old keys neither validate nor reveal (404, no longer retained); the
    CLI sees the new chain, rotation continues from it, and the answer
    and the logs hold no key."""
    for _ in range(2):
        assert api.post(
            "/api/daemon/force-rotation", token=FULL_TOKEN
        ).status_code == 200
    old = [reveal(api, index) for index in range(3)]

    response = api.post(
        "/api/daemon/reset", token=FULL_TOKEN, json={"confirm": "reset"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"index", "timestamp", "fingerprint", "archive",
                         "archived_keys"}
    assert body["index"] == 3
    assert body["archived_keys"] == 3

    archive = api.cwd / body["archive"]
    assert archive.is_dir()
    assert archive.name.startswith("keys.archive-")
    assert read_json(archive / "current.json")["index"] == 2
    assert sorted(p.name for p in (archive / "history").iterdir()) == [
        "key-0.json", "key-1.json", "key-2.json",
    ]

    new = reveal(api, 3)
    assert new["role"] == "current"
    assert new["derived_from"] is None
    assert new["fingerprint"] == body["fingerprint"] == \
        fingerprint_of(new["key"])
    assert read_json(api.cwd / "keys" / "current.json")["index"] == 3
    assert [row["index"] for row in cli_history(api)] == [3]
    history = api.get("/api/daemon/history", token=READ_TOKEN).json()
    assert [entry["index"] for entry in history["keys"]] == [3]

    for entry in old:
        assert validate(api, entry["key"])["valid"] is False
        gone = api.get(f"/api/daemon/key/{entry['index']}",
                       token=FULL_TOKEN)
        message = assert_error(gone, 404, "not_found")
        assert "no longer retained" in message
    assert validate(api, new["key"])["index"] == 3

    rotated = api.post("/api/daemon/force-rotation", token=FULL_TOKEN)
    assert rotated.json()["index"] == 4
    assert reveal(api, 4)["derived_from"] == 3

    keys = [entry["key"] for entry in old] + [new["key"]]
    assert_no_key_material(response.text, keys)
    assert (
        f"api: key store reset by full token {token_id(FULL_TOKEN)} from "
        "127.0.0.1: new chain at key 3, 3 keys archived"
    ) in api.log("security.log")
    logs = all_logs(api)
    assert_no_key_material(logs, keys)
    assert FULL_TOKEN not in logs
