"""Tests for torro.store.records: the record's JSON form and checksum."""

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from torro.store.records import (
    KeyRecord,
    KeyState,
    RecordError,
    canonical_json,
    field_problem,
    parse_record,
)

texts = st.text(max_size=40)
indexes = st.integers(min_value=0, max_value=2**63)
records = st.builds(
    KeyRecord,
    key_text=texts,
    index=indexes,
    timestamp=st.integers(min_value=-(2**63), max_value=2**63),
    algorithm=texts,
    length=st.integers(min_value=0, max_value=4096),
    derived_from=st.none() | indexes,
    state=st.sampled_from(KeyState),
    fingerprint=texts,
    master_key_id=texts,
    previous_checksum=st.none() | texts,
    checksum=texts,
)


@given(records)
def test_checksum_payload_is_the_canonical_json(record: KeyRecord) -> None:
    """The hand-built payload equals json.dumps(sort_keys=True) of the
    record without its checksum, for any field values."""
    document = record.to_document()
    del document["checksum"]

    assert record.checksum_payload() == canonical_json(document)


@given(records)
def test_a_record_survives_its_json_form(record: KeyRecord) -> None:
    assert parse_record(record.to_json()) == record


@given(st.dictionaries(texts, st.none() | st.booleans() | st.integers()
                       | texts | st.lists(st.integers(), max_size=3)))
def test_parsing_any_json_object_fails_only_with_record_error(
    document: dict[str, Any],
) -> None:
    try:
        parse_record(json.dumps(document).encode())
    except RecordError:
        pass


@given(st.binary(max_size=200))
def test_parsing_any_bytes_fails_only_with_record_error(data: bytes) -> None:
    try:
        parse_record(data)
    except RecordError:
        pass


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (True, "field 'index' is not an integer"),
        (1.0, "field 'index' is not an integer"),
        ("1", "field 'index' is not an integer"),
        (None, "field 'index' is not an integer"),
        (1, None),
    ],
)
def test_field_types_are_exact(value: object, problem: str | None) -> None:
    assert field_problem({"index": value}, {"index": (int,)}) == problem


def test_a_missing_field_is_named() -> None:
    assert field_problem({}, {"derivedFrom": (int, type(None))}) == (
        "field 'derivedFrom' is missing"
    )
