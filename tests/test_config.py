"""Tests for torro.config: defaults, sources, checks and messages."""

from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings as hypothesis_settings
from hypothesis import strategies as st

from torro.config import (
    Settings,
    check_files,
    check_store_paths,
    load_pid_file,
    load_settings,
    variable_names,
)
from torro.errors import ConfigError


MASTER_KEY = "00112233445566778899aabbccddeeff" * 2


def load(**environ: str) -> Settings:
    """Load settings from ``environ`` alone, with no .env file."""
    return load_settings(environ, env_file=None)


def rejection(**environ: str) -> ConfigError:
    """Return the ConfigError that loading ``environ`` raises."""
    with pytest.raises(ConfigError) as caught:
        load(**environ)
    assert caught.value.exit_code == 2
    message = str(caught.value)
    assert message
    assert len(message.splitlines()) == 1
    assert "\n" not in message
    assert "pydantic" not in message.lower()
    assert "validation error" not in message.lower()
    return caught.value


def assert_names(error: ConfigError, variable: str, value: str) -> None:
    """Check that ``error`` names ``variable`` and the bad ``value``."""
    message = str(error)
    assert variable in message
    assert value in message


def test_defaults() -> None:
    settings = load()

    assert settings.sleep_interval_ms == 300_000
    assert settings.rotation_interval_ms == 3_600_000
    assert settings.storage_path == Path("keys")
    assert settings.history_path is None
    assert settings.history_dir == Path("keys") / "history"
    assert settings.key_length == 32
    assert settings.algorithm == "sha256"
    assert settings.derivation_rounds == 10_000
    assert settings.max_history == 100
    assert settings.validation_enabled is True
    assert settings.integrity_check is True
    assert settings.log_level == "info"
    assert settings.log_dir == Path("logs")
    assert settings.pid_file == Path("torro-daemon.pid")
    assert settings.encryption is True
    assert settings.master_key is None
    assert settings.master_key_file is None


def test_malformed_master_key_is_a_configuration_error() -> None:
    for text in ("00" * 31, "00" * 33, "not a key", MASTER_KEY[:-1] + "g"):
        error = rejection(KEY_DAEMON_MASTER_KEY=text)

        assert error.exit_code == 2
        assert str(error) == (
            "KEY_DAEMON_MASTER_KEY is not a 32-byte master key: give 64 hex "
            "characters or the base64 of 32 bytes (openssl rand -hex 32)"
        )


def test_variable_names_in_documentation_order() -> None:
    assert variable_names() == [
        "KEY_DAEMON_SLEEP_INTERVAL",
        "KEY_DAEMON_ROTATION_INTERVAL",
        "KEY_STORAGE_PATH",
        "KEY_HISTORY_PATH",
        "KEY_DAEMON_KEY_LENGTH",
        "KEY_DAEMON_ALGORITHM",
        "KEY_DAEMON_DERIVATION_ROUNDS",
        "KEY_DAEMON_MAX_HISTORY",
        "KEY_DAEMON_VALIDATION_ENABLED",
        "KEY_DAEMON_INTEGRITY_CHECK",
        "KEY_DAEMON_LOG_LEVEL",
        "KEY_DAEMON_LOG_FORMAT",
        "KEY_DAEMON_LOG_DIR",
        "KEY_DAEMON_PID_FILE",
        "KEY_DAEMON_ENCRYPTION",
        "KEY_DAEMON_MASTER_KEY",
        "KEY_DAEMON_MASTER_KEY_FILE",
        "KEY_DAEMON_API",
        "KEY_DAEMON_HOST",
        "KEY_DAEMON_PORT",
        "KEY_DAEMON_TLS_CERT",
        "KEY_DAEMON_TLS_KEY",
        "KEY_DAEMON_ADMIN_TOKENS",
        "KEY_DAEMON_READ_TOKENS",
        "KEY_DAEMON_ADMIN_TOKEN_FILE",
        "KEY_DAEMON_RATE_LIMIT",
    ]


def test_environment_overrides_every_default(tmp_path: Path) -> None:
    settings = load(
        KEY_DAEMON_SLEEP_INTERVAL="1000",
        KEY_DAEMON_ROTATION_INTERVAL="60000",
        KEY_STORAGE_PATH=str(tmp_path / "store"),
        KEY_HISTORY_PATH=str(tmp_path / "old"),
        KEY_DAEMON_KEY_LENGTH="64",
        KEY_DAEMON_ALGORITHM="SHA512",
        KEY_DAEMON_DERIVATION_ROUNDS="1000",
        KEY_DAEMON_MAX_HISTORY="1",
        KEY_DAEMON_VALIDATION_ENABLED="no",
        KEY_DAEMON_INTEGRITY_CHECK="0",
        KEY_DAEMON_LOG_LEVEL="DEBUG",
        KEY_DAEMON_LOG_DIR=str(tmp_path / "logs"),
        KEY_DAEMON_PID_FILE=str(tmp_path / "torro.pid"),
        KEY_DAEMON_ENCRYPTION="false",
        KEY_DAEMON_MASTER_KEY_FILE=str(tmp_path / "master.key"),
    )

    assert settings.sleep_interval_ms == 1000
    assert settings.rotation_interval_ms == 60_000
    assert settings.storage_path == tmp_path / "store"
    assert settings.history_dir == tmp_path / "old"
    assert settings.key_length == 64
    assert settings.algorithm == "sha512"
    assert settings.derivation_rounds == 1000
    assert settings.max_history == 1
    assert settings.validation_enabled is False
    assert settings.integrity_check is False
    assert settings.log_level == "debug"
    assert settings.log_dir == tmp_path / "logs"
    assert settings.pid_file == tmp_path / "torro.pid"
    assert settings.encryption is False
    assert settings.master_key_file == tmp_path / "master.key"


def test_master_key_is_kept_secret() -> None:
    settings = load(KEY_DAEMON_MASTER_KEY=MASTER_KEY)

    assert settings.master_key is not None
    assert settings.master_key.get_secret_value() == MASTER_KEY
    assert MASTER_KEY not in repr(settings)
    assert MASTER_KEY not in str(settings)


def test_history_dir_follows_storage_path() -> None:
    settings = load(KEY_STORAGE_PATH="/srv/torro")

    assert settings.history_dir == Path("/srv/torro/history")


@pytest.mark.parametrize(
    ("variable", "field"),
    [
        ("KEY_HISTORY_PATH", "history_path"),
        ("KEY_DAEMON_MASTER_KEY", "master_key"),
        ("KEY_DAEMON_MASTER_KEY_FILE", "master_key_file"),
    ],
)
def test_empty_optional_value_means_unset(variable: str, field: str) -> None:
    settings = load(**{variable: ""})

    assert getattr(settings, field) is None


def test_warning_is_an_alias_of_warn() -> None:
    assert load(KEY_DAEMON_LOG_LEVEL="Warning").log_level == "warn"
    assert load(KEY_DAEMON_LOG_LEVEL="warn").log_level == "warn"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        (" True ", True),
        ("1", True),
        ("yes", True),
        ("YES", True),
        ("false", False),
        ("False", False),
        ("\tfalse\n", False),
        ("0", False),
        ("no", False),
        ("NO", False),
    ],
)
def test_boolean_accepted_forms(text: str, expected: bool) -> None:
    settings = load(
        KEY_DAEMON_VALIDATION_ENABLED=text,
        KEY_DAEMON_INTEGRITY_CHECK=text,
        KEY_DAEMON_ENCRYPTION=text,
    )

    assert settings.validation_enabled is expected
    assert settings.integrity_check is expected
    assert settings.encryption is expected


@pytest.mark.parametrize(
    "text",
    ["on", "off", "t", "f", "y", "n", "", " ", "2", "-1", "truthy", "nope"],
)
@pytest.mark.parametrize(
    "variable",
    [
        "KEY_DAEMON_VALIDATION_ENABLED",
        "KEY_DAEMON_INTEGRITY_CHECK",
        "KEY_DAEMON_ENCRYPTION",
    ],
)
def test_boolean_rejected_forms(variable: str, text: str) -> None:
    error = rejection(**{variable: text})

    assert_names(error, variable, text)
    assert "true" in str(error)


@pytest.mark.parametrize(
    "variable",
    ["KEY_DAEMON_SLEEP_INTERVAL", "KEY_DAEMON_ROTATION_INTERVAL"],
)
@pytest.mark.parametrize("text", ["soon", "1.5", "1e3", "", "0", "-5"])
def test_interval_rejected(variable: str, text: str) -> None:
    error = rejection(**{variable: text})

    assert_names(error, variable, text)
    assert "greater than 0" in str(error)


def test_sleep_interval_longer_than_rotation_rejected() -> None:
    error = rejection(
        KEY_DAEMON_SLEEP_INTERVAL="7200000",
        KEY_DAEMON_ROTATION_INTERVAL="3600000",
    )

    assert_names(error, "KEY_DAEMON_SLEEP_INTERVAL", "7200000")
    assert "KEY_DAEMON_ROTATION_INTERVAL" in str(error)


def test_sleep_interval_equal_to_rotation_accepted() -> None:
    settings = load(
        KEY_DAEMON_SLEEP_INTERVAL="60000",
        KEY_DAEMON_ROTATION_INTERVAL="60000",
    )

    assert settings.sleep_interval_ms == settings.rotation_interval_ms


def test_key_length_message_matches_documentation() -> None:
    error = rejection(KEY_DAEMON_KEY_LENGTH="8")

    assert str(error) == (
        "KEY_DAEMON_KEY_LENGTH=8 is out of range: "
        "use a whole number of bytes from 16 to 1024"
    )


@pytest.mark.parametrize(
    ("variable", "text"),
    [
        ("KEY_DAEMON_KEY_LENGTH", "15"),
        ("KEY_DAEMON_KEY_LENGTH", "1025"),
        ("KEY_DAEMON_KEY_LENGTH", "1.5"),
        ("KEY_DAEMON_KEY_LENGTH", ""),
        ("KEY_DAEMON_KEY_LENGTH", "thirty-two"),
        ("KEY_DAEMON_DERIVATION_ROUNDS", "999"),
        ("KEY_DAEMON_DERIVATION_ROUNDS", "1e4"),
        ("KEY_DAEMON_DERIVATION_ROUNDS", ""),
        ("KEY_DAEMON_MAX_HISTORY", "0"),
        ("KEY_DAEMON_MAX_HISTORY", "2.0"),
        ("KEY_DAEMON_MAX_HISTORY", ""),
    ],
)
def test_whole_number_rejected(variable: str, text: str) -> None:
    error = rejection(**{variable: text})

    assert_names(error, variable, text)
    assert "use a whole number" in str(error)


@pytest.mark.parametrize(
    ("variable", "low", "high"),
    [
        ("KEY_DAEMON_KEY_LENGTH", "16", "1024"),
        ("KEY_DAEMON_DERIVATION_ROUNDS", "1000", "10000000"),
        ("KEY_DAEMON_MAX_HISTORY", "1", None),
    ],
)
def test_whole_number_bounds_accepted(
    variable: str,
    low: str,
    high: str | None,
) -> None:
    assert variable in load(**{variable: low}).describe()
    assert load(**{variable: f" {low} "}).describe()[variable] == low
    if high is not None:
        assert load(**{variable: high}).describe()[variable] == high


@pytest.mark.parametrize(
    "text",
    [
        "99999999999999999999",  # OverflowError in PBKDF2
        "4294967296",  # "iteration value is too great"
        "2147483648",  # accepted, then hours per rotation
        "10000001",
    ],
)
def test_derivation_rounds_beyond_ten_million_rejected(text: str) -> None:
    error = rejection(KEY_DAEMON_DERIVATION_ROUNDS=text)

    assert str(error) == (
        f"KEY_DAEMON_DERIVATION_ROUNDS={text} is out of range: use a whole "
        "number of rounds from 1000 to 10000000"
    )


@pytest.mark.parametrize(
    "text",
    [
        "1000000000000000",  # "year 33715 is out of range" in status
        "10000000000000",  # "timestamp out of range for platform time_t"
        "315360000001",
    ],
)
def test_interval_beyond_ten_years_rejected(text: str) -> None:
    # both as long, so that the bound refuses it, not the comparison
    environ = {
        "KEY_DAEMON_SLEEP_INTERVAL": text,
        "KEY_DAEMON_ROTATION_INTERVAL": text,
    }

    error = rejection(**environ)

    assert str(error) == (
        f"KEY_DAEMON_SLEEP_INTERVAL={text} is out of range: use a whole "
        "number of milliseconds greater than 0 and at most 315360000000 "
        "(10 years)"
    )
    environ["KEY_DAEMON_SLEEP_INTERVAL"] = "1000"
    assert str(rejection(**environ)).startswith(
        f"KEY_DAEMON_ROTATION_INTERVAL={text} is out of range: "
    )


def test_ten_year_intervals_accepted() -> None:
    settings = load(
        KEY_DAEMON_SLEEP_INTERVAL="315360000000",
        KEY_DAEMON_ROTATION_INTERVAL="315360000000",
    )

    assert settings.sleep_interval_ms == 315_360_000_000
    assert settings.rotation_interval_ms == 315_360_000_000


@pytest.mark.parametrize("text", ["md5", "sha1", "sha-256", ""])
def test_algorithm_rejected(text: str) -> None:
    error = rejection(KEY_DAEMON_ALGORITHM=text)

    assert_names(error, "KEY_DAEMON_ALGORITHM", text)
    assert "sha384" in str(error)


@pytest.mark.parametrize("text", ["sha256", "SHA384", "Sha512"])
def test_algorithm_accepted_lower_case(text: str) -> None:
    assert load(KEY_DAEMON_ALGORITHM=text).algorithm == text.lower()


@pytest.mark.parametrize("text", ["verbose", "critical", "trace", ""])
def test_log_level_rejected(text: str) -> None:
    error = rejection(KEY_DAEMON_LOG_LEVEL=text)

    assert_names(error, "KEY_DAEMON_LOG_LEVEL", text)
    assert "debug, info, warn or error" in str(error)


@pytest.mark.parametrize(
    "variable",
    ["KEY_STORAGE_PATH", "KEY_DAEMON_LOG_DIR", "KEY_DAEMON_PID_FILE"],
)
def test_required_path_empty_rejected(variable: str) -> None:
    error = rejection(**{variable: ""})

    assert variable in str(error)
    assert "empty" in str(error)


@pytest.mark.parametrize(
    "variable",
    ["KEY_STORAGE_PATH", "KEY_HISTORY_PATH"],
)
@pytest.mark.parametrize(
    ("text", "expected"),
    [(".", "work"), ("..", ""), ("a/b/..", "work/a"), ("a/b", None)],
)
def test_store_directory_without_a_name_is_made_absolute(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    text: str,
    expected: str | None,
) -> None:
    # ".": "PosixPath('.') has an empty name" when the store builds
    # <name>.staging beside it
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)

    path = load(**{variable: text}).describe()[variable]

    if expected is None:
        assert path == text
    else:
        assert path == str(tmp_path.resolve() / expected)


@pytest.mark.parametrize(
    "variable",
    ["KEY_STORAGE_PATH", "KEY_HISTORY_PATH"],
)
@pytest.mark.parametrize("text", ["/", "/..", "/tmp/.."])
def test_root_directory_as_store_rejected(variable: str, text: str) -> None:
    error = rejection(**{variable: text})

    assert str(error) == (
        f"{variable}={text} is the root directory: use a directory of its "
        "own"
    )


def test_load_pid_file_ignores_other_bad_settings(tmp_path: Path) -> None:
    # a bad KEY_DAEMON_SLEEP_INTERVAL kept `torro daemon stop` from
    # stopping a running daemon
    env_file = tmp_path / ".env"
    env_file.write_text(
        "KEY_DAEMON_PID_FILE=run/torro.pid\nKEY_DAEMON_KEY_LENGTH=8\n"
    )
    environ = {"KEY_DAEMON_SLEEP_INTERVAL": "abc"}

    assert load_pid_file(environ, env_file) == Path("run/torro.pid")
    assert load_pid_file({}, None) == Path("torro-daemon.pid")
    assert load_pid_file(
        {"KEY_DAEMON_PID_FILE": "env.pid"}, env_file
    ) == Path("env.pid")


def test_load_pid_file_checks_its_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_pid_file({"KEY_DAEMON_PID_FILE": " "}, None)

    assert caught.value.exit_code == 2
    assert str(caught.value) == (
        "KEY_DAEMON_PID_FILE=' ' is empty: use the path of a file"
    )


# -- checks against the disk ---------------------------------------------

@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Return an empty working directory holding a regular file, afile."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "afile").write_text("")
    return work


def disk_rejection(**environ: str) -> str:
    """Return the message of the ConfigError check_files raises."""
    with pytest.raises(ConfigError) as caught:
        check_files(load(**environ))
    assert caught.value.exit_code == 2
    message = str(caught.value)
    assert len(message.splitlines()) == 1
    return message


def test_checks_against_the_disk_create_nothing(work: Path) -> None:
    key_file = work.parent / "master.key"
    key_file.write_text(MASTER_KEY + "\n")
    settings = load(
        KEY_STORAGE_PATH="a/keys",
        KEY_HISTORY_PATH="b/history",
        KEY_DAEMON_LOG_DIR="c/logs",
        KEY_DAEMON_PID_FILE="d/torro.pid",
        KEY_DAEMON_MASTER_KEY_FILE=str(key_file),
    )

    check_store_paths(settings)
    check_files(settings)

    assert sorted(p.name for p in work.iterdir()) == ["afile"]


@pytest.mark.parametrize(
    ("variable", "advice"),
    [
        ("KEY_STORAGE_PATH", "point it at a directory"),
        ("KEY_HISTORY_PATH", "point it at a directory"),
        ("KEY_DAEMON_LOG_DIR", "point it at a directory"),
        ("KEY_DAEMON_PID_FILE", "point it at a file in a directory"),
    ],
)
def test_path_under_a_regular_file_is_refused(
    work: Path, variable: str, advice: str
) -> None:
    # KEY_STORAGE_PATH=afile/sub said "no master key for the key store
    # afile/sub: it holds keys but .../afile/sub.master-key does not exist"
    message = disk_rejection(**{variable: "afile/sub"})

    assert message.startswith(
        f"{variable}=afile/sub is inside afile, which is not a directory: "
        f"{advice} ("
    )


@pytest.mark.parametrize("text", ["afile", "/dev/null"])
def test_store_path_that_is_a_file_is_refused(
    work: Path, text: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        check_store_paths(load(KEY_STORAGE_PATH=text))

    assert str(caught.value) == (
        f"KEY_STORAGE_PATH={text} is not a directory: point it at a "
        "directory (it is created if missing)"
    )


@pytest.mark.parametrize(
    ("environ", "store"),
    [
        ({"KEY_DAEMON_MASTER_KEY_FILE": "keys/mk"}, "the key store keys"),
        (
            {"KEY_DAEMON_MASTER_KEY_FILE": "other/../keys/deep/mk"},
            "the key store keys",
        ),
        (
            {"KEY_DAEMON_MASTER_KEY_FILE": "link/mk"},
            "the key store keys",
        ),
        (
            {
                "KEY_STORAGE_PATH": "store",
                "KEY_DAEMON_MASTER_KEY_FILE": "store",
            },
            "the key store store",
        ),
        (
            {
                "KEY_HISTORY_PATH": "hist",
                "KEY_DAEMON_MASTER_KEY_FILE": "hist/mk",
            },
            "the history directory hist",
        ),
    ],
)
def test_master_key_file_inside_the_key_store_is_refused(
    work: Path, environ: dict[str, str], store: str
) -> None:
    # a copy of the store alone opened its keys
    (work / "keys").mkdir()
    (work / "link").symlink_to("keys")
    value = environ["KEY_DAEMON_MASTER_KEY_FILE"]

    with pytest.raises(ConfigError) as caught:
        check_store_paths(load(**environ))

    assert caught.value.exit_code == 2
    assert str(caught.value) == (
        f"KEY_DAEMON_MASTER_KEY_FILE={value} is inside {store}: keep the "
        "master key outside it, so a copy of the store cannot open the keys"
    )


@pytest.mark.parametrize("text", ["keys.master-key", "keys2/mk", "../mk"])
def test_master_key_file_beside_the_key_store_is_accepted(
    work: Path, text: str
) -> None:
    check_store_paths(load(KEY_DAEMON_MASTER_KEY_FILE=text))


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (None, "does not exist"),
        (lambda path: path.mkdir(), "is not a regular file"),
        (lambda path: path.write_text("0" * 5000), "is larger than 4096"),
        (lambda path: path.write_text("not a key\n"), "must hold exactly"),
    ],
)
def test_master_key_file_problem_is_a_configuration_error(
    work: Path, make: Callable[[Path], object] | None, reason: str
) -> None:
    # torro config check exited 1 for it, not 2 as for any bad setting
    if make is not None:
        make(work / "master.key")

    message = disk_rejection(KEY_DAEMON_MASTER_KEY_FILE="master.key")

    assert message.startswith(f"master key file master.key {reason}")


def test_value_with_line_break_stays_on_one_line() -> None:
    error = rejection(KEY_DAEMON_KEY_LENGTH="32\nKEY_DAEMON_OTHER=1 x")

    assert "KEY_DAEMON_KEY_LENGTH=" in str(error)
    assert "\\n" in str(error)


def test_long_value_is_cut_short() -> None:
    error = rejection(KEY_DAEMON_ALGORITHM="x" * 10_000)

    assert len(str(error)) < 300


def test_master_key_and_file_both_set_rejected(tmp_path: Path) -> None:
    error = rejection(
        KEY_DAEMON_MASTER_KEY=MASTER_KEY,
        KEY_DAEMON_MASTER_KEY_FILE=str(tmp_path / "master.key"),
    )

    assert "KEY_DAEMON_MASTER_KEY" in str(error)
    assert "KEY_DAEMON_MASTER_KEY_FILE" in str(error)
    assert "only one" in str(error)
    assert MASTER_KEY not in str(error)


def test_first_bad_value_in_table_order_is_reported() -> None:
    error = rejection(
        KEY_DAEMON_LOG_LEVEL="loud",
        KEY_DAEMON_KEY_LENGTH="8",
        KEY_DAEMON_ENCRYPTION="maybe",
    )

    assert "KEY_DAEMON_KEY_LENGTH=8" in str(error)
    assert "KEY_DAEMON_LOG_LEVEL" not in str(error)


def test_master_key_never_in_any_message() -> None:
    for bad in (
        {"KEY_DAEMON_KEY_LENGTH": "8"},
        {"KEY_DAEMON_SLEEP_INTERVAL": "99999999"},
        {"KEY_DAEMON_MASTER_KEY_FILE": "/etc/torro/master.key"},
    ):
        error = rejection(KEY_DAEMON_MASTER_KEY=MASTER_KEY, **bad)
        assert MASTER_KEY not in str(error)
        assert error.__context__ is None
        assert error.__cause__ is None


def test_unknown_variables_ignored(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        "KEY_DAEMON_FUTURE_SETTING=abc,def\nSOMETHING_ELSE=1\n"
    )

    settings = load_settings(
        {
            "KEY_DAEMON_NOT_YET": "true",
            "KEY_DAEMON_COLOUR": "not a colour",
            "PATH": "/usr/bin",
        }
    )

    assert settings == load()


def test_env_file_is_read(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        "# torro settings\n"
        "KEY_DAEMON_KEY_LENGTH=48\n"
        "export KEY_DAEMON_ALGORITHM='sha384'\n"
        'KEY_DAEMON_LOG_LEVEL="error"  # quiet\n'
        "\n"
    )

    settings = load_settings({})

    assert settings.key_length == 48
    assert settings.algorithm == "sha384"
    assert settings.log_level == "error"


def test_environment_beats_env_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        "KEY_DAEMON_KEY_LENGTH=48\nKEY_DAEMON_MAX_HISTORY=7\n"
    )

    settings = load_settings({"KEY_DAEMON_KEY_LENGTH": "64"})

    assert settings.key_length == 64
    assert settings.max_history == 7


def test_os_environ_used_by_default(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KEY_DAEMON_MAX_HISTORY", "5")

    assert load_settings().max_history == 5


def test_env_file_none_reads_no_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("KEY_DAEMON_KEY_LENGTH=48\n")

    assert load_settings({}, env_file=None).key_length == 32


def test_missing_env_file_is_fine(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)

    assert load_settings({}) == load()


def test_bad_value_in_env_file_rejected(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("KEY_DAEMON_ENCRYPTION=on\n")

    with pytest.raises(ConfigError) as caught:
        load_settings({})

    assert_names(caught.value, "KEY_DAEMON_ENCRYPTION", "on")


def test_unparsable_env_file_rejected(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        f"KEY_DAEMON_KEY_LENGTH=48\nKEY_DAEMON_MASTER_KEY=\"{MASTER_KEY}\n"
    )

    with pytest.raises(ConfigError) as caught:
        load_settings({})

    message = str(caught.value)
    assert caught.value.exit_code == 2
    assert ".env" in message
    assert "line 2" in message
    assert MASTER_KEY not in message
    assert len(message.splitlines()) == 1


def test_unreadable_env_file_rejected(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").mkdir()

    with pytest.raises(ConfigError) as caught:
        load_settings({})

    assert ".env" in str(caught.value)


def test_env_file_not_utf8_rejected(tmp_path: Path) -> None:
    env_file = tmp_path / "torro.env"
    env_file.write_bytes(b"KEY_DAEMON_KEY_LENGTH=\xff\xfe\n")

    with pytest.raises(ConfigError) as caught:
        load_settings({}, env_file=env_file)

    assert str(env_file) in str(caught.value)


def test_settings_are_frozen() -> None:
    settings = load()

    with pytest.raises(Exception):
        settings.key_length = 64  # type: ignore[misc]
    assert settings.key_length == 32


def test_describe_shows_defaults() -> None:
    described = load().describe()

    assert list(described) == variable_names()
    assert described["KEY_DAEMON_SLEEP_INTERVAL"] == "300000"
    assert described["KEY_HISTORY_PATH"] == str(Path("keys") / "history")
    assert described["KEY_DAEMON_VALIDATION_ENABLED"] == "true"
    assert described["KEY_DAEMON_MASTER_KEY"] == "(not set)"
    assert described["KEY_DAEMON_MASTER_KEY_FILE"] == "(not set)"
    assert all(isinstance(value, str) for value in described.values())


def test_describe_redacts_master_key() -> None:
    described = load(
        KEY_DAEMON_MASTER_KEY=MASTER_KEY,
        KEY_DAEMON_ENCRYPTION="no",
    ).describe()

    assert described["KEY_DAEMON_MASTER_KEY"] == "(set, redacted)"
    assert described["KEY_DAEMON_ENCRYPTION"] == "false"
    assert MASTER_KEY not in repr(described)


def test_reload_differences_names_changed_variables() -> None:
    before = load(KEY_DAEMON_MASTER_KEY=MASTER_KEY)
    after = load(
        KEY_DAEMON_MASTER_KEY=MASTER_KEY[::-1],
        KEY_DAEMON_LOG_LEVEL="debug",
        KEY_STORAGE_PATH="/srv/torro",
    )

    changed = before.reload_differences(after)

    assert changed == [
        "KEY_STORAGE_PATH",
        "KEY_HISTORY_PATH",
        "KEY_DAEMON_LOG_LEVEL",
        "KEY_DAEMON_MASTER_KEY",
    ]
    assert before.reload_differences(load(**{})) == ["KEY_DAEMON_MASTER_KEY"]
    assert load().reload_differences(load()) == []


def outcome_or_error(variable: str, text: str) -> Settings | None:
    """Load ``text`` as ``variable``; None if it raised ConfigError.

    Any other exception fails the test.
    """
    try:
        return load(**{variable: text})
    except ConfigError as error:
        assert error.exit_code == 2
        assert variable in str(error)
        assert len(str(error).splitlines()) == 1
        return None


def whole_number_text() -> st.SearchStrategy[str]:
    """Return a strategy of text that is often, not always, a number."""
    return st.one_of(
        st.text(),
        st.integers(min_value=-10**6, max_value=10**8).map(str),
        st.tuples(
            st.sampled_from(["", " ", "\t", "+", "-", "0"]),
            st.integers(min_value=0, max_value=5000).map(str),
            st.sampled_from(["", " ", "\n", ".0", "x"]),
        ).map("".join),
    )


@hypothesis_settings(max_examples=300)
@given(whole_number_text())
def test_key_length_property(text: str) -> None:
    settings = outcome_or_error("KEY_DAEMON_KEY_LENGTH", text)

    if settings is not None:
        assert 16 <= settings.key_length <= 1024
        assert settings.key_length == int(text.strip())


@hypothesis_settings(max_examples=300)
@given(whole_number_text())
def test_sleep_interval_property(text: str) -> None:
    settings = outcome_or_error("KEY_DAEMON_SLEEP_INTERVAL", text)

    if settings is not None:
        assert 0 < settings.sleep_interval_ms <= 3_600_000
        assert settings.sleep_interval_ms == int(text.strip())


@hypothesis_settings(max_examples=300)
@given(
    st.one_of(
        st.text(),
        st.sampled_from(["true", "false", "yes", "no", "1", "0"]).flatmap(
            lambda word: st.tuples(
                st.sampled_from(["", " ", "\t\n"]),
                st.sampled_from([word, word.upper(), word.title()]),
                st.sampled_from(["", " ", "\r\n"]),
            ).map("".join)
        ),
    )
)
def test_boolean_property(text: str) -> None:
    settings = outcome_or_error("KEY_DAEMON_INTEGRITY_CHECK", text)

    word = text.strip().lower()
    if settings is None:
        assert word not in {"true", "false", "yes", "no", "1", "0"}
    else:
        assert settings.integrity_check is (word in {"true", "yes", "1"})
        assert word in {"true", "false", "yes", "no", "1", "0"}


# the HTTP API's settings


def test_api_settings_defaults() -> None:
    settings = load()

    assert (settings.api_enabled, settings.host, settings.port) == (
        True, "127.0.0.1", 3001,
    )
    assert settings.tls_cert is None and settings.tls_key is None
    assert settings.admin_tokens is None and settings.read_tokens is None
    assert settings.rate_limit == 60


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"KEY_DAEMON_PORT": "70000"},
         "KEY_DAEMON_PORT=70000 is out of range: use a port number from 1 "
         "to 65535, or 0 for any"),
        ({"KEY_DAEMON_HOST": "a b"},
         "KEY_DAEMON_HOST='a b' is not a host to listen on: use an address "
         "such as 127.0.0.1 or 0.0.0.0"),
        ({"KEY_DAEMON_TLS_CERT": "cert.pem"},
         "KEY_DAEMON_TLS_CERT and KEY_DAEMON_TLS_KEY go together: set both "
         "for HTTPS, or neither for plain HTTP"),
        ({"KEY_DAEMON_RATE_LIMIT": "0"},
         "KEY_DAEMON_RATE_LIMIT=0 is out of range: use a whole number of "
         "requests per minute from 1 to 1000000"),
        ({"KEY_DAEMON_API": "maybe"},
         "KEY_DAEMON_API=maybe is not a boolean: use true, false, yes, no, "
         "1 or 0"),
    ],
)
def test_bad_api_settings_are_one_line(
    environ: dict[str, str], message: str
) -> None:
    assert str(rejection(**environ)) == message


def test_short_token_is_refused_without_showing_it() -> None:
    error = rejection(KEY_DAEMON_ADMIN_TOKENS="long-enough-token-1,short")

    assert str(error) == (
        "KEY_DAEMON_ADMIN_TOKENS holds a token shorter than 16 characters, "
        "or with spaces or characters beyond ASCII: use long random tokens "
        "(torro admin-token create)"
    )


def test_token_beyond_ascii_is_refused_without_showing_it() -> None:
    """A client sends its header in UTF-8 or Latin-1, as it likes: a token
    beyond ASCII could never match reliably."""
    error = rejection(KEY_DAEMON_READ_TOKENS="\u00e9" * 17)

    assert str(error).startswith(
        "KEY_DAEMON_READ_TOKENS holds a token shorter than 16 characters, "
    )
    assert "\u00e9" not in str(error)


def test_one_token_in_both_roles_is_refused() -> None:
    shared = "shared-token-0123456789"
    error = rejection(
        KEY_DAEMON_ADMIN_TOKENS=f"full-token-0123456789,{shared}",
        KEY_DAEMON_READ_TOKENS=shared,
    )

    assert str(error) == (
        "KEY_DAEMON_READ_TOKENS holds a token that KEY_DAEMON_ADMIN_TOKENS "
        "holds too: give each token one role"
    )


def test_tokens_are_redacted_in_describe() -> None:
    full, read = "x" * 32, "y" * 32
    described = load(
        KEY_DAEMON_ADMIN_TOKENS=full, KEY_DAEMON_READ_TOKENS=read
    ).describe()

    assert described["KEY_DAEMON_ADMIN_TOKENS"] == "(set, redacted)"
    assert described["KEY_DAEMON_READ_TOKENS"] == "(set, redacted)"
    assert full not in str(described) and read not in str(described)
