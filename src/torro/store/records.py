"""The key record and its JSON form on disk.

A record keeps the fields of the original plaintext format (``key``,
``index``, ``timestamp``, ``algorithm``, ``length``, ``derivedFrom``) and adds
what sealing and integrity need. The ``key`` field holds the key's lowercase
hex when the store is not encrypted, and ``torro:v1:`` followed by the sealed
key otherwise. The ``checksum`` covers every other field, including the
checksum of the record before it, which chains the records together.

This module does not touch the disk.
"""

import dataclasses
import enum
import json
from typing import Any

from torro.sealing import SEALED_PREFIX


class KeyState(enum.StrEnum):
    """Where a key stands in its lifecycle.

    Every key made today is ``active``: the current key signs and verifies,
    the retained ones verify. ``staged`` is reserved for a next key that is
    published before it signs; the store refuses records in that state until
    it knows how to serve them.
    """

    ACTIVE = "active"
    STAGED = "staged"


class RecordError(ValueError):
    """A record's JSON is not a well-formed key record."""


# The fields of the original plaintext format, with their JSON types.
DOCUMENTED_FIELDS: dict[str, tuple[type, ...]] = {
    "key": (str,),
    "index": (int,),
    "timestamp": (int,),
    "algorithm": (str,),
    "length": (int,),
    "derivedFrom": (int, type(None)),
}
# A record's fields in their order on disk: those, then what sealing and
# integrity need.
_FIELDS: dict[str, tuple[type, ...]] = {
    **DOCUMENTED_FIELDS,
    "state": (str,),
    "fingerprint": (str,),
    "masterKeyId": (str,),
    "previousChecksum": (str, type(None)),
    "checksum": (str,),
}


@dataclasses.dataclass(frozen=True, slots=True)
class KeyRecord:
    """One key of a key ring as stored, with its key sealed or not.

    :param key_text: the ``key`` field: lowercase hex, or a sealed key.
    :param timestamp: when the key was made, in ms since the epoch.
    :param derived_from: the index of the key it was derived from, or None
        for the first key of a chain.
    :param fingerprint: a short hash of the key (see torro.material).
    :param master_key_id: the id of the master key whose checksum key (and
        sealing key, for a sealed record) wrote the record.
    :param previous_checksum: the checksum of the record before this one in
        the chain, or None for the first record of a chain.
    """

    key_text: str
    index: int
    timestamp: int
    algorithm: str
    length: int
    derived_from: int | None
    state: KeyState
    fingerprint: str
    master_key_id: str
    previous_checksum: str | None
    checksum: str = ""

    @property
    def sealed(self) -> bool:
        return self.key_text.startswith(SEALED_PREFIX)

    @property
    def file_name(self) -> str:
        return f"key-{self.index}.json"

    def __repr__(self) -> str:
        return (
            f"<KeyRecord index={self.index} "
            f"fingerprint={self.fingerprint} state={self.state}>"
        )

    def to_document(self) -> dict[str, Any]:
        return {
            "key": self.key_text,
            "index": self.index,
            "timestamp": self.timestamp,
            "algorithm": self.algorithm,
            "length": self.length,
            "derivedFrom": self.derived_from,
            "state": str(self.state),
            "fingerprint": self.fingerprint,
            "masterKeyId": self.master_key_id,
            "previousChecksum": self.previous_checksum,
            "checksum": self.checksum,
        }

    def checksum_payload(self) -> bytes:
        """Return the canonical bytes the checksum is computed over.

        The same bytes as :func:`canonical_json` of every field but the
        checksum, spelt out field by field (in sorted order) because a
        store of many keys checks them all on every load.
        """
        text = _json_text
        return (
            f'{{"algorithm":{text(self.algorithm)},'
            f'"derivedFrom":{_json_index(self.derived_from)},'
            f'"fingerprint":{text(self.fingerprint)},'
            f'"index":{int(self.index)},'
            f'"key":{text(self.key_text)},'
            f'"length":{int(self.length)},'
            f'"masterKeyId":{text(self.master_key_id)},'
            f'"previousChecksum":{_json_text_or_null(self.previous_checksum)},'
            f'"state":{text(str(self.state))},'
            f'"timestamp":{int(self.timestamp)}}}'
        ).encode()

    def metadata(self) -> dict[str, Any]:
        """Return the record without key material, for history.json."""
        document = self.to_document()
        del document["key"]
        return document

    def to_json(self) -> bytes:
        return json.dumps(self.to_document(), indent=2).encode() + b"\n"


_json_text = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]


def _json_index(value: int | None) -> str:
    return "null" if value is None else str(int(value))


def _json_text_or_null(value: str | None) -> str:
    return "null" if value is None else _json_text(value)


def canonical_json(document: Any) -> bytes:
    return json.dumps(
        document, sort_keys=True, separators=(",", ":")
    ).encode()


def parse_record(data: bytes) -> KeyRecord:
    """Read a record from its JSON form.

    :raises RecordError: naming the first field that is missing or has the
        wrong type; the message never quotes the key.
    """
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        raise RecordError("not valid JSON") from None
    return record_from_document(document)


def field_problem(
    document: dict[str, Any], fields: dict[str, tuple[type, ...]]
) -> str | None:
    """Say what is wrong with the first bad field of a JSON object.

    :param fields: each expected field with the Python types its JSON
        value may have.
    :returns: None when every field is there with a right type.
    """
    for name, types in fields.items():
        if name not in document:
            return f"field {name!r} is missing"
        # The exact type: bool is an int in Python, never in a record.
        if type(document[name]) not in types:
            return f"field {name!r} is not {_type_names(types)}"
    return None


def _type_names(types: tuple[type, ...]) -> str:
    names = {
        str: "a string",
        int: "an integer",
        type(None): "null",
    }
    return " or ".join(names.get(kind, kind.__name__) for kind in types)


def record_from_document(document: Any) -> KeyRecord:
    if not isinstance(document, dict):
        raise RecordError("not a JSON object")
    problem = field_problem(document, _FIELDS)
    if problem is not None:
        raise RecordError(problem)
    try:
        state = KeyState(document["state"])
    except ValueError:
        raise RecordError(
            f"state {document['state']!r} is not one this version knows"
        ) from None
    if document["index"] < 0:
        raise RecordError("field 'index' is negative")
    return KeyRecord(
        key_text=document["key"],
        index=document["index"],
        timestamp=document["timestamp"],
        algorithm=document["algorithm"],
        length=document["length"],
        derived_from=document["derivedFrom"],
        state=state,
        fingerprint=document["fingerprint"],
        master_key_id=document["masterKeyId"],
        previous_checksum=document["previousChecksum"],
        checksum=document["checksum"],
    )
