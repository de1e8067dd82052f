"""What each provider takes of a request, and what becomes of the rest.

Nothing of a request is dropped silently. A field the model's provider cannot honour is refused (422, naming
it), unless the model's registry entry lists it in ``drop_params``: it is then dropped before the request is
stored, and the answer names it (``x-tokenbridge-dropped-params``). ``web`` applies this at submission (``adapt``);
the HTTP providers check the stored request again before sending it (``problems``), in case the registry changed.

- ``openai`` takes every field but ``top_k``.
- ``anthropic`` takes no ``seed``, ``presence_penalty``, ``frequency_penalty`` or ``logit_bias``, no
  ``temperature`` above 1, no image ``detail`` but ``auto``, and no ``strict`` (of ``response_format`` or a
  tool). Its ``response_format`` is a forced tool (``tasks.providers.anthropic``): not with ``tools`` or
  ``tool_choice`` of the request's own, and only for a schema whose root is an object.
- ``echo`` and ``synthetic`` take no images (they answer with text made from the text); they ignore the
  sampling fields, ``response_format`` and tools, as stand-ins for a model. ``external`` takes everything: its
  producer decides.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bridge.content import ImagePart
from bridge.generation import GenerationRequest
from bridge.models import DROPPABLE_PARAMS, ModelSpec

ANTHROPIC_MAX_TEMPERATURE = 1.0
_REFUSED_PARAMS = {
    "openai": ("top_k",),
    "anthropic": ("seed", "presence_penalty", "frequency_penalty", "logit_bias"),
}


@dataclass(frozen=True, slots=True)
class Problem:
    """Something of a request that a model cannot honour: where it is in the request, why, and the name
    ``drop_params`` may drop it by (None: it cannot be dropped)."""

    field: str
    message: str
    param: str | None = None

    def detail(self) -> dict[str, str]:
        """The problem as an entry of a 422's ``details``."""
        return {"field": self.field, "message": self.message, "type": "unsupported_by_model"}


@dataclass(frozen=True, slots=True)
class Adapted:
    """A request as its model takes it: what was dropped to get there, or what it refuses (then nothing is)."""

    request: GenerationRequest
    dropped: tuple[str, ...] = ()
    refused: tuple[Problem, ...] = ()


def problems(spec: ModelSpec, request: GenerationRequest) -> list[Problem]:
    """Everything of ``request`` that ``spec``'s provider cannot honour."""
    found = [
        Problem(name, f"{_who(spec)} does not take {name}{_DROP_HINT.format(name=name)}", name)
        for name in _REFUSED_PARAMS.get(spec.provider, ())
        if getattr(request, name) is not None
    ]
    if spec.provider == "anthropic":
        found += _anthropic(spec, request)
    elif spec.provider in ("echo", "synthetic"):
        found += [
            Problem(field, f"{_who(spec)} takes no images: it answers with text made from the text parts")
            for field, _ in _images(request)
        ]
    return found


def adapt(spec: ModelSpec, request: GenerationRequest) -> Adapted:
    """``request`` without what ``spec`` drops (its ``drop_params``), or the problems it refuses."""
    found = problems(spec, request)
    refused = tuple(p for p in found if p.param is None or p.param not in spec.drop_params)
    if refused:
        return Adapted(request, refused=refused)
    dropping = sorted({p.param for p in found if p.param is not None}, key=DROPPABLE_PARAMS.index)
    if not dropping:
        return Adapted(request)
    data = request.model_dump(mode="json", exclude_none=True)
    for param in dropping:
        _drop(data, param)
    return Adapted(GenerationRequest.model_validate(data), tuple(dropping))


_DROP_HINT = ": leave it out, or list {name!r} in the model's drop_params to have it dropped"


def _who(spec: ModelSpec) -> str:
    return f"model {spec.name!r} ({spec.provider})"


def _images(request: GenerationRequest) -> Iterator[tuple[str, ImagePart]]:
    """Each image part of the request, with where it is."""
    for i, message in enumerate(request.messages or []):
        if isinstance(message.content, list):
            for j, part in enumerate(message.content):
                if isinstance(part, ImagePart):
                    yield f"messages.{i}.content.{j}", part


def _anthropic(spec: ModelSpec, request: GenerationRequest) -> list[Problem]:
    found = []
    if request.temperature is not None and request.temperature > ANTHROPIC_MAX_TEMPERATURE:
        found.append(Problem("temperature", f"{_who(spec)} takes a temperature from 0 to 1"))
    for field, part in _images(request):
        if part.image_url.detail not in (None, "auto"):
            message = f"{_who(spec)} has no image detail{_DROP_HINT.format(name='detail')}"
            found.append(Problem(f"{field}.image_url.detail", message, "detail"))
    for i, tool in enumerate(request.tools or []):
        if tool.function.strict:
            message = f"{_who(spec)} has no strict tools{_DROP_HINT.format(name='strict')}"
            found.append(Problem(f"tools.{i}.function.strict", message, "strict"))
    return found + _anthropic_format(spec, request)


def _anthropic_format(spec: ModelSpec, request: GenerationRequest) -> list[Problem]:
    """``response_format`` becomes a forced tool: alone, and its schema an object."""
    response_format = request.response_format
    if response_format is None or response_format.type == "text":
        return []
    found = []
    if request.tools is not None or request.tool_choice is not None:
        found.append(
            Problem(
                "response_format",
                f"{_who(spec)} answers in JSON through a tool of its own, so not together with tools or tool_choice",
            )
        )
    json_schema = response_format.json_schema
    if json_schema is not None and (json_schema.schema_ or {}).get("type", "object") != "object":
        found.append(
            Problem("response_format.json_schema.schema", f"{_who(spec)} takes a schema whose root is an object")
        )
    if json_schema is not None and json_schema.strict:
        message = (
            f"{_who(spec)} follows the schema through a forced tool, without the guarantee of strict"
            f"{_DROP_HINT.format(name='strict')}"
        )
        found.append(Problem("response_format.json_schema.strict", message, "strict"))
    return found


def _drop(data: dict[str, Any], param: str) -> None:
    """Take ``param`` out of a request (as JSON)."""
    if param == "strict":
        json_schema = (data.get("response_format") or {}).get("json_schema") or {}
        json_schema.pop("strict", None)
        for tool in data.get("tools") or []:
            tool["function"].pop("strict", None)
    elif param == "detail":
        for message in data.get("messages") or []:
            for part in message["content"] if isinstance(message.get("content"), list) else []:
                part.get("image_url", {}).pop("detail", None)
    else:
        data.pop(param, None)
