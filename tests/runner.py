"""Run the ``torro`` command as a subprocess, as an operator would.

Shared by the tests of the CLI, the daemon process, the integration
library and the API; the fixtures that hand these out are in conftest.py.
"""

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from torro import cli


# Settings that keep subprocess tests fast: a short schedule and the
# fewest derivation rounds the configuration accepts.
FAST_SETTINGS = {
    "KEY_DAEMON_SLEEP_INTERVAL": "100",
    "KEY_DAEMON_ROTATION_INTERVAL": "500",
    "KEY_DAEMON_DERIVATION_ROUNDS": "1000",
    # The API has tests of its own, each on a free port.
    "KEY_DAEMON_API": "false",
}
COMMAND_TIMEOUT = 30.0


def clean_environ(**settings: str) -> dict[str, str]:
    """Return os.environ without any torro setting, plus ``settings``."""
    environ = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("KEY_DAEMON_")
        and name not in ("KEY_STORAGE_PATH", "KEY_HISTORY_PATH")
    }
    environ.update(settings)
    return environ


def wait_until(
    condition: Callable[[], object],
    timeout: float = 10.0,
    what: str = "the condition",
) -> None:
    """Poll ``condition`` until it is true; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one torro command did."""

    args: tuple[str, ...]
    code: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return self.stderr.splitlines()


def one_error(outcome: Outcome, code: int = 1) -> str:
    """Check ``outcome`` failed with ``code`` and one error line, and no
    traceback; return that line."""
    assert outcome.code == code, outcome
    assert outcome.stdout == ""
    assert "Traceback" not in outcome.stderr
    assert len(outcome.error_lines) == 1, outcome.stderr
    line = outcome.error_lines[0]
    assert line.startswith("torro: error: ")
    return line


class Torro:
    """Run torro as a subprocess in one working directory.

    :param cwd: the working directory of every command.
    :param environ: the environment every command starts from.
    """

    def __init__(self, cwd: Path, environ: dict[str, str]) -> None:
        self.cwd = cwd
        self.environ = environ
        self.outcomes: list[Outcome] = []
        self._children: list[subprocess.Popen[bytes]] = []

    @staticmethod
    def wait_until(
        condition: Callable[[], object],
        timeout: float = 10.0,
        what: str = "the condition",
    ) -> None:
        """Poll ``condition`` until it is true; fail after ``timeout`` s."""
        wait_until(condition, timeout, what)

    @property
    def pid_file(self) -> Path:
        return self.cwd / "torro-daemon.pid"

    def command(self, args: tuple[str, ...], script: bool) -> list[str]:
        """Return the argv running torro as a module or console script."""
        if script:
            executable = Path(sys.executable).with_name("torro")
            return [str(executable), *args]
        return [sys.executable, "-m", "torro", *args]

    def env(self, **changes: str | None) -> dict[str, str]:
        """Return the base environment with ``changes`` (None unsets)."""
        environ = dict(self.environ)
        for name, value in changes.items():
            if value is None:
                environ.pop(name, None)
            else:
                environ[name] = value
        return environ

    def run(
        self,
        *args: str,
        env: dict[str, str | None] | None = None,
        stdin: str | None = None,
        script: bool = False,
        umask: int | None = None,
    ) -> Outcome:
        """Run one command to completion and record its outcome."""
        preexec = None if umask is None else (lambda: os.umask(umask))
        done = subprocess.run(
            self.command(args, script),
            cwd=self.cwd,
            env=self.env(**(env or {})),
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            preexec_fn=preexec,
        )
        outcome = Outcome(args, done.returncode, done.stdout, done.stderr)
        self.outcomes.append(outcome)
        return outcome

    def run_together(
        self,
        *commands: tuple[str, ...],
        env: dict[str, str | None] | None = None,
    ) -> list[Outcome]:
        """Run several commands at once; return their outcomes in order."""
        children = [
            self.popen(
                *args, env=env, text=True,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )
            for args in commands
        ]
        outcomes = []
        for args, child in zip(commands, children, strict=True):
            stdout, stderr = child.communicate(timeout=COMMAND_TIMEOUT)
            outcomes.append(Outcome(args, child.returncode, stdout, stderr))
        self.outcomes.extend(outcomes)
        return outcomes

    def popen(
        self,
        *args: str,
        env: dict[str, str | None] | None = None,
        **options: object,
    ) -> subprocess.Popen[bytes]:
        """Start a command without waiting; it is killed at teardown."""
        child = subprocess.Popen(
            self.command(args, False),
            cwd=self.cwd,
            env=self.env(**(env or {})),
            stdin=subprocess.DEVNULL,
            **options,  # type: ignore[call-overload]
        )
        self._children.append(child)
        return child

    def spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        """Start any program in the working directory, killed at teardown.
        """
        child = subprocess.Popen(argv, cwd=self.cwd)
        self._children.append(child)
        return child

    def daemon_processes(self) -> list[int]:
        """Return the PIDs of live ``torro daemon run`` in this directory."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                if Path(os.readlink(entry / "cwd")) != self.cwd:
                    continue
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                state = (entry / "stat").read_text().rsplit(")", 1)[1]
                if len(argv) >= 4 and argv[-4].endswith(b"torro") \
                        and argv[-3:-1] == [b"daemon", b"run"] \
                        and state.split()[0] != "Z":
                    found.append(int(entry.name))
        return found

    def kill_leftovers(self) -> None:
        """SIGKILL every process started here that still runs.

        The number in the PID file is not trusted on its own (tests plant
        unrelated PIDs there): a daemon is found by its command line and
        working directory.
        """
        for child in self._children:
            if child.poll() is None:
                child.kill()
            child.wait()
        for pid in self.daemon_processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def run_here(
    capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    """Run ``torro args`` in this process; return code, stdout, stderr."""
    capsys.readouterr()
    code = cli._run(cli.cli.main, list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err
