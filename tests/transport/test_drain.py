"""Draining on SIGTERM/SIGINT, end to end: a ``baton serve`` process and the clients users have.

Baton runs as an operator runs it, in a subprocess, over simulated providers in the test's
process. ``sim`` drips a token every ``TOKEN_DELAY`` seconds, so a short answer (``SHORT``
tokens) ends within the drain timeout and a long one (over 100 tokens) does not; ``silent``
answers its head and then nothing, a stream without text. The clients are the ``websockets``
library, the official ``openai`` SDK and raw ``httpx``. Real time, each test a few seconds,
every wait bounded.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx
import openai
import pytest
import trio
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from actors import Message
from scenarios import Behaviour, FaultSchedule, answer_tokens, open_simulated_provider
from scenarios.sim import SimulatedProvider

TOKEN_DELAY = 0.1  # seconds before each token of sim's answers
SHORT = 12  # max_tokens of a short answer: it ends 1.2 s after it began
LONG = [{"role": "user", "content": "Tell me about rivers."}]
LONG_TOKENS = answer_tokens([Message(role="user", content=LONG[0]["content"])])
SHORT_ANSWER = "".join(LONG_TOKENS[:SHORT])
DRAIN_TIMEOUT = 2.5  # longer than what a short answer has left, far shorter than a long one

CONFIG = """\
[server]
http_port = {http}
ws_port = {ws}
{drain}
[providers.sim]
kind = "openai"
base_url = "{sim}"

[providers.silent]
kind = "openai"
base_url = "{silent}"
first_token_timeout = 60.0

[routes.default]
targets = [{{ provider = "sim", model = "m" }}]

[routes.silent]
targets = [{{ provider = "silent", model = "m" }}]
"""

# What the ``baton`` console script runs.
BATON = [sys.executable, "-c", "import sys; from scenarios.cli import main; sys.exit(main())"]


def test_the_long_answer_outlasts_the_drain_and_the_short_one_does_not() -> None:
    assert len(LONG_TOKENS) * TOKEN_DELAY > 3 * DRAIN_TIMEOUT
    assert SHORT * TOKEN_DELAY < DRAIN_TIMEOUT / 2


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@attrs.frozen(kw_only=True)
class Served:
    """A running ``baton serve`` process, where it listens, and its providers."""

    process: trio.Process
    http: str
    ws: str
    output: Path
    sim: SimulatedProvider
    silent: SimulatedProvider

    def log(self) -> str:
        return self.output.read_text(errors="replace")


@asynccontextmanager
async def serving(tmp_path: Path, drain_timeout: float | None) -> AsyncIterator[Served]:
    """Run ``baton serve`` over ``sim`` (drip) and ``silent`` (no text) until the block ends.

    ``drain_timeout`` None leaves the key out of the config (the default, 30 s).
    """
    drip = FaultSchedule.always(Behaviour("drip", token_delay=TOKEN_DELAY))
    stall = FaultSchedule.always(Behaviour("stall", stall=60.0))
    async with open_simulated_provider(drip) as sim, open_simulated_provider(stall) as silent:
        http, ws = free_port(), free_port()
        drain = "" if drain_timeout is None else f"drain_timeout = {drain_timeout}\n"
        config = tmp_path / "baton.toml"
        config.write_text(
            CONFIG.format(
                http=http, ws=ws, drain=drain, sim=sim.base_url_openai,
                silent=silent.base_url_openai,
            )
        )  # fmt: skip
        output = tmp_path / "baton.log"
        with output.open("wb") as out:
            process = await trio.lowlevel.open_process(
                [*BATON, "serve", "--config", str(config)], stdout=out, stderr=subprocess.STDOUT
            )
        served = Served(
            process=process, http=f"http://127.0.0.1:{http}", ws=f"ws://127.0.0.1:{ws}/v1/stream",
            output=output, sim=sim, silent=silent,
        )  # fmt: skip
        try:
            await until_serving(served)
            yield served
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                await process.wait()


async def until_serving(served: Served) -> None:
    """Poll ``/healthz`` until the process answers (bounded); fail if it exits first."""
    async with httpx.AsyncClient(timeout=2) as client:
        with trio.move_on_after(30):
            while served.process.returncode is None:
                try:
                    if (await client.get(f"{served.http}/healthz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await trio.sleep(0.05)
    pytest.fail(f"baton serve did not start:\n{served.log()}")


async def wait_until(condition: Callable[[], bool], *, within: float = 15.0) -> None:
    """Poll ``condition`` with short sleeps; fail if it is not true ``within`` seconds."""
    with trio.move_on_after(within):
        while not condition():
            await trio.sleep(0.02)
    assert condition(), f"not true after {within} s"


async def exit_status(served: Served, *, within: float) -> int:
    with trio.fail_after(within):
        return await served.process.wait()


async def until_draining(served: Served, client: httpx.AsyncClient) -> httpx.Response:
    """Poll ``/readyz`` until it says the process drains (bounded); return that answer."""
    with trio.move_on_after(10):
        while True:
            ready = await client.get(f"{served.http}/readyz")
            if ready.status_code == 503:
                return ready
            await trio.sleep(0.02)
    pytest.fail(f"/readyz never said draining:\n{served.log()}")


# --- the clients ------------------------------------------------------------------------------


@attrs.define
class WebSocketClient:
    """One ``websockets`` connection: every frame it received and the close code it got."""

    ws: ClientConnection
    frames: list[dict[str, Any]] = attrs.field(factory=list)
    close_code: int | None = None

    async def send(self, frame: dict[str, Any]) -> None:
        await trio.to_thread.run_sync(self.ws.send, json.dumps(frame))

    async def read_until_closed(self) -> None:
        while True:
            try:
                raw = await trio.to_thread.run_sync(partial(self.ws.recv, timeout=30))
            except ConnectionClosed as closed:
                self.close_code = None if closed.rcvd is None else closed.rcvd.code
                return
            self.frames.append(json.loads(raw))

    def stream(self, ref: str) -> list[dict[str, Any]]:
        """The frames of the stream started with ``ref``."""
        ids = {f["stream"] for f in self.frames if f.get("ref") == ref}
        return [f for f in self.frames if f["stream"] in ids and f["stream"] is not None]

    def has_text(self, ref: str) -> bool:
        return any(f["type"] == "delta" for f in self.stream(ref))

    def ended(self, ref: str) -> bool:
        return any(f["type"] in ("done", "error") for f in self.stream(ref))


@asynccontextmanager
async def open_websocket(url: str) -> AsyncIterator[WebSocketClient]:
    connection = await trio.to_thread.run_sync(
        partial(connect, url, proxy=None, open_timeout=5, close_timeout=5)
    )
    with connection:  # closed by the server by then: closing it again returns at once
        yield WebSocketClient(connection)


def ws_start(ref: str, *, model: str = "default", max_tokens: int | None = None) -> dict[str, Any]:
    params = {} if max_tokens is None else {"max_tokens": max_tokens}
    return {"type": "start", "ref": ref, "model": model, "messages": LONG, "params": params}


def check_one_stream(frames: list[dict[str, Any]]) -> dict[str, Any]:
    """Gapless seqs from 0 and exactly one terminal event, the last; returns that event."""
    assert frames, "no frames"
    assert [f["seq"] for f in frames] == list(range(len(frames))), frames
    assert [f["type"] in ("done", "error") for f in frames].count(True) == 1, frames
    assert frames[-1]["type"] in ("done", "error"), frames
    return frames[-1]


@attrs.define
class SDKStream:
    """One streamed chat completion through the sync ``openai`` SDK, in a worker thread."""

    base_url: str
    max_tokens: int | None = None
    texts: list[str] = attrs.field(factory=list)
    finish_reason: str | None = None
    error: openai.APIError | None = None
    ended: bool = False

    def run(self) -> None:
        extra = {} if self.max_tokens is None else {"max_tokens": self.max_tokens}
        options = {"base_url": f"{self.base_url}/v1", "api_key": "x", "max_retries": 0}
        try:
            with openai.OpenAI(**options, timeout=30) as client:
                stream = client.chat.completions.create(
                    model="default", messages=LONG, stream=True, **extra
                )  # type: ignore[call-overload]
                for chunk in stream:
                    choice = chunk.choices[0] if chunk.choices else None
                    if choice and choice.delta.content:
                        self.texts.append(choice.delta.content)
                    if choice and choice.finish_reason:
                        self.finish_reason = choice.finish_reason
        except openai.APIError as exc:
            self.error = exc
        finally:
            self.ended = True

    async def run_in_thread(self) -> None:
        await trio.to_thread.run_sync(self.run)


@attrs.define
class HttpxStream:
    """One streamed chat completion read with raw ``httpx`` to the end of its body."""

    base_url: str
    model: str = "default"
    max_tokens: int | None = None
    status: int | None = None
    headers: httpx.Headers | None = None
    body: str = ""
    ended: bool = False

    async def run(self, client: httpx.AsyncClient) -> None:
        request: dict[str, Any] = {"model": self.model, "messages": LONG, "stream": True}
        if self.max_tokens is not None:
            request["max_tokens"] = self.max_tokens
        url = f"{self.base_url}/v1/chat/completions"
        # A body cut off mid-chunk raises httpx.RemoteProtocolError here and fails the test.
        async with client.stream("POST", url, json=request) as response:
            self.status, self.headers = response.status_code, response.headers
            async for text in response.aiter_text():
                self.body += text
        self.ended = True

    @property
    def has_text(self) -> bool:
        return '"content":"' in self.body.replace('"content":""', "")

    def events(self) -> list[str]:
        """The ``data`` of each SSE event; the body must end with a whole event."""
        assert self.body.endswith("\n\n"), self.body[-300:]
        # An event may start with its ``id: <seq>`` line (for resuming): the data is the rest.
        return [
            block.split("\n")[-1].removeprefix("data: ") for block in self.body[:-2].split("\n\n")
        ]


def assert_ends_with_shutting_down_event(stream: HttpxStream) -> None:
    assert stream.status == 200, stream.body
    events = stream.events()
    assert "[DONE]" not in events, events[-3:]
    last = json.loads(events[-1])
    assert last["error"]["code"] == "shutting_down", last
    assert [("error" in json.loads(e)) for e in events].count(True) == 1, events[-3:]


def assert_sdk_raised_shutting_down(stream: SDKStream) -> None:
    # The error event's own exception, not APIConnectionError (a body cut off).
    assert type(stream.error) is openai.APIError, repr(stream.error)
    assert stream.error.code == "shutting_down"
    assert "".join(stream.texts) and "".join(LONG_TOKENS).startswith("".join(stream.texts))


# --- the tests --------------------------------------------------------------------------------


async def test_a_drain_finishes_short_streams_and_ends_long_ones_with_one_terminal_event(
    tmp_path: Path,
) -> None:
    with trio.fail_after(60):
        async with (
            serving(tmp_path, DRAIN_TIMEOUT) as served,
            httpx.AsyncClient(timeout=30) as client,
            open_websocket(served.ws) as ws,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(ws.read_until_closed)
            await ws.send(ws_start("ws-short", max_tokens=SHORT))
            await ws.send(ws_start("ws-long"))
            await ws.send(ws_start("ws-silent", model="silent"))
            sdk_short = SDKStream(served.http, max_tokens=SHORT)
            sdk_long = SDKStream(served.http)
            raw_short = HttpxStream(served.http, max_tokens=SHORT)
            raw_long = HttpxStream(served.http)
            raw_silent = HttpxStream(served.http, model="silent")
            for sdk in (sdk_short, sdk_long):
                nursery.start_soon(sdk.run_in_thread)
            for raw in (raw_short, raw_long, raw_silent):
                nursery.start_soon(raw.run, client)
            await wait_until(
                lambda: ws.has_text("ws-short") and ws.has_text("ws-long")
                and bool(sdk_short.texts and sdk_long.texts)
                and raw_short.has_text and raw_long.has_text
                and len(served.silent.log) == 2
            )  # fmt: skip
            # Every stream is running when the signal arrives.
            assert not any(ws.ended(ref) for ref in ("ws-short", "ws-long", "ws-silent"))
            assert not any(s.ended for s in (sdk_short, sdk_long, raw_short, raw_long, raw_silent))

            served.process.send_signal(signal.SIGTERM)
            ready = await until_draining(served, client)
            assert ready.json()["status"] == "draining"
            assert (await client.get(f"{served.http}/healthz")).status_code == 200
            # New streams are refused while the running ones finish.
            refused = await client.post(
                f"{served.http}/v1/chat/completions",
                json={"model": "default", "messages": LONG, "stream": True},
            )
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["code"] == "shutting_down"
            sdk_late = SDKStream(served.http)
            await sdk_late.run_in_thread()
            assert isinstance(sdk_late.error, openai.APIStatusError)
            assert sdk_late.error.status_code == 503 and sdk_late.error.code == "shutting_down"
            await ws.send(ws_start("ws-late"))

            assert await exit_status(served, within=DRAIN_TIMEOUT + 15) == 0, served.log()

    # WebSocket: one terminal event per stream, the long ones shutting_down; then 1001.
    assert check_one_stream(ws.stream("ws-short"))["type"] == "done"
    text = "".join(f["text"] for f in ws.stream("ws-short") if f["type"] == "delta")
    assert text == SHORT_ANSWER
    for ref in ("ws-long", "ws-silent"):
        end = check_one_stream(ws.stream(ref))
        assert (end["type"], end["code"], end["retryable"]) == ("error", "shutting_down", True)
    late = [f for f in ws.frames if f.get("ref") == "ws-late"]
    assert [(f["type"], f["stream"], f["code"], f["retryable"]) for f in late] == [
        ("error", None, "shutting_down", True)
    ]
    assert ws.close_code == 1001
    # The OpenAI SDK: the short answer whole, the long one raises the error event's APIError.
    assert sdk_short.error is None and sdk_short.finish_reason == "length"
    assert "".join(sdk_short.texts) == SHORT_ANSWER
    assert_sdk_raised_shutting_down(sdk_long)
    # Raw httpx: every body read to its end; [DONE], an error event, or a 503 before any text.
    assert raw_short.status == 200 and raw_short.events()[-1] == "[DONE]"
    assert_ends_with_shutting_down_event(raw_long)
    assert raw_silent.status == 503 and raw_silent.headers is not None
    assert raw_silent.headers["retry-after"] == "1"
    assert json.loads(raw_silent.body)["error"]["code"] == "shutting_down"


async def test_a_second_signal_ends_the_running_streams_at_once_with_their_terminal_events(
    tmp_path: Path,
) -> None:
    with trio.fail_after(60):
        async with (
            serving(tmp_path, None) as served,  # the default drain_timeout: 30 s
            httpx.AsyncClient(timeout=30) as client,
            open_websocket(served.ws) as ws,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(ws.read_until_closed)
            await ws.send(ws_start("ws-long"))
            await ws.send(ws_start("ws-silent", model="silent"))
            sdk_long = SDKStream(served.http)
            raw_long = HttpxStream(served.http)
            nursery.start_soon(sdk_long.run_in_thread)
            nursery.start_soon(raw_long.run, client)
            await wait_until(
                lambda: ws.has_text("ws-long") and bool(sdk_long.texts) and raw_long.has_text
                and len(served.silent.log) == 1
            )  # fmt: skip

            served.process.send_signal(signal.SIGINT)
            await until_draining(served, client)
            served.process.send_signal(signal.SIGINT)
            second = trio.current_time()
            assert await exit_status(served, within=15) == 0, served.log()
            assert trio.current_time() - second < 10  # not the 30 s drain timeout

    for ref in ("ws-long", "ws-silent"):
        end = check_one_stream(ws.stream(ref))
        assert (end["type"], end["code"], end["retryable"]) == ("error", "shutting_down", True)
    assert ws.close_code == 1001
    assert_sdk_raised_shutting_down(sdk_long)
    assert_ends_with_shutting_down_event(raw_long)
