"""The root of the client's exceptions: the client package imports nothing of the server's."""

from __future__ import annotations


class TokenbridgeError(Exception):
    """Raised when tokenbridge fails; the root of every exception of this package."""
