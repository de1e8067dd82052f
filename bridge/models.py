"""The models a generation can name: the model registry, and the options each built-in model accepts.

``echo`` and ``synthetic`` are always present and need no network; ``external`` generations are fed by an
outside producer. Real models come from a TOML file named by ``MODELS_FILE``::

    [models.llama3]
    provider = "openai"                       # OpenAI-compatible Chat Completions (vLLM, Ollama, ...)
    base_url = "http://127.0.0.1:11434/v1"
    model = "llama3.1:8b"                     # the upstream model name (default: the table name)
    api_key_env = "OLLAMA_API_KEY"            # environment variable holding the key (optional)
    max_tokens = 4096                         # ceiling on a request's max_tokens
    concurrency = 8                           # generations of this model running at once
    timeout_s = 60                            # connect/read timeout towards the upstream

The web validates requests against the registry and the providers (in ``tasks/``) read it, so both agree.
"""

from __future__ import annotations

import os
import tomllib
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bridge.errors import TokenbridgeError


class ModelOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EchoOptions(ModelOptions):
    delay_ms: int = Field(default=0, ge=0, le=10_000, description="pause before each token, in milliseconds")


class SyntheticOptions(ModelOptions):
    tokens_per_second: float = Field(default=20.0, gt=0, le=100_000)
    seed: int | None = Field(
        default=None, description="seed of the pseudo-text; default: the request's seed, or one from the prompt"
    )
    # Fault injection, for testing what readers see when a model misbehaves.
    fail_before_first: int = Field(default=0, ge=0, le=10, description="tries that fail before the first token")
    fail_after_tokens: int | None = Field(default=None, ge=0, description="fail after this many tokens")
    stall_after_tokens: int | None = Field(default=None, ge=0, description="go silent after this many tokens")


class UpstreamOptions(ModelOptions):
    """Options of a real model: none yet beyond the request's own fields."""


ProviderKind = Literal["echo", "synthetic", "external", "openai", "anthropic"]

# What a provider may not take, by the name a registry entry's ``drop_params`` gives it (bridge.capabilities):
# request fields, and ``strict`` (of response_format.json_schema and of tools) and ``detail`` (of image parts).
DROPPABLE_PARAMS = ("top_k", "seed", "presence_penalty", "frequency_penalty", "logit_bias", "strict", "detail")

OPTIONS: dict[str, type[ModelOptions]] = {
    "echo": EchoOptions,
    "synthetic": SyntheticOptions,
    "external": UpstreamOptions,
    "openai": UpstreamOptions,
    "anthropic": UpstreamOptions,
}


class ModelSpec(BaseModel):
    """One entry of the registry."""

    # A validation error names the field, never its value: `headers` may carry a provider's key.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    name: str
    provider: ProviderKind
    base_url: str | None = None
    model: str | None = Field(default=None, description="upstream model name; default: the registry name")
    api_key_env: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    concurrency: int | None = Field(default=None, ge=1)
    # Below PROVIDER_IDLE_TIMEOUT_S, so that a hung upstream is retried before the generation times out.
    timeout_s: float = Field(default=30.0, gt=0)
    headers: dict[str, str] = Field(default_factory=dict)
    fallback: str | None = Field(
        default=None, description="model that takes new generations while this one's circuit is open"
    )
    cache_ttl_s: float | None = Field(
        default=None, gt=0, description="cache answers that complete with stop for this long (exact match)"
    )
    drop_params: tuple[str, ...] = Field(
        default=(),
        description="parameters the provider does not take that are dropped (and named in the answer's "
        "x-tokenbridge-dropped-params header) instead of refused with 422",
    )

    @field_validator("drop_params")
    @classmethod
    def _droppable(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(names) - set(DROPPABLE_PARAMS))
        if unknown:
            raise ValueError(f"cannot drop {', '.join(unknown)}: drop_params takes {', '.join(DROPPABLE_PARAMS)}")
        return names

    @property
    def upstream_model(self) -> str:
        return self.model or self.name

    def api_key(self) -> str | None:
        """The key from the environment (never stored, never logged)."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def options_class(self) -> type[ModelOptions]:
        return OPTIONS[self.provider]


class ModelRegistryError(TokenbridgeError):
    """Raised when the models file cannot be read or is invalid."""


BUILTIN: dict[str, ModelSpec] = {
    "echo": ModelSpec(name="echo", provider="echo"),
    "synthetic": ModelSpec(name="synthetic", provider="synthetic"),
    "external": ModelSpec(name="external", provider="external"),
}

SYNTHETIC_DEFAULT_MAX_TOKENS = 256


def load_registry(models_file: str | None) -> dict[str, ModelSpec]:
    """The built-in models plus those of ``models_file`` (TOML); raises ModelRegistryError."""
    registry = dict(BUILTIN)
    if not models_file:
        return registry
    try:
        document = tomllib.loads(Path(models_file).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ModelRegistryError(f"cannot read MODELS_FILE {models_file}: {exc}") from exc
    for name, table in (document.get("models") or {}).items():
        if name in BUILTIN:
            raise ModelRegistryError(f"{models_file}: {name!r} is a built-in model name")
        try:
            spec = ModelSpec.model_validate({"name": name, **table})
        except ValidationError as exc:
            raise ModelRegistryError(f"{models_file}: model {name!r}: {exc}") from exc
        if spec.provider in ("openai", "anthropic") and not spec.base_url:
            raise ModelRegistryError(f"{models_file}: model {name!r} needs a base_url")
        registry[name] = spec
    for spec in registry.values():
        if spec.fallback is not None and (spec.fallback not in registry or spec.fallback == spec.name):
            raise ModelRegistryError(
                f"{models_file}: model {spec.name!r}: fallback {spec.fallback!r} is not another model"
            )
    return registry


@cache
def registry_for(models_file: str | None) -> dict[str, ModelSpec]:
    return load_registry(models_file)


def parse_options(spec: ModelSpec, options: dict[str, Any] | None) -> ModelOptions:
    """Validate ``options`` for a model; raises ValidationError."""
    return spec.options_class().model_validate(options or {})
