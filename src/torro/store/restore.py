"""Decide how to rebuild a damaged key store from what survives.

Every record carries its own checksum, so the records are the source of
truth; history.json and its backup copy say which records the store held
and which fingerprints it retired, and current.json and its backup copy
are spare copies of one record each. :func:`plan_restore` weighs all of
them and returns a :class:`RestorePlan`; the key store carries it out
(see :meth:`torro.store.keystore.KeyStore.restore`).

The rules, in order:

1. The listing is whichever of history.json and backup/history.json,
   among those that verify under the master key, names the most keys
   that have an intact copy (another store's copy, sealed under the same
   master key, names none), the newer of the two when they name as many;
   the retired fingerprints of both count.
2. A listed key is kept when a copy of it with the listed checksum opens:
   its own file first, else current.json, backup/current.json or another
   record file that holds it (records swapped or renamed). A listed
   key with no such copy is lost, and stays listed as lost, so that an
   intact copy that comes back later is taken back, never removed.
3. A record newer than the listing is kept while it chains on to the
   newest kept key: the listing may be a rotation or more behind.
4. A file below the oldest listed key is a leftover of retention; any
   other file that is not kept is set aside in archive/, never deleted.
5. Without any listing, every record that opens is kept.
"""

import dataclasses
from typing import Any

from torro.store.records import KeyRecord


@dataclasses.dataclass
class RestorePlan:
    """What a restore keeps, writes back, sets aside and reports lost.

    :param kept: the retained records after the restore, by index.
    :param copies: kept records whose own file is missing or damaged and
        is written again from a spare copy, by index.
    :param lost: listed keys with no intact copy: their index, checksum
        and fingerprint (None when the listing does not give it).
    :param lowest: the oldest key the store held; files below it are
        leftovers of retention.
    :param next_index: where the next key goes.
    :param retired: fingerprints of every key the store no longer holds.
    """

    kept: dict[int, KeyRecord]
    copies: dict[int, KeyRecord]
    lost: dict[int, dict[str, Any]]
    lowest: int
    next_index: int
    retired: set[str]

    @property
    def current(self) -> KeyRecord:
        return self.kept[max(self.kept)]


def plan_restore(
    records: dict[int, KeyRecord],
    spares: list[KeyRecord],
    listings: list[dict[str, Any]],
) -> RestorePlan | None:
    """Weigh what survives of a store; return None when nothing does.

    :param records: the records of history/ that verify and open.
    :param spares: current.json, backup/current.json and records found
        under another record's file name, when they verify and open.
    :param listings: history.json and backup/history.json, parsed and
        verified (see StoreReader.parse_history).
    """
    retired: set[str] = set()
    for listing in listings:
        retired.update(listing["retiredFingerprints"])
    candidates = _candidates(records, spares)
    # The listing the surviving copies bear out: a copy of another store
    # under the same master key verifies too, but lists none of them.
    listing = max(
        listings,
        key=lambda item: (_support(item, candidates), item["current"]),
        default=None,
    )
    if listing is None:
        if not candidates:
            return None
        kept = {index: copies[0] for index, copies in candidates.items()}
        return RestorePlan(
            kept=kept,
            copies=_copies_needed(kept, records),
            lost={},
            lowest=min(kept),
            next_index=max(kept) + 1,
            retired=retired,
        )

    # The keys the listing names, and those an earlier restore reported
    # lost: a lost key whose intact copy is back is kept again.
    wanted = {
        index: {
            "index": index,
            "checksum": checksum,
            "fingerprint": listing["fingerprints"].get(index),
        }
        for index, checksum in listing["keys"].items()
    }
    for index, entry in listing["lost"].items():
        wanted.setdefault(index, entry)
    kept = {}
    lost: dict[int, dict[str, Any]] = {}
    for index, entry in sorted(wanted.items()):
        match = next(
            (c for c in candidates.get(index, [])
             if c.checksum == entry["checksum"]),
            None,
        )
        if match is None:
            lost[index] = entry
        else:
            kept[index] = match
    newest = max(kept, default=None)
    for index in sorted(i for i in candidates if i > max(wanted)):
        if newest is None:
            break
        previous = kept[newest]
        following = next(
            (c for c in candidates[index]
             if c.previous_checksum == previous.checksum),
            None,
        )
        if following is None:
            break
        kept[index] = following
        newest = index
    if not kept:
        return None

    for entry in lost.values():
        if entry["fingerprint"] is not None:
            retired.add(entry["fingerprint"])
    return RestorePlan(
        kept=kept,
        copies=_copies_needed(kept, records),
        lost=lost,
        lowest=min(listing["keys"]),
        next_index=max(listing["nextIndex"], max(kept) + 1),
        retired=retired,
    )


def _support(
    listing: dict[str, Any], candidates: dict[int, list[KeyRecord]]
) -> int:
    """Count the keys ``listing`` names that have an intact copy."""
    return sum(
        1 for index, checksum in listing["keys"].items()
        if any(c.checksum == checksum for c in candidates.get(index, []))
    )


def _candidates(
    records: dict[int, KeyRecord], spares: list[KeyRecord]
) -> dict[int, list[KeyRecord]]:
    """Every intact copy of each key: its own file first, then spares."""
    candidates = {index: [record] for index, record in records.items()}
    for spare in spares:
        copies = candidates.setdefault(spare.index, [])
        if all(c.checksum != spare.checksum for c in copies):
            copies.append(spare)
    return candidates


def _copies_needed(
    kept: dict[int, KeyRecord], records: dict[int, KeyRecord]
) -> dict[int, KeyRecord]:
    return {
        index: record for index, record in kept.items()
        if records.get(index) is None
        or records[index].checksum != record.checksum
    }
