from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from bridge.generation import GenerationRequest
from bridge.models import BUILTIN, ModelRegistryError, load_registry, parse_options
from bridge.producer import Finish
from tasks.providers.builtin import EchoProvider, SyntheticProvider, split_words


def _run(provider: object, request: GenerationRequest) -> tuple[list[str], Finish]:
    chunks = list(provider.stream(request, threading.Event()))  # type: ignore[attr-defined]
    *tokens, finish = chunks
    assert isinstance(finish, Finish)
    return tokens, finish


def test_request_needs_exactly_one_of_prompt_or_messages() -> None:
    with pytest.raises(ValidationError):
        GenerationRequest(model="echo")
    with pytest.raises(ValidationError):
        GenerationRequest(model="echo", prompt="a", messages=[{"role": "user", "content": "b"}])  # type: ignore[list-item]


def test_request_input_is_the_last_user_message() -> None:
    req = GenerationRequest.model_validate(
        {
            "model": "echo",
            "messages": [
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "reply"},
                {"role": "user", "content": "second"},
                {"role": "assistant", "content": "again"},
            ],
        }
    )
    assert req.input_text() == "second"


def test_request_accepts_stop_as_a_string_and_rejects_braces_in_session_ids() -> None:
    assert GenerationRequest(model="echo", prompt="x", stop="END").stop == ["END"]  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        GenerationRequest(model="echo", prompt="x", session_id="a{b}")


@pytest.mark.parametrize(
    "text",
    ["Hello there, world!", "  leading and trailing  ", "line one\nline two\n\n", "one", "   ", "tabs\tand  spaces"],
)
def test_echo_tokens_concatenate_to_the_input_exactly(text: str) -> None:
    tokens, finish = _run(EchoProvider(), GenerationRequest(model="echo", prompt=text))
    assert "".join(tokens) == text
    assert tokens == split_words(text)
    assert finish.finish_reason == "stop"


def test_echo_max_tokens_truncates_with_finish_reason_length() -> None:
    tokens, finish = _run(EchoProvider(), GenerationRequest(model="echo", prompt="a b c d e", max_tokens=2))
    assert tokens == ["a ", "b "]
    assert finish.finish_reason == "length"
    assert finish.usage == {"prompt_tokens": 5, "completion_tokens": 2}


def test_echo_delay_paces_tokens_and_stops_at_once_when_asked() -> None:
    request = GenerationRequest(model="echo", prompt="a b c d e f g h", options={"delay_ms": 200})
    stop = threading.Event()
    started = time.monotonic()
    stream = EchoProvider().stream(request, stop)
    assert next(stream) == "a "
    assert time.monotonic() - started >= 0.19
    threading.Timer(0.05, stop.set).start()
    assert list(stream) == []
    assert time.monotonic() - started < 0.4


def test_synthetic_is_deterministic_and_counts_max_tokens() -> None:
    request = GenerationRequest(
        model="synthetic", prompt="seed me", max_tokens=30, options={"tokens_per_second": 10_000}
    )
    first, finish = _run(SyntheticProvider(), request)
    second, _ = _run(SyntheticProvider(), request)
    assert first == second
    assert len(first) == 30
    assert finish.finish_reason == "length"


def test_synthetic_takes_the_requests_seed_unless_its_options_give_one() -> None:
    def words(**fields: object) -> list[object]:
        body: dict[str, object] = {"model": "synthetic", "prompt": "same prompt", "max_tokens": 20, **fields}
        # Unpaced: only the words matter here.
        options: dict[str, object] = {"tokens_per_second": 100_000, **dict(body.pop("options", {}))}  # type: ignore[call-overload]
        request = GenerationRequest.model_validate({**body, "options": options})
        return _run(SyntheticProvider(), request)[0]

    assert words(seed=1) == words(seed=1) != words(seed=2)
    assert words(seed=1) == words(options={"seed": 1}) == words(seed=2, options={"seed": 1})
    assert words() != words(seed=1)


def test_echo_answers_with_the_text_parts_joined() -> None:
    parts = [{"type": "text", "text": "Hello "}, {"type": "text", "text": "there"}]
    request = GenerationRequest.model_validate({"model": "echo", "messages": [{"role": "user", "content": parts}]})
    tokens, finish = _run(EchoProvider(), request)
    assert "".join(str(t) for t in tokens) == "Hello there" and finish.finish_reason == "stop"


def test_model_options_are_validated_per_model() -> None:
    assert parse_options(BUILTIN["echo"], {"delay_ms": 5}).delay_ms == 5  # type: ignore[attr-defined]
    with pytest.raises(ValidationError):
        parse_options(BUILTIN["echo"], {"delay_ms": 10_001})
    with pytest.raises(ValidationError):
        parse_options(BUILTIN["synthetic"], {"tokens_per_second": 0})


@pytest.mark.parametrize("fallback", ["nowhere", "flaky"])
def test_a_fallback_must_name_another_model_of_the_registry(tmp_path: Path, fallback: str) -> None:
    models = tmp_path / "models.toml"
    models.write_text(f'[models.flaky]\nprovider = "synthetic"\nfallback = "{fallback}"\n')
    with pytest.raises(ModelRegistryError, match="fallback"):
        load_registry(str(models))
    models.write_text('[models.flaky]\nprovider = "synthetic"\nfallback = "echo"\n')
    assert load_registry(str(models))["flaky"].fallback == "echo"
