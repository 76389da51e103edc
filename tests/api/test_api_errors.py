"""Every error the API promises, over real HTTP, in its one JSON shape.

``{"error": {"code", "message"}}`` with 400 for a body that is not JSON
or a key that is not hex, 404 for no such endpoint, index or retained
key, 405 for a wrong method, 413 for a body over 16 KiB, 422 for input
of the wrong type or range, 429 past the rate limit (503 is in
test_api_status). Never a 5xx for anything a client can send, never a
traceback, never the key or the token the client sent.
"""

import json
import time
from collections.abc import Callable, Iterator

import httpx
from api_checks import (
    FULL_TOKEN,
    ApiDaemon,
    all_logs,
    assert_error,
    assert_no_key_material,
    raw_request,
    reveal,
)


VALIDATE = "/api/daemon/validate-key"
MAX_BODY = 16 * 1024


def post_body(api: ApiDaemon, content: bytes,
              token: str | None = None,
              path: str = VALIDATE) -> httpx.Response:
    """POST ``content`` as JSON, with ``token`` as a bearer token."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return api.client.post(path, content=content, headers=headers)


def test_body_that_is_not_json_is_400(api: ApiDaemon) -> None:
    """An empty body, broken JSON, bytes that are not UTF-8 and nesting
    too deep to parse are 400 malformed_json, on a public endpoint and
    on a full-token one."""
    bodies = [
        b"",
        b" \n",
        b"{",
        b'{"key": "00"',
        b"key=00",
        b'{"key": "\xff\xfe"}',
        b"[" * 5000 + b"]" * 5000,
    ]
    for content in bodies:
        assert_error(post_body(api, content), 400, "malformed_json")
        assert_error(
            post_body(api, content, FULL_TOKEN, "/api/daemon/reset"),
            400, "malformed_json",
        )


def test_key_that_is_not_hex_is_400_and_never_echoed(api: ApiDaemon) -> None:
    """validate-key refuses a key that is not an even number of hex
    digits with 400 invalid_key, and the message never repeats it."""
    for key in ("", "0", "abc", "zz", "0x00", "ab cd", "00\n", "é0",
                "deadbeefcafe-secret-ish-0123"):
        response = api.post(VALIDATE, json={"key": key})
        message = assert_error(response, 400, "invalid_key")
        assert "hex" in message
        if len(key) > 4:
            assert key not in response.text


def test_wrong_types_and_ranges_are_422(api: ApiDaemon) -> None:
    """Fields of the wrong type (no coercion: 1 is not "1"), missing or
    extra fields, a body that is not an object, a key over 2048 hex
    digits, and query or path parameters out of range are 422
    invalid_request; an extra field is not named back."""
    for body in (
        {"key": 123},
        {"key": None},
        {"key": True},
        {"key": ["00"]},
        {"key": {"00": "00"}},
        {},
        {"key": "00", "secret-field-name": 1},
        [],
        ["00"],
        "00",
        1,
        None,
        {"key": "00" * 1025},
    ):
        response = api.post(VALIDATE, content=json.dumps(body))
        message = assert_error(response, 422, "invalid_request")
        assert "secret-field-name" not in message
    for query in (
        {"page": "0"},
        {"page": "-1"},
        {"page": "one"},
        {"page": "1.5"},
        {"per_page": "0"},
        {"per_page": "101"},
        {"reveal": "maybe"},
    ):
        response = api.get("/api/daemon/history", token=FULL_TOKEN,
                           params=query)
        message = assert_error(response, 422, "invalid_request")
        assert message.startswith(next(iter(query)) + ": ")
    response = api.post("/api/daemon/reset", token=FULL_TOKEN,
                        json={"confirm": 1})
    assert assert_error(response, 422, "invalid_request").startswith(
        "confirm: "
    )


def test_unknown_paths_and_path_tricks_are_404_or_422(
    api: ApiDaemon,
) -> None:
    """Paths sent byte for byte: unknown ones, dot segments, doubled or
    trailing slashes are 404 (never a redirect); key indexes that are
    negative or beyond any integer the ring could reach are 404, and
    ones that are not integers at all are 422; nothing is a 5xx."""
    headers = {"Authorization": f"Bearer {FULL_TOKEN}"}
    not_found = [
        "/",
        "/nope",
        "/api",
        "/api/daemon",
        "/api/daemon/",
        "/api/daemon/status/",
        "//api/daemon/status",
        "/API/daemon/status",
        "/api/daemon/key",
        "/api/daemon/key/",
        "/api/daemon/key/0/",
        "/api/daemon/key/0/../../status",
        "/api/daemon/./status",
        "/api/daemon/key/-1",
        "/api/daemon/key/99999999999999999999999",
        "/api/daemon/key/1000000000000000000000000000000000000000000",
    ]
    for path in not_found:
        response = raw_request(api, "GET", path, headers)
        assert_error(response, 404, "not_found")
    unparsable = [
        "/api/daemon/key/..",
        "/api/daemon/key/%2e%2e",
        "/api/daemon/key/abc",
        "/api/daemon/key/0x1",
        "/api/daemon/key/1e3",
        "/api/daemon/key/0.5",
        "/api/daemon/key/%00",
        "/api/daemon/key/%F0%9F%94%91",
        "/api/daemon/key/nan",
        "/api/daemon/key/1_0",
        "/api/daemon/key/00",
        "/api/daemon/key/+0",
        "/api/daemon/key/-0",
        "/api/daemon/key/%200",
        "/api/daemon/key/1.0",
    ]
    for path in unparsable:
        response = raw_request(api, "GET", path, headers)
        assert_error(response, 422, "invalid_request")
    assert "Traceback" not in all_logs(api)


def test_wrong_method_is_405_naming_the_allowed_ones(api: ApiDaemon) -> None:
    """A known path with another method is 405 with an Allow header."""
    for method, path, allowed in (
        ("POST", "/api/daemon/status", "GET"),
        ("DELETE", "/api/daemon/key/0", "GET"),
        ("GET", "/api/daemon/force-rotation", "POST"),
        ("PUT", VALIDATE, "POST"),
        ("POST", "/metrics", "GET"),
    ):
        response = raw_request(
            api, method, path, {"Authorization": f"Bearer {FULL_TOKEN}"}
        )
        assert_error(response, 405, "method_not_allowed")
        assert allowed in response.headers["allow"].split(", ")


def test_body_over_16_kib_is_413(api: ApiDaemon) -> None:
    """A body of exactly 16 KiB is read; one byte more is 413, whether
    its length is declared or it comes in chunks, on public and admin
    endpoints alike; a refused reset changes nothing."""
    small = b'{"key": "00"}'
    exact = small + b" " * (MAX_BODY - len(small))
    response = post_body(api, exact)
    assert response.status_code == 200, response.text
    assert response.json()["valid"] is False
    over = exact + b" "
    assert_error(post_body(api, over), 413, "body_too_large")

    def chunks() -> Iterator[bytes]:
        yield small[:-1]
        for _ in range(20):
            yield b" " * 1024
        yield b"}"

    chunked = api.post(VALIDATE, content=chunks())
    assert_error(chunked, 413, "body_too_large")

    before = (api.cwd / "keys" / "current.json").read_bytes()
    reset = b'{"confirm": "reset"}' + b" " * MAX_BODY
    assert_error(post_body(api, reset, FULL_TOKEN, "/api/daemon/reset"),
                 413, "body_too_large")
    assert (api.cwd / "keys" / "current.json").read_bytes() == before
    assert not list(api.cwd.glob("keys.archive-*"))


def test_errors_never_hold_the_key_sent(api: ApiDaemon) -> None:
    """The real current key, sent in bodies that fail (bad hex, too
    long, an extra field, a wrong type), is in no error answer and in no
    log; sent as a key index, it is in neither the 422 nor the log."""
    key = reveal(api, 0)["key"]
    for body in (
        {"key": key + "zz"},
        {"key": key + "0"},
        {"key": key * 40},
        {"key": key, "extra": key},
        {"key": [key]},
        {key: key},
    ):
        response = api.post(VALIDATE, content=json.dumps(body))
        assert response.status_code in (400, 422), response.text
        assert_no_key_material(response.text, [key])
    response = api.get(f"/api/daemon/key/{key}", token=FULL_TOKEN)
    assert_error(response, 422, "invalid_request")
    assert_no_key_material(response.text, [key])
    assert_no_key_material(all_logs(api), [key])


def test_rate_limit_is_429_with_retry_after_per_client_address(
    api_factory: Callable[..., ApiDaemon],
) -> None:
    """With KEY_DAEMON_RATE_LIMIT=3, a client address gets three
    validate-key calls a minute: the fourth is 429 with Retry-After, so
    is a malformed one (the limit comes first), and X-Forwarded-For
    neither helps nor changes the address logged; another address still
    gets its own three; GET endpoints are not limited; the security log
    says so once per address."""
    api = api_factory(KEY_DAEMON_RATE_LIMIT="3")
    for _ in range(3):
        assert api.post(VALIDATE, json={"key": "00"}).status_code == 200
    started = time.monotonic()
    limited = api.post(VALIDATE, json={"key": "00"})
    message = assert_error(limited, 429, "rate_limited")
    retry = int(limited.headers["retry-after"])
    assert 1 <= retry <= 20
    assert f"retry in {retry} s" in message
    assert_error(post_body(api, b"{"), 429, "rate_limited")
    spoofed = api.client.post(
        VALIDATE, json={"key": "00"},
        headers={"X-Forwarded-For": "203.0.113.9"},
    )
    assert_error(spoofed, 429, "rate_limited")
    stats = api.client.get(
        "/api/daemon/stats",
        headers={"X-Forwarded-For": "203.0.113.9",
                 "Authorization": f"Bearer {FULL_TOKEN}"},
    )
    assert stats.status_code == 200

    other = httpx.Client(
        base_url=api.url,
        transport=httpx.HTTPTransport(local_address="127.0.0.2"),
    )
    with other:
        for _ in range(3):
            response = other.post(VALIDATE, json={"key": "00"})
            assert response.status_code == 200, response.text
        assert_error(other.post(VALIDATE, json={"key": "00"}), 429,
                     "rate_limited")

    for path in ("/api/daemon/status", "/metrics"):
        for _ in range(5):
            assert api.get(path).status_code == 200
    assert api.get("/api/daemon/stats", token=FULL_TOKEN).status_code == 200
    assert time.monotonic() - started < retry
    security = api.log("security.log")
    assert "203.0.113.9" not in security
    for address in ("127.0.0.1", "127.0.0.2"):
        assert security.count(
            f"api: rate limit reached by {address} on POST {VALIDATE}"
        ) == 1
