"""What the model gets is what the user sent: the official ``openai`` package sends content parts (an image), sampling
fields, a JSON schema answer and an end user through ``/v1/chat/completions``, and the fake upstream behind the
bridge says what it received, in each provider's wire format."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from openai import OpenAI

from tests.support.fake_upstream import FakeUpstream
from tests.support.stack import API_KEY, Stack

pytestmark = pytest.mark.e2e

PIXEL_DATA = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
PIXEL = f"data:image/png;base64,{PIXEL_DATA}"
SCHEMA = {
    "type": "object",
    "properties": {"query": {"type": "string"}},
    "required": ["query"],
    "additionalProperties": False,
}


def _client(stack: Stack) -> OpenAI:
    return OpenAI(base_url=stack.base_url + "/v1", api_key=API_KEY, max_retries=0, timeout=20)


def _received(upstream: FakeUpstream, marker: str) -> dict[str, Any]:
    """The request the fake upstream received for the question that carries ``marker``."""
    found = [r for r in upstream.requests if marker in json.dumps(r["body"])]
    assert len(found) == 1, f"{len(found)} upstream requests carry {marker}"
    return found[0]


def test_an_image_seed_top_p_and_a_json_schema_reach_an_openai_compatible_upstream_as_sent(
    stack: Stack, upstream: FakeUpstream
) -> None:
    # Given a question with an inline image, sampling fields, a JSON schema for the answer and an end user
    marker = f"m{uuid.uuid4().hex[:8]}"
    content: list[Any] = [
        {"type": "text", "text": f"What is {marker}"},
        {"type": "image_url", "image_url": {"url": PIXEL, "detail": "low"}},
    ]
    response_format: Any = {"type": "json_schema", "json_schema": {"name": "look", "schema": SCHEMA, "strict": True}}

    # When the openai package asks an OpenAI-compatible model through the bridge
    with _client(stack) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="fake-gpt",
            messages=[{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": content}],
            seed=1234,
            top_p=0.25,
            presence_penalty=0.5,
            frequency_penalty=-0.5,
            logit_bias={"50256": -100},
            response_format=response_format,
            user="end-user-42",
        )
        completion = raw.parse()

    # Then the upstream got every one of them exactly as the package sent it
    sent = _received(upstream, marker)["body"]
    assert sent["messages"] == [
        {"role": "system", "content": "Answer in JSON."},
        {"role": "user", "content": content},
    ]
    assert (sent["seed"], sent["top_p"], sent["presence_penalty"], sent["frequency_penalty"]) == (1234, 0.25, 0.5, -0.5)
    assert sent["logit_bias"] == {"50256": -100}
    assert sent["response_format"] == response_format
    assert sent["user"] == "end-user-42"
    # And the answer came back, from a generation that records its end user
    assert (completion.choices[0].message.content or "").strip() == f"What is {marker}"
    generation_id = raw.headers["x-tokenbridge-generation-id"]
    assert stack.get(f"/v1/generations/{generation_id}").json()["user"] == "end-user-42"
    assert "x-tokenbridge-dropped-params" not in raw.headers


def test_an_anthropic_upstream_gets_image_blocks_top_k_the_user_and_a_forced_tool_for_json(
    stack: Stack, upstream: FakeUpstream
) -> None:
    # Given a question with an image by URL, top_p, top_k, an end user and a JSON schema for the answer
    marker = f"m{uuid.uuid4().hex[:8]}"
    content: list[Any] = [
        {"type": "text", "text": f"What is {marker}"},
        {"type": "image_url", "image_url": {"url": "https://images.example.com/cat.jpg"}},
    ]

    # When the openai package streams it from an Anthropic model through the bridge
    with _client(stack) as client:
        stream = client.chat.completions.create(
            model="fake-claude",
            messages=[{"role": "user", "content": content}],
            top_p=0.5,
            response_format={"type": "json_schema", "json_schema": {"name": "look", "schema": SCHEMA}},
            user="end-user-43",
            stream=True,
            extra_body={"top_k": 20},
        )
        chunks = list(stream)

    # Then the upstream got the Messages API's blocks, the sampling fields, the user as metadata and the schema as
    # the input schema of a tool it must call
    sent = _received(upstream, marker)["body"]
    assert sent["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": f"What is {marker}"},
                {"type": "image", "source": {"type": "url", "url": "https://images.example.com/cat.jpg"}},
            ],
        }
    ]
    assert (sent["top_p"], sent["top_k"], sent["metadata"]) == (0.5, 20, {"user_id": "end-user-43"})
    assert sent["tools"] == [
        {"name": "look", "description": "Answer with JSON that follows this schema.", "input_schema": SCHEMA}
    ]
    assert sent["tool_choice"] == {"type": "tool", "name": "look"}
    # And the tool's input streamed back as the answer's text, which ends with stop
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert json.loads(text) == {"query": f"What is {marker}"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_what_a_model_cannot_take_is_refused_by_name(stack: Stack) -> None:
    body = {"model": "fake-claude", "messages": [{"role": "user", "content": "x"}], "seed": 7}
    refused = stack.post("/v1/chat/completions", body)
    assert refused.status_code == 422
    error = refused.json()["error"]
    assert (error["param"], error["code"]) == ("seed", "validation_failed")
    image = {"type": "image_url", "image_url": {"url": PIXEL}}
    echo = stack.post("/v1/generations", {"model": "echo", "messages": [{"role": "user", "content": [image]}]})
    assert echo.status_code == 422 and echo.json()["error"]["details"][0]["field"] == "messages.0.content.0"
