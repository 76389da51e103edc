"""Seal key material under the master key and checksum the store's records.

The master key is the key-encryption key of a key store. Two subkeys are
derived from it with HKDF-SHA256 and separate labels, so that no key is used
for two jobs:

- the sealing key, for AES-256-GCM over each key's material, with the
  record's index as associated data (a sealed key moved to another record
  no longer opens);
- the checksum key, for the HMAC-SHA256 that chains the records together.

A third label gives the master key id, a public 8-byte identifier stored in
every record so that a wrong master key is told apart from a damaged record.

This module reads the master key and, once, creates it. It writes nothing
else to disk.
"""

import base64
import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from torro import logs
from torro.directories import make_directories
from torro.errors import MasterKeyError
from torro.material import KeyMaterial


MASTER_KEY_LENGTH = 32
NONCE_LENGTH = 12
# Most bytes read from a master key file, which holds 64 or 65.
MASTER_KEY_FILE_LIMIT = 4096
SEALED_PREFIX = "torro:v1:"

_SEALING_LABEL = b"torro sealing key v1"
_CHECKSUM_LABEL = b"torro checksum key v1"
_KEY_ID_LABEL = b"torro master key id v1"
_MASTER_KEY_HEX = re.compile(rb"[0-9a-fA-F]{%d}" % (2 * MASTER_KEY_LENGTH))

log = logging.getLogger(logs.SECURITY)


class InvalidSeal(Exception):
    """A sealed key did not open: wrong master key, index or content."""


class MasterKey:
    """The 32 bytes of a master key; repr and str never show them."""

    __slots__ = ("_data", "key_id")

    def __init__(self, data: bytes) -> None:
        if len(data) != MASTER_KEY_LENGTH:
            raise ValueError(
                f"a master key is {MASTER_KEY_LENGTH} bytes, not {len(data)}"
            )
        self._data = data
        digest = hmac.new(data, _KEY_ID_LABEL, hashlib.sha256).digest()
        self.key_id = digest[:8].hex()

    def reveal(self) -> bytes:
        return self._data

    def __repr__(self) -> str:
        return f"<MasterKey id={self.key_id}>"

    __str__ = __repr__

    def __reduce__(self) -> None:
        raise TypeError("a master key cannot be pickled")


def parse_master_key(text: str, source: str) -> MasterKey:
    """Read a master key given as 64 hex characters or base64 of 32 bytes.

    :param text: the value as given.
    :param source: where it came from, for the error message; the value
        itself is never part of a message.
    """
    text = text.strip()
    if len(text) == 2 * MASTER_KEY_LENGTH:
        try:
            return MasterKey(bytes.fromhex(text))
        except ValueError:
            pass
    data = _decode_base64(text)
    if data is not None and len(data) == MASTER_KEY_LENGTH:
        return MasterKey(data)
    raise MasterKeyError(
        f"{source} is not a {MASTER_KEY_LENGTH}-byte master key: give 64 hex "
        "characters or the base64 of 32 bytes (openssl rand -hex 32)"
    )


def _decode_base64(text: str) -> bytes | None:
    padded = (text + "=" * (-len(text) % 4)).encode("ascii", "replace")
    for altchars in (b"+/", b"-_"):
        try:
            return base64.b64decode(padded, altchars=altchars, validate=True)
        except ValueError:
            continue
    return None


def read_master_key_file(path: Path) -> MasterKey:
    """Read a master key file: 64 hex characters, a trailing newline allowed.

    At most :data:`MASTER_KEY_FILE_LIMIT` bytes are read; a larger file,
    or anything but a regular file (a device, a FIFO, a directory), is
    refused before reading.
    """
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise MasterKeyError(
            f"master key file {path} does not exist: point "
            "KEY_DAEMON_MASTER_KEY_FILE at the file holding this store's "
            "master key"
        ) from None
    except OSError as exc:
        raise MasterKeyError(
            f"cannot read master key file {path}: {exc.strerror}; check its "
            "owner and mode (0400 for the daemon's user)"
        ) from None
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise MasterKeyError(
                f"master key file {path} is not a regular file: point "
                "KEY_DAEMON_MASTER_KEY_FILE at a file holding 64 hex "
                "characters"
            )
        raw = _read_at_most(fd, MASTER_KEY_FILE_LIMIT + 1)
    except OSError as exc:
        raise MasterKeyError(
            f"cannot read master key file {path}: {exc.strerror}; check its "
            "owner and mode (0400 for the daemon's user)"
        ) from None
    finally:
        os.close(fd)
    if max(status.st_size, len(raw)) > MASTER_KEY_FILE_LIMIT:
        raise MasterKeyError(
            f"master key file {path} is larger than "
            f"{MASTER_KEY_FILE_LIMIT} bytes: point "
            "KEY_DAEMON_MASTER_KEY_FILE at a file holding 64 hex characters"
        )

    text = raw[:-1] if raw.endswith(b"\n") else raw
    # bytes.fromhex skips whitespace, so the characters are checked first.
    if _MASTER_KEY_HEX.fullmatch(text) is None:
        raise MasterKeyError(
            f"master key file {path} must hold exactly 64 hex characters "
            "(one 32-byte key), optionally followed by a newline: put the "
            "store's master key back from your copy, or point "
            "KEY_DAEMON_MASTER_KEY_FILE at it"
        )
    data = bytes.fromhex(text.decode("ascii"))
    mode = stat.S_IMODE(status.st_mode)
    if mode & 0o077:
        log.warning(
            "master key file %s is readable by group or others (mode %o): "
            "chmod 0400 it",
            path,
            mode,
        )
    return MasterKey(data)


def _read_at_most(fd: int, limit: int) -> bytes:
    """Return up to ``limit`` bytes from ``fd``, stopping at end of file.
    """
    chunks = []
    left = limit
    while left > 0:
        chunk = os.read(fd, left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def create_master_key_file(path: Path) -> MasterKey:
    """Create a new master key file with mode 0400 and return its key.

    The file is created exclusively: an existing file is never replaced.
    """
    master = MasterKey(secrets.token_bytes(MASTER_KEY_LENGTH))
    try:
        make_directories(path.parent, 0o700)
        write_master_key_file(path, master, replace=False)
    except FileExistsError:
        raise MasterKeyError(
            f"master key file {path} appeared while creating it: start again"
        ) from None
    except OSError as exc:
        raise MasterKeyError(
            f"cannot create master key file {path}: {exc.strerror}; set "
            "KEY_DAEMON_MASTER_KEY_FILE to a writable location"
        ) from None
    return master


def write_master_key_file(
    path: Path, master: MasterKey, *, replace: bool
) -> None:
    """Write ``master`` to ``path`` as 64 hex characters, mode 0400.

    The key is written under a temporary name and flushed, then linked
    into place, or with ``replace`` renamed over what is there, and the
    directory is flushed: a failed write leaves no half-made key file.

    :raises FileExistsError: ``path`` exists and ``replace`` is false.
    :raises OSError: the file could not be written.
    """
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        fd = os.open(temp, flags, 0o400)
        try:
            os.fchmod(fd, 0o400)
            os.write(fd, master.reveal().hex().encode("ascii") + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.replace(temp, path)
        else:
            os.link(temp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temp)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def default_master_key_path(storage_path: Path) -> Path:
    """Return where the master key goes when none is configured.

    It sits beside the key store, never inside it, so that a copy of the
    store alone cannot open the keys.
    """
    storage_path = storage_path.absolute()
    if storage_path.name in ("", ".."):
        # ".", ".." and "a/b/.." name no directory of their own; the
        # parent of their text would lie inside the store.
        storage_path = storage_path.resolve()
    if not storage_path.name:
        raise MasterKeyError(
            f"the key store {storage_path} is the root directory: set "
            "KEY_STORAGE_PATH to a directory of its own"
        )
    return storage_path.parent / f"{storage_path.name}.master-key"


class Sealer:
    """Seal and open key material, and checksum records, under a master key.
    """

    def __init__(self, master: MasterKey) -> None:
        self.master_key_id = master.key_id
        self._aead = AESGCM(_subkey(master, _SEALING_LABEL))
        self._checksum_key = _subkey(master, _CHECKSUM_LABEL)

    def seal(self, index: int, material: KeyMaterial) -> str:
        """Return the sealed form of a key, bound to its index."""
        nonce = os.urandom(NONCE_LENGTH)
        sealed = self._aead.encrypt(
            nonce, material.reveal(), _associated_data(index)
        )
        token = base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=")
        return SEALED_PREFIX + token.decode("ascii")

    def open(self, index: int, sealed: str) -> KeyMaterial:
        """Return the key material of a sealed key stored under ``index``.

        :raises InvalidSeal: when the master key, the index or the sealed
            text is not the one the key was sealed with.
        """
        if not sealed.startswith(SEALED_PREFIX):
            raise InvalidSeal("not a sealed key")
        token = sealed[len(SEALED_PREFIX):]
        try:
            blob = base64.urlsafe_b64decode(
                token + "=" * (-len(token) % 4)
            )
        except ValueError:
            raise InvalidSeal("sealed key is not base64") from None
        if len(blob) <= NONCE_LENGTH + 16:
            raise InvalidSeal("sealed key is truncated")
        nonce, body = blob[:NONCE_LENGTH], blob[NONCE_LENGTH:]
        try:
            data = self._aead.decrypt(nonce, body, _associated_data(index))
        except InvalidTag:
            raise InvalidSeal("sealed key does not open") from None
        return KeyMaterial(data)

    def checksum(self, payload: bytes) -> str:
        """Return the keyed checksum (HMAC-SHA256, hex) of ``payload``."""
        return hmac.new(
            self._checksum_key, payload, hashlib.sha256
        ).hexdigest()

    def checksum_matches(self, payload: bytes, checksum: str) -> bool:
        """Tell, in constant time, whether ``checksum`` belongs to payload.
        """
        return hmac.compare_digest(self.checksum(payload), checksum)


def _subkey(master: MasterKey, label: bytes) -> bytes:
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=label,
    )
    return hkdf.derive(master.reveal())


def _associated_data(index: int) -> bytes:
    return b"torro key index %d" % index


def resolve_master_key(
    master_key: str | None,
    master_key_file: Path | None,
    storage_path: Path,
    store_is_empty: bool,
    *,
    may_create: bool = True,
) -> MasterKey:
    """Find the master key the configuration names, or create the default.

    A new master key file is only ever created for an empty store: a store
    that holds keys is never sealed again under a key made up on the spot.
    The key found is registered with the logs, which redact it should it
    ever reach a log line.

    :param may_create: whether an empty store may get a new master key;
        read-only callers say no.
    """
    if master_key:
        master = parse_master_key(master_key, "KEY_DAEMON_MASTER_KEY")
    elif master_key_file is not None:
        master = read_master_key_file(master_key_file)
    else:
        master = _default_master_key(
            storage_path, store_is_empty, may_create
        )
    _register_with_logs(master)
    return master


def _default_master_key(
    storage_path: Path, store_is_empty: bool, may_create: bool
) -> MasterKey:
    path = default_master_key_path(storage_path)
    if path.exists():
        return read_master_key_file(path)
    if not store_is_empty:
        raise MasterKeyError(
            f"no master key for the key store {storage_path}: it holds keys "
            f"but {path} does not exist and neither KEY_DAEMON_MASTER_KEY "
            "nor KEY_DAEMON_MASTER_KEY_FILE is set; set one of them to the "
            "store's master key (nothing was changed)"
        )
    if not may_create:
        raise MasterKeyError(
            f"the key store {storage_path} holds no key and no master key "
            f"yet: the first torro daemon start or rotate creates {path}"
        )
    master = create_master_key_file(path)
    logging.getLogger(logs.SYSTEM).warning(
        "created a new master key in %s (mode 0400): it opens every key of "
        "this store; move it to a secret store and set "
        "KEY_DAEMON_MASTER_KEY_FILE, and keep a copy apart from the "
        "store's backups",
        path,
    )
    return master


def _register_with_logs(master: MasterKey) -> None:
    data = master.reveal()
    for text in (
        data.hex(),
        data.hex().upper(),
        base64.b64encode(data).decode(),
        base64.urlsafe_b64encode(data).decode(),
        base64.b64encode(data).decode().rstrip("="),
    ):
        logs.register_secret(text)
