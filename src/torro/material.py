"""Key material that keeps its bytes out of logs, tracebacks and pickles.

A :class:`KeyMaterial` holds the raw secret bytes of one key. Its ``repr``,
``str`` and ``format`` show only the length and the fingerprint, so a key
caught in a log line or a traceback gives nothing away. The bytes come out
only through :meth:`KeyMaterial.reveal` and :meth:`KeyMaterial.reveal_hex`,
which makes every place that handles them easy to find.

The fingerprint is a short SHA-256 hash that identifies a key without
revealing any part of it: the first 8 bytes of SHA-256 over the key bytes,
as 16 lowercase hex characters. It is not a prefix of the key. Two keys
share a fingerprint only by a 64-bit hash collision, so it is fit for
telling keys apart in output and for spotting reuse, not for proving that
someone holds a key.
"""

import hashlib
import hmac
import re
from typing import Any, NoReturn

_LOWER_HEX = re.compile(r"[0-9a-f]*")


def fingerprint(data: bytes) -> str:
    """Return the fingerprint of ``data``: 16 hex chars of its SHA-256."""
    return hashlib.sha256(data).digest()[:8].hex()


class KeyMaterial:
    """Raw secret bytes of one key; repr and str never show them.

    Equality runs in constant time for keys of equal length. Instances are
    immutable by convention and refuse to be pickled, so key material never
    leaves the process by accident.

    :param data: the key bytes; must be :class:`bytes` and not empty.
    :raises TypeError: if ``data`` is not bytes.
    :raises ValueError: if ``data`` is empty.
    """

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        if not isinstance(data, bytes):
            raise TypeError(
                f"key material must be bytes, not {type(data).__name__}"
            )
        if not data:
            raise ValueError("key material must not be empty")
        self._data = bytes(data)

    @classmethod
    def from_hex(cls, text: str) -> "KeyMaterial":
        """Build key material from its stored form, lowercase hex.

        The check is strict: an even number of characters, each one of
        ``0-9a-f``. Error messages never quote ``text``.

        :raises TypeError: if ``text`` is not a str.
        :raises ValueError: if ``text`` is empty, of odd length or holds
            any other character, uppercase hex included.
        """
        if not isinstance(text, str):
            raise TypeError(
                f"key hex must be str, not {type(text).__name__}"
            )
        if _LOWER_HEX.fullmatch(text) is None:
            raise ValueError(
                "key hex must hold only lowercase hex digits 0-9a-f"
            )
        if len(text) % 2:
            raise ValueError(
                f"key hex must have an even length, not {len(text)}"
            )
        return cls(bytes.fromhex(text))

    def __len__(self) -> int:
        return len(self._data)

    def reveal(self) -> bytes:
        """Return the raw key bytes; keep them out of logs and messages."""
        return self._data

    def reveal_hex(self) -> str:
        """Return the key bytes as lowercase hex, the stored form."""
        return self._data.hex()

    @property
    def fingerprint(self) -> str:
        """Identify the key in output without revealing any part of it."""
        return fingerprint(self._data)

    def __repr__(self) -> str:
        return (
            f"<KeyMaterial {len(self._data)} bytes"
            f" fingerprint={self.fingerprint}>"
        )

    __str__ = __repr__

    def __format__(self, format_spec: str) -> str:
        return format(repr(self), format_spec)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KeyMaterial):
            return NotImplemented
        return hmac.compare_digest(self._data, other._data)

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __copy__(self) -> "KeyMaterial":
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> "KeyMaterial":
        return self

    def __reduce__(self) -> NoReturn:
        raise TypeError("key material cannot be pickled")
