"""Property-based API testing with schemathesis against /openapi.json: no 5xx, no response outside the schema."""

from __future__ import annotations

import jsonschema_rs
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.support.stack import API_KEY, Stack

pytestmark = pytest.mark.e2e

# No 5xx, and every response (status, content type, body) as the document says.
CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
]


@pytest.fixture(scope="session")
def api_schema(stack: Stack) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_url(stack.url("/openapi.json"))
    # Streams and the socket stay open by design, and chat completions wait for the answer: fuzz the rest.
    return schema.exclude(path_regex=r".*/(events|ws)$").exclude(path="/v1/chat/completions")


def test_the_api_honours_its_openapi_document(api_schema: schemathesis.BaseSchema) -> None:
    tested = []
    for result in api_schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: schemathesis.Case) -> None:
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {API_KEY}"}
            case.call_and_validate(checks=CHECKS)

        check()
        tested.append(operation.label)
    assert len(tested) >= 6, tested


def test_the_document_lists_every_v1_route(stack: Stack) -> None:
    paths = set(stack.get("/openapi.json").json()["paths"])
    assert paths >= {
        "/v1/generations",
        "/v1/generations/{generation_id}",
        "/v1/generations/{generation_id}/cancel",
        "/v1/generations/{generation_id}/events",
        "/v1/generations/{generation_id}/ws",
        "/v1/generations/{generation_id}/tokens",
        "/v1/generations/{generation_id}/complete",
        "/v1/sessions/{session_id}/events",
        "/v1/chat/completions",
        "/v1/stats",
    }


def test_answers_the_fuzzing_cannot_reach_match_their_documented_schemas(stack: Stack) -> None:
    # Given the served document, and a generation that ran to its end, in a session
    document = stack.get("/openapi.json").json()
    generation = stack.create(model="echo", prompt="Schemas from the models.", session_id="openapi-shapes")
    stack.events(generation)
    completion = stack.post("/v1/chat/completions", {"model": "echo", "messages": [{"role": "user", "content": "Hi."}]})

    # When their answers are checked against the schemas the document gives their routes
    answers = {
        ("/v1/generations", "post", "202"): generation,
        ("/v1/generations/{generation_id}", "get", "200"): stack.get(f"/v1/generations/{generation['id']}").json(),
        ("/v1/sessions/{session_id}/generations", "get", "200"): stack.get(
            "/v1/sessions/openapi-shapes/generations"
        ).json(),
        ("/v1/chat/completions", "post", "200"): completion.json(),
        ("/v1/stats", "get", "200"): stack.get("/v1/stats").json(),
    }

    # Then every one is valid
    for (path, method, status), answer in answers.items():
        schema = document["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]
        validator = jsonschema_rs.Draft202012Validator({**schema, "components": document["components"]})
        errors = [error.message for error in validator.iter_errors(answer)]
        assert errors == [], (path, answer)
