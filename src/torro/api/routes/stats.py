"""``GET /api/daemon/stats`` and ``GET /metrics``: the daemon's figures.

Both report the same figures, as JSON for an admin and in the Prometheus
text format for a scraper. Neither holds key material; the metrics are
public, like a health check.

Metrics, from a registry of the daemon's own (never the process-wide
default one), named for dashboards and alert rules
(deploy/prometheus/torro-alerts.yml uses them):

- counters, since the daemon started: ``torro_rotations_total``,
  ``torro_rotation_failures_total``;
- the current key: ``torro_last_rotation_timestamp_seconds`` (when it
  was made: the last successful rotation, by any process),
  ``torro_current_key_age_seconds``, ``torro_current_key_index``,
  ``torro_next_rotation_timestamp_seconds``;
- the schedule as configured now (a SIGHUP may change it):
  ``torro_rotation_interval_seconds``;
- the store: ``torro_history_size`` (keys retained) and
  ``torro_store_integrity_ok`` (0 when the store failed its integrity
  check, else 1);
- the daemon: ``torro_healthy`` (1 when GET /api/daemon/status answers
  200, else 0), ``torro_last_rotation_duration_seconds``,
  ``torro_uptime_seconds`` and ``torro_build_info`` (1, labelled with
  the version).

A figure that does not exist yet (no key, no rotation by this daemon)
is left out rather than reported as 0.

prometheus-client is imported on the first scrape, not at start-up.
"""

from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel
from starlette.responses import Response

from torro import __version__
from torro.api.endpoints import READ, Call, Endpoint
from torro.api.service import DaemonService
from torro.manager import iso_time


class Stats(BaseModel):
    """The daemon's figures since it started."""

    rotations: int
    failed_rotations: int
    last_rotation_duration_seconds: float | None
    current_index: int | None
    current_key_age_seconds: float | None
    history_size: int
    uptime_seconds: float
    last_rotation: str | None
    next_rotation: str | None


def stats_of(service: DaemonService) -> Stats:
    """Return the figures of ``service`` in the shape of the API."""
    figures = service.stats()
    current = service.view.current
    due = figures["next_rotation"]
    return Stats(
        rotations=figures["rotations"],
        failed_rotations=figures["failed_rotations"],
        last_rotation_duration_seconds=figures[
            "last_rotation_duration_seconds"
        ],
        current_index=None if current is None else current.index,
        current_key_age_seconds=figures["current_key_age_seconds"],
        history_size=figures["history_size"],
        uptime_seconds=figures["uptime_seconds"],
        last_rotation=None if current is None
        else iso_time(current.timestamp),
        next_rotation=None if due is None else iso_time(due),
    )


def stats(call: Call) -> Stats:
    """Rotations, failures and timings since the daemon started.

    Needs a read-only or a full admin token.
    """
    return stats_of(call.service)


def metrics(call: Call) -> Response:
    """The figures of ``GET stats`` in the Prometheus text format; public.
    """
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    service = call.service
    with service.lock_metrics:
        if service.metrics_registry is None:
            service.metrics_registry = _registry(service)
    registry = service.metrics_registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


def _registry(service: DaemonService) -> Any:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(service))
    return registry


class StatsCollector:
    """Read the daemon's figures at each scrape.

    :param service: the daemon whose figures are reported.
    """

    def __init__(self, service: DaemonService) -> None:
        self.service = service

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
        )

        service = self.service
        # health first: it may reload the store, and every figure below
        # is then read from the same, freshest view
        health = service.health()
        figures = service.stats()
        current = service.view.current
        due = figures["next_rotation"]
        interval_ms = service.daemon.policy.rotation_interval_ms
        yield CounterMetricFamily(
            "torro_rotations",
            "Rotations made by this daemon since it started.",
            value=figures["rotations"],
        )
        yield CounterMetricFamily(
            "torro_rotation_failures",
            "Rotations that failed since the daemon started.",
            value=figures["failed_rotations"],
        )
        gauges: list[tuple[str, str, float | int | None]] = [
            (
                "torro_last_rotation_duration_seconds",
                "Seconds the last rotation of this daemon took.",
                figures["last_rotation_duration_seconds"],
            ),
            (
                "torro_last_rotation_timestamp_seconds",
                "When the current key was made (the last successful "
                "rotation), seconds since the epoch.",
                None if current is None else current.timestamp / 1000,
            ),
            (
                "torro_next_rotation_timestamp_seconds",
                "When the current key falls due, seconds since the epoch.",
                None if due is None else due / 1000,
            ),
            (
                "torro_current_key_index",
                "Index of the current key.",
                None if current is None else current.index,
            ),
            (
                "torro_current_key_age_seconds",
                "Seconds since the current key was made.",
                figures["current_key_age_seconds"],
            ),
            (
                "torro_rotation_interval_seconds",
                "Seconds a key stays current (KEY_DAEMON_ROTATION_INTERVAL).",
                interval_ms / 1000,
            ),
            (
                "torro_history_size",
                "Keys retained, the current key included.",
                figures["history_size"],
            ),
            (
                "torro_store_integrity_ok",
                "0 when the key store failed its integrity check, else 1.",
                0 if health.integrity == "failed" else 1,
            ),
            (
                "torro_uptime_seconds",
                "Seconds since the daemon started.",
                figures["uptime_seconds"],
            ),
            (
                "torro_healthy",
                "1 when GET /api/daemon/status answers 200, else 0.",
                1 if health.healthy else 0,
            ),
        ]
        for name, documentation, value in gauges:
            if value is not None:
                yield GaugeMetricFamily(name, documentation, value=value)
        build = GaugeMetricFamily(
            "torro_build_info",
            "Always 1, labelled with the version of the running daemon.",
            labels=["version"],
        )
        build.add_metric([__version__], 1)
        yield build


ENDPOINTS = [
    Endpoint(
        "GET",
        "/api/daemon/stats",
        stats,
        reply=Stats,
        access=READ,
    ),
    Endpoint(
        "GET",
        "/metrics",
        metrics,
        reply=None,
        media_type="text/plain",
        tag="metrics",
    ),
]
