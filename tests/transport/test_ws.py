"""End-to-end tests of the WebSocket server (protocol v1) with the ``websockets`` client.

The server runs under trio on a real socket; the client is the independent ``websockets``
library running its asyncio client in a worker thread. Providers are in-memory fakes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import attrs
import pytest
import trio
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from actors import (
    Delta,
    Done,
    Failover,
    Message,
    Started,
    StreamError,
    Usage,
    config_from_dict,
    open_baton,
)
from scenarios import Behaviour, FakeProvider, FaultSchedule, answer_tokens
from transport import ClientFrameError, decode_client_message, encode_event, serve_ws
from transport._ws_codec import ResumeRequest

T = TypeVar("T")

CLIENT_TIMEOUT = 15.0  # seconds one client conversation may take before the test fails
MESSAGES = [{"role": "user", "content": "Tell me about rivers."}]
OTHER_MESSAGES = [{"role": "user", "content": "Tell me about gardens."}]
DRIP = Behaviour("drip", token_delay=0.05)  # a stream that lasts 2-6 s: time to act mid-stream


def expected_text(messages: list[dict[str, str]]) -> str:
    """The answer every healthy fake provider (seed 0) gives to ``messages``."""
    return "".join(answer_tokens([Message(**m) for m in messages], seed=0))


@attrs.frozen(kw_only=True)
class Server:
    url: str
    a: FakeProvider
    b: FakeProvider
    serving: trio.CancelScope  # cancel it to stop serve_ws alone


@asynccontextmanager
async def running(
    a: FaultSchedule | None = None,
    b: FaultSchedule | None = None,
    *,
    max_request_bytes: int = 65536,
    reports_usage: bool = True,
    resume_window: float = 60.0,
    **serve: Any,
) -> AsyncIterator[Server]:
    """Run a Baton over fakes ``a`` then ``b`` (route ``default``) behind ``serve_ws``."""
    providers = {
        name: FakeProvider(name, schedule, reports_usage=reports_usage)
        for name, schedule in (("a", a), ("b", b))
    }
    config = config_from_dict({
        "server": {"max_request_bytes": max_request_bytes, "resume_window": resume_window},
        "providers": {
            name: {"kind": "openai", "base_url": f"http://{name}.invalid/v1"} for name in providers
        },
        "routes": {"default": {"targets": [
            {"provider": "a", "model": "model-a"}, {"provider": "b", "model": "model-b"},
        ]}},
    })  # fmt: skip
    # A scope of serve_ws's own: cancelling the nursery's would also cancel the test's body.
    serving = trio.CancelScope()

    async def serve_until_stopped(task_status: trio.TaskStatus[int]) -> None:
        with serving:
            await serve_ws(baton, task_status=task_status, **serve)

    async with open_baton(config, providers, seed=0) as baton, trio.open_nursery() as nursery:
        port = await nursery.start(serve_until_stopped)
        url = f"ws://127.0.0.1:{port}/v1/stream"
        yield Server(url=url, a=providers["a"], b=providers["b"], serving=serving)
        serving.cancel()


async def client(conversation: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run an asyncio ``conversation(*args)`` in a thread, failing after CLIENT_TIMEOUT."""

    async def bounded() -> T:
        async with asyncio.timeout(CLIENT_TIMEOUT):
            return await conversation(*args)

    return await trio.to_thread.run_sync(lambda: asyncio.run(bounded()))


def open_ws(url: str) -> Any:
    return connect(url, proxy=None, open_timeout=5, close_timeout=2)


async def send(ws: ClientConnection, frame: dict[str, Any] | str | bytes) -> None:
    await ws.send(frame if isinstance(frame, (str, bytes)) else json.dumps(frame))


async def receive(ws: ClientConnection) -> dict[str, Any]:
    frame = await ws.recv()
    assert isinstance(frame, str), f"the server sent a binary frame: {frame!r}"
    return json.loads(frame)


async def until_terminal(ws: ClientConnection, count: int = 1) -> list[dict[str, Any]]:
    """Receive frames until ``count`` streams have ended; return every frame."""
    frames = []
    while count:
        frames.append(await receive(ws))
        if frames[-1]["type"] in ("done", "error"):
            count -= 1
    return frames


def start(
    ref: str | None = "r1", messages: list[dict[str, str]] = MESSAGES, **extra: Any
) -> dict[str, Any]:
    frame = {"type": "start", "model": "default", "messages": messages, **extra}
    if ref is not None:
        frame["ref"] = ref
    return frame


def check_stream(frames: list[dict[str, Any]]) -> str:
    """Check one stream's frames (gapless seqs from 0, one terminal, last); return its text."""
    assert [f["seq"] for f in frames] == list(range(len(frames))), frames
    assert len({f["stream"] for f in frames}) == 1, frames
    assert [f["type"] in ("done", "error") for f in frames].count(True) == 1, frames
    assert frames[-1]["type"] in ("done", "error"), frames
    return "".join(f["text"] for f in frames if f["type"] == "delta")


async def wait_until(condition: Callable[[], bool], *, within: float = 5.0) -> None:
    """Poll ``condition`` with short trio sleeps; fail if it is not true ``within`` seconds."""
    with trio.move_on_after(within):
        while not condition():
            await trio.sleep(0.01)
    assert condition(), f"not true after {within} s"


# --- streaming ----------------------------------------------------------------------------------


async def test_streams_an_answer() -> None:
    async def conversation(url: str) -> list[dict[str, Any]]:
        async with open_ws(url) as ws:
            await send(ws, start(params={"max_tokens": 500, "temperature": 0.7}))
            return await until_terminal(ws)

    async with running() as server:
        frames = await client(conversation, server.url)
        assert not server.a.open_attempts
    started, done = frames[0], frames[-1]
    assert started == {
        "type": "started", "stream": started["stream"], "ref": "r1", "seq": 0, "route": "default",
        "provider": "a", "model": "model-a",
    }  # fmt: skip
    assert started["stream"].startswith("st_")
    assert {f["type"] for f in frames[1:-1]} == {"delta"}
    assert done["type"] == "done" and done["provider"] == "a" and done["finish_reason"] == "stop"
    # Exactly the provider's numbers.
    usage = server.a.usage_sent[0]
    assert done["usage"] == {
        "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }  # fmt: skip
    assert usage.completion_tokens == len(answer_tokens([Message(**MESSAGES[0])]))
    assert check_stream(frames) == expected_text(MESSAGES) == server.a.log[0].text_sent


async def test_done_says_null_when_the_provider_reported_no_usage() -> None:
    async def conversation(url: str) -> list[dict[str, Any]]:
        async with open_ws(url) as ws:
            await send(ws, start())
            return await until_terminal(ws)

    async with running(reports_usage=False) as server:
        frames = await client(conversation, server.url)
    done = frames[-1]
    assert done["type"] == "done" and "usage" in done and done["usage"] is None
    assert check_stream(frames) == expected_text(MESSAGES)


async def test_two_concurrent_streams_on_one_connection() -> None:
    async def conversation(url: str) -> list[dict[str, Any]]:
        async with open_ws(url) as ws:
            await send(ws, start("rivers", MESSAGES))
            await send(ws, start("gardens", OTHER_MESSAGES))
            return await until_terminal(ws, 2)

    async with running(FaultSchedule.always(Behaviour("drip", token_delay=0.01))) as server:
        frames = await client(conversation, server.url)
    refs = {f["stream"]: f["ref"] for f in frames if f["type"] == "started"}
    assert sorted(refs.values()) == ["gardens", "rivers"]
    by_ref = {ref: [f for f in frames if f["stream"] == sid] for sid, ref in refs.items()}
    assert check_stream(by_ref["rivers"]) == expected_text(MESSAGES)
    assert check_stream(by_ref["gardens"]) == expected_text(OTHER_MESSAGES)
    # Interleaved: each stream sent text before the other one ended.
    order = [refs[f["stream"]] for f in frames]
    for ref in refs.values():
        assert order.index(ref, order.index(ref) + 1) < max(
            i for i, r in enumerate(order) if r != ref
        )


async def test_many_streams_on_one_connection_keep_their_order() -> None:
    conversations = [[{"role": "user", "content": f"Question {i}?"}] for i in range(30)]

    async def conversation(url: str) -> list[dict[str, Any]]:
        async with open_ws(url) as ws:
            for i, messages in enumerate(conversations):
                await send(ws, start(str(i), messages))
            return await until_terminal(ws, len(conversations))

    async with running(max_streams=30) as server:
        frames = await client(conversation, server.url)
    refs = {f["stream"]: int(f["ref"]) for f in frames if f["type"] == "started"}
    assert sorted(refs.values()) == list(range(len(conversations)))
    for stream_id, i in refs.items():
        text = check_stream([f for f in frames if f["stream"] == stream_id])
        assert text == expected_text(conversations[i])


async def test_midstream_reset_fails_over_and_continues() -> None:
    reset = FaultSchedule.first(1, Behaviour("reset", at_token=7))

    async def conversation(url: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with open_ws(url) as ws:
            await send(ws, start("broken"))
            broken = await until_terminal(ws)
            await send(ws, start("healthy"))
            return broken, await until_terminal(ws)

    async with running(reset) as server:
        frames, healthy = await client(conversation, server.url)
        await wait_until(lambda: not server.a.open_attempts and not server.b.open_attempts)
        assert server.a.log[0].outcome == "reset"
    failovers = [f for f in frames if f["type"] == "failover"]
    assert len(failovers) == 1, frames
    assert failovers[0] | {"stream": None, "seq": None} == {
        "type": "failover", "stream": None, "seq": None, "from": "a", "to": "b", "model": "model-b",
        "reason": failovers[0]["reason"], "mode": "continue", "phase": "midstream",
    }  # fmt: skip
    assert frames[-1]["type"] == "done" and frames[-1]["provider"] == "b"
    text = check_stream(frames)
    assert text == check_stream(healthy) == expected_text(MESSAGES)


# --- cancelling and leaving ---------------------------------------------------------------------


async def test_cancel_ends_the_stream_and_closes_upstream() -> None:
    async def conversation(url: str) -> list[dict[str, Any]]:
        async with open_ws(url) as ws:
            await send(ws, start())
            frames = [await receive(ws), await receive(ws)]
            assert [f["type"] for f in frames] == ["started", "delta"]
            await send(ws, {"type": "cancel", "stream": frames[0]["stream"]})
            frames += await until_terminal(ws)
            # A cancel of the stream that has just ended is harmless: no error comes back.
            await send(ws, {"type": "cancel", "stream": frames[0]["stream"]})
            await send(ws, start("next"))
            return frames + [await receive(ws)]

    async with running(FaultSchedule.first(1, DRIP)) as server:
        frames = await client(conversation, server.url)
        await wait_until(lambda: not server.a.open_attempts)
        assert server.a.log[0].outcome == "abandoned"
    *frames, following = frames
    check_stream(frames)
    assert frames[-1]["code"] == "cancelled" and frames[-1]["retryable"] is False
    assert frames[-1]["ref"] == "r1"
    assert following["type"] == "started" and following["ref"] == "next"


@pytest.mark.parametrize("how", ["close", "abort"])
async def test_disconnect_mid_stream_closes_upstream_without_a_resume_window(
    how: str, caplog: pytest.LogCaptureFixture
) -> None:
    # With a window the stream is kept for a resume instead: see test_ws_resume.
    async def conversation(url: str) -> None:
        async with open_ws(url) as ws:
            await send(ws, start())
            assert (await receive(ws))["type"] == "started"
            assert (await receive(ws))["type"] == "delta"
            if how == "abort":
                ws.transport.abort()

    caplog.set_level(logging.DEBUG)
    async with running(FaultSchedule.always(DRIP), resume_window=0) as server:
        await client(conversation, server.url)
        await wait_until(lambda: not server.a.open_attempts)
        assert [r.outcome for r in server.a.log] == ["abandoned"]
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def test_server_shutdown_closes_connections_and_upstream() -> None:
    streaming = threading.Event()  # set by the client thread once text has arrived

    async def conversation(url: str) -> tuple[list[str], int | None]:
        types = []
        async with open_ws(url) as ws:
            await send(ws, start())
            try:
                while True:
                    types.append((await receive(ws))["type"])
                    if types[-1] == "delta":
                        streaming.set()
            except ConnectionClosed as exc:
                return types, exc.rcvd.code if exc.rcvd else None

    result = []

    async def run_client(url: str) -> None:
        result.append(await client(conversation, url))

    async with running(FaultSchedule.always(DRIP)) as server:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_client, server.url)
            await wait_until(streaming.is_set)
            server.serving.cancel()
        await wait_until(lambda: not server.a.open_attempts)
        assert [r.outcome for r in server.a.log] == ["abandoned"]
    [(types, code)] = result
    assert types[:2] == ["started", "delta"] and set(types[2:]) <= {"delta"}
    assert code == 1001


# --- bad input ----------------------------------------------------------------------------------

BAD_FRAMES = [
    ("not json", "{nope", "bad_request", None),
    ("binary", b'{"type": "start"}', "bad_request", None),
    ("not an object", "[1, 2]", "bad_request", None),
    ("no type", {"ref": "x"}, "bad_request", None),
    ("unknown type", {"type": "pause", "stream": "st_x"}, "bad_request", None),
    ("resume without stream", {"type": "resume", "after": 3, "ref": "q"}, "bad_request", "q"),
    ("no model", {"type": "start", "ref": "q", "messages": MESSAGES}, "bad_request", "q"),
    ("model not a string", start("q", model=5), "bad_request", "q"),
    ("ref not a string", {**start(None), "ref": 5}, "bad_request", None),
    ("unknown route", start("q", model="gpt-nope"), "unknown_model", "q"),
    ("no messages", start("q", messages=[]), "bad_request", "q"),
    ("bad role", start("q", messages=[{"role": "robot", "content": "hi"}]), "bad_request", "q"),
    ("bad param value", start("q", params={"temperature": 9}), "bad_request", "q"),
    ("unknown param", start("q", params={"temprature": 0.5}), "bad_request", "q"),
    ("params not an object", start("q", params=[1]), "bad_request", "q"),
    ("unknown field", start("q", stream=True), "bad_request", "q"),
    ("cancel without stream", {"type": "cancel"}, "bad_request", None),
    ("cancel stream not a string", {"type": "cancel", "stream": 7}, "bad_request", None),
    (
        "too large",
        start("q", messages=[{"role": "user", "content": "x" * 5000}]),
        "too_large",
        None,
    ),
]


@pytest.mark.parametrize(
    ("frame", "code", "ref"), [c[1:] for c in BAD_FRAMES], ids=[c[0] for c in BAD_FRAMES]
)
async def test_bad_frame_gets_an_error_and_the_connection_serves_on(
    frame: Any, code: str, ref: str | None
) -> None:
    async def conversation(url: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        async with open_ws(url) as ws:
            await send(ws, frame)
            error = await receive(ws)
            await send(ws, start("good"))
            return error, await until_terminal(ws)

    async with running(max_request_bytes=4096) as server:
        error, good = await client(conversation, server.url)
    expected = {"type": "error", "stream": None, "seq": None, "code": code, "retryable": False}
    assert {k: error[k] for k in expected} == expected, error
    assert error.get("ref") == ref
    assert isinstance(error["message"], str) and error["message"].endswith(".")
    assert good[0]["ref"] == "good" and check_stream(good) == expected_text(MESSAGES)


async def test_cancel_of_unknown_stream() -> None:
    async def conversation(url: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        async with open_ws(url) as ws:
            await send(ws, {"type": "cancel", "stream": "st_nope"})
            error = await receive(ws)
            await send(ws, start("good"))
            return error, await until_terminal(ws)

    async with running() as server:
        error, good = await client(conversation, server.url)
    assert error["type"] == "error" and error["code"] == "unknown_stream"
    assert error["stream"] == "st_nope" and error["seq"] is None
    assert check_stream(good) == expected_text(MESSAGES)


async def test_too_many_streams_on_one_connection() -> None:
    async def conversation(url: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        async with open_ws(url) as ws:
            await send(ws, start("one"))
            await send(ws, start("two"))
            await send(ws, start("three"))
            frames: list[dict[str, Any]] = []  # two started and one refusal, in any order
            while len(frames) < 3:
                frame = await receive(ws)
                if frame["type"] != "delta":
                    frames.append(frame)
            refused = next(f for f in frames if f["type"] == "error")
            for f in frames:
                if f["type"] == "started":
                    await send(ws, {"type": "cancel", "stream": f["stream"]})
            # The two running streams end (cancelled); then there is room again.
            rest = await until_terminal(ws, 2)
            assert sorted(f["code"] for f in rest if f["type"] == "error") == ["cancelled"] * 2
            await send(ws, start("four"))
            return refused, await until_terminal(ws)

    async with running(FaultSchedule.first(2, DRIP), max_streams=2) as server:
        refused, later = await client(conversation, server.url)
    assert refused["code"] == "too_many_streams" and refused["ref"] == "three"
    assert refused["stream"] is None and refused["seq"] is None and refused["retryable"] is True
    assert later[0]["ref"] == "four" and later[-1]["type"] == "done"


async def test_frame_over_the_hard_limit_closes_the_connection() -> None:
    async def conversation(url: str) -> int | None:
        async with open_ws(url) as ws:
            await send(ws, "x" * 10_000)
            try:
                await ws.recv()
            except ConnectionClosed as exc:
                return exc.rcvd.code if exc.rcvd else None
            return 0

    async with running(max_request_bytes=4096) as server:
        assert await client(conversation, server.url) == 1009


async def test_unknown_path_is_rejected() -> None:
    async def conversation(url: str) -> int:
        try:
            async with open_ws(url.replace("/v1/stream", "/v2/stream")):
                return 101
        except InvalidStatus as exc:
            return exc.response.status_code

    async with running() as server:
        assert await client(conversation, server.url) == 404


# --- the codec ----------------------------------------------------------------------------------


def test_encode_event_writes_each_event_type() -> None:
    usage = Usage(prompt_tokens=3, completion_tokens=5)
    cases = [
        (Started(stream="s", seq=0, ref=None, route="default", provider="a", model="m"),
         {"type": "started", "stream": "s", "seq": 0, "ref": None, "route": "default",
          "provider": "a", "model": "m"}),
        (Delta(stream="s", seq=1, text="héllo \"🙂\"\n"),
         {"type": "delta", "stream": "s", "seq": 1, "text": "héllo \"🙂\"\n"}),
        (Failover(stream="s", seq=2, from_provider="a", to_provider="b", to_model="mb",
                  reason="reset", mode="reset", phase="midstream"),
         {"type": "failover", "stream": "s", "seq": 2, "from": "a", "to": "b", "model": "mb",
          "reason": "reset", "mode": "reset", "phase": "midstream"}),
        (Done(stream="s", seq=3, finish_reason="stop", provider="b", model="mb", usage=usage),
         {"type": "done", "stream": "s", "seq": 3, "finish_reason": "stop", "provider": "b",
          "model": "mb", "usage": {"prompt_tokens": 3, "completion_tokens": 5,
                                   "total_tokens": 8}}),
        (Done(stream="s", seq=3, finish_reason="stop", provider="b", model="mb", usage=None),
         {"type": "done", "stream": "s", "seq": 3, "finish_reason": "stop", "provider": "b",
          "model": "mb", "usage": None}),
        (StreamError(stream="s", seq=1, code="all_providers_unavailable", message="M.",
                     retryable=True),
         {"type": "error", "stream": "s", "seq": 1, "code": "all_providers_unavailable",
          "message": "M.", "retryable": True}),
        (StreamError(stream="s", seq=1, code="upstream_rejected", message="M.", retryable=False,
                     status=400, upstream_code="context_length_exceeded"),
         {"type": "error", "stream": "s", "seq": 1, "code": "upstream_rejected", "message": "M.",
          "retryable": False, "status": 400, "upstream_code": "context_length_exceeded"}),
    ]  # fmt: skip
    for event, expected in cases:
        frame = encode_event(event)
        assert isinstance(frame, str)
        assert json.loads(frame) == expected
    error = StreamError(stream="s", seq=0, code="cancelled", message="M.", retryable=False)
    assert json.loads(encode_event(error, ref="q"))["ref"] == "q"
    with pytest.raises(TypeError):
        encode_event("delta")  # type: ignore[arg-type]


def test_decode_client_message() -> None:
    message = decode_client_message(json.dumps(start("q", params={"max_tokens": 5})))
    assert message.ref == "q" and message.route == "default"  # type: ignore[union-attr]
    assert message.messages == (Message(role="user", content=MESSAGES[0]["content"]),)  # type: ignore[union-attr]
    assert message.params == {"max_tokens": 5}  # type: ignore[union-attr]
    assert decode_client_message('{"type": "cancel", "stream": "st_1"}').stream == "st_1"  # type: ignore[union-attr]
    resume = decode_client_message('{"type": "resume", "stream": "st_1", "after": -1}')
    assert resume == ResumeRequest(stream="st_1", after=-1, ref=None)
    with pytest.raises(ClientFrameError) as info:
        decode_client_message(json.dumps(start("q", messages="hi")))
    assert info.value.code == "bad_request" and info.value.ref == "q"
