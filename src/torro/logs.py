"""The daemon's three log files, one per audience.

========================  ===================  ==============================
logger                    file                 events
========================  ===================  ==============================
:data:`ROTATION`          ``key-daemon.log``   rotations and the schedule
:data:`SECURITY`          ``security.log``     validation and integrity
                                               failures, key reveals,
                                               imports, resets
:data:`SYSTEM`            ``system.log``       start, stop, configuration,
                                               errors
========================  ===================  ==============================

Other modules log through ``logging.getLogger(logs.SECURITY)`` and the
like. Each event is one line::

    2026-12-03T12:58:21.123Z WARN message

with a UTC timestamp, one of the levels DEBUG, INFO, WARN and ERROR, and
the message with line breaks escaped. An attached exception adds its type
and message; its traceback is added only when the level is debug.

In the ``json`` format (:data:`LOG_FORMATS`), for log shippers, the same
event is one JSON object on one line::

    {"time": "2026-12-03T12:58:21.123Z", "level": "WARN",
     "channel": "security", "message": "...", "pid": 4242}

``channel`` is ``rotation``, ``security`` or ``system`` (the file is
``key-daemon.log``, ``security.log`` or ``system.log``). An attached
exception adds ``error_type`` and ``error`` (its message), and at the
debug level ``traceback``; fields a caller passes with ``extra=`` are
added under their own names. Every string in the object is redacted as a
text line is.

The log directory is created 0700 and the files 0600, whatever the umask.
An existing log file we own is made 0600 when it is opened; an existing
directory is left as it is, with a warning in ``system.log`` when group
or others may write to it. Files are followed across an external
logrotate. A failure to write a log line never reaches the code that
logged it.

Secrets registered with :func:`register_secret` are replaced by
``[redacted]`` wherever they appear in a line. This is a last guard: code
must still never log key material.
"""

import json
import logging
import logging.handlers
import math
import os
import stat
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import TextIO

from torro.directories import make_directories
from torro.errors import ConfigError


ROTATION = "torro.rotation"
SECURITY = "torro.security"
SYSTEM = "torro.system"

CHANNEL_FILES = {
    ROTATION: "key-daemon.log",
    SECURITY: "security.log",
    SYSTEM: "system.log",
}

# The line formats of KEY_DAEMON_LOG_FORMAT: LineFormatter, JsonFormatter.
LOG_FORMATS = ("text", "json")

DIR_MODE = 0o700
FILE_MODE = 0o600
REDACTED = "[redacted]"

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

# Characters that would end or hide a line, shown escaped instead. Tab
# stays as is.
_ESCAPES = {
    code: f"\\x{code:02x}"
    for code in [*range(0x20), 0x7F, 0x85]
    if code != 0x09
}
_ESCAPES.update(
    {
        0x0A: "\\n",
        0x0D: "\\r",
        0x2028: "\\u2028",
        0x2029: "\\u2029",
    }
)

# Characters JSON allows unescaped in a string that some line readers
# take for a line break (or that are invisible), escaped all the same.
_JSON_ESCAPES = {
    code: f"\\u{code:04x}" for code in (0x7F, 0x85, 0x2028, 0x2029)
}

# The channel field of a JSON line, by logger name.
_CHANNEL_NAMES = {
    ROTATION: "rotation",
    SECURITY: "security",
    SYSTEM: "system",
}
# Attributes every LogRecord has; any other was passed with extra=.
_RECORD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None))
) | {"message", "asctime", "taskName"}

_lock = threading.Lock()
# Longest first, so that a secret containing another is hidden whole.
_secrets: tuple[str, ...] = ()
# The handlers configure_logging installed, by logger name.
_installed: dict[str, list[logging.Handler]] = {}


def register_secret(text: str) -> None:
    """Redact ``text`` from every log line from now on.

    Empty text is ignored. Registering the same text twice is harmless.
    """
    global _secrets
    if not text:
        return
    with _lock:
        known = set(_secrets)
        known.add(text)
        _secrets = tuple(sorted(known, key=len, reverse=True))


def redact(text: str) -> str:
    """Return ``text`` with every registered secret replaced."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def traceback_text(error: BaseException) -> str:
    """Return the traceback of ``error`` as text, for a log message.

    Logged in the message rather than with ``exc_info``, it is kept
    whatever the level.
    """
    return "".join(traceback.format_exception(error)).rstrip("\n")


def one_line(text: str) -> str:
    """Return ``text`` with line breaks and control characters escaped."""
    return text.translate(_ESCAPES)


class RedactingFilter(logging.Filter):
    """Replace known secrets in a record's message.

    The message is formatted with its arguments, redacted and stored back
    on the record, so every later handler sees the redacted text.

    :param secrets: the secrets to hide; None means those registered with
        :func:`register_secret`, including ones registered later.
    """

    def __init__(self, secrets: set[str] | None = None) -> None:
        super().__init__()
        self._secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact the record's message in place; never drop the record."""
        try:
            message = record.getMessage()
        except Exception:
            # a bad format string: the handler reports it when emitting
            return True
        if self._secrets is None:
            cleaned = redact(message)
        else:
            cleaned = message
            for secret in sorted(self._secrets, key=len, reverse=True):
                if secret:
                    cleaned = cleaned.replace(secret, REDACTED)
        if cleaned != message or record.args:
            record.msg = cleaned
            record.args = None
        return True


class LineFormatter(logging.Formatter):
    """Format a record as one line: UTC time, level, message.

    :param tracebacks: add the traceback of an attached exception (as the
        debug level does); otherwise only its type and message.
    """

    def __init__(self, tracebacks: bool = False) -> None:
        super().__init__()
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        """Return the line for ``record``, without a line break."""
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            text += f": {type(error).__name__}"
            if str(error):
                text += f": {error}"
            if self.tracebacks:
                text += " | " + self.formatException(record.exc_info)
        if record.stack_info and self.tracebacks:
            text += " | " + self.formatStack(record.stack_info)
        line = f"{_utc_stamp(record)} {_level_name(record.levelno)} {text}"
        return one_line(redact(line))


class JsonFormatter(LineFormatter):
    """Format a record as one JSON object on one line, for log shippers.

    The fields are ``time``, ``level``, ``channel``, ``message`` and
    ``pid``; ``error_type``, ``error`` and (when :attr:`tracebacks` is
    set) ``traceback`` for an attached exception, and ``stack`` for
    ``stack_info``; and any field passed with ``extra=``. Every string
    is redacted before it is encoded, so a secret is hidden whatever
    JSON escaping would make of it.

    :param tracebacks: add the traceback of an attached exception, as
        the debug level does.
    """

    def format(self, record: logging.LogRecord) -> str:
        """Return the JSON line for ``record``, without a line break."""
        document: dict[str, object] = {
            "time": _utc_stamp(record),
            "level": _level_name(record.levelno),
            "channel": _channel_name(record.name),
            "message": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            document["error_type"] = type(error).__name__
            document["error"] = str(error)
            if self.tracebacks:
                document["traceback"] = self.formatException(
                    record.exc_info
                )
        if record.stack_info and self.tracebacks:
            document["stack"] = self.formatStack(record.stack_info)
        for name, value in vars(record).items():
            if name not in _RECORD_ATTRIBUTES and not name.startswith("_"):
                document.setdefault(name, _plain(value))
        line = json.dumps(
            _redacted(document),
            ensure_ascii=False,
            default=str,
        )
        return line.translate(_JSON_ESCAPES)


class _QuietHandlerMixin:
    """Report a failing handler once on stderr instead of raising.

    One line is written when the handler starts failing; nothing more
    until an event is written again.
    """

    _failed = False
    _reported = False

    def emit(self, record: logging.LogRecord) -> None:
        """Write ``record``; on failure call :meth:`handleError`."""
        self._failed = False
        try:
            super().emit(record)  # type: ignore[misc]
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)
        if not self._failed:
            self._reported = False

    def handleError(self, record: logging.LogRecord | None) -> None:
        """Note the failure and say so on stderr, at most once."""
        self._failed = True
        if self._reported:
            return
        self._reported = True
        error = sys.exc_info()[1]
        try:
            sys.stderr.write(
                f"torro: cannot write log {self._target()}: "
                f"{type(error).__name__}: {error}\n"
            )
            sys.stderr.flush()
        except Exception:
            pass

    def _target(self) -> str:
        """Return what this handler writes to, for the stderr line."""
        return "stream"


class _LogFileHandler(
    _QuietHandlerMixin,
    logging.handlers.WatchedFileHandler,
):
    """A watched log file, created 0600 whenever it is (re)opened."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, encoding="utf-8", errors="backslashreplace")

    def _open(self) -> TextIO:
        """Open the log file for appending, creating it 0600."""
        fd = _open_log_file(self.baseFilename)
        return os.fdopen(
            fd,
            "a",
            encoding=self.encoding,
            errors=self.errors,
        )

    def reopen(self) -> None:
        """Close the file and open the one now at its path."""
        self.acquire()
        try:
            if self.stream is not None:
                stream, self.stream = self.stream, None
                try:
                    stream.flush()
                finally:
                    stream.close()
            self.stream = self._open()
            self._statstream()
        except Exception:
            self.handleError(None)
        finally:
            self.release()

    def _target(self) -> str:
        """Return the path of the log file."""
        return self.baseFilename


class _EchoHandler(_QuietHandlerMixin, logging.StreamHandler):
    """Copies every event to stderr, for a daemon in the foreground."""

    def _target(self) -> str:
        """Return the name of the stream."""
        return "stderr"


def configure_logging(
    log_dir: Path,
    level: str,
    echo: bool = False,
    log_format: str = "text",
) -> None:
    """Send the three channels to their files under ``log_dir``.

    Calling it again replaces the handlers installed before, so a reload
    can change the directory, level or format without duplicating lines.

    :param log_dir: created 0700 (with its parents) if missing; the mode
        of an existing directory is left alone, with a warning in
        ``system.log`` if group or others may write to it.
    :param level: debug, info, warn (or warning) or error.
    :param echo: also write every event to stderr, as the foreground
        daemon does (in the same format).
    :param log_format: ``text`` (:class:`LineFormatter`) or ``json``
        (:class:`JsonFormatter`).
    :raises ConfigError: the directory or a file cannot be created.
    :raises ValueError: ``level`` is not a level name, or ``log_format``
        not a format.
    """
    level_number = _level_number(level)
    formatter_class = _formatter_class(log_format)
    formatter = formatter_class(tracebacks=level_number <= logging.DEBUG)
    loose_mode = _ensure_log_dir(log_dir)

    # open every new file before touching the installed handlers, so a
    # failure leaves the previous configuration working
    new: dict[str, list[logging.Handler]] = {}
    echo_handler = _EchoHandler(sys.stderr) if echo else None
    try:
        for name, file_name in CHANNEL_FILES.items():
            new[name] = [_LogFileHandler(log_dir / file_name)]
            if echo_handler is not None:
                new[name].append(echo_handler)
    except OSError as exc:
        for handlers in new.values():
            handlers[0].close()
        raise ConfigError(
            f"cannot open log file in {log_dir}: "
            f"{exc.strerror or exc}: check KEY_DAEMON_LOG_DIR"
        ) from None

    for name, handlers in new.items():
        logger = logging.getLogger(name)
        for old in _installed.get(name, []):
            logger.removeHandler(old)
            old.close()
        for handler in handlers:
            handler.setFormatter(formatter)
            handler.addFilter(RedactingFilter())
            logger.addHandler(handler)
        logger.setLevel(level_number)
        logger.propagate = False
    _installed.clear()
    _installed.update(new)

    if loose_mode is not None:
        logging.getLogger(SYSTEM).warning(
            "log directory %s is writable by group or others (mode %o): "
            "chmod 0700 it, or anyone allowed may replace the log files",
            log_dir,
            loose_mode,
        )


def log_file(channel: str) -> Path | None:
    """Return the file a channel writes to; None when it is not set up.

    :param channel: :data:`ROTATION`, :data:`SECURITY` or :data:`SYSTEM`.
    """
    for handler in _installed.get(channel, []):
        if isinstance(handler, _LogFileHandler):
            return Path(handler.baseFilename)
    return None


def reset_logging() -> None:
    """Remove every handler :func:`configure_logging` installed.

    The channel loggers propagate to the root logger again, as they did
    before any configuration; for a process that embeds the daemon and
    stops it.
    """
    for name, handlers in _installed.items():
        logger = logging.getLogger(name)
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    _installed.clear()


def set_level(level: str) -> None:
    """Change the level of the three channels.

    :param level: debug, info, warn (or warning) or error.
    :raises ValueError: ``level`` is not a level name.
    """
    level_number = _level_number(level)
    for name in CHANNEL_FILES:
        logging.getLogger(name).setLevel(level_number)
        for handler in _installed.get(name, []):
            if isinstance(handler.formatter, LineFormatter):
                handler.formatter.tracebacks = level_number <= logging.DEBUG


def reopen_logs() -> None:
    """Close and reopen the log files, as after a logrotate (SIGHUP)."""
    for handlers in list(_installed.values()):
        for handler in handlers:
            if isinstance(handler, _LogFileHandler):
                handler.reopen()


def _level_number(level: str) -> int:
    """Return the logging level for a level name in any case."""
    try:
        return _LEVELS[level.strip().lower()]
    except (KeyError, AttributeError):
        raise ValueError(
            f"unknown log level {level!r}: use debug, info, warn or error"
        ) from None


def _formatter_class(log_format: str) -> type[LineFormatter]:
    """Return the formatter of a format name in any case."""
    name = log_format.strip().lower() if isinstance(log_format, str) else ""
    if name == "json":
        return JsonFormatter
    if name == "text":
        return LineFormatter
    raise ValueError(
        f"unknown log format {log_format!r}: use text or json"
    )


def _utc_stamp(record: logging.LogRecord) -> str:
    """Return the record's time as ISO 8601 UTC with milliseconds."""
    moment = time.gmtime(record.created)
    millis = min(int(record.msecs), 999)
    return time.strftime("%Y-%m-%dT%H:%M:%S", moment) + f".{millis:03d}Z"


def _channel_name(logger_name: str) -> str:
    """Return the channel a logger writes to: rotation, security, system.

    A logger below a channel's (``torro.security.x``) belongs to it;
    another logger is named as it is.
    """
    for name, channel in _CHANNEL_NAMES.items():
        if logger_name == name or logger_name.startswith(name + "."):
            return channel
    return logger_name


def _plain(value: object) -> object:
    """Return an ``extra=`` value as JSON can hold it: text otherwise."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN or infinity
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    return str(value)


def _redacted(value: object) -> object:
    """Return ``value`` with every registered secret hidden in its text.
    """
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [_redacted(item) for item in value]
    if isinstance(value, dict):
        return {
            redact(str(key)): _redacted(item) for key, item in value.items()
        }
    return value


def _level_name(level_number: int) -> str:
    """Return the name printed for a level: DEBUG, INFO, WARN or ERROR."""
    if level_number >= logging.ERROR:
        return "ERROR"
    if level_number >= logging.WARNING:
        return "WARN"
    if level_number >= logging.INFO:
        return "INFO"
    return "DEBUG"


def _ensure_log_dir(log_dir: Path) -> int | None:
    """Create ``log_dir`` 0700 unless it exists.

    :returns: the mode of an existing directory that group or others may
        write to, to be warned about; None otherwise.
    :raises ConfigError: it cannot be created or is not a directory.
    """
    if log_dir.is_dir():
        mode = stat.S_IMODE(log_dir.stat().st_mode)
        return mode if mode & 0o022 else None
    try:
        make_directories(log_dir, DIR_MODE)
    except FileExistsError:
        raise ConfigError(
            f"log directory {log_dir} exists and is not a directory: "
            f"check KEY_DAEMON_LOG_DIR"
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"cannot create log directory {log_dir}: "
            f"{exc.strerror or exc}: check KEY_DAEMON_LOG_DIR"
        ) from None
    return None


def _open_log_file(path: str) -> int:
    """Open ``path`` for appending and return the descriptor.

    The file ends up 0600 whatever the umask: a file created here is made
    so, and so is an existing file this process's user owns (the mode of
    another user's file is left alone). A file root creates in another
    user's log directory (a CLI command run as root beside a daemon run
    as its own user) is given to the directory's owner, who could not
    write to it otherwise.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
    created = True
    try:
        fd = os.open(path, flags | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        created = False
        fd = os.open(path, flags, FILE_MODE)
    try:
        if created and os.geteuid() == 0:
            directory = os.stat(os.path.dirname(path) or ".")
            if directory.st_uid != 0:
                os.fchown(fd, directory.st_uid, directory.st_gid)
        status = os.fstat(fd)
        if status.st_uid == os.geteuid() \
                and stat.S_IMODE(status.st_mode) != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
    except OSError:
        os.close(fd)
        raise
    return fd
