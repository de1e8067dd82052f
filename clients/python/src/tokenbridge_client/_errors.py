"""The root of the client's exceptions (in the server's package it is ``bridge.errors.TokenbridgeError``)."""

from __future__ import annotations


class TokenbridgeError(Exception):
    """Raised when tokenbridge fails; the root of every exception of this package."""
