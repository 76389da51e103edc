"""Tests for torro.licenses: licenses signed with the keys of a key ring.

Tokens are checked against computations of our own (base64url, HMAC,
HKDF, Ed25519 from cryptography) and against PyJWT's standard API, so
that a license is a standard JWS and not just what this module reads
back. Failures are made by hand, one per reason.
"""

import base64
import hashlib
import hmac
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
)
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from fakes import FakeClock
from runner import run_here

from torro.errors import StoreError
from torro.licenses import (
    LICENSE_SIGNING_LABEL,
    MAX_TOKEN_LENGTH,
    REASONS,
    KeyRing,
    License,
    LicenseError,
    StoreKeyRing,
    issue_license,
    jwks,
    signing_key,
    verify_license,
)
from torro.material import KeyMaterial
from torro.rotation import KeyRotationDaemon, RotationPolicy
from torro.sealing import MasterKey, Sealer
from torro.store import KeyStore

NOW = 1_767_225_600  # 2026-01-01T00:00:00Z, in seconds
YEAR = 365 * 86400
EXPIRES = NOW + YEAR  # 2027-01-01T00:00:00Z
KEY_3 = KeyMaterial(bytes(range(32)))
KEY_4 = KeyMaterial(bytes(range(100, 132)))
POLICY = RotationPolicy(rotation_interval_ms=1000, derivation_rounds=1000)


class MemoryRing:
    """A key ring held in memory: retained keys and the next index.

    Every index below ``next_index`` that it does not retain is retired.
    """

    def __init__(
        self,
        keys: dict[int, tuple[KeyMaterial, str]],
        next_index: int,
    ) -> None:
        self.keys = keys
        self.next_index = next_index

    def current_index(self) -> int:
        return max(self.keys)

    def key(self, index: int) -> tuple[KeyMaterial, str]:
        return self.keys[index]

    def retained(self) -> list[int]:
        return sorted(self.keys)

    def is_retired(self, index: int) -> bool:
        return 0 <= index < self.next_index and index not in self.keys


def ring_of(algorithm: str = "sha256") -> MemoryRing:
    """Keys 3 and 4 retained (4 current), 0 to 2 retired, 5 next."""
    return MemoryRing({3: (KEY_3, algorithm), 4: (KEY_4, algorithm)}, 5)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def compact(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()


def claims_of(**changes: Any) -> dict[str, Any]:
    claims = {
        "iss": "torro",
        "sub": "acme",
        "iat": NOW,
        "nbf": NOW,
        "exp": EXPIRES,
        "features": ["pro"],
    }
    claims.update(changes)
    return {name: value for name, value in claims.items()
            if value is not None}


def hmac_signer(
    key: bytes, digest: Callable[..., Any] = hashlib.sha256
) -> Callable[[bytes], bytes]:
    return lambda data: hmac.new(key, data, digest).digest()


def ed25519_signer(material: KeyMaterial) -> Callable[[bytes], bytes]:
    return signing_key(material).sign


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


def independent_signing_key(material: KeyMaterial) -> Ed25519PrivateKey:
    seed = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=b"torro license signing key v1",
    ).derive(material.reveal())
    return Ed25519PrivateKey.from_private_bytes(seed)


def raw_public(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def failure(
    token: Any, ring: KeyRing, now: int = NOW, leeway: int = 0
) -> LicenseError:
    with pytest.raises(LicenseError) as caught:
        verify_license(token, ring, now=now, leeway=leeway)
    return caught.value


# -- round trips --------------------------------------------------------

@pytest.mark.parametrize(
    ("key_algorithm", "alg", "digest"),
    [
        ("sha256", "HS256", hashlib.sha256),
        ("sha384", "HS256", hashlib.sha256),
        ("sha512", "HS512", hashlib.sha512),
    ],
)
def test_hmac_license_is_a_standard_jws_that_verifies(
    key_algorithm: str, alg: str, digest: Callable[..., Any]
) -> None:
    ring = ring_of(key_algorithm)
    token = issue_license(
        ring,
        subject="acme",
        expires=EXPIRES,
        features=["pro", "beta"],
        now=NOW,
    )

    header, payload, signature = token.split(".")
    assert json.loads(unb64(header)) == {
        "alg": alg, "kid": "4", "typ": "JWT"
    }
    claims = claims_of(features=["pro", "beta"])
    assert json.loads(unb64(payload)) == claims
    expected = hmac.new(
        KEY_4.reveal(), f"{header}.{payload}".encode(), digest
    ).digest()
    assert unb64(signature) == expected

    assert verify_license(token, ring, now=NOW) == License(
        subject="acme",
        issued_at=NOW,
        not_before=NOW,
        expires=EXPIRES,
        features=("pro", "beta"),
        kid=4,
        offline=False,
        claims=claims,
    )


def test_offline_license_is_signed_with_the_derived_ed25519_key() -> None:
    ring = ring_of()
    token = issue_license(
        ring,
        subject="acme",
        expires=EXPIRES,
        features=["pro"],
        offline=True,
        now=NOW,
        not_before=NOW + 60,
    )

    header, payload, signature = token.split(".")
    assert json.loads(unb64(header)) == {
        "alg": "EdDSA", "kid": "4", "typ": "JWT"
    }
    assert json.loads(unb64(payload)) == claims_of(nbf=NOW + 60)
    public = independent_signing_key(KEY_4).public_key()
    # raises InvalidSignature if the signature does not hold
    public.verify(unb64(signature), f"{header}.{payload}".encode())

    assert verify_license(token, ring, now=NOW + 60) == License(
        subject="acme",
        issued_at=NOW,
        not_before=NOW + 60,
        expires=EXPIRES,
        features=("pro",),
        kid=4,
        offline=True,
        claims=claims_of(nbf=NOW + 60),
    )


def test_hmac_license_verifies_with_plain_pyjwt() -> None:
    now = int(time.time())
    token = issue_license(
        ring_of(), subject="acme", expires=now + 3600, features=["pro"],
        now=now,
    )
    claims = jwt.decode(token, KEY_4.reveal(), algorithms=["HS256"])
    assert claims == claims_of(iat=now, nbf=now, exp=now + 3600)
    assert jwt.get_unverified_header(token)["kid"] == "4"


def test_offline_license_verifies_with_a_pyjwk_from_the_jwks() -> None:
    ring = ring_of()
    now = int(time.time())
    token = issue_license(
        ring, subject="acme", expires=now + 3600, offline=True
    )
    key_set = jwt.PyJWKSet.from_dict(jwks(ring))
    kid = jwt.get_unverified_header(token)["kid"]
    assert kid == "4"
    public = key_set[kid]
    claims = jwt.decode(token, public, algorithms=["EdDSA"])
    assert (claims["sub"], claims["exp"], claims["features"]) == (
        "acme", now + 3600, []
    )
    # the other key's entry does not verify it
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, key_set["3"], algorithms=["EdDSA"])


def test_jwks_publishes_the_public_key_of_every_retained_key() -> None:
    assert jwks(ring_of()) == {
        "keys": [
            {
                "kty": "OKP",
                "crv": "Ed25519",
                "x": b64(raw_public(independent_signing_key(material))),
                "kid": kid,
                "alg": "EdDSA",
                "use": "sig",
            }
            for kid, material in (("3", KEY_3), ("4", KEY_4))
        ]
    }
    assert jwks(MemoryRing({}, 0)) == {"keys": []}


def test_signing_key_matches_hkdf_then_ed25519() -> None:
    for material in (KEY_3, KEY_4, KeyMaterial(os.urandom(64))):
        expected = independent_signing_key(material)
        derived = signing_key(material)
        raw = serialization.Encoding.Raw
        private_format = serialization.PrivateFormat.Raw
        none = serialization.NoEncryption()
        assert derived.private_bytes(raw, private_format, none) \
            == expected.private_bytes(raw, private_format, none)
    assert LICENSE_SIGNING_LABEL == b"torro license signing key v1"


def test_signing_key_known_answer() -> None:
    # Pinned: a change of label or derivation would orphan every
    # offline license and every client's copy of the JWKS.
    public = raw_public(signing_key(KeyMaterial(bytes(range(32)))))
    assert b64(public) == "pRgH_B1uAX8F9-yjmGkvojN6U9DV5fSBQ2d_xGnaLdA"


# -- failures, one reason each ------------------------------------------

def test_reasons_are_the_documented_ones() -> None:
    assert REASONS == (
        "malformed",
        "bad_signature",
        "expired",
        "not_yet_valid",
        "unknown_kid",
        "key_retired",
        "wrong_algorithm",
    )
    with pytest.raises(ValueError):
        LicenseError("stale", "whatever")


@pytest.mark.parametrize("offline", [False, True])
def test_tampered_claims_fail_bad_signature(offline: bool) -> None:
    ring = ring_of()
    token = issue_license(
        ring, subject="acme", expires=EXPIRES, offline=offline, now=NOW
    )
    header, _, signature = token.split(".")
    forged = f"{header}.{b64(compact(claims_of(sub='evil')))}.{signature}"
    error = failure(forged, ring)
    assert (error.reason, str(error), error.kid) == (
        "bad_signature",
        "license invalid (bad_signature): not signed by key 4",
        4,
    )


@pytest.mark.parametrize("offline", [False, True])
def test_tampered_signature_fails_bad_signature(offline: bool) -> None:
    ring = ring_of()
    token = issue_license(
        ring, subject="acme", expires=EXPIRES, offline=offline, now=NOW
    )
    signing_input, signature = token.rsplit(".", 1)
    flipped = bytearray(unb64(signature))
    flipped[0] ^= 1
    assert failure(f"{signing_input}.{b64(bytes(flipped))}", ring).reason \
        == "bad_signature"
    truncated = b64(unb64(signature)[:-1])
    assert failure(f"{signing_input}.{truncated}", ring).reason \
        == "bad_signature"


def test_license_signed_by_another_retained_key_fails() -> None:
    ring = ring_of()
    token = craft(
        {"alg": "HS256", "kid": "4", "typ": "JWT"},
        claims_of(),
        hmac_signer(KEY_3.reveal()),
    )
    assert failure(token, ring).reason == "bad_signature"


@pytest.mark.parametrize("offline", [False, True])
def test_expired_license_fails_at_its_expiry(offline: bool) -> None:
    ring = ring_of()
    token = issue_license(
        ring, subject="acme", expires=EXPIRES, offline=offline, now=NOW
    )
    assert verify_license(token, ring, now=EXPIRES - 1).expires == EXPIRES
    error = failure(token, ring, now=EXPIRES)
    assert (error.reason, str(error)) == (
        "expired",
        "license invalid (expired): expired at 2027-01-01T00:00:00Z",
    )
    assert verify_license(token, ring, now=EXPIRES + 9, leeway=10).kid == 4
    assert failure(token, ring, now=EXPIRES + 10, leeway=10).reason \
        == "expired"


def test_license_before_its_not_before_fails_not_yet_valid() -> None:
    ring = ring_of()
    token = issue_license(
        ring,
        subject="acme",
        expires=EXPIRES,
        now=NOW,
        not_before=NOW + 3600,
    )
    error = failure(token, ring, now=NOW + 3599)
    assert (error.reason, str(error)) == (
        "not_yet_valid",
        "license invalid (not_yet_valid): valid from 2026-01-01T01:00:00Z",
    )
    assert verify_license(token, ring, now=NOW + 3600).not_before \
        == NOW + 3600
    assert verify_license(token, ring, now=NOW + 3590, leeway=10).kid == 4


MALFORMED_TOKENS = [
    "",
    "abc",
    "a.b",
    "a.b.c",
    "...",
    "eyJhbGciOiJIUzI1NiJ9",
    f"{b64(b'not json')}.{b64(b'{}')}.AAAA",
    f"{b64(b'[1,2]')}.{b64(b'{}')}.AAAA",
    f"{b64(compact({'alg': 'HS256', 'kid': '4'}))}.!!!.AAAA",
    "é.é.é",
    "\ud800",
    "a" * (MAX_TOKEN_LENGTH + 1),
    None,
    42,
    b"eyJ.eyJ.AA",
]


@pytest.mark.parametrize("token", MALFORMED_TOKENS)
def test_malformed_token_fails_malformed(token: Any) -> None:
    error = failure(token, ring_of())
    assert (error.reason, error.kid) == ("malformed", None)


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "HS256", "typ": "JWT"},
        {"alg": "HS256", "kid": 4},
        {"alg": "HS256", "kid": None},
        {"alg": "HS256", "kid": "4", "crit": ["exp"], "exp": 1},
        {"alg": "HS256", "kid": "4", "b64": False, "crit": ["b64"]},
    ],
)
def test_header_without_a_usable_kid_fails_malformed(
    header: dict[str, Any]
) -> None:
    token = craft(header, claims_of(), hmac_signer(KEY_4.reveal()))
    assert failure(token, ring_of()).reason == "malformed"


@pytest.mark.parametrize(
    "kid",
    ["-1", "abc", "01", "007", "00", "+1", "1e3", "1.0", " 4", "4 ", "4\n",
     "", "\u0664", "0x4"],
)
def test_kid_not_written_as_a_canonical_index_fails_malformed(
    kid: str,
) -> None:
    token = craft(
        {"alg": "HS256", "kid": kid}, claims_of(),
        hmac_signer(KEY_4.reveal()),
    )
    error = failure(token, ring_of())
    assert (error.reason, str(error)) == (
        "malformed",
        "license invalid (malformed): kid is not a key index in decimal",
    )


@pytest.mark.parametrize(
    ("kid", "message"),
    [
        ("5", "the key ring never had key 5"),
        ("123456789012345678", ("the key ring never had key "
         "123456789012345678")),
        ("1234567890123456789", "kid is beyond any index of the key ring"),
        ("9" * 5000, "kid is beyond any index of the key ring"),
    ],
)
def test_kid_the_ring_never_had_fails_unknown_kid(
    kid: str, message: str
) -> None:
    token = craft(
        {"alg": "HS256", "kid": kid}, claims_of(),
        hmac_signer(KEY_4.reveal()),
    )
    error = failure(token, ring_of())
    assert (error.reason, error.detail) == ("unknown_kid", message)


@pytest.mark.parametrize("offline", [False, True])
def test_kid_of_a_pruned_key_fails_key_retired(offline: bool) -> None:
    ring = ring_of()
    token = issue_license(
        ring, subject="acme", expires=EXPIRES, offline=offline, now=NOW
    )
    del ring.keys[4]
    error = failure(token, ring)
    assert (error.reason, str(error), error.kid) == (
        "key_retired",
        "license invalid (key_retired): key 4 is no longer retained",
        4,
    )


@pytest.mark.parametrize(
    ("header", "described"),
    [
        ({"alg": "none", "kid": "4"}, "alg none"),
        ({"alg": "RS256", "kid": "4"}, "alg RS256"),
        ({"alg": "ES256", "kid": "4"}, "alg ES256"),
        ({"alg": "HS384", "kid": "4"}, "alg HS384"),
        ({"alg": "HS512", "kid": "4"}, "alg HS512"),
        ({"kid": "4"}, "an unknown alg"),
        ({"alg": "HS256\nforged log line", "kid": "4"}, "an unknown alg"),
        ({"alg": ["HS256"], "kid": "4"}, "an unknown alg"),
    ],
)
def test_algorithm_other_than_the_keys_fails_wrong_algorithm(
    header: dict[str, Any], described: str
) -> None:
    for signature in (None, hmac_signer(KEY_4.reveal(), hashlib.sha512)):
        token = craft(header, claims_of(), signature)
        error = failure(token, ring_of())
        assert (error.reason, str(error)) == (
            "wrong_algorithm",
            ("license invalid (wrong_algorithm): key 4 signs HS256 or EdDSA "
            f"licenses, not {described}"),
        )


def test_hs256_license_on_a_sha512_key_fails_wrong_algorithm() -> None:
    ring = ring_of("sha512")
    token = craft(
        {"alg": "HS256", "kid": "4"}, claims_of(),
        hmac_signer(KEY_4.reveal()),
    )
    error = failure(token, ring)
    assert (error.reason, error.detail) == (
        "wrong_algorithm",
        "key 4 signs HS512 or EdDSA licenses, not alg HS256",
    )


def test_hmac_with_the_public_key_as_secret_fails_bad_signature() -> None:
    # The classic confusion: a verifier that let the header pick the
    # algorithm would check HS256 with the published public key.
    ring = ring_of()
    private = signing_key(KEY_4)
    secrets = [
        raw_public(private),
        b64(raw_public(private)).encode(),
        private.public_key().public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        ),
    ]
    for secret in secrets:
        token = craft(
            {"alg": "HS256", "kid": "4", "typ": "JWT"},
            claims_of(),
            hmac_signer(secret),
        )
        assert failure(token, ring).reason == "bad_signature"


def test_key_embedded_in_the_header_is_never_used() -> None:
    attacker = Ed25519PrivateKey.generate()
    header = {
        "alg": "EdDSA",
        "kid": "4",
        "jwk": {"kty": "OKP", "crv": "Ed25519",
                "x": b64(raw_public(attacker))},
        "jku": "https://attacker.invalid/jwks.json",
    }
    token = craft(header, claims_of(), attacker.sign)
    assert failure(token, ring_of()).reason == "bad_signature"


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[1, 2]",
        b'"acme"',
        compact(claims_of(iss=None)),
        compact(claims_of(iss="someone else")),
        compact(claims_of(sub=None)),
        compact(claims_of(sub="")),
        compact(claims_of(sub=42)),
        compact(claims_of(sub="acme\nforged log line")),
        compact(claims_of(iat=None)),
        compact(claims_of(nbf=None)),
        compact(claims_of(exp=None)),
        compact(claims_of(exp=float(EXPIRES))),
        compact(claims_of(exp=str(EXPIRES))),
        compact(claims_of(exp=True)),
        compact(claims_of(nbf=-1)),
        compact(claims_of(exp=10**20)),
        compact(claims_of(features=None)),
        compact(claims_of(features="pro")),
        compact(claims_of(features=["pro", 1])),
        compact(claims_of(features=[""])),
        b'{"exp": 1' + b"0" * 5000 + b"}",
    ],
)
@pytest.mark.parametrize("offline", [False, True])
def test_signed_claims_that_break_the_rules_fail_malformed(
    payload: bytes, offline: bool
) -> None:
    alg, sign = ("EdDSA", ed25519_signer(KEY_4)) if offline \
        else ("HS256", hmac_signer(KEY_4.reveal()))
    token = craft({"alg": alg, "kid": "4", "typ": "JWT"}, payload, sign)
    error = failure(token, ring_of())
    assert (error.reason, error.kid) == ("malformed", 4)


def test_failure_messages_hold_no_token_key_or_line_break() -> None:
    ring = ring_of()
    valid = issue_license(ring, subject="acme", expires=EXPIRES, now=NOW)
    offline = issue_license(
        ring, subject="acme", expires=EXPIRES, now=NOW, offline=True
    )
    tokens = [
        valid[:-4] + "AAAA",
        offline[:-4] + "AAAA",
        craft({"alg": "none", "kid": "4"}, claims_of()),
        craft({"alg": "HS256", "kid": "9" * 40}, claims_of()),
        craft({"alg": "HS256", "kid": "4\n"}, claims_of()),
        craft({"alg": "HS256", "kid": "4"}, b"{", hmac_signer(KEY_4.reveal())),
        *MALFORMED_TOKENS,
    ]
    secrets = [
        KEY_3.reveal_hex(), KEY_4.reveal_hex(),
        b64(KEY_4.reveal()), b64(raw_public(signing_key(KEY_4))),
    ]
    errors = [failure(token, ring) for token in tokens]
    errors.append(failure(valid, ring, now=EXPIRES))
    errors.append(failure(valid, ring, now=NOW - 1))
    del ring.keys[4]
    errors.append(failure(valid, ring))
    assert {error.reason for error in errors} == set(REASONS)
    for token, error in zip(tokens, errors, strict=False):
        message = str(error)
        assert message.startswith(f"license invalid ({error.reason}): ")
        assert "\n" not in message and len(message) < 120
        if isinstance(token, str) and len(token) > 8:
            for part in token.split("."):
                assert len(part) < 8 or part not in message
        for secret in secrets:
            assert secret not in message
        # the library's exception does not travel along in tracebacks
        assert error.__cause__ is None and error.__suppress_context__
        assert error.args == (message,)


# -- issuing -------------------------------------------------------------

@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"expires": NOW}, ValueError),
        ({"expires": NOW - 1}, ValueError),
        ({"expires": NOW + 10, "not_before": NOW + 10}, ValueError),
        ({"expires": 10**20}, ValueError),
        ({"expires": float(EXPIRES)}, TypeError),
        ({"expires": True}, TypeError),
        ({"subject": ""}, ValueError),
        ({"subject": "acme\nforged"}, ValueError),
        ({"subject": None}, TypeError),
        ({"features": "pro"}, TypeError),
        ({"features": ["pro", ""]}, ValueError),
        ({"features": ["pro\x00"]}, ValueError),
        ({"features": [3]}, TypeError),
        ({"features": ["f" * 100] * 100}, ValueError),
    ],
)
def test_issue_refuses_bad_arguments(
    arguments: dict[str, Any], error: type[Exception]
) -> None:
    arguments = {"subject": "acme", "expires": EXPIRES, **arguments}
    with pytest.raises(error) as caught:
        issue_license(ring_of(), now=NOW, **arguments)
    assert "\n" not in str(caught.value)


def test_issue_signs_with_the_current_key() -> None:
    ring = ring_of()
    ring.keys[7] = (KEY_3, "sha256")
    token = issue_license(ring, subject="acme", expires=EXPIRES, now=NOW)
    assert verify_license(token, ring, now=NOW).kid == 7


def test_importing_licenses_loads_neither_pyjwt_nor_cryptography() -> None:
    code = (
        "import sys, torro.licenses\n"
        "print(sorted({name.split('.')[0] for name in sys.modules}"
        " & {'jwt', 'cryptography', 'pydantic', 'click'}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True, text=True, check=True,
    )
    assert result.stdout == "[]\n"


# -- with a key store ----------------------------------------------------

def store_ring(
    root: Path, master: MasterKey, clock: FakeClock, max_history: int
) -> tuple[KeyRotationDaemon, StoreKeyRing]:
    store = KeyStore(
        root, Sealer(master), clock=clock, max_history=max_history
    )
    daemon = KeyRotationDaemon(store, POLICY)
    daemon.rotate(force=True)
    return daemon, StoreKeyRing(store)


def test_license_verifies_after_three_rotations(
    root: Path, master: MasterKey, clock: FakeClock
) -> None:
    daemon, ring = store_ring(root, master, clock, max_history=4)
    tokens = {
        offline: issue_license(
            ring, subject="acme", expires=EXPIRES, offline=offline, now=NOW
        )
        for offline in (False, True)
    }
    for _ in range(3):
        daemon.rotate(force=True)
    assert ring.current_index() == 3
    assert ring.retained() == [0, 1, 2, 3]
    # a process of its own sees the same, and so does a thread's view
    reopened = KeyStore(root, Sealer(master), clock=clock, max_history=4)
    reopened.load()
    verifiers = [ring, StoreKeyRing(reopened), StoreKeyRing(reopened.view)]
    for offline, token in tokens.items():
        for verifier in verifiers:
            found = verify_license(token, verifier, now=NOW)
            assert (found.kid, found.offline, found.subject) == (
                0, offline, "acme"
            )
    assert [entry["kid"] for entry in jwks(ring)["keys"]] \
        == ["0", "1", "2", "3"]


@pytest.mark.parametrize("max_history", [1, 2, 3])
def test_license_fails_key_retired_once_retention_prunes_its_key(
    root: Path, master: MasterKey, clock: FakeClock, max_history: int
) -> None:
    daemon, ring = store_ring(root, master, clock, max_history)
    tokens = [
        issue_license(
            ring, subject="acme", expires=EXPIRES, offline=offline, now=NOW
        )
        for offline in (False, True)
    ]
    for _ in range(max_history - 1):
        daemon.rotate(force=True)
        for token in tokens:
            assert verify_license(token, ring, now=NOW).kid == 0
    daemon.rotate(force=True)
    assert ring.retained() == list(range(1, max_history + 1))
    for token in tokens:
        error = failure(token, ring)
        assert (error.reason, error.kid) == ("key_retired", 0)
    assert "0" not in [entry["kid"] for entry in jwks(ring)["keys"]]
    view = StoreKeyRing(daemon.store.view)
    assert view.retained() == ring.retained()
    for token in tokens:
        assert failure(token, view).reason == "key_retired"
    beyond = craft({"alg": "HS256", "kid": str(max_history + 1)}, b"{}")
    assert failure(beyond, ring).reason == "unknown_kid"


def test_store_ring_of_an_empty_store_names_the_next_command(
    root: Path, master: MasterKey
) -> None:
    store = KeyStore(root, Sealer(master))
    store.load()
    for ring in (StoreKeyRing(store), StoreKeyRing(store.view)):
        with pytest.raises(StoreError, match="run torro daemon rotate$"):
            ring.current_index()
        assert (ring.retained(), ring.is_retired(0)) == ([], False)
        with pytest.raises(KeyError):
            ring.key(0)


# -- the CLI -------------------------------------------------------------

def test_cli_issues_and_verifies_a_license(
    here: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert run_here(capsys, "daemon", "rotate")[0] == 0
    code, out, err = run_here(
        capsys, "license", "issue", "--subject", "acme",
        "--expires", "2099-01-01", "--feature", "pro", "--feature", "beta",
    )
    assert (code, err) == (0, "")
    token = out.strip()
    assert out == token + "\n" and token.count(".") == 2

    assert run_here(capsys, "license", "verify", token) == (
        0,
        ("valid: subject acme, key 0, expires 2099-01-01T00:00:00.000Z, "
        "features pro, beta\n"),
        "",
    )
    monkeypatch.setattr(sys, "stdin", io.StringIO(token + "\n"))
    code, out, err = run_here(capsys, "license", "verify", "-", "--json")
    assert (code, json.loads(out), err) == (
        0,
        {
            "valid": True,
            "reason": None,
            "detail": None,
            "kid": 0,
            "subject": "acme",
            "expires": "2099-01-01T00:00:00.000Z",
            "features": ["pro", "beta"],
            "offline": False,
        },
        "",
    )

    security = (here / "logs" / "security.log").read_text()
    assert "INFO license issued for subject 'acme' with key 0, expires " \
        "2099-01-01T00:00:00.000Z, HMAC\n" in security
    assert token not in security
    assert token.split(".")[2] not in security


def test_cli_refuses_a_tampered_license_in_one_line(
    here: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run_here(capsys, "daemon", "rotate")[0] == 0
    code, out, _ = run_here(
        capsys, "license", "issue", "--subject", "acme",
        "--expires", "30d", "--offline",
    )
    assert code == 0
    header, _, signature = out.strip().split(".")
    forged = f"{header}.{b64(compact(claims_of(sub='evil')))}.{signature}"

    assert run_here(capsys, "license", "verify", forged) == (
        1,
        "",
        ("torro: error: license invalid (bad_signature): not signed by "
        "key 0\n"),
    )
    code, out, err = run_here(capsys, "license", "verify", forged, "--json")
    assert (code, err) == (1, "")
    assert json.loads(out) == {
        "valid": False,
        "reason": "bad_signature",
        "detail": "not signed by key 0",
        "kid": 0,
        "subject": None,
        "expires": None,
        "features": None,
        "offline": None,
    }


@pytest.mark.parametrize(
    ("expires", "message"),
    [
        ("2020-01-01", ("2020-01-01 is in the past: a license must expire "
         "after it is issued")),
        ("soon", ("soon is neither an ISO 8601 date or time (2027-01-31, "
         "2027-01-31T12:00:00Z) nor a duration (30d, 12h)")),
    ],
)
def test_cli_refuses_an_expiry_in_the_past_or_unreadable(
    here: Path,
    capsys: pytest.CaptureFixture[str],
    expires: str,
    message: str,
) -> None:
    assert run_here(capsys, "daemon", "rotate")[0] == 0
    assert run_here(
        capsys, "license", "issue", "--subject", "acme", "--expires", expires
    ) == (
        2,
        "",
        (f"torro: error: Invalid value for '--expires': {message} (see "
        "torro license issue --help)\n"),
    )


def test_a_padded_license_is_malformed() -> None:
    """base64url in a JWS has no padding (RFC 7515, section 2): a license
    with '=' appended is another string, refused rather than read as the
    same license."""
    ring = ring_of()
    token = issue_license(ring, subject="acme", expires=4102444800,
                          now=1767225600)
    assert verify_license(token, ring, now=1767225600).subject == "acme"
    with pytest.raises(LicenseError) as caught:
        verify_license(token + "=", ring, now=1767225600)
    assert (caught.value.reason, caught.value.detail) == (
        "malformed", "not a JWS compact token"
    )
