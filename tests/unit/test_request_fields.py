"""What each field of a request becomes upstream, per provider, against a local server speaking the recorded wire
formats (docs/models.md#wire-formats): content parts, sampling, response_format and user. And what a provider
cannot take: refused by name, or dropped where its registry entry says so (bridge.capabilities)."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from app.inputs import validation_details
from bridge import capabilities
from bridge.content import data_uri
from bridge.errors import ProviderError
from bridge.generation import GenerationRequest
from bridge.models import ModelRegistryError, ModelSpec, load_registry
from bridge.producer import Finish
from tasks.providers.anthropic import AnthropicMessagesProvider
from tasks.providers.connections import new_client
from tasks.providers.upstream import UpstreamProvider
from tests.support.scripted_upstream import run, split_finish, streaming
from tests.support.wire_formats import (
    ANTHROPIC,
    DONE,
    MESSAGE_STOP,
    OPENAI,
    block_stop,
    chat_chunk,
    json_delta,
    message_delta,
    message_start,
    text_delta,
    tool_use_start,
    usage_chunk,
)

# A PNG of one pixel, inline, and an image by URL.
PIXEL_DATA = base64.b64encode(bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000")).decode()
PIXEL = f"data:image/png;base64,{PIXEL_DATA}"
CAT = "https://images.example.com/cat.jpg"

SCHEMA = {
    "type": "object",
    "properties": {"animal": {"type": "string"}, "count": {"type": "integer"}},
    "required": ["animal", "count"],
    "additionalProperties": False,
}
JSON_SCHEMA = {
    "type": "json_schema",
    "json_schema": {"name": "animals", "description": "What is seen", "schema": SCHEMA},
}
TOOLS = [{"type": "function", "function": {"name": "zoom", "parameters": {"type": "object"}}}]


def _looking_at_images(detail: str = "high") -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in "},
                {"type": "text", "text": "these?"},
                {"type": "image_url", "image_url": {"url": CAT, "detail": detail}},
                {"type": "image_url", "image_url": {"url": PIXEL}},
            ],
        },
    ]


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., UpstreamProvider]]:
    """``create(wire, base_url, **spec_fields)``: a provider of ``wire``'s API on a client that the fixture closes."""
    clients: list[httpx.Client] = []

    def create(wire: Any, base_url: str, **fields: Any) -> UpstreamProvider:
        monkeypatch.setenv(wire.key_env, wire.key)
        clients.append(new_client())
        return wire.provider(wire.spec(base_url, **fields), client=clients[-1])  # type: ignore[no-any-return]

    yield create
    for client in clients:
        client.close()


OPENAI_ANSWER = streaming(chat_chunk("ok", role="assistant"), chat_chunk(finish_reason="stop"), usage_chunk(9, 1), DONE)
ANTHROPIC_ANSWER = streaming(*ANTHROPIC.opening, text_delta("ok"), *ANTHROPIC.closing)


# ---------------------------------------------------------------------------------------------------------------
# OpenAI-compatible: every field as it came.


def test_an_openai_compatible_upstream_gets_every_field_as_it_came(upstream: Any, provider: Any) -> None:
    # Given a request with content parts (text, an image by URL, one inline), every sampling field, a JSON schema
    # answer, tools and an end user
    fields: dict[str, Any] = {
        "top_p": 0.9,
        "seed": 42,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.25,
        "logit_bias": {"50256": -100, "11": 2.5},
        "parallel_tool_calls": False,
        "response_format": {**JSON_SCHEMA, "json_schema": {**JSON_SCHEMA["json_schema"], "strict": True}},
        "user": "user-7f3a",
        "tools": TOOLS,
    }
    request = GenerationRequest.model_validate({"model": "openai", "messages": _looking_at_images(), **fields})
    server = upstream(OPENAI_ANSWER)

    # When the provider streams it
    tokens, _ = split_finish(run(provider(OPENAI, server.base_url), request))

    # Then the upstream got the messages and each field exactly as they were sent, under their own names
    assert tokens == ["ok"]
    assert server.requests[0].body == {
        "model": "openai",
        "messages": _looking_at_images(),
        "stream": True,
        "stream_options": {"include_usage": True},
        **fields,
    }


def test_an_openai_compatible_upstream_gets_nothing_that_was_not_asked_for(upstream: Any, provider: Any) -> None:
    server = upstream(OPENAI_ANSWER)
    run(provider(OPENAI, server.base_url), GenerationRequest(model="openai", prompt="Hi"))
    assert set(server.requests[0].body) == {"model", "messages", "stream", "stream_options"}


@pytest.mark.parametrize(("name", "value"), [("json_object", {"type": "json_object"}), ("text", {"type": "text"})])
def test_the_other_response_formats_go_as_they_came(upstream: Any, provider: Any, name: str, value: Any) -> None:
    server = upstream(OPENAI_ANSWER)
    run(provider(OPENAI, server.base_url), GenerationRequest(model="openai", prompt="Hi", response_format=value))
    assert server.requests[0].body["response_format"] == value


# ---------------------------------------------------------------------------------------------------------------
# Anthropic: each field translated.


def test_an_anthropic_upstream_gets_image_blocks_sampling_and_the_user_as_metadata(
    upstream: Any, provider: Any
) -> None:
    # Given a request with text and image parts, top_p, top_k, an end user, and tools that may not run in parallel
    request = GenerationRequest.model_validate(
        {
            "model": "anthropic",
            "messages": _looking_at_images(detail="auto"),
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 40,
            "user": "user-7f3a",
            "tools": TOOLS,
            "parallel_tool_calls": False,
        }
    )
    server = upstream(ANTHROPIC_ANSWER)

    # When the provider streams it
    tokens, _ = split_finish(run(provider(ANTHROPIC, server.base_url), request))

    # Then the parts are Messages API blocks (the images by URL and in base64), the sampling fields keep their names,
    # the user is metadata.user_id and parallel_tool_calls false is disable_parallel_tool_use
    assert tokens == ["ok"]
    assert server.requests[0].body == {
        "model": "anthropic",
        "max_tokens": 1024,
        "system": "Be brief.",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in "},
                    {"type": "text", "text": "these?"},
                    {"type": "image", "source": {"type": "url", "url": CAT}},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL_DATA}},
                ],
            }
        ],
        "stream": True,
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 40,
        "metadata": {"user_id": "user-7f3a"},
        "tools": [{"name": "zoom", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    }


@pytest.mark.parametrize(
    ("choice", "parallel", "sent"),
    [
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        ("none", False, {"type": "none"}),
        ("auto", True, {"type": "auto"}),
        (None, True, None),
    ],
)
def test_parallel_tool_calls_goes_into_the_tool_choice(choice: Any, parallel: bool, sent: Any) -> None:
    spec = ANTHROPIC.spec("http://127.0.0.1:9/v1")
    request = GenerationRequest(model="a", prompt="Hi", tools=TOOLS, tool_choice=choice, parallel_tool_calls=parallel)  # type: ignore[arg-type]
    assert AnthropicMessagesProvider(spec).body(request).get("tool_choice") == sent


JSON_ANSWER = (
    message_start(),
    tool_use_start(0, "animals"),
    json_delta("", 0),
    json_delta('{"animal": "cat",', 0),
    json_delta(' "count": 2}', 0),
    block_stop(0),
    message_delta("tool_use", 14),
    MESSAGE_STOP,
)


def test_a_json_schema_answer_is_a_forced_tool_whose_input_streams_back_as_the_text(
    upstream: Any, provider: Any
) -> None:
    # Given an upstream that answers with the forced tool's input in pieces, as the Messages API does
    server = upstream(streaming(*JSON_ANSWER))
    request = GenerationRequest.model_validate(
        {"model": "anthropic", "prompt": "Count the cats.", **{"response_format": JSON_SCHEMA}}
    )

    # When the provider streams a request for a JSON answer that follows a schema
    tokens, finish = split_finish(run(provider(ANTHROPIC, server.base_url), request))

    # Then the upstream was asked for a call of a tool whose input schema is the schema, and the call's input is the
    # answer's text, ended with stop
    sent = server.requests[0].body
    assert sent["tools"] == [{"name": "animals", "description": "What is seen", "input_schema": SCHEMA}]
    assert sent["tool_choice"] == {"type": "tool", "name": "animals"}
    assert tokens == ['{"animal": "cat",', ' "count": 2}']
    assert "".join(tokens) == '{"animal": "cat", "count": 2}'
    assert finish == Finish("stop", {"prompt_tokens": 25, "completion_tokens": 14})


def test_a_json_object_answer_given_whole_is_one_token(upstream: Any, provider: Any) -> None:
    server = upstream(
        streaming(
            message_start(),
            tool_use_start(0, "json_object", cats=2),
            block_stop(0),
            message_delta("tool_use"),
            MESSAGE_STOP,
        )
    )
    request = GenerationRequest(model="anthropic", prompt="Cats?", response_format={"type": "json_object"})  # type: ignore[arg-type]
    tokens, finish = split_finish(run(provider(ANTHROPIC, server.base_url), request))
    sent = server.requests[0].body
    assert sent["tools"] == [
        {"name": "json_object", "description": "Answer with a JSON object.", "input_schema": {"type": "object"}}
    ]
    assert sent["tool_choice"] == {"type": "tool", "name": "json_object"}
    assert (tokens, finish.finish_reason) == (['{"cats":2}'], "stop")


def test_a_text_response_format_asks_anthropic_for_nothing_more(upstream: Any, provider: Any) -> None:
    server = upstream(ANTHROPIC_ANSWER)
    request = GenerationRequest(model="anthropic", prompt="Hi", response_format={"type": "text"})  # type: ignore[arg-type]
    run(provider(ANTHROPIC, server.base_url), request)
    assert set(server.requests[0].body) == {"model", "max_tokens", "messages", "stream"}


def test_a_tool_result_in_text_parts_is_a_tool_result_of_text_blocks() -> None:
    request = GenerationRequest.model_validate(
        {
            "model": "a",
            "messages": [
                {"role": "user", "content": "Zoom in"},
                {"role": "assistant", "tool_calls": [{"id": "t1", "function": {"name": "zoom", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "t1", "content": [{"type": "text", "text": "zoomed"}]},
            ],
        }
    )
    body = AnthropicMessagesProvider(ANTHROPIC.spec("http://127.0.0.1:9/v1")).body(request)
    result = {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "zoomed"}]}
    assert body["messages"][-1] == {"role": "user", "content": [result]}


# ---------------------------------------------------------------------------------------------------------------
# What a provider cannot take: refused by name before anything is sent.


@pytest.mark.parametrize(
    ("wire", "field", "value"),
    [(OPENAI, "top_k", 40), (ANTHROPIC, "seed", 42), (ANTHROPIC, "logit_bias", {"1": 5})],
    ids=["openai-top_k", "anthropic-seed", "anthropic-logit_bias"],
)
def test_a_provider_refuses_what_it_cannot_take_before_sending(
    upstream: Any, provider: Any, wire: Any, field: str, value: Any
) -> None:
    server = upstream(OPENAI_ANSWER)
    request = GenerationRequest.model_validate({"model": wire.name, "prompt": "Hi", field: value})
    with pytest.raises(ProviderError) as refused:
        run(provider(wire, server.base_url), request)
    assert refused.value.code == "provider_rejected" and field in str(refused.value)
    assert server.requests == []


def _spec(provider: str, **fields: Any) -> ModelSpec:
    base_url = {"base_url": "http://127.0.0.1:9/v1"} if provider in ("openai", "anthropic") else {}
    return ModelSpec.model_validate({"name": "m", "provider": provider, **base_url, **fields})


def _request(**fields: Any) -> GenerationRequest:
    return GenerationRequest.model_validate({"model": "m", "prompt": "Hi", **fields})


ANTHROPIC_REFUSALS = [
    ({"seed": 1}, "seed", "seed"),
    ({"presence_penalty": 0.1}, "presence_penalty", "presence_penalty"),
    ({"frequency_penalty": 0.1}, "frequency_penalty", "frequency_penalty"),
    ({"logit_bias": {"1": 1}}, "logit_bias", "logit_bias"),
    ({"temperature": 1.5}, "temperature", None),
    ({"messages": _looking_at_images(detail="low")}, "messages.1.content.2.image_url.detail", "detail"),
    ({"tools": [{"function": {"name": "zoom", "strict": True}}]}, "tools.0.function.strict", "strict"),
    (
        {"response_format": {**JSON_SCHEMA, "json_schema": {"name": "a", "strict": True}}},
        "response_format.json_schema.strict",
        "strict",
    ),
    ({"response_format": {"type": "json_object"}, "tools": TOOLS}, "response_format", None),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "array"}}}},
        "response_format.json_schema.schema",
        None,
    ),
]


@pytest.mark.parametrize(("fields", "where", "param"), ANTHROPIC_REFUSALS, ids=[r[1] for r in ANTHROPIC_REFUSALS])
def test_anthropic_models_refuse_by_name_what_they_cannot_honour(
    fields: dict[str, Any], where: str, param: str | None
) -> None:
    asking = {} if "messages" in fields else {"prompt": "Hi"}
    request = GenerationRequest.model_validate({"model": "m", **asking, **fields})
    [problem] = capabilities.adapt(_spec("anthropic"), request).refused
    assert (problem.field, problem.param) == (where, param)
    assert problem.detail()["type"] == "unsupported_by_model" and "'m' (anthropic)" in problem.message
    if param is not None:
        assert "drop_params" in problem.message


def test_drop_params_drops_instead_and_names_what_it_dropped() -> None:
    # Given an Anthropic model that drops seed, strict and detail
    spec = _spec("anthropic", drop_params=["seed", "strict", "detail"])
    request = GenerationRequest.model_validate(
        {
            "model": "m",
            "messages": _looking_at_images(detail="high"),
            "seed": 7,
            "top_p": 0.5,
            "response_format": {**JSON_SCHEMA, "json_schema": {**JSON_SCHEMA["json_schema"], "strict": True}},
        }
    )
    # When the request is adapted to it
    adapted = capabilities.adapt(spec, request)
    # Then those are gone, named in the order of the registry's list, and everything else is as it was
    assert adapted.refused == () and adapted.dropped == ("seed", "strict", "detail")
    assert adapted.request.seed is None and adapted.request.top_p == 0.5
    assert adapted.request.response_format is not None and adapted.request.response_format.json_schema is not None
    assert adapted.request.response_format.json_schema.strict is None
    assert adapted.request.response_format.json_schema.schema_ == SCHEMA
    assert adapted.request.messages is not None
    dumped = adapted.request.messages[1].model_dump(exclude_none=True)
    assert dumped["content"][2] == {"type": "image_url", "image_url": {"url": CAT}}
    assert capabilities.problems(spec, adapted.request) == []


def test_what_cannot_be_dropped_is_refused_even_with_drop_params_and_nothing_is_dropped() -> None:
    adapted = capabilities.adapt(_spec("anthropic", drop_params=["seed"]), _request(seed=1, temperature=1.2))
    assert [p.field for p in adapted.refused] == ["temperature"] and adapted.dropped == ()
    assert adapted.request.seed == 1


def test_a_model_without_problems_is_given_the_request_as_it_is() -> None:
    request = _request(top_p=0.5, seed=3, logit_bias={"1": 2}, user="u")
    adapted = capabilities.adapt(_spec("openai", drop_params=["top_k"]), request)
    assert adapted == capabilities.Adapted(request)


@pytest.mark.parametrize("provider", ["echo", "synthetic"])
def test_the_stand_in_models_take_no_images_and_ignore_sampling(provider: str) -> None:
    images = GenerationRequest.model_validate({"model": "m", "messages": _looking_at_images()})
    assert [p.field for p in capabilities.problems(_spec(provider), images)] == [
        "messages.1.content.2",
        "messages.1.content.3",
    ]
    sampling = _request(seed=1, top_p=0.1, top_k=3, logit_bias={"1": 1}, response_format=JSON_SCHEMA, user="u")
    assert capabilities.problems(_spec(provider), sampling) == []


def test_an_external_producer_is_given_everything() -> None:
    request = GenerationRequest.model_validate(
        {"model": "m", "messages": _looking_at_images(), "seed": 1, "top_k": 2, "temperature": 2}
    )
    assert capabilities.problems(_spec("external"), request) == []


def test_drop_params_names_only_what_can_be_dropped(tmp_path: Path) -> None:
    models = tmp_path / "models.toml"
    models.write_text(
        '[models.c]\nprovider = "anthropic"\nbase_url = "http://x/v1"\ndrop_params = ["seed", "temperature"]\n'
    )
    with pytest.raises(ModelRegistryError, match="cannot drop temperature"):
        load_registry(str(models))
    models.write_text(
        '[models.c]\nprovider = "anthropic"\nbase_url = "http://x/v1"\ndrop_params = ["seed", "strict"]\n'
    )
    assert load_registry(str(models))["c"].drop_params == ("seed", "strict")


# ---------------------------------------------------------------------------------------------------------------
# Content parts: what is valid, and where a 422 says the problem is.


def _details(body: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as exc:
        GenerationRequest.model_validate({"model": "m", **body})
    return [(d["field"], d["type"]) for d in validation_details(exc.value)]


def test_parts_other_than_text_and_images_are_refused_naming_the_part() -> None:
    parts = [
        {"type": "text", "text": "Listen:"},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
        {"type": "file", "file": {"file_id": "file-1"}},
    ]
    assert _details({"messages": [{"role": "user", "content": parts}]}) == [
        ("messages.0.content.1.type", "unsupported_content_part"),
        ("messages.0.content.2.type", "unsupported_content_part"),
    ]
    with pytest.raises(ValidationError, match="'input_audio'"):
        GenerationRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": parts}]})


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("ftp://example.com/cat.png", "invalid_image_url"),
        ("cat.png", "invalid_image_url"),
        ("https://example.com/" + "a" * 9000, "invalid_image_url"),
        ("data:image/tiff;base64,AAAA", "unsupported_image_type"),
        ("data:image/png;base64,AA!A", "invalid_image_data"),
        ("data:image/png;base64,AAA", "invalid_image_data"),
    ],
)
def test_an_image_is_an_http_url_or_a_base64_data_uri_of_a_common_type(url: str, error: str) -> None:
    content = [{"type": "image_url", "image_url": {"url": url}}]
    assert _details({"messages": [{"role": "user", "content": content}]}) == [
        ("messages.0.content.0.image_url.url", error)
    ]


def test_images_come_only_in_user_messages_and_content_is_a_string_or_parts() -> None:
    image = {"type": "image_url", "image_url": {"url": CAT}}
    assert _details({"messages": [{"role": "assistant", "content": [image]}]}) == [("messages.0", "value_error")]
    assert _details({"messages": [{"role": "user", "content": 5}]}) == [("messages.0.content", "content_type")]
    assert _details({"messages": [{"role": "user", "content": []}]}) == [("messages.0.content", "too_short")]
    assert _details({"messages": [{"role": "user", "content": [{"type": "text"}]}]}) == [
        ("messages.0.content.0.text", "missing")
    ]


def test_sampling_fields_are_validated() -> None:
    assert _details(
        {
            "prompt": "x",
            "top_p": 1.5,
            "top_k": -1,
            "seed": 2**63,
            "presence_penalty": 3,
            "frequency_penalty": -3,
            "logit_bias": {"x": 1, "2": 101},
            "response_format": {"type": "json_schema"},
            "user": "",
        }
    ) == [
        ("top_p", "less_than_equal"),
        ("top_k", "greater_than_equal"),
        ("seed", "less_than"),
        ("presence_penalty", "less_than_equal"),
        ("frequency_penalty", "greater_than_equal"),
        ("logit_bias.x.[key]", "string_pattern_mismatch"),
        ("logit_bias.2", "less_than_equal"),
        ("response_format", "value_error"),
        ("user", "string_too_short"),
    ]


def test_the_text_of_parts_is_their_text_joined_and_an_inline_image_knows_its_size() -> None:
    request = GenerationRequest.model_validate({"model": "m", "messages": _looking_at_images()})
    assert request.input_text() == "What is in these?"
    inline = data_uri(PIXEL)
    assert inline is not None and inline.media_type == "image/png"
    assert inline.size == len(base64.b64decode(PIXEL_DATA))
    assert data_uri(CAT) is None
