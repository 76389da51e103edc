"""Reliability campaign, "hostile input": a table of hostile requests.

One real daemon with its API takes every request of a table, each sent
byte for byte on its own connection, each with the answer it must get:
a status and an error code, or for a license the reason it is invalid.
What the issue asks and the other API tests do not send is here:

* bodies: over 16 KiB (declared, sent, or a declared length of a
  terabyte) on every POST endpoint, invalid UTF-8 (bad bytes, overlong
  forms, encoded surrogates), JSON nested thousands deep, NaN and
  5000-digit numbers;
* ``key/{index}``: negative, huge, ``..``, ``%2e%2e``, encoded slashes,
  non-numeric, Unicode digits (escaped and raw), leading zeros,
  whitespace, NUL, a 100,000-digit index;
* headers: a megabyte of header, a 12 KB token, bytes that are not
  ASCII, NUL, two Authorization headers, other schemes; framing that
  is not HTTP (a TLS hello, a negative Content-Length, a bad chunk);
* licenses: forged claims, stripped and borrowed signatures, ``alg:
  none`` in several spellings, algorithm confusion (an HS256 token
  whose HMAC key is the Ed25519 public key from the JWKS, raw, as its
  base64 ``x`` or as PEM; an EdDSA token where HS256 is expected,
  signed by another key or carrying its own), other algorithms, and
  ``kid`` tricks (negative, huge, non-numeric, paths, Unicode digits,
  not a string).

No answer is a 5xx or holds a traceback; every error is the JSON error
shape; afterwards the daemon is healthy, its current key unchanged, its
system log without a traceback, and no key, master key or token is in
any answer or log. The campaign version adds seeded mutations of real
licenses, of kids and of key paths (about 5,000 requests).
"""

import base64
import hashlib
import hmac
import json
import os
import random
import re
import socket
import time
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx
import leaks
import pytest
from api_checks import FULL_TOKEN, READ_TOKEN, ApiDaemon
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

if TYPE_CHECKING:
    import campaign


DEFAULT_SEED = 20261207
MAX_BODY = 16 * 1024
VALIDATE_KEY = "/api/daemon/validate-key"
VALIDATE = "/api/licenses/validate"
ISSUE = "/api/licenses"
RESET = "/api/daemon/reset"
FULL = f"Bearer {FULL_TOKEN}"
CANONICAL = re.compile(r"0|[1-9][0-9]*")
# What a license check may answer: "reason:<reason>" (200, invalid),
# "valid" (200, valid), or an error code.
LICENSE_REASONS = (
    "malformed", "bad_signature", "wrong_algorithm", "unknown_kid",
    "key_retired", "expired", "not_yet_valid",
)


class Hostile:
    """One request of the table and the answer it must get.

    :param raw: the request, byte for byte.
    :param status: the status it must be answered with.
    :param expect: the error code, ``reason:<reason>`` for an invalid
        license, ``valid`` for a valid one, ``ok`` for any success.
    :param hostile: False for a control request that must succeed.
    """

    def __init__(self, name: str, raw: bytes, status: int, expect: str,
                 hostile: bool = True) -> None:
        self.name = name
        self.raw = raw
        self.status = status
        self.expect = expect
        self.hostile = hostile


def request(
    method: str,
    path: str | bytes,
    *,
    headers: list[bytes] | None = None,
    body: bytes | None = None,
    auth: str | None = None,
) -> bytes:
    """Return a request with a Content-Length, closing the connection."""
    target = path if isinstance(path, bytes) else path.encode("ascii")
    lines = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: t"]
    if auth is not None:
        lines.append(b"Authorization: " + auth.encode("latin-1"))
    lines += headers or []
    if body is not None:
        lines.append(b"Content-Type: application/json")
        lines.append(b"Content-Length: " + str(len(body)).encode())
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


def send(url: str, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw`` on a new connection; return the answer's status,
    headers and body."""
    address = httpx.URL(url)
    with socket.create_connection((address.host, address.port),
                                  timeout=20) as connection:
        try:
            connection.sendall(raw)
        except (BrokenPipeError, ConnectionResetError):
            # refused before it was all sent: the answer is still there
            pass
        received = b""
        while True:
            try:
                chunk = connection.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 "), received[:200]
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = body[:int(headers["content-length"])]
    return status, headers, body


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def compact(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def craft(
    header: dict[str, Any] | bytes,
    payload: dict[str, Any] | bytes,
    sign: Callable[[bytes], bytes] | None = None,
) -> str:
    """Make a token by hand: ``sign`` signs it, or it has no signature."""
    if isinstance(header, dict):
        header = compact(header)
    if isinstance(payload, dict):
        payload = compact(payload)
    signing_input = f"{b64(header)}.{b64(payload)}"
    signature = b"" if sign is None else sign(signing_input.encode())
    return f"{signing_input}.{b64(signature)}"


def hs256(secret: bytes) -> Callable[[bytes], bytes]:
    return lambda data: hmac.new(secret, data, hashlib.sha256).digest()


def validate_body(token: Any) -> bytes:
    return compact({"license": token})


class Known:
    """What the table is built from: the real key, licenses and JWKS."""

    def __init__(self, api: ApiDaemon) -> None:
        current = api.get("/api/daemon/current-key", token=FULL_TOKEN)
        assert current.status_code == 200, current.text
        self.index: int = current.json()["index"]
        self.key = bytes.fromhex(current.json()["key"])
        self.kid = str(self.index)
        jwks = api.get("/.well-known/jwks.json").json()
        jwk = next(k for k in jwks["keys"] if k["kid"] == self.kid)
        self.x = jwk["x"]
        self.public = unb64(self.x)
        self.licenses = {}
        for offline in (False, True):
            issued = api.post(ISSUE, token=FULL_TOKEN, json={
                "subject": "acme", "expires": int(time.time()) + 86400,
                "features": ["pro"], "offline": offline,
            })
            assert issued.status_code == 200, issued.text
            self.licenses[offline] = issued.json()["license"]
        # what the API answered these, for the sweep (the key reveal is
        # asked for, and left out)
        self.texts = [json.dumps(jwks)]

    def claims(self, **changes: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {"iss": "torro", "sub": "acme", "iat": now, "nbf": now,
                  "exp": now + 86400, "features": ["pro"]}
        claims.update(changes)
        return claims


def body_cases() -> list[Hostile]:
    cases = []
    over = b'{"key": "00"}' + b" " * MAX_BODY
    posts = [(VALIDATE_KEY, None), (VALIDATE, None), (ISSUE, FULL),
             (RESET, FULL)]
    bad_utf8 = [
        ("bytes ff fe", b"\xff\xfe"),
        ("bad continuation", b'{"key": "\xc3\x28"}'),
        ("overlong slash", b'{"key": "\xc0\xaf"}'),
        ("encoded surrogate", b'{"license": "\xed\xa0\x80"}'),
        ("latin-1 text", b'{"subject": "caf\xe9"}'),
        ("utf-16", '{"key": "00"}'.encode("utf-16")),
    ]
    nested = [
        ("arrays 8000 deep", b"[" * 8000 + b"]" * 8000),
        ("objects 2700 deep", b'{"a":' * 2700 + b"1" + b"}" * 2700),
        ("license value nested 5000 deep",
         b'{"license": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
    ]
    for path, auth in posts:
        where = f"POST {path}"
        cases.append(Hostile(f"{where}: 16 KiB + 1", request(
            "POST", path, body=over, auth=auth), 413, "body_too_large"))
        cases.append(Hostile(f"{where}: 1 MiB", request(
            "POST", path, body=b" " * 2**20, auth=auth),
            413, "body_too_large"))
        cases.append(Hostile(
            f"{where}: declared length of a terabyte",
            request("POST", path, auth=auth, headers=[
                b"Content-Type: application/json",
                b"Content-Length: 1099511627776",
            ]) + b"{}", 413, "body_too_large"))
        for name, body in bad_utf8 + nested:
            cases.append(Hostile(f"{where}: {name}", request(
                "POST", path, body=body, auth=auth), 400, "malformed_json"))
    for name, body, status, code in (
        ("NaN", b'{"subject": "a", "expires": NaN}', 422, "invalid_request"),
        ("Infinity", b'{"subject": "a", "expires": Infinity}', 422,
         "invalid_request"),
        ("5000 digits", b'{"subject": "a", "expires": ' + b"9" * 5000
         + b"}", 400, "malformed_json"),
        ("1e400", b'{"subject": "a", "expires": 1e400}', 422,
         "invalid_request"),
        ("nul in subject", b'{"subject": "a\\u0000b", "expires": 1}', 422,
         "invalid_request"),
    ):
        cases.append(Hostile(f"POST {ISSUE}: {name}", request(
            "POST", ISSUE, body=body, auth=FULL), status, code))
    for name, body in (
        ("nul in key", b'{"key": "00\\u0000"}'),
        ("duplicate field, last not hex", b'{"key":"00","key":"zz"}'),
        ("arabic digits", '{"key": "\u0660\u0660"}'.encode()),
    ):
        cases.append(Hostile(f"POST {VALIDATE_KEY}: {name}", request(
            "POST", VALIDATE_KEY, body=body), 400, "invalid_key"))
    cases.append(Hostile(f"POST {VALIDATE_KEY}: lone surrogate escape",
                         request("POST", VALIDATE_KEY,
                                 body=b'{"key": "\\ud800"}'),
                         422, "invalid_request"))
    cases.append(Hostile("POST reset: nested confirm", request(
        "POST", RESET, body=b'{"confirm": ["reset"]}', auth=FULL),
        422, "invalid_request"))
    return cases


# Paths of key/{index} with a full token: (raw path tail, status, code).
KEY_PATHS: list[tuple[bytes, int, str]] = [
    (b"-1", 404, "not_found"),
    (b"-0", 422, "invalid_request"),
    (b"9" * 19, 404, "not_found"),
    (b"9" * 60, 404, "not_found"),
    (b"1" * 100000, 422, "invalid_request"),
    (b"..", 422, "invalid_request"),
    (b"%2e%2e", 422, "invalid_request"),
    (b"%2E%2E/%2E%2E/status", 404, "not_found"),
    (b"../status", 404, "not_found"),
    (b"0%2F..%2F..%2Fstatus", 404, "not_found"),
    (b"..%2f..%2fcurrent-key", 404, "not_found"),
    (b"abc", 422, "invalid_request"),
    (b"0x0", 422, "invalid_request"),
    (b"1e0", 422, "invalid_request"),
    (b"0.0", 422, "invalid_request"),
    (b"%D9%A0", 422, "invalid_request"),
    (b"%EF%BC%90", 422, "invalid_request"),
    (b"%F0%9D%9F%8E", 422, "invalid_request"),
    (b"\xd9\xa0", 400, "bad_request"),
    (b"00", 422, "invalid_request"),
    (b"01", 422, "invalid_request"),
    (b"0000000000000000000000000001", 422, "invalid_request"),
    (b"%200", 422, "invalid_request"),
    (b"0%20", 422, "invalid_request"),
    (b"%090", 422, "invalid_request"),
    (b"0%0A", 422, "invalid_request"),
    (b"0%0D%0AX-Injected:%201", 422, "invalid_request"),
    (b"0%00", 422, "invalid_request"),
    (b"%ff", 422, "invalid_request"),
    (b"%", 422, "invalid_request"),
    (b"%zz", 422, "invalid_request"),
    (b"+0", 422, "invalid_request"),
    (b"0;x=1", 422, "invalid_request"),
    (b"0/", 404, "not_found"),
    (b"0?index=1", 200, "ok"),
    (b"0#x", 422, "invalid_request"),
    (b"%30", 200, "ok"),
]


def path_cases() -> list[Hostile]:
    cases = []
    for tail, status, code in KEY_PATHS:
        path = b"/api/daemon/key/" + tail
        hostile = tail not in (b"%30", b"0?index=1")
        cases.append(Hostile(
            f"GET key/{tail[:40]!r}", request("GET", path, auth=FULL),
            status, code, hostile))
    for tail, status, code in ((b"-1", 401, "unauthorized"),
                               (b"..", 401, "unauthorized"),
                               (b"0", 401, "unauthorized")):
        cases.append(Hostile(
            f"GET key/{tail!r} without a token",
            request("GET", b"/api/daemon/key/" + tail), status, code))
    cases.append(Hostile(
        "GET key/0 with the read-only token",
        request("GET", "/api/daemon/key/0", auth=f"Bearer {READ_TOKEN}"),
        403, "forbidden"))
    return cases


def header_cases() -> list[Hostile]:
    stats = "/api/daemon/stats"
    status = "/api/daemon/status"
    return [
        Hostile("a megabyte of header", request(
            "GET", status, headers=[b"X-Big: " + b"a" * 2**20]),
            400, "bad_request"),
        Hostile("3000 headers", request("GET", status, headers=[
            b"X-%d: y" % n for n in range(3000)]), 200, "ok"),
        Hostile("a 12 KB token", request(
            "GET", stats, auth="Bearer " + "A" * 12000), 403, "forbidden"),
        Hostile("a token that is not ASCII", request(
            "GET", stats, auth="Bearer \xff\xfe\xc3(token-of-sixteen"),
            403, "forbidden"),
        Hostile("a NUL in the token", request(
            "GET", stats, auth=f"Bearer {FULL_TOKEN}\0"),
            400, "bad_request"),
        Hostile("a wrong and a right token", request(
            "GET", stats, auth="Bearer wrong-token-wrong-token",
            headers=[b"Authorization: " + FULL.encode()]),
            403, "forbidden"),
        Hostile("Bearer and nothing", request("GET", stats, auth="Bearer"),
                401, "unauthorized"),
        Hostile("Basic scheme", request(
            "GET", stats, auth="Basic " + base64.b64encode(
                FULL_TOKEN.encode()).decode()), 401, "unauthorized"),
        Hostile("token with a suffix", request(
            "GET", stats, auth=FULL + "x"), 403, "forbidden"),
        Hostile("token prefix", request(
            "GET", stats, auth=FULL[:-1]), 403, "forbidden"),
        Hostile("X-Forwarded-For on a full endpoint", request(
            "GET", stats, headers=[b"X-Forwarded-For: 127.0.0.1"]),
            401, "unauthorized"),
        Hostile("force-rotation with the read-only token", request(
            "POST", "/api/daemon/force-rotation",
            auth=f"Bearer {READ_TOKEN}"), 403, "forbidden"),
        Hostile("force-rotation without a token", request(
            "POST", "/api/daemon/force-rotation"), 401, "unauthorized"),
        Hostile("a TLS hello", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03"
                b"\x03" + b"\x00" * 50 + b"\r\n\r\n", 400, "bad_request"),
        Hostile("a negative Content-Length", request(
            "POST", VALIDATE_KEY, headers=[b"Content-Length: -5"]) + b"{}",
            400, "bad_request"),
        Hostile("a bad chunk size", request(
            "POST", VALIDATE_KEY, headers=[
                b"Transfer-Encoding: chunked"]) + b"zz\r\n{}\r\n0\r\n\r\n",
            400, "bad_request"),
        Hostile("a request line without a version",
                b"GET /api/daemon/status\r\n\r\n", 400, "bad_request"),
        Hostile("an unknown method", request("BREW", status),
                405, "method_not_allowed"),
        Hostile("an absolute URI elsewhere", request(
            "GET", "http://elsewhere.invalid/api/daemon/current-key"),
            404, "not_found"),
        Hostile("junk in the query", request(
            "GET", "/api/daemon/status?%ff=%00&&=&a"), 200, "ok"),
        Hostile("NUL as a page", request(
            "GET", "/api/daemon/history?page=%00", auth=FULL),
            422, "invalid_request"),
        Hostile("a huge page", request(
            "GET", "/api/daemon/history?page=" + "9" * 5000, auth=FULL),
            422, "invalid_request"),
    ]


def license_cases(known: Known) -> list[Hostile]:
    kid = known.kid
    key = known.key
    attacker = Ed25519PrivateKey.generate()
    attacker_x = b64(attacker.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    pem = Ed25519PublicKey.from_public_bytes(known.public).public_bytes(
        serialization.Encoding.PEM,
        serialization.PublicFormat.SubjectPublicKeyInfo)
    hmac_license, offline_license = known.licenses[False], \
        known.licenses[True]
    header, payload, signature = hmac_license.split(".")
    o_header, o_payload, o_signature = offline_license.split(".")
    claims = json.loads(unb64(payload))
    forged_claims = b64(compact({**claims, "sub": "evil",
                                 "features": ["everything"]}))
    longer = b64(compact({**claims, "exp": claims["exp"] + 10 * 86400}))
    tokens: list[tuple[str, Any, str]] = [
        ("the real HMAC license", hmac_license, "valid"),
        ("the real offline license", offline_license, "valid"),
        ("forged claims, HMAC", f"{header}.{forged_claims}.{signature}",
         "bad_signature"),
        ("forged expiry, offline", f"{o_header}.{longer}.{o_signature}",
         "bad_signature"),
        ("signature stripped", f"{header}.{payload}.", "bad_signature"),
        ("signature of the other license",
         f"{header}.{payload}.{o_signature}", "bad_signature"),
        ("offline header on the HMAC signature",
         f"{o_header}.{payload}.{signature}", "bad_signature"),
        ("four segments", hmac_license + ".AAAA", "malformed"),
        ("two segments", f"{header}.{payload}", "malformed"),
        ("padded", hmac_license + "==", "malformed"),
        ("whitespace around", f" {hmac_license}\n", "malformed"),
        ("not ASCII", hmac_license[:-2] + "\u00e9\u00e9", "malformed"),
        ("8193 characters", "a" * 8193, "malformed"),
        ("empty", "", "malformed"),
    ]
    for alg in ("none", "None", "NONE", "nOnE", ""):
        for signed in (None, hs256(key)):
            tokens.append((
                f"alg {alg!r}, {'signed' if signed else 'no signature'}",
                craft({"alg": alg, "kid": kid}, known.claims(), signed),
                "wrong_algorithm"))
    for alg in ("RS256", "ES256", "PS256", "HS384", "HS512", "EdDSA ",
                "hs256"):
        tokens.append((f"alg {alg}", craft(
            {"alg": alg, "kid": kid}, known.claims(), hs256(key)),
            "wrong_algorithm"))
    # algorithm confusion: the public key from the JWKS as an HMAC secret
    for name, secret in (("raw", known.public),
                         ("its base64 x", known.x.encode()),
                         ("PEM", pem),
                         ("JWK JSON", compact({"kty": "OKP",
                                               "crv": "Ed25519",
                                               "x": known.x}))):
        tokens.append((f"HS256 keyed with the public key, {name}", craft(
            {"alg": "HS256", "kid": kid, "typ": "JWT"}, known.claims(),
            hs256(secret)), "bad_signature"))
    # and the reverse: EdDSA where HS256 is expected
    tokens += [
        ("EdDSA signed by another key", craft(
            {"alg": "EdDSA", "kid": kid}, known.claims(), attacker.sign),
         "bad_signature"),
        ("EdDSA carrying its own jwk", craft(
            {"alg": "EdDSA", "kid": kid, "jwk": {
                "kty": "OKP", "crv": "Ed25519", "x": attacker_x}},
            known.claims(), attacker.sign), "bad_signature"),
        ("EdDSA with a jku elsewhere", craft(
            {"alg": "EdDSA", "kid": kid,
             "jku": "https://elsewhere.invalid/jwks.json"},
            known.claims(), attacker.sign), "bad_signature"),
        ("EdDSA header on an HMAC signature", craft(
            {"alg": "EdDSA", "kid": kid}, known.claims(), hs256(key)),
         "bad_signature"),
        ("crit header", craft(
            {"alg": "HS256", "kid": kid, "crit": ["x"], "x": 1},
            known.claims(), hs256(key)), "malformed"),
        ("header 3000 deep", craft(
            b'{"alg":"HS256","kid":"' + kid.encode() + b'","x":'
            + b"[" * 2900 + b"]" * 2900 + b"}",
            known.claims(), hs256(key)), "malformed"),
        ("claims not JSON, signed", craft(
            {"alg": "HS256", "kid": kid}, b"\xff\xfe", hs256(key)),
         "malformed"),
        ("claims 3000 deep, signed", craft(
            {"alg": "HS256", "kid": kid}, b"[" * 3000 + b"]" * 3000,
            hs256(key)), "malformed"),
        ("another issuer, signed", craft(
            {"alg": "HS256", "kid": kid}, known.claims(iss="evil"),
            hs256(key)), "malformed"),
        ("expired, signed", craft(
            {"alg": "HS256", "kid": kid}, known.claims(exp=1), hs256(key)),
         "expired"),
    ]
    for bad_kid, reason in (
        ("-1", "malformed"), ("9" * 19, "unknown_kid"),
        ("9" * 2000, "unknown_kid"), (str(known.index + 1), "unknown_kid"),
        ("abc", "malformed"), ("../" + kid, "malformed"),
        (f"{kid}/../{kid}", "malformed"), ("/etc/passwd", "malformed"),
        ("%30", "malformed"), ("0" + kid, "malformed"),
        ("\u0660", "malformed"), ("\uff10", "malformed"),
        (f" {kid}", "malformed"), (f"{kid}\n", "malformed"),
        (int(kid), "malformed"), ([kid], "malformed"), (None, "malformed"),
        (True, "malformed"), ("", "malformed"),
    ):
        tokens.append((f"kid {bad_kid!r:.30}", craft(
            {"alg": "HS256", "kid": bad_kid}, known.claims(), hs256(key)),
            reason))
    cases = [
        Hostile(f"license: {name}", request(
            "POST", VALIDATE, body=validate_body(token)),
            200, expect if expect == "valid" else f"reason:{expect}",
            hostile=expect != "valid")
        for name, token, expect in tokens
    ]
    for name, body in (("a number", 42), ("null", None),
                       ("a list", [hmac_license]),
                       ("an object", {"license": hmac_license})):
        cases.append(Hostile(f"license: {name}", request(
            "POST", VALIDATE, body=validate_body(body)),
            422, "invalid_request"))
    return cases


def mutations(known: Known, rng: random.Random, count: int) -> list[Hostile]:
    """Seeded mutations: characters of real licenses changed, kids
    drawn from pieces, key paths drawn from pieces."""
    cases = []
    alphabet = ("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                "0123456789-_")
    pieces = ["0", "1", "9", "00", "-", "+", ".", "..", "/", "%2e", "%2F",
              "%30", "%31", "%20", "%00", "%ff", "%D9%A0", "e", "x", "_",
              "9" * 25, "%EF%BC%91", known.kid]
    for number in range(count):
        choice = number % 3
        if choice == 0:
            token = known.licenses[rng.random() < 0.5]
            segments = token.split(".")
            which = rng.randrange(3)
            segment = segments[which]
            # never the last character, whose spare bits may not count
            at = rng.randrange(len(segment) - 1)
            changed = rng.choice(alphabet.replace(segment[at], ""))
            segments[which] = segment[:at] + changed + segment[at + 1:]
            cases.append(Hostile(
                f"mutated license {number}", request(
                    "POST", VALIDATE,
                    body=validate_body(".".join(segments))),
                200, "reason:*"))
        elif choice == 1:
            kid = "".join(rng.choice(pieces)
                          for _ in range(rng.randint(1, 3)))
            kid = urllib.parse.unquote(kid)
            if CANONICAL.fullmatch(kid) and kid.isascii():
                reason = "unknown_kid" if kid != known.kid \
                    else "bad_signature"
            else:
                reason = "malformed"
            cases.append(Hostile(f"kid {kid!r}", request(
                "POST", VALIDATE, body=validate_body(craft(
                    {"alg": "HS256", "kid": kid}, known.claims(),
                    hs256(os.urandom(32))))), 200, f"reason:{reason}"))
        else:
            tail = "".join(rng.choice(pieces)
                           for _ in range(rng.randint(1, 4)))
            decoded = urllib.parse.unquote(tail)
            if "/" in decoded:
                status, code = 404, "not_found"
            elif CANONICAL.fullmatch(decoded) and decoded.isascii():
                status, code = (200, "ok") if int(decoded) == known.index \
                    else (404, "not_found")
            elif decoded.startswith("-") and decoded[1:].isdigit() \
                    and decoded[1:].isascii() and decoded != "-0" \
                    and CANONICAL.fullmatch(decoded[1:]):
                status, code = 404, "not_found"
            else:
                status, code = 422, "invalid_request"
            if tail in ("", ".", ".."):
                continue
            cases.append(Hostile(f"key/{tail}", request(
                "GET", "/api/daemon/key/" + tail, auth=FULL),
                status, code, hostile=status != 200))
    return cases


def check(case: Hostile, status: int, headers: dict[str, str],
          body: bytes) -> str | None:
    """Return what is wrong with the answer to ``case``, or None."""
    if status >= 500:
        return f"a server error {status}: {body[:200]!r}"
    if b"Traceback" in body or b'File "' in body:
        return "a traceback in the answer"
    if status != case.status:
        return f"status {status}, not {case.status}: {body[:300]!r}"
    try:
        document = json.loads(body)
    except ValueError:
        return f"not JSON: {body[:200]!r}"
    if not headers.get("content-type", "").startswith("application/json"):
        return f"content type {headers.get('content-type')}"
    if case.expect.startswith("reason:"):
        reason = case.expect.removeprefix("reason:")
        if document.get("valid") is not False:
            return f"not refused: {document}"
        if reason == "*":
            return None if document["reason"] in LICENSE_REASONS \
                else f"reason {document['reason']}"
        if document.get("reason") != reason:
            return f"reason {document.get('reason')}, not {reason}: " \
                f"{document.get('detail')}"
        return None
    if case.expect == "valid":
        return None if document.get("valid") is True else str(document)
    if case.expect == "ok":
        return None
    if set(document) != {"error"} \
            or set(document["error"]) != {"code", "message"}:
        return f"not the error shape: {document}"
    if document["error"]["code"] != case.expect:
        return f"code {document['error']['code']}, not {case.expect}"
    return None


@pytest.mark.scenario("hostile input: API requests")
@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(0, id="table"),
        pytest.param(4800, id="table-and-4800-mutations",
                     marks=pytest.mark.campaign),
    ],
)
def test_hostile_requests_get_their_documented_answers(
    api_factory: Callable[..., ApiDaemon],
    extra: int,
    tally: "campaign.Tally",
) -> None:
    seed = int(os.environ.get("TORRO_HOSTILE_SEED", DEFAULT_SEED + extra))
    print(f"\nhostile campaign: seed {seed} (replay with "
          f"TORRO_HOSTILE_SEED={seed})")
    api = api_factory(KEY_DAEMON_RATE_LIMIT="1000000")
    began = time.monotonic()
    known = Known(api)
    cases = body_cases() + path_cases() + header_cases() \
        + license_cases(known)
    cases += mutations(known, random.Random(seed), extra)
    texts = list(known.texts)
    wrong = []
    try:
        for case in cases:
            status, headers, body = send(api.url, case.raw)
            texts.append(json.dumps(headers))
            if not (case.expect == "ok" and "key/" in case.name):
                # a key revealed on purpose is not a leak
                texts.append(body.decode("utf-8", "replace"))
            problem = check(case, status, headers, body)
            tally.trials += 1
            tally.faults += case.hostile
            if problem is None:
                tally.survived += 1
            else:
                wrong.append(f"{case.name}: {problem}")
        assert not wrong, "\n".join(wrong)

        # the daemon is healthy, its key unchanged, its log clean
        assert api.process.poll() is None
        health = api.get("/api/daemon/status")
        assert health.status_code == 200, health.text
        assert health.json()["healthy"] is True
        after = api.get("/api/daemon/current-key", token=FULL_TOKEN).json()
        assert (after["index"], bytes.fromhex(after["key"])) == \
            (known.index, known.key)
        assert "Traceback" not in api.log("system.log")
        assert "Traceback" not in (api.cwd / "daemon.stderr").read_text()
        texts.append(health.text)
        leaks.sweep(
            tally, texts=texts, logs=api.cwd / "logs",
            store=api.cwd / "keys",
            master_key_file=api.cwd / "keys.master-key",
            tokens=[FULL_TOKEN, READ_TOKEN],
        )
    finally:
        print(f"hostile campaign (seed {seed}): {tally.trials} requests, "
              f"{tally.faults} hostile, {tally.survived} answered as "
              f"expected, {time.monotonic() - began:.1f} s")


def test_request_that_is_not_http_is_answered_in_the_error_shape(
    api: ApiDaemon,
) -> None:
    """Found by the campaign: a request h11 cannot parse (a TLS hello, a
    negative Content-Length, a megabyte of header, a NUL in a header, a
    raw byte that is not ASCII in the path) was answered 400 in plain
    text by uvicorn, not in the API's JSON error shape."""
    for raw in (
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
        request("POST", VALIDATE_KEY,
                headers=[b"Content-Length: -5"]) + b"{}",
        request("GET", "/api/daemon/status",
                headers=[b"X-Big: " + b"a" * 2**20]),
        request("GET", "/api/daemon/stats", auth=f"Bearer {FULL_TOKEN}\0"),
        request("GET", b"/api/daemon/key/\xd9\xa0", auth=FULL),
    ):
        status, headers, body = send(api.url, raw)
        assert status == 400, body
        assert headers["content-type"] == "application/json"
        assert headers["connection"] == "close"
        assert json.loads(body) == {"error": {
            "code": "bad_request",
            "message": "the request is not valid HTTP/1.1: check its "
            "request line, headers and body framing",
        }}
    assert api.get("/api/daemon/status").status_code == 200


def test_body_in_utf16_or_with_encoded_surrogates_is_malformed_json(
    api: ApiDaemon,
) -> None:
    """Found by the campaign: json.loads on bytes took UTF-16 and UTF-32
    bodies, and surrogates encoded in UTF-8, though the API promises 400
    for a body that is not UTF-8; a UTF-16 validate-key body was read
    as a key."""
    for body in (
        '{"key": "00"}'.encode("utf-16"),
        '{"key": "00"}'.encode("utf-16-be"),
        '{"key": "00"}'.encode("utf-32"),
        b'{"key": "00\xed\xa0\x80"}',
        b'{"license": "\xed\xb0\x80"}',
    ):
        answer = api.post(VALIDATE_KEY, content=body)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == "malformed_json"
    answer = api.post(VALIDATE_KEY, content='{"key": "00"}'.encode())
    assert answer.status_code == 200, answer.text
