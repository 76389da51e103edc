"""Reliability campaign, "rewrap crashes": SIGKILL at every step of a rewrap.

``torro keys rewrap`` is run on a fresh copy of one store again and again,
and killed (SIGKILL, by the TORRO_REWRAP_KILL_AT hook of
torro.store.rewrap) after its first step, then its second, and so on,
until a run gets to the end. After each kill:

* every record of the store (history, archive, current.json, the backup)
  opens under exactly one of the two master keys, and so does
  history.json: under the old one before the journal is written; when
  the kill landed between the two renames of the swap, the store is the
  complete copy the next opener renames into place;
* ``torro keys verify`` says ok while the rewrap has not committed (no
  journal), and otherwise refuses in one line naming the journal and the
  new master key's id, as every command does;
* running the same command again finishes: every record then opens under
  the new master key alone, nothing but the master key's own fields
  changed, the default master key file holds the new key and the old one
  is kept beside it, nothing of the rewrap is left over, and ``torro keys
  verify`` says ok.

The short version rewraps a store of two keys; the long one
(``pytest -m campaign tests/test_rewrap_crash.py``) a store with archived
keys, an unsealed key and its history directory outside the store.
"""

import json
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import leaks
import pytest
from rewrap_store import (
    chain,
    keys_opening,
    listing_opens_under,
    record_paths,
    rotate,
    write_key_file,
)
from runner import Torro

from torro.sealing import MasterKey, read_master_key_file
from torro.store.rewrap import KILL_AT_VARIABLE

if TYPE_CHECKING:
    import campaign


NODE_KEYS = Path(__file__).parent / "fixtures" / "node-keys"
KILLED = re.compile(r"torro: test hook: killed after step (\d+) \((.+)\)\n")
# Beyond every step of the stores below: a run that is never killed.
NO_KILL = 1000


def build_store(torro: Torro, large: bool) -> dict[str, str]:
    """Make the store to rewrap in ``torro.cwd``; return its settings.

    Small: two keys. Large: keys imported beyond retention (archived),
    one made with encryption off, a history directory outside the store.
    """
    cwd = torro.cwd
    if not large:
        rotate(cwd, torro.env(), 2)
        return {}
    settings = {"KEY_DAEMON_MAX_HISTORY": "3",
                "KEY_HISTORY_PATH": str(cwd / "history-elsewhere")}
    source = cwd.parent / "node-source" / "history"
    source.mkdir(parents=True)
    for index in range(10):
        record = NODE_KEYS / "history" / f"key-{index}.json"
        if record.exists():
            shutil.copy(record, source)
    imported = torro.run("keys", "import", str(source.parent), env=settings)
    assert imported.code == 0, imported.stderr
    rotate(cwd, torro.env(**settings, KEY_DAEMON_ENCRYPTION="false"), 1)
    rotate(cwd, torro.env(**settings), 1)
    return settings


def store_dirs(cwd: Path, settings: dict[str, str]) -> tuple[Path, Path]:
    """Return the store and its history directory as the next opener
    sees them: a directory a kill left renamed away is replaced by the
    complete copy that is renamed into its place."""
    def seen(directory: Path) -> Path:
        if directory.exists():
            return directory
        staging = directory.with_name(directory.name + ".staging")
        assert staging.is_dir(), f"{directory} and its copy are gone"
        return staging

    root = seen(cwd / "keys")
    if "KEY_HISTORY_PATH" in settings:
        return root, seen(Path(settings["KEY_HISTORY_PATH"]))
    return root, root / "history"


def check_after_kill(
    cwd: Path,
    settings: dict[str, str],
    old: MasterKey,
    new: MasterKey,
    journal: str | None,
    where: str,
) -> None:
    """Every record opens under exactly one of the two master keys; under
    the old one while there is no journal, the new one once it is
    finished."""
    root, history = store_dirs(cwd, settings)
    paths = record_paths(root, history)
    assert paths, where
    for path in paths:
        opening = keys_opening(path, [old, new])
        assert len(opening) == 1, f"{where}: {path} opens under {opening}"
        if journal is None:
            assert opening == [old.key_id], f"{where}: {path} before commit"
        elif journal == "finished":
            assert opening == [new.key_id], f"{where}: {path} after commit"
    for listing in (root / "history.json", root / "backup/history.json"):
        opening = [m.key_id for m in (old, new)
                   if listing_opens_under(listing, m)]
        assert len(opening) == 1, f"{where}: {listing} opens under {opening}"
    # current.json and the records beside it swap together
    root_keys = keys_opening(root / "current.json", [old, new])
    assert keys_opening(root / "backup/current.json", [old, new]) \
        == root_keys, where


def check_finished(
    torro: Torro,
    settings: dict[str, str],
    old: MasterKey,
    new: MasterKey,
    before: dict[str, object],
    where: str,
    verify: bool = True,
) -> None:
    """The rewrap is complete and nothing of it is left; with ``verify``,
    ``torro keys verify`` agrees."""
    cwd = torro.cwd
    root = cwd / "keys"
    history = Path(settings.get("KEY_HISTORY_PATH", root / "history"))
    for path in record_paths(root, history):
        assert keys_opening(path, [old, new]) == [new.key_id], \
            f"{where}: {path}"
    assert listing_opens_under(root / "history.json", new), where
    assert chain(root, history) == before, f"{where}: keys changed"
    assert read_master_key_file(cwd / "keys.master-key").key_id \
        == new.key_id, where
    kept = cwd / f"keys.master-key.old-{old.key_id}"
    assert read_master_key_file(kept).key_id == old.key_id, where
    leftovers = [
        path.name for path in cwd.iterdir()
        if path.name.endswith((".staging", ".rewrap-old", ".rewrap.lock",
                               ".tmp"))
    ]
    assert not leftovers, f"{where}: left over {leftovers}"
    journal = json.loads((cwd / "keys.rewrap.json").read_text())
    assert journal["state"] == "finished", where
    if not verify:
        return
    verified = torro.run("keys", "verify", env=settings)
    assert verified.code == 0, f"{where}: {verified.stderr}"
    assert verified.stdout.startswith("ok: "), where


def journal_state(cwd: Path) -> str | None:
    """Return the state of the rewrap's journal; None before there is one.
    """
    try:
        return json.loads((cwd / "keys.rewrap.json").read_text())["state"]
    except FileNotFoundError:
        return None


def restore_copy(template: Path, cwd: Path) -> None:
    """Put the working directory back as it was before any rewrap."""
    shutil.rmtree(cwd)
    shutil.copytree(template, cwd, symlinks=True)


@pytest.mark.scenario("rewrap crashes: SIGKILL at each step")
@pytest.mark.parametrize(
    "large",
    [
        pytest.param(False, id="2-keys"),
        pytest.param(True, id="archive-unsealed-history",
                     marks=pytest.mark.campaign),
    ],
)
def test_sigkill_at_every_step_of_a_rewrap(
    torro: Torro, tmp_path: Path, large: bool, tally: "campaign.Tally"
) -> None:
    cwd = torro.cwd
    settings = build_store(torro, large)
    old = read_master_key_file(cwd / "keys.master-key")
    new = write_key_file(cwd / "new.key")
    before = chain(cwd / "keys", Path(settings["KEY_HISTORY_PATH"])
                   if large else None)
    template = tmp_path / "template"
    shutil.copytree(cwd, template, symlinks=True)
    command = ("keys", "rewrap", "--new-master-key-file", "new.key")
    archived = sum(name.startswith("archive/") for name in before["records"])
    rewrapped = (
        f"rewrapped {len(before['listed']) + archived} keys "
        f"({len(before['listed'])} retained, {archived} archived) from "
        f"master key id {old.key_id} to id {new.key_id}"
    )
    steps: list[str] = []
    kills = survived = 0
    began = time.monotonic()

    try:
        for step in range(1, NO_KILL):
            where = f"kill after step {step}"
            restore_copy(template, cwd)
            killed = torro.run(
                *command, env=settings | {KILL_AT_VARIABLE: str(step)}
            )
            if killed.code == 0:
                # the rewrap ran to its end: every step has been killed
                break
            found = KILLED.fullmatch(killed.stderr)
            assert killed.code == -9 and found, f"{where}: {killed}"
            assert int(found.group(1)) == step
            steps.append(found.group(2))
            kills += 1
            where += f" ({found.group(2)})"

            journal = journal_state(cwd)
            check_after_kill(cwd, settings, old, new, journal, where)
            verified = torro.run("keys", "verify", env=settings)
            if journal != "swapping":
                assert verified.code == 0, f"{where}: {verified.stderr}"
                assert verified.stdout.startswith("ok: "), where
            else:
                assert verified.code == 1, where
                assert verified.stderr == (
                    f"torro: error: the key store keys is in the middle of "
                    "a master key rewrap (keys.rewrap.json): run "
                    "torro keys rewrap --new-master-key-file with the file "
                    f"holding the new master key (id {new.key_id}) to "
                    "finish it\n"
                ), where

            again = torro.run(*command, env=settings)
            assert again.code == 0, f"{where}: {again.stderr}"
            assert again.stderr == "", where
            first = again.stdout.splitlines()[0]
            if journal is None:
                assert first == rewrapped, f"{where}: {first}"
            elif journal == "swapping":
                assert first == \
                    f"{rewrapped} (finished an interrupted rewrap)", \
                    f"{where}: {first}"
            else:
                assert first.startswith("nothing to do: "), \
                    f"{where}: {first}"
            # keys verify runs after the last trial, and after each one
            # of the long version
            check_finished(torro, settings, old, new, before, where,
                           verify=large)
            survived += 1
        else:
            pytest.fail(f"the rewrap was still killed after {NO_KILL} steps")

        # the run that was never killed
        check_finished(torro, settings, old, new, before, "no kill")
        survived += 1
        print(f"\nrewrap crashes: {kills} kills at steps: "
              f"{'; '.join(steps)}")
        assert any(name.startswith("staged ") for name in steps)
        for name in ("wrote the journal", "moved keys aside",
                     "swapped in keys", "marked the journal finished"):
            assert name in steps, steps

        texts = [o.stdout + o.stderr for o in torro.outcomes]
        leaks.sweep(tally, texts=texts, logs=cwd / "logs",
                    store=cwd / "keys",
                    master_key_file=cwd / "keys.master-key")
        for form in leaks.spellings(old.reveal()):
            assert not any(form in text for text in texts)
    finally:
        try:
            lost = len(set(before["records"]) - set(chain(
                cwd / "keys", Path(settings["KEY_HISTORY_PATH"])
                if large else None)["records"]))
        except (OSError, ValueError, KeyError):
            lost = len(before["records"])
        print(f"rewrap crashes: {kills} kills and a run to the end, "
              f"{survived} finished, {time.monotonic() - began:.1f} s")
        tally.trials, tally.faults = kills + 1, kills
        tally.survived, tally.lost = survived, lost
