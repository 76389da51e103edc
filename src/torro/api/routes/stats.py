"""``GET /api/daemon/stats`` and ``GET /metrics``: the daemon's figures.

Both report the same figures, as JSON for an admin and in the Prometheus
text format for a scraper. Neither holds key material; the metrics are
public, like a health check.

Metrics, from a registry of the daemon's own (never the process-wide
default one): ``torro_rotations_total``,
``torro_rotation_failures_total``, ``torro_last_rotation_duration_seconds``,
``torro_last_rotation_timestamp_seconds``,
``torro_next_rotation_timestamp_seconds``, ``torro_current_key_index``,
``torro_current_key_age_seconds``, ``torro_history_size``,
``torro_uptime_seconds`` and ``torro_healthy`` (1 or 0).

prometheus-client is imported on the first scrape, not at start-up.
"""

from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel
from starlette.responses import Response

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
        figures = service.stats()
        current = service.view.current
        due = figures["next_rotation"]
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
                "When the current key was made, seconds since the epoch.",
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
                "Age of the current key.",
                figures["current_key_age_seconds"],
            ),
            (
                "torro_history_size",
                "Keys retained, the current key included.",
                figures["history_size"],
            ),
            (
                "torro_uptime_seconds",
                "Seconds since the daemon started.",
                figures["uptime_seconds"],
            ),
            (
                "torro_healthy",
                "1 when GET /api/daemon/status answers 200, else 0.",
                1 if service.health().healthy else 0,
            ),
        ]
        for name, documentation, value in gauges:
            if value is not None:
                yield GaugeMetricFamily(name, documentation, value=value)


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
