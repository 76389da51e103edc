"""The API application: its routes, errors and limits."""

from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from torro import __version__
from torro.api.service import DaemonService


def build_app(service: DaemonService) -> FastAPI:
    app = FastAPI(
        title="Torro key rotation daemon",
        version=__version__,
        docs_url=None,
        redoc_url=None,
    )

    @app.get("/api/daemon/status")
    def status() -> Any:
        health = service.health()
        body = {
            "running": True,
            "healthy": health.healthy,
            "integrity": health.integrity,
            "current_index": health.current_index,
            "last_rotation": health.last_rotation,
            "next_rotation": health.next_rotation,
            "problem": health.problem,
        }
        return JSONResponse(body, status_code=200 if health.healthy else 503)

    return app
