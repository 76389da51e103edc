"""Durable file operations and the store lock.

Every file of the key store is replaced, never edited in place: the new
content goes to a temporary file in the same directory, is flushed with
fsync, then renamed over the old name, and the directory is flushed so the
rename itself survives a power loss. Temporary files are named
``.<name>.<random>.tmp`` so that a writer can find and remove the ones a
crash left behind.

Files are created 0600 and directories 0700 whatever the process umask.
"""

import contextlib
import errno
import os
import pwd
import secrets
import shutil
from pathlib import Path
from stat import S_ISDIR, S_ISREG

from torro.directories import make_directories
from torro.errors import StoreError


FILE_MODE = 0o600
DIR_MODE = 0o700
TEMP_SUFFIX = ".tmp"
# The largest store file read: history.json of 100,000 keys is about
# 30 MiB, a record under 3 KiB.
MAX_FILE_BYTES = 64 << 20


def ensure_directory(path: Path) -> bool:
    """Create ``path``, and its missing parents, 0700 unless it exists.

    :returns: True when the directory was created.
    """
    if path.is_dir():
        return False
    try:
        return make_directories(path, DIR_MODE)
    except FileExistsError:
        raise StoreError(f"{path} exists and is not a directory") from None
    except NotADirectoryError:
        raise StoreError(
            f"a parent of {path} exists and is not a directory"
        ) from None
    except OSError as exc:
        raise _write_error(path, exc) from None


def write_file(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Replace ``path`` atomically with ``data``.

    With ``durable`` the content is flushed before the rename, and the
    caller flushes the directory (see :func:`sync_directory`), once for
    several files when it can. Without it, the old file is removed before
    the rename, because renaming over a file makes ext4 flush the new data
    anyway; the file is then briefly missing, and a power loss may leave it
    missing or empty. Only copies that can be written again from durable
    files (the backup) are written that way.
    """
    temp = stage_file(path, data, durable=durable)
    if not durable:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    install_file(temp, path)


def stage_file(path: Path, data: bytes, *, durable: bool = True) -> Path:
    """Write ``data`` to a new temporary file beside ``path``.

    :returns: the temporary file, for :func:`install_file`.
    """
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        fd = os.open(temp, flags, FILE_MODE)
    except OSError as exc:
        raise _write_error(path, exc) from None
    try:
        try:
            os.fchmod(fd, FILE_MODE)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise _write_error(path, exc) from None
    return temp


def install_file(temp: Path, path: Path) -> None:
    """Rename a staged temporary file over ``path``."""
    try:
        os.replace(temp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise _write_error(path, exc) from None


def sync_directory(path: Path) -> None:
    """Flush a directory so the renames and unlinks in it are durable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise _write_error(path, exc) from None
    try:
        os.fsync(fd)
    except OSError as exc:
        raise _write_error(path, exc) from None
    finally:
        os.close(fd)


def check_owner(directory: Path) -> None:
    """Refuse root the writing of a store another user owns.

    Files are created with the writer's owner and mode 0600: a command
    run as root on a store of the daemon's user would leave files the
    daemon cannot read. A store not made yet is checked against the
    directory it would be made in. Other users are left to the file
    system's permissions.

    :raises StoreError: the process runs as root, and the directory, or
        its nearest existing parent, belongs to another user.
    """
    if os.geteuid() != 0:
        return
    place = directory
    while not place.exists() and place != place.parent:
        place = place.parent
    try:
        owner = place.stat().st_uid
    except OSError:
        return  # the write itself reports what is wrong
    if owner == 0:
        return
    where = f"the key store {directory}" if place == directory \
        else f"{place.absolute()}, where the key store {directory} would " \
        "be made,"
    user = _user_name(owner)
    raise StoreError(
        f"{where} belongs to {user}, and this command runs as root: run "
        f"it as {user} (for instance with sudo -u {user}), so that the "
        "daemon can read what it writes"
    )


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


class NotARegularFile(Exception):
    """What stands at a path is not a regular file of bounded size.

    :param what: what it is instead, for a message: "a symbolic link",
        "a directory", "not a regular file" or "too large".
    """

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def read_bounded(path: Path | str, limit: int) -> bytes | None:
    """Return the content of the regular file ``path``, at most ``limit``
    bytes; None when nothing is there.

    A link is not followed and a FIFO does not block: anything put in a
    file's place (a link to ``/dev/zero``, a FIFO, a padded copy) is
    refused instead of filling memory or blocking the reader.

    :raises NotARegularFile: something else is there, or it is larger.
    :raises OSError: the system refused the open or the read.
    """
    try:
        # O_NOFOLLOW: a link is refused, not followed; O_NONBLOCK: a FIFO
        # does not block the open, and is refused below.
        fd = os.open(
            path,
            os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK,
        )
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotARegularFile("a symbolic link") from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if S_ISDIR(mode):
            raise NotARegularFile("a directory")
        if not S_ISREG(mode):
            raise NotARegularFile("not a regular file")
        chunks = []
        size = 0
        while chunk := os.read(fd, 65536):
            size += len(chunk)
            if size > limit:
                raise NotARegularFile("too large")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_file(path: Path | str) -> bytes | None:
    """Return the content of ``path``, or None when it does not exist.

    Only a regular file of at most :data:`MAX_FILE_BYTES` is read
    (:func:`read_bounded`): every file of the store is one, written by
    :func:`write_file`.

    :raises StoreError: the name is not a regular file, the file is too
        large, or it cannot be read.
    """
    try:
        return read_bounded(path, MAX_FILE_BYTES)
    except NotARegularFile as exc:
        if exc.what == "a directory":
            raise StoreError(
                f"{path} is a directory, expected a file"
            ) from None
        what = f"larger than {MAX_FILE_BYTES >> 20} MiB" \
            if exc.what == "too large" else exc.what
        raise _not_store_file(path, what) from None
    except OSError as exc:
        raise _read_error(path, exc) from None


def _not_store_file(path: Path | str, what: str) -> StoreError:
    return StoreError(
        f"{path} is {what}, so not a file of the key store: move it away, "
        "then run torro keys restore"
    )


def _read_error(path: Path | str, exc: OSError) -> StoreError:
    return StoreError(
        f"cannot read {path}: {exc.strerror}; check its owner and mode"
    )


def destroy_file(path: Path) -> bool:
    """Overwrite a file with zeros, flush it, then remove it.

    Overwriting is best effort: journaling filesystems and SSDs may keep
    copies of the old blocks (see docs/limitations.md).

    :returns: False when the file did not exist.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise _write_error(path, exc) from None
    try:
        stat = os.fstat(fd)
        # Another name still shares the content: only this name goes.
        if stat.st_nlink == 1:
            os.pwrite(fd, bytes(stat.st_size), 0)
            os.fdatasync(fd)
    except OSError as exc:
        raise _write_error(path, exc) from None
    finally:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    return True


def withdraw_file(path: Path) -> bool:
    """Rename a file out of sight, flush its directory, then destroy it.

    For a file that readers may be looking at, such as the record of a
    rotation being undone: a reader never finds it zeroed at its own name,
    not even after a power loss; a crash before it is destroyed leaves a
    temporary file, which the next writer removes. Once out of sight the
    file goes even when it cannot be overwritten (a file size limit lowered
    below its size): overwriting is best effort (:func:`destroy_file`).

    :returns: False when the file did not exist.
    """
    hidden = path.with_name(
        f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
    )
    try:
        os.rename(path, hidden)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise _write_error(path, exc) from None
    sync_directory(path.parent)
    try:
        destroy_file(hidden)
    except StoreError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(hidden)
    return True


def destroy_tree(path: Path) -> None:
    """Destroy every file under ``path`` (:func:`destroy_file`), then
    remove the tree; what cannot be destroyed is removed all the same."""
    for directory, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                destroy_file(Path(directory) / name)
    shutil.rmtree(path, ignore_errors=True)


def remove_temp_files(directory: Path) -> list[Path]:
    """Remove the temporary files a crashed writer left in ``directory``."""
    removed = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return removed
    for name in names:
        if name.startswith(".") and name.endswith(TEMP_SUFFIX):
            path = directory / name
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                removed.append(path)
    return removed


def _write_error(path: Path, exc: OSError) -> StoreError:
    advice = {
        errno.ENOSPC: "free space on that filesystem; nothing was changed",
        errno.EDQUOT: "raise the quota; nothing was changed",
        errno.EFBIG: "the file size limit is too low; nothing was changed",
        errno.EACCES: "check the owner and mode of the key store",
        errno.EROFS: "the filesystem is read-only",
    }.get(exc.errno, "nothing was changed")
    return StoreError(f"cannot write {path}: {exc.strerror}; {advice}")
