"""The HTTP admin API of the daemon.

``create_app`` builds the ASGI application for a running daemon (see
torro.api.service); torro.api.server serves it beside the rotation loop.
The web framework is imported only when the API is built, so that the
CLI and a daemon with KEY_DAEMON_API=false never load it.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torro.api.service import DaemonService


def create_app(service: "DaemonService") -> Any:
    """Build the API application for ``service``."""
    from torro.api.app import build_app

    return build_app(service)
