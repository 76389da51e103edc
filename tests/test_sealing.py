"""Tests for torro.sealing: master keys, sealing and record checksums."""

import base64
import hashlib
import hmac
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from torro import sealing
from torro.errors import MasterKeyError
from torro.material import KeyMaterial
from torro.sealing import (
    InvalidSeal,
    MasterKey,
    Sealer,
    create_master_key_file,
    default_master_key_path,
    parse_master_key,
    read_master_key_file,
    resolve_master_key,
)

MASTER_BYTES = bytes.fromhex(
    "00112233445566778899aabbccddeeff"
    "f0e1d2c3b4a5968778695a4b3c2d1e0f"
)
KEY_BYTES = bytes(range(7, 39))


def subkey(master: bytes, info: bytes) -> bytes:
    """Derive a subkey the documented way, independently of torro."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info)
    return hkdf.derive(master)


def unbase64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def flip_byte(sealed: str, position: int) -> str:
    """Return ``sealed`` with one byte of its decoded token changed."""
    prefix, token = sealed[:9], sealed[9:]
    blob = bytearray(unbase64url(token))
    blob[position] ^= 0x01
    encoded = base64.urlsafe_b64encode(bytes(blob)).rstrip(b"=")
    return prefix + encoded.decode("ascii")


@pytest.fixture
def sealer() -> Sealer:
    return Sealer(MasterKey(MASTER_BYTES))


# sealing


def test_seal_then_open_gives_the_key_back(sealer: Sealer) -> None:
    material = KeyMaterial(KEY_BYTES)

    sealed = sealer.seal(5, material)

    assert sealed.startswith("torro:v1:")
    assert KEY_BYTES.hex() not in sealed
    assert sealer.open(5, sealed) == material


def test_each_seal_uses_a_fresh_nonce(sealer: Sealer) -> None:
    material = KeyMaterial(KEY_BYTES)

    first = sealer.seal(5, material)
    second = sealer.seal(5, material)

    assert first != second
    assert unbase64url(first[9:])[:12] != unbase64url(second[9:])[:12]


def test_open_under_another_index_fails(sealer: Sealer) -> None:
    sealed = sealer.seal(5, KeyMaterial(KEY_BYTES))

    with pytest.raises(InvalidSeal) as caught:
        sealer.open(6, sealed)

    assert str(caught.value) == "sealed key does not open"


def test_open_under_another_master_key_fails(sealer: Sealer) -> None:
    sealed = sealer.seal(5, KeyMaterial(KEY_BYTES))
    other = Sealer(MasterKey(os.urandom(32)))

    with pytest.raises(InvalidSeal):
        other.open(5, sealed)


@pytest.mark.parametrize("position", [0, 11, 12, 30, 59])
def test_open_of_tampered_sealed_key_fails(
    sealer: Sealer, position: int
) -> None:
    sealed = sealer.seal(5, KeyMaterial(KEY_BYTES))

    with pytest.raises(InvalidSeal):
        sealer.open(5, flip_byte(sealed, position))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (KEY_BYTES.hex(), "not a sealed key"),
        ("torro:v1:AAAA", "sealed key is truncated"),
        ("torro:v1:" + "A" * 38, "sealed key is truncated"),
    ],
)
def test_open_rejects_malformed_text(
    sealer: Sealer, text: str, message: str
) -> None:
    with pytest.raises(InvalidSeal) as caught:
        sealer.open(5, text)

    assert str(caught.value) == message


def test_sealed_form_opens_with_independently_derived_key(
    sealer: Sealer,
) -> None:
    sealed = sealer.seal(42, KeyMaterial(KEY_BYTES))

    blob = unbase64url(sealed.removeprefix("torro:v1:"))
    aead = AESGCM(subkey(MASTER_BYTES, b"torro sealing key v1"))
    opened = aead.decrypt(blob[:12], blob[12:], b"torro key index 42")

    assert opened == KEY_BYTES
    assert len(blob) == 12 + 32 + 16


def test_checksum_is_hmac_sha256_under_derived_subkey(
    sealer: Sealer,
) -> None:
    payload = b'{"index":3,"key":"torro:v1:abc"}'
    checksum_key = subkey(MASTER_BYTES, b"torro checksum key v1")
    expected = hmac.new(checksum_key, payload, hashlib.sha256).hexdigest()

    assert sealer.checksum(payload) == expected
    assert sealer.checksum_matches(payload, expected)
    assert not sealer.checksum_matches(payload + b" ", expected)
    assert not sealer.checksum_matches(payload, expected.upper())


def test_sealing_and_checksum_keys_differ_from_master_key() -> None:
    sealing = subkey(MASTER_BYTES, b"torro sealing key v1")
    checksum = subkey(MASTER_BYTES, b"torro checksum key v1")

    assert len({sealing, checksum, MASTER_BYTES}) == 3


# the master key


def test_master_key_id_is_stable_and_differs_between_keys() -> None:
    expected = hmac.new(
        MASTER_BYTES, b"torro master key id v1", hashlib.sha256
    ).digest()[:8].hex()

    assert MasterKey(MASTER_BYTES).key_id == expected
    assert MasterKey(MASTER_BYTES).key_id == expected
    assert MasterKey(os.urandom(32)).key_id != expected
    assert Sealer(MasterKey(MASTER_BYTES)).master_key_id == expected


def test_master_key_repr_hides_its_bytes() -> None:
    master = MasterKey(MASTER_BYTES)
    expected = f"<MasterKey id={master.key_id}>"

    assert repr(master) == expected
    assert str(master) == expected
    assert f"{master}" == expected
    assert MASTER_BYTES.hex() not in repr(master)


@pytest.mark.parametrize(
    "text",
    [
        MASTER_BYTES.hex(),
        MASTER_BYTES.hex().upper(),
        f"  {MASTER_BYTES.hex()}\n",
        base64.b64encode(MASTER_BYTES).decode(),
        base64.b64encode(MASTER_BYTES).decode().rstrip("="),
        base64.urlsafe_b64encode(MASTER_BYTES).decode(),
        base64.urlsafe_b64encode(MASTER_BYTES).decode().rstrip("="),
    ],
    ids=[
        "hex",
        "upper-hex",
        "hex-with-whitespace",
        "base64",
        "base64-unpadded",
        "base64url",
        "base64url-unpadded",
    ],
)
def test_parse_master_key_accepts_hex_and_base64(text: str) -> None:
    master = parse_master_key(text, "KEY_DAEMON_MASTER_KEY")

    assert master.reveal() == MASTER_BYTES


def test_the_test_key_differs_in_std_and_urlsafe_base64() -> None:
    # Otherwise the base64 cases above would test one alphabet twice.
    standard = base64.b64encode(MASTER_BYTES).decode()
    urlsafe = base64.urlsafe_b64encode(MASTER_BYTES).decode()

    assert standard != urlsafe


@pytest.mark.parametrize(
    "text",
    [
        bytes(range(31)).hex(),
        bytes(range(33)).hex(),
        base64.b64encode(bytes(range(31))).decode(),
        base64.b64encode(bytes(range(33))).decode(),
        "z" * 64,
        "secret-junk-value",
        "",
        MASTER_BYTES.hex()[:-2] + " 0",
    ],
    ids=[
        "hex-31",
        "hex-33",
        "base64-31",
        "base64-33",
        "not-hex",
        "junk",
        "empty",
        "hex-with-space",
    ],
)
def test_parse_master_key_rejects_without_quoting_the_value(
    text: str,
) -> None:
    with pytest.raises(MasterKeyError) as caught:
        parse_master_key(text, "KEY_DAEMON_MASTER_KEY")

    assert str(caught.value) == (
        "KEY_DAEMON_MASTER_KEY is not a 32-byte master key: give 64 hex "
        "characters or the base64 of 32 bytes (openssl rand -hex 32)"
    )


def test_master_key_refuses_wrong_length() -> None:
    with pytest.raises(ValueError) as caught:
        MasterKey(bytes(31))

    assert str(caught.value) == "a master key is 32 bytes, not 31"


# master key files


@pytest.mark.parametrize(
    "content",
    [MASTER_BYTES.hex().encode() + b"\n", MASTER_BYTES.hex().encode()],
    ids=["with-newline", "without-newline"],
)
def test_read_master_key_file_accepts_64_hex(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "master-key"
    path.write_bytes(content)
    path.chmod(0o400)

    assert read_master_key_file(path).reveal() == MASTER_BYTES


@pytest.mark.parametrize(
    "content",
    [
        MASTER_BYTES.hex().encode() + b"\r\n",
        MASTER_BYTES.hex().encode() + b" \n",
        b" " + MASTER_BYTES.hex().encode(),
        MASTER_BYTES.hex().encode()[:-2] + b"  \n",
        MASTER_BYTES.hex().encode()[:-1],
        MASTER_BYTES.hex().encode() + b"\n\n",
        base64.b64encode(MASTER_BYTES) + b"\n",
        b"",
    ],
    ids=[
        "crlf",
        "trailing-space",
        "leading-space",
        "spaces-inside-64-characters",
        "63-characters",
        "two-newlines",
        "base64",
        "empty",
    ],
)
def test_read_master_key_file_rejects_anything_else(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "master-key"
    path.write_bytes(content)

    with pytest.raises(MasterKeyError) as caught:
        read_master_key_file(path)

    assert str(caught.value) == (
        f"master key file {path} must hold exactly 64 hex characters "
        "(one 32-byte key), optionally followed by a newline: put the "
        "store's master key back from your copy, or point "
        "KEY_DAEMON_MASTER_KEY_FILE at it"
    )


def test_read_master_key_file_names_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent"

    with pytest.raises(MasterKeyError) as caught:
        read_master_key_file(path)

    assert str(caught.value) == (
        f"master key file {path} does not exist: point "
        "KEY_DAEMON_MASTER_KEY_FILE at the file holding this store's "
        "master key"
    )


NOT_A_REGULAR_FILE = (
    "master key file {path} is not a regular file: point "
    "KEY_DAEMON_MASTER_KEY_FILE at a file holding 64 hex characters"
)


def test_read_master_key_file_refuses_dev_zero() -> None:
    # it was read without limit, until the host ran out of memory
    path = Path("/dev/zero")

    with pytest.raises(MasterKeyError) as caught:
        read_master_key_file(path)

    assert str(caught.value) == NOT_A_REGULAR_FILE.format(path=path)


def test_read_master_key_file_refuses_a_fifo_without_blocking(
    tmp_path: Path,
) -> None:
    path = tmp_path / "master-key"
    os.mkfifo(path)

    with pytest.raises(MasterKeyError) as caught:
        read_master_key_file(path)

    assert str(caught.value) == NOT_A_REGULAR_FILE.format(path=path)


def test_read_master_key_file_refuses_a_directory(tmp_path: Path) -> None:
    with pytest.raises(MasterKeyError) as caught:
        read_master_key_file(tmp_path)

    assert str(caught.value) in (
        NOT_A_REGULAR_FILE.format(path=tmp_path),
        # where a directory cannot even be opened for reading
        (
            f"cannot read master key file {tmp_path}: Is a directory; "
            "check its owner and mode (0400 for the daemon's user)"
        ),
    )


def test_read_master_key_file_refuses_a_file_over_4096_bytes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "master-key"
    path.write_bytes(MASTER_BYTES.hex().encode() + b"\n" * 4033)

    with pytest.raises(MasterKeyError) as caught:
        read_master_key_file(path)

    assert str(caught.value) == (
        f"master key file {path} is larger than 4096 bytes: point "
        "KEY_DAEMON_MASTER_KEY_FILE at a file holding 64 hex characters"
    )


def test_read_master_key_file_reads_a_bounded_amount(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "master-key"
    path.write_bytes(b"0" * 4096)
    asked = []
    got = []
    real_read = os.read

    def counting_read(fd: int, size: int) -> bytes:
        asked.append(size)
        got.append(len(data := real_read(fd, size)))
        return data

    monkeypatch.setattr(sealing.os, "read", counting_read)

    with pytest.raises(MasterKeyError) as caught:
        read_master_key_file(path)

    assert "must hold exactly 64 hex characters" in str(caught.value)
    assert max(asked) <= 4097
    assert sum(got) == 4096


def test_create_master_key_file_is_0400_under_umask_zero(
    tmp_path: Path, umask_zero: None
) -> None:
    path = tmp_path / "keys.master-key"

    master = create_master_key_file(path)

    assert stat.S_IMODE(path.stat().st_mode) == 0o400
    assert path.read_bytes() == master.reveal().hex().encode() + b"\n"
    assert read_master_key_file(path).key_id == master.key_id


def test_create_master_key_file_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "keys.master-key"
    path.write_bytes(b"keep me\n")

    with pytest.raises(MasterKeyError) as caught:
        create_master_key_file(path)

    assert str(caught.value) == (
        f"master key file {path} appeared while creating it: start again"
    )
    assert path.read_bytes() == b"keep me\n"


def test_default_master_key_path_sits_beside_the_store(
    tmp_path: Path,
) -> None:
    storage = tmp_path / "data" / "keys"

    assert default_master_key_path(storage) == (
        tmp_path / "data" / "keys.master-key"
    )


@pytest.mark.parametrize(
    ("storage", "expected"),
    [
        # "." gave "PosixPath('.') has an empty name"
        (".", "top/work.master-key"),
        # ".." and "deep/s3/.." put the master key inside the store
        ("..", "top.master-key"),
        ("deep/s3/..", "top/work/deep.master-key"),
        ("keys", "top/work/keys.master-key"),
    ],
)
def test_default_master_key_path_never_inside_the_store(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    storage: str,
    expected: str,
) -> None:
    work = tmp_path / "top" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)

    path = default_master_key_path(Path(storage))

    assert path == tmp_path.resolve() / expected
    store = Path(storage).resolve()
    assert store not in path.parents
    assert path.parent == store.parent


def test_resolve_master_key_creates_default_file_for_empty_store(
    tmp_path: Path,
) -> None:
    storage = tmp_path / "keys"

    master = resolve_master_key(None, None, storage, True)

    path = tmp_path / "keys.master-key"
    assert path.read_bytes() == master.reveal().hex().encode() + b"\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o400
    assert list(tmp_path.iterdir()) == [path]
    again = resolve_master_key(None, None, storage, False)
    assert again.key_id == master.key_id


def test_resolve_master_key_refuses_to_create_for_store_with_keys(
    tmp_path: Path,
) -> None:
    storage = tmp_path / "keys"

    with pytest.raises(MasterKeyError) as caught:
        resolve_master_key(None, None, storage, False)

    path = tmp_path / "keys.master-key"
    assert str(caught.value) == (
        f"no master key for the key store {storage}: it holds keys but "
        f"{path} does not exist and neither KEY_DAEMON_MASTER_KEY nor "
        "KEY_DAEMON_MASTER_KEY_FILE is set; set one of them to the "
        "store's master key (nothing was changed)"
    )
    assert not path.exists()


def test_resolve_master_key_prefers_the_configured_key(
    tmp_path: Path,
) -> None:
    key_file = tmp_path / "configured"
    key_file.write_bytes(os.urandom(32).hex().encode() + b"\n")

    from_value = resolve_master_key(
        MASTER_BYTES.hex(), None, tmp_path / "keys", True
    )
    from_file = resolve_master_key(None, key_file, tmp_path / "keys", True)

    assert from_value.reveal() == MASTER_BYTES
    assert from_file.reveal().hex().encode() + b"\n" == (
        key_file.read_bytes()
    )
    assert not (tmp_path / "keys.master-key").exists()
