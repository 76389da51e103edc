"""Shared fixtures: a ``torro`` runner in a clean working directory, a
fake clock, a master key and a place for a key store.
"""

import os
from collections.abc import Iterator
from pathlib import Path

import campaign
import pytest
from fakes import FakeClock
from runner import FAST_SETTINGS, Torro, clean_environ

from torro import logs
from torro.config import variable_names
from torro.sealing import MasterKey


@pytest.fixture
def torro(tmp_path: Path) -> Iterator[Torro]:
    """A torro runner in an empty directory with fast settings.

    Every daemon started in the directory is killed at teardown.
    """
    cwd = tmp_path / "work"
    cwd.mkdir()
    runner = Torro(cwd.resolve(), clean_environ(**FAST_SETTINGS))
    try:
        yield runner
    finally:
        runner.kill_leftovers()


@pytest.fixture
def here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """Run the CLI in this process, in a clean directory with fast settings.

    Spares an interpreter start where a test needs no separate process.
    """
    cwd = tmp_path / "work"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    for name in variable_names():
        monkeypatch.delenv(name, raising=False)
    for name, value in FAST_SETTINGS.items():
        monkeypatch.setenv(name, value)
    try:
        yield cwd.resolve()
    finally:
        logs.reset_logging()


@pytest.fixture
def clean_logging() -> Iterator[None]:
    """Remove the handlers a test installed and the secrets it added."""
    secrets = logs._secrets
    yield
    logs.reset_logging()
    logs._secrets = secrets


# -- key store fixtures --------------------------------------------------

@pytest.fixture
def umask_zero() -> Iterator[None]:
    """Run the test under umask 000, as the most careless operator would.
    """
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def master() -> MasterKey:
    return MasterKey(os.urandom(32))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Where a test's key store goes (created by the store itself)."""
    return tmp_path / "keys"


# -- the reliability campaign's table --------------------------------------

@pytest.fixture
def tally(request: pytest.FixtureRequest) -> campaign.Tally:
    """A row of the campaign's table, named after the test's scenario."""
    marker = request.node.get_closest_marker("scenario")
    name = marker.args[0] if marker else request.node.name
    row = campaign.Tally(name)
    campaign.TALLIES.append(row)
    return row


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter,
) -> None:
    if not campaign.TALLIES:
        return
    terminalreporter.section("reliability campaign")
    for line in campaign.table():
        terminalreporter.write_line(line)
