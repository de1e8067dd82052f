"""Streams written over the Durable Streams protocol, against the Procfile processes (one Redis and a cluster):
created, appended to by idempotent producers, read by catch-up, long-poll and SSE, closed, deleted; each key
sees its own streams only."""

from __future__ import annotations

import threading
import time
import uuid

import httpx
import orjson
import pytest

from tests.support.sse import iter_messages
from tests.support.stack import OTHER_KEY, Stack

pytestmark = pytest.mark.e2e

JSON = {"Content-Type": "application/json"}


def _name() -> str:
    return f"/v1/stream/chat/{uuid.uuid4().hex}"


def _client(stack: Stack, key: str | None = None) -> httpx.Client:
    headers = stack.headers if key is None else {"Authorization": f"Bearer {key}"}
    return httpx.Client(base_url=stack.base_url, headers=headers, timeout=30)


def test_a_json_stream_keeps_each_message_and_reads_back_from_any_offset(stack: Stack) -> None:
    with _client(stack) as http:
        path = _name()
        # Given a JSON stream created with one message, and a batch of two appended (one level of array flattened)
        created = http.put(path, content=b'[{"role": "user", "text": "hi"}]', headers=JSON)
        assert created.status_code == 201 and created.headers["location"].endswith(path)
        assert http.put(path, headers=JSON).status_code == 200  # the same configuration: nothing changes
        assert http.put(path, headers={"Content-Type": "text/plain"}).status_code == 409
        appended = http.post(path, content=b'[{"text": "a"}, [1, 2]]', headers=JSON)
        assert appended.status_code == 204
        # When it is read from the start, then from the offset after the first message
        whole = http.get(path, params={"offset": "-1"})
        assert whole.json() == [{"role": "user", "text": "hi"}, {"text": "a"}, [1, 2]]
        assert whole.headers["stream-next-offset"] == appended.headers["stream-next-offset"]
        assert whole.headers["stream-up-to-date"] == "true" and "stream-closed" not in whole.headers
        first = http.get(path, params={"offset": created.headers["stream-next-offset"]})
        # Then each read gives the messages after its offset, as a JSON array, and a repeat read is a 304
        assert first.json() == [{"text": "a"}, [1, 2]]
        again = http.get(path, params={"offset": "-1"}, headers={"If-None-Match": whole.headers["etag"]})
        assert again.status_code == 304
        tail = http.get(path, params={"offset": whole.headers["stream-next-offset"]})
        assert tail.json() == [] and tail.headers["stream-up-to-date"] == "true"
        # And bad bodies are refused by name, nothing appended
        assert http.post(path, content=b"[]", headers=JSON).status_code == 400
        assert http.post(path, content=b"{nope", headers=JSON).status_code == 400
        assert http.post(path, content=b"x", headers={"Content-Type": "text/plain"}).status_code == 409
        assert http.get(path, params={"offset": "-1"}).json()[-1] == [1, 2]


def test_an_idempotent_producer_writes_each_batch_once_and_a_stale_epoch_is_fenced(stack: Stack) -> None:
    with _client(stack) as http:
        path = _name()
        http.put(path, headers={"Content-Type": "application/octet-stream"}).raise_for_status()

        def send(body: bytes, epoch: int, seq: int) -> httpx.Response:
            headers = {"Content-Type": "application/octet-stream", "Producer-Id": "writer-1"}
            return http.post(
                path, content=body, headers={**headers, "Producer-Epoch": str(epoch), "Producer-Seq": str(seq)}
            )

        assert send(b"\x00\x01", 0, 0).status_code == 200
        # When a batch is sent again (its reply was lost), then one skips a number
        retry = send(b"\x00\x01", 0, 0)
        assert retry.status_code == 204 and retry.headers["producer-seq"] == "0"
        gap = send(b"\x03", 0, 2)
        assert gap.status_code == 409 and gap.headers["producer-expected-seq"] == "1"
        assert send(b"\x02", 0, 1).status_code == 200
        # And when the producer restarts with a new epoch, its old self is fenced off
        assert send(b"\x04", 1, 0).status_code == 200
        stale = send(b"\xff", 0, 2)
        assert stale.status_code == 403 and stale.headers["producer-epoch"] == "1"
        # Then the bytes are each batch once, in order
        assert http.get(path, params={"offset": "-1"}).content == b"\x00\x01\x02\x04"


def test_a_live_reader_gets_appends_by_long_poll_and_sse_until_the_stream_closes(stack: Stack) -> None:
    with _client(stack) as http:
        path = _name()
        tail = http.put(path, headers=JSON).headers["stream-next-offset"]

        def later() -> None:
            # pacing: each append comes while a reader already waits at the tail
            time.sleep(0.5)
            http.post(path, content=b'{"n": 1}', headers=JSON).raise_for_status()
            time.sleep(0.5)
            http.post(path, content=b'{"n": 2}', headers={**JSON, "Stream-Closed": "true"}).raise_for_status()

        writer = threading.Thread(target=later)
        writer.start()
        # Given a long-poll at the tail: it answers with the first append as it comes
        polled = http.get(path, params={"offset": tail, "live": "long-poll"})
        assert polled.status_code == 200 and polled.json() == [{"n": 1}] and "stream-cursor" in polled.headers
        # When an SSE reader follows from there
        events = []
        with http.stream("GET", path, params={"offset": polled.headers["stream-next-offset"], "live": "sse"}) as sse:
            for message in iter_messages(sse.iter_bytes()):
                events.append((message.event, message.data))
                if message.event == "control" and orjson.loads(message.data).get("streamClosed"):
                    break
        writer.join()
        # Then it gets the last message, then the closure, and the server ends the stream
        data = [orjson.loads(d) for e, d in events if e == "data"]
        assert data == [[{"n": 2}]]
        assert orjson.loads(events[-1][1])["streamClosed"] is True
        # And a long-poll at the closed tail answers at once, appends are refused, and HEAD says closed
        started = time.monotonic()
        end = http.get(path, params={"offset": orjson.loads(events[-1][1])["streamNextOffset"], "live": "long-poll"})
        assert end.status_code == 204 and end.headers["stream-closed"] == "true" and time.monotonic() - started < 5
        refused = http.post(path, content=b"3", headers=JSON)
        assert refused.status_code == 409 and refused.headers["stream-closed"] == "true"
        assert http.head(path).headers["stream-closed"] == "true"


def test_a_stream_is_its_owners_and_a_deleted_one_is_gone(stack: Stack) -> None:
    with _client(stack) as mine, _client(stack, OTHER_KEY) as theirs, httpx.Client(base_url=stack.base_url) as anyone:
        path = _name()
        mine.put(path, content=b"hello", headers={"Content-Type": "text/plain"}).raise_for_status()
        # Another key's owner, and a request without credentials, cannot see or write it
        assert theirs.get(path).status_code == 404
        assert theirs.post(path, content=b"x", headers={"Content-Type": "text/plain"}).status_code == 404
        assert anyone.get(path).status_code == 401
        # tokenbridge's own streams are read only
        assert mine.put("/v1/stream/generations/anything").status_code == 405
        # And once its owner deletes it, it is gone
        assert mine.delete(path).status_code == 204
        assert mine.get(path).status_code == 404


def test_a_fork_reads_its_source_up_to_where_it_diverged_and_outlives_it(stack: Stack) -> None:
    with _client(stack) as http:
        source, fork = _name(), _name()
        text = {"Content-Type": "text/plain"}
        at = http.put(source, content=b"abc", headers=text).headers["stream-next-offset"]
        http.post(source, content=b"def", headers=text).raise_for_status()
        # Given a fork of the source after "abc" and two bytes of the next append
        created = http.put(
            fork, headers={"Stream-Forked-From": source, "Stream-Fork-Offset": at, "Stream-Fork-Sub-Offset": "2"}
        )
        assert created.status_code == 201 and created.headers["content-type"] == "text/plain"
        # When each is appended to
        http.post(fork, content=b"XY", headers=text).raise_for_status()
        http.post(source, content=b"ghi", headers=text).raise_for_status()
        # Then the fork reads what it inherited, then its own; the source is untouched
        assert http.get(fork, params={"offset": "-1"}).content == b"abcdeXY"
        assert http.get(source, params={"offset": "-1"}).content == b"abcdefghi"
        # And a fork past the source's next append, or of another type, is refused
        too_far = {"Stream-Forked-From": source, "Stream-Fork-Offset": at, "Stream-Fork-Sub-Offset": "4"}
        assert http.put(_name(), headers=too_far).status_code == 400
        assert http.put(_name(), headers={"Stream-Forked-From": source, **JSON}).status_code == 409
        # And once the source is deleted, it answers 410 (its name cannot be taken) while the fork still reads
        assert http.delete(source).status_code == 204
        assert http.get(source).status_code == 410 and http.put(source, headers=text).status_code == 409
        assert http.get(fork, params={"offset": "-1"}).content == b"abcdeXY"
        # When the last fork goes, so does the deleted source
        assert http.delete(fork).status_code == 204
        assert http.get(source).status_code == 404


def test_a_protocol_producer_writes_an_external_generation_that_readers_get_through_the_chain(stack: Stack) -> None:
    with _client(stack) as http:
        # Given an external generation, and its Durable Stream
        gen = stack.create(model="external", prompt="fed over the protocol")
        path = f"/v1/stream/generations/{gen['id']}"

        def send(body: bytes, seq: int, **headers: str) -> httpx.Response:
            producer = {"Producer-Id": "model-1", "Producer-Epoch": "0", "Producer-Seq": str(seq)}
            return http.post(path, content=body, headers={**JSON, **producer, **headers})

        # When an idempotent producer appends two batches, one of them twice, then ends it
        first = send(b'["Hel", "lo"]', 0)
        assert first.status_code == 200 and first.headers["producer-seq"] == "0"
        assert send(b'["Hel", "lo"]', 0).status_code == 204  # a retry: written once
        assert send(b'" world"', 2).status_code == 409  # a gap
        assert send(b'" world"', 1).status_code == 200
        assert http.post(path, content=b"[1]", headers=JSON).status_code == 400  # a token is a JSON string
        ended = send(b"", 2, **{"Stream-Closed": "true"})
        assert ended.status_code == 204 and ended.headers["stream-closed"] == "true"
        # Then every reader gets each token once, then done, as the processor chain committed them
        assert stack.events(gen).ended_by_server
        events = http.get(path, params={"offset": "-1"}).json()
        assert "".join(e["data"]["content"] for e in events if e["event"] == "token") == "Hello world"
        assert events[-1]["event"] == "done"
        # And an append after the end is refused with the stream closed
        late = send(b'"!"', 3)
        assert late.status_code == 409 and late.headers["stream-closed"] == "true"
