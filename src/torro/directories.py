"""Create directories with a fixed mode, whatever the process umask."""

import errno
import os
from pathlib import Path


def make_directories(path: Path, mode: int) -> bool:
    """Create ``path`` and each missing parent with ``mode``.

    mkdir applies the umask, so each directory made here is given its
    mode explicitly: a parent left writable by others would let them
    replace what it holds. Directories that exist are left alone.

    :returns: True when ``path`` itself was created.
    :raises FileExistsError: when ``path`` is something else.
    :raises OSError: when a directory cannot be created.
    """
    target = path
    missing = []
    while not os.path.lexists(path):
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    if not missing and not os.path.isdir(target):
        raise FileExistsError(
            errno.EEXIST, "exists and is not a directory", str(target)
        )
    created = False
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=mode)
        except FileExistsError:
            created = False
            continue
        os.chmod(directory, mode)
        created = directory == target
    return created
