"""The retained keys: ``GET current-key``, ``GET key/{index}`` and
``GET history`` under ``/api/daemon``.

A key is named by its index and fingerprint, never by any part of the
key. The key itself is in a reply only where a full admin token asks
for it (``current-key``, ``key/{index}``, ``history?reveal=true``), and
each key revealed is one line in the security log. History metadata
needs a read-only token at least.

An index the key ring never had, and one it had but no longer retains
(pruned, or archived by a reset), are both 404; the message says which.
"""

import logging
import re
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from torro import logs
from torro.api.auth import Caller
from torro.api.endpoints import FULL, READ, Call, Endpoint
from torro.api.errors import ApiError
from torro.manager import iso_time
from torro.store.keystore import StoreView
from torro.store.records import KeyRecord


MAX_PER_PAGE = 100

_INDEX = re.compile(r"0|-?[1-9][0-9]*")

security_log = logging.getLogger(logs.SECURITY)


class KeyInfo(BaseModel):
    """One retained key; ``key`` (lowercase hex) only when revealed."""

    index: int
    fingerprint: str
    created: str
    algorithm: str
    length: int
    derived_from: int | None
    role: Literal["current", "retained"]
    sealed: bool
    key: str | None = None


class KeyPath(BaseModel):
    """The index of a key, in the path, in decimal: one spelling each."""

    index: int

    @field_validator("index", mode="before")
    @classmethod
    def _one_spelling(cls, value: object) -> object:
        # int() would take 1_0, 00, +1 and " 1" for keys 10, 0 and 1
        if isinstance(value, str) and _INDEX.fullmatch(value) is None:
            raise ValueError(
                "must be a whole number in decimal, without signs, "
                "spaces or leading zeros"
            )
        return value


class HistoryQuery(BaseModel):
    """Which page of the history, and whether to reveal the keys."""

    page: int = Field(default=1, ge=1)
    per_page: int = Field(default=20, ge=1, le=MAX_PER_PAGE)
    reveal: bool = False


class History(BaseModel):
    """One page of the retained keys, newest first."""

    keys: list[KeyInfo]
    total: int
    page: int
    per_page: int
    pages: int


def _info(
    view: StoreView,
    record: KeyRecord,
    caller: Caller | None = None,
) -> KeyInfo:
    """Describe a record; with a caller, reveal its key and log it."""
    current = view.current is not None and view.current.index == record.index
    info = KeyInfo(
        index=record.index,
        fingerprint=record.fingerprint,
        created=iso_time(record.timestamp),
        algorithm=record.algorithm,
        length=record.length,
        derived_from=record.derived_from,
        role="current" if current else "retained",
        sealed=record.sealed,
    )
    if caller is not None:
        info.key = view.material(record.index).reveal_hex()
        security_log.warning(
            "api: key %d (fingerprint %s) revealed to full token %s from %s",
            record.index,
            record.fingerprint,
            caller.token_id,
            caller.address,
        )
    return info


def _not_found(view: StoreView, index: int) -> ApiError:
    oldest = view.oldest
    if 0 <= index < view.next_index and index not in view.records:
        return ApiError(
            404,
            f"key {index} is no longer retained (the oldest retained key "
            f"is {oldest})",
        )
    if 0 <= index < 10**18:
        return ApiError(
            404,
            f"no key with index {index}: indexes run from {oldest} to "
            f"{view.next_index - 1}",
        )
    return ApiError(
        404,
        f"no key with that index: indexes run from {oldest} to "
        f"{view.next_index - 1}",
    )


def current_key(call: Call) -> KeyInfo:
    """The current key, the one that signs; needs a full token.

    The key itself is in the reply, and the reveal is logged.
    """

    def reveal(view: StoreView) -> KeyInfo:
        assert view.current is not None
        return _info(view, view.current, call.caller)

    return call.service.read(reveal, fresh=True)


def key(call: Call) -> KeyInfo:
    """A retained key by index; needs a full token.

    The key itself is in the reply, and the reveal is logged. 404 when
    the key ring never had the index, or no longer retains it.
    """
    index = call.path.index

    def reveal(view: StoreView) -> KeyInfo:
        record = view.records.get(index)
        if record is None:
            raise _not_found(view, index)
        return _info(view, record, call.caller)

    return call.service.read(reveal, fresh=True)


def history(call: Call) -> History:
    """The retained keys, newest first, a page at a time.

    Metadata only, for a read-only or a full token; with
    ``reveal=true`` (full token only) each key of the page is in the
    reply, and each reveal is logged.
    """
    caller = call.caller
    query: HistoryQuery = call.query
    assert caller is not None
    if query.reveal and not caller.is_full:
        security_log.warning(
            "api: refused reveal=true to read-only token %s from %s (403)",
            caller.token_id,
            caller.address,
        )
        raise ApiError(
            403, "reveal=true needs a full admin token; read-only tokens "
            "see metadata only",
        )
    page, per_page = query.page, query.per_page

    def list_page(view: StoreView) -> History:
        indexes = sorted(view.records, reverse=True)
        start = (page - 1) * per_page
        chosen = indexes[start:start + per_page]
        revealer = caller if query.reveal else None
        return History(
            keys=[_info(view, view.records[i], revealer) for i in chosen],
            total=len(indexes),
            page=page,
            per_page=per_page,
            pages=-(-len(indexes) // per_page),
        )

    return call.service.read(list_page, fresh=True)


ENDPOINTS = [
    Endpoint(
        "GET",
        "/api/daemon/current-key",
        current_key,
        reply=KeyInfo,
        access=FULL,
        errors=(503,),
        tag="keys",
    ),
    Endpoint(
        "GET",
        "/api/daemon/key/{index}",
        key,
        reply=KeyInfo,
        access=FULL,
        path_model=KeyPath,
        errors=(404, 503),
        tag="keys",
    ),
    Endpoint(
        "GET",
        "/api/daemon/history",
        history,
        reply=History,
        access=READ,
        query=HistoryQuery,
        errors=(503,),
        tag="keys",
    ),
]
