"""``torro keys rewrap``: every record sealed again under a new master key.

Real processes on real stores: after a rewrap every record (retained,
archived, set aside, current.json, the backup) opens under the new master
key and not the old one, history.json verifies under the new key,
nothing but the master key's own fields changed, licenses signed before
still verify, and the daemon starts with the new key and stops with a
clear error with the old one. Mistakes (a bad key file, the same key,
a running daemon, a damaged store) are one line and change nothing.
The progress bar appears on a terminal and nowhere else.
"""

import fcntl
import hashlib
import json
import os
import pty
import select
import shutil
import stat
import struct
import subprocess
import termios
import time
from pathlib import Path
from typing import TYPE_CHECKING

import leaks
import pytest
from rewrap_store import (
    chain,
    keys_opening,
    listing_opens_under,
    opens_under,
    record_paths,
    rotate,
    write_key_file,
)
from runner import COMMAND_TIMEOUT, Outcome, one_error, run_here

from torro.config import load_settings
from torro.errors import StoreError
from torro.sealing import InvalidSeal, MasterKey, Sealer, read_master_key_file
from torro.store import rewrap
from torro.store.records import parse_record

if TYPE_CHECKING:
    from runner import Torro


NODE_KEYS = Path(__file__).parent / "fixtures" / "node-keys"


def node_source(directory: Path) -> Path:
    """Copy the first records of the Node.js fixture (keys 0 to 12, of
    which 3, 7 and 11 are missing) into a source directory to import."""
    history = directory / "history"
    history.mkdir(parents=True)
    for index in range(13):
        record = NODE_KEYS / "history" / f"key-{index}.json"
        if record.exists():
            shutil.copy(record, history)
    return directory


def tree_digest(*roots: Path) -> dict[str, tuple[int, str]]:
    """Return the mode and SHA-256 of every entry under ``roots``."""
    digest = {}
    for root in roots:
        for path in sorted([root, *root.rglob("*")]):
            if not path.exists():
                continue
            mode = stat.S_IMODE(path.lstat().st_mode)
            content = "" if path.is_dir() \
                else hashlib.sha256(path.read_bytes()).hexdigest()
            digest[str(path)] = (mode, content)
    return digest


def no_secret_in(texts: list[str], store: Path, *masters: MasterKey) -> None:
    """Assert no key of the store and no master key is in ``texts``."""
    secrets = leaks.store_keys(store, masters[-1])
    secrets += [master.reveal() for master in masters]
    assert secrets
    for secret in secrets:
        for form in leaks.spellings(secret):
            assert not any(form in text for text in texts)


def assert_sealed_under(
    keys: Path, new: MasterKey, old: MasterKey, history: Path | None = None
) -> None:
    """Every record opens under ``new`` alone; so does history.json."""
    paths = record_paths(keys, history)
    assert paths
    for path in paths:
        assert keys_opening(path, [old, new]) == [new.key_id], path
    for listing in (keys / "history.json", keys / "backup/history.json"):
        assert listing_opens_under(listing, new), listing
        assert not listing_opens_under(listing, old), listing
    assert (keys / "current.json").read_bytes() == (
        keys / "backup/current.json"
    ).read_bytes()


def assert_no_leftovers(cwd: Path, *names: str) -> None:
    """Nothing of a rewrap in progress is left beside the store."""
    for name in names:
        for suffix in (".staging", ".rewrap-old", ".rewrap.lock"):
            assert not (cwd / f"{name}{suffix}").exists(), name + suffix
    journal = json.loads((cwd / "keys.rewrap.json").read_text())
    assert journal["state"] == "finished"


# -- the whole story, with KEY_DAEMON_MASTER_KEY_FILE ---------------------

def test_rewrap_seals_every_record_under_the_new_key(
    torro: "Torro", tmp_path: Path
) -> None:
    cwd = torro.cwd
    keys = cwd / "keys"
    old = write_key_file(cwd / "old.key")
    new = write_key_file(cwd / "new.key")
    with_old = {"KEY_DAEMON_MASTER_KEY_FILE": str(cwd / "old.key"),
                "KEY_DAEMON_MAX_HISTORY": "3"}
    with_new = with_old | {"KEY_DAEMON_MASTER_KEY_FILE": str(cwd / "new.key")}
    imported = torro.run("keys", "import", str(node_source(tmp_path / "src")),
                         env=with_old)
    assert imported.code == 0, imported.stderr
    rotate(cwd, torro.env(**with_old), 2)
    before = chain(keys)
    assert sum("archive/" in name for name in before["records"]) == 7
    hmac_license = torro.run(
        "license", "issue", "--subject", "acme", "--expires", "30d",
        env=with_old,
    ).stdout.strip()
    offline_license = torro.run(
        "license", "issue", "--subject", "acme", "--expires", "30d",
        "--offline", env=with_old,
    ).stdout.strip()

    done = torro.run("keys", "rewrap", "--new-master-key-file", "new.key",
                     env=with_old)

    assert done.code == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.splitlines() == [
        f"rewrapped 10 keys (3 retained, 7 archived) from master key id "
        f"{old.key_id} to id {new.key_id}",
        "next: point KEY_DAEMON_MASTER_KEY_FILE at new.key before starting "
        "the daemon",
    ]
    assert_sealed_under(keys, new, old)
    assert chain(keys) == before
    assert_no_leftovers(cwd, "keys")
    leaks.check_modes(keys)

    verified = torro.run("keys", "verify", env=with_new)
    assert verified.code == 0, verified.stderr
    assert verified.stdout == \
        f"ok: 3 keys verified, chain intact, current key {before['current']}\n"
    refused = one_error(torro.run("keys", "verify", env=with_old))
    assert f"the master key (id {old.key_id}) is not the one that sealed" \
        in refused
    for token in (hmac_license, offline_license):
        checked = torro.run("license", "verify", token, env=with_new)
        assert checked.code == 0, checked.stderr
        assert checked.stdout.startswith("valid: subject acme, key "), \
            checked.stdout

    # the daemon: stops at once with the old key, runs with the new one
    stopped = torro.run("daemon", "run", env=with_old)
    assert stopped.code == 1
    assert f"the master key (id {old.key_id}) is not the one" \
        in stopped.stderr
    assert "Traceback" not in stopped.stderr
    started = torro.run("daemon", "start", env=with_new)
    assert started.code == 0, started.stderr
    try:
        status = torro.run("daemon", "status", env=with_new)
        assert status.code == 0, status.stdout
        torro.wait_until(
            lambda: json.loads((keys / "current.json").read_text())["index"]
            > before["current"],
            what="the daemon to rotate under the new master key",
        )
    finally:
        assert torro.run("daemon", "stop", env=with_new).code == 0
    assert_sealed_under(keys, new, old)

    no_secret_in(
        [o.stdout + o.stderr for o in torro.outcomes]
        + [path.read_text() for path in (cwd / "logs").iterdir()],
        keys, old, new,
    )


# -- the default master key file, and running it again ---------------------

def test_default_master_key_file_gets_the_new_key(torro: "Torro") -> None:
    cwd = torro.cwd
    keys = cwd / "keys"
    rotate(cwd, torro.env(), 3)
    default = cwd / "keys.master-key"
    old = read_master_key_file(default)
    new = write_key_file(cwd / "new.key")
    before = chain(keys)

    done = torro.run("keys", "rewrap", "--new-master-key-file", "new.key")

    assert done.code == 0, done.stderr
    kept = cwd / f"keys.master-key.old-{old.key_id}"
    assert done.stdout.splitlines() == [
        f"rewrapped 3 keys (3 retained, 0 archived) from master key id "
        f"{old.key_id} to id {new.key_id}",
        f"the default master key file {default} holds the new key; the old "
        f"key is kept in {kept}: destroy it once no backup sealed under it "
        "is needed",
    ]
    assert read_master_key_file(default).key_id == new.key_id
    assert read_master_key_file(kept).key_id == old.key_id
    for path in (default, kept):
        assert stat.S_IMODE(path.stat().st_mode) == 0o400
    assert_sealed_under(keys, new, old)
    assert chain(keys) == before
    assert_no_leftovers(cwd, "keys")

    # running it again changes nothing
    state = tree_digest(keys, default, kept, cwd / "keys.rewrap.json")
    again = torro.run("keys", "rewrap", "--new-master-key-file", "new.key")
    assert again.code == 0, again.stderr
    assert again.stdout.splitlines() == [
        f"nothing to do: the key store is sealed under the master key in "
        f"new.key already (id {new.key_id})",
        f"the default master key file {default} holds the new key",
    ]
    assert tree_digest(keys, default, kept, cwd / "keys.rewrap.json") \
        == state

    # nothing else to configure: the next commands use the new key
    rotated = torro.run("daemon", "rotate")
    assert rotated.code == 0, rotated.stderr
    assert rotated.stdout.startswith("rotated to key 3 ")
    assert torro.run("keys", "verify").stdout == \
        "ok: 4 keys verified, chain intact, current key 3\n"
    assert_sealed_under(keys, new, old)


def test_rewrap_again_to_another_key(torro: "Torro") -> None:
    """A second rotation of the master key starts afresh from the first
    one's finished journal."""
    cwd = torro.cwd
    rotate(cwd, torro.env(), 2)
    first = read_master_key_file(cwd / "keys.master-key")
    second = write_key_file(cwd / "second.key")
    third = write_key_file(cwd / "third.key")

    for key in ("second.key", "third.key"):
        done = torro.run("keys", "rewrap", "--new-master-key-file", key)
        assert done.code == 0, done.stderr
        assert done.stdout.startswith("rewrapped 2 keys ")

    assert_sealed_under(cwd / "keys", third, second)
    assert not any(opens_under(path, first)
                   for path in record_paths(cwd / "keys"))
    for key in (first, second):
        kept = cwd / f"keys.master-key.old-{key.key_id}"
        assert read_master_key_file(kept).key_id == key.key_id


def test_master_key_from_the_environment(torro: "Torro") -> None:
    """With KEY_DAEMON_MASTER_KEY, the command says what to set; the
    variable's value is never printed."""
    cwd = torro.cwd
    old = MasterKey(os.urandom(32))
    env = {"KEY_DAEMON_MASTER_KEY": old.reveal().hex()}
    rotate(cwd, torro.env(**env), 2)
    new = write_key_file(cwd / "new.key")

    done = torro.run("keys", "rewrap", "--new-master-key-file", "new.key",
                     env=env)

    assert done.code == 0, done.stderr
    assert done.stdout.splitlines()[1] == (
        "next: replace KEY_DAEMON_MASTER_KEY with the key in new.key (or "
        "set KEY_DAEMON_MASTER_KEY_FILE=new.key instead) before starting "
        "the daemon"
    )
    assert not (cwd / "keys.master-key").exists()
    assert_sealed_under(cwd / "keys", new, old)
    verified = torro.run("keys", "verify",
                         env={"KEY_DAEMON_MASTER_KEY": new.reveal().hex()})
    assert verified.code == 0, verified.stderr
    no_secret_in([done.stdout + done.stderr], cwd / "keys", old, new)


def test_same_key_as_current_is_refused(torro: "Torro") -> None:
    cwd = torro.cwd
    rotate(cwd, torro.env(), 2)
    shutil.copy(cwd / "keys.master-key", cwd / "same.key")
    state = tree_digest(cwd / "keys", cwd / "keys.master-key",
                        cwd / "same.key")

    refused = torro.run("keys", "rewrap", "--new-master-key-file", "same.key")

    line = one_error(refused)
    master = read_master_key_file(cwd / "keys.master-key")
    assert line == (
        f"torro: error: same.key holds the master key the settings name and "
        f"the store is sealed under already (id {master.key_id}): give a "
        "new key (openssl rand -hex 32); nothing was changed"
    )
    assert tree_digest(cwd / "keys", cwd / "keys.master-key",
                       cwd / "same.key") == state
    assert not (cwd / "keys.rewrap.json").exists()


def test_old_key_after_a_rewrap_is_not_called_the_stores_key(
    torro: "Torro",
) -> None:
    # Fault found by a tester: after a rewrap, with the settings still on
    # the old key file, a rewrap to that old file said it "holds the
    # master key the settings name and the store is sealed under already
    # (id X)"; the store is sealed under the new key (id Y) since the
    # rewrap, and the message must say so and what to point where.
    cwd = torro.cwd
    old = write_key_file(cwd / "old.key")
    new = write_key_file(cwd / "new.key")
    with_old = {"KEY_DAEMON_MASTER_KEY_FILE": "old.key"}
    rotate(cwd, torro.env(**with_old), 2)
    done = torro.run("keys", "rewrap", "--new-master-key-file", "new.key",
                     env=with_old)
    assert done.code == 0, done.stderr
    finished = json.loads((cwd / "keys.rewrap.json").read_text())["finished"]
    state = tree_digest(cwd / "keys", cwd / "old.key", cwd / "new.key",
                        cwd / "keys.rewrap.json")

    refused = torro.run("keys", "rewrap", "--new-master-key-file", "old.key",
                        env=with_old)

    assert one_error(refused) == (
        f"torro: error: old.key holds master key id {old.key_id}, the one "
        f"KEY_DAEMON_MASTER_KEY_FILE (old.key) holds, but the key store "
        f"keys is sealed under master key id {new.key_id} since the rewrap "
        f"of {finished}: point KEY_DAEMON_MASTER_KEY_FILE at the file "
        f"holding master key id {new.key_id}; nothing was changed"
    )
    assert tree_digest(cwd / "keys", cwd / "old.key", cwd / "new.key",
                       cwd / "keys.rewrap.json") == state
    assert_sealed_under(cwd / "keys", new, old)

    # doing what it says works: the store rewraps back to the old key
    back = torro.run("keys", "rewrap", "--new-master-key-file", "old.key",
                     env={"KEY_DAEMON_MASTER_KEY_FILE": "new.key"})
    assert back.code == 0, back.stderr
    assert back.stdout.startswith(
        f"rewrapped 2 keys (2 retained, 0 archived) from master key id "
        f"{new.key_id} to id {old.key_id}\n"
    )
    assert_sealed_under(cwd / "keys", old, new)


def test_settings_key_unlike_the_stores_without_a_journal(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same check with no journal to date the change, and the master
    key from KEY_DAEMON_MASTER_KEY: the variable is named, never its
    value."""
    sealing = write_key_file(here / "sealing.key")
    rotate(here, dict(os.environ) | {
        "KEY_DAEMON_MASTER_KEY_FILE": str(here / "sealing.key")
    }, 2)
    other = write_key_file(here / "other.key")
    os.environ["KEY_DAEMON_MASTER_KEY"] = other.reveal().hex()
    try:
        code, out, err = run_here(
            capsys, "keys", "rewrap", "--new-master-key-file", "other.key"
        )
    finally:
        del os.environ["KEY_DAEMON_MASTER_KEY"]

    assert (code, out) == (1, "")
    assert err == (
        f"torro: error: other.key holds master key id {other.key_id}, the "
        "one KEY_DAEMON_MASTER_KEY holds, but the key store keys is sealed "
        f"under master key id {sealing.key_id}: set KEY_DAEMON_MASTER_KEY "
        f"to the master key with id {sealing.key_id}; nothing was changed\n"
    )
    assert other.reveal().hex() not in err
    assert not (here / "keys.rewrap.json").exists()


def test_store_claiming_the_new_key_but_not_verifying_under_it(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rerun after a finished rewrap checks the store under the new key;
    when that fails it says so, not that an old store waits to be
    destroyed (there is none)."""
    rotate(here, dict(os.environ), 2)
    write_key_file(here / "new.key")
    rewrap.rewrap(load_settings(dict(os.environ)), here / "new.key")
    new = read_master_key_file(here / "new.key")
    record = here / "keys/history/key-0.json"
    document = json.loads(record.read_text())
    document["timestamp"] += 1
    record.write_text(json.dumps(document, indent=2) + "\n")

    code, out, err = run_here(
        capsys, "keys", "rewrap", "--new-master-key-file", "new.key"
    )

    assert (code, out) == (1, "")
    assert err.startswith(
        f"torro: error: the key store names master key id {new.key_id}, "
        "the key in new.key, but does not verify under it: "
        "keys/history/key-0.json: checksum does not match"
    )
    assert err.endswith("; nothing was changed\n")
    assert err.count("\n") == 1


def test_interrupted_rewrap_stops_other_commands_until_finished(
    torro: "Torro",
) -> None:
    cwd = torro.cwd
    rotate(cwd, torro.env(), 2)
    old = read_master_key_file(cwd / "keys.master-key")
    new = write_key_file(cwd / "new.key")
    other = write_key_file(cwd / "other.key")
    command = ("keys", "rewrap", "--new-master-key-file", "new.key")

    # two records, then current.json and the rest, then the journal
    killed = torro.run(*command, env={rewrap.KILL_AT_VARIABLE: "4"})
    assert killed.code == -9
    assert killed.stderr == \
        "torro: test hook: killed after step 4 (wrote the journal)\n"

    refusal = (
        "torro: error: the key store keys is in the middle of a master key "
        "rewrap (keys.rewrap.json): run torro keys rewrap "
        "--new-master-key-file with the file holding the new master key "
        f"(id {new.key_id}) to finish it"
    )
    for args in (("daemon", "run"), ("daemon", "rotate"), ("keys", "verify"),
                 ("keys", "history")):
        outcome = torro.run(*args)
        assert outcome.code == 1, args
        assert outcome.stderr.splitlines()[-1] == refusal, args
    wrong = one_error(torro.run("keys", "rewrap", "--new-master-key-file",
                                "other.key"))
    assert wrong == (
        "torro: error: the rewrap of keys that is in progress "
        f"(keys.rewrap.json) is to master key id {new.key_id}, but "
        f"other.key holds id {other.key_id}: give the file holding master "
        f"key id {new.key_id} to finish it"
    )
    assert all(keys_opening(path, [old, new]) == [old.key_id]
               for path in record_paths(cwd / "keys"))

    finished = torro.run(*command)
    assert finished.code == 0, finished.stderr
    assert finished.stdout.splitlines()[0] == (
        f"rewrapped 2 keys (2 retained, 0 archived) from master key id "
        f"{old.key_id} to id {new.key_id} (finished an interrupted rewrap)"
    )
    assert_sealed_under(cwd / "keys", new, old)
    assert_no_leftovers(cwd, "keys")
    assert torro.run("daemon", "rotate").code == 0


# Capabilities that let root read any file; without them root reads as
# any other user does (setpriv drops them for the command it runs).
DAC_CAPABILITIES = "-dac_override,-dac_read_search"
# The owner given to a file the command must not read: a user id that is
# not root's.
OTHER_UID = 65534


def run_as_plain_user(torro: "Torro", *args: str) -> "Outcome":
    """Run one torro command without the capabilities that let root read
    a file it does not own, so file modes bind it as any other user."""
    done = subprocess.run(
        ["setpriv", "--bounding-set", DAC_CAPABILITIES,
         *torro.command(args, False)],
        cwd=torro.cwd,
        env=torro.env(),
        input="",
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )
    return Outcome(args, done.returncode, done.stdout, done.stderr)


def test_journal_the_user_cannot_read_is_named_with_its_reason(
    torro: "Torro",
) -> None:
    # Fault found by a tester: with keys.rewrap.json owned by root (mode
    # 0600) and torro run as another user, daemon status, keys verify and
    # the daemon's start all claimed the store "is in the middle of a
    # master key rewrap ... (id unknown)" although the rewrap had
    # finished; they must say the journal cannot be read, why, and what
    # to check. Here the journal belongs to another user and torro runs
    # as root without the capabilities that override file modes: the
    # same refusal by the kernel.
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run without DAC overrides")
    cwd = torro.cwd
    rotate(cwd, torro.env(), 2)
    write_key_file(cwd / "new.key")
    assert torro.run("keys", "rewrap", "--new-master-key-file",
                     "new.key").code == 0
    journal = cwd / "keys.rewrap.json"
    os.chown(journal, OTHER_UID, OTHER_UID)
    journal.chmod(0o600)
    unreadable = (
        "cannot read the master key rewrap journal keys.rewrap.json: "
        "Permission denied; check its owner and mode (torro must read it "
        "to tell whether a rewrap of the key store is finished)"
    )

    for args in (("keys", "verify"), ("daemon", "run"), ("daemon", "start"),
                 ("keys", "rewrap", "--new-master-key-file", "new.key")):
        outcome = run_as_plain_user(torro, *args)
        assert outcome.code == 1, (args, outcome)
        assert outcome.stderr.splitlines()[-1] == \
            f"torro: error: {unreadable}", args
        assert "middle of a master key rewrap" not in outcome.stderr
    status = run_as_plain_user(torro, "daemon", "status")
    assert status.code == 3, status
    assert f"problem:        {unreadable}" in status.stdout.splitlines()
    assert "middle of a master key rewrap" not in status.stdout

    # the journal alone was in the way
    journal.chmod(0o644)
    verified = run_as_plain_user(torro, "keys", "verify")
    assert verified.code == 0, verified.stderr
    assert verified.stdout == \
        "ok: 2 keys verified, chain intact, current key 1\n"


def test_journal_that_is_no_file_or_no_journal_is_named(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same fault without a second user: a journal that is a
    directory, or holds bytes that are no journal, is named as such by
    every command, never taken for a rewrap in progress."""
    rotate(here, dict(os.environ), 2)
    write_key_file(here / "new.key")
    journal = here / "keys.rewrap.json"
    cases = {
        "directory": (
            "cannot read the master key rewrap journal keys.rewrap.json: "
            "it is a directory, not a file; torro keys rewrap only ever "
            "writes a file there, so move it away"
        ),
        "damaged": (
            "keys.rewrap.json is not a rewrap journal: it was damaged; "
            "check whether the store's files name the old or the new master "
            "key id (masterKeyId) and restore them from a backup"
        ),
    }
    for case, message in cases.items():
        if case == "directory":
            journal.mkdir(mode=0o700)
        else:
            journal.rmdir()
            journal.write_bytes(b"\x00\xff{not json")
        for args in (("keys", "verify"), ("daemon", "rotate"),
                     ("keys", "rewrap", "--new-master-key-file", "new.key")):
            code, out, err = run_here(capsys, *args)
            assert (code, out) == (1, ""), (case, args)
            assert err == f"torro: error: {message}\n", (case, args)
        # the status command exits through sys.exit, past run_here
        with pytest.raises(SystemExit) as exited:
            run_here(capsys, "daemon", "status")
        assert exited.value.code == 3, case
        out = capsys.readouterr().out
        assert f"problem:        {message}" in out.splitlines(), case


# -- mistakes: one line, nothing changed -----------------------------------

def bad_key_files(cwd: Path) -> dict[str, tuple[Path, str]]:
    """Make a bad new key file of each kind; return each with the end of
    the error it must give."""
    cases = {}
    missing = cwd / "missing.key"
    cases["missing"] = (missing, f"new master key file {missing} does not "
                        "exist: make one with (umask 077; openssl rand -hex "
                        f"32 > {missing})")
    directory = cwd / "dir.key"
    directory.mkdir(mode=0o700)
    cases["directory"] = (directory, f"new master key file {directory} is "
                          "not a regular file: give a file holding 64 hex "
                          "characters")
    short = cwd / "short.key"
    short.write_text("abc\n")
    short.chmod(0o400)
    cases["short"] = (short, f"new master key file {short} must hold "
                      "exactly 64 hex characters (one 32-byte key), "
                      "optionally followed by a newline: make one with "
                      "openssl rand -hex 32")
    loose = cwd / "loose.key"
    write_key_file(loose)
    loose.chmod(0o644)
    cases["readable by others"] = (
        loose, f"new master key file {loose} is open to group or others "
        f"(mode 644): chmod 0400 {loose} first",
    )
    inside = cwd / "keys" / "history" / "new.key"
    write_key_file(inside)
    cases["inside the store"] = (
        inside, f"new master key file {inside} is inside keys: "
        "keep the master key outside the key store, so a copy of the "
        "store cannot open the keys",
    )
    return cases


def test_bad_new_key_files_are_refused_in_one_line(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rotate(here, dict(os.environ), 2)
    cases = bad_key_files(here)
    state = tree_digest(here / "keys", here / "keys.master-key")

    for name, (path, message) in cases.items():
        code, out, err = run_here(
            capsys, "keys", "rewrap", "--new-master-key-file", str(path)
        )
        assert (code, out) == (1, ""), name
        assert err == f"torro: error: {message}\n", name

    assert tree_digest(here / "keys", here / "keys.master-key") == state
    assert not (here / "keys.rewrap.json").exists()


def test_rewrap_is_refused_while_the_daemon_runs(torro: "Torro") -> None:
    # Fault found by a tester: the message said only "stop it with torro
    # daemon stop", which PM2 or Supervisor undo by restarting the daemon;
    # it must name the service managers' own stop commands too.
    cwd = torro.cwd
    write_key_file(cwd / "new.key")
    # no rotation while the test looks at the store
    env = {"KEY_DAEMON_ROTATION_INTERVAL": "3600000"}
    started = torro.run("daemon", "start", env=env)
    assert started.code == 0, started.stderr
    try:
        state = tree_digest(cwd / "keys", cwd / "keys.master-key")
        pid = int(torro.pid_file.read_text())
        line = one_error(torro.run(
            "keys", "rewrap", "--new-master-key-file", "new.key", env=env
        ))
        assert line == (
            f"torro: error: the daemon is running (pid {pid}, PID file "
            "torro-daemon.pid): stop it first (torro daemon stop, or "
            "through the service manager that runs it: systemctl stop, "
            "supervisorctl stop, pm2 stop), run torro keys rewrap, then "
            "start it with the new master key; nothing was changed"
        )
        assert tree_digest(cwd / "keys", cwd / "keys.master-key") == state
    finally:
        assert torro.run("daemon", "stop").code == 0


def test_damaged_store_is_refused(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rotate(here, dict(os.environ), 3)
    write_key_file(here / "new.key")
    record = here / "keys/history/key-1.json"
    document = json.loads(record.read_text())
    document["timestamp"] += 1
    record.write_text(json.dumps(document, indent=2) + "\n")
    state = tree_digest(here / "keys", here / "keys.master-key")

    code, out, err = run_here(
        capsys, "keys", "rewrap", "--new-master-key-file", "new.key"
    )

    assert (code, out) == (1, "")
    assert err == (
        "torro: error: the key store does not verify, so nothing was "
        "rewrapped: keys/history/key-1.json: checksum does not match (the "
        "record was edited); run torro keys restore\n"
    )
    assert tree_digest(here / "keys", here / "keys.master-key") == state
    assert not (here / "keys.staging").exists()


# -- what a store may hold ---------------------------------------------------

def test_unsealed_records_stay_unsealed(torro: "Torro") -> None:
    cwd = torro.cwd
    keys = cwd / "keys"
    rotate(cwd, torro.env(KEY_DAEMON_ENCRYPTION="false"), 2)
    rotate(cwd, torro.env(), 2)
    plain = {
        path.name: parse_record(path.read_bytes()).key_text
        for path in (keys / "history").glob("*.json")
        if not parse_record(path.read_bytes()).sealed
    }
    assert sorted(plain) == ["key-0.json", "key-1.json"]
    old = read_master_key_file(cwd / "keys.master-key")
    new = write_key_file(cwd / "new.key")

    done = torro.run("keys", "rewrap", "--new-master-key-file", "new.key")

    assert done.code == 0, done.stderr
    assert done.stdout.splitlines()[:2] == [
        f"rewrapped 4 keys (4 retained, 0 archived) from master key id "
        f"{old.key_id} to id {new.key_id}",
        "2 keys stay unsealed (made with KEY_DAEMON_ENCRYPTION=false): only "
        "their checksums changed",
    ]
    for name, text in plain.items():
        record = parse_record((keys / "history" / name).read_bytes())
        assert (record.key_text, record.master_key_id) == (text, new.key_id)
    assert_sealed_under(keys, new, old)
    assert torro.run("keys", "verify").code == 0


def test_one_key_is_counted_in_the_singular(torro: "Torro") -> None:
    # Fault found by a tester: a store of one key printed "rewrapped 1
    # keys"; one key, and one unsealed key, are said in the singular.
    cwd = torro.cwd
    rotate(cwd, torro.env(KEY_DAEMON_ENCRYPTION="false"), 1)
    old = read_master_key_file(cwd / "keys.master-key")
    new = write_key_file(cwd / "new.key")

    done = torro.run("keys", "rewrap", "--new-master-key-file", "new.key")

    assert done.code == 0, done.stderr
    assert done.stdout.splitlines()[:2] == [
        f"rewrapped 1 key (1 retained, 0 archived) from master key id "
        f"{old.key_id} to id {new.key_id}",
        "1 key stays unsealed (made with KEY_DAEMON_ENCRYPTION=false): "
        "only its checksum changed",
    ]
    assert_sealed_under(cwd / "keys", new, old)


def test_history_directory_outside_the_store(torro: "Torro") -> None:
    cwd = torro.cwd
    keys, history = cwd / "keys", cwd / "history-elsewhere"
    env = {"KEY_HISTORY_PATH": str(history)}
    rotate(cwd, torro.env(**env), 3)
    old = read_master_key_file(cwd / "keys.master-key")
    new = write_key_file(cwd / "new.key")
    before = chain(keys, history)

    done = torro.run("keys", "rewrap", "--new-master-key-file", "new.key",
                     env=env)

    assert done.code == 0, done.stderr
    assert_sealed_under(keys, new, old, history)
    assert chain(keys, history) == before
    assert_no_leftovers(cwd, "keys", "history-elsewhere")
    assert torro.run("keys", "verify", env=env).code == 0


def test_set_aside_records_are_rewrapped_and_strangers_refused(
    here: Path,
) -> None:
    """A record restore set aside in archive/ is sealed again like the
    rest; a file that is no record stops the rewrap before any change."""
    rotate(here, dict(os.environ), 3)
    keys = here / "keys"
    (keys / "archive").mkdir(mode=0o700)
    aside = keys / "archive/set-aside-20260101T000000Z-key-1.json"
    shutil.copy(keys / "history/key-1.json", aside)
    stranger = keys / "archive/notes.txt"
    stranger.write_text("hello\n")
    new = write_key_file(here / "new.key")
    settings = load_settings(dict(os.environ))

    with pytest.raises(StoreError) as refused:
        rewrap.rewrap(settings, here / "new.key")
    assert str(refused.value) == (
        "keys/archive/notes.txt is not a record of the key store: a rewrap "
        "replaces the whole directory, so move it away first; nothing was "
        "changed"
    )
    assert not opens_under(aside, new)

    stranger.unlink()
    result = rewrap.rewrap(settings, here / "new.key")

    assert (result.retained, result.archived, result.set_aside) == (3, 0, 1)
    assert opens_under(aside, new)
    assert parse_record(aside.read_bytes()).fingerprint == parse_record(
        (keys / "history/key-1.json").read_bytes()
    ).fingerprint


def test_sealed_key_is_bound_to_its_index_after_a_rewrap(
    here: Path,
) -> None:
    """The new seal keeps the index as associated data: a sealed key
    moved to another index does not open."""
    rotate(here, dict(os.environ), 2)
    new = write_key_file(here / "new.key")
    rewrap.rewrap(load_settings(dict(os.environ)), here / "new.key")
    record = parse_record((here / "keys/history/key-1.json").read_bytes())
    sealer = Sealer(new)
    assert sealer.open(1, record.key_text).fingerprint == record.fingerprint
    with pytest.raises(InvalidSeal):
        sealer.open(0, record.key_text)


# -- the progress bar --------------------------------------------------------

def run_on_pty(torro: "Torro", *args: str) -> tuple[int, str, str]:
    """Run torro with stderr on a pseudo-terminal (80 columns); return the
    exit code, stdout and what the terminal received."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    child = torro.popen(
        *args, env={"TERM": "xterm"}, stdout=subprocess.PIPE, stderr=slave
    )
    os.close(slave)
    received = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            received += chunk
        elif child.poll() is not None:
            break
    os.close(master)
    stdout = child.stdout.read().decode() if child.stdout else ""
    return child.wait(timeout=10), stdout, received.decode(errors="replace")


def test_progress_bar_on_a_terminal(torro: "Torro") -> None:
    cwd = torro.cwd
    rotate(cwd, torro.env(), 4)
    write_key_file(cwd / "new.key")

    code, out, terminal = run_on_pty(
        torro, "keys", "rewrap", "--new-master-key-file", "new.key"
    )
    assert code == 0, terminal
    assert out.startswith("rewrapped 4 keys ")
    assert "rewrapping keys" in terminal
    assert "4/4" in terminal
    assert "━" in terminal

    code, out, terminal = run_on_pty(torro, "keys", "verify")
    assert code == 0, terminal
    assert out == "ok: 4 keys verified, chain intact, current key 3\n"
    assert "verifying keys" in terminal
    assert "4/4" in terminal


def test_no_progress_bar_on_a_pipe(torro: "Torro", tmp_path: Path) -> None:
    cwd = torro.cwd
    env = {"KEY_DAEMON_MAX_HISTORY": "5"}
    imported = torro.run("keys", "import", str(node_source(tmp_path / "src")),
                         env=env)
    write_key_file(cwd / "new.key")
    rewrapped = torro.run("keys", "rewrap", "--new-master-key-file",
                          "new.key", env=env)
    verified = torro.run("keys", "verify", env=env)

    for outcome in (imported, rewrapped, verified):
        assert outcome.code == 0, outcome.stderr
        assert outcome.stderr == ""
        assert "\x1b" not in outcome.stdout
    assert imported.stdout.splitlines()[-1].startswith(
        "imported 10 keys: 5 retained, 5 beyond"
    )
    assert len(rewrapped.stdout.splitlines()) == 2
    assert rewrapped.stdout.startswith(
        "rewrapped 10 keys (5 retained, 5 archived) "
    )
    assert verified.stdout == \
        "ok: 5 keys verified, chain intact, current key 12\n"
