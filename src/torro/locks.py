"""An exclusive lock on a file, held by one process at a time.

The key store serialises its writers with one (``keys/.lock``), and the
daemon holds one on its PID file for as long as it runs.
"""

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from torro.errors import LockError, LockTimeout


FILE_MODE = 0o600


class FileLock:
    """An exclusive advisory lock (flock) on a file, held by one process.

    The lock file is checked after locking to still be the file at its
    path, so a lock taken on a file that was moved or replaced meanwhile
    (by a reset, say) is dropped and taken again.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    @property
    def fd(self) -> int:
        """The descriptor of the locked file, while the lock is held."""
        if self._fd is None:
            raise RuntimeError(f"{self.path} is not locked")
        return self._fd

    def acquire(self, timeout: float) -> None:
        """Take the lock, waiting at most ``timeout`` seconds.

        :raises LockTimeout: when another process still holds it then.
        :raises LockError: when the lock file cannot be opened.
        """
        deadline = time.monotonic() + timeout
        delay = 0.001
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() >= deadline:
                    raise LockTimeout(
                        f"{self.path} is locked by another process for over "
                        f"{timeout:g} s: wait for it to finish, or find it "
                        f"with fuser {self.path}"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
                continue
            if same_file(fd, self.path):
                self._fd = fd
                return
            os.close(fd)

    def release(self, *, remove: bool = False) -> None:
        """Drop the lock; with ``remove``, delete the lock file first."""
        if self._fd is None:
            return
        if remove and same_file(self._fd, self.path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        os.close(self._fd)
        self._fd = None

    @contextlib.contextmanager
    def hold(self, timeout: float) -> Iterator[None]:
        self.acquire(timeout)
        try:
            yield
        finally:
            self.release()

    def _open(self) -> int:
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, FILE_MODE)
        except OSError as exc:
            raise LockError(
                f"cannot open lock file {self.path}: {exc.strerror}"
            ) from None
        # Another user's lock file keeps its mode; only ours are fixed.
        with contextlib.suppress(PermissionError):
            os.fchmod(fd, FILE_MODE)
        return fd


def same_file(fd: int, path: Path) -> bool:
    """Tell whether ``fd`` is the file now at ``path``."""
    try:
        on_disk = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)
