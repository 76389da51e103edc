"""The admin tokens and their file, without a daemon (torro.api.tokens).
"""

import hashlib
import os
import re
import stat
from pathlib import Path

import pytest

from torro.api import tokens
from torro.api.tokens import (
    FULL,
    READ,
    TokenEntry,
    TokenFile,
    create_token,
    entries_from_text,
    find_entry,
    parse_token_file,
    token_digest,
    token_id,
)
from torro.errors import ConfigError


HASH_A = "a" * 64
HASH_B = "0123456789abcdef" * 4
# 2026-12-03T12:00:00Z
NOON = 1_796_299_200.0


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def test_token_digest_and_id_are_sha256_and_its_first_8_hex_digits() -> None:
    """A token is known by SHA-256 of its UTF-8 text; its id is the
    first 8 hex digits of that hash."""
    assert token_digest("secret-token-0123456789") == \
        digest("secret-token-0123456789")
    assert token_id(digest("x")) == hashlib.sha256(b"x").hexdigest()[:8]
    assert TokenEntry(FULL, digest("x")).token_id == token_id(digest("x"))


def test_entries_from_text_split_on_commas_and_skip_blanks() -> None:
    """Comma-separated tokens give one entry each, trimmed, of the role
    given; nothing gives no entry."""
    assert entries_from_text(FULL, None) == []
    assert entries_from_text(FULL, "") == []
    assert entries_from_text(READ, " one-token , ,two-token ") == [
        TokenEntry(READ, digest("one-token")),
        TokenEntry(READ, digest("two-token")),
    ]


def test_parse_token_file_reads_roles_and_skips_bad_lines() -> None:
    """Lines ``<role> sha256:<64 hex> [created]`` give entries; blank
    and comment lines are ignored; any other line is skipped by number,
    uppercase hex, a short hash and an unknown role included."""
    text = "\n".join([
        "# torro admin tokens",
        f"full sha256:{HASH_A} 2026-12-03T12:00:00Z",
        "",
        f"  read sha256:{HASH_B}  ",
        f"read sha256:{HASH_B.upper()}",
        f"admin sha256:{HASH_A}",
        f"full sha256:{HASH_A[:-1]}",
        f"full {HASH_A}",
        f"full sha256:{HASH_A} created later",
        "   # indented comment",
        f"full\tsha256:{HASH_B}",
    ])
    entries, skipped = parse_token_file(text)
    assert entries == [
        TokenEntry(FULL, bytes.fromhex(HASH_A)),
        TokenEntry(READ, bytes.fromhex(HASH_B)),
        TokenEntry(FULL, bytes.fromhex(HASH_B)),
    ]
    assert skipped == [5, 6, 7, 8, 9]
    assert parse_token_file("") == ([], [])


def test_find_entry_matches_by_hash_and_compares_every_entry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """find_entry returns the entry with the hash, or None, and compares
    against every entry whatever matched, so the time taken does not
    tell which entry matched."""
    entries = [
        TokenEntry(READ, digest("first")),
        TokenEntry(FULL, digest("second")),
        TokenEntry(FULL, digest("first")),
    ]
    compared: list[bytes] = []
    real = tokens.secrets.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append(a)
        return real(a, b)

    monkeypatch.setattr(tokens.secrets, "compare_digest", counting)
    assert find_entry(digest("first"), entries) is entries[0]
    assert len(compared) == 3
    compared.clear()
    assert find_entry(digest("second"), entries) is entries[1]
    assert find_entry(digest("third"), entries) is None
    assert find_entry(digest("first"), []) is None
    assert len(compared) == 6


def test_a_token_listed_with_both_roles_is_read_only() -> None:
    """Adding a read line for a full token downgrades it, in whichever
    order the lines come: the lesser role wins."""
    full, read = TokenEntry(FULL, digest("t")), TokenEntry(READ, digest("t"))
    assert find_entry(digest("t"), [full, read]) is read
    assert find_entry(digest("t"), [read, full]) is read


def test_create_token_appends_a_hash_line_to_a_0600_file(
    tmp_path: Path, umask_zero: None,
) -> None:
    """A new token is 43 URL-safe characters, returned once; the file,
    made 0600 even under umask 000, gets a header once and one line per
    token with the hash and creation time, never the token, and reads
    back as those entries."""
    path = tmp_path / "admin-tokens"
    token, entry = create_token(path, FULL, now=NOON)
    second, read_entry = create_token(path, READ, now=NOON + 300)
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)
    assert token != second
    assert entry == TokenEntry(FULL, digest(token))
    assert read_entry == TokenEntry(READ, digest(second))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    text = path.read_text()
    assert token not in text and second not in text
    lines = text.splitlines()
    assert lines == [
        tokens.FILE_HEADER.rstrip("\n"),
        f"full sha256:{digest(token).hex()} 2026-12-03T12:00:00Z",
        f"read sha256:{digest(second).hex()} 2026-12-03T12:05:00Z",
    ]
    assert parse_token_file(text) == ([entry, read_entry], [])


def test_create_token_tightens_an_open_file_of_ours(tmp_path: Path) -> None:
    """An existing token file open to others is made 0600 again, and its
    lines are kept."""
    path = tmp_path / "admin-tokens"
    path.write_text(f"read sha256:{HASH_A}\n")
    path.chmod(0o644)
    _, entry = create_token(path, FULL)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    entries, skipped = parse_token_file(path.read_text())
    assert entries == [TokenEntry(READ, bytes.fromhex(HASH_A)), entry]
    assert skipped == []
    assert not path.read_text().startswith("#")


def test_create_token_refuses_what_it_cannot_write(tmp_path: Path) -> None:
    """A missing directory or a path that is not a regular file is a
    ConfigError naming the setting; an unknown role is a ValueError."""
    with pytest.raises(ConfigError, match="does not exist: create it"):
        create_token(tmp_path / "missing" / "admin-tokens", FULL)
    directory = tmp_path / "directory"
    directory.mkdir()
    with pytest.raises(ConfigError, match="KEY_DAEMON_ADMIN_TOKEN_FILE"):
        create_token(directory, FULL)
    with pytest.raises(ValueError, match="role"):
        create_token(tmp_path / "admin-tokens", "admin")
    assert not (tmp_path / "admin-tokens").exists()


def test_token_file_is_read_again_only_when_it_changes(
    tmp_path: Path,
) -> None:
    """TokenFile reads the file on first use and again after each change
    (a line added, a line deleted, the file replaced by another of the
    same size), not otherwise; a missing or undecodable file holds no
    token and says why."""
    path = tmp_path / "admin-tokens"
    tokens_file = TokenFile(path)
    assert tokens_file.entries() == ([], True)
    assert tokens_file.error == "does not exist"
    assert tokens_file.entries() == ([], False)

    path.write_text(f"full sha256:{HASH_A}\nnonsense\n")
    entries, fresh = tokens_file.entries()
    assert fresh and tokens_file.error is None
    assert entries == [TokenEntry(FULL, bytes.fromhex(HASH_A))]
    assert tokens_file.skipped == [2]
    assert tokens_file.entries() == (entries, False)

    with path.open("a") as stream:
        stream.write(f"read sha256:{HASH_B}\n")
    entries, fresh = tokens_file.entries()
    assert fresh
    assert entries[-1] == TokenEntry(READ, bytes.fromhex(HASH_B))

    path.write_text(f"read sha256:{HASH_B}\n")
    assert tokens_file.entries() == (
        [TokenEntry(READ, bytes.fromhex(HASH_B))], True,
    )
    assert tokens_file.skipped == []

    replacement = tmp_path / "replacement"
    replacement.write_text(f"full sha256:{HASH_B}\n")
    stamp = path.stat()
    os.utime(replacement, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    os.replace(replacement, path)
    assert tokens_file.entries() == (
        [TokenEntry(FULL, bytes.fromhex(HASH_B))], True,
    )

    path.write_bytes(b"full sha256:\xff\n")
    assert tokens_file.entries() == ([], True)
    assert tokens_file.error == "is not text"
    path.unlink()
    assert tokens_file.entries() == ([], True)
    assert tokens_file.error == "does not exist"
