"""Who may call what: bearer tokens of two roles, over real HTTP.

No token configured at all is 403 with advice; a missing or malformed
Authorization header is 401 with ``WWW-Authenticate: Bearer``; a wrong
token, or a read-only one where a full one is needed, is 403. Tokens
made by ``torro admin-token create`` work on a running daemon at once
and stop working when their line is deleted. Every admin call and every
refusal is one security-log line naming the token by id, never the
token itself.
"""

import hashlib
import os
import stat
from collections.abc import Callable
from typing import Any

import httpx
from api_checks import (
    FULL_TOKEN,
    READ_TOKEN,
    ApiDaemon,
    all_logs,
    assert_error,
    token_id,
)


# Every admin endpoint, with what a request to it carries.
FULL_ONLY: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/api/daemon/current-key", {}),
    ("GET", "/api/daemon/key/0", {}),
    ("GET", "/api/daemon/history", {"params": {"reveal": "true"}}),
    ("POST", "/api/daemon/force-rotation", {}),
    ("POST", "/api/daemon/reset", {"json": {"confirm": "reset"}}),
]
READ_OK: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/api/daemon/history", {}),
    ("GET", "/api/daemon/stats", {}),
]
ADMIN = FULL_ONLY + READ_OK
MALFORMED = [
    "",
    "Bearer",
    f"Basic {FULL_TOKEN}",
    f"Token {FULL_TOKEN}",
    FULL_TOKEN,
    f"Bearer {FULL_TOKEN} {FULL_TOKEN}",
    f"Bearer{FULL_TOKEN}",
]
WRONG_TOKEN = "a-token-this-daemon-never-issued-0123456789"
NO_TOKEN_SETTINGS: dict[str, str | None] = {
    "KEY_DAEMON_ADMIN_TOKENS": None,
    "KEY_DAEMON_READ_TOKENS": None,
}


def logged(path: str) -> str:
    """Return the path as the security log names it: as declared."""
    return path.replace("/key/0", "/key/{index}")


def call(
    api: ApiDaemon,
    method: str,
    path: str,
    authorization: str | None = None,
    **options: Any,
) -> httpx.Response:
    """Send one request with this Authorization header, or none."""
    headers = {} if authorization is None \
        else {"Authorization": authorization}
    return api.client.request(method, path, headers=headers, **options)


def bearer(token: str) -> str:
    return f"Bearer {token}"


def refusals(api: ApiDaemon) -> list[str]:
    return [
        line for line in api.log("security.log").splitlines()
        if "api: refused" in line
    ]


def create_token(api: ApiDaemon, *options: str) -> str:
    """Run ``torro admin-token create`` beside the daemon; return the
    token it printed, checking that only its hash was kept."""
    outcome = api.torro.run(
        "admin-token", "create", *options,
        env={"KEY_DAEMON_ADMIN_TOKEN_FILE": "admin-tokens"},
    )
    assert outcome.code == 0, outcome.stderr
    token = outcome.stdout.strip()
    assert len(token) == 43
    assert f"admin token {token_id(token)} in admin-tokens" in outcome.stderr
    text = (api.cwd / "admin-tokens").read_text()
    assert token not in text
    assert hashlib.sha256(token.encode()).hexdigest() in text
    return token


def test_no_token_configured_refuses_every_admin_call_with_advice(
    api_factory: Callable[..., ApiDaemon],
) -> None:
    """With no token variable and no token file, every admin endpoint is
    403 whatever the caller sends, saying how to make a token; status
    stays public without a header and refuses one with a header."""
    api = api_factory(
        **NO_TOKEN_SETTINGS, KEY_DAEMON_ADMIN_TOKEN_FILE=None
    )
    for method, path, options in ADMIN:
        for authorization in (None, bearer(FULL_TOKEN), "Basic x"):
            response = call(api, method, path, authorization, **options)
            message = assert_error(response, 403, "forbidden")
            assert "torro admin-token create" in message
            assert "KEY_DAEMON_ADMIN_TOKENS" in message
    assert api.get("/api/daemon/status").status_code == 200
    status = call(api, "GET", "/api/daemon/status", bearer(FULL_TOKEN))
    assert "torro admin-token create" in assert_error(status, 403,
                                                      "forbidden")
    lines = refusals(api)
    assert len(lines) == 3 * len(ADMIN) + 1
    assert all(line.endswith(": no token set (403)") for line in lines)
    assert not (api.cwd / "keys" / "history" / "key-1.json").exists()


def test_missing_or_malformed_header_is_401_with_a_challenge(
    api: ApiDaemon,
) -> None:
    """No Authorization header, or one that is not exactly ``Bearer
    <token>``, is 401 with WWW-Authenticate: Bearer on every admin
    endpoint and on status, each refusal logged with its reason."""
    paths = [*ADMIN, ("GET", "/api/daemon/status", {})]
    for method, path, options in paths:
        for authorization in [None, *MALFORMED]:
            response = call(api, method, path, authorization, **options)
            if authorization is None and path == "/api/daemon/status":
                assert response.status_code == 200
                continue
            message = assert_error(response, 401, "unauthorized")
            assert "Bearer" in message
            assert response.headers["www-authenticate"] == "Bearer"
    lines = refusals(api)
    assert len(lines) == len(paths) * (len(MALFORMED) + 1) - 1
    missing = [line for line in lines if "no Authorization header" in line]
    malformed = [line for line in lines
                 if "malformed Authorization header (401)" in line]
    assert len(missing) == len(ADMIN)
    assert len(malformed) == len(paths) * len(MALFORMED)
    assert not (api.cwd / "keys" / "history" / "key-1.json").exists()
    assert FULL_TOKEN not in all_logs(api)


def test_wrong_or_read_only_token_is_403_and_full_token_passes(
    api: ApiDaemon,
) -> None:
    """A token the daemon does not know is 403 everywhere; the read-only
    token is 403 on the full-token endpoints and 200 on stats and
    history; the full token passes everywhere. Refused calls change
    nothing on disk, and each call is logged by token id only."""
    current = (api.cwd / "keys" / "current.json").read_bytes()
    for method, path, options in ADMIN:
        response = call(api, method, path, bearer(WRONG_TOKEN), **options)
        assert assert_error(response, 403, "forbidden") == \
            "the token is not valid"
    for method, path, options in FULL_ONLY:
        response = call(api, method, path, bearer(READ_TOKEN), **options)
        message = assert_error(response, 403, "forbidden")
        assert "full admin token" in message
    assert (api.cwd / "keys" / "current.json").read_bytes() == current
    for method, path, options in READ_OK:
        response = call(api, method, path, bearer(READ_TOKEN), **options)
        assert response.status_code == 200, response.text
    for method, path, options in ADMIN:
        response = call(api, method, path, bearer(FULL_TOKEN), **options)
        assert response.status_code == 200, (path, response.text)

    security = api.log("security.log")
    read_id, full_id = token_id(READ_TOKEN), token_id(FULL_TOKEN)
    unknown = [line for line in refusals(api) if "unknown token" in line]
    assert len(unknown) == len(ADMIN)
    for method, path, _ in FULL_ONLY:
        path = logged(path)
        if path == "/api/daemon/history":
            assert (
                f"api: refused reveal=true to read-only token {read_id} "
                "from 127.0.0.1 (403)"
            ) in security
        else:
            assert (
                f"api: refused {method} {path} from 127.0.0.1: read-only "
                f"token {read_id} on a full-token endpoint (403)"
            ) in security
    for method, path, _ in ADMIN:
        path = logged(path)
        assert f"api: {method} {path} by full token {full_id} from " \
            "127.0.0.1" in security
    for method, path, _ in READ_OK:
        assert f"api: {method} {path} by read token {read_id} from " \
            "127.0.0.1" in security
    logs = all_logs(api)
    for token in (FULL_TOKEN, READ_TOKEN, WRONG_TOKEN):
        assert token not in logs


def test_created_tokens_work_at_once_and_deleting_a_line_revokes(
    api: ApiDaemon,
) -> None:
    """Tokens made by ``torro admin-token create`` while the daemon runs
    are accepted at once with their role (the file is 0600 and holds
    only hashes); deleting a token's line revokes it, without a restart.
    The new tokens appear in no log, only their ids."""
    pid = api.process.pid
    full = create_token(api)
    read = create_token(api, "--read-only")
    token_file = api.cwd / "admin-tokens"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600

    assert api.get("/api/daemon/current-key", token=full).status_code == 200
    assert api.get("/api/daemon/stats", token=read).status_code == 200
    assert_error(api.get("/api/daemon/current-key", token=read), 403,
                 "forbidden")
    assert api.get("/api/daemon/stats", token=FULL_TOKEN).status_code == 200

    lines = token_file.read_text().splitlines(keepends=True)
    full_hash = hashlib.sha256(full.encode()).hexdigest()
    token_file.write_text(
        "".join(line for line in lines if full_hash not in line)
    )
    refused = api.get("/api/daemon/current-key", token=full)
    assert assert_error(refused, 403, "forbidden") == \
        "the token is not valid"
    assert api.get("/api/daemon/stats", token=read).status_code == 200
    token_file.write_text(lines[0])
    assert_error(api.get("/api/daemon/stats", token=read), 403,
                 "forbidden")
    assert api.get("/api/daemon/stats", token=FULL_TOKEN).status_code == 200
    assert api.process.poll() is None and api.process.pid == pid

    security = api.log("security.log")
    assert f"by full token {token_id(full)} from 127.0.0.1" in security
    assert f"by read token {token_id(read)} from 127.0.0.1" in security
    assert f"read-only token {token_id(read)} on a full-token" in security
    logs = all_logs(api)
    for token in (full, read, FULL_TOKEN, READ_TOKEN):
        assert token not in logs


def test_token_file_alone_opens_the_api_once_a_token_is_made(
    api_factory: Callable[..., ApiDaemon],
) -> None:
    """A daemon with a token file that does not exist yet and no token
    variables refuses every admin call with advice; a token created
    then is accepted without a restart; removing the file closes the
    API again."""
    api = api_factory(**NO_TOKEN_SETTINGS)
    before = api.get("/api/daemon/stats", token=FULL_TOKEN)
    assert "torro admin-token create" in assert_error(before, 403,
                                                      "forbidden")
    token = create_token(api)
    assert api.get("/api/daemon/stats", token=token).status_code == 200
    response = api.get("/api/daemon/current-key", token=token)
    assert response.status_code == 200
    os.unlink(api.cwd / "admin-tokens")
    after = api.get("/api/daemon/stats", token=token)
    assert "torro admin-token create" in assert_error(after, 403,
                                                      "forbidden")
    assert token not in all_logs(api)


def test_odd_token_bytes_are_refused_not_crashed_on(api: ApiDaemon) -> None:
    """A token that is not UTF-8, or is very long, is a plain 403."""
    for header in (
        b"Bearer \xff\xfe-not-utf8-token-0123456789",
        b"Bearer " + b"x" * 4000,
    ):
        response = api.client.get(
            "/api/daemon/stats", headers=[(b"Authorization", header)]
        )
        assert_error(response, 403, "forbidden")
