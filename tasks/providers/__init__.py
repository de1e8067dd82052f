"""LLM providers: each turns a generation request into a stream of tokens."""

from __future__ import annotations

from bridge.errors import UnknownModelError
from tasks.providers.base import Provider
from tasks.providers.builtin import EchoProvider, SyntheticProvider

PROVIDERS: dict[str, Provider] = {
    "echo": EchoProvider(),
    "synthetic": SyntheticProvider(),
}


def provider_for(model: str) -> Provider:
    try:
        return PROVIDERS[model]
    except KeyError:
        raise UnknownModelError(f"no provider for model {model!r}") from None


__all__ = ["Provider", "provider_for"]
