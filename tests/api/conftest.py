"""Fixtures of the API tests: a real daemon with its HTTP API up.

The daemon and its client are in api_daemon.py, which test modules
import by that name.
"""

from api_daemon import api, api_factory

__all__ = ["api", "api_factory"]
