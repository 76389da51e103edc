"""Tests for torro.locks: one holder at a time, across processes."""

import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from torro.errors import LockTimeout
from torro.locks import FileLock

HOLD_LOCK = """
import sys, time
from pathlib import Path
from torro.locks import FileLock
lock = FileLock(Path(sys.argv[1]))
lock.acquire(5.0)
print("held", flush=True)
sys.stdin.read()
"""



@pytest.fixture
def lock_holder(tmp_path: Path) -> Iterator[Path]:
    """Hold the lock on ``tmp_path/.lock`` in another process."""
    path = tmp_path / ".lock"
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == b"held\n"
        yield path
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(timeout=10)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_lock_is_held_and_released(tmp_path: Path) -> None:
    lock = FileLock(tmp_path / ".lock")

    with lock.hold(1.0):
        assert lock.held
        assert mode(tmp_path / ".lock") == 0o600
    assert not lock.held


def test_acquire_times_out_while_another_process_holds_it(
    lock_holder: Path,
) -> None:
    lock = FileLock(lock_holder)

    with pytest.raises(LockTimeout) as caught:
        lock.acquire(timeout=0.2)

    assert str(caught.value) == (
        f"{lock_holder} is locked by another process for over 0.2 s: wait "
        f"for it to finish, or find it with fuser {lock_holder}"
    )
    assert not lock.held


def test_acquire_succeeds_once_the_holder_exits(tmp_path: Path) -> None:
    path = tmp_path / ".lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline() == b"held\n"
    holder.stdin.close()
    holder.wait(timeout=10)

    lock = FileLock(path)
    lock.acquire(timeout=1.0)

    assert lock.held
    lock.release()


def test_lock_taken_on_a_replaced_file_is_taken_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock file swapped out after open is dropped for the new one."""
    path = tmp_path / ".lock"
    lock = FileLock(path)
    real_open: Callable[[], int] = lock._open
    opened: list[int] = []

    def open_then_replace() -> int:
        fd = real_open()
        if not opened:
            os.rename(path, tmp_path / ".lock.old")
        opened.append(fd)
        return fd

    monkeypatch.setattr(lock, "_open", open_then_replace)

    lock.acquire(timeout=1.0)

    assert len(opened) == 2
    held = os.fstat(opened[1])
    assert (held.st_dev, held.st_ino) == (
        path.stat().st_dev, path.stat().st_ino
    )
    lock.release()
