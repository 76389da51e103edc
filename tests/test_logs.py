"""Tests for torro.logs: files, modes, line format and reopening."""

import logging
import os
import re
import stat
from pathlib import Path

import pytest

from torro import logs
from torro.errors import ConfigError


# each test removes the handlers it installed and the secrets it added
pytestmark = pytest.mark.usefixtures("clean_logging")

LINE = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z "
    r"(DEBUG|INFO|WARN|ERROR) .*"
)


def mode_of(path: Path) -> int:
    """Return the permission bits of ``path``."""
    return stat.S_IMODE(path.stat().st_mode)


def lines_of(path: Path) -> list[str]:
    """Return the lines of a log file."""
    return path.read_text(encoding="utf-8").splitlines()


def test_files_and_modes_under_open_umask(tmp_path: Path) -> None:
    log_dir = tmp_path / "var" / "logs"

    previous = os.umask(0)
    try:
        logs.configure_logging(log_dir, "info")
    finally:
        os.umask(previous)

    assert mode_of(log_dir) == 0o700
    assert sorted(p.name for p in log_dir.iterdir()) == [
        "key-daemon.log",
        "security.log",
        "system.log",
    ]
    for path in log_dir.iterdir():
        assert mode_of(path) == 0o600


def test_existing_directory_mode_left_alone(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    os.chmod(log_dir, 0o750)

    logs.configure_logging(log_dir, "info")

    assert mode_of(log_dir) == 0o750


def test_existing_log_files_made_private(tmp_path: Path) -> None:
    # files made 0644 by an earlier tool or a logrotate were kept as is
    for name in logs.CHANNEL_FILES.values():
        (tmp_path / name).write_text("old line\n")
        (tmp_path / name).chmod(0o644)

    logs.configure_logging(tmp_path, "info")

    for name in logs.CHANNEL_FILES.values():
        assert mode_of(tmp_path / name) == 0o600
        assert lines_of(tmp_path / name) == ["old line"]


def test_file_recreated_0644_made_private_on_reopen(tmp_path: Path) -> None:
    logs.configure_logging(tmp_path, "info")
    log_file = tmp_path / "system.log"
    os.rename(log_file, tmp_path / "system.log.1")
    # as logrotate's "create 0644" leaves it
    log_file.touch()
    log_file.chmod(0o644)

    logs.reopen_logs()

    assert mode_of(log_file) == 0o600


def test_log_dir_writable_by_others_kept_with_a_warning(
    tmp_path: Path,
) -> None:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    os.chmod(log_dir, 0o777)

    logs.configure_logging(log_dir, "warn")

    assert mode_of(log_dir) == 0o777
    (line,) = lines_of(log_dir / "system.log")
    assert LINE.fullmatch(line)
    assert line.split(" ", 2)[1:] == [
        "WARN",
        (
            f"log directory {log_dir} is writable by group or others "
            "(mode 777): chmod 0700 it, or anyone allowed may replace the "
            "log files"
        ),
    ]


def test_log_dir_private_to_writes_not_warned(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    os.chmod(log_dir, 0o755)

    logs.configure_logging(log_dir, "debug")

    assert lines_of(log_dir / "system.log") == []


def test_log_file_names_each_channel_file(tmp_path: Path) -> None:
    assert logs.log_file(logs.SYSTEM) is None

    logs.configure_logging(tmp_path, "info")

    for channel, name in logs.CHANNEL_FILES.items():
        assert logs.log_file(channel) == tmp_path / name
    logs.reset_logging()
    assert logs.log_file(logs.SYSTEM) is None


def test_log_dir_that_is_a_file_rejected(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    log_dir.write_text("")

    with pytest.raises(ConfigError) as caught:
        logs.configure_logging(log_dir, "info")

    assert str(log_dir) in str(caught.value)


def test_each_channel_writes_its_own_file(tmp_path: Path) -> None:
    logs.configure_logging(tmp_path, "info")

    logging.getLogger(logs.ROTATION).info("rotated ring %s", "license")
    logging.getLogger(logs.SECURITY).info("key revealed")
    logging.getLogger(logs.SYSTEM).info("daemon started")

    assert lines_of(tmp_path / "key-daemon.log")[0].endswith(
        " INFO rotated ring license"
    )
    assert lines_of(tmp_path / "security.log")[0].endswith(
        " INFO key revealed"
    )
    assert lines_of(tmp_path / "system.log")[0].endswith(
        " INFO daemon started"
    )


def test_line_format(tmp_path: Path) -> None:
    logs.configure_logging(tmp_path, "info")

    logging.getLogger(logs.SYSTEM).error("cannot bind port %d", 8080)

    (line,) = lines_of(tmp_path / "system.log")
    assert LINE.fullmatch(line)
    assert line.endswith(" ERROR cannot bind port 8080")


def test_level_filtering(tmp_path: Path) -> None:
    logs.configure_logging(tmp_path, "info")
    logger = logging.getLogger(logs.ROTATION)

    logger.debug("hidden")
    logger.info("shown")
    logger.warning("careful")

    lines = lines_of(tmp_path / "key-daemon.log")
    assert [line.split(" ", 2)[1:] for line in lines] == [
        ["INFO", "shown"],
        ["WARN", "careful"],
    ]


def test_warn_level_hides_info(tmp_path: Path) -> None:
    logs.configure_logging(tmp_path, "warn")
    logger = logging.getLogger(logs.SECURITY)

    logger.info("hidden")
    logger.warning("integrity check failed")
    logger.critical("store unreadable")

    lines = lines_of(tmp_path / "security.log")
    assert len(lines) == 2
    assert " WARN integrity check failed" in lines[0]
    assert "WARNING" not in lines[0]
    assert " ERROR store unreadable" in lines[1]


def test_set_level_shows_debug(tmp_path: Path) -> None:
    logs.configure_logging(tmp_path, "error")
    logger = logging.getLogger(logs.SYSTEM)

    logger.warning("hidden")
    logs.set_level("debug")
    logger.debug("tracing")

    (line,) = lines_of(tmp_path / "system.log")
    assert line.endswith(" DEBUG tracing")


def test_unknown_level_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="loud"):
        logs.configure_logging(tmp_path, "loud")
    with pytest.raises(ValueError, match="loud"):
        logs.set_level("loud")


def test_newlines_escaped(tmp_path: Path) -> None:
    logs.configure_logging(tmp_path, "info")

    logging.getLogger(logs.SYSTEM).info("first\nsecond\r\nthird")

    (line,) = lines_of(tmp_path / "system.log")
    assert line.endswith(" INFO first\\nsecond\\r\\nthird")


def test_exception_on_one_line(tmp_path: Path) -> None:
    logs.configure_logging(tmp_path, "info")

    try:
        raise ValueError("boom\nbang")
    except ValueError:
        logging.getLogger(logs.SYSTEM).exception("rotation error")

    (line,) = lines_of(tmp_path / "system.log")
    assert line.endswith(" ERROR rotation error: ValueError: boom\\nbang")
    assert "Traceback" not in line


def test_traceback_at_debug_on_one_line(tmp_path: Path) -> None:
    logs.configure_logging(tmp_path, "debug")

    try:
        raise KeyError("ring")
    except KeyError:
        logging.getLogger(logs.SYSTEM).error("lookup error", exc_info=True)

    (line,) = lines_of(tmp_path / "system.log")
    assert " ERROR lookup error: KeyError: 'ring'" in line
    assert "Traceback (most recent call last):\\n" in line
    assert "test_traceback_at_debug_on_one_line" in line


def test_reconfigure_does_not_duplicate(tmp_path: Path) -> None:
    logs.configure_logging(tmp_path, "info")
    logs.configure_logging(tmp_path, "debug")
    logs.configure_logging(tmp_path, "info")

    logging.getLogger(logs.ROTATION).info("once")

    assert len(lines_of(tmp_path / "key-daemon.log")) == 1
    assert len(logging.getLogger(logs.ROTATION).handlers) == 1


def test_reconfigure_moves_to_new_directory(tmp_path: Path) -> None:
    logs.configure_logging(tmp_path / "old", "info")
    logs.configure_logging(tmp_path / "new", "info")

    logging.getLogger(logs.SYSTEM).info("moved")

    assert lines_of(tmp_path / "old" / "system.log") == []
    assert len(lines_of(tmp_path / "new" / "system.log")) == 1


def test_channels_do_not_propagate(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    logs.configure_logging(tmp_path, "info")

    with caplog.at_level(logging.INFO):
        logging.getLogger(logs.SECURITY).info("not for root")

    assert caplog.records == []


def test_echo_writes_to_stderr(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure_logging(tmp_path, "info", echo=True)

    logging.getLogger(logs.ROTATION).info("rotated")
    logging.getLogger(logs.SYSTEM).info("started")

    echoed = capsys.readouterr().err.splitlines()
    assert [line.split(" ", 1)[1] for line in echoed] == [
        "INFO rotated",
        "INFO started",
    ]
    assert all(LINE.fullmatch(line) for line in echoed)


def test_reconfigure_without_echo_stops_echo(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure_logging(tmp_path, "info", echo=True)
    logs.configure_logging(tmp_path, "info")

    logging.getLogger(logs.SYSTEM).info("quiet")

    assert capsys.readouterr().err == ""


def test_reopen_after_logrotate(tmp_path: Path) -> None:
    logs.configure_logging(tmp_path, "info")
    logger = logging.getLogger(logs.ROTATION)
    logger.info("before")
    log_file = tmp_path / "key-daemon.log"
    rotated = tmp_path / "key-daemon.log.1"

    os.rename(log_file, rotated)
    logs.reopen_logs()
    logger.info("after")

    assert [line.split(" ", 2)[2] for line in lines_of(rotated)] == [
        "before"
    ]
    assert [line.split(" ", 2)[2] for line in lines_of(log_file)] == [
        "after"
    ]
    assert mode_of(log_file) == 0o600


def test_renamed_file_followed_without_reopen(tmp_path: Path) -> None:
    logs.configure_logging(tmp_path, "info")
    logger = logging.getLogger(logs.SECURITY)
    log_file = tmp_path / "security.log"

    os.rename(log_file, tmp_path / "security.log.1")
    logger.warning("after rotation")

    assert len(lines_of(log_file)) == 1
    assert mode_of(log_file) == 0o600


def test_write_failure_does_not_reach_caller(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    log_dir = tmp_path / "logs"
    logs.configure_logging(log_dir, "info")
    logger = logging.getLogger(logs.SYSTEM)

    for path in log_dir.iterdir():
        path.unlink()
    log_dir.rmdir()
    logger.error("first")
    logger.error("second")
    logs.reopen_logs()
    reported = capsys.readouterr().err.splitlines()
    log_dir.mkdir()
    logger.error("third")

    # one line per failing file, however many events failed
    assert len(reported) == 3
    assert all(line.startswith("torro: cannot write") for line in reported)
    assert sum("system.log" in line for line in reported) == 1
    written = lines_of(log_dir / "system.log")
    assert [line.split(" ", 2)[2] for line in written] == ["third"]


def test_register_secret_redacts(tmp_path: Path) -> None:
    logs.configure_logging(tmp_path, "debug")
    logs.register_secret("s3cr3t-token")
    logs.register_secret("")

    logger = logging.getLogger(logs.SECURITY)
    logger.warning("bad token %s presented", "s3cr3t-token")
    try:
        raise RuntimeError("token s3cr3t-token refused")
    except RuntimeError:
        logger.exception("import failed")

    text = (tmp_path / "security.log").read_text()
    assert "s3cr3t-token" not in text
    assert "bad token [redacted] presented" in text
    assert "RuntimeError: token [redacted] refused" in text


def test_redaction_hides_longest_secret_whole() -> None:
    logs.register_secret("abcd")
    logs.register_secret("abcdefgh")

    assert logs.redact("x abcdefgh y abcd") == "x [redacted] y [redacted]"


def test_redacting_filter_with_own_secrets() -> None:
    record = logging.LogRecord(
        "torro.security",
        logging.INFO,
        __file__,
        1,
        "key %s",
        ("hunter2hunter2",),
        None,
    )

    assert logs.RedactingFilter({"hunter2hunter2"}).filter(record)
    assert record.getMessage() == "key [redacted]"


def test_bad_format_arguments_do_not_raise(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure_logging(tmp_path, "info")

    logging.getLogger(logs.SYSTEM).info("%d keys", "many")

    assert "torro: cannot write log" in capsys.readouterr().err
