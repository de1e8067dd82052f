"""The models a generation can name, and the options each accepts.

``echo`` and ``synthetic`` are always present and need no network. Providers (in ``tasks/``) read the
options through these classes, and the web validates them at submission, so both agree on one schema.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ModelOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EchoOptions(ModelOptions):
    delay_ms: int = Field(default=0, ge=0, le=10_000, description="pause before each token, in milliseconds")


class SyntheticOptions(ModelOptions):
    tokens_per_second: float = Field(default=20.0, gt=0, le=100_000)
    seed: int | None = Field(default=None, description="seed of the pseudo-text; default derives from the prompt")
    # Fault injection, for testing what readers see when a model misbehaves.
    fail_before_first: int = Field(default=0, ge=0, le=10, description="tries that fail before the first token")
    fail_after_tokens: int | None = Field(default=None, ge=0, description="fail after this many tokens")
    stall_after_tokens: int | None = Field(default=None, ge=0, description="go silent after this many tokens")


BUILTIN_MODELS: dict[str, type[ModelOptions]] = {
    "echo": EchoOptions,
    "synthetic": SyntheticOptions,
}

SYNTHETIC_DEFAULT_MAX_TOKENS = 256


def available_models() -> list[str]:
    return sorted(BUILTIN_MODELS)


def parse_options(model: str, options: dict[str, Any] | None) -> ModelOptions:
    """Validate ``options`` for ``model``; raises KeyError for an unknown model, ValidationError for bad options."""
    return BUILTIN_MODELS[model].model_validate(options or {})
