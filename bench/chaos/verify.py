"""The verdict of a chaos run: each generation checked against what its readers assembled and what Redis holds.

A generation is *lost* when a reader missed an event (a ``seq`` gap), its ``done`` text differs from the
provider's text, or Redis lacks its events; *duplicated* when a reader, the ``:out`` stream or a session
stream has an event twice; *hung* when a reader or a session reader got no terminal event in time, or a
stream has no terminal. A generation may end with an ``error`` whose code is documented (docs/API.md), or
``cancelled`` when the run cancelled it: then its text only has to be a prefix of the provider's text.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from bench.chaos.load import TERMINAL, Generation, LoadResult, Reading, SessionWatch
from bridge import keys, streams
from bridge.events import decode_out
from bridge.sessions import SessionResolver

# docs/API.md, "Generation error codes".
DOCUMENTED_ERRORS = {
    "provider_error",
    "provider_rejected",
    "provider_unavailable",
    "provider_timeout",
    "max_duration",
    "worker_lost",
    "queue_timeout",
    "producer_timeout",
    "producer_error",
    "poison_entry",
    "rate_limited",
    "enqueue_failed",
    "invalid_request",
}


@dataclass
class Verdict:
    generations: int = 0
    tokens: int = 0
    terminals: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    hung: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)  # other broken promises (undocumented code, uncalled cancel)
    pending: dict[str, int] = field(default_factory=dict)
    session_events: int = 0
    restarts: int = 0
    reconnects: int = 0
    drops: int = 0

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.hung or self.wrong or self.pending)


def verify(result: LoadResult, client: redis.Redis, group: str) -> Verdict:
    verdict = Verdict(generations=len(result.generations))
    outs: dict[str, list[tuple[int, str, str, dict[str, Any]]]] = {}
    for gen in result.generations:
        out = _out_events(client, gen.id)
        outs[gen.id] = out
        _check_generation(gen, out, client, verdict)
    for watch in result.sessions:
        _check_session(watch, outs, verdict)
    members: dict[str, list[str]] = {}
    for gen in result.generations:
        members.setdefault(gen.session_id, []).append(gen.id)
    _check_redis(client, group, members, outs, verdict)
    verdict.hung = [f"{line} [{_diagnose(client, line.split(':')[0])}]" for line in verdict.hung]
    return verdict


def _diagnose(client: redis.Redis, gid: str) -> str:
    """Where a hung generation stands: its record, its lease, and whether its task message is stuck in the
    broker's set of messages delivered but not acknowledged (kombu's ``unacked`` hash)."""
    if not gid.startswith("gen_"):
        return "session"
    meta: Any = client.hgetall(keys.gen_meta(gid))
    lease = client.get(keys.gen_lease(gid))
    stranded = any(gid in str(message) for message in client.hvals("unacked"))
    return (
        f"status {meta.get('status')}, attempt {meta.get('attempt')}, lease {lease}, "
        f"out {client.xlen(keys.gen_out(gid))}, raw {client.xlen(keys.gen_raw(gid))}, "
        f"task message {'delivered, not acknowledged' if stranded else 'not in unacked'}"
    )


def _out_events(client: redis.Redis, gid: str) -> list[tuple[int, str, str, dict[str, Any]]]:
    events = []
    entries: Any = client.xrange(keys.gen_out(gid))
    for entry_id, fields in entries:
        data = orjson.loads(fields["data"])
        events.append((data.get("seq", -1), fields["event"], entry_id, data))
    return events


def _problem(bucket: list[str], gid: str, why: str) -> None:
    bucket.append(f"{gid}: {why}")


def _check_generation(
    gen: Generation, out: list[tuple[int, str, str, dict[str, Any]]], client: redis.Redis, verdict: Verdict
) -> None:
    gid = gen.id
    # The stream in Redis: seq 0..n once each, one terminal, the last entry.
    seqs = [seq for seq, *_ in out]
    terminals = [event for _, event, *_ in out if event in TERMINAL]
    if len(set(seqs)) != len(seqs):
        _problem(verdict.duplicated, gid, f":out has a seq twice: {seqs}")
    elif seqs != list(range(len(seqs))):
        _problem(verdict.lost, gid, f":out seqs not contiguous: {seqs}")
    if len(terminals) != 1 or (out and out[-1][1] not in TERMINAL):
        _problem(verdict.hung if not terminals else verdict.duplicated, gid, f":out terminals {terminals}")
        return
    terminal, data = out[-1][1], out[-1][3]
    verdict.terminals[terminal] += 1
    # The text since the last restart, as the stream holds it and as :text holds it.
    text = ""
    for _, event, _, d in out:
        if event == "token":
            text += d["content"]
            verdict.tokens += 1
        elif event == "restart":
            text = ""
            verdict.restarts += 1
    _check_end(gen, terminal, data, text, verdict)
    stored = streams.load_text(client, gid)
    if stored != text:
        _problem(verdict.lost if len(stored) < len(text) else verdict.duplicated, gid, ":text differs from :out")
    for reading in gen.readings:
        _check_reading(gen, reading, out, text, verdict)


def _check_reading(
    gen: Generation, reading: Reading, out: list[tuple[int, str, str, dict[str, Any]]], text: str, verdict: Verdict
) -> None:
    """One reader against the stream in Redis: every event once, in order, and its end."""
    gid = gen.id
    verdict.reconnects += reading.reconnects + reading.ended_without_terminal
    verdict.drops += reading.drops
    where = f"{reading.transport} reader"
    if reading.duplicates:
        _problem(verdict.duplicated, gid, f"{where} got {reading.duplicates} events twice")
    if reading.gaps:
        _problem(verdict.lost, gid, f"{where} missed {reading.gaps} events")
    if reading.terminal is None:
        since = f"{reading.last_event_at - gen.created_at:.0f}" if reading.last_event_at else "-"
        opened = f"{reading.opened_at - gen.created_at:.0f}"
        stuck = f"open on port {reading.open_port} since +{opened} s" if reading.open_port else "not connected"
        _problem(
            verdict.hung,
            gid,
            f"{where} got no terminal ({len(reading.events)} events, the last at +{since} s; {reading.connects} "
            f"requests, refused {dict(reading.refused)}; {stuck})",
        )
    elif reading.text != text or [e[:3] for e in reading.events] != [(s, e, i) for s, e, i, _ in out]:
        _problem(verdict.lost, gid, f"{where} assembled something else than :out")


def _check_end(gen: Generation, terminal: str, data: dict[str, Any], text: str, verdict: Verdict) -> None:
    gid = gen.id
    if terminal == "done":
        if text != gen.expected:
            bucket = verdict.duplicated if len(text) > len(gen.expected) else verdict.lost
            _problem(bucket, gid, f"done with {len(text)} chars, provider's text has {len(gen.expected)}")
        elif data.get("finish_reason") != gen.finish_reason:
            _problem(verdict.wrong, gid, f"finish_reason {data.get('finish_reason')}, expected {gen.finish_reason}")
        return
    if not gen.expected.startswith(text):
        _problem(verdict.lost, gid, f"{terminal} with a text that is not a prefix of the provider's")
    if terminal == "cancelled":
        if not gen.cancel_requested:
            _problem(verdict.wrong, gid, "cancelled, but nobody cancelled it")
        return
    code = str(data.get("code"))
    verdict.errors[code] += 1
    if code not in DOCUMENTED_ERRORS and code != gen.error_requested:
        _problem(verdict.wrong, gid, f"error code {code!r} is not documented: {data.get('message')}")


def _check_session(
    watch: SessionWatch, outs: dict[str, list[tuple[int, str, str, dict[str, Any]]]], verdict: Verdict
) -> None:
    if watch.duplicates:
        _problem(verdict.duplicated, watch.id, f"session reader got {watch.duplicates} events twice")
    if watch.hung:
        _problem(verdict.hung, watch.id, "session reader did not see every generation end")
        return
    for gid in watch.generations:
        got = [(seq, event, content) for seq, event, content in watch.events.get(gid, [])]
        want = [(seq, event, d.get("content", "")) for seq, event, _, d in outs.get(gid, [])]
        verdict.session_events += len(got)
        if got != want:
            seqs = [seq for seq, *_ in got]
            bucket = verdict.duplicated if len(set(seqs)) < len(seqs) else verdict.lost
            _problem(bucket, gid, f"session {watch.id} reader: seqs {seqs} vs :out {[s for s, *_ in want]}")


def _check_redis(
    client: redis.Redis,
    group: str,
    sessions: dict[str, list[str]],
    outs: dict[str, list[tuple[int, str, str, dict[str, Any]]]],
    verdict: Verdict,
) -> None:
    """Nothing pending in a consumer group, no stream without a terminal, every session stream exact."""
    for stream in keys.work_streams(1):
        if client.exists(stream):
            pending = int(client.xpending(stream, group)["pending"])
            if pending:
                verdict.pending[stream] = pending
    for key in client.scan_iter(match="llm:gen:*:raw", count=1000):
        gid = keys.generation_id_from_key(key)
        pending = int(client.xpending(key, group)["pending"])
        if pending:
            verdict.pending[key] = pending
        if gid not in outs:
            out = _out_events(client, gid)
            if not out or out[-1][1] not in TERMINAL:
                _problem(verdict.hung, gid, "a generation the run does not know has a stream without a terminal")
    _check_sessions(client, sessions, outs, verdict)


def _check_sessions(
    client: redis.Redis,
    sessions: dict[str, list[str]],
    outs: dict[str, list[tuple[int, str, str, dict[str, Any]]]],
    verdict: Verdict,
) -> None:
    """Each session's events, as a reader gets them, are its generations' events one by one, for every generation
    of it that has events (one missing from the session altogether is lost too)."""
    resolver = SessionResolver(client)
    for session, generations in sessions.items():
        per_gen: dict[str, list[int]] = {}
        entries: Any = client.xrange(keys.session_out(session))
        # As a reader gets them: each entry resolved into the event it points at.
        for event in resolver.resolve(keys.session_out(session), [decode_out(i, f) for i, f in entries]):
            data = orjson.loads(event.data)
            if "seq" not in data:  # a reset: the generation's events were no longer kept (its window passed)
                _problem(verdict.wrong, data["generation_id"], f"session stream {session}: {event.event} {data}")
                continue
            per_gen.setdefault(data["generation_id"], []).append(data["seq"])
        for gid in generations:
            if outs.get(gid) and gid not in per_gen:
                _problem(verdict.lost, gid, f"session stream {session}: none of its {len(outs[gid])} events")
        for gid, seqs in per_gen.items():
            want = [seq for seq, *_ in outs.get(gid, [])]
            if seqs != want:
                bucket = verdict.duplicated if len(set(seqs)) < len(seqs) else verdict.lost
                _problem(bucket, gid, f"session stream {session}: seqs {seqs} vs :out {want}")
