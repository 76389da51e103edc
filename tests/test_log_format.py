"""KEY_DAEMON_LOG_FORMAT=json: one JSON object per line, for log shippers.

In this process: the fields of a line, redaction of every string in it,
line breaks kept inside the line, and the same events as the text
format. As a real daemon: every line of the three files parses, carries
the fields, names its channel and process, and holds no key, master key
or token (tests/leaks.py).
"""

import datetime
import json
import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import campaign
import httpx
import pytest
from leaks import sweep
from runner import run_here

from torro import logs
from torro.config import load_settings
from torro.errors import ConfigError
from torro.manager import RELOADABLE

if TYPE_CHECKING:
    from runner import Torro


# each test removes the handlers it installed and the secrets it added
pytestmark = pytest.mark.usefixtures("clean_logging")

FIELDS = {"time", "level", "channel", "message", "pid"}
LEVELS = {"DEBUG", "INFO", "WARN", "ERROR"}
CHANNELS = {
    "key-daemon.log": "rotation",
    "security.log": "security",
    "system.log": "system",
}
SECRET = "s3cret-token-for-the-json-log-test"
FULL_TOKEN = "full-token-for-the-json-log-test-0123456789"
READ_TOKEN = "read-token-for-the-json-log-test-0123456789"
LISTENING = "HTTP API listening on "


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Parse every line of a JSON log file; each must be an object."""
    documents = []
    for line in path.read_text(encoding="utf-8").split("\n")[:-1]:
        document = json.loads(line)
        assert isinstance(document, dict), line
        documents.append(document)
    return documents


def check_fields(document: dict[str, Any], channel: str) -> None:
    """Assert the fields every JSON line carries, with their types."""
    assert FIELDS <= document.keys(), document
    stamp = document["time"]
    assert isinstance(stamp, str) and stamp.endswith("Z"), stamp
    moment = datetime.datetime.fromisoformat(stamp)
    assert moment.utcoffset() == datetime.timedelta(0)
    assert len(stamp) == len("2026-12-03T12:58:21.123Z")
    assert document["level"] in LEVELS
    assert document["channel"] == channel
    assert isinstance(document["message"], str)
    assert isinstance(document["pid"], int) and document["pid"] > 0


# -- the formatter, in this process ---------------------------------------

def test_json_line_fields_and_redaction(tmp_path: Path) -> None:
    logs.register_secret(SECRET)
    logs.configure_logging(tmp_path, "info", log_format="json")
    rotation = logging.getLogger(logs.ROTATION)
    security = logging.getLogger(logs.SECURITY)

    rotation.info("rotated to key %d", 7, extra={"index": 7})
    security.warning(
        "token %s seen\nnext line\u2028and more", SECRET,
        extra={"token": SECRET, "nested": {"list": [SECRET, 1]}},
    )
    try:
        raise ValueError(f"bad value {SECRET}")
    except ValueError as error:
        logging.getLogger(logs.SYSTEM + ".child").error(
            "it failed", exc_info=error
        )

    raw = "".join(
        (tmp_path / name).read_text(encoding="utf-8") for name in CHANNELS
    )
    assert SECRET not in raw
    # one physical line per event, whatever the message held
    assert raw.count("\n") == 3
    assert "\u2028" not in raw

    [rotated] = json_lines(tmp_path / "key-daemon.log")
    check_fields(rotated, "rotation")
    assert rotated["level"] == "INFO"
    assert rotated["message"] == "rotated to key 7"
    assert rotated["index"] == 7
    assert rotated["pid"] == os.getpid()

    [seen] = json_lines(tmp_path / "security.log")
    check_fields(seen, "security")
    assert seen["level"] == "WARN"
    assert seen["message"] == (
        "token [redacted] seen\nnext line\u2028and more"
    )
    assert seen["token"] == "[redacted]"
    assert seen["nested"] == {"list": ["[redacted]", 1]}

    [failed] = json_lines(tmp_path / "system.log")
    check_fields(failed, "system")
    assert failed["level"] == "ERROR"
    assert failed["message"] == "it failed"
    assert failed["error_type"] == "ValueError"
    assert failed["error"] == "bad value [redacted]"
    # the traceback only at the debug level
    assert "traceback" not in failed


def test_json_traceback_at_debug(tmp_path: Path) -> None:
    logs.register_secret(SECRET)
    logs.configure_logging(tmp_path, "info", log_format="json")
    logs.set_level("debug")
    try:
        raise RuntimeError(SECRET)
    except RuntimeError as error:
        logging.getLogger(logs.SYSTEM).error("boom", exc_info=error)

    [line] = json_lines(tmp_path / "system.log")
    assert line["traceback"].startswith("Traceback (most recent call last)")
    assert line["traceback"].endswith("RuntimeError: [redacted]")
    assert SECRET not in (tmp_path / "system.log").read_text()


def test_json_and_text_log_the_same_events(tmp_path: Path) -> None:
    def log_events() -> None:
        logging.getLogger(logs.ROTATION).info("rotated to key %d", 3)
        logging.getLogger(logs.SECURITY).debug("not at info")
        logging.getLogger(logs.SECURITY).warning("refused %s", "x")
        logging.getLogger(logs.SYSTEM).error("tab\tand \\ backslash")

    logs.configure_logging(tmp_path / "text", "info")
    log_events()
    logs.configure_logging(tmp_path / "json", "info", log_format="json")
    log_events()

    for name, channel in CHANNELS.items():
        text_lines = (tmp_path / "text" / name).read_text().splitlines()
        as_text = [line.split(" ", 2)[1:] for line in text_lines]
        documents = json_lines(tmp_path / "json" / name)
        for document in documents:
            check_fields(document, channel)
        assert [[d["level"], d["message"]] for d in documents] == as_text
        assert documents, name


def test_unknown_format_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="use text or json"):
        logs.configure_logging(tmp_path, "info", log_format="xml")


# -- the setting ------------------------------------------------------------

def test_setting_accepts_text_and_json_in_any_case() -> None:
    assert load_settings({}, env_file=None).log_format == "text"
    for given, taken in [("JSON", "json"), (" text ", "text")]:
        environ = {"KEY_DAEMON_LOG_FORMAT": given}
        assert load_settings(environ, env_file=None).log_format == taken


def test_bad_setting_is_one_line_naming_it() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"KEY_DAEMON_LOG_FORMAT": "xml"}, env_file=None)
    assert str(caught.value) == (
        "KEY_DAEMON_LOG_FORMAT=xml is not a log format: use text or json"
    )


def test_format_change_waits_for_a_restart() -> None:
    """A SIGHUP keeps the format the daemon started with, and says that
    the change needs a restart."""
    text = load_settings({}, env_file=None)
    json_format = load_settings(
        {"KEY_DAEMON_LOG_FORMAT": "json"}, env_file=None
    )
    assert text.reload_differences(json_format) == ["KEY_DAEMON_LOG_FORMAT"]
    assert "KEY_DAEMON_LOG_FORMAT" not in RELOADABLE


def test_config_check_refuses_bad_format(
    here: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KEY_DAEMON_LOG_FORMAT", "logfmt")
    code, out, err = run_here(capsys, "config", "check")
    assert (code, out) == (2, "")
    assert err == (
        "torro: error: KEY_DAEMON_LOG_FORMAT=logfmt is not a log format: "
        "use text or json\n"
    )


# -- a real daemon ------------------------------------------------------------

def listening_url(system_log: Path) -> str | None:
    """Return the API's URL from a JSON system.log, once it is logged."""
    try:
        documents = json_lines(system_log)
    except FileNotFoundError:
        return None
    for document in documents:
        if document["message"].startswith(LISTENING):
            return document["message"][len(LISTENING):]
    return None


def test_daemon_json_logs_parse_and_hold_no_secret(
    torro: "Torro", tmp_path: Path
) -> None:
    master_key_file = torro.cwd / "master.key"
    master_key_file.write_text(os.urandom(32).hex())
    master_key_file.chmod(0o400)
    env = {
        "KEY_DAEMON_LOG_FORMAT": "json",
        "KEY_DAEMON_MASTER_KEY_FILE": str(master_key_file),
        "KEY_DAEMON_API": "true",
        "KEY_DAEMON_PORT": "0",
        "KEY_DAEMON_ROTATION_INTERVAL": "3600000",
        "KEY_DAEMON_SLEEP_INTERVAL": "1000",
        "KEY_DAEMON_ADMIN_TOKENS": FULL_TOKEN,
        "KEY_DAEMON_READ_TOKENS": READ_TOKEN,
    }
    log_dir = torro.cwd / "logs"
    stderr_path = tmp_path / "daemon.stderr"
    with open(stderr_path, "wb") as stderr:
        daemon = torro.popen(
            "daemon", "run", env=env,
            stdout=subprocess.DEVNULL, stderr=stderr,
        )
    found: list[str] = []

    def listening() -> bool:
        url = listening_url(log_dir / "system.log")
        if url is not None:
            found.append(url)
        return url is not None or daemon.poll() is not None

    torro.wait_until(listening, timeout=20, what="the HTTP API to listen")
    assert daemon.poll() is None, stderr_path.read_text()

    full = {"Authorization": f"Bearer {FULL_TOKEN}"}
    with httpx.Client(base_url=found[0], timeout=15) as client:
        revealed = client.get("/api/daemon/current-key", headers=full)
        assert revealed.status_code == 200
        refused = client.get(
            "/api/daemon/current-key",
            headers={"Authorization": f"Bearer {READ_TOKEN}"},
        )
        assert refused.status_code == 403
        rotated = client.post("/api/daemon/force-rotation", headers=full)
        assert rotated.status_code == 200
    shown = torro.run("keys", "show", "0", "--reveal", env=env)
    assert shown.code == 0, shown.stderr
    daemon.send_signal(signal.SIGHUP)
    torro.wait_until(
        lambda: "log files reopened" in (log_dir / "system.log").read_text(),
        what="the daemon to reopen its logs",
    )
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=30) == 0, stderr_path.read_text()

    pids: set[int] = set()
    messages: dict[str, list[str]] = {}
    for name, channel in CHANNELS.items():
        documents = json_lines(log_dir / name)
        assert documents, name
        for document in documents:
            check_fields(document, channel)
            pids.add(document["pid"])
        messages[channel] = [d["message"] for d in documents]
    # the daemon wrote, and so did the CLI command, in the same format
    assert daemon.pid in pids and len(pids) == 2
    assert any(m.startswith("rotated to key 1 ")
               for m in messages["rotation"])
    assert any("revealed to full token" in m for m in messages["security"])
    assert any("revealed by torro keys show" in m
               for m in messages["security"])
    assert any(m.startswith("api: refused GET")
               for m in messages["security"])
    assert messages["system"][-1] == "daemon stopped (SIGTERM)"

    # the reveals answered with a key, as asked; nothing else may
    sweep(
        campaign.Tally("json log format"),
        texts=[refused.text, rotated.text, shown.stderr],
        logs=log_dir,
        store=torro.cwd / "keys",
        master_key_file=master_key_file,
        tokens=[FULL_TOKEN, READ_TOKEN],
    )
