"""Helpers of the rewrap tests: key files, stores, and which master key
opens each record.

Shared by tests/test_rewrap.py and tests/test_rewrap_crash.py. A record
"opens" under a master key when it names that key's id, its checksum
verifies under the key's checksum subkey and its key material opens
(sealed) or parses (unsealed) and matches its fingerprint.
"""

import contextlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torro.config import load_settings
from torro.material import KeyMaterial
from torro.rotation import KeyRotationDaemon, RotationPolicy
from torro.sealing import InvalidSeal, MasterKey, Sealer
from torro.store import open_store
from torro.store.records import RecordError, canonical_json, parse_record


def write_key_file(path: Path, master: MasterKey | None = None) -> MasterKey:
    """Write a master key file (64 hex characters, mode 0400)."""
    master = master or MasterKey(os.urandom(32))
    path.write_text(master.reveal().hex() + "\n")
    path.chmod(0o400)
    return master


def rotate(cwd: Path, environ: dict[str, str], times: int) -> None:
    """Rotate ``times`` times as ``torro daemon rotate`` does, in this
    process (an interpreter start per key would be slow)."""
    with contextlib.chdir(cwd):
        settings = load_settings(environ)
        daemon = KeyRotationDaemon(
            open_store(settings), RotationPolicy.from_settings(settings)
        )
        for _ in range(times):
            daemon.rotate(force=True)


def record_paths(root: Path, history: Path | None = None) -> list[Path]:
    """Return every file of a store that holds a key record."""
    history = history or root / "history"
    paths = sorted(history.glob("*.json"))
    paths += sorted((root / "archive").glob("*.json"))
    for path in (root / "current.json", root / "backup/current.json"):
        if path.exists():
            paths.append(path)
    return paths


def opens_under(path: Path, master: MasterKey) -> bool:
    """Tell whether the record in ``path`` opens under ``master``."""
    try:
        record = parse_record(path.read_bytes())
    except RecordError:
        return False
    sealer = Sealer(master)
    if record.master_key_id != master.key_id:
        return False
    if not sealer.checksum_matches(
        record.checksum_payload(), record.checksum
    ):
        return False
    try:
        if record.sealed:
            material = sealer.open(record.index, record.key_text)
        else:
            material = KeyMaterial.from_hex(record.key_text)
    except (InvalidSeal, ValueError):
        return False
    return material.fingerprint == record.fingerprint


def listing_opens_under(path: Path, master: MasterKey) -> bool:
    """Tell whether a history.json verifies under ``master``."""
    document = json.loads(path.read_bytes())
    checksum = document.pop("checksum")
    return document["masterKeyId"] == master.key_id \
        and Sealer(master).checksum_matches(canonical_json(document),
                                            checksum)


def keys_opening(path: Path, masters: Iterable[MasterKey]) -> list[str]:
    """Return the ids of the master keys under which a record opens."""
    return [m.key_id for m in masters if opens_under(path, m)]


def chain(root: Path, history: Path | None = None) -> dict[str, Any]:
    """Return what a rewrap must keep: every record's metadata but the
    fields the master key decides, and history.json's listing."""
    kept = {}
    for path in record_paths(root, history):
        document = json.loads(path.read_bytes())
        kept[str(path.relative_to(path.parents[1]))] = {
            name: document[name]
            for name in ("index", "timestamp", "algorithm", "length",
                         "derivedFrom", "state", "fingerprint")
        } | {"sealed": document["key"].startswith("torro:v1:")}
    listing = json.loads((root / "history.json").read_bytes())
    return {
        "records": kept,
        "current": listing["current"],
        "nextIndex": listing["nextIndex"],
        "listed": [key["index"] for key in listing["keys"]],
        "retired": sorted(listing["retiredFingerprints"]),
    }
