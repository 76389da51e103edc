"""Where each file of a key store lives.

::

    keys/
      .lock                 held by whoever writes (flock)
      current.json          the current key's record
      history.json          metadata of every retained key, no key material
      history/key-N.json    one record per retained key
      backup/               copies of current.json and history.json
      archive/              records kept on disk but never loaded
    keys.staging/           a new store being built by a reset or import

The history directory can live elsewhere (KEY_HISTORY_PATH).
"""

import os
import re
from pathlib import Path

from torro.errors import StoreError


RECORD_NAME = re.compile(r"key-(0|[1-9][0-9]*)\.json")


class StoreLayout:
    """The paths of one key store.

    :param root: the key store directory (KEY_STORAGE_PATH).
    :param history_dir: where key-N.json files live (KEY_HISTORY_PATH),
        ``root/history`` by default.
    """

    def __init__(self, root: Path, history_dir: Path | None = None) -> None:
        self.root = root
        self.history_dir = history_dir or root / "history"
        self.current_path = root / "current.json"
        self.history_path = root / "history.json"
        self.backup_dir = root / "backup"
        self.archive_dir = root / "archive"
        self.lock_path = root / ".lock"

    @property
    def external_history(self) -> bool:
        return self.history_dir.parent != self.root

    def record_path(self, index: int) -> Path:
        return self.history_dir / f"key-{index}.json"

    def record_files(self, directory: Path | None = None) -> dict[int, Path]:
        """Return the record files of a directory (history/ by default).
        """
        directory = directory or self.history_dir
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return {}
        except NotADirectoryError:
            raise StoreError(f"{directory} is not a directory") from None
        found = {}
        for name in names:
            match = RECORD_NAME.fullmatch(name)
            if match:
                found[int(match.group(1))] = directory / name
        return found

    def foreign_entries(self) -> list[str]:
        """Return what the store's directories hold that is not the store's.

        A reset or an import replaces the whole directory, so it must not
        hold anything else (a store at ``.`` would take the working
        directory with it).
        """
        ours = {".lock", "current.json", "history.json", "backup", "archive"}
        if not self.external_history:
            ours.add(self.history_dir.name)
        foreign = [
            str(self.root / name) for name in _names(self.root)
            if name not in ours and not _is_temporary(name)
        ]
        if self.history_dir.is_dir():
            foreign += [
                str(self.history_dir / name)
                for name in _names(self.history_dir)
                if not RECORD_NAME.fullmatch(name)
                and not _is_temporary(name)
            ]
        return sorted(foreign)

    def refuse_foreign_entries(self, why: str) -> None:
        """Refuse to replace a directory that holds more than the store.

        :param why: the end of the message: why it matters, what to do.
        :raises StoreError: naming the first three entries
            :meth:`foreign_entries` finds, when there are any.
        """
        foreign = self.foreign_entries()
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if foreign[3:] else "")
            raise StoreError(
                f"{self.root} holds files that are not the key store's "
                f"({shown}): {why}"
            )

    def has_backup(self) -> bool:
        return (self.backup_dir / "current.json").exists()

    def staging_path(self, directory: Path) -> Path:
        """Return where a replacement of ``directory`` is built."""
        return directory.with_name(directory.name + ".staging")

    def is_empty(self) -> bool:
        """Tell whether the store holds nothing of a key ring yet.

        A staging directory counts only where the directory it replaces
        is missing: that is a complete store waiting to be renamed into
        place, as the next writer does. Beside an existing directory it
        is an incomplete build, which the next writer removes.
        """
        for target in (self.root, self.history_dir):
            if not target.exists() and self.staging_path(target).is_dir():
                return False
        names = (self.current_path, self.history_path,
                 self.backup_dir / "current.json",
                 self.backup_dir / "history.json")
        if any(path.exists() for path in names):
            return False
        try:
            return not self.record_files()
        except StoreError:
            return False


def _names(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []


def _is_temporary(name: str) -> bool:
    # files.write_file's temporary names: .<name>.<random>.tmp
    return name.startswith(".") and name.endswith(".tmp")


def store_is_empty(root: Path, history_dir: Path | None = None) -> bool:
    """Tell whether a key store directory holds nothing of a key ring."""
    return StoreLayout(root, history_dir).is_empty()
