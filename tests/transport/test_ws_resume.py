"""Resuming a stream over WebSocket protocol v1 after the client's connection dropped.

A real Baton WS server on 127.0.0.1, the ``websockets`` client in a worker thread (as in
``test_ws``), and a scripted provider that sends a token only when the test lets it: the seq of
every event is then known, so "the client missed the last 3 events" means exactly that. What
the client finally holds must be the provider's whole answer, with gapless seqs, one terminal
event, and every replayed frame byte for byte the one first sent.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import attrs
import pytest
import trio
from websockets.asyncio.client import ClientConnection, connect

from actors import (
    Finish,
    TextDelta,
    UpstreamEvent,
    UpstreamRequest,
    Usage,
    config_from_dict,
    open_baton,
    short_id,
)
from transport import ClientAuth, serve_ws

from .test_ws import client, send, start, wait_until

TOKENS = [f"w{i} " for i in range(40)]
ANSWER = "".join(TOKENS)
CAP = 8  # server.event_log_cap in these tests
ALICE = "sk-alice-SECRETKEY-resume-1"
BOB = "sk-bob-SECRETKEY-resume-2"
WINDOW = 1.5  # seconds, for the test that waits a resume window out (the default is 60)


@attrs.define(eq=False)
class Request:
    """What the provider saw of one upstream request."""

    finished: bool = False  # it sent its Finish
    closed: bool = False  # the session left the request (closed it)

    @property
    def abandoned(self) -> bool:
        return self.closed and not self.finished


class GatedProvider:
    """Answers ``TOKENS`` one token per ``release``d permit, then finishes."""

    name = "a"
    kind = "openai"

    def __init__(self) -> None:
        self.allowed = 0
        self._more = trio.Event()
        self.requests: list[Request] = []

    def release(self, count: int = len(TOKENS)) -> None:
        self.allowed += count
        self._more.set()
        self._more = trio.Event()

    @asynccontextmanager
    async def stream(
        self, request: UpstreamRequest, *, read_delay: Callable[[], float] | None = None
    ) -> AsyncIterator[AsyncIterator[UpstreamEvent]]:
        record = Request()
        self.requests.append(record)
        try:
            yield self._events(record)
        finally:
            record.closed = True

    async def _events(self, record: Request) -> AsyncIterator[UpstreamEvent]:
        for i, token in enumerate(TOKENS):
            while self.allowed <= i:
                await self._more.wait()
            yield TextDelta(token)
        record.finished = True
        usage = Usage(prompt_tokens=5, completion_tokens=len(TOKENS))
        yield Finish(reason="stop", usage=usage, model="model-a")

    async def probe(self, kind: str) -> None:
        return None


@attrs.frozen
class Server:
    url: str
    provider: GatedProvider
    auth: ClientAuth

    def release(self, count: int = len(TOKENS)) -> None:
        """Let the provider send ``count`` more tokens; callable from the client's thread."""
        trio.from_thread.run_sync(self.provider.release, count)


@asynccontextmanager
async def running(
    window: float = 60.0, *, keys: bool = False, max_streams: int = 100
) -> AsyncIterator[Server]:
    provider = GatedProvider()
    clients = {
        name: {"key_sha256": hashlib.sha256(key.encode()).hexdigest(), "tokens_per_minute": 10**6}
        for name, key in (("alice", ALICE), ("bob", BOB))
    }
    config = config_from_dict({
        "server": {"resume_window": window, "event_log_cap": CAP},
        "providers": {"a": {"kind": "openai", "base_url": "http://a.invalid/v1"}},
        "routes": {"default": {"targets": [{"provider": "a", "model": "model-a"}]}},
        "clients": clients if keys else {},
    })  # fmt: skip
    auth = ClientAuth.from_config(config)
    async with open_baton(config, {"a": provider}) as baton, trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve_ws, baton, auth=auth, max_streams=max_streams))
        yield Server(url=f"ws://127.0.0.1:{port}/v1/stream", provider=provider, auth=auth)
        nursery.cancel_scope.cancel()


def open_ws(url: str, key: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else None
    return connect(url, proxy=None, open_timeout=5, close_timeout=2, additional_headers=headers)


async def raw(ws: ClientConnection) -> str:
    frame = await ws.recv()
    assert isinstance(frame, str)
    return frame


async def frames_of(ws: ClientConnection, count: int) -> list[str]:
    return [await raw(ws) for _ in range(count)]


async def rest_of(ws: ClientConnection) -> list[str]:
    """Frames up to and including the stream's terminal one."""
    frames = [await raw(ws)]
    while json.loads(frames[-1])["type"] not in ("done", "error"):
        frames.append(await raw(ws))
    return frames


async def begin(server: Server, ws: ClientConnection, deltas: int) -> list[str]:
    """Start a stream and take its ``started`` and then ``deltas`` deltas, one token each."""
    await send(ws, start())
    frames = [await raw(ws)]
    for _ in range(deltas):
        server.release(1)
        frames.append(await raw(ws))
    return frames


def seq(frame: str) -> int:
    seq_: int = json.loads(frame)["seq"]
    return seq_


def held_answer(frames: list[str]) -> str:
    """Check what the client holds (gapless seqs, one stream, one terminal, last): its text."""
    events = [json.loads(f) for f in frames]
    assert [e["seq"] for e in events] == list(range(len(events))), events
    assert len({e["stream"] for e in events}) == 1
    assert [e["type"] in ("done", "error") for e in events].count(True) == 1
    assert events[-1]["type"] == "done" and events[-1]["finish_reason"] == "stop"
    return "".join(e["text"] for e in events if e["type"] == "delta")


def resume(stream: str, after: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "resume", "stream": stream, "after": after, **extra}


def stream_id(frames: list[str]) -> str:
    stream: str = json.loads(frames[0])["stream"]
    return stream


# --- missed events --------------------------------------------------------------------------------


@pytest.mark.parametrize("missed", [1, 3, CAP])
async def test_a_dropped_client_resumes_with_the_events_it_missed_and_the_live_rest(
    missed: int,
) -> None:
    async def conversation(server: Server) -> tuple[list[str], list[str], list[str]]:
        async with open_ws(server.url) as ws:
            sent = await begin(server, ws, 20)
            ws.transport.abort()  # the network goes; the last ``missed`` frames never arrived
        held, lost = sent[:-missed], sent[-missed:]
        async with open_ws(server.url) as ws:
            await send(ws, resume(stream_id(sent), seq(held[-1])))
            replay = await frames_of(ws, missed)
            server.release()
            return held, lost, replay + await rest_of(ws)

    async with running() as server:
        held, lost, resumed = await client(conversation, server)
        await wait_until(lambda: server.provider.requests[0].closed)
    assert resumed[:missed] == lost  # the same seqs and payloads, encoded as first sent
    assert held_answer(held + resumed) == ANSWER
    # The upstream answer was never cancelled: one request, read to its end.
    assert [(r.finished, r.closed) for r in server.provider.requests] == [(True, True)]


async def test_one_more_missed_event_than_the_log_keeps_is_resume_unavailable() -> None:
    async def conversation(server: Server) -> tuple[dict[str, Any], list[str], list[str]]:
        async with open_ws(server.url) as ws:
            sent = await begin(server, ws, 20)
        stream = stream_id(sent)
        async with open_ws(server.url) as ws:
            await send(ws, resume(stream, seq(sent[-CAP - 2]), ref="again"))
            refused = json.loads(await raw(ws))
            # The refusal displaced nothing: the client can still resume from what is held.
            await send(ws, resume(stream, seq(sent[-CAP - 1])))
            replay = await frames_of(ws, CAP)
            server.release()
            return refused, sent, replay + await rest_of(ws)

    async with running() as server:
        refused, sent, resumed = await client(conversation, server)
    oldest = seq(sent[-CAP])
    assert refused == {
        "type": "error", "stream": stream_id(sent), "seq": None, "code": "resume_unavailable",
        "message": refused["message"], "retryable": False, "ref": "again",
    }  # fmt: skip
    assert f"the oldest seq it still holds is {oldest}" in refused["message"]
    assert resumed[:CAP] == sent[-CAP:]
    assert held_answer(sent[:-CAP] + resumed) == ANSWER


async def test_resuming_after_the_stream_ended_meanwhile_replays_its_terminal_event() -> None:
    async def conversation(server: Server) -> tuple[list[str], list[str]]:
        async with open_ws(server.url) as ws:
            sent = await begin(server, ws, 5)
        # The answer completes while nobody reads it.
        server.release()
        trio.from_thread.run(wait_until, lambda: server.provider.requests[0].closed)
        async with open_ws(server.url) as ws:
            await send(ws, resume(stream_id(sent), seq(sent[-1])))
            return sent, await rest_of(ws)

    async with running() as server:
        sent, resumed = await client(conversation, server)
    assert [json.loads(f)["type"] for f in resumed] == ["delta", "done"]
    assert held_answer(sent + resumed) == ANSWER
    assert server.provider.requests[0].finished


async def test_a_stale_seq_is_served_from_there_on_and_the_client_drops_its_duplicates() -> None:
    async def conversation(server: Server) -> tuple[list[str], list[str]]:
        async with open_ws(server.url) as ws:
            sent = await begin(server, ws, 10)
        async with open_ws(server.url) as ws:
            await send(ws, resume(stream_id(sent), 4))  # it holds up to seq 10
            replay = await frames_of(ws, 6)
            server.release()
            return sent, replay + await rest_of(ws)

    async with running() as server:
        sent, resumed = await client(conversation, server)
    assert seq(sent[-1]) == 10 and [seq(f) for f in resumed[:6]] == [5, 6, 7, 8, 9, 10]
    assert resumed[:6] == sent[5:]  # identical duplicates
    fresh = [f for f in resumed if seq(f) > seq(sent[-1])]
    assert held_answer(sent + fresh) == ANSWER


async def test_a_client_can_resume_again_after_each_drop() -> None:
    async def conversation(server: Server) -> list[str]:
        async with open_ws(server.url) as ws:
            held = await begin(server, ws, 3)
        for _drop in range(3):
            async with open_ws(server.url) as ws:
                await send(ws, resume(stream_id(held), seq(held[-1])))
                for _ in range(4):
                    server.release(1)
                    held.append(await raw(ws))
        async with open_ws(server.url) as ws:
            await send(ws, resume(stream_id(held), seq(held[-1])))
            server.release()
            return held + await rest_of(ws)

    async with running() as server:
        held = await client(conversation, server)
    assert held_answer(held) == ANSWER


# --- who may resume what ----------------------------------------------------------------------


async def test_only_the_client_key_that_started_a_stream_can_resume_it() -> None:
    async def conversation(server: Server) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
        async with open_ws(server.url, ALICE) as ws:
            sent = await begin(server, ws, 3)
        stream = stream_id(sent)
        async with open_ws(server.url, BOB) as ws:
            await send(ws, resume(stream, seq(sent[-1]), ref="bob"))
            bobs = json.loads(await raw(ws))
            await send(ws, resume("st_" + "x" * 22, 0))
            unknown = json.loads(await raw(ws))
        async with open_ws(server.url, ALICE) as ws:
            await send(ws, resume(stream, seq(sent[-1])))
            server.release()
            return bobs, unknown, sent + await rest_of(ws)

    async with running(keys=True) as server:
        bobs, unknown, held = await client(conversation, server)
    assert bobs["code"] == "unknown_stream" and bobs["ref"] == "bob"
    assert bobs["stream"] == stream_id(held) and bobs["seq"] is None
    # Another client's stream reads exactly like one that never existed.
    assert unknown["code"] == "unknown_stream"
    assert unknown["message"].replace("st_xxxxx", "") == bobs["message"].replace(
        stream_id(held)[:8], ""
    )
    assert held_answer(held) == ANSWER


async def test_tokens_per_minute_counts_a_resumed_streams_tokens_once() -> None:
    def spent(server: Server) -> int:
        return trio.from_thread.run_sync(server.auth.statistics)["alice"].recent_tokens

    async def conversation(server: Server) -> tuple[list[int], list[str]]:
        async with open_ws(server.url, ALICE) as ws:
            sent = await begin(server, ws, 3)
            counts = [spent(server)]
        async with open_ws(server.url, ALICE) as ws:
            await send(ws, resume(stream_id(sent), 0))  # seqs 1-3 come again
            assert [seq(f) for f in await frames_of(ws, 3)] == [1, 2, 3]
            counts.append(spent(server))
            server.release()
            rest = await rest_of(ws)
            counts.append(spent(server))
            return counts, sent + rest

    async with running(keys=True) as server:
        counts, held = await client(conversation, server)
    # The repeated events are not counted again; the provider's usage settles the total.
    assert counts[0] > 0 and counts == [counts[0], counts[0], len(TOKENS)]
    assert held_answer(held) == ANSWER


BAD_RESUMES = [
    ("after missing", {"type": "resume", "stream": "S"}),
    ("after not an integer", resume("S", 3.5)),
    ("after a boolean", resume("S", True)),
    ("after below -1", resume("S", -2)),
    ("after beyond the stream", resume("S", 99)),
    ("unknown field", resume("S", 1, since=1)),
]


@pytest.mark.parametrize("frame", [c[1] for c in BAD_RESUMES], ids=[c[0] for c in BAD_RESUMES])
async def test_a_bad_after_is_a_bad_request_and_the_stream_can_still_be_resumed(
    frame: dict[str, Any],
) -> None:
    async def conversation(server: Server) -> tuple[dict[str, Any], list[str]]:
        async with open_ws(server.url) as ws:
            sent = await begin(server, ws, 3)
        async with open_ws(server.url) as ws:
            await send(ws, {**frame, "stream": stream_id(sent), "ref": "q"})
            error = json.loads(await raw(ws))
            await send(ws, resume(stream_id(sent), seq(sent[-1])))
            server.release()
            return error, sent + await rest_of(ws)

    async with running() as server:
        error, held = await client(conversation, server)
    assert error == {
        "type": "error", "stream": stream_id(held), "seq": None, "code": "bad_request",
        "message": error["message"], "retryable": False, "ref": "q",
    }  # fmt: skip
    assert error["message"].endswith(".") and stream_id(held) not in error["message"]
    assert held_answer(held) == ANSWER


# --- readers that come and go ---------------------------------------------------------------------


async def test_a_resume_on_another_live_connection_quietly_takes_the_stream_from_the_first() -> (
    None
):
    async def conversation(server: Server) -> tuple[list[str], list[str], list[str]]:
        async with open_ws(server.url) as first, open_ws(server.url) as second:
            sent = await begin(server, first, 3)
            await send(second, resume(stream_id(sent), seq(sent[-1])))
            # Frames are acted on in order: once this is answered, the resume was made.
            await send(second, {"type": "cancel", "stream": "st_none"})
            assert json.loads(await raw(second))["code"] == "unknown_stream"
            taken = []
            for _ in range(2):
                server.release(1)
                taken.append(await raw(second))
            # The first connection got nothing more of it, and its cancel is now a no-op.
            await send(first, {"type": "cancel", "stream": stream_id(sent)})
            await send(first, start("next"))
            following = json.loads(await raw(first))
            assert following["type"] == "started" and following["ref"] == "next", following
            await send(first, {"type": "cancel", "stream": following["stream"]})
            server.release()
            return sent, taken, await rest_of(second)

    async with running() as server:
        sent, taken, rest = await client(conversation, server)
        await wait_until(lambda: all(r.closed for r in server.provider.requests))
    assert held_answer(sent + taken + rest) == ANSWER
    assert server.provider.requests[0].finished


async def test_resuming_a_stream_this_connection_reads_replays_and_goes_on() -> None:
    async def conversation(server: Server) -> tuple[list[str], list[str]]:
        async with open_ws(server.url) as ws:
            sent = await begin(server, ws, 5)
            await send(ws, resume(stream_id(sent), 2))
            replay = await frames_of(ws, 3)
            server.release()
            return sent, replay + await rest_of(ws)

    async with running() as server:
        sent, resumed = await client(conversation, server)
    assert resumed[:3] == sent[3:]
    assert held_answer(sent + resumed[3:]) == ANSWER


async def test_cancel_works_on_a_resumed_stream() -> None:
    async def conversation(server: Server) -> list[str]:
        async with open_ws(server.url) as ws:
            sent = await begin(server, ws, 3)
        async with open_ws(server.url) as ws:
            await send(ws, resume(stream_id(sent), seq(sent[-1])))
            await send(ws, {"type": "cancel", "stream": stream_id(sent)})
            return await rest_of(ws)

    async with running() as server:
        rest = await client(conversation, server)
        await wait_until(lambda: server.provider.requests[0].closed)
    error = json.loads(rest[-1])
    assert error["type"] == "error" and error["code"] == "cancelled" and error["ref"] == "r1"
    assert seq(rest[0]) == 4
    assert server.provider.requests[0].abandoned


async def test_a_resumed_stream_counts_against_the_connections_max_streams() -> None:
    async def conversation(server: Server) -> tuple[dict[str, Any], list[str]]:
        async with open_ws(server.url) as ws:
            sent = await begin(server, ws, 3)
        async with open_ws(server.url) as ws:
            await send(ws, start("other"))
            other = json.loads(await raw(ws))
            await send(ws, resume(stream_id(sent), seq(sent[-1]), ref="back"))
            refused = json.loads(await raw(ws))
            while refused["stream"] == other["stream"]:  # its first deltas may come first
                refused = json.loads(await raw(ws))
            await send(ws, {"type": "cancel", "stream": other["stream"]})
            while json.loads(await raw(ws))["type"] != "error":
                pass  # the other stream's deltas, up to its end (cancelled)
            # The refused resume left the stream as it was: there is room now.
            await send(ws, resume(stream_id(sent), seq(sent[-1])))
            server.release()
            return refused, sent + await rest_of(ws)

    async with running(max_streams=1) as server:
        refused, held = await client(conversation, server)
    assert refused == {
        "type": "error", "stream": stream_id(held), "seq": None, "code": "too_many_streams",
        "message": refused["message"], "retryable": True, "ref": "back",
    }  # fmt: skip
    assert held_answer(held) == ANSWER


# --- the window ---------------------------------------------------------------------------------


async def test_a_detached_stream_is_cancelled_upstream_when_the_window_ends() -> None:
    async def conversation(server: Server) -> list[str]:
        async with open_ws(server.url) as ws:
            return await begin(server, ws, 3)

    async def late_resume(server: Server, sent: list[str]) -> dict[str, Any]:
        async with open_ws(server.url) as ws:
            await send(ws, resume(stream_id(sent), seq(sent[-1])))
            reply: dict[str, Any] = json.loads(await raw(ws))
            return reply

    async with running(window=WINDOW) as server:
        began = trio.current_time()
        sent = await client(conversation, server)
        request = server.provider.requests[0]
        assert not request.closed  # kept for a resume meanwhile
        await wait_until(lambda: request.closed)
        assert trio.current_time() - began >= WINDOW
        assert request.abandoned
        refused = await client(late_resume, server, sent)
    assert refused["code"] == "unknown_stream" and "resume window" in refused["message"]


async def test_resume_window_zero_cancels_on_disconnect_as_before() -> None:
    async def conversation(server: Server) -> tuple[list[str], dict[str, Any]]:
        async with open_ws(server.url) as ws:
            sent = await begin(server, ws, 3)
        trio.from_thread.run(wait_until, lambda: server.provider.requests[0].closed)
        async with open_ws(server.url) as ws:
            await send(ws, resume(stream_id(sent), seq(sent[-1])))
            return sent, json.loads(await raw(ws))

    async with running(window=0) as server:
        _sent, refused = await client(conversation, server)
        assert server.provider.requests[0].abandoned
    assert refused["code"] == "unknown_stream"


async def test_info_lines_never_show_a_whole_stream_id(caplog: pytest.LogCaptureFixture) -> None:
    # Without client keys the id is what lets a client resume: only DEBUG lines show it whole.
    async def conversation(server: Server) -> list[str]:
        async with open_ws(server.url) as ws:
            sent = await begin(server, ws, 3)
            ws.transport.abort()
        async with open_ws(server.url) as ws:
            await send(ws, resume(stream_id(sent), seq(sent[-1])))
            server.release()
            return sent + await rest_of(ws)

    caplog.set_level(logging.INFO)
    async with running() as server:
        held = await client(conversation, server)
    stream = stream_id(held)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith(("transport", "actors"))]
    assert any(short_id(stream) in line for line in lines if "resumed after seq 3" in line)
    assert not [line for line in lines if stream in line]
    assert held_answer(held) == ANSWER
