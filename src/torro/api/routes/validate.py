"""``POST /api/daemon/validate-key``: is this key one of the ring's?

Public and rate limited per client address (KEY_DAEMON_RATE_LIMIT).
The key is sent as hex, ``{"key": "<hex>"}``, in either case; the reply
says whether it is the current key or a retained one, and gives its
index and fingerprint. The key is never repeated, not even in an
error.

The key is looked up by fingerprint and then compared with the stored
key in constant time.
"""

import re

from pydantic import BaseModel, ConfigDict, Field

from torro.api.endpoints import Call, Endpoint
from torro.api.errors import ApiError


# Twice the longest key (KEY_DAEMON_KEY_LENGTH is at most 1024 bytes).
MAX_KEY_HEX = 2048

_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")


class KeyToCheck(BaseModel):
    """A key to check, as hex digits."""

    model_config = ConfigDict(strict=True, extra="forbid")

    # The pattern is documented, not enforced by the model: a key that
    # breaks it is answered 400 invalid_key, not 422.
    key: str = Field(
        max_length=MAX_KEY_HEX,
        json_schema_extra={"pattern": f"^{_HEX.pattern}$"},
    )


class KeyCheck(BaseModel):
    """What the key is in the ring.

    ``index`` and ``fingerprint`` are null when ``valid`` is false.
    """

    valid: bool
    current: bool
    index: int | None
    fingerprint: str | None


def validate_key(call: Call) -> KeyCheck:
    """Tell whether a key is the current key or a retained one; public.

    400 when the key is not an even number of hex digits.
    """
    body: KeyToCheck = call.body
    if _HEX.fullmatch(body.key) is None:
        raise ApiError(
            400,
            "key must be an even number of hex digits (0-9, a-f, in "
            "either case)",
            "invalid_key",
        )
    match = call.service.find_key(bytes.fromhex(body.key))
    return KeyCheck(
        valid=match.valid,
        current=match.current,
        index=match.index,
        fingerprint=match.fingerprint,
    )


ENDPOINTS = [
    Endpoint(
        "POST",
        "/api/daemon/validate-key",
        validate_key,
        reply=KeyCheck,
        body=KeyToCheck,
        errors=(429, 503),
        tag="keys",
    ),
]
