"""Tests for torro.store.files: atomic writes, modes, destroying files."""

import errno
import os
import stat
from pathlib import Path

import pytest

from torro.errors import StoreError
from torro.store import files

def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def fail_on(
    monkeypatch: pytest.MonkeyPatch, name: str, code: int = errno.ENOSPC
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, name, fail)


# writing


def test_write_file_creates_0600_under_umask_zero(
    tmp_path: Path, umask_zero: None
) -> None:
    path = tmp_path / "current.json"

    files.write_file(path, b"{}\n")

    assert path.read_bytes() == b"{}\n"
    assert mode(path) == 0o600
    assert os.listdir(tmp_path) == ["current.json"]


@pytest.mark.parametrize("durable", [True, False])
def test_write_file_replaces_content_and_fixes_mode(
    tmp_path: Path, durable: bool
) -> None:
    path = tmp_path / "history.json"
    path.write_bytes(b"old content, longer than the new one\n")
    path.chmod(0o644)

    files.write_file(path, b"new\n", durable=durable)

    assert path.read_bytes() == b"new\n"
    assert mode(path) == 0o600
    assert os.listdir(tmp_path) == ["history.json"]


@pytest.mark.parametrize("failing", ["fsync", "write", "replace"])
def test_failed_write_keeps_old_file_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    path = tmp_path / "current.json"
    path.write_bytes(b"old\n")
    fail_on(monkeypatch, failing)

    with pytest.raises(StoreError) as caught:
        files.write_file(path, b"new\n")

    assert str(caught.value) == (
        f"cannot write {path}: No space left on device; free space on that "
        "filesystem; nothing was changed"
    )
    monkeypatch.undo()
    assert path.read_bytes() == b"old\n"
    assert os.listdir(tmp_path) == ["current.json"]


def test_write_error_message_is_one_line_for_read_only_filesystem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "current.json"
    fail_on(monkeypatch, "open", errno.EROFS)

    with pytest.raises(StoreError) as caught:
        files.write_file(path, b"new\n")

    assert str(caught.value) == (
        f"cannot write {path}: Read-only file system; the filesystem is "
        "read-only"
    )


def test_ensure_directory_creates_0700_under_umask_zero(
    tmp_path: Path, umask_zero: None
) -> None:
    path = tmp_path / "keys"

    assert files.ensure_directory(path) is True
    assert files.ensure_directory(path) is False
    assert mode(path) == 0o700


def test_ensure_directory_refuses_a_file(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_bytes(b"")

    with pytest.raises(StoreError) as caught:
        files.ensure_directory(path)

    assert str(caught.value) == f"{path} exists and is not a directory"


def test_read_file_returns_none_for_a_missing_file(tmp_path: Path) -> None:
    assert files.read_file(tmp_path / "absent.json") is None


def test_read_file_refuses_a_directory(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as caught:
        files.read_file(tmp_path)

    assert str(caught.value) == f"{tmp_path} is a directory, expected a file"


# Fault found by a tester: a store file linked to /dev/zero filled memory
# until the OOM killer came, a FIFO blocked every command, and 300 MB of
# padding in history.json was read whole.


def test_read_file_refuses_a_link_to_an_endless_file(tmp_path: Path) -> None:
    path = tmp_path / "history.json"
    path.symlink_to("/dev/zero")

    with pytest.raises(StoreError) as caught:
        files.read_file(path)

    assert str(caught.value) == (
        f"{path} is a symbolic link, so not a file of the key store: move "
        "it away, then run torro keys restore"
    )


def test_read_file_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "current.json"
    os.mkfifo(path)

    with pytest.raises(StoreError) as caught:
        files.read_file(path)

    assert str(caught.value) == (
        f"{path} is not a regular file, so not a file of the key store: "
        "move it away, then run torro keys restore"
    )


def test_read_file_refuses_a_file_over_the_size_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "MAX_FILE_BYTES", 3 << 20)
    path = tmp_path / "history.json"
    path.write_bytes(b" " * (3 << 20) + b"{}")

    with pytest.raises(StoreError) as caught:
        files.read_file(path)

    assert str(caught.value) == (
        f"{path} is larger than 3 MiB, so not a file of the key store: "
        "move it away, then run torro keys restore"
    )


def test_read_file_reads_a_file_at_the_size_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "MAX_FILE_BYTES", 200_000)
    path = tmp_path / "history.json"
    path.write_bytes(b"x" * 200_000)

    assert files.read_file(path) == b"x" * 200_000


def test_destroy_file_zeroes_content_before_removing(tmp_path: Path) -> None:
    path = tmp_path / "key-3.json"
    path.write_bytes(b"secret record")
    # An open descriptor keeps the inode readable after the unlink.
    with open(path, "rb") as witness:
        assert files.destroy_file(path) is True

        assert not path.exists()
        assert witness.read() == bytes(13)
    assert files.destroy_file(path) is False


def test_destroy_file_leaves_content_another_name_shares(
    tmp_path: Path,
) -> None:
    path = tmp_path / "key-3.json"
    path.write_bytes(b"secret record")
    current = tmp_path / "current.json"
    os.link(path, current)

    assert files.destroy_file(path) is True

    assert not path.exists()
    assert current.read_bytes() == b"secret record"


def test_remove_temp_files_removes_only_temp_files(tmp_path: Path) -> None:
    names = [
        ".current.json.abcd1234.tmp",
        ".key-4.json.0f0f0f0f.tmp",
        "current.json",
        "notes.tmp",
        ".lock",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"x")

    removed = files.remove_temp_files(tmp_path)

    assert sorted(removed) == [
        tmp_path / ".current.json.abcd1234.tmp",
        tmp_path / ".key-4.json.0f0f0f0f.tmp",
    ]
    assert sorted(os.listdir(tmp_path)) == [
        ".lock", "current.json", "notes.tmp"
    ]
    assert files.remove_temp_files(tmp_path / "absent") == []
