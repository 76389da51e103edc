"""Key generation, derivation of the next key, and key validation.

Pure functions: no disk, no clock, no logging. Randomness comes from a
:class:`RandomSource` the caller may replace, so tests can pin it.

Derivation
----------
The first key of a key ring is ``L`` bytes from the random source. Each
next key is derived from the previous one:

1. draw ``salt = random.token_bytes(SALT_LENGTH)``, then
   ``entropy = random.token_bytes(L)``, in this order;
2. ``derived = PBKDF2-HMAC(algorithm, previous, salt, rounds, L)``;
3. ``combined = derived || entropy``;
4. if ``L`` equals the digest size of ``algorithm``, the new key is
   ``hash(combined)``; otherwise it is
   ``HKDF(algorithm, length=L, salt=None, info=HKDF_INFO)(combined)``.

The fresh entropy means that knowing one key does not give the next; the
previous key means that a predictable random source alone does not
either.

Validation
----------
:func:`validate_key` checks a new or imported key, in its stored hex form,
and raises :class:`~torro.errors.KeyValidationError` with the reason of
the first failed check: ``length``, ``not_hex``, ``duplicate``, then
``low_entropy``. No message quotes the key text.

:func:`check_entropy` rejects degenerate keys. For a key of ``L`` bytes
it measures the Shannon entropy, in bits, of the histogram of its bytes
and of the histogram of its ``L - 1`` consecutive differences
``data[i + 1] - data[i] mod 256``. Each must reach
``ENTROPY_FRACTION`` (0.7) of the most that ``n`` values can reach,
``log2(min(n, 256))``. The key must also not repeat a block of at most
``L // 2`` bytes, that is have a period ``p`` with
``data[p:] == data[:-p]``. This rejects keys of one byte value, short
patterns repeated, arithmetic sequences such as 0, 1, 2, ... or a step
of 7 up or down, and, from 64 bytes on, hex text taken for raw bytes.

``bench/entropy_threshold.py`` measures how often output from a CSPRNG
is rejected. Per key, the chance is 5.1e-10 at 16 bytes, the tightest
case (exact), 8.4e-19 at 32 bytes (exact), and below 6e-17 at 64 bytes,
8e-23 at 128 and 2e-61 at 1024 (Chernoff bounds). None of 200,000
random keys of each of 16, 32, 64 and 128 bytes, nor of 20,000 of 1024
bytes, was rejected; the lowest score at 16 bytes was 0.80 of the
maximum. To reject an 8-byte pattern repeated in a 16-byte key (it
scores 0.75) by entropy alone, the fraction would have to exceed 0.75
and the chance at 16 bytes would grow to 4.4e-8; the repeat check
rejects such keys instead, so the fraction can stay at 0.7. Keys
shorter than 16 bytes are outside the calibrated range: the chance is
2.5e-5 at 8 bytes.
"""

import collections
import hashlib
import itertools
import math
import operator
import re
import secrets
from collections.abc import Container, Iterable
from typing import Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from torro.errors import KeyValidationError
from torro.material import KeyMaterial

ALGORITHMS: dict[str, int] = {"sha256": 32, "sha384": 48, "sha512": 64}
SALT_LENGTH = 16
HKDF_INFO = b"torro next key"
ENTROPY_FRACTION = 0.7

_HKDF_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
_LOWER_HEX = re.compile(r"[0-9a-f]*")


class RandomSource(Protocol):
    """Where key bytes, salts and fresh entropy come from."""

    def token_bytes(self, n: int) -> bytes:
        """Return ``n`` random bytes."""
        ...


class SystemRandom:
    """Random source backed by the operating system's CSPRNG."""

    def token_bytes(self, n: int) -> bytes:
        """Return ``n`` bytes from :func:`secrets.token_bytes`."""
        return secrets.token_bytes(n)


SYSTEM_RANDOM = SystemRandom()


def generate_first_key(
    length: int,
    random: RandomSource = SYSTEM_RANDOM,
) -> KeyMaterial:
    """Generate the first key of a key ring from the random source.

    :param length: the key length in bytes, at least 1.
    :param random: the random source; the OS CSPRNG unless replaced.
    :raises ValueError: if ``length`` is below 1 or the source returns
        the wrong number of bytes.
    """
    _require_positive("key length", length)
    return KeyMaterial(_draw(random, length))


def pbkdf2(
    algorithm: str,
    password: bytes,
    salt: bytes,
    rounds: int,
    length: int,
) -> bytes:
    """Stretch ``password`` with PBKDF2-HMAC into ``length`` bytes.

    :param algorithm: a name from :data:`ALGORITHMS`.
    :raises ValueError: if the algorithm is unknown, or ``rounds`` or
        ``length`` is below 1.
    """
    _digest_size(algorithm)
    return hashlib.pbkdf2_hmac(
        algorithm, password, salt, rounds, dklen=length
    )


def derive_next_key(
    previous: KeyMaterial,
    *,
    algorithm: str,
    rounds: int,
    length: int,
    random: RandomSource = SYSTEM_RANDOM,
) -> KeyMaterial:
    """Derive the key that follows ``previous`` in its key ring.

    Draws the salt first and the fresh entropy second; tests rely on
    that order. The result is always exactly ``length`` bytes.

    :param previous: the current key.
    :param algorithm: a name from :data:`ALGORITHMS`, used for PBKDF2
        and for the final hash or HKDF.
    :param rounds: the PBKDF2 iteration count, at least 1.
    :param length: the new key's length in bytes, at least 1.
    :param random: the random source; the OS CSPRNG unless replaced.
    :raises ValueError: if an argument is out of range, the random
        source returns the wrong number of bytes, or ``length`` exceeds
        what HKDF can produce (255 digests, 8160 bytes for sha256).
    """
    digest_size = _digest_size(algorithm)
    _require_positive("rounds", rounds)
    _require_positive("key length", length)
    salt = _draw(random, SALT_LENGTH)
    entropy = _draw(random, length)

    derived = pbkdf2(algorithm, previous.reveal(), salt, rounds, length)
    combined = derived + entropy

    if length == digest_size:
        return KeyMaterial(hashlib.new(algorithm, combined).digest())
    hkdf = HKDF(
        algorithm=_HKDF_HASHES[algorithm](),
        length=length,
        salt=None,
        info=HKDF_INFO,
    )
    return KeyMaterial(hkdf.derive(combined))


def validate_key(
    text: str,
    length: int,
    seen: Container[str],
) -> KeyMaterial:
    """Validate a new or imported key and return its key material.

    :param text: the key in its stored form, lowercase hex.
    :param length: the expected key length in bytes.
    :param seen: the fingerprints of every key the key store has ever
        held; a set, so that membership takes constant time.
    :raises KeyValidationError: with reason ``length``, ``not_hex``,
        ``duplicate`` or ``low_entropy``, for the first failed check.
        The message never quotes ``text``.
    :raises ValueError: if ``length`` is below 1.
    """
    _require_positive("key length", length)
    if len(text) != 2 * length:
        raise KeyValidationError(
            "length",
            f"key hex has {len(text)} characters, expected"
            f" {2 * length} for a {length}-byte key",
        )
    if _LOWER_HEX.fullmatch(text) is None:
        raise KeyValidationError(
            "not_hex",
            "key hex must hold only lowercase hex digits 0-9a-f",
        )

    material = KeyMaterial(bytes.fromhex(text))
    key_fingerprint = material.fingerprint
    if key_fingerprint in seen:
        raise KeyValidationError(
            "duplicate",
            f"key {key_fingerprint} was already used in this key store;"
            " generate a new key",
        )
    reason = check_entropy(material.reveal())
    if reason is not None:
        raise KeyValidationError(
            "low_entropy",
            f"key {key_fingerprint} looks degenerate: {reason};"
            " generate a new key",
        )
    return material


def check_entropy(data: bytes) -> str | None:
    """Return why ``data`` looks degenerate, or None if it looks random.

    See the module docstring for the measures and the threshold.
    """
    if not data:
        return "no bytes"
    byte_bits = byte_entropy(data)
    floor = ENTROPY_FRACTION * _max_entropy(len(data))
    if byte_bits < floor:
        return f"byte entropy {byte_bits:.2f} bits is below {floor:.2f}"

    if len(data) > 1:
        difference_bits = difference_entropy(data)
        floor = ENTROPY_FRACTION * _max_entropy(len(data) - 1)
        if difference_bits < floor:
            return (
                f"difference entropy {difference_bits:.2f} bits"
                f" is below {floor:.2f}"
            )

    period = _shortest_period(data)
    if period:
        return f"repeats a block of {period} bytes"
    return None


def byte_entropy(data: bytes) -> float:
    """Return the Shannon entropy, in bits, of the bytes of ``data``."""
    return _entropy(collections.Counter(data).values(), len(data))


def difference_entropy(data: bytes) -> float:
    """Return the Shannon entropy, in bits, of consecutive differences.

    The differences are ``data[i + 1] - data[i] mod 256``, so a constant
    step, up or down, yields zero.
    """
    differences = map(
        operator.and_,
        map(operator.sub, data[1:], data),
        itertools.repeat(0xFF),
    )
    counts = collections.Counter(differences)
    return _entropy(counts.values(), len(data) - 1)


def _entropy(counts: Iterable[int], total: int) -> float:
    if total == 0:
        return 0.0
    weighted = sum(count * math.log2(count) for count in counts)
    return math.log2(total) - weighted / total


def _max_entropy(total: int) -> float:
    return math.log2(min(total, 256))


def _shortest_period(data: bytes) -> int:
    # a period p <= len/2 puts the first half again at offset p; find()
    # skips almost every candidate in C, so random keys cost one search
    size = len(data)
    half = data[: size // 2]
    start = data.find(half, 1)
    while 0 < start <= size // 2:
        if data[start:] == data[: size - start]:
            return start
        start = data.find(half, start + 1)
    return 0


def _digest_size(algorithm: str) -> int:
    try:
        return ALGORITHMS[algorithm]
    except (KeyError, TypeError):
        allowed = ", ".join(ALGORITHMS)
        raise ValueError(
            f"unknown algorithm {algorithm!r}; use one of {allowed}"
        ) from None


def _require_positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be at least 1, not {value}")


def _draw(random: RandomSource, n: int) -> bytes:
    data = random.token_bytes(n)
    if len(data) != n:
        raise ValueError(
            f"random source returned {len(data)} bytes, expected {n}"
        )
    return data
