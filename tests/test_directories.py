"""Tests for torro.directories: modes that do not depend on the umask."""

import stat
from pathlib import Path

import pytest

from torro.directories import make_directories


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_missing_parent_gets_the_mode(
    tmp_path: Path, umask_zero: None
) -> None:
    target = tmp_path / "data" / "torro" / "keys"

    assert make_directories(target, 0o700) is True

    assert [mode(p) for p in (tmp_path / "data", target.parent, target)] \
        == [0o700, 0o700, 0o700]


def test_an_existing_directory_is_left_alone(
    tmp_path: Path, umask_zero: None
) -> None:
    existing = tmp_path / "shared"
    existing.mkdir(mode=0o755)

    assert make_directories(existing, 0o700) is False
    assert make_directories(existing / "keys", 0o700) is True

    assert mode(existing) == 0o755
    assert mode(existing / "keys") == 0o700


def test_a_file_in_the_way_raises(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")

    with pytest.raises(NotADirectoryError):
        make_directories(tmp_path / "file" / "keys", 0o700)
