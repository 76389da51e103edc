"""The API's endpoints, one module per group.

========================  =================================================
module                    endpoints
========================  =================================================
``status``                ``GET /api/daemon/status``
``keys``                  ``GET /api/daemon/current-key``,
                          ``GET /api/daemon/key/{index}``,
                          ``GET /api/daemon/history``
``control``               ``POST /api/daemon/force-rotation``,
                          ``POST /api/daemon/reset``
``stats``                 ``GET /api/daemon/stats``, ``GET /metrics``
``validate``              ``POST /api/daemon/validate-key``
``licenses``              ``POST /api/licenses``,
                          ``POST /api/licenses/validate``,
                          ``GET /.well-known/jwks.json``
========================  =================================================

Each module defines its models and handlers and ends with its
``ENDPOINTS`` (see torro.api.endpoints). A handler is handed the caller,
already checked, and the parsed input; it calls one method of
:class:`~torro.api.service.DaemonService` and formats the reply.
"""

from torro.api.endpoints import Endpoint


def all_endpoints() -> list[Endpoint]:
    """Return every endpoint of the API, in the order of the document."""
    from torro.api.routes import (
        control,
        keys,
        licenses,
        stats,
        status,
        validate,
    )

    return [
        *status.ENDPOINTS,
        *keys.ENDPOINTS,
        *control.ENDPOINTS,
        *stats.ENDPOINTS,
        *validate.ENDPOINTS,
        *licenses.ENDPOINTS,
    ]
