"""Checks shared by the API tests: error bodies, secrets, keys and logs.

Plain functions, not fixtures. The tokens come from api_daemon.py, the
one module that starts daemons.
"""

import datetime
import hashlib
import http.client
import json
from collections.abc import Iterable
from typing import Any

import httpx
from api_daemon import FULL_TOKEN, READ_TOKEN, ApiDaemon


__all__ = [
    "FULL_TOKEN",
    "READ_TOKEN",
    "ApiDaemon",
    "all_logs",
    "assert_error",
    "assert_no_key_material",
    "fingerprint_of",
    "iso_ms",
    "raw_request",
    "reveal",
    "token_id",
    "validate",
]

# A run of this many hex digits of a key found in a text counts as a leak:
# a fingerprint (16 digits) matches one only by a 48-bit coincidence.
LEAK_WINDOW = 12


def assert_error(
    response: "httpx.Response | RawResponse", status: int, code: str
) -> str:
    """Check an error answer: its status, JSON shape and code.

    :returns: the message, for the caller to check further.
    """
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    message = body["error"]["message"]
    assert isinstance(message, str) and message, body
    assert "Traceback" not in response.text
    assert 'File "' not in response.text
    return message


def fingerprint_of(key_hex: str) -> str:
    """The fingerprint of a key as material.py defines it, computed here:
    the first 8 bytes of SHA-256 over the key bytes, as hex."""
    return hashlib.sha256(bytes.fromhex(key_hex)).hexdigest()[:16]


def token_id(token: str) -> str:
    """The id logs name a token by: 8 hex digits of its SHA-256."""
    return hashlib.sha256(token.encode()).hexdigest()[:8]


def assert_no_key_material(text: str, keys: Iterable[str]) -> None:
    """Fail if ``text`` holds any run of :data:`LEAK_WINDOW` hex digits
    of any of ``keys`` (a prefix included), in either case."""
    lowered = text.lower()
    for key in keys:
        key = key.lower()
        for start in range(len(key) - LEAK_WINDOW + 1):
            run = key[start:start + LEAK_WINDOW]
            assert run not in lowered, (
                f"hex digits {start}..{start + LEAK_WINDOW} of a key "
                "appear in the text"
            )


def all_logs(api: ApiDaemon) -> str:
    """Every log file of the daemon's directory, and its stderr."""
    texts = [
        path.read_text(errors="replace")
        for path in sorted((api.cwd / "logs").glob("*"))
        if path.is_file()
    ]
    stderr = api.cwd / "daemon.stderr"
    if stderr.exists():
        texts.append(stderr.read_text(errors="replace"))
    return "\n".join(texts)


def iso_ms(text: str) -> int:
    """Milliseconds since the epoch of an ISO 8601 time ending in Z."""
    assert text.endswith("Z"), text
    moment = datetime.datetime.fromisoformat(text)
    assert moment.utcoffset() == datetime.timedelta(0)
    return round(moment.timestamp() * 1000)


def reveal(api: ApiDaemon, index: int) -> dict[str, Any]:
    """GET key/{index} with the full token; the answer must be 200."""
    response = api.get(f"/api/daemon/key/{index}", token=FULL_TOKEN)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def validate(api: ApiDaemon, key_hex: str) -> dict[str, Any]:
    """POST a key to validate-key, without a token; must be 200."""
    response = api.post(
        "/api/daemon/validate-key", content=json.dumps({"key": key_hex})
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


class RawResponse:
    """An answer read off the socket, the request sent byte for byte."""

    def __init__(
        self, status: int, headers: dict[str, str], body: bytes
    ) -> None:
        self.status_code = status
        self.headers = headers
        self.content = body
        self.text = body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


def raw_request(
    api: ApiDaemon,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> RawResponse:
    """Send a request with ``path`` exactly as given: no client
    normalises its dots, slashes or escapes."""
    url = httpx.URL(api.url)
    connection = http.client.HTTPConnection(url.host, url.port, timeout=15)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        answer = connection.getresponse()
        found = {name.lower(): value for name, value in answer.getheaders()}
        return RawResponse(answer.status, found, answer.read())
    finally:
        connection.close()
