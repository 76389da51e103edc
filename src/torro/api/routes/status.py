"""``GET /api/daemon/status``: is the daemon healthy, and its schedule.

Public, so that a health check needs no secret::

    curl -f http://localhost:3001/api/daemon/status || exit 1

answers 200 when the daemon is healthy and 503 when it is not: the key
store failed its integrity check, holds no key, is dated ahead of the
clock, or the current key is overdue by more than two rotation
intervals. The public body holds no key material. With an admin token,
read-only or full, it adds the configuration (secrets redacted) and the
figures of ``GET stats``; a wrong token is refused, not served the
public view.
"""

from typing import Any

from pydantic import BaseModel
from starlette.responses import JSONResponse

from torro.api.endpoints import OPTIONAL, Call, Endpoint
from torro.api.errors import ErrorDetail
from torro.api.routes.stats import Stats, stats_of
from torro.manager import iso_time


class StatusBody(BaseModel):
    """The daemon's health; configuration and stats for an admin.

    ``error`` is there when the daemon is unhealthy (503), with
    ``problem`` as its message.
    """

    running: bool
    healthy: bool
    integrity: str
    current_index: int | None
    last_rotation: str | None
    next_rotation: str | None
    problem: str | None
    error: ErrorDetail | None = None
    configuration: dict[str, str] | None = None
    stats: Stats | None = None


def status(call: Call) -> JSONResponse:
    """Whether the daemon is healthy: 200 if so, 503 if not.

    Public without an Authorization header. With one, the token must be
    valid (read-only or full), and the reply adds the configuration and
    the stats.
    """
    service = call.service
    health = service.health()
    fields: dict[str, Any] = {
        "running": True,
        "healthy": health.healthy,
        "integrity": health.integrity,
        "current_index": health.current_index,
        "last_rotation": _iso(health.last_rotation),
        "next_rotation": _iso(health.next_rotation),
        "problem": health.problem,
    }
    if not health.healthy:
        fields["error"] = ErrorDetail(
            code="unhealthy", message=health.problem or "unhealthy"
        )
    if call.caller is not None:
        fields["configuration"] = service.settings.describe()
        fields["stats"] = stats_of(service)
    body = StatusBody(**fields)
    return JSONResponse(
        body.model_dump(mode="json", exclude_unset=True),
        status_code=200 if health.healthy else 503,
    )


def _iso(ms: int | None) -> str | None:
    return None if ms is None else iso_time(ms)


ENDPOINTS = [
    Endpoint(
        "GET",
        "/api/daemon/status",
        status,
        reply=StatusBody,
        access=OPTIONAL,
        replies={503: StatusBody},
    ),
]
