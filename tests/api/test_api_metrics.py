"""GET /metrics as Prometheus and its alert rules use it.

A real daemon is scraped and the exposition parsed with
prometheus_client's own parser: the sample names a dashboard or an
alert rule queries must be there with the right types and values, and
must follow the daemon through a rotation, a reload of its
configuration and a damaged store. The rules of
deploy/prometheus/torro-alerts.yml may only name metrics a live daemon
exposes, and, when promtool is installed, must pass ``promtool check
rules`` and fire on the series they are written for.
"""

import json
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from api_checks import FULL_TOKEN, ApiDaemon, assert_error, iso_ms
from prometheus_client.parser import text_string_to_metric_families

import torro


RULES = Path(__file__).parents[2] / "deploy/prometheus/torro-alerts.yml"
ALERTS = {
    "TorroDown",
    "TorroRotationOverdue",
    "TorroIntegrityFailure",
    "TorroRotationFailing",
    "TorroUnhealthy",
}
# Sample name -> family type, as a query names them.
SAMPLES = {
    "torro_rotations_total": "counter",
    "torro_rotation_failures_total": "counter",
    "torro_last_rotation_timestamp_seconds": "gauge",
    "torro_last_rotation_duration_seconds": "gauge",
    "torro_next_rotation_timestamp_seconds": "gauge",
    "torro_current_key_index": "gauge",
    "torro_current_key_age_seconds": "gauge",
    "torro_rotation_interval_seconds": "gauge",
    "torro_history_size": "gauge",
    "torro_store_integrity_ok": "gauge",
    "torro_healthy": "gauge",
    "torro_uptime_seconds": "gauge",
    "torro_build_info": "gauge",
}
# Words of PromQL that look like metric names in an expression.
PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring",
    "group_left", "group_right", "bool", "offset",
}


def scrape(api: ApiDaemon) -> dict[str, tuple[str, float, dict[str, str]]]:
    """GET /metrics without a token; return, by sample name, its
    family's type, its value and its labels (one sample per name)."""
    response = api.get("/metrics")
    assert response.status_code == 200, response.text
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            assert sample.name not in samples, sample
            samples[sample.name] = (family.type, sample.value, sample.labels)
    return samples


def value(api: ApiDaemon, name: str) -> float:
    return scrape(api)[name][1]


def rotate(api: ApiDaemon) -> dict[str, Any]:
    response = api.post("/api/daemon/force-rotation", token=FULL_TOKEN)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def wait_for_value(api: ApiDaemon, name: str, wanted: float) -> None:
    api.torro.wait_until(
        lambda: value(api, name) == wanted, timeout=15,
        what=f"{name} to be {wanted:g}",
    )


def flip_a_byte(path: Path) -> None:
    """Change one hex digit of the first fingerprint in ``path``."""
    data = bytearray(path.read_bytes())
    at = data.index(b'"fingerprint":"') + len(b'"fingerprint":"')
    data[at] = ord("1") if data[at] == ord("0") else ord("0")
    path.write_bytes(bytes(data))


# -- the exposition ------------------------------------------------------

def test_a_forced_rotation_shows_in_the_metrics(api: ApiDaemon) -> None:
    """Every sample a rule or a dashboard needs is exposed under its
    conventional name and type; a forced rotation adds exactly one to
    the rotations counter and none to the failures, makes a new key of
    age about 0 dated as the rotation answered, grows the history by
    one; the interval is the configured hour, the store intact, the
    daemon healthy and its version the package's."""
    before = scrape(api)
    assert {name: kind for name, (kind, _, _) in before.items()} == SAMPLES

    answer = rotate(api)
    answered = time.time()
    after = scrape(api)
    scraped = time.time()

    def got(name: str) -> float:
        return after[name][1]

    assert got("torro_rotations_total") == \
        before["torro_rotations_total"][1] + 1
    assert got("torro_rotation_failures_total") == 0
    assert got("torro_current_key_index") == answer["index"] == 1
    assert got("torro_history_size") == 2
    made = iso_ms(answer["timestamp"]) / 1000
    assert got("torro_last_rotation_timestamp_seconds") == made
    assert got("torro_next_rotation_timestamp_seconds") == made + 3600
    assert answered - made - 0.01 <= got("torro_current_key_age_seconds")
    assert got("torro_current_key_age_seconds") <= scraped - made + 0.01
    assert got("torro_current_key_age_seconds") < 5
    assert got("torro_last_rotation_duration_seconds") == \
        pytest.approx(answer["duration_seconds"], abs=1e-6)
    assert got("torro_rotation_interval_seconds") == 3600
    assert got("torro_store_integrity_ok") == 1
    assert got("torro_healthy") == 1
    assert after["torro_build_info"][1:] == (
        1, {"version": torro.__version__}
    )


def test_the_interval_gauge_follows_a_reload(
    api_factory: Callable[..., ApiDaemon],
) -> None:
    """The configured interval is read at each scrape: a SIGHUP after
    .env changed it shows the new value, so an "overdue" rule compares
    the key's age with the interval in force."""
    api = api_factory(KEY_DAEMON_ROTATION_INTERVAL=None)
    env_file = api.cwd / ".env"
    assert value(api, "torro_rotation_interval_seconds") == 3600

    env_file.write_text("KEY_DAEMON_ROTATION_INTERVAL=5400000\n")
    api.process.send_signal(signal.SIGHUP)

    wait_for_value(api, "torro_rotation_interval_seconds", 5400)
    samples = scrape(api)
    assert samples["torro_next_rotation_timestamp_seconds"][1] == \
        samples["torro_last_rotation_timestamp_seconds"][1] + 5400


def test_a_damaged_store_shows_in_the_metrics(api: ApiDaemon) -> None:
    """Editing history.json sets the integrity gauge to 0 and healthy to
    0; a forced rotation is then refused and counted as a failure; after
    ``torro keys restore`` the store is intact again and rotates."""
    rotate(api)
    made = value(api, "torro_rotations_total")
    flip_a_byte(api.cwd / "keys" / "history.json")

    wait_for_value(api, "torro_store_integrity_ok", 0)
    assert value(api, "torro_healthy") == 0
    refused = api.post("/api/daemon/force-rotation", token=FULL_TOKEN)
    assert_error(refused, 503, "unavailable")
    damaged = scrape(api)
    assert damaged["torro_rotation_failures_total"][1] == 1
    assert damaged["torro_rotations_total"][1] == made

    restored = api.torro.run("keys", "restore")
    assert restored.code == 0, restored.stderr
    wait_for_value(api, "torro_store_integrity_ok", 1)
    assert value(api, "torro_healthy") == 1
    rotate(api)
    samples = scrape(api)
    assert samples["torro_rotations_total"][1] == made + 1
    assert samples["torro_rotation_failures_total"][1] == 1
    assert samples["torro_current_key_index"][1] == 2


# -- the alert rules -------------------------------------------------------

def load_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    rules: list[dict[str, Any]] = [
        rule for group in document["groups"] for rule in group["rules"]
    ]
    return rules


def metric_names(expression: str) -> set[str]:
    """Return the metric names an expression selects: the identifiers
    left once strings, label matchers, ranges and function calls are
    taken out."""
    bare = re.sub(r'"(?:[^"\\]|\\.)*"', "", expression)
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", bare)
    bare = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)"
                  r"\s*\([^)]*\)", "", bare)
    names = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()",
                           bare))
    return {
        name for name in names
        if name not in PROMQL_WORDS and not re.fullmatch(r"\d\w*", name)
    }


def test_alert_rules_query_only_what_the_daemon_exposes(
    api: ApiDaemon,
) -> None:
    """Each alert of the rules file is there once, with a severity, a
    summary and a duration; every metric its expression names is one a
    live daemon exposes, or Prometheus's own ``up``."""
    rules = load_rules()
    assert sorted(rule["alert"] for rule in rules) == sorted(ALERTS)
    exposed = set(scrape(api))
    used: dict[str, set[str]] = {}
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule
        assert rule["annotations"]["summary"], rule
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule
        used[rule["alert"]] = metric_names(rule["expr"])
    assert used["TorroDown"] == {"up"}
    assert used["TorroRotationOverdue"] == {
        "torro_current_key_age_seconds", "torro_rotation_interval_seconds",
    }
    assert used["TorroIntegrityFailure"] == {"torro_store_integrity_ok"}
    assert used["TorroRotationFailing"] == {"torro_rotation_failures_total"}
    assert used["TorroUnhealthy"] == {"torro_healthy"}
    for alert, names in used.items():
        assert names - {"up"} <= exposed, (alert, names - exposed)


def test_the_name_finder_finds_names() -> None:
    """The check above is only as good as the name finder: it must see
    every selector and nothing else."""
    assert metric_names(
        'increase(a_total{job="x",le=~"b_c"}[15m]) > 0 and on (job) '
        "b_seconds > 2 * c_seconds unless d offset 5m"
    ) == {"a_total", "b_seconds", "c_seconds", "d"}


PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed"
)


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    checked = subprocess.run(
        [str(PROMTOOL), "check", "rules", str(RULES)],
        capture_output=True, text=True, timeout=30,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in checked.stdout


@needs_promtool
def test_the_rules_fire_on_the_series_they_are_for(tmp_path: Path) -> None:
    """``promtool test rules`` over made-up series, one minute apart:
    each alert fires once its condition has held for its duration, and
    not before; a daemon that rotates on time fires nothing.

    The rules are tested without their annotations, which promtool
    would otherwise compare word for word.
    """
    rules = yaml.safe_load(RULES.read_text())
    severities = {}
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations")
            severities[rule["alert"]] = rule["labels"]["severity"]
    bare_rules = tmp_path / "rules.yml"
    bare_rules.write_text(yaml.safe_dump(rules))

    bad = {"job": "torro", "instance": "bad:3001"}
    good = {"job": "torro", "instance": "good:3001"}

    def series(name: str, labels: dict[str, str], values: str) -> dict[
        str, str
    ]:
        matchers = ",".join(f'{k}="{v}"' for k, v in labels.items())
        return {"series": f"{name}{{{matchers}}}", "values": values}

    def fires(alert: str, at: str, *labelled: dict[str, str]) -> dict[
        str, Any
    ]:
        return {
            "eval_time": at,
            "alertname": alert,
            "exp_alerts": [
                {"exp_labels": {
                    **labels, "severity": severities[alert],
                }}
                for labels in labelled
            ],
        }

    # "bad" has a 5-minute interval and stopped rotating at minute 0, so
    # its key's age passes 2 intervals (600 s) after minute 10; "good"
    # rotates every 5 minutes. "bad" fails a rotation every 5 minutes
    # from minute 20, its store is damaged from minute 30, it stops
    # answering scrapes at minute 40.
    age_good = " ".join(str(60 * (m % 5)) for m in range(61))
    unit = {
        "rule_files": [str(bare_rules)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                series("torro_current_key_age_seconds", bad, "0+60x60"),
                series("torro_rotation_interval_seconds", bad, "300x60"),
                series("torro_current_key_age_seconds", good, age_good),
                series("torro_rotation_interval_seconds", good, "300x60"),
                series(
                    "torro_rotation_failures_total", bad,
                    "0x20 " + " ".join(str(1 + m // 5) for m in range(40)),
                ),
                series("torro_rotation_failures_total", good, "0x60"),
                series("torro_store_integrity_ok", bad, "1x30 0x30"),
                series("torro_store_integrity_ok", good, "1x60"),
                series("torro_healthy", bad, "1x30 0x30"),
                series("torro_healthy", good, "1x60"),
                series("up", bad, "1x40 0x20"),
                series("up", good, "1x60"),
            ],
            "alert_rule_test": [
                fires("TorroRotationOverdue", "15m"),
                fires("TorroRotationOverdue", "25m", bad),
                fires("TorroRotationFailing", "19m"),
                fires("TorroRotationFailing", "26m", bad),
                fires("TorroIntegrityFailure", "29m"),
                fires("TorroIntegrityFailure", "32m", bad),
                fires("TorroUnhealthy", "33m"),
                fires("TorroUnhealthy", "40m", bad),
                fires("TorroDown", "40m"),
                fires("TorroDown", "45m", bad),
            ],
        }],
    }
    unit_file = tmp_path / "torro-alerts-test.yml"
    unit_file.write_text(json.dumps(unit))
    tested = subprocess.run(
        [str(PROMTOOL), "test", "rules", str(unit_file)],
        capture_output=True, text=True, timeout=60,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout
