"""Errors an operator can act on.

Every error raised on purpose by Torro is a :class:`TorroError`. Its message
is one line that says what went wrong, which value or file, and what to do;
the CLI prints it as is and exits with :attr:`TorroError.exit_code`. Anything
else reaching the CLI is a bug, except an :class:`OSError`: the system
refused something (a name too long, a full disk, no permission), which
:func:`os_error_message` puts in the same one-line form.
"""


class TorroError(Exception):
    """Base class for errors whose message is meant for the operator."""

    exit_code = 1


class ConfigError(TorroError):
    """A configuration value is missing, malformed or out of range."""

    exit_code = 2


class MasterKeyError(TorroError):
    """The master key is missing, malformed or does not open the store."""


class StoreError(TorroError):
    """The key store cannot be read or written."""


class IntegrityError(StoreError):
    """A record of the key store failed an integrity check.

    :param path: the file holding the first bad record.
    :param reason: what is wrong with it, in a few words.
    """

    def __init__(self, path: str, reason: str, advice: str = "") -> None:
        self.path = path
        self.reason = reason
        message = f"{path}: {reason}"
        if advice:
            message += f"; {advice}"
        super().__init__(message)


class LockError(TorroError):
    """A lock file cannot be opened."""


class LockTimeout(LockError):
    """Another process held a lock for too long."""


class KeyValidationError(TorroError):
    """A newly made or imported key failed validation.

    :param reason: a short code: ``length``, ``not_hex``, ``duplicate`` or
        ``low_entropy``.
    """

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


class ClockError(TorroError):
    """The system clock is behind the current key's date."""


class DaemonError(TorroError):
    """The daemon process could not be started, found or stopped."""


def os_error_message(error: OSError) -> str:
    """Return ``<filename>: <strerror>`` for an error from the system."""
    reason = error.strerror or str(error) or type(error).__name__
    names = [
        str(name)
        for name in (error.filename, error.filename2)
        if name is not None
    ]
    return ": ".join([" -> ".join(names), reason] if names else [reason])
