"""The ``torro`` command: run and control the daemon, inspect the keys.

Each command reads the settings, calls the library and prints the outcome;
none holds logic of its own. Errors meant for the operator print one line,
``torro: error: ...``, and exit non-zero; a traceback only ever means a bug.
"""

import contextlib
import json
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import click

from torro import __version__, logs, process
from torro.config import (
    Settings,
    check_files,
    load_pid_file,
    load_settings,
    unknown_variables,
)
from torro.errors import ConfigError, TorroError, os_error_message
from torro.manager import (
    DaemonManager,
    daemon_status,
    iso_time,
    open_existing_store,
)
from torro.rotation import KeyRotationDaemon, RotationPolicy
from torro.store import KeyStore, open_store


# Exit codes of `torro daemon status`, usable by a monitoring check.
STATUS_HEALTHY = 0
STATUS_UNHEALTHY = 1
STATUS_NOT_RUNNING = 3
# An error that is a bug rather than an operator's mistake (sysexits.h).
EXIT_SOFTWARE = 70

security_log = logging.getLogger(logs.SECURITY)
system_log = logging.getLogger(logs.SYSTEM)
# Commands that leave the log files alone (status, history, config) must
# not have log records printed on stderr by logging's last resort: the
# operator gets one line per error, from the command itself.
logging.getLogger("torro").addHandler(logging.NullHandler())


def _settings() -> Settings:
    return load_settings()


def _with_logs(settings: Settings) -> Settings:
    logs.configure_logging(settings.log_dir, settings.log_level,
                           log_format=settings.log_format)
    return settings


def _loaded_store(settings: Settings) -> KeyStore:
    store = open_existing_store(settings)
    store.load()
    return store


def _rotation_daemon(settings: Settings) -> KeyRotationDaemon:
    return KeyRotationDaemon(
        open_store(settings), RotationPolicy.from_settings(settings)
    )


def _print_json(document: Any) -> None:
    click.echo(json.dumps(document, indent=2, sort_keys=True))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="torro")
def cli() -> None:
    """Torro: rotate, seal and keep the signing keys of a license server.

    Settings come from KEY_DAEMON_* variables and a .env file in the
    working directory; see `torro config show`.
    """


# -- daemon ------------------------------------------------------------

@cli.group()
def daemon() -> None:
    """Run and control the rotation daemon."""


@daemon.command("run")
def daemon_run() -> None:
    """Run the daemon in the foreground until SIGTERM or SIGINT.

    Loads and verifies the key store, creates the first key if there is
    none, then rotates on schedule. SIGHUP reopens the log files and
    reloads the configuration.
    """
    settings = _settings()
    process.limit_malloc_arenas()
    DaemonManager(settings).run()


@daemon.command("start")
def daemon_start() -> None:
    """Start the daemon in the background; return once it is ready."""
    settings = _settings()
    started = process.start_background(settings.pid_file)
    click.echo(f"daemon started (pid {started.pid})")
    if started.warning:
        click.echo(f"torro: warning: {started.warning}", err=True)


@daemon.command("stop")
def daemon_stop() -> None:
    """Stop the running daemon (SIGTERM) and wait until it has exited.

    Only KEY_DAEMON_PID_FILE is read, so that a bad value of another
    setting does not keep a running daemon from being stopped.
    """
    pid = process.stop_daemon(load_pid_file())
    if pid is None:
        click.echo("no daemon is running")
    else:
        click.echo(f"daemon stopped (pid {pid})")


@daemon.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def daemon_status_command(as_json: bool) -> None:
    """Tell whether the daemon runs and how its keys stand.

    Exits 0 when the daemon runs and its store is healthy, 1 when it runs
    but something is wrong, 3 when no daemon runs.
    """
    settings = _settings()
    status = daemon_status(settings)
    if as_json:
        _print_json(status.to_dict())
    else:
        state = f"running (pid {status.pid})" if status.running \
            else "not running"
        click.echo(f"daemon:         {state}")
        click.echo(f"key store:      {status.store} ({status.integrity})")
        if status.current_index is not None:
            click.echo(
                f"current key:    {status.current_index} (fingerprint "
                f"{status.fingerprint}, age {status.key_age_seconds:.0f} s)"
            )
            click.echo(f"last rotation:  {status.last_rotation}")
            click.echo(f"next rotation:  {status.next_rotation}")
            click.echo(f"retained keys:  {status.history_size}")
        if status.problem:
            click.echo(f"problem:        {status.problem}")
    if not status.running:
        sys.exit(STATUS_NOT_RUNNING)
    sys.exit(STATUS_HEALTHY if status.healthy else STATUS_UNHEALTHY)


@daemon.command("rotate")
def daemon_rotate() -> None:
    """Rotate the key now, whether or not a daemon runs.

    On an empty store this creates the first key. A running daemon picks
    the new key up at its next wake-up.
    """
    settings = _with_logs(_settings())
    rotation = _rotation_daemon(settings).rotate(force=True)
    assert rotation is not None
    record = rotation.record
    click.echo(
        f"rotated to key {record.index} (fingerprint {record.fingerprint})"
    )


@daemon.command("reset")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--purge",
    is_flag=True,
    help="Destroy the old keys instead of archiving them.",
)
def daemon_reset(yes: bool, purge: bool) -> None:
    """Put every key aside and start a new chain.

    The old store moves to a timestamped archive folder beside it, or is
    destroyed with --purge. Licenses signed with the old keys no longer
    verify against this store. Indexes continue: the new chain never
    reuses an index.
    """
    settings = _with_logs(_settings())
    if not yes:
        what = "destroy" if purge else "archive"
        click.confirm(
            f"{what} every key in {settings.storage_path} and start a new "
            "chain?",
            abort=True,
        )
    reset = _rotation_daemon(settings).reset(purge=purge)
    where = "destroyed" if reset.archive is None \
        else f"archived in {reset.archive}"
    click.echo(
        f"old keys {where}; new chain starts at key {reset.record.index}"
    )


# -- keys --------------------------------------------------------------

@cli.group()
def keys() -> None:
    """Inspect, verify, import and restore the stored keys."""


@keys.command("history")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def keys_history(as_json: bool) -> None:
    """List the retained keys, newest first, without key material."""
    store = _loaded_store(_settings())
    _stop_on_problem(store)
    rows = [
        _key_summary(store, record.index)
        for record in sorted(
            store.records.values(), key=lambda r: r.index, reverse=True
        )
    ]
    if as_json:
        _print_json(rows)
        return
    click.echo(f"{'index':>7}  {'created (UTC)':24}  {'fingerprint':16}  "
               "role")
    for row in rows:
        click.echo(
            f"{row['index']:>7}  {row['created']:24}  "
            f"{row['fingerprint']:16}  {row['role']}"
        )


@keys.command("show")
@click.argument("index", type=click.IntRange(min=0))
@click.option(
    "--reveal",
    is_flag=True,
    help="Print the key itself (logged to the security log).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def keys_show(index: int, reveal: bool, as_json: bool) -> None:
    """Show one retained key by index; --reveal prints the key itself."""
    settings = _with_logs(_settings())
    store = _loaded_store(settings)
    _stop_on_problem(store)
    if index not in store.records:
        raise TorroError(store.unknown_index_message(index))
    row = _key_summary(store, index)
    if reveal:
        row["key"] = store.material(index).reveal_hex()
        security_log.warning(
            "key %d (fingerprint %s) revealed by torro keys show",
            index,
            row["fingerprint"],
        )
    if as_json:
        _print_json(row)
        return
    for name, value in row.items():
        click.echo(f"{name + ':':14} {_plain(value)}")


@keys.command("verify")
def keys_verify() -> None:
    """Check every record, the chain, the seals and the backup.

    Prints the first bad record and exits 1 when anything is wrong.
    """
    settings = _with_logs(_settings())
    store = open_existing_store(settings)
    with _progress_bar("verifying keys") as progress:
        problems = store.verify(progress)
    if problems:
        for problem in problems:
            security_log.error("verify: %s", problem)
        more = len(problems) - 1
        suffix = f" ({more} more problem{'s' * (more > 1)} in the " \
            "security log)" if more else ""
        raise TorroError(f"{problems[0]}{suffix}")
    store.load()
    current = store.current
    click.echo(
        f"ok: {len(store.records)} keys verified, chain intact, current key "
        f"{'none' if current is None else current.index}"
    )


@keys.command("import")
@click.argument(
    "source",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
)
def keys_import(source: Path) -> None:
    """Import a key directory of the original Node.js daemon.

    Every record that can be trusted is sealed into the (empty) store
    with its index, timestamp and derivedFrom; each record skipped or
    doubtful is printed with the reason. Keys beyond
    KEY_DAEMON_MAX_HISTORY go to the store's archive/. A source with
    nothing to import, or a store that holds keys already, leaves no
    trace: no store, master key or logs.
    """
    from torro.store import importer
    from torro.store.keystore import now_ms

    settings = _settings()
    importer.require_empty_store(settings.storage_path, settings.history_dir)
    plan = importer.read_source(
        source, now=now_ms(), validate=settings.validation_enabled
    )
    for name, reason in plan.skipped:
        click.echo(f"skipped {name}: {reason}")
    plan.require_records()

    # only now is there something to write
    _with_logs(settings)
    store = open_store(settings)
    with _progress_bar("importing keys") as progress:
        report = importer.write_plan(plan, store, progress)
    for index, reason in report.doubtful:
        click.echo(f"doubtful key {index}: {reason}")
    for name in report.ignored:
        click.echo(f"ignored {name}: not key records")
    for name in report.retired_skipped:
        click.echo(f"retired the key of skipped {name}: it is never made "
                   "again")
    retained = len(report.imported) - len(report.archived)
    next_index = ""
    if report.next_index != report.current_index + 1:
        next_index = (
            f"; next index {report.next_index}, above every index the "
            "source claims"
        )
    click.echo(
        f"imported {len(report.imported)} keys: {retained} retained, "
        f"{len(report.archived)} beyond KEY_DAEMON_MAX_HISTORY="
        f"{settings.max_history} archived in {store.archive_dir}; "
        f"current key {report.current_index}{next_index}"
    )


@keys.command("rewrap")
@click.option(
    "--new-master-key-file",
    "new_key_file",
    required=True,
    type=click.Path(path_type=Path),
    help="The new master key: 64 hex characters, mode 0400, outside the "
    "key store.",
)
def keys_rewrap(new_key_file: Path) -> None:
    """Seal every key under a new master key (rotate the master key).

    Every record (retained, archived, set aside), current.json,
    history.json and the backup are written again under the key in
    --new-master-key-file; indexes, fingerprints and licenses stay
    valid. A copy is built beside the store and swapped in, so a crash
    leaves the store under the old key or the new one, never a mix
    that the next run cannot finish: run the same command again. Stop
    the daemon first, through its service manager when one runs it.
    When the master key is the default
    <store>.master-key, that file gets the new key and the old one is
    kept as <store>.master-key.old-<id>; otherwise point
    KEY_DAEMON_MASTER_KEY_FILE at the new key before starting the
    daemon.
    """
    from torro.store import rewrap

    settings = _with_logs(_settings())
    with _progress_bar("rewrapping keys") as progress:
        result = rewrap.rewrap(settings, new_key_file, progress=progress)
    if not result.changed:
        click.echo(
            f"nothing to do: the key store is sealed under the master key "
            f"in {new_key_file} already (id {result.new_key_id})"
        )
    else:
        counts = f"{result.retained} retained, {result.archived} archived"
        if result.set_aside:
            counts += f", {result.set_aside} set aside"
        resumed = " (finished an interrupted rewrap)" \
            if result.resumed else ""
        total = result.retained + result.archived + result.set_aside
        click.echo(
            f"rewrapped {total} {'key' if total == 1 else 'keys'} "
            f"({counts}) from master key id {result.old_key_id} to id "
            f"{result.new_key_id}{resumed}"
        )
        if result.unsealed == 1:
            click.echo(
                "1 key stays unsealed (made with KEY_DAEMON_ENCRYPTION="
                "false): only its checksum changed"
            )
        elif result.unsealed:
            click.echo(
                f"{result.unsealed} keys stay unsealed (made with "
                "KEY_DAEMON_ENCRYPTION=false): only their checksums changed"
            )
    if result.default_key_file is not None:
        kept = "" if result.old_key_copy is None else (
            f"; the old key is kept in {result.old_key_copy}: destroy it "
            "once no backup sealed under it is needed"
        )
        click.echo(
            f"the default master key file {result.default_key_file} holds "
            f"the new key{kept}"
        )
    elif settings.master_key is not None:
        click.echo(
            f"next: replace KEY_DAEMON_MASTER_KEY with the key in "
            f"{new_key_file} (or set KEY_DAEMON_MASTER_KEY_FILE="
            f"{new_key_file} instead) before starting the daemon"
        )
    elif settings.master_key_file is None \
            or settings.master_key_file.resolve() != new_key_file.resolve():
        click.echo(
            f"next: point KEY_DAEMON_MASTER_KEY_FILE at {new_key_file} "
            "before starting the daemon"
        )


@keys.command("restore")
def keys_restore() -> None:
    """Rebuild current.json and history.json from what survives.

    Every record, history.json, current.json and the backup are verified
    under the master key; the store is rebuilt from those that pass. A
    damaged record comes back from a spare copy when there is one, a key
    with no intact copy is reported lost, and files that do not fit are
    set aside in archive/, never deleted.
    """
    settings = _with_logs(_settings())
    store = open_existing_store(settings)
    with store.locked():
        restored = store.restore()
    if not restored.changed:
        click.echo(
            f"nothing to restore: the store verifies (current key "
            f"{restored.current.index})"
        )
        return
    for path in restored.rewritten:
        click.echo(f"wrote {path}")
    for index in restored.set_aside:
        click.echo(f"set aside key-{index}.json in {store.archive_dir}")
    for index in restored.archive_set_aside:
        click.echo(
            f"set aside damaged archived key-{index}.json in "
            f"{store.archive_dir}"
        )
    for index, entry in sorted(restored.lost.items()):
        click.echo(
            f"lost key {index} (fingerprint "
            f"{entry['fingerprint'] or 'unknown'}): no intact copy is left; "
            "licenses signed with it no longer verify until a copy is put "
            "back and torro keys restore runs again"
        )
    click.echo(f"restored: current key {restored.current.index}")


def _key_summary(store: KeyStore, index: int) -> dict[str, Any]:
    record = store.records[index]
    current = store.current is not None and store.current.index == index
    return {
        "index": record.index,
        "created": iso_time(record.timestamp),
        "fingerprint": record.fingerprint,
        "algorithm": record.algorithm,
        "length": record.length,
        "derived_from": record.derived_from,
        "role": "current" if current else "retained",
        "sealed": record.sealed,
    }


def _plain(value: Any) -> str:
    """Return a value as an operator reads it: yes/no, none."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "none" if value is None else str(value)


def _stop_on_problem(store: KeyStore) -> None:
    if store.problem is not None:
        raise store.problem


@contextlib.contextmanager
def _progress_bar(
    description: str,
) -> Iterator[Callable[[int, int], None] | None]:
    """Show a progress bar on stderr while a long pass over the keys runs.

    Only a terminal gets it: when stderr is a pipe or a file, nothing is
    added to the output, and the update function is None.
    """
    try:
        terminal = sys.stderr.isatty()
    except (AttributeError, ValueError):
        terminal = False
    if not terminal:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    console = Console(stderr=True)
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


# -- config ------------------------------------------------------------

@cli.group()
def config() -> None:
    """Check and show the configuration."""


@config.command("check")
def config_check() -> None:
    """Validate every setting without starting anything or creating files.

    Paths are checked as the other commands check them, and a master key
    file is read; any problem is a bad setting and exits 2.
    """
    check_files(_settings())
    for line in unknown_variables():
        click.echo(f"torro: warning: {line}", err=True)
    click.echo("configuration ok")


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def config_show(as_json: bool) -> None:
    """Print the effective configuration, secrets redacted."""
    described = _settings().describe()
    if as_json:
        _print_json(described)
        return
    for name, value in described.items():
        click.echo(f"{name}={value}")


# -- admin-token -------------------------------------------------------

@cli.group("admin-token")
def admin_token() -> None:
    """Create tokens for the HTTP API's admin endpoints."""


@admin_token.command("create")
@click.option(
    "--read-only",
    is_flag=True,
    help="A token that sees status details, stats and history metadata "
    "only, never a key.",
)
def admin_token_create(read_only: bool) -> None:
    """Make a new admin token and append its hash to the token file.

    The token is printed once, on stdout; only its hash is kept, in
    KEY_DAEMON_ADMIN_TOKEN_FILE. A running daemon accepts it at once.
    Delete its line from the file to revoke it.
    """
    from torro.api import tokens

    settings = _with_logs(_settings())
    path = settings.admin_token_file
    if path is None:
        raise ConfigError(
            "KEY_DAEMON_ADMIN_TOKEN_FILE is not set: set it to the file "
            "that keeps the tokens' hashes (it is created if missing)"
        )
    role = tokens.READ if read_only else tokens.FULL
    token, entry = tokens.create_token(path, role)
    logs.register_secret(token)
    security_log.warning(
        "admin token %s (%s) created in %s", entry.token_id, role, path
    )
    click.echo(
        f"created {'read-only' if read_only else 'full'} admin token "
        f"{entry.token_id} in {path}; it is shown only once:",
        err=True,
    )
    click.echo(token)


# -- license -----------------------------------------------------------

def _license_expiry(
    ctx: click.Context, param: click.Parameter, value: str
) -> int:
    """Read when a license expires: an ISO 8601 date or time, or a
    duration.

    A time without a zone is UTC, and a date alone is its midnight UTC;
    a duration (``30d``, ``12h``) counts from now. Returns seconds since
    the epoch, and refuses a time that is not in the future.
    """
    import datetime
    import re
    import time

    from torro.licenses import MAX_TIME

    now = int(time.time())
    text = value.strip()
    duration = re.fullmatch(r"([1-9][0-9]{0,6})([dh])", text)
    if duration is not None:
        unit = 86400 if duration.group(2) == "d" else 3600
        expires = now + int(duration.group(1)) * unit
    else:
        try:
            moment = datetime.datetime.fromisoformat(text)
        except ValueError:
            raise click.BadParameter(
                f"{text} is neither an ISO 8601 date or time (2027-01-31, "
                "2027-01-31T12:00:00Z) nor a duration (30d, 12h)",
                ctx,
                param,
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.UTC)
        expires = int(moment.timestamp())
    if expires <= now:
        raise click.BadParameter(
            f"{text} is in the past: a license must expire after it is "
            "issued",
            ctx,
            param,
        )
    if expires > MAX_TIME:
        raise click.BadParameter(
            f"{text} is after 9999-12-31T23:59:59Z", ctx, param
        )
    return expires


@cli.group("license")
def license_group() -> None:
    """Issue and verify licenses signed with the retained keys."""


@license_group.command("issue")
@click.option("--subject", required=True, help="Who holds the license.")
@click.option(
    "--expires",
    required=True,
    metavar="DATE",
    callback=_license_expiry,
    help="ISO 8601 date or time (UTC unless zoned), or a duration: 30d, "
    "12h.",
)
@click.option(
    "--feature",
    "features",
    multiple=True,
    help="A feature the license grants; repeat for more.",
)
@click.option(
    "--offline",
    is_flag=True,
    help="Sign by EdDSA, for clients that verify with the public keys.",
)
def license_issue(
    subject: str, expires: int, features: tuple[str, ...], offline: bool
) -> None:
    """Issue a license signed with the current key; print only it.

    By default the license is signed by HMAC with the current key itself
    (HS256, or HS512 for a sha512 key): whoever verifies it needs the
    key. With --offline it is signed by EdDSA with a signing key derived
    from the current key, and verifies with the public key published for
    that key's index. Either way it verifies until its key is no longer
    retained (KEY_DAEMON_MAX_HISTORY rotations later): retention bounds
    how long a license can outlive the rotation of its key.
    """
    from torro import licenses

    settings = _with_logs(_settings())
    store = _loaded_store(settings)
    _stop_on_problem(store)
    ring = licenses.StoreKeyRing(store)
    kid = ring.current_index()
    try:
        token = licenses.issue_license(
            ring,
            subject=subject,
            expires=expires,
            features=features,
            offline=offline,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    security_log.info(
        "license issued for subject %r with key %d, expires %s, %s",
        subject,
        kid,
        iso_time(expires * 1000),
        "offline (EdDSA)" if offline else "HMAC",
    )
    click.echo(token)


@license_group.command("verify")
@click.argument("token")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def license_verify(ctx: click.Context, token: str, as_json: bool) -> None:
    """Check a license against the retained keys; TOKEN - reads stdin.

    A valid license prints what it grants and exits 0. An invalid one
    exits 1 with one reason: malformed, bad_signature, expired,
    not_yet_valid, unknown_kid, key_retired (its key was rotated out of
    retention) or wrong_algorithm.
    """
    from torro import licenses

    if token == "-":
        token = sys.stdin.read().strip()
    store = _loaded_store(_settings())
    _stop_on_problem(store)
    try:
        found = licenses.verify_license(
            token, licenses.StoreKeyRing(store)
        )
    except licenses.LicenseError as exc:
        if not as_json:
            raise
        _print_json({
            "valid": False,
            "reason": exc.reason,
            "detail": exc.detail,
            "kid": exc.kid,
            "subject": None,
            "expires": None,
            "features": None,
            "offline": None,
        })
        ctx.exit(1)
    expires = iso_time(found.expires * 1000)
    if as_json:
        _print_json({
            "valid": True,
            "reason": None,
            "detail": None,
            "kid": found.kid,
            "subject": found.subject,
            "expires": expires,
            "features": list(found.features),
            "offline": found.offline,
        })
        return
    signed = " (offline)" if found.offline else ""
    click.echo(
        f"valid: subject {found.subject}, key {found.kid}{signed}, "
        f"expires {expires}, features "
        f"{', '.join(found.features) or 'none'}"
    )


# -- shell completion ----------------------------------------------------

# Shells whose completion scripts click writes.
COMPLETION_SHELLS = ("bash", "zsh", "fish")


def _complete_shell(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[str]:
    return [name for name in COMPLETION_SHELLS if name.startswith(incomplete)]


@cli.command("completion")
@click.argument("shell", metavar="SHELL", shell_complete=_complete_shell)
def completion(shell: str) -> None:
    """Print the tab-completion script for SHELL: bash, zsh or fish.

    Load it from the shell's start-up file, for instance
    eval "$(torro completion bash)" in ~/.bashrc. The script asks torro
    itself for each completion (click's _TORRO_COMPLETE protocol), so it
    follows the installed version.
    """
    from click.shell_completion import get_completion_class

    complete = get_completion_class(shell)
    if shell not in COMPLETION_SHELLS or complete is None:
        raise click.UsageError(
            f"unknown shell {shell!r}: choose bash, zsh or fish"
        )
    click.echo(
        complete(cli, {}, "torro", "_TORRO_COMPLETE").source(), nl=False
    )


# -- entry point -------------------------------------------------------

def main(argv: list[str] | None = None) -> NoReturn:
    """Run the CLI and exit with its status; errors print one line."""
    sys.exit(_run(cli.main, argv))


def _run(entry: Callable[..., Any], argv: list[str] | None) -> int:
    try:
        result = entry(args=argv, prog_name="torro", standalone_mode=False)
    except TorroError as exc:
        _fail(str(exc))
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("torro: aborted", err=True)
        return 1
    except click.exceptions.NoArgsIsHelpError as exc:
        # a group without a command: its help, as click prints it, but on
        # stdout; the exit code still says that nothing was done
        click.echo(exc.ctx.get_help())
        return exc.exit_code
    except click.ClickException as exc:
        hint = ""
        if isinstance(exc, click.UsageError) and exc.ctx is not None:
            hint = f" (see {exc.ctx.command_path} --help)"
        _fail(f"{exc.format_message()}{hint}")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        # the environment refused something (a name too long, a full
        # disk, no permission): the operator's to fix, not a bug
        system_log.error("command failed", exc_info=exc)
        _fail(os_error_message(exc))
        return 1
    except Exception as exc:
        # the traceback goes into the message, not exc_info, so that the
        # system log holds it whatever the level
        system_log.error(
            "unexpected error in the CLI: %s",
            logs.traceback_text(exc),
        )
        system_file = logs.log_file(logs.SYSTEM)
        advice = "this is a bug: please report it with this line" \
            if system_file is None else \
            f"this is a bug: please report it with the traceback in " \
            f"{system_file}"
        _fail(
            f"unexpected {type(exc).__name__}: {logs.one_line(str(exc))}; "
            f"{advice}"
        )
        return EXIT_SOFTWARE
    return result if isinstance(result, int) else 0


def _fail(message: str) -> None:
    click.echo(f"torro: error: {logs.one_line(message)}", err=True)

