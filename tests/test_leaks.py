"""The secrets sweep (tests/leaks.py) finds what it is meant to find.

Every other scenario trusts its zero; these tests show the sweep sees a
key, the master key and a token in each spelling it promises, and the
modes check sees a loose file.
"""

import base64
import os
from pathlib import Path

import campaign
import leaks
import pytest

from torro.material import KeyMaterial, fingerprint
from torro.sealing import MasterKey, Sealer
from torro.store.records import KeyRecord, KeyState


def write_sealed_record(
    path: Path, master: MasterKey, index: int, key: bytes
) -> None:
    """Write a record of ``key`` sealed under ``master``, as the store
    would; only the fields the sweep reads need to be right.
    """
    sealed = Sealer(master).seal(index, KeyMaterial(key))
    record = KeyRecord(
        key_text=sealed, index=index, timestamp=1_700_000_000_000,
        algorithm="sha256", length=len(key), derived_from=None,
        state=KeyState.ACTIVE, fingerprint=fingerprint(key),
        master_key_id="0" * 16, previous_checksum=None, checksum="0" * 64,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(record.to_json())


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, Path, bytes, MasterKey]:
    master = MasterKey(os.urandom(32))
    master_key_file = tmp_path / "master-key"
    master_key_file.write_text(master.reveal().hex() + "\n")
    key = os.urandom(32)
    root = tmp_path / "keys"
    write_sealed_record(root / "history" / "key-3.json", master, 3, key)
    return root, master_key_file, key, master


def test_store_keys_opens_sealed_records(
    store: tuple[Path, Path, bytes, MasterKey]
) -> None:
    root, _, key, master = store
    assert leaks.store_keys(root, master) == [key]
    # without the master key a sealed record yields nothing, not junk
    assert leaks.store_keys(root, MasterKey(os.urandom(32))) == []


@pytest.mark.parametrize("spell", [
    lambda secret: secret.hex(),
    lambda secret: secret.hex().upper(),
    lambda secret: base64.b64encode(secret).decode(),
    lambda secret: base64.urlsafe_b64encode(secret).decode().rstrip("="),
], ids=["hex", "HEX", "base64", "base64url"])
def test_sweep_finds_a_key_and_the_master_key_in_each_spelling(
    store: tuple[Path, Path, bytes, MasterKey], tmp_path: Path, spell
) -> None:
    root, master_key_file, key, master = store
    for secret in (key, master.reveal()):
        tally = campaign.Tally("sweep")
        text = f"INFO rotated, material={spell(secret)} ok"
        with pytest.raises(AssertionError, match="secrets found"):
            leaks.sweep(tally, texts=[text], store=root,
                        master_key_file=master_key_file)
        assert (tally.sweeps, tally.secrets) == (1, 1)


def test_sweep_finds_a_token_in_a_log_file(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "security.log").write_text("admin call by s3cret-token-42\n")
    tally = campaign.Tally("sweep")
    with pytest.raises(AssertionError, match="log file security.log"):
        leaks.sweep(tally, texts=[], logs=logs, tokens=["s3cret-token-42"])
    assert tally.secrets == 1


def test_sweep_passes_clean_text(
    store: tuple[Path, Path, bytes, MasterKey]
) -> None:
    root, master_key_file, key, _ = store
    tally = campaign.Tally("sweep")
    leaks.sweep(tally, texts=[f"rotated to key 3 ({fingerprint(key)})"],
                store=root, master_key_file=master_key_file,
                tokens=["a-token"])
    assert (tally.sweeps, tally.secrets) == (1, 0)


def test_check_modes_names_a_loose_file(tmp_path: Path) -> None:
    root = tmp_path / "keys"
    root.mkdir(mode=0o700)
    tight = root / "current.json"
    tight.touch(mode=0o600)
    os.chmod(tight, 0o600)
    os.chmod(root, 0o700)
    leaks.check_modes(root)
    os.chmod(tight, 0o644)
    with pytest.raises(AssertionError, match="current.json is 644"):
        leaks.check_modes(root)
