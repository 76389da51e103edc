"""The daemon as a process: its PID file lock, background start and stop.

The running daemon holds an exclusive lock (flock) on its PID file for its
whole life. Whether a daemon runs is decided by that lock, never by the
number in the file alone: a PID file left by a crash is not locked, and a
PID reused by an unrelated process is never reported as the daemon nor
signalled.
"""

import contextlib
import dataclasses
import fcntl
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from torro.directories import make_directories
from torro.errors import DaemonError, LockError, LockTimeout
from torro.locks import FileLock, same_file


READY_FD_VARIABLE = "TORRO_READY_FD"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
# How long a daemon that failed to start may take to exit.
EXIT_WAIT = 5.0
# The mode of the directories made for the PID file: readable, so that
# anyone may check the daemon, and writable by its owner alone.
DIRECTORY_MODE = 0o755
# The malloc arenas the daemon's threads share (see limit_malloc_arenas).
MALLOC_ARENAS = 1
# glibc's mallopt parameter for the most arenas, M_ARENA_MAX.
_M_ARENA_MAX = -8


class PidFile:
    """The PID file of a running daemon, locked while the daemon lives."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = FileLock(path)

    def acquire(self, wait: float = 1.0) -> None:
        """Lock the PID file and write this process's PID into it.

        :param wait: how long to retry while the lock is busy; a status
            check holds it for a moment, a running daemon for good.
        :raises DaemonError: when another daemon holds it.
        """
        try:
            make_directories(self.path.parent, DIRECTORY_MODE)
            self._lock.acquire(wait)
        except LockTimeout:
            pid = read_daemon_pid(self.path)
            raise DaemonError(
                f"a daemon is already running (pid {pid}, PID file "
                f"{self.path}): stop it with torro daemon stop"
            ) from None
        except (LockError, OSError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise DaemonError(
                f"cannot open PID file {self.path}: {reason}; set "
                "KEY_DAEMON_PID_FILE to a writable path"
            ) from None
        fd = self._lock.fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)

    def release(self) -> None:
        """Remove the PID file and drop the lock."""
        self._lock.release(remove=True)


def read_daemon_pid(path: Path) -> int | None:
    """Return the PID of the daemon holding ``path``'s lock, or None.

    A PID file nobody holds locked is stale: its number means nothing.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DaemonError(
            f"cannot read PID file {path}: {exc.strerror}"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            return None
        # Locked: the daemon may still be writing its PID; give it a moment.
        for _ in range(50):
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            if text.isdigit():
                return _lock_holder(fd, int(text))
            time.sleep(0.01)
        return _lock_holder(fd, -1)
    finally:
        os.close(fd)


def _lock_holder(fd: int, named: int) -> int:
    """Return the PID of the process that holds the lock on ``fd``'s file.

    ``named`` is the number in the file. It is trusted when that process
    has the file open, as the daemon that wrote it has. Otherwise the
    number is not the daemon's: someone wrote another one into the file,
    or a daemon starting over a stale PID file has not written its own
    yet. The holder is then looked up in /proc/locks, so that no
    unrelated process is reported as the daemon or signalled.

    :returns: the holder's PID; ``named`` where /proc cannot tell; -1
        when the holder cannot be found.
    """
    held = os.fstat(fd)
    opened = _has_open(named, held) if named > 0 else False
    if opened is None or opened:
        return named
    for pid in _flock_holders(held.st_ino):
        if pid != os.getpid() and _has_open(pid, held):
            return pid
    return -1


def _has_open(pid: int, file: os.stat_result) -> bool | None:
    """Tell whether ``pid`` has ``file`` open; None when /proc cannot say.
    """
    directory = f"/proc/{pid}/fd"
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        # no such process, or no /proc at all
        return False if os.path.isdir("/proc/self/fd") else None
    except OSError:
        # another user's process
        return None
    for name in names:
        try:
            found = os.stat(f"{directory}/{name}")
        except OSError:
            continue
        if (found.st_dev, found.st_ino) == (file.st_dev, file.st_ino):
            return True
    return False


def _flock_holders(inode: int) -> list[int]:
    """Return the PIDs /proc/locks names as holding a lock on ``inode``.
    """
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            lines = f.readlines()
    except OSError:
        return []
    holders = []
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 4550 fe:00:2466713 0 EOF"; waiters
        # are marked "->" and hold nothing
        fields = line.split()
        if len(fields) < 6 or fields[1] == "->":
            continue
        where = fields[5].rsplit(":", 1)
        if fields[4].isdigit() and where[-1] == str(inode):
            holders.append(int(fields[4]))
    return holders


def remove_stale_pid_file(path: Path) -> bool:
    """Remove ``path`` if no daemon holds it; tell whether it did."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        if same_file(fd, path):
            os.unlink(path)
            return True
        return False
    finally:
        os.close(fd)


@dataclasses.dataclass(frozen=True)
class Started:
    """A daemon started in the background.

    :param warning: why it cannot rotate, when its store has a problem.
    """

    pid: int
    warning: str | None = None


def start_background(
    pid_file: Path, timeout: float = START_TIMEOUT
) -> Started:
    """Start ``torro daemon run`` detached and wait until it is ready.

    The daemon reports on a pipe once its store is loaded and its PID file
    locked, or tells why it could not start.
    """
    pid = read_daemon_pid(pid_file)
    if pid is not None:
        raise DaemonError(
            f"a daemon is already running (pid {pid}): stop it with torro "
            "daemon stop"
        )
    read_end, write_end = os.pipe()
    environ = dict(os.environ, **{READY_FD_VARIABLE: str(write_end)})
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "torro", "daemon", "run"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(write_end,),
            start_new_session=True,
            env=environ,
        )
    finally:
        os.close(write_end)
    try:
        message = _read_report(read_end, timeout)
    finally:
        os.close(read_end)
    if message is None:
        raise DaemonError(
            f"the daemon (pid {child.pid}) did not report ready within "
            f"{timeout:g} s; see the system log"
        )
    if message.startswith("ready"):
        warning = message.removeprefix("ready").removeprefix(", but ")
        return Started(child.pid, warning or None)
    # The daemon failed or closed the pipe without a word: it is exiting,
    # and may not be reaped yet.
    try:
        code = child.wait(timeout=EXIT_WAIT)
    except subprocess.TimeoutExpired:
        code = None
    if not message and code is None:
        message = (
            f"the daemon (pid {child.pid}) closed its report pipe without "
            "a word; see the system log"
        )
    elif not message:
        message = f"the daemon exited with status {code}; see the system log"
    raise DaemonError(message.removeprefix("error: "))


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> None:
    """Let the threads started from now on share ``arenas`` malloc arenas.

    glibc gives each thread an arena of its own, up to eight per core,
    and an arena keeps the memory it once held: after bench/api.py, the
    daemon with one arena was 0.8 MB smaller (1.2 MB, less 0.3 MB for
    ctypes). Python allocates under the GIL, so threads that share an
    arena seldom wait for it. Does nothing where the C library is not
    glibc, or when MALLOC_ARENA_MAX, glibc's own setting, is set.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        glibc = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):
        return
    if not glibc:
        return
    import ctypes

    ctypes.CDLL(None).mallopt(_M_ARENA_MAX, arenas)


def report_ready(message: str) -> None:
    """Tell the process that started this daemon how the start went."""
    value = os.environ.pop(READY_FD_VARIABLE, None)
    if value is None or not value.isdigit():
        return
    fd = int(value)
    try:
        os.write(fd, message.encode("utf-8", "replace") + b"\n")
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def _read_report(fd: int, timeout: float) -> str | None:
    """Return the line the daemon reported, "" if it closed the pipe
    without one, or None if it said nothing within ``timeout`` s.
    """
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(remaining, 0))
        if not ready:
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode("utf-8", "replace").strip()


def stop_daemon(pid_file: Path, timeout: float = STOP_TIMEOUT) -> int | None:
    """Ask the running daemon to stop (SIGTERM) and wait for it to exit.

    :returns: the PID that was stopped, or None when no daemon ran (a
        stale PID file is removed).
    """
    pid = read_daemon_pid(pid_file)
    if pid is None:
        remove_stale_pid_file(pid_file)
        return None
    if pid <= 0:
        raise DaemonError(
            f"the PID file {pid_file} is locked but holds no PID: find the "
            f"daemon with fuser {pid_file}"
        )
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    except PermissionError:
        raise DaemonError(
            f"not allowed to signal the daemon (pid {pid}): run as its user"
        ) from None
    deadline = time.monotonic() + timeout
    while read_daemon_pid(pid_file) is not None:
        if time.monotonic() >= deadline:
            raise DaemonError(
                f"the daemon (pid {pid}) did not stop within {timeout:g} s; "
                f"see the system log, or stop it at once with kill -9 {pid}"
            )
        time.sleep(0.05)
    # The lock goes a moment before the process: wait for the exit too,
    # so that "stopped" means gone. The PID cannot have been reused yet.
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)
    remove_stale_pid_file(pid_file)
    return pid


def _alive(pid: int) -> bool:
    """Tell whether ``pid`` names a process that has not exited."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # The state follows the parenthesised command name.
            state = stat.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in (b"Z", b"X")
