"""Tell systemd how the daemon is doing: the sd_notify protocol.

Under a unit with ``Type=notify``, systemd passes a datagram socket in
``NOTIFY_SOCKET`` and waits for ``READY=1`` before it counts the service
as started; with ``WatchdogSec=`` it also passes ``WATCHDOG_USEC`` and
restarts a service that stops sending ``WATCHDOG=1`` within that time.
Outside systemd the variables are absent and every call does nothing.

The protocol is one datagram of newline-separated ``NAME=value`` lines
(sd_notify(3)). It is written here rather than taken from a library: the
official binding needs libsystemd's headers to build, and the message is
a dozen lines of socket code.
"""

import logging
import os
import socket
import time

from torro import logs


system_log = logging.getLogger(logs.SYSTEM)


class Notifier:
    """The service manager's notification socket, if there is one.

    :param address: ``NOTIFY_SOCKET`` as systemd gives it: a path, or an
        abstract socket name starting with ``@``; None for no manager.
    :param watchdog_usec: ``WATCHDOG_USEC``, the watchdog's timeout in
        microseconds, or None when no watchdog is set.
    """

    def __init__(
        self, address: str | None, watchdog_usec: int | None = None
    ) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self._failed = False

    @classmethod
    def from_environment(cls) -> "Notifier":
        """Read the variables systemd sets for this process.

        ``WATCHDOG_PID``, when set, must name this process: a watchdog
        meant for a parent is not ours to feed.
        """
        address = os.environ.get("NOTIFY_SOCKET") or None
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        watchdog = None
        if usec.isdigit() and int(usec) > 0 \
                and (not pid or pid == str(os.getpid())):
            watchdog = int(usec)
        return cls(address, watchdog)

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between two ``WATCHDOG=1``: half the timeout, as
        sd_watchdog_enabled(3) advises; None without a watchdog."""
        if self.address is None or self.watchdog_usec is None:
            return None
        return self.watchdog_usec / 2_000_000

    def ready(self, status: str) -> None:
        """Say the daemon is up: store loaded, API listening."""
        self.send(
            f"READY=1\nSTATUS={_one_line(status)}\nMAINPID={os.getpid()}"
        )

    def status(self, status: str) -> None:
        """Show ``status`` in ``systemctl status``, saying nothing else:
        for a start that failed, where READY=1 would mislead."""
        self.send(f"STATUS={_one_line(status)}")

    def reloading(self) -> None:
        """Say a reload (SIGHUP) began; :meth:`ready` says it ended.

        ``MONOTONIC_USEC`` is the time of the reload on CLOCK_MONOTONIC,
        as sd_notify(3) asks, so that systemd can tell this reload from
        one it requested later.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def watchdog(self) -> None:
        """Feed the watchdog: the rotation loop is alive."""
        if self.watchdog_usec is not None:
            self.send("WATCHDOG=1")

    def stopping(self) -> None:
        """Say the daemon is shutting down."""
        self.send("STOPPING=1\nSTATUS=stopping")

    def send(self, message: str) -> bool:
        """Send one notification; return whether it was sent.

        A socket that cannot be reached is logged once, not at every
        watchdog beat; the daemon goes on either way.
        """
        if self.address is None:
            return False
        address = self.address
        if address.startswith("@"):
            # an abstract socket: its name starts with a NUL byte
            address = "\0" + address[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                # "replace": a path from the file system may not be UTF-8
                sock.sendto(message.encode("utf-8", "replace"), address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                system_log.warning(
                    "cannot notify the service manager at %s: %s",
                    self.address, exc.strerror or exc,
                )
            return False
        self._failed = False
        return True


def _one_line(text: str) -> str:
    """Return ``text`` with line breaks as spaces.

    A line break would end the STATUS= line, and a path or message could
    then pass for another notification, such as READY=1.
    """
    return " ".join(text.splitlines())
