"""``POST force-rotation`` and ``POST reset`` under ``/api/daemon``.

Both change the key store, and both need a full admin token. Each runs
under the service lock, which the rotation loop also holds for a pass,
and under the store's own file lock: it waits for a rotation in flight
rather than racing it. Neither reply holds key material, and each
change is one line in the security log.

A rotation or reset the store refuses (damaged store, clock behind the
current key, a new key failing validation, the lock held too long
elsewhere) answers 503 with the reason; nothing was stored.
"""

import logging
from typing import Literal

from pydantic import BaseModel, ConfigDict

from torro import logs
from torro.api.endpoints import FULL, Call, Endpoint
from torro.api.errors import ApiError
from torro.errors import TorroError
from torro.manager import iso_time


security_log = logging.getLogger(logs.SECURITY)


class Rotated(BaseModel):
    """The new current key, by index and fingerprint."""

    index: int
    timestamp: str
    fingerprint: str
    duration_seconds: float


class ResetRequest(BaseModel):
    """The confirmation a reset needs: ``{"confirm": "reset"}``."""

    model_config = ConfigDict(strict=True, extra="forbid")

    confirm: Literal["reset"]


class ResetDone(BaseModel):
    """The first key of the new chain, and where the old keys went."""

    index: int
    timestamp: str
    fingerprint: str
    archive: str
    archived_keys: int


def force_rotation(call: Call) -> Rotated:
    """Rotate now, whether or not the key is due; needs a full token.

    Answers the new key's index, timestamp and fingerprint, never the
    key.
    """
    caller = call.caller
    assert caller is not None
    try:
        rotation = call.service.rotate()
    except TorroError as exc:
        security_log.warning(
            "api: forced rotation by full token %s failed: %s",
            caller.token_id,
            exc,
        )
        raise ApiError(503, f"rotation refused: {exc}") from None
    record = rotation.record
    security_log.warning(
        "api: key rotated to %d (fingerprint %s) by full token %s from %s",
        record.index,
        record.fingerprint,
        caller.token_id,
        caller.address,
    )
    return Rotated(
        index=record.index,
        timestamp=iso_time(record.timestamp),
        fingerprint=record.fingerprint,
        duration_seconds=round(rotation.duration, 6),
    )


def reset(call: Call) -> ResetDone:
    """Archive every key and start a new chain; needs a full token and
    ``{"confirm": "reset"}``.

    The old store moves to an archive beside the key store, never
    destroyed. Licenses signed with the old keys stop verifying, with
    ``key_retired``. The new chain's indexes continue the old ones.
    """
    caller = call.caller
    assert caller is not None
    try:
        done = call.service.reset()
    except TorroError as exc:
        security_log.warning(
            "api: reset by full token %s failed: %s", caller.token_id, exc
        )
        raise ApiError(503, f"reset refused: {exc}") from None
    record = done.record
    security_log.warning(
        "api: key store reset by full token %s from %s: new chain at key "
        "%d, %d keys archived",
        caller.token_id,
        caller.address,
        record.index,
        len(done.old_indexes),
    )
    return ResetDone(
        index=record.index,
        timestamp=iso_time(record.timestamp),
        fingerprint=record.fingerprint,
        archive=str(done.archive),
        archived_keys=len(done.old_indexes),
    )


ENDPOINTS = [
    Endpoint(
        "POST",
        "/api/daemon/force-rotation",
        force_rotation,
        reply=Rotated,
        access=FULL,
        errors=(503,),
        tag="control",
    ),
    Endpoint(
        "POST",
        "/api/daemon/reset",
        reset,
        reply=ResetDone,
        access=FULL,
        body=ResetRequest,
        errors=(503,),
        tag="control",
    ),
]
