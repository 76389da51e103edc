"""GET /api/daemon/stats (admin) and GET /metrics (public).

The figures are checked against what the test did (rotations forced,
their durations as answered), against the store on disk (timestamps,
sizes) and against each other: /metrics, parsed with prometheus_client,
must report what stats reports, and neither may hold a key.
"""

import json
import time
from collections.abc import Callable
from typing import Any

from api_checks import (
    FULL_TOKEN,
    READ_TOKEN,
    ApiDaemon,
    assert_error,
    assert_no_key_material,
    iso_ms,
    reveal,
)
from prometheus_client.parser import text_string_to_metric_families


HOUR_MS = 3_600_000
STATS_FIELDS = {
    "rotations", "failed_rotations", "last_rotation_duration_seconds",
    "current_index", "current_key_age_seconds", "history_size",
    "uptime_seconds", "last_rotation", "next_rotation",
}
METRICS = {
    "torro_rotations": "counter",
    "torro_rotation_failures": "counter",
    "torro_last_rotation_duration_seconds": "gauge",
    "torro_last_rotation_timestamp_seconds": "gauge",
    "torro_next_rotation_timestamp_seconds": "gauge",
    "torro_current_key_index": "gauge",
    "torro_current_key_age_seconds": "gauge",
    "torro_history_size": "gauge",
    "torro_uptime_seconds": "gauge",
    "torro_healthy": "gauge",
    "torro_rotation_interval_seconds": "gauge",
    "torro_store_integrity_ok": "gauge",
    "torro_build_info": "gauge",
}


def force_rotations(api: ApiDaemon, times: int) -> list[dict[str, Any]]:
    answers = []
    for _ in range(times):
        response = api.post("/api/daemon/force-rotation", token=FULL_TOKEN)
        assert response.status_code == 200, response.text
        answers.append(response.json())
    return answers


def scrape(api: ApiDaemon) -> tuple[str, dict[str, tuple[str, float]]]:
    """GET /metrics without a token; return its text and, by family
    name, the family's type and single sample value."""
    response = api.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    families = {}
    for family in text_string_to_metric_families(response.text):
        assert len(family.samples) == 1, family
        families[family.name] = (family.type, family.samples[0].value)
    return response.text, families


def test_stats_report_rotations_timings_and_sizes(api: ApiDaemon) -> None:
    """stats, for a read-only or a full token, counts the rotations this
    daemon made, gives the last one's duration as force-rotation
    answered it, the current key's index, time and age, the history
    size, a growing uptime, and the next rotation an interval after the
    last; without a token it is 401."""
    first = api.get("/api/daemon/stats", token=READ_TOKEN)
    assert first.status_code == 200, first.text
    before = first.json()
    assert set(before) == STATS_FIELDS
    assert before["failed_rotations"] == 0
    assert before["history_size"] == 1
    assert before["current_index"] == 0

    answers = force_rotations(api, 2)
    requested = time.time()
    stats = api.get("/api/daemon/stats", token=FULL_TOKEN).json()
    answered = time.time()
    assert stats["rotations"] == before["rotations"] + 2
    assert stats["failed_rotations"] == 0
    assert round(stats["last_rotation_duration_seconds"], 6) == \
        answers[-1]["duration_seconds"]
    assert stats["current_index"] == 2
    assert stats["history_size"] == 3
    assert stats["last_rotation"] == answers[-1]["timestamp"]
    last_ms = iso_ms(stats["last_rotation"])
    record = json.loads((api.cwd / "keys" / "current.json").read_text())
    assert record["timestamp"] == last_ms
    assert iso_ms(stats["next_rotation"]) == last_ms + HOUR_MS
    age = stats["current_key_age_seconds"]
    assert requested - last_ms / 1000 - 0.01 <= age
    assert age <= answered - last_ms / 1000 + 0.01
    assert stats["uptime_seconds"] > before["uptime_seconds"]

    assert_error(api.get("/api/daemon/stats"), 401, "unauthorized")


def test_metrics_match_stats_and_hold_no_key(api: ApiDaemon) -> None:
    """/metrics is public Prometheus text with the daemon's metrics,
    each equal to what stats and the store say (healthy is 1), and no
    run of any retained key's hex digits."""
    force_rotations(api, 2)
    stats = api.get("/api/daemon/stats", token=READ_TOKEN).json()
    text, families = scrape(api)
    stats_after = api.get("/api/daemon/stats", token=READ_TOKEN).json()

    assert {name: kind for name, (kind, _) in families.items()} == METRICS
    value = {name: number for name, (_, number) in families.items()}
    assert value["torro_rotations"] == stats["rotations"]
    assert value["torro_rotation_failures"] == stats["failed_rotations"] == 0
    assert value["torro_last_rotation_duration_seconds"] == \
        stats["last_rotation_duration_seconds"]
    assert value["torro_last_rotation_timestamp_seconds"] * 1000 == \
        iso_ms(stats["last_rotation"])
    assert value["torro_next_rotation_timestamp_seconds"] * 1000 == \
        iso_ms(stats["next_rotation"])
    assert value["torro_current_key_index"] == stats["current_index"] == 2
    assert value["torro_history_size"] == stats["history_size"] == 3
    assert value["torro_healthy"] == 1
    assert stats["uptime_seconds"] <= value["torro_uptime_seconds"] <= \
        stats_after["uptime_seconds"]
    assert stats["current_key_age_seconds"] <= \
        value["torro_current_key_age_seconds"] <= \
        stats_after["current_key_age_seconds"]

    keys = [reveal(api, index)["key"] for index in range(3)]
    assert_no_key_material(text, keys)
    _, again = scrape(api)
    assert again["torro_rotations"] == families["torro_rotations"]
    force_rotations(api, 1)
    _, later = scrape(api)
    assert later["torro_rotations"][1] == value["torro_rotations"] + 1
    assert later["torro_current_key_index"][1] == 3


def test_metrics_and_stats_count_a_failed_rotation(
    api_factory: Callable[..., ApiDaemon],
) -> None:
    """A forced rotation the store refuses (current.json of a chain of
    two keys was removed) is counted as failed by stats and by /metrics,
    which also report the daemon unhealthy."""
    api = api_factory(KEY_DAEMON_SLEEP_INTERVAL="100")
    force_rotations(api, 1)
    (api.cwd / "keys" / "current.json").unlink()
    deadline = time.monotonic() + 10
    while api.get("/api/daemon/status").status_code != 503:
        assert time.monotonic() < deadline, "the damage went unnoticed"
        time.sleep(0.05)
    refused = api.post("/api/daemon/force-rotation", token=FULL_TOKEN)
    assert_error(refused, 503, "unavailable")
    stats = api.get("/api/daemon/stats", token=READ_TOKEN).json()
    assert stats["failed_rotations"] == 1
    assert stats["rotations"] >= 2
    _, families = scrape(api)
    assert families["torro_rotation_failures"][1] == 1
    assert families["torro_healthy"][1] == 0
