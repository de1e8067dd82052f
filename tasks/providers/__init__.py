"""LLM providers: each turns a generation request into a stream of tokens."""

from __future__ import annotations

import threading

from bridge.errors import UnknownModelError
from bridge.models import ModelSpec
from tasks.providers.base import Provider
from tasks.providers.builtin import EchoProvider, SyntheticProvider

_BUILTIN: dict[str, Provider] = {"echo": EchoProvider(), "synthetic": SyntheticProvider()}
_upstream: dict[str, Provider] = {}
_lock = threading.Lock()


def provider_for(spec: ModelSpec) -> Provider:
    """The provider of a registry entry; upstream providers are built once per model and reused."""
    builtin = _BUILTIN.get(spec.provider)
    if builtin is not None:
        return builtin
    with _lock:
        provider = _upstream.get(spec.name)
        if provider is None:
            provider = _upstream[spec.name] = _build(spec)
        return provider


def _build(spec: ModelSpec) -> Provider:
    if spec.provider == "openai":
        from tasks.providers.openai import OpenAIChatProvider

        return OpenAIChatProvider(spec)
    if spec.provider == "anthropic":
        from tasks.providers.anthropic import AnthropicMessagesProvider

        return AnthropicMessagesProvider(spec)
    raise UnknownModelError(f"model {spec.name!r} has no task-driven provider ({spec.provider})")


__all__ = ["Provider", "provider_for"]
