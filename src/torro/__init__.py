"""Torro: a key rotation daemon for license servers."""

__version__ = "0.1.0"
