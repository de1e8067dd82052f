"""tokenbridge_client.client: the SSE parser, and resume against a real HTTP server on a loopback socket."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from tokenbridge_client.client import (
    Event,
    SseMessage,
    SseParser,
    TokenbridgeAPIError,
    TokenbridgeClient,
    TokenbridgeConnectionError,
    TokenbridgeProtocolError,
    Transcript,
    collect_text,
)

from tests.support.scripted_server import ScriptedServer, api_error, chunked, done, status, token, until_close

# -- the parser ------------------------------------------------------------------------------------

BODY = (
    "\ufeffretry: 1000\r\n"
    "\r\n"
    ": keep-alive\r\n"
    "id: 1-0\r\n"
    "event: token\r\n"
    'data: {"seq": 0,\r\n'
    'data:  "content": "a\u2028b"}\r\n'
    "\r\n"
    "id: 2-0\r"
    "event: token\r"
    'data:{"seq": 1}\r'
    "\r"
    "id: 3-0\n"
    "event: ignored-without-data\n"
    "\n"
    "data\n"
    "\n"
    "id: bad\0id\n"
    "retry: soon\n"
    "unknown: field\n"
    'data: {"seq": 2}\n'
    "\n"
    'id: 9-9\nevent: token\ndata: {"incomplete": true}\n'
)
EXPECTED = [
    SseMessage("1-0", "token", '{"seq": 0,\n "content": "a\u2028b"}'),
    SseMessage("2-0", "token", '{"seq": 1}'),
    SseMessage("3-0", "message", ""),
    SseMessage("3-0", "message", '{"seq": 2}'),
]


def test_parser_reads_every_line_ending_multiline_data_and_comments() -> None:
    parser = SseParser()

    messages = parser.feed(BODY.encode())

    assert messages == EXPECTED
    # The id of the event that had no data still counts; the id with NUL and the bad retry are ignored.
    assert parser.last_event_id == "9-9"
    assert parser.retry_ms == 1000


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_parser_gives_the_same_events_however_the_body_is_split(size: int) -> None:
    data = BODY.encode()
    parser = SseParser()

    messages = [m for start in range(0, len(data), size) for m in parser.feed(data[start : start + size])]

    assert messages == EXPECTED


def test_a_crlf_split_between_chunks_is_one_line_end() -> None:
    parser = SseParser()

    first = parser.feed(b"id: 1\r\ndata: [1,\r")
    second = parser.feed(b"\ndata: 2]\r\n\r\n")

    # Were the LF a line end of its own, the blank line would have dispatched "[1," alone.
    assert first == []
    assert second == [SseMessage("1", "message", "[1,\n2]")]


def test_transcript_appends_tokens_discards_on_restart_and_replaces_on_reset() -> None:
    events = [
        Event("1", "token", {"content": "Hello "}),
        Event("2", "restart", {"reason": "worker_lost"}),
        Event("3", "token", {"content": "Hi "}),
        Event("4", "reset", {"text": "Hi there, ", "next_seq": 9}),
        Event("5", "token", {"content": "friend"}),
        Event("6", "done", {"finish_reason": "stop"}),
    ]
    transcript = Transcript()

    seen = [transcript.apply(event) for event in events]

    assert seen == ["Hello ", "", "Hi ", "Hi there, ", "Hi there, friend", "Hi there, friend"]
    assert collect_text(events) == "Hi there, friend"


# -- resume against a server -----------------------------------------------------------------------


def test_stream_resumes_with_last_event_id_after_a_dropped_connection(serve: Any, make_client: Any) -> None:
    # Given a server that hangs up in the middle of a chunked response
    server = serve(
        chunked(b"retry: 10\n\n", token("1-0", 0, "Hello "), token("2-0", 1, "th"), complete=False),
        chunked(token("3-0", 2, "ere"), done("3-1", 3)),
    )
    client = make_client(server.url)

    # When the client follows the generation
    events = list(client.stream("gen_1"))

    # Then it reconnects once, after the last id it got, and sees every event exactly once
    assert [e.id for e in events] == ["1-0", "2-0", "3-0", "3-1"]
    assert collect_text(events) == "Hello there"
    assert [r.path for r in server.requests] == ["/v1/generations/gen_1/events"] * 2
    assert "last-event-id" not in server.requests[0].headers
    assert server.requests[1].headers["last-event-id"] == "2-0"
    assert server.requests[1].headers["authorization"] == "Bearer k"


def test_stream_resumes_when_a_response_ends_before_the_terminal_event(serve: Any, make_client: Any) -> None:
    server = serve(
        until_close(b"retry: 10\n\n" + token("1-0", 0, "a ")),
        until_close(token("2-0", 1, "b") + done("2-1", 2)),
    )
    client = make_client(server.url)

    events = list(client.stream("gen_1", last_event_id="0-1"))

    assert collect_text(events) == "a b"
    assert [r.headers.get("last-event-id") for r in server.requests] == ["0-1", "1-0"]


def test_stream_stops_at_the_terminal_event_without_waiting_for_the_end_of_the_response(
    serve: Any, make_client: Any
) -> None:
    server = serve(chunked(token("1-0", 0, "x"), done("1-1", 1), hold=True))
    client = make_client(server.url)
    started = time.monotonic()

    events = list(client.stream("gen_1"))

    assert [e.event for e in events] == ["token", "done"]
    assert time.monotonic() - started < 2
    assert len(server.requests) == 1


def test_204_means_the_generation_had_already_ended(serve: Any, make_client: Any) -> None:
    server = serve(status(204))
    client = make_client(server.url)

    assert list(client.stream("gen_1", last_event_id="7-0")) == []
    assert server.requests[0].headers["last-event-id"] == "7-0"


def test_204_on_a_reconnect_ends_the_stream(serve: Any, make_client: Any) -> None:
    server = serve(chunked(b"retry: 10\n\n", token("1-0", 0, "x"), complete=False), status(204))
    client = make_client(server.url)

    events = list(client.stream("gen_1"))

    assert [e.id for e in events] == ["1-0"]
    assert server.requests[1].headers["last-event-id"] == "1-0"


def test_a_json_error_is_raised_with_its_fields_and_not_retried(serve: Any, make_client: Any) -> None:
    server = serve(api_error(404, "not_found", "No generation with id 'gen_1'.", details={"id": "gen_1"}))
    client = make_client(server.url)

    with pytest.raises(TokenbridgeAPIError) as caught:
        list(client.stream("gen_1"))

    assert (caught.value.status, caught.value.code) == (404, "not_found")
    assert caught.value.message == "No generation with id 'gen_1'."
    assert caught.value.details == {"id": "gen_1"}
    assert len(server.requests) == 1


def test_a_503_on_reconnect_is_retried_after_its_retry_after(serve: Any, make_client: Any) -> None:
    server = serve(
        chunked(b"retry: 10\n\n", token("1-0", 0, "x"), complete=False),
        api_error(503, "redis_unavailable", "Redis is unavailable.", Retry_After="1"),
        chunked(done("1-1", 1)),
    )
    client = make_client(server.url)

    events = list(client.stream("gen_1"))

    assert [e.id for e in events] == ["1-0", "1-1"]
    assert server.requests[2].at - server.requests[1].at >= 1.0
    assert server.requests[2].headers["last-event-id"] == "1-0"


def test_retries_are_bounded_and_back_off_from_the_servers_retry(serve: Any, make_client: Any) -> None:
    # Given a server that always ends the response at once, without an event
    server = serve(until_close(b"retry: 40\n\n"))
    client = make_client(server.url, max_retries=3)

    # When the client follows it, then it gives up after the first try and three retries
    with pytest.raises(TokenbridgeConnectionError, match="after 4 tries"):
        list(client.stream("gen_1"))
    assert len(server.requests) == 4
    gaps = [b.at - a.at for a, b in zip(server.requests, server.requests[1:], strict=False)]
    for attempt, gap in enumerate(gaps):
        assert gap >= 0.040 * 2**attempt * 0.9, gaps


def test_progress_resets_the_retry_count(serve: Any, make_client: Any) -> None:
    # Every response drops after one new event: more drops than max_retries, yet the stream goes on.
    server = serve(
        *[chunked(b"retry: 5\n\n", token(f"{i}-0", i, f"{i} "), complete=False) for i in range(1, 5)],
        chunked(done("9-0", 5)),
    )
    client = make_client(server.url, max_retries=1)

    events = list(client.stream("gen_1"))

    assert collect_text(events) == "1 2 3 4 "
    assert len(server.requests) == 5


def test_a_server_that_was_never_reached_is_reported_at_once(make_client: Any) -> None:
    client = make_client("http://127.0.0.1:9")

    with pytest.raises(
        TokenbridgeConnectionError, match=r"cannot reach http://127\.0\.0\.1:9/v1/generations/gen_1/events"
    ):
        list(client.stream("gen_1"))


def test_a_server_that_goes_away_mid_stream_is_retried_then_given_up(make_client: Any) -> None:
    # Given a server that drops the stream and then is gone (its port closed)
    server = ScriptedServer(chunked(b"retry: 5\n\n", token("1-0", 0, "x"), complete=False))
    client = make_client(server.url, max_retries=2)
    events: list[Event] = []

    # When the client follows it, then it retries the connection twice, then gives up
    with server, pytest.raises(TokenbridgeConnectionError, match="after 3 tries"):
        for event in client.stream("gen_1"):
            events.append(event)
            server.__exit__()
    assert [e.id for e in events] == ["1-0"]


def test_event_data_that_is_not_a_json_object_is_a_protocol_error(serve: Any, make_client: Any) -> None:
    server = serve(chunked(b"id: 1-0\nevent: token\ndata: [1, 2]\n\n"))
    client = make_client(server.url)

    with pytest.raises(TokenbridgeProtocolError, match="1-0"):
        list(client.stream("gen_1"))


def test_without_an_api_key_the_stream_token_of_the_submit_answer_is_used(serve: Any, make_client: Any) -> None:
    server = serve(chunked(done("1-0", 0)))
    client = make_client(server.url, api_key=None)

    list(client.stream({"id": "gen_1", "stream_token": "tok.en"}))

    assert server.requests[0].path == "/v1/generations/gen_1/events?token=tok.en"
    assert "authorization" not in server.requests[0].headers


def test_a_stream_whose_token_expired_refreshes_it_and_resumes_where_it_was(
    serve: Callable[..., ScriptedServer], make_client: Callable[..., TokenbridgeClient]
) -> None:
    # Given a stream read with a stream token that expires while the connection is down
    server = serve(
        chunked(b"retry: 10\n\n", token("1-0", 0, "Hello"), complete=False),
        api_error(401, "token_expired", "The stream token has expired; ask for a new one."),
        chunked(token("2-0", 1, " world"), done("3-0", 2)),
    )
    asked = []

    def refresh() -> str:
        asked.append(True)
        return "fresh-token"

    client = make_client(server.url, api_key=None)
    # When it is read with a refresh callback
    events = list(client.stream({"id": "gen_a", "stream_token": "old-token"}, refresh_token=refresh))
    # Then the callback was asked once, the stream resumed after the last event with the new token, and the
    # reader got every event once
    assert asked == [True]
    assert [e.id for e in events] == ["1-0", "2-0", "3-0"]
    resumed = server.requests[2]
    assert "token=fresh-token" in resumed.path and resumed.headers["last-event-id"] == "1-0"


def test_a_refreshed_token_that_is_refused_again_ends_the_stream(
    serve: Callable[..., ScriptedServer], make_client: Callable[..., TokenbridgeClient]
) -> None:
    server = serve(api_error(401, "token_expired", "expired"))
    client = make_client(server.url, api_key=None)
    with pytest.raises(TokenbridgeAPIError) as info:
        list(client.stream({"id": "gen_a", "stream_token": "old"}, refresh_token=lambda: "also-expired"))
    assert info.value.code == "token_expired" and len(server.requests) == 2
