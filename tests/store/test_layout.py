"""Tests for torro.store.layout: where each file of a key store lives."""

from pathlib import Path

import pytest

from torro.store.layout import StoreLayout, store_is_empty


def partial_staging(directory: Path) -> Path:
    """Leave part of a new store under the staging name of ``directory``.
    """
    staging = directory.with_name(directory.name + ".staging")
    (staging / "history").mkdir(parents=True)
    (staging / "history" / "key-0.json").write_bytes(b'{"key": "se')
    return staging


def test_staging_beside_its_store_is_an_incomplete_build(
    tmp_path: Path,
) -> None:
    # an import killed while building: before, the store counted as
    # holding keys, so import refused it while status called it empty
    root = tmp_path / "keys"
    root.mkdir()
    (root / ".lock").touch()
    partial_staging(root)

    assert store_is_empty(root)
    assert StoreLayout(root).is_empty()


def test_staging_without_its_store_waits_to_be_renamed(
    tmp_path: Path,
) -> None:
    # a swap cut short between its renames: the staging directory is the
    # store, and the next writer renames it into place
    root = tmp_path / "keys"
    partial_staging(root)

    assert not store_is_empty(root)


def test_history_staging_counts_only_without_its_history(
    tmp_path: Path,
) -> None:
    root = tmp_path / "keys"
    root.mkdir()
    history = tmp_path / "history"
    partial_staging(history)

    assert not store_is_empty(root, history)
    history.mkdir()
    assert store_is_empty(root, history)


def test_staging_file_is_no_store(tmp_path: Path) -> None:
    root = tmp_path / "keys"
    root.with_name("keys.staging").write_bytes(b"")

    assert store_is_empty(root)


@pytest.mark.parametrize("name", [
    "current.json",
    "history.json",
    "backup/current.json",
    "backup/history.json",
    "history/key-3.json",
])
def test_any_file_of_a_key_ring_makes_a_store(
    tmp_path: Path, name: str
) -> None:
    root = tmp_path / "keys"
    path = root / name
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")

    assert not store_is_empty(root)


def test_lock_and_stray_files_alone_make_no_store(tmp_path: Path) -> None:
    root = tmp_path / "keys"
    (root / "history").mkdir(parents=True)
    (root / ".lock").touch()
    (root / "history" / "notes.txt").write_bytes(b"")
    (root / "history" / ".key-0.json.1234.tmp").write_bytes(b"{")

    assert store_is_empty(root)
    assert store_is_empty(tmp_path / "missing")
