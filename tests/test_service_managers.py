"""The daemon under Supervisor and PM2, run by the real programs from the
configurations in deploy/.

Each test installs a deploy file as an operator would, with its paths
moved under the test's directory: the venv's ``torro`` for
/opt/torro/venv/bin/torro, /var/lib/torro (working directory, store, PID
file), /var/log/torro and a master key file in /etc/torro, written the
way ``openssl rand -hex 32`` writes it. A short schedule is added to the
file's environment; everything else is the file as shipped. The daemon is
then driven through the manager's own commands:

* start: the daemon makes its first key and serves the API, and ``torro
  daemon status``, run in the working directory with the settings the
  manager gave the daemon, exits 0;
* SIGHUP sent through the manager reopens the logs;
* kill -9: the manager starts the daemon again and the store loads;
* stop: the daemon logs "daemon stopped (SIGTERM)" (Supervisor) or
  "(SIGINT)" (PM2's default signal) and leaves no temporary file;
* start again: a new PID on the same store, every key kept;
* ``torro daemon stop`` by hand: Supervisor takes exit 0 as expected and
  leaves the daemon stopped; PM2 starts it again (PM2 reports a death by
  signal as exit code 0, so the deploy file cannot tell it apart).

A stop sent while a rotation is in flight lets the rotation finish: the
most derivation rounds the configuration accepts make the derivation
last seconds, and the store lock held meanwhile shows it is running. A
setting the daemon refuses is retried a few times, then left failed
(Supervisor's FATAL, PM2's errored), not restarted forever. The PM2
one-liner in the ecosystem file's header runs as written, its settings
taken from the shell that runs it.

supervisord and pm2 are taken from PATH, else from a cache directory
(``$XDG_CACHE_HOME`` or ~/.cache), where they are installed (pip, npm)
when missing and reused by later runs. A test is skipped, saying why,
only when its program can be neither found nor installed.
"""

import abc
import contextlib
import dataclasses
import datetime
import getpass
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from runner import Torro, clean_environ, wait_until


REPO = Path(__file__).resolve().parent.parent
SUPERVISOR_CONF = REPO / "deploy" / "supervisor" / "torro-daemon.conf"
PM2_CONFIG = REPO / "deploy" / "pm2" / "ecosystem.config.js"
TORRO = Path(sys.executable).with_name("torro")
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
SUPERVISOR_PREFIX = CACHE / "torro-supervisor"
PM2_PREFIX = CACHE / "torro-pm2"
PROGRAM = "torro-daemon"
INSTALL_TIMEOUT = 300.0
# Covers supervisorctl start (startsecs) and a stop waiting for a rotation.
MANAGER_TIMEOUT = 90.0
START_TIMEOUT = 20.0

# A key a second, the fewest rounds, and the API on a port it picks.
QUICK_SETTINGS = {
    "KEY_DAEMON_SLEEP_INTERVAL": "100",
    "KEY_DAEMON_ROTATION_INTERVAL": "1000",
    "KEY_DAEMON_DERIVATION_ROUNDS": "1000",
    "KEY_DAEMON_PORT": "0",
}
# The second key falls due a second after the first, and its derivation
# takes seconds (2.2 s of CPU where this test was written).
SLOW_ROTATION_SETTINGS = {
    "KEY_DAEMON_SLEEP_INTERVAL": "100",
    "KEY_DAEMON_ROTATION_INTERVAL": "1000",
    "KEY_DAEMON_DERIVATION_ROUNDS": "10000000",
    "KEY_DAEMON_API": "false",
}
# How long the store lock must stay held to be a derivation, not a load.
ROTATION_HOLD = 0.3
# Time a manager that meant to restart the daemon would have done so.
RESTART_GRACE = 1.5

API_URL = re.compile(r"HTTP API listening on (http://\S+)")
STARTED = re.compile(r" daemon \S+ started: pid (\d+), store (\S+), ")


# -- the installation ------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Installation:
    """Where one test installs what the deploy files put in /var, /etc."""

    root: Path

    @property
    def state(self) -> Path:
        return self.root / "var-lib-torro"

    @property
    def logs(self) -> Path:
        return self.root / "var-log-torro"

    @property
    def etc(self) -> Path:
        return self.root / "etc-torro"

    @property
    def store(self) -> Path:
        return self.state / "keys"

    def create(self) -> None:
        """Make the directories and the master key, as the install does."""
        self.state.mkdir(mode=0o700)
        self.logs.mkdir(mode=0o700)
        self.etc.mkdir()
        key = os.open(
            self.etc / "master-key", os.O_WRONLY | os.O_CREAT | os.O_EXCL,
            0o400,
        )
        with os.fdopen(key, "w") as file:
            file.write(secrets.token_hex(32) + "\n")

    def install(self, text: str) -> str:
        """Return a deploy file's text with every path moved here."""
        moved = {
            "/opt/torro/venv/bin/torro": TORRO,
            "/var/lib/torro": self.state,
            "/var/log/torro": self.logs,
            "/etc/torro": self.etc,
        }
        for old, new in moved.items():
            assert old in text, f"the deploy file no longer names {old}"
            text = text.replace(old, str(new))
        return text

    def log(self, name: str = "system.log") -> list[str]:
        """Return the lines of a log file, none when it is not there yet.
        """
        try:
            return (self.logs / name).read_text().splitlines()
        except FileNotFoundError:
            return []

    def started_pids(self) -> list[int]:
        """Return the PID of each daemon start logged, in order."""
        return [
            int(match.group(1))
            for match in map(STARTED.search, self.log())
            if match
        ]

    def temp_files(self) -> list[Path]:
        """Return the temporary files of an unfinished write in the store.
        """
        return [
            path for path in self.store.rglob(".*")
            if path.name.endswith(".tmp")
        ]


def log_time(line: str) -> float:
    """Return the time a log line was written, in s since the epoch."""
    return datetime.datetime.fromisoformat(line.split(" ", 1)[0]).timestamp()


def daemon_runner(pid: int) -> Torro:
    """Return a torro runner set up as the manager set up process ``pid``:
    its working directory and its KEY_* settings, nothing else.
    """
    proc = Path(f"/proc/{pid}")
    settings = {}
    for entry in (proc / "environ").read_bytes().split(b"\0"):
        name, _, value = entry.decode().partition("=")
        if name.startswith("KEY_"):
            settings[name] = value
    return Torro(Path(os.readlink(proc / "cwd")), clean_environ(**settings))


def keys_by_index(torro: Torro) -> dict[int, str]:
    """Return the fingerprint of each retained key, by index."""
    history = torro.run("keys", "history", "--json")
    assert history.code == 0, history.stderr
    return {
        key["index"]: key["fingerprint"]
        for key in json.loads(history.stdout)
    }


def assert_healthy(torro: Torro, pid: int, store: Path) -> None:
    status = torro.run("daemon", "status", "--json")
    assert status.code == 0, status.stdout + status.stderr
    document = json.loads(status.stdout)
    assert (document["running"], document["pid"], document["integrity"]) \
        == (True, pid, "ok")
    assert document["store"] == str(store)


def is_alive(pid: int) -> bool:
    """Tell whether ``pid`` runs (a zombie does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def holds_lock(pid: int, lock: Path) -> bool:
    """Tell whether process ``pid`` holds the flock on ``lock`` now."""
    inode = lock.stat().st_ino
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK":
            continue
        if int(fields[4]) == pid \
                and int(fields[5].rsplit(":", 1)[1]) == inode:
            return True
    return False


def wait_for_rotation_in_flight(pid: int, lock: Path) -> None:
    """Wait until ``pid`` has held the store lock for ROTATION_HOLD s."""
    wait_until(lock.exists, START_TIMEOUT, "the store lock file")
    since: float | None = None

    def held_long() -> bool:
        nonlocal since
        if not holds_lock(pid, lock):
            since = None
            return False
        since = since or time.monotonic()
        return time.monotonic() - since >= ROTATION_HOLD

    wait_until(held_long, 30.0, "a rotation in flight")


# -- the managers ------------------------------------------------------------

class Manager(abc.ABC):
    """A process manager running the daemon from a deploy file.

    :param installation: where the deploy file's paths go.
    :param settings: added to the environment the deploy file sets.
    """

    # the signal its stop sends, as the daemon logs it
    stop_signal = ""
    # whether an exit 0 it did not ask for is followed by a new start
    restarts_clean_exit = False
    # the file it writes the daemon's stderr to
    output_name = ""
    # starts of a daemon that fails at once before it gives up
    attempts = 0

    def __init__(
        self, installation: Installation, settings: dict[str, str]
    ) -> None:
        self.installation = installation
        self.settings = settings

    @abc.abstractmethod
    def start(self) -> None:
        """Start the manager, which starts the daemon."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop the daemon; return once it has exited."""

    @abc.abstractmethod
    def start_again(self) -> None:
        """Start the stopped daemon."""

    @abc.abstractmethod
    def send_hup(self) -> None:
        """Send the daemon SIGHUP through the manager."""

    @abc.abstractmethod
    def pid(self) -> int | None:
        """Return the daemon's PID, None when it is not running."""

    @abc.abstractmethod
    def wait_running(self) -> None:
        """Wait until the manager counts the start as successful."""

    @abc.abstractmethod
    def gave_up(self) -> bool:
        """Tell whether the manager stopped restarting a failing daemon."""

    def close(self) -> None:
        """Stop the manager and anything of the test still running."""
        Torro(self.installation.state.resolve(), {}).kill_leftovers()

    def output(self) -> list[str]:
        """Return the daemon's stderr as the manager recorded it."""
        return self.installation.log(self.output_name)

    def wait_for_pid(self, *old: int) -> int:
        """Wait for a running daemon whose PID is none of ``old``."""
        found: list[int] = []

        def new_pid() -> bool:
            pid = self.pid()
            if pid is None or pid in old:
                return False
            found.append(pid)
            return True

        wait_until(new_pid, START_TIMEOUT, f"a daemon other than {old}")
        return found[0]

    def wait_started(self, *old: int) -> int:
        """Wait for a daemon other than ``old`` to have logged its start
        (a manager reports its process before the daemon has loaded).
        """
        pid = self.wait_for_pid(*old)
        wait_until(lambda: pid in self.installation.started_pids(),
                   START_TIMEOUT, f"the start of daemon {pid}")
        return pid


def run_program(
    argv: list[str], environ: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, env=environ, capture_output=True, text=True,
        stdin=subprocess.DEVNULL, timeout=MANAGER_TIMEOUT,
    )


class Supervisor(Manager):
    """supervisord with the program section of the deploy file."""

    stop_signal = "SIGTERM"
    restarts_clean_exit = False
    output_name = "supervisor.log"
    attempts = 4  # the first and startretries=3

    def __init__(
        self,
        programs: tuple[Path, Path],
        installation: Installation,
        settings: dict[str, str],
    ) -> None:
        super().__init__(installation, settings)
        self.supervisord, self.supervisorctl = programs
        root = installation.root
        self.conf = root / "supervisord.conf"
        self.log_file = root / "supervisord.log"
        self.environ = clean_environ()
        self.process: subprocess.Popen[bytes] | None = None
        # the program file as shipped, included as conf.d/*.conf is; its
        # torro user is whoever runs the tests
        program = installation.install(SUPERVISOR_CONF.read_text())
        assert "\nuser=torro\n" in program
        program = program.replace(
            "\nuser=torro\n", f"\nuser={getpass.getuser()}\n"
        )
        included = root / f"{PROGRAM}.conf"
        included.write_text(program)
        # the test's settings reach the program through supervisord's own
        # environment, which the program's environment= adds to
        environment = ",".join(
            f'{name}="{value}"' for name, value in settings.items()
        )
        socket = root / "supervisor.sock"
        self.conf.write_text(
            "[supervisord]\n"
            "nodaemon=true\n"
            f"logfile={self.log_file}\n"
            f"pidfile={root / 'supervisord.pid'}\n"
            f"childlogdir={root}\n"
            + (f"environment={environment}\n" if settings else "")
            + "\n[unix_http_server]\n"
            f"file={socket}\n"
            "\n[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = "
            "supervisor.rpcinterface:make_main_rpcinterface\n"
            "\n[supervisorctl]\n"
            f"serverurl=unix://{socket}\n"
            "\n[include]\n"
            f"files={included}\n"
        )

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_program(
            [str(self.supervisorctl), "-c", str(self.conf), *args],
            self.environ,
        )

    def start(self) -> None:
        with (self.installation.root / "supervisord.out").open("wb") as out:
            self.process = subprocess.Popen(
                [str(self.supervisord), "-n", "-c", str(self.conf)],
                env=self.environ, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        done = self.ctl("stop", PROGRAM)
        assert done.stdout.strip() == f"{PROGRAM}: stopped", done.stdout

    def start_again(self) -> None:
        done = self.ctl("start", PROGRAM)
        assert done.stdout.strip() == f"{PROGRAM}: started", done.stdout

    def send_hup(self) -> None:
        done = self.ctl("signal", "HUP", PROGRAM)
        assert done.stdout.strip() == f"{PROGRAM}: signalled", done.stdout

    def state(self) -> str | None:
        """Return the program's state (RUNNING, EXITED, ...)."""
        words = self.ctl("status", PROGRAM).stdout.split()
        return words[1] if len(words) > 1 and words[0] == PROGRAM else None

    def pid(self) -> int | None:
        done = self.ctl("pid", PROGRAM)
        text = done.stdout.strip()
        return int(text) if text.isdigit() and text != "0" else None

    def wait_running(self) -> None:
        wait_until(lambda: self.state() == "RUNNING", START_TIMEOUT,
                   "supervisord to count the start as successful")

    def gave_up(self) -> bool:
        return self.state() == "FATAL"

    def events(self) -> list[str]:
        """Return supervisord's own log lines about the program."""
        return [
            line for line in self.log_file.read_text().splitlines()
            if f" {PROGRAM} " in line or f"'{PROGRAM}'" in line
        ]

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            # supervisord stops its programs as supervisorctl stop does
            self.process.terminate()
            try:
                self.process.wait(MANAGER_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        super().close()


class Pm2(Manager):
    """PM2 with the ecosystem file of the deploy directory, ``settings``
    added to its env, and a PM2_HOME of its own.
    """

    stop_signal = "SIGINT"
    restarts_clean_exit = True
    output_name = "pm2-error.log"
    attempts = 10  # max_restarts

    def __init__(
        self,
        program: Path,
        installation: Installation,
        settings: dict[str, str],
    ) -> None:
        super().__init__(installation, settings)
        self.program = program
        root = installation.root
        self.home = root / "pm2-home"
        self.environ = clean_environ(PM2_HOME=str(self.home))
        deployed = root / "deployed.config.js"
        deployed.write_text(installation.install(PM2_CONFIG.read_text()))
        # PM2 only takes a file ending in .config.js as an ecosystem file
        self.config = root / "test.config.js"
        self.config.write_text(
            f"const deployed = require({json.dumps(str(deployed))});\n"
            "Object.assign(deployed.apps[0].env, "
            f"{json.dumps(settings)});\n"
            "module.exports = deployed;\n"
        )

    def pm2(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = run_program([str(self.program), *args], self.environ)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    def start(self) -> None:
        self.pm2("start", str(self.config))

    def stop(self) -> None:
        self.pm2("stop", PROGRAM)

    def start_again(self) -> None:
        self.pm2("start", PROGRAM)

    def send_hup(self) -> None:
        self.pm2("sendSignal", "SIGHUP", PROGRAM)

    def describe(self) -> dict[str, Any]:
        """Return what PM2 knows of the program (``pm2 jlist``)."""
        # the JSON is the last line; a PM2 that starts prints before it
        listing = self.pm2("jlist").stdout.strip().splitlines()[-1]
        apps = [app for app in json.loads(listing) if app["name"] == PROGRAM]
        assert len(apps) == 1, listing
        return apps[0]

    def pid(self) -> int | None:
        app = self.describe()
        online = app["pm2_env"]["status"] == "online"
        return app["pid"] if online and app["pid"] else None

    def wait_running(self) -> None:
        wait_until(self.pid, START_TIMEOUT, "PM2 to report the app online")

    def gave_up(self) -> bool:
        return self.describe()["pm2_env"]["status"] == "errored"

    def close(self) -> None:
        if (self.home / "rpc.sock").exists():
            with contextlib.suppress(subprocess.TimeoutExpired):
                run_program([str(self.program), "kill"], self.environ)
        with contextlib.suppress(FileNotFoundError, ValueError,
                                 ProcessLookupError):
            # the PM2 daemon this test started, should kill have failed
            os.kill(int((self.home / "pm2.pid").read_text()),
                    signal.SIGKILL)
        super().close()


# -- finding or installing the programs --------------------------------------

def install(argv: list[str], what: str) -> None:
    """Run an installer; skip the test, saying why, when it fails."""
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"{what} is not installed and {argv[0]} failed: {exc}")
    if done.returncode != 0:
        reason = (done.stderr.strip() or done.stdout.strip()).splitlines()
        pytest.skip(
            f"{what} is not installed and {' '.join(argv[:2])} failed: "
            f"{reason[-1] if reason else done.returncode}"
        )


@pytest.fixture(scope="session")
def supervisor_programs() -> tuple[Path, Path]:
    """supervisord and supervisorctl: on PATH, cached, or pip installed."""
    found = shutil.which("supervisord"), shutil.which("supervisorctl")
    if found[0] and found[1]:
        return Path(found[0]), Path(found[1])
    bin_dir = SUPERVISOR_PREFIX / "bin"
    if not (bin_dir / "supervisorctl").exists():
        install([sys.executable, "-m", "venv", str(SUPERVISOR_PREFIX)],
                "supervisor")
        install([str(bin_dir / "pip"), "install", "supervisor"],
                "supervisor")
    return bin_dir / "supervisord", bin_dir / "supervisorctl"


@pytest.fixture(scope="session")
def pm2_program() -> Path:
    """pm2: on PATH, cached, or installed there with npm."""
    if shutil.which("node") is None:
        pytest.skip("pm2 needs Node.js and node is not on PATH")
    found = shutil.which("pm2")
    if found:
        return Path(found)
    cached = PM2_PREFIX / "node_modules" / ".bin" / "pm2"
    if not cached.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("pm2 is not installed and npm is not on PATH")
        install([npm, "install", "--prefix", str(PM2_PREFIX), "--no-audit",
                 "--no-fund", "pm2"], "pm2")
    return cached


@pytest.fixture(params=["supervisor", "pm2"])
def deploy(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[dict[str, str]], Manager]]:
    """Install the daemon under one manager, with settings added to its
    environment (once per test: the installation takes the test's
    directory).
    """
    made: list[Manager] = []

    def make(settings: dict[str, str]) -> Manager:
        installation = Installation(tmp_path)
        installation.create()
        manager: Manager
        if request.param == "supervisor":
            programs = request.getfixturevalue("supervisor_programs")
            manager = Supervisor(programs, installation, settings)
        else:
            program = request.getfixturevalue("pm2_program")
            manager = Pm2(program, installation, settings)
        made.append(manager)
        return manager

    try:
        yield make
    finally:
        for manager in made:
            manager.close()


# -- the tests -------------------------------------------------------------

def test_manager_starts_stops_and_restarts_the_daemon(
    deploy: Callable[[dict[str, str]], Manager],
) -> None:
    service = deploy(QUICK_SETTINGS)
    installation = service.installation

    # start: the first key, a healthy status, the API answering
    service.start()
    first = service.wait_started()
    assert (installation.store / "current.json").exists()
    torro = daemon_runner(first)
    assert torro.cwd == installation.state
    assert_healthy(torro, first, installation.store)
    wait_until(lambda: any(map(API_URL.search, installation.log())),
               START_TIMEOUT, "the API")
    url = next(filter(None, map(API_URL.search, installation.log())))
    with urllib.request.urlopen(f"{url.group(1)}/api/daemon/status",
                                timeout=10) as response:
        assert response.status == 200
        assert json.load(response)["healthy"] is True
    if isinstance(service, Pm2):
        # PM2 ignores an option it does not know: check it took them all
        options = service.describe()["pm2_env"]
        assert {
            name: options[name]
            for name in ("exec_interpreter", "kill_timeout", "autorestart",
                         "min_uptime", "max_restarts")
        } == {
            "exec_interpreter": "none", "kill_timeout": 60000,
            "autorestart": True, "min_uptime": 5000, "max_restarts": 10,
        }

    # SIGHUP through the manager: logs reopened, the same process
    service.send_hup()
    wait_until(
        lambda: any("log files reopened" in line
                    for line in installation.log()),
        START_TIMEOUT, "the reload",
    )
    assert service.pid() == first

    # kill -9: the manager starts the daemon again on the same store
    service.wait_running()
    kept = keys_by_index(torro)
    os.kill(first, signal.SIGKILL)
    second = service.wait_started(first)
    assert installation.started_pids() == [first, second]
    assert_healthy(torro, second, installation.store)
    assert kept.items() <= keys_by_index(torro).items()
    if isinstance(service, Supervisor):
        assert any("exited: torro-daemon (terminated by SIGKILL; not "
                   "expected)" in line for line in service.events())

    # stop: a clean exit on the manager's signal, nothing left half written
    service.stop()
    assert service.pid() is None
    assert not is_alive(second)
    stopped = f"daemon stopped ({service.stop_signal})"
    assert installation.log()[-1].endswith(stopped)
    assert service.output()[-1].endswith(stopped)
    assert installation.temp_files() == []
    assert torro.run("daemon", "status").code == 3
    verify = torro.run("keys", "verify")
    assert verify.code == 0, verify.stdout + verify.stderr
    kept = keys_by_index(torro)

    # start again: a new process, the same store, every key kept
    service.start_again()
    third = service.wait_started(first, second)
    starts = [m for m in map(STARTED.search, installation.log()) if m]
    assert [m.group(2) for m in starts] == [str(installation.store)] * 3
    assert_healthy(torro, third, installation.store)
    assert kept.items() <= keys_by_index(torro).items()

    # torro daemon stop by hand: exit 0, which only Supervisor honours
    service.wait_running()
    by_hand = torro.run("daemon", "stop")
    assert by_hand.code == 0, by_hand.stderr
    if service.restarts_clean_exit:
        fourth = service.wait_started(first, second, third)
        assert_healthy(torro, fourth, installation.store)
    else:
        time.sleep(RESTART_GRACE)
        assert service.pid() is None
        assert installation.started_pids() == [first, second, third]
        assert isinstance(service, Supervisor)
        assert service.state() == "EXITED"
        assert any("exited: torro-daemon (exit status 0; expected)" in line
                   for line in service.events())


def test_stop_lets_a_rotation_in_flight_finish(
    deploy: Callable[[dict[str, str]], Manager],
) -> None:
    service = deploy(SLOW_ROTATION_SETTINGS)
    installation = service.installation
    service.start()
    pid = service.wait_started()
    assert (installation.store / "current.json").exists()

    # the second key's derivation holds the store lock for seconds
    wait_for_rotation_in_flight(pid, installation.store / ".lock")
    asked = time.time()
    service.stop()

    assert not is_alive(pid)
    output = service.output()
    rotated = [line for line in output if " rotated to key 1 " in line]
    assert len(rotated) == 1, output
    assert log_time(rotated[0]) >= asked
    assert output[-1].endswith(f"daemon stopped ({service.stop_signal})")
    assert output.index(rotated[0]) < len(output) - 1
    assert installation.temp_files() == []
    current = json.loads((installation.store / "current.json").read_text())
    assert current["index"] == 1
    torro = Torro(installation.state, clean_environ(
        KEY_STORAGE_PATH=str(installation.store),
        KEY_DAEMON_MASTER_KEY_FILE=str(installation.etc / "master-key"),
        KEY_DAEMON_LOG_DIR=str(installation.logs),
    ))
    verify = torro.run("keys", "verify")
    assert verify.code == 0, verify.stdout + verify.stderr
    assert verify.stdout.startswith("ok: 2 keys verified"), verify.stdout


def test_manager_gives_up_on_a_bad_setting(
    deploy: Callable[[dict[str, str]], Manager],
) -> None:
    """A setting the daemon refuses (exit 2 at once) is retried as the
    deploy file says, then left failed, not restarted forever."""
    service = deploy({"KEY_DAEMON_KEY_LENGTH": "8"})
    service.start()
    wait_until(service.gave_up, 60.0, "the manager to give up")
    refusal = "torro: error: KEY_DAEMON_KEY_LENGTH=8 is out of range"
    refusals = [line for line in service.output() if refusal in line]
    assert len(refusals) == service.attempts, service.output()
    assert service.installation.started_pids() == []
    assert not service.installation.store.exists()


def test_pm2_one_liner_of_the_deploy_file_runs_the_daemon(
    pm2_program: Path, tmp_path: Path,
) -> None:
    """The documented ``pm2 start ... -- daemon run``, settings from the
    shell that runs it."""
    installation = Installation(tmp_path)
    installation.create()
    # the comment lines of the file, continued lines joined
    comments = " ".join(
        line.removeprefix("//").strip()
        for line in installation.install(PM2_CONFIG.read_text())
        .splitlines()
        if line.startswith("//")
    ).replace("\\ ", "")
    commands = re.findall(rf"pm2 start {re.escape(str(TORRO))} .*? daemon run",
                          comments)
    assert len(commands) == 1, "the deploy file has no pm2 one-liner"
    argv = shlex.split(commands[0])
    manager = Pm2(pm2_program, installation, {})
    shell = dict(manager.environ,
                 KEY_STORAGE_PATH=str(installation.store),
                 KEY_DAEMON_LOG_DIR=str(installation.logs),
                 KEY_DAEMON_PID_FILE=str(
                     installation.state / "torro-daemon.pid"),
                 KEY_DAEMON_MASTER_KEY_FILE=str(
                     installation.etc / "master-key"),
                 KEY_DAEMON_API="false")
    try:
        done = subprocess.run(
            [str(pm2_program), *argv[1:]], cwd=installation.state,
            env=shell, capture_output=True, text=True,
            timeout=MANAGER_TIMEOUT,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        pid = manager.wait_started()
        torro = daemon_runner(pid)
        assert torro.cwd == installation.state
        assert_healthy(torro, pid, installation.store)
        options = manager.describe()["pm2_env"]
        assert (options["exec_interpreter"], options["kill_timeout"]) \
            == ("none", 60000)

        manager.stop()
        assert not is_alive(pid)
        assert installation.log()[-1].endswith("daemon stopped (SIGINT)")
        assert installation.temp_files() == []
    finally:
        manager.close()
