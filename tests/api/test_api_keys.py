"""The retained keys over HTTP: current-key, key/{index} and history.

Each test runs a real daemon and checks the answers against what the
key store holds, read through the ``torro`` command and from the files
on disk, and against validate-key: a key revealed as index N must
validate as index N. Fingerprints are computed here from the revealed
key, never taken from the daemon's word.
"""

import json
import re
from collections.abc import Callable
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


KEY_FIELDS = {
    "index", "fingerprint", "created", "algorithm", "length",
    "derived_from", "role", "sealed",
}
_HEX_64 = re.compile(r"[0-9a-f]{64}")


def rotate(api: ApiDaemon, times: int = 1) -> list[int]:
    """Force ``times`` rotations; return the new indexes."""
    indexes = []
    for _ in range(times):
        response = api.post("/api/daemon/force-rotation", token=FULL_TOKEN)
        assert response.status_code == 200, response.text
        indexes.append(response.json()["index"])
    return indexes


def cli_json(api: ApiDaemon, *args: str) -> Any:
    """Run a ``torro`` command with ``--json`` in the daemon's directory.
    """
    outcome = api.torro.run(*args, "--json")
    assert outcome.code == 0, outcome.stderr
    return json.loads(outcome.stdout)


def reveal_lines(api: ApiDaemon) -> list[str]:
    return [
        line for line in api.log("security.log").splitlines()
        if " revealed to " in line
    ]


def test_current_key_is_revealed_to_a_full_token_and_logged(
    api: ApiDaemon,
) -> None:
    """current-key answers the current key with its metadata; the
    fingerprint is SHA-256 of the key bytes, the record on disk agrees,
    the key validates as current, and each reveal is one security-log
    line naming index, fingerprint and token id, never key or token."""
    response = api.get("/api/daemon/current-key", token=FULL_TOKEN)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == KEY_FIELDS | {"key"}
    key = body["key"]
    assert _HEX_64.fullmatch(key)
    assert body["index"] == 0
    assert body["role"] == "current"
    assert body["length"] == 32
    assert body["algorithm"] == "sha256"
    assert body["derived_from"] is None
    assert body["sealed"] is True
    assert body["fingerprint"] == fingerprint_of(key)

    record = json.loads((api.cwd / "keys" / "current.json").read_text())
    assert record["index"] == 0
    assert record["fingerprint"] == body["fingerprint"]
    assert record["timestamp"] == iso_ms(body["created"])
    assert key not in record["key"]

    assert reveal(api, 0) == body
    assert validate(api, key) == {
        "valid": True,
        "current": True,
        "index": 0,
        "fingerprint": fingerprint_of(key),
    }

    lines = reveal_lines(api)
    expected = (
        f"api: key 0 (fingerprint {body['fingerprint']}) revealed to "
        f"full token {token_id(FULL_TOKEN)} from 127.0.0.1"
    )
    assert len(lines) == 2
    assert all(line.endswith(expected) for line in lines)
    logs = all_logs(api)
    assert_no_key_material(logs, [key])
    assert FULL_TOKEN not in logs
    assert READ_TOKEN not in logs


def test_each_retained_key_validates_as_its_own_index(
    api: ApiDaemon,
) -> None:
    """Every retained key revealed by key/{index} validates as that
    index, current only for the newest; the chain of derivation is
    kept; the CLI reveals the same key; a prefix of a key, a changed
    key and an unknown key are not valid."""
    assert rotate(api, 3) == [1, 2, 3]
    keys = {index: reveal(api, index) for index in range(4)}
    assert len({body["key"] for body in keys.values()}) == 4
    for index, body in keys.items():
        assert body["index"] == index
        assert body["fingerprint"] == fingerprint_of(body["key"])
        assert body["derived_from"] == (None if index == 0 else index - 1)
        assert body["role"] == ("current" if index == 3 else "retained")
        check = validate(api, body["key"])
        assert check == {
            "valid": True,
            "current": index == 3,
            "index": index,
            "fingerprint": body["fingerprint"],
        }
    assert validate(api, keys[1]["key"].upper())["index"] == 1

    shown = cli_json(api, "keys", "show", "2", "--reveal")
    assert shown["key"] == keys[2]["key"]
    assert shown["fingerprint"] == keys[2]["fingerprint"]

    current = keys[3]["key"]
    flipped = f"{int(current[0], 16) ^ 1:x}{current[1:]}"
    invalid = {
        "valid": False, "current": False, "index": None, "fingerprint": None,
    }
    assert validate(api, current[:32]) == invalid
    assert validate(api, flipped) == invalid
    assert validate(api, "00" * 32) == invalid
    assert len(reveal_lines(api)) == 4


def test_history_pages_newest_first_with_metadata_only(
    api: ApiDaemon,
) -> None:
    """history lists the retained keys newest first, a page at a time,
    with metadata that the CLI's listing confirms; no key material
    without reveal, to a read-only or a full token, and nothing is
    logged as revealed."""
    rotate(api, 4)
    listed = cli_json(api, "keys", "history")
    assert [row["index"] for row in listed] == [4, 3, 2, 1, 0]

    pages = []
    for page in (1, 2, 3, 4):
        response = api.get(
            "/api/daemon/history",
            token=READ_TOKEN,
            params={"page": page, "per_page": 2},
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["total"], body["page"]) == (5, page)
        assert (body["per_page"], body["pages"]) == (2, 3)
        pages.append(body["keys"])
    assert [[key["index"] for key in page] for page in pages] == [
        [4, 3], [2, 1], [0], [],
    ]
    entries = [key for page in pages for key in page]
    for entry, row in zip(entries, listed, strict=True):
        assert set(entry) == KEY_FIELDS
        assert entry == row
    assert [entry["role"] for entry in entries] == [
        "current", "retained", "retained", "retained", "retained",
    ]

    full = api.get("/api/daemon/history", token=FULL_TOKEN)
    assert full.status_code == 200
    assert full.json() == {
        "keys": entries, "total": 5, "page": 1, "per_page": 20, "pages": 1,
    }
    assert reveal_lines(api) == []

    keys = [reveal(api, index)["key"] for index in range(5)]
    texts = [json.dumps(page) for page in pages] + [full.text]
    for text in texts:
        assert_no_key_material(text, keys)


def test_history_reveal_needs_a_full_token_and_logs_each_key(
    api: ApiDaemon,
) -> None:
    """history?reveal=true gives a full token each key of the page, the
    same as key/{index}, with one log line per key; a read-only token is
    refused with 403, logged, and sees no key."""
    rotate(api, 2)
    response = api.get(
        "/api/daemon/history",
        token=FULL_TOKEN,
        params={"reveal": "true", "per_page": 2},
    )
    assert response.status_code == 200, response.text
    page = response.json()["keys"]
    assert [entry["index"] for entry in page] == [2, 1]
    for entry in page:
        assert entry["fingerprint"] == fingerprint_of(entry["key"])
        assert validate(api, entry["key"])["index"] == entry["index"]
    revealed = re.findall(r"api: key (\d+) ", "\n".join(reveal_lines(api)))
    assert revealed == ["2", "1"]

    refused = api.get(
        "/api/daemon/history", token=READ_TOKEN, params={"reveal": "true"}
    )
    message = assert_error(refused, 403, "forbidden")
    assert "full admin token" in message
    assert_no_key_material(refused.text, [entry["key"] for entry in page])
    assert len(reveal_lines(api)) == 2
    assert (
        f"api: refused reveal=true to read-only token "
        f"{token_id(READ_TOKEN)} from 127.0.0.1 (403)"
    ) in api.log("security.log")
    logs = all_logs(api)
    assert_no_key_material(logs, [entry["key"] for entry in page])
    assert READ_TOKEN not in logs


def test_pruned_and_unknown_indexes_are_404(
    api_factory: Callable[..., ApiDaemon],
) -> None:
    """With KEY_DAEMON_MAX_HISTORY=2, keys beyond retention are gone from
    disk, 404 with a message saying so, and no longer validate; an index
    the ring never had is 404 as well, whatever its size."""
    api = api_factory(KEY_DAEMON_MAX_HISTORY="2")
    first = reveal(api, 0)["key"]
    assert rotate(api, 3) == [1, 2, 3]

    assert not (api.cwd / "keys" / "history" / "key-0.json").exists()
    assert not (api.cwd / "keys" / "history" / "key-1.json").exists()
    for index in (0, 1):
        response = api.get(f"/api/daemon/key/{index}", token=FULL_TOKEN)
        message = assert_error(response, 404, "not_found")
        assert f"key {index} is no longer retained" in message
        assert "oldest retained key is 2" in message
    for index in ("4", "1000000", "99999999999999999999999", "-1"):
        response = api.get(f"/api/daemon/key/{index}", token=FULL_TOKEN)
        message = assert_error(response, 404, "not_found")
        assert "no key with" in message
        assert "indexes run from 2 to 3" in message

    assert validate(api, first) == {
        "valid": False, "current": False, "index": None, "fingerprint": None,
    }
    history = api.get("/api/daemon/history", token=READ_TOKEN).json()
    assert [entry["index"] for entry in history["keys"]] == [3, 2]
    assert history["total"] == 2
    assert reveal(api, 2)["role"] == "retained"
