"""The wheel, built and installed as a user would get it.

A wheel is built from a copy of the source tree (so the build leaves no
``build/`` or ``*.egg-info`` in the working tree) by pip with build
isolation, installed with its dependencies into a new virtual
environment, and run from an empty directory. About 15 s, most of it
pip installing the dependencies from the configured index.
"""

import email
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import torro


ROOT = Path(__file__).parents[1]
# What the wheel's metadata folder may hold, and nothing else.
DIST_INFO = {"METADATA", "WHEEL", "RECORD", "entry_points.txt",
             "top_level.txt"}
TIMEOUT = 300


def run(argv: list[str], **options: object) -> subprocess.CompletedProcess[
    str
]:
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=TIMEOUT,
        **options,  # type: ignore[call-overload]
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def normalized(requirement: str) -> str:
    """A requirement as text without spaces, lower case."""
    return re.sub(r"\s+", "", requirement).lower()


def user_environ() -> dict[str, str]:
    """The environment of a user's shell: no torro setting, no sign of
    the project's own virtual environment or source tree."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("KEY_DAEMON_", "KEY_STORAGE", "KEY_HISTORY"))
        and name not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    }


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean copy of what a build reads from the source tree."""
    copy = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, copy / name)
    shutil.copytree(
        ROOT / "src", copy / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
    )
    return copy


@pytest.fixture(scope="module")
def wheel(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the wheel from :func:`source`."""
    dist = tmp_path_factory.mktemp("dist")
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps",
         "--disable-pip-version-check", "-w", str(dist), str(source)],
        env=user_environ(),
    )
    (built,) = dist.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def venv(
    wheel: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A new virtual environment with the wheel installed; its bin dir."""
    root = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", str(root)], env=user_environ())
    bin_dir = root / "bin"
    run(
        [str(bin_dir / "python"), "-m", "pip", "install",
         "--disable-pip-version-check", str(wheel)],
        env=user_environ(),
    )
    return bin_dir


def test_the_wheel_holds_the_package_and_nothing_else(
    source: Path, wheel: Path
) -> None:
    """One version everywhere (file name, METADATA, torro.__version__),
    every module of src/torro and no other file: no tests, no caches,
    no egg-info; the ``torro`` script and the dependencies of
    pyproject.toml declared as they are there."""
    version = torro.__version__
    assert wheel.name == f"torro-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = email.message_from_bytes(
            archive.read(f"torro-{version}.dist-info/METADATA")
        )
        entry_points = archive.read(
            f"torro-{version}.dist-info/entry_points.txt"
        ).decode()

    modules = {
        path.relative_to(source / "src").as_posix()
        for path in (source / "src" / "torro").rglob("*.py")
    }
    package = {name for name in names if name.startswith("torro/")}
    assert package == modules
    info = {
        name.split("/", 1)[1]
        for name in names if name.startswith(f"torro-{version}.dist-info/")
    }
    assert info == DIST_INFO
    assert len(names) == len(package) + len(info)
    assert not [
        name for name in names
        if re.search(r"(^|/)(tests?|conftest)(/|\.py$|_)", name)
    ]

    assert metadata["Name"] == "torro"
    assert metadata["Version"] == version
    declared = tomllib.loads(
        (source / "pyproject.toml").read_text()
    )["project"]["dependencies"]
    requires = [
        line for line in metadata.get_all("Requires-Dist", [])
        if "extra ==" not in line
    ]
    assert sorted(normalized(line) for line in requires) == sorted(
        normalized(line) for line in declared
    )
    assert "cryptography" in {re.split(r"\W", line)[0] for line in requires}
    assert re.search(r"^torro = torro\.cli:main$", entry_points, re.M)


def test_the_version_is_written_once() -> None:
    """Only torro/__init__.py spells the version out: pyproject.toml
    reads it from there, the CLI and the OpenAPI document import it."""
    version = torro.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", version)
    spelled = [
        path.relative_to(ROOT).as_posix()
        for path in [ROOT / "pyproject.toml",
                     *(ROOT / "src" / "torro").rglob("*.py")]
        if version in path.read_text()
    ]
    assert spelled == ["src/torro/__init__.py"]
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject
    assert 'version = { attr = "torro.__version__" }' in pyproject


def test_the_installed_command_runs_from_an_empty_directory(
    venv: Path, tmp_path: Path
) -> None:
    """The installed ``torro`` (and ``python -m torro``) reports the
    package's version, imports torro from the new environment, and
    ``config check`` passes on the defaults without writing a file."""
    empty = tmp_path / "empty"
    empty.mkdir()
    environ = user_environ()
    expected = f"torro, version {torro.__version__}\n"

    def in_empty(*argv: str) -> subprocess.CompletedProcess[str]:
        return run(list(argv), cwd=empty, env=environ)

    assert in_empty(str(venv / "torro"), "--version").stdout == expected
    assert in_empty(
        str(venv / "python"), "-m", "torro", "--version"
    ).stdout == expected
    where = in_empty(
        str(venv / "python"), "-c", "import torro; print(torro.__file__)"
    ).stdout.strip()
    assert Path(where).is_relative_to(venv.parent), where

    checked = in_empty(str(venv / "torro"), "config", "check")
    assert (checked.stdout, checked.stderr) == ("configuration ok\n", "")
    assert list(empty.iterdir()) == []
