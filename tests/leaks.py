"""The campaign's secrets sweep: no key, master key or token where it
should not be.

After a scenario, :func:`sweep` gathers every secret the scenario made
(each key of the store, opened with the master key; the master key;
every admin token) and searches every text the scenario let out (CLI
output, HTTP responses, log files) for each of them in every spelling a
careless line could use: hex in either case and base64 in the standard
and URL-safe alphabets, with and without padding. :func:`check_modes`
asserts no file or directory is open to the group or to others.

A record whose key cannot be read (a scenario damaged it on purpose) is
skipped: the sweep looks for the secrets that exist, not for the damage.
"""

import base64
import json
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from torro.material import KeyMaterial
from torro.sealing import MasterKey, Sealer, read_master_key_file
from torro.store.records import RecordError, record_from_document

if TYPE_CHECKING:
    import campaign


def spellings(secret: bytes) -> set[str]:
    """Return the ways a line might spell ``secret``."""
    forms = {secret.hex(), secret.hex().upper()}
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        text = encode(secret).decode("ascii")
        forms |= {text, text.rstrip("=")}
    return forms


def store_keys(root: Path, master: MasterKey | None) -> list[bytes]:
    """Return every key held under ``root``, opened when sealed.

    Every JSON file is tried as a record, so backups, archived records
    and records a scenario moved around are found too.
    """
    sealer = Sealer(master) if master is not None else None
    keys = []
    for path in sorted(root.rglob("*.json")):
        try:
            record = record_from_document(json.loads(path.read_bytes()))
        except (OSError, ValueError, RecordError):
            continue
        try:
            if record.sealed and sealer is not None:
                material = sealer.open(record.index, record.key_text)
            else:
                material = KeyMaterial.from_hex(record.key_text)
        except Exception:
            continue
        keys.append(material.reveal())
    return keys


def sweep(
    tally: "campaign.Tally",
    *,
    texts: Iterable[str],
    logs: Path | None = None,
    store: Path | None = None,
    master_key_file: Path | None = None,
    tokens: Iterable[str] = (),
) -> None:
    """Search ``texts`` and the files under ``logs`` for every secret.

    The secrets are the keys under ``store``, the master key in
    ``master_key_file`` and ``tokens``. Hits are counted in the tally's
    ``secrets`` column and fail the test, naming the kind of secret and
    where it was found, never the secret.
    """
    master = None
    if master_key_file is not None and master_key_file.exists():
        master = read_master_key_file(master_key_file)
    secrets: list[tuple[str, bytes]] = []
    if store is not None:
        secrets += [("a key", key) for key in store_keys(store, master)]
    if master is not None:
        secrets.append(("the master key", master.reveal()))
    for token in tokens:
        secrets.append(("an admin token", token.encode()))
    places = [("an output or response", text) for text in texts]
    if logs is not None and logs.is_dir():
        places += [
            (f"log file {path.name}", path.read_text(errors="replace"))
            for path in sorted(logs.rglob("*")) if path.is_file()
        ]
    found = []
    for kind, secret in secrets:
        forms = spellings(secret) | {secret.decode("latin-1")}
        for place, text in places:
            if any(form in text for form in forms):
                found.append(f"{kind} in {place}")
    tally.sweeps += 1
    tally.secrets += len(found)
    assert not found, f"secrets found: {found}"
    # The sweep must have had something to look for.
    assert secrets


def check_modes(*paths: Path) -> None:
    """Assert no group or other bit is set on anything under ``paths``.

    Files are 0600 and directories 0700 (a read-only master key file,
    0400, is stricter still), whatever the umask of the processes that
    made them.
    """
    loose = []
    for root in paths:
        for path in [root, *root.rglob("*")]:
            mode = stat.S_IMODE(path.lstat().st_mode)
            if mode & 0o077:
                loose.append(f"{path} is {mode:o}")
    assert not loose, loose
