"""The Durable Streams protocol's official clients read tokenbridge generations, with no tokenbridge code: the
Python package (``durable-streams``) and the npm package (``@durable-streams/client``), each reading part of a
running answer, saving its offset, and resuming from it live to the end of the stream."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from durable_streams import stream as ds_stream

from tests.support import npm
from tests.support.stack import Stack

pytestmark = pytest.mark.e2e

PROMPT = "An answer read by a client that knows nothing of tokenbridge, resumed from where it stopped."

NODE_READER = """
import { stream } from "@durable-streams/client";

const [url, key, live] = process.argv.slice(2);
const headers = { Authorization: `Bearer ${key}` };
// What is there now (the answer is still running), and the offset it ends at.
const first = await stream({ url, headers, offset: "-1", live: false });
const before = await first.json();
const saved = first.offset;
// Resumed from that offset, live, until the stream closes.
const rest = await stream({ url, headers, offset: saved, live });
const after = [];
await new Promise((resolve, reject) => {
  rest.subscribeJson(async (batch) => {
    after.push(...batch.items);
    if (batch.streamClosed) resolve();
  });
  // The session may report itself closed before the subscriber has its last batch: only an error ends it here.
  rest.closed.catch(reject);
});
console.log(JSON.stringify({ before, saved, after, closed: rest.streamClosed }));
"""


def _text(messages: list[dict[str, Any]]) -> str:
    return "".join(m["data"]["content"] for m in messages if m["event"] == "token")


def _running(stack: Stack) -> tuple[dict[str, Any], str]:
    gen = stack.create(model="echo", prompt=PROMPT, options={"delay_ms": 60})
    return gen, stack.url(f"/v1/stream/generations/{gen['id']}")


def _whole(stack: Stack, gen: dict[str, Any]) -> list[dict[str, Any]]:
    assert stack.events(gen).ended_by_server
    messages: list[dict[str, Any]] = stack.get(f"/v1/stream/generations/{gen['id']}").json()
    return messages


@pytest.mark.parametrize("live", ["long-poll", "sse"])
def test_the_python_client_reads_part_of_an_answer_and_resumes_from_its_saved_offset(stack: Stack, live: str) -> None:
    # Given a running generation, read once as far as it has come, its offset saved
    gen, url = _running(stack)
    with ds_stream(url, offset="-1", live=False, headers=stack.headers, timeout=30) as first:
        before = first.read_json()
        saved = first.offset
    # When the client resumes from the saved offset, live, until the terminal event (this client's release, 0.1.0,
    # predates the protocol's stream closure: it would poll a closed stream's end for ever)
    after: list[dict[str, Any]] = []
    with ds_stream(url, offset=saved, live=live, headers=stack.headers, timeout=30) as rest:
        for message in rest.iter_json():
            after.append(message)
            if message["event"] in ("done", "error", "cancelled"):
                break
    # Then the two parts are the whole answer, once each
    assert before + after == _whole(stack, gen)
    assert _text(before + after) == PROMPT and after[-1]["event"] == "done"
    assert len(before) < len(before + after)


@pytest.fixture(scope="module")
def node_reader(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A Node script that uses the npm client, installed with npm once (skipped without npm)."""
    prefix = tmp_path_factory.mktemp("durable-streams-client")
    npm.install(npm.DURABLE_STREAMS_CLIENT, prefix)
    script = prefix / "reader.mjs"
    script.write_text(NODE_READER)
    yield script


@pytest.mark.parametrize("live", ["long-poll", "sse"])
def test_the_npm_client_reads_part_of_an_answer_and_resumes_from_its_saved_offset(
    stack: Stack, node_reader: Path, live: str
) -> None:
    gen, url = _running(stack)
    key = stack.headers["Authorization"].removeprefix("Bearer ")
    run = subprocess.run(
        ["node", str(node_reader), url, key, live], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["before"] + result["after"] == _whole(stack, gen), run.stderr
    assert _text(result["after"]) and result["after"][-1]["event"] == "done" and result["closed"]
    assert len(result["before"]) < len(result["before"] + result["after"])
