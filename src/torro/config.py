"""Daemon settings, read from the environment and a ``.env`` file.

Each setting has one environment variable, listed in the order of the
operator documentation. :func:`load_settings` reads those variables from
the environment and from a ``.env`` file in the working directory (the
environment wins), checks every value, and returns a frozen
:class:`Settings`. A bad value raises :class:`~torro.errors.ConfigError`
with one line naming the variable, the value given and what is allowed.

Variables this module does not know, such as those that later features
add, are ignored wherever they come from. Values in ``.env`` are taken
literally: ``${NAME}`` is not expanded.

Relative paths are kept as given; they are relative to the working
directory of the process that uses them. The one exception is a key store
or history directory given as ``.`` or ending in ``..``: it is made
absolute, so that it ends in a name of its own.

:func:`load_pid_file` reads and checks ``KEY_DAEMON_PID_FILE`` alone, so
that a running daemon can be stopped while another setting is bad.

Loading looks at no file but ``.env``, and at whether systemd passed the
master key as a credential. :func:`check_store_paths` and
:func:`check_files` then check the settings against what is on disk,
creating nothing: the first before a key store is opened, the second
for ``torro config check``.
"""

import difflib
import io
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dotenv.parser import parse_stream
from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from torro.errors import ConfigError, MasterKeyError
from torro.logs import LOG_FORMATS
from torro.sealing import parse_master_key, read_master_key_file


MASTER_KEY_VARIABLE = "KEY_DAEMON_MASTER_KEY"
MASTER_KEY_FILE_VARIABLE = "KEY_DAEMON_MASTER_KEY_FILE"
# The systemd credential holding the master key (LoadCredential=).
MASTER_KEY_CREDENTIAL = "master-key"

ALGORITHMS = ("sha256", "sha384", "sha512")
LOG_LEVELS = ("debug", "info", "warn", "error")

_TRUE_WORDS = frozenset({"true", "1", "yes"})
_FALSE_WORDS = frozenset({"false", "0", "no"})
_LOG_LEVEL_ALIASES = {"warning": "warn"}
_WHOLE_NUMBER = re.compile(r"[+-]?[0-9]+")

# Longest sleep or rotation interval: 10 years of 365 days. Longer ones
# overflow the clocks and dates the daemon computes with.
MAX_INTERVAL_MS = 10 * 365 * 24 * 3600 * 1000
# Most derivation rounds: each rotation then spends seconds in PBKDF2
# per digest of key length; far more would stall it for hours.
MAX_DERIVATION_ROUNDS = 10_000_000

_INTERVAL_ADVICE = (
    f"use a whole number of milliseconds greater than 0 and at most "
    f"{MAX_INTERVAL_MS} (10 years)"
)

# Lowest and highest allowed value (None: no upper bound) and the advice
# given when a whole-number setting is malformed or out of range.
_WHOLE_NUMBER_RULES: dict[str, tuple[int, int | None, str]] = {
    "sleep_interval_ms": (1, MAX_INTERVAL_MS, _INTERVAL_ADVICE),
    "rotation_interval_ms": (1, MAX_INTERVAL_MS, _INTERVAL_ADVICE),
    "key_length": (16, 1024, "use a whole number of bytes from 16 to 1024"),
    "derivation_rounds": (
        1000,
        MAX_DERIVATION_ROUNDS,
        f"use a whole number of rounds from 1000 to {MAX_DERIVATION_ROUNDS}",
    ),
    "max_history": (1, None, "use a whole number of keys, 1 or more"),
    "port": (0, 65535, "use a port number from 1 to 65535, or 0 for any"),
    "rate_limit": (
        1,
        1_000_000,
        "use a whole number of requests per minute from 1 to 1000000",
    ),
}

_PATH_KINDS = {
    "storage_path": "a directory",
    "history_path": "a directory",
    "log_dir": "a directory",
    "pid_file": "a file",
    "master_key_file": "a file",
    "tls_cert": "a file",
    "tls_key": "a file",
    "admin_token_file": "a file",
}

# Directories whose name the key store builds sibling paths from
# (<name>.staging, <name>.archive-..., <name>.master-key).
_STORE_DIRECTORIES = ("storage_path", "history_path")

# Settings whose values are secrets: never shown, never in a message.
_SECRETS = frozenset({"master_key", "admin_tokens", "read_tokens"})

# Longest part of a bad value repeated in an error message.
_SHOWN_VALUE_LIMIT = 64


class _SettingsConflict(ValueError):
    """Two valid settings that cannot be used together.

    The message is the whole line shown to the operator.
    """


class Settings(BaseSettings):
    """The effective configuration of one daemon or command.

    Build it with :func:`load_settings`. Constructing it directly takes
    field names or environment variable names, reads nothing from the
    environment, and raises pydantic's ``ValidationError`` on bad values.
    """

    model_config = SettingsConfigDict(
        frozen=True,
        extra="ignore",
        populate_by_name=True,
    )

    sleep_interval_ms: int = Field(
        300_000,
        validation_alias="KEY_DAEMON_SLEEP_INTERVAL",
    )
    rotation_interval_ms: int = Field(
        3_600_000,
        validation_alias="KEY_DAEMON_ROTATION_INTERVAL",
    )
    storage_path: Path = Field(
        Path("keys"),
        validation_alias="KEY_STORAGE_PATH",
    )
    # None: the history lives in <storage_path>/history.
    history_path: Path | None = Field(
        None,
        validation_alias="KEY_HISTORY_PATH",
    )
    key_length: int = Field(32, validation_alias="KEY_DAEMON_KEY_LENGTH")
    algorithm: str = Field("sha256", validation_alias="KEY_DAEMON_ALGORITHM")
    derivation_rounds: int = Field(
        10_000,
        validation_alias="KEY_DAEMON_DERIVATION_ROUNDS",
    )
    max_history: int = Field(100, validation_alias="KEY_DAEMON_MAX_HISTORY")
    validation_enabled: bool = Field(
        True,
        validation_alias="KEY_DAEMON_VALIDATION_ENABLED",
    )
    integrity_check: bool = Field(
        True,
        validation_alias="KEY_DAEMON_INTEGRITY_CHECK",
    )
    log_level: str = Field("info", validation_alias="KEY_DAEMON_LOG_LEVEL")
    # Lines of text, or one JSON object per line for log shippers.
    log_format: str = Field("text", validation_alias="KEY_DAEMON_LOG_FORMAT")
    log_dir: Path = Field(Path("logs"), validation_alias="KEY_DAEMON_LOG_DIR")
    pid_file: Path = Field(
        Path("torro-daemon.pid"),
        validation_alias="KEY_DAEMON_PID_FILE",
    )
    # Seal key material at rest under the master key.
    encryption: bool = Field(True, validation_alias="KEY_DAEMON_ENCRYPTION")
    # Hex or base64 text; sealing.py checks what it holds.
    master_key: SecretStr | None = Field(
        None,
        validation_alias=MASTER_KEY_VARIABLE,
    )
    master_key_file: Path | None = Field(
        None,
        validation_alias=MASTER_KEY_FILE_VARIABLE,
    )
    # The HTTP API, served by the daemon beside the rotation loop.
    api_enabled: bool = Field(True, validation_alias="KEY_DAEMON_API")
    host: str = Field("127.0.0.1", validation_alias="KEY_DAEMON_HOST")
    # 0 lets the system pick a free port (the daemon logs which).
    port: int = Field(3001, validation_alias="KEY_DAEMON_PORT")
    tls_cert: Path | None = Field(None, validation_alias="KEY_DAEMON_TLS_CERT")
    tls_key: Path | None = Field(None, validation_alias="KEY_DAEMON_TLS_KEY")
    # Comma-separated bearer tokens: full access, and read-only access.
    admin_tokens: SecretStr | None = Field(
        None,
        validation_alias="KEY_DAEMON_ADMIN_TOKENS",
    )
    read_tokens: SecretStr | None = Field(
        None,
        validation_alias="KEY_DAEMON_READ_TOKENS",
    )
    # Hashes of tokens made by `torro admin-token create`.
    admin_token_file: Path | None = Field(
        None,
        validation_alias="KEY_DAEMON_ADMIN_TOKEN_FILE",
    )
    # Requests per minute from one client address to a public endpoint.
    rate_limit: int = Field(60, validation_alias="KEY_DAEMON_RATE_LIMIT")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Take values only from the constructor.

        :func:`load_settings` gathers the environment and ``.env`` itself,
        so that it can be given another environment and can report an
        unreadable ``.env`` file.
        """
        return (init_settings,)

    @field_validator(*_WHOLE_NUMBER_RULES, mode="before")
    @classmethod
    def _check_whole_number(cls, value: Any, info: ValidationInfo) -> int:
        """Parse a whole number and check it against its bounds."""
        low, high, advice = _WHOLE_NUMBER_RULES[info.field_name]
        number = _parse_whole_number(value)
        if number is None:
            raise ValueError(f"is not a whole number: {advice}")
        if number < low or (high is not None and number > high):
            raise ValueError(f"is out of range: {advice}")
        return number

    @field_validator(
        "validation_enabled",
        "integrity_check",
        "encryption",
        "api_enabled",
        mode="before",
    )
    @classmethod
    def _check_boolean(cls, value: Any) -> bool:
        """Accept only true/false, 1/0 and yes/no, in any case."""
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            word = value.strip().lower()
            if word in _TRUE_WORDS:
                return True
            if word in _FALSE_WORDS:
                return False
        raise ValueError("is not a boolean: use true, false, yes, no, 1 or 0")

    @field_validator("algorithm", mode="before")
    @classmethod
    def _check_algorithm(cls, value: Any) -> str:
        """Accept a supported hash name in any case; store it lower-case."""
        if isinstance(value, str) and value.strip().lower() in ALGORITHMS:
            return value.strip().lower()
        raise ValueError(
            "is not a supported algorithm: use sha256, sha384 or sha512"
        )

    @field_validator("log_level", mode="before")
    @classmethod
    def _check_log_level(cls, value: Any) -> str:
        """Accept a log level in any case; store its canonical name."""
        if isinstance(value, str):
            level = value.strip().lower()
            level = _LOG_LEVEL_ALIASES.get(level, level)
            if level in LOG_LEVELS:
                return level
        raise ValueError("is not a log level: use debug, info, warn or error")

    @field_validator("log_format", mode="before")
    @classmethod
    def _check_log_format(cls, value: Any) -> str:
        """Accept a log format in any case; store it lower-case."""
        if isinstance(value, str) and value.strip().lower() in LOG_FORMATS:
            return value.strip().lower()
        raise ValueError("is not a log format: use text or json")

    @field_validator(*_PATH_KINDS, mode="before")
    @classmethod
    def _check_path(cls, value: Any, info: ValidationInfo) -> Path | None:
        """Accept a path; a blank optional path means unset."""
        kind = _PATH_KINDS[info.field_name]
        if value is None or isinstance(value, Path):
            text = None if value is None else str(value)
        elif isinstance(value, str):
            text = value
        else:
            raise ValueError(f"is not a path: use the path of {kind}")
        if text is None or not text.strip():
            if cls.model_fields[info.field_name].default is None:
                return None
            raise ValueError(f"is empty: use the path of {kind}")
        if "\0" in text:
            raise ValueError(
                f"contains a NUL character: use the path of {kind}"
            )
        path = Path(text)
        if info.field_name in _STORE_DIRECTORIES:
            path = _named_directory(path)
        return path

    @field_validator("host", mode="before")
    @classmethod
    def _check_host(cls, value: Any) -> str:
        """Accept a host name or address to listen on."""
        if isinstance(value, str) and value.strip() \
                and not any(c.isspace() or c in "/@" for c in value.strip()):
            return value.strip()
        raise ValueError(
            "is not a host to listen on: use an address such as 127.0.0.1 "
            "or 0.0.0.0"
        )

    @field_validator("admin_tokens", "read_tokens", mode="before")
    @classmethod
    def _check_tokens(cls, value: Any) -> SecretStr | None:
        """Accept comma-separated tokens of 16 characters or more."""
        if value is None:
            return None
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if not isinstance(value, str):
            raise ValueError("is not text: use comma-separated tokens")
        tokens = [token.strip() for token in value.split(",")]
        tokens = [token for token in tokens if token]
        if not tokens:
            return None
        if any(len(token) < 16 or not token.isascii()
               or not token.isprintable() or " " in token
               for token in tokens):
            raise ValueError(
                "holds a token shorter than 16 characters, or with spaces "
                "or characters beyond ASCII: use long random tokens "
                "(torro admin-token create)"
            )
        return SecretStr(",".join(tokens))

    @field_validator("master_key", mode="before")
    @classmethod
    def _check_master_key(cls, value: Any) -> SecretStr | None:
        """Wrap the master key text; blank means unset."""
        if value is None:
            return None
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if not isinstance(value, str):
            raise ValueError("is not text: use the hex or base64 master key")
        value = value.strip()
        if not value:
            return None
        try:
            parse_master_key(value, MASTER_KEY_VARIABLE)
        except MasterKeyError:
            raise ValueError(
                "is not a 32-byte master key: give 64 hex characters or "
                "the base64 of 32 bytes (openssl rand -hex 32)"
            ) from None
        return SecretStr(value)

    @model_validator(mode="after")
    def _check_combinations(self) -> "Settings":
        """Refuse settings that are valid alone but not together."""
        if self.sleep_interval_ms > self.rotation_interval_ms:
            raise _SettingsConflict(
                f"KEY_DAEMON_SLEEP_INTERVAL={self.sleep_interval_ms} is "
                f"longer than KEY_DAEMON_ROTATION_INTERVAL="
                f"{self.rotation_interval_ms}: use a sleep interval no "
                f"longer than the rotation interval"
            )
        full = _tokens(self.admin_tokens)
        if full & _tokens(self.read_tokens):
            raise _SettingsConflict(
                "KEY_DAEMON_READ_TOKENS holds a token that "
                "KEY_DAEMON_ADMIN_TOKENS holds too: give each token one "
                "role"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise _SettingsConflict(
                "KEY_DAEMON_TLS_CERT and KEY_DAEMON_TLS_KEY go together: set "
                "both for HTTPS, or neither for plain HTTP"
            )
        if self.master_key is not None and self.master_key_file is not None:
            raise _SettingsConflict(
                f"{MASTER_KEY_VARIABLE} and {MASTER_KEY_FILE_VARIABLE}="
                f"{_show_value(str(self.master_key_file))} are both set: "
                f"set only one of them"
            )
        return self

    @property
    def history_dir(self) -> Path:
        """Return the directory of key history, resolving the default."""
        if self.history_path is not None:
            return self.history_path
        return self.storage_path / "history"

    def describe(self) -> dict[str, str]:
        """Return the effective configuration, keyed by variable name.

        Values are strings as an operator would write them. The master key
        is shown only as set or not set, and ``KEY_HISTORY_PATH`` as the
        directory actually used.
        """
        described = {}
        for name, field in type(self).model_fields.items():
            value = self._effective(name)
            if isinstance(getattr(self, name), SecretStr) or (
                name in _SECRETS and value is None
            ):
                text = "(not set)" if value is None else "(set, redacted)"
            elif value is None:
                text = "(not set)"
            elif isinstance(value, bool):
                text = "true" if value else "false"
            else:
                text = str(value)
            described[str(field.validation_alias)] = text
        return described

    def reload_differences(self, other: "Settings") -> list[str]:
        """Return the names of the variables whose values differ.

        Meant for logging what a reload changed: the result holds names
        only, never values, so it is safe to log whatever changed.

        :param other: the settings to compare with, usually newly loaded.
        """
        return [
            str(field.validation_alias)
            for name, field in type(self).model_fields.items()
            if self._effective(name) != other._effective(name)
        ]

    def _effective(self, name: str) -> object:
        """Return a field's value as used, with the secret unwrapped."""
        if name == "history_path":
            return self.history_dir
        value = getattr(self, name)
        if isinstance(value, SecretStr):
            return value.get_secret_value()
        return value


def variable_names() -> list[str]:
    """Return the environment variables read, in documentation order."""
    return [
        str(field.validation_alias)
        for field in Settings.model_fields.values()
    ]


def load_settings(
    environ: Mapping[str, str] | None = None,
    env_file: Path | None = Path(".env"),
) -> Settings:
    """Read and check the settings.

    With no master key set, a master key credential from systemd is used
    as the master key file (:func:`_take_master_key_credential`).

    :param environ: the environment to read; None means ``os.environ``.
    :param env_file: a ``.env`` file, relative to the working directory at
        call time; it may be missing. None means read no file. Its values
        apply where the environment does not set the variable.
    :raises ConfigError: a value is invalid (the first in documentation
        order is reported), or the ``.env`` file cannot be read or parsed.
    """
    values = _gather(variable_names(), environ, env_file)
    _take_master_key_credential(
        values, os.environ if environ is None else environ
    )
    return _checked_settings(values)


def _take_master_key_credential(
    values: dict[str, str], environ: Mapping[str, str]
) -> None:
    """Use systemd's master key credential when no master key is set.

    A unit with ``LoadCredential=master-key:<file>`` hands the daemon a
    private copy at ``$CREDENTIALS_DIRECTORY/master-key``. When neither
    master key variable is set (in the environment or ``.env``) and that
    file exists, it becomes ``KEY_DAEMON_MASTER_KEY_FILE``, and is checked
    as that setting is, outside the key store included.
    """
    names = (MASTER_KEY_VARIABLE, MASTER_KEY_FILE_VARIABLE)
    if any(values.get(name, "").strip() for name in names):
        return
    directory = environ.get("CREDENTIALS_DIRECTORY", "")
    if not directory:
        return
    credential = os.path.join(directory, MASTER_KEY_CREDENTIAL)
    try:
        os.stat(credential)
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError:
        # there but not readable: reading it names the problem, rather
        # than a master key silently made beside the store
        pass
    values[MASTER_KEY_FILE_VARIABLE] = credential


# Prefixes of Torro's variables: another name starting with one is
# most likely a misspelt setting.
_OUR_PREFIXES = ("KEY_DAEMON_", "KEY_STORAGE_", "KEY_HISTORY_")


def unknown_variables(
    environ: Mapping[str, str] | None = None,
    env_file: Path | None = Path(".env"),
) -> list[str]:
    """Name each variable that looks like a setting but is none.

    A misspelt setting is ignored by the loading, so the default stands
    in silently: this says so, with the setting it most resembles.

    :returns: one line per such variable, in name order.
    """
    names = variable_names()
    seen = set(os.environ if environ is None else environ)
    if env_file is not None:
        try:
            seen.update(_read_env_file(env_file))
        except ConfigError:
            pass  # loading the settings reports it
    lines = []
    for name in sorted(seen):
        if not name.startswith(_OUR_PREFIXES) or name in names:
            continue
        line = f"{name} is not a setting and is ignored"
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.9)
        if close:
            line += f": did you mean {close[0]}?"
        lines.append(line)
    return lines


def load_pid_file(
    environ: Mapping[str, str] | None = None,
    env_file: Path | None = Path(".env"),
) -> Path:
    """Read and check ``KEY_DAEMON_PID_FILE`` alone.

    The value is found and checked as :func:`load_settings` does, but no
    other setting is read: a bad one does not keep an operator from
    stopping the daemon.

    :param environ: the environment to read; None means ``os.environ``.
    :param env_file: a ``.env`` file, as for :func:`load_settings`.
    :raises ConfigError: the value is invalid, or the ``.env`` file
        cannot be read or parsed.
    """
    variable = str(Settings.model_fields["pid_file"].validation_alias)
    values = _gather([variable], environ, env_file)
    return _checked_settings(values).pid_file


def check_store_paths(settings: Settings) -> None:
    """Refuse key store paths that cannot hold a key store.

    ``KEY_STORAGE_PATH`` and the history directory must each be a
    directory, or be missing with no parent that is something else; and
    ``KEY_DAEMON_MASTER_KEY_FILE`` must lie outside both, so that a copy
    of the store alone cannot open the keys. Nothing is created.

    Called before the master key is looked for, so that a file is not
    taken for a store that holds keys.

    :raises ConfigError: a path cannot be used; the message names the
        variable, its value and what to do.
    """
    _check_directory(
        "KEY_STORAGE_PATH",
        settings.storage_path,
        settings.storage_path,
        "point it at a directory (it is created if missing)",
    )
    if settings.history_path is not None:
        _check_directory(
            "KEY_HISTORY_PATH",
            settings.history_path,
            settings.history_path,
            "point it at a directory (it is created if missing)",
        )
    elif _blocking_path(settings.history_dir) is not None:
        raise ConfigError(
            f"{settings.history_dir} is not a directory: move it aside, or "
            "set KEY_HISTORY_PATH to a directory (it is created if missing)"
        )
    _check_master_key_outside_store(settings)


def check_files(settings: Settings) -> None:
    """Check every path the settings name against the disk, creating nothing.

    What :func:`check_store_paths` checks; that the log directory and the
    directory of the PID file can exist; that the TLS certificate and key
    of the API can be used; and that a configured master key file holds a
    master key.

    :raises ConfigError: a path or the master key file cannot be used;
        the message names the variable or file and what to do.
    """
    check_store_paths(settings)
    _check_directory(
        "KEY_DAEMON_LOG_DIR",
        settings.log_dir,
        settings.log_dir,
        "point it at a directory (it is created if missing)",
    )
    _check_directory(
        "KEY_DAEMON_PID_FILE",
        settings.pid_file,
        settings.pid_file.parent,
        "point it at a file in a directory (the directory is created if "
        "missing)",
    )
    if settings.api_enabled and settings.tls_cert is not None \
            and settings.tls_key is not None:
        check_tls(settings.tls_cert, settings.tls_key)
    if settings.master_key_file is not None:
        try:
            read_master_key_file(settings.master_key_file)
        except MasterKeyError as exc:
            # the file the operator configured: a bad setting, exit 2
            raise ConfigError(str(exc)) from exc


def check_tls(cert: Path, key: Path) -> None:
    """Load the TLS certificate and key once, so that a bad one is named
    before the daemon starts.

    A key protected by a passphrase is refused rather than prompted for:
    the daemon runs unattended.

    :raises ConfigError: when the pair cannot serve HTTPS.
    """
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if isinstance(exc, ssl.SSLError):
            reason = (
                "not a PEM certificate and an unencrypted key that match"
            )
        raise ConfigError(
            f"KEY_DAEMON_TLS_CERT={cert} and KEY_DAEMON_TLS_KEY={key} "
            f"cannot be used for HTTPS ({reason}): give a PEM certificate "
            "and its matching PEM private key without a passphrase"
        ) from None


def _no_passphrase() -> bytes:
    return b""


def _check_directory(
    variable: str, value: Path, directory: Path, advice: str
) -> None:
    """Refuse ``directory`` when it, or a parent, is not a directory.

    :param variable: the setting, for the message.
    :param value: its value, for the message.
    :param directory: the directory the setting needs (the value itself,
        or the directory of a file).
    :param advice: what to do, ending the message.
    """
    blocking = _blocking_path(directory)
    if blocking is None:
        return
    shown = f"{variable}={_show_value(str(value))}"
    if blocking == value:
        raise ConfigError(f"{shown} is not a directory: {advice}")
    raise ConfigError(
        f"{shown} is inside {_show_value(str(blocking))}, which is not a "
        f"directory: {advice}"
    )


def _blocking_path(directory: Path) -> Path | None:
    """Return what keeps ``directory`` from being or becoming a directory.

    The nearest of ``directory`` and its parents that exists is looked
    at: it is returned when it is not a directory. None when it is one,
    or when the disk cannot tell (no permission to look, a name too
    long): the operation that follows reports that better.
    """
    for candidate in (directory, *directory.parents):
        try:
            mode = os.stat(candidate).st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            return None
        return None if stat.S_ISDIR(mode) else candidate
    return None


def _check_master_key_outside_store(settings: Settings) -> None:
    """Refuse a master key file inside the key store or its history.

    Paths are compared resolved, so that neither a symbolic link nor
    ``..`` hides where the file is.
    """
    if settings.master_key_file is None:
        return
    stores = [("the key store", settings.storage_path)]
    if settings.history_path is not None:
        stores.append(("the history directory", settings.history_path))
    try:
        key_file = settings.master_key_file.resolve()
        resolved = [(name, path, path.resolve()) for name, path in stores]
    except (OSError, RuntimeError):
        # a symbolic link loop: reading the key file reports it
        return
    for name, path, directory in resolved:
        if key_file.is_relative_to(directory):
            raise ConfigError(
                f"{MASTER_KEY_FILE_VARIABLE}="
                f"{_show_value(str(settings.master_key_file))} is inside "
                f"{name} {_show_value(str(path))}: keep the master key "
                "outside it, so a copy of the store cannot open the keys"
            )


def _gather(
    names: list[str],
    environ: Mapping[str, str] | None,
    env_file: Path | None,
) -> dict[str, str]:
    """Return the values of ``names``; the environment beats ``.env``."""
    if environ is None:
        environ = os.environ
    values: dict[str, str] = {}
    if env_file is not None:
        from_file = _read_env_file(env_file)
        values.update((k, v) for k, v in from_file.items() if k in names)
    values.update((k, environ[k]) for k in names if k in environ)
    return values


def _checked_settings(values: dict[str, str]) -> Settings:
    """Build the settings; defaults stand in for variables not given.

    :raises ConfigError: a value is invalid.
    """
    # The message is built outside the handler so that the ConfigError
    # carries no pydantic context, which would repeat the raw values.
    try:
        return Settings(**values)
    except ValidationError as exc:
        message = _first_problem(exc, values)
    raise ConfigError(message)


def _parse_whole_number(value: Any) -> int | None:
    """Return ``value`` as an int, or None if it is not a whole number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not _WHOLE_NUMBER.fullmatch(text):
        return None
    try:
        return int(text)
    except ValueError:
        # More digits than Python converts: far beyond any bound.
        return None


def _named_directory(path: Path) -> Path:
    """Return a store directory as a path that ends in its own name.

    ``.``, ``..`` and ``a/b/..`` have no name of their own to build
    sibling paths from, so they are resolved to an absolute path; other
    paths are kept as given.

    :raises ValueError: the path is, or resolves to, the root directory.
    """
    if path.name not in ("", ".."):
        return path
    try:
        path = path.resolve()
    except (OSError, RuntimeError):
        raise ValueError(
            "cannot be resolved: use the path of a directory"
        ) from None
    if not path.name:
        raise ValueError(
            "is the root directory: use a directory of its own"
        )
    return path


def _read_env_file(path: Path) -> dict[str, str]:
    """Return the variables a ``.env`` file sets; {} if it is missing.

    :raises ConfigError: the file cannot be read or a line is malformed.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except UnicodeDecodeError:
        raise ConfigError(
            f"cannot read {path}: it is not UTF-8 text"
        ) from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"cannot read {path}: {reason}") from None

    found = {}
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            # The line is not repeated: it may hold the master key.
            raise ConfigError(
                f"cannot parse {path}: line {binding.original.line} is not "
                f"NAME=value; fix or remove that line"
            )
        if binding.key is not None and binding.value is not None:
            found[binding.key] = binding.value
    return found


def _first_problem(error: ValidationError, values: Mapping[str, str]) -> str:
    """Return one line describing the first invalid setting.

    :param error: what pydantic found wrong.
    :param values: the raw values given, keyed by variable name.
    """
    fields = Settings.model_fields
    order = {}
    for position, (name, field) in enumerate(fields.items()):
        order[name] = position
        order[str(field.validation_alias)] = position
    problem = min(
        error.errors(),
        key=lambda p: order.get(p["loc"][0], len(order))
        if p["loc"]
        else len(order),
    )

    cause = problem.get("ctx", {}).get("error")
    if isinstance(cause, _SettingsConflict):
        return str(cause)
    reason = str(cause) if isinstance(cause, ValueError) else "is not valid"
    if not problem["loc"]:
        return f"the settings are not valid: {reason}"

    location = problem["loc"][0]
    variable = next(
        (
            str(field.validation_alias)
            for name, field in fields.items()
            if location in (name, field.validation_alias)
        ),
        str(location),
    )
    secret_variables = {
        str(fields[name].validation_alias) for name in _SECRETS
    }
    if variable in secret_variables:
        return f"{variable} {reason}"
    given = values.get(variable, problem.get("input"))
    return f"{variable}={_show_value(given)} {reason}"


def _show_value(value: object) -> str:
    """Return a bad value as it can appear on one line of a message.

    Plain text is shown as is; empty text, or text with blanks or
    unprintable characters, is quoted with escapes. Long text is cut
    short.
    """
    if not isinstance(value, str):
        return repr(value)
    suffix = ""
    if len(value) > _SHOWN_VALUE_LIMIT:
        value = value[:_SHOWN_VALUE_LIMIT]
        suffix = "..."
    plain = value.isprintable() and not any(c.isspace() for c in value)
    if value and plain:
        return value + suffix
    return repr(value) + suffix


def _tokens(value: SecretStr | None) -> set[str]:
    """Return the tokens of a comma-separated token setting."""
    if value is None:
        return set()
    return set(value.get_secret_value().split(","))
