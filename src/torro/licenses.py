"""Licenses: standard JWS tokens signed with the keys of a key ring.

A license is a JWT (RFC 7519) in JWS compact form, made and checked with
PyJWT; no format of our own. The protected header names the key that
signed it by its index, as a decimal string::

    {"alg": "HS256", "kid": "5", "typ": "JWT"}

and the claims say who holds the license, for what and for how long::

    {"iss": "torro", "sub": "acme", "iat": 1767225600,
     "nbf": 1767225600, "exp": 1798761600, "features": ["pro"]}

Times are whole seconds since the epoch. Header and claims are signed,
not encrypted: anyone holding a license reads its subject, features,
dates and key index.

A license is signed in one of two ways:

- with the key itself, by HMAC: HS512 when the key's algorithm is sha512,
  HS256 otherwise. Whoever verifies holds the secret key.
- offline, by EdDSA with the key's license signing key: an Ed25519 key
  whose 32-byte seed is HKDF-SHA256 over the key material, no salt, info
  :data:`LICENSE_SIGNING_LABEL`. Its public half, the license
  verification key, is published by :func:`jwks`, so that a client
  verifies without any secret.

RFC 7518 asks an HMAC key to be at least as long as the hash output (32
bytes for HS256, 64 for HS512). Licenses are signed with the stored key
as it is, and a key store may hold keys from 16 bytes: a verifier that
enforces the RFC's length (PyJWT's ``enforce_minimum_key_length``) needs
``KEY_DAEMON_KEY_LENGTH`` of at least 32, or 64 with sha512.

:func:`verify_license` fails closed with one reason, checked in this
order:

1. ``malformed``: not a compact JWS with a JSON header, longer than
   :data:`MAX_TOKEN_LENGTH`, or a ``kid`` that is missing, not a string,
   or not an index written canonically: ``0`` or digits without a
   leading zero. ``007``, ``-1``, ``+1``, ``1e3``, ``1.0`` and an index
   with spaces around it are malformed.
2. ``unknown_kid``: a canonical index the key ring never had (at or past
   its next index, or longer than 18 digits).
3. ``key_retired``: an index the key ring had and no longer retains.
4. ``wrong_algorithm``: ``alg`` is neither the key's HMAC algorithm nor
   EdDSA (``none``, RS256, or HS512 for a sha256 key, for example). The
   verification key is chosen from the kid and the algorithm alone:
   nothing else in the header (``jwk``, ``jku``, ``x5u``) is used.
5. ``bad_signature``: the signature does not match the header and claims.
   An HS256 license made with a license verification key as its HMAC
   secret fails here: HS256 is only ever checked with the secret key.
6. ``malformed``: the claims are not a JSON object with ``iss`` torro,
   a printable ``sub``, whole-second ``iat``, ``nbf`` and ``exp``, and
   ``features`` as a list of printable strings.
7. ``not_yet_valid`` (``now`` before ``nbf``), then ``expired`` (``now``
   at or after ``exp``), each with ``leeway`` seconds of allowance.

The clock and the keys come from the caller; nothing here reads the disk.
PyJWT and the Ed25519 code are imported on first use, so importing this
module stays cheap for the daemon and the CLI.
"""

import base64
import dataclasses
import functools
import json
import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from torro.errors import StoreError, TorroError
from torro.material import KeyMaterial

if TYPE_CHECKING:
    import jwt
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

    from torro.store.keystore import KeyStore, StoreView


REASONS = (
    "malformed",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "unknown_kid",
    "key_retired",
    "wrong_algorithm",
)
LICENSE_SIGNING_LABEL = b"torro license signing key v1"
ISSUER = "torro"
OFFLINE_ALGORITHM = "EdDSA"
# Longer tokens are refused unread; a license with a few features is
# well under 1 KiB.
MAX_TOKEN_LENGTH = 8192
# The latest time a license may carry: 9999-12-31T23:59:59Z.
MAX_TIME = 253_402_300_799
# The key store's shortest key; a shorter HMAC key never signs.
MIN_HMAC_KEY_LENGTH = 16
# No key ring reaches an index of 19 digits.
MAX_KID_DIGITS = 18

_CANONICAL_INDEX = re.compile(r"0|[1-9][0-9]*")
# Three base64url segments without padding.
_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# Names a failure message may repeat; any other alg is not quoted.
_KNOWN_ALGORITHMS = frozenset({
    "none",
    "HS256", "HS384", "HS512",
    "RS256", "RS384", "RS512",
    "PS256", "PS384", "PS512",
    "ES256", "ES256K", "ES384", "ES512",
    "EdDSA", "Ed25519", "Ed448",
})


class LicenseError(TorroError):
    """A license is invalid, for one reason an operator can act on.

    The message is one line: ``license invalid (<reason>): <detail>``. It
    never holds the token, a key, or anything else from the token that
    was not checked first.

    :param reason: one of :data:`REASONS`.
    :param detail: what failed, in a few words.
    :param kid: the key index the license names, once it is known to be
        a canonical index; None before that.
    """

    def __init__(
        self, reason: str, detail: str, kid: int | None = None
    ) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown license failure reason {reason!r}")
        self.reason = reason
        self.detail = detail
        self.kid = kid
        super().__init__(f"license invalid ({reason}): {detail}")


class KeyRing(Protocol):
    """What licenses need from a key ring."""

    def current_index(self) -> int:
        """Return the index of the current key, which signs licenses."""
        ...

    def key(self, index: int) -> tuple[KeyMaterial, str]:
        """Return a retained key's material and its algorithm.

        :raises KeyError: when the key ring does not retain ``index``.
        """
        ...

    def retained(self) -> list[int]:
        """Return the index of every retained key, in ascending order."""
        ...

    def is_retired(self, index: int) -> bool:
        """Tell whether the key ring had ``index`` once but no longer."""
        ...


class StoreKeyRing:
    """The key ring of a loaded key store, or of a view of one.

    The store is read as it stands: the caller loads it, and refreshes it
    when another process may have rotated. From a thread other than the
    store's owner, pass the store's :attr:`~KeyStore.view`, one consistent
    state, and take a new ring per request. An index below the next index
    that is no longer retained counts as retired, whether retention
    removed it, a reset archived it or an import skipped it.

    :param store: a :class:`torro.store.KeyStore` on which ``load`` has
        run, or its :class:`~torro.store.keystore.StoreView`.
    """

    def __init__(self, store: "KeyStore | StoreView") -> None:
        self.store = store

    def current_index(self) -> int:
        current = self.store.current
        if current is None:
            raise StoreError(
                "the key store holds no key yet: run torro daemon rotate"
            )
        return current.index

    def key(self, index: int) -> tuple[KeyMaterial, str]:
        record = self.store.records.get(index)
        if record is None:
            raise KeyError(index)
        return self.store.material(index), record.algorithm

    def retained(self) -> list[int]:
        return sorted(self.store.records)

    def is_retired(self, index: int) -> bool:
        return (
            0 <= index < self.store.next_index
            and index not in self.store.records
        )


@dataclasses.dataclass(frozen=True)
class License:
    """A verified license.

    :param subject: who holds it (``sub``).
    :param issued_at: when it was issued (``iat``), seconds since the
        epoch, as are the other times.
    :param not_before: when it starts to be valid (``nbf``).
    :param expires: when it stops being valid (``exp``).
    :param features: what it grants, in the order issued.
    :param kid: the index of the key that signed it.
    :param offline: signed by EdDSA, rather than by HMAC.
    :param claims: every claim, as signed.
    """

    subject: str
    issued_at: int
    not_before: int
    expires: int
    features: tuple[str, ...]
    kid: int
    offline: bool
    claims: dict[str, Any]


def hmac_algorithm(key_algorithm: str) -> str:
    """Return the JWS algorithm of HMAC licenses signed with a key.

    :param key_algorithm: the key's algorithm, as stored with it.
    """
    return "HS512" if key_algorithm == "sha512" else "HS256"


def signing_key(material: KeyMaterial) -> "Ed25519PrivateKey":
    """Derive the license signing key of a key, for offline licenses.

    The seed is HKDF-SHA256 over the key material, no salt, info
    :data:`LICENSE_SIGNING_LABEL`, 32 bytes: the same key always yields
    the same signing key, and the signing key gives nothing away about
    the key it came from.
    """
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
    )
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    seed = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=LICENSE_SIGNING_LABEL,
    ).derive(material.reveal())
    return Ed25519PrivateKey.from_private_bytes(seed)


def verification_key(material: KeyMaterial) -> "Ed25519PublicKey":
    """Return the license verification key of a key: the public half."""
    return signing_key(material).public_key()


def jwks(ring: KeyRing) -> dict[str, Any]:
    """Return the license verification keys of every retained key, as a
    JWK Set (RFC 7517) whose ``kid`` is each key's index.

    Only public keys are published: the set is safe to serve to anyone.
    """
    from cryptography.hazmat.primitives import serialization

    entries = []
    for index in ring.retained():
        material, _ = ring.key(index)
        public = verification_key(material).public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        entries.append({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": base64.urlsafe_b64encode(public).rstrip(b"=").decode(),
            "kid": str(index),
            "alg": OFFLINE_ALGORITHM,
            "use": "sig",
        })
    return {"keys": entries}


def issue_license(
    ring: KeyRing,
    *,
    subject: str,
    expires: int,
    features: Sequence[str] = (),
    offline: bool = False,
    now: int | None = None,
    not_before: int | None = None,
) -> str:
    """Sign a license with the key ring's current key.

    :param subject: who holds the license: printable text.
    :param expires: when it stops being valid, seconds since the epoch;
        after both ``now`` and ``not_before``.
    :param features: what it grants, each printable text.
    :param offline: sign by EdDSA with the license signing key, so that
        clients verify with the published public key; by HMAC otherwise.
    :param now: the time of issue (``iat``); the system clock by default.
    :param not_before: when it starts to be valid; ``now`` by default.
    :returns: the license, a JWS compact token.
    :raises TypeError: when an argument has the wrong type (``features``
        as one string included).
    :raises ValueError: when an argument is out of range, or the license
        would be longer than :data:`MAX_TOKEN_LENGTH`.
    """
    now = _now() if now is None else _check_time("now", now)
    not_before = now if not_before is None \
        else _check_time("not_before", not_before)
    expires = _check_time("expires", expires)
    if expires <= max(now, not_before):
        raise ValueError(
            f"expires ({_iso(expires)}) must be after the time of issue "
            f"({_iso(now)}) and not_before ({_iso(not_before)})"
        )
    _check_text("subject", subject)
    if isinstance(features, str):
        raise TypeError("features must be a sequence of str, not one str")
    features = list(features)
    for feature in features:
        _check_text("a feature", feature)

    index = ring.current_index()
    material, key_algorithm = ring.key(index)
    key: Any
    if offline:
        algorithm, key = OFFLINE_ALGORITHM, signing_key(material)
    else:
        algorithm, key = hmac_algorithm(key_algorithm), material.reveal()
    claims = {
        "iss": ISSUER,
        "sub": subject,
        "iat": now,
        "nbf": not_before,
        "exp": expires,
        "features": features,
    }
    payload = json.dumps(claims, separators=(",", ":"), sort_keys=True)
    token = _jws().encode(
        payload.encode(), key, algorithm, headers={"kid": str(index)}
    )
    if len(token) > MAX_TOKEN_LENGTH:
        raise ValueError(
            f"the license would be {len(token)} characters long, over "
            f"the limit of {MAX_TOKEN_LENGTH}: use a shorter subject or "
            "fewer features"
        )
    return token


def verify_license(
    token: str,
    ring: KeyRing,
    *,
    now: int | None = None,
    leeway: int = 0,
) -> License:
    """Check a license against the key ring and return what it says.

    The checks and their order are in the module docstring. A key the
    ring cannot open (a damaged record) raises the store's own error,
    not :class:`LicenseError`: that is the store's problem, not the
    license's.

    :param token: the license as presented; anything that is not a str
        is malformed.
    :param now: the time to judge validity at, seconds since the epoch;
        the system clock by default.
    :param leeway: seconds of clock skew allowed on ``nbf`` and ``exp``.
    :raises LicenseError: when the license is invalid, with its reason.
    :raises TypeError: when ``now`` or ``leeway`` is not an int.
    :raises ValueError: when ``now`` or ``leeway`` is out of range.
    """
    import jwt

    now = _now() if now is None else _check_time("now", now)
    if isinstance(leeway, bool) or not isinstance(leeway, int):
        raise TypeError(
            f"leeway must be an int, not {type(leeway).__name__}"
        )
    if leeway < 0:
        raise ValueError(f"leeway must be 0 or more seconds, not {leeway}")

    if not isinstance(token, str) or not token.isascii():
        _fail("malformed", "not a JWS compact token")
    if len(token) > MAX_TOKEN_LENGTH:
        _fail("malformed", f"longer than {MAX_TOKEN_LENGTH} characters")
    if _COMPACT.fullmatch(token) is None:
        # base64url without padding (RFC 7515): one spelling per license
        _fail("malformed", "not a JWS compact token")
    jws = _jws()
    try:
        header = jws.get_unverified_header(token)
    except jwt.PyJWTError:
        _fail("malformed", "not a JWS compact token")

    index = _kid_index(header.get("kid"))
    try:
        material, key_algorithm = ring.key(index)
    except KeyError:
        if ring.is_retired(index):
            _fail("key_retired", f"key {index} is no longer retained", index)
        _fail("unknown_kid", f"the key ring never had key {index}", index)

    # the key is chosen by kid and algorithm, never by other headers
    algorithm = header.get("alg")
    expected = hmac_algorithm(key_algorithm)
    key: Any
    if algorithm == OFFLINE_ALGORITHM:
        key = verification_key(material)
    elif algorithm == expected:
        key = material.reveal()
    else:
        _fail(
            "wrong_algorithm",
            f"key {index} signs {expected} or {OFFLINE_ALGORITHM} "
            f"licenses, not {_describe_algorithm(algorithm)}",
            index,
        )
    try:
        payload = jws.decode(token, key, algorithms=[algorithm])
    except jwt.InvalidSignatureError:
        _fail("bad_signature", f"not signed by key {index}", index)
    except jwt.InvalidAlgorithmError:
        _fail("wrong_algorithm", f"not a {algorithm} license", index)
    except jwt.PyJWTError:
        _fail("malformed", "not a JWS compact token", index)

    claims = _read_claims(payload, index)
    if now + leeway < claims["nbf"]:
        _fail(
            "not_yet_valid", f"valid from {_iso(claims['nbf'])}", index
        )
    if now - leeway >= claims["exp"]:
        _fail("expired", f"expired at {_iso(claims['exp'])}", index)
    return License(
        subject=claims["sub"],
        issued_at=claims["iat"],
        not_before=claims["nbf"],
        expires=claims["exp"],
        features=tuple(claims["features"]),
        kid=index,
        offline=algorithm == OFFLINE_ALGORITHM,
        claims=claims,
    )


@functools.cache
def _jws() -> "jwt.PyJWS":
    """Return the one JWS codec: HS256, HS512 and EdDSA, nothing else."""
    import jwt
    from jwt.algorithms import HMACAlgorithm

    class StoredKeyHMAC(HMACAlgorithm):
        """HMAC with a stored key as it is (see the module docstring).

        Only a key shorter than the key store's shortest is refused.
        """

        def check_key_length(self, key: bytes) -> str | None:
            if len(key) < MIN_HMAC_KEY_LENGTH:
                return (
                    f"a {len(key)}-byte key is shorter than "
                    f"{MIN_HMAC_KEY_LENGTH} bytes"
                )
            return None

    jws = jwt.PyJWS(
        algorithms=[OFFLINE_ALGORITHM],
        options={
            "verify_signature": True,
            "enforce_minimum_key_length": True,
        },
    )
    jws.register_algorithm("HS256", StoredKeyHMAC(HMACAlgorithm.SHA256))
    jws.register_algorithm("HS512", StoredKeyHMAC(HMACAlgorithm.SHA512))
    return jws


def _fail(reason: str, detail: str, kid: int | None = None) -> NoReturn:
    # from None: the library's exception, chained, would travel with
    # ours into tracebacks and logs.
    raise LicenseError(reason, detail, kid) from None


def _kid_index(kid: Any) -> int:
    """Return the key index a header's kid names (rules: module doc)."""
    if kid is None:
        _fail("malformed", "the header names no key (kid)")
    if not isinstance(kid, str) or _CANONICAL_INDEX.fullmatch(kid) is None:
        _fail("malformed", "kid is not a key index in decimal")
    if len(kid) > MAX_KID_DIGITS:
        _fail("unknown_kid", "kid is beyond any index of the key ring")
    return int(kid)


def _read_claims(payload: bytes, index: int) -> dict[str, Any]:
    """Parse and check the claims of a license whose signature holds."""
    try:
        claims = json.loads(payload)
    except (ValueError, RecursionError):
        _fail("malformed", "the claims are not JSON", index)
    if not isinstance(claims, dict):
        _fail("malformed", "the claims are not a JSON object", index)
    if claims.get("iss") != ISSUER:
        _fail("malformed", f"not issued by {ISSUER} (iss)", index)
    if not _is_text(claims.get("sub")):
        _fail("malformed", "the subject (sub) is missing or not text", index)
    for name in ("iat", "nbf", "exp"):
        if not _is_time(claims.get(name)):
            _fail(
                "malformed",
                f"{name} is missing or not a time in whole seconds",
                index,
            )
    features = claims.get("features")
    if not isinstance(features, list) or not all(map(_is_text, features)):
        _fail(
            "malformed", "features is missing or not a list of text", index
        )
    return claims


def _is_text(value: Any) -> bool:
    # printable: no line breaks or control characters to reach a log
    return isinstance(value, str) and value != "" and value.isprintable()


def _is_time(value: Any) -> bool:
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and 0 <= value <= MAX_TIME
    )


def _check_text(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if not _is_text(value):
        raise ValueError(
            f"{name} must be printable text, not empty and without line "
            "breaks or control characters"
        )


def _check_time(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{name} must be an int of seconds since the epoch, not "
            f"{type(value).__name__}"
        )
    if not _is_time(value):
        raise ValueError(
            f"{name} must be from 0 to {MAX_TIME} ({_iso(MAX_TIME)}), not "
            f"{value}"
        )
    return value


def _describe_algorithm(algorithm: Any) -> str:
    if isinstance(algorithm, str) and algorithm in _KNOWN_ALGORITHMS:
        return f"alg {algorithm}"
    return "an unknown alg"


def _now() -> int:
    return int(time.time())


def _iso(seconds: int) -> str:
    """Return a time in seconds as ISO 8601 UTC, ``2026-01-01T00:00:00Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
