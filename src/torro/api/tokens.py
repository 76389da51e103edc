"""Admin tokens of the API, and the token file that keeps their hashes.

A token is a bearer secret of one of two roles: ``full`` (everything,
key material included) or ``read`` (status details, stats and history
metadata). Tokens come from KEY_DAEMON_ADMIN_TOKENS (full) and
KEY_DAEMON_READ_TOKENS (read), comma separated, and from the token file
KEY_DAEMON_ADMIN_TOKEN_FILE, which ``torro admin-token create`` appends
to. The file holds no token, only its SHA-256, one token a line::

    # torro admin tokens: <role> sha256:<hash of the token> <created>
    full sha256:<64 lowercase hex digits> 2026-12-03T12:00:00Z
    read sha256:<64 lowercase hex digits> 2026-12-03T12:05:00Z

Blank lines and lines starting with ``#`` are ignored; a line in any
other form is skipped with a warning naming its number. Removing a line
revokes its token: a running daemon rereads the file when it changes.

A token is known by its id, the first 8 hex digits of its hash, in logs
and in ``torro admin-token create``'s output; the id tells tokens apart
and gives nothing of the token away.
"""

import dataclasses
import hashlib
import os
import re
import secrets
import stat
import time
from collections.abc import Iterable
from pathlib import Path

from torro.errors import ConfigError


FULL = "full"
READ = "read"
ROLES = (FULL, READ)
FILE_MODE = 0o600
# Random bytes of a new token, shown as URL-safe base64 (43 characters).
TOKEN_BYTES = 32
FILE_HEADER = (
    "# torro admin tokens: <role> sha256:<hash of the token> <created>; "
    "delete a line to revoke its token\n"
)

_LINE = re.compile(
    r"(full|read)\s+sha256:([0-9a-f]{64})(?:\s+(\S+))?\s*"
)


@dataclasses.dataclass(frozen=True)
class TokenEntry:
    """One admin token, known by its hash.

    :param role: :data:`FULL` or :data:`READ`.
    :param digest: SHA-256 of the token, 32 bytes.
    """

    role: str
    digest: bytes

    @property
    def token_id(self) -> str:
        return token_id(self.digest)


def token_digest(token: str) -> bytes:
    """Return the SHA-256 of a token as given by a client."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def token_id(digest: bytes) -> str:
    """Return the id of a token: 8 hex digits of its hash."""
    return digest.hex()[:8]


def entries_from_text(role: str, tokens: str | None) -> list[TokenEntry]:
    """Return the entries of comma-separated tokens of one role."""
    if not tokens:
        return []
    return [
        TokenEntry(role, token_digest(token.strip()))
        for token in tokens.split(",")
        if token.strip()
    ]


def parse_token_file(text: str) -> tuple[list[TokenEntry], list[int]]:
    """Read the lines of a token file.

    :returns: the entries, and the numbers of the lines skipped.
    """
    entries = []
    skipped = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.fullmatch(line)
        if match is None:
            skipped.append(number)
            continue
        role, digest, _created = match.groups()
        entries.append(TokenEntry(role, bytes.fromhex(digest)))
    return entries, skipped


def create_token(
    path: Path, role: str, now: float | None = None
) -> tuple[str, TokenEntry]:
    """Make a new token and append its hash to the token file.

    The file is created 0600 if missing, and made 0600 if it is ours.
    The token itself is returned, never stored: show it once.

    :raises ConfigError: the file's directory is missing, or the file
        cannot be written.
    """
    if role not in ROLES:
        raise ValueError(f"role must be full or read, not {role!r}")
    token = secrets.token_urlsafe(TOKEN_BYTES)
    entry = TokenEntry(role, token_digest(token))
    moment = time.gmtime(time.time() if now is None else now)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", moment)
    line = f"{role} sha256:{entry.digest.hex()} {created}\n"
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, FILE_MODE)
    except FileNotFoundError:
        raise ConfigError(
            f"KEY_DAEMON_ADMIN_TOKEN_FILE={path}: its directory "
            f"{path.parent} does not exist: create it first"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"KEY_DAEMON_ADMIN_TOKEN_FILE={path} cannot be opened: "
            f"{exc.strerror or exc}"
        ) from None
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise ConfigError(
                f"KEY_DAEMON_ADMIN_TOKEN_FILE={path} is not a regular file"
            )
        if status.st_uid == os.geteuid() \
                and stat.S_IMODE(status.st_mode) != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
        text = line if status.st_size else FILE_HEADER + line
        os.write(fd, text.encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    return token, entry


class TokenFile:
    """The token file, read again whenever it changes.

    A stat per call tells whether the file changed (size, time, inode);
    only then is it read. A missing or unreadable file holds no token.

    :param path: KEY_DAEMON_ADMIN_TOKEN_FILE.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._signature: tuple[int, ...] | None = None
        self._entries: list[TokenEntry] = []
        self.skipped: list[int] = []
        self.error: str | None = None

    def entries(self) -> tuple[list[TokenEntry], bool]:
        """Return the file's entries, and whether they were just read."""
        try:
            status = os.stat(self.path)
        except OSError as exc:
            signature: tuple[int, ...] = (-1, exc.errno or 0)
        else:
            signature = (
                status.st_ino, status.st_size, status.st_mtime_ns,
                status.st_ctime_ns,
            )
        if signature == self._signature:
            return self._entries, False
        self._signature = signature
        self._entries, self.skipped, self.error = [], [], None
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            self.error = "does not exist"
        except (OSError, UnicodeDecodeError) as exc:
            self.error = getattr(exc, "strerror", None) or "is not text"
        else:
            self._entries, self.skipped = parse_token_file(text)
        return self._entries, True


def find_entry(
    digest: bytes, entries: Iterable[TokenEntry]
) -> TokenEntry | None:
    """Return the entry of a token's hash, comparing in constant time.

    Every entry is compared, whatever matched before, so that the time
    taken tells nothing about which entry matched, if any. A token listed
    with both roles has the lesser one: a ``read`` line added to
    downgrade a token does downgrade it.
    """
    found = None
    for entry in entries:
        if secrets.compare_digest(entry.digest, digest) and (
            found is None or entry.role == READ
        ):
            found = entry
    return found
