"""A client key's ``max_streams`` counts its streams from start to end, whoever reads them.

A stream whose connection dropped is detached for a resume and runs on (``resume_window``),
holding upstream slots: it still counts, so a client cannot pass ``max_streams`` by dropping
connections. It is released once, when it ends (done, cancel, its window over, shutdown), and
resuming it counts nothing more. Over WebSocket (the ``websockets`` client) and SSE (httpx),
on real sockets on 127.0.0.1, with ``test_ws_resume``'s gated provider: a stream runs until
the test lets its tokens out.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import attrs
import httpx
import pytest
import trio
from websockets.asyncio.client import ClientConnection

from actors import Baton, config_from_dict, open_baton
from transport import ClientAuth, serve_http, serve_ws

from .test_ws import client, send, start, wait_until
from .test_ws_resume import ALICE, TOKENS, GatedProvider, open_ws, resume

MAX_STREAMS = 2
WINDOW = 1.0  # seconds: the resume window of the test that waits one out
PROMPT = [{"role": "user", "content": "Tell me about the harbour."}]
CHAT = {"model": "default", "messages": PROMPT, "stream": True}
AUTH = {"authorization": f"Bearer {ALICE}"}


@attrs.frozen
class Servers:
    baton: Baton
    provider: GatedProvider
    auth: ClientAuth
    http: str
    ws: str

    def active(self) -> int:
        """alice's streams as her key counts them."""
        return self.auth.statistics()["alice"].active_streams

    def active_now(self) -> int:
        """``active`` from the client's thread."""
        return trio.from_thread.run_sync(self.active)

    def release(self, count: int = len(TOKENS)) -> None:
        """Let every stream send ``count`` more tokens; callable from the client's thread."""
        trio.from_thread.run_sync(self.provider.release, count)

    def wait(self, condition: Any) -> None:
        """Wait (from the client's thread) until ``condition()`` holds in the server's."""
        trio.from_thread.run(wait_until, condition)


@asynccontextmanager
async def serving(window: float = 60.0) -> AsyncIterator[Servers]:
    """Baton over a gated provider, HTTP and WS sharing one ``ClientAuth``; alice's key may
    run ``MAX_STREAMS`` streams."""
    provider = GatedProvider()
    alice = {"key_sha256": hashlib.sha256(ALICE.encode()).hexdigest(), "max_streams": MAX_STREAMS}
    config = config_from_dict({
        "server": {"resume_window": window},
        "providers": {"a": {"kind": "openai", "base_url": "http://a.invalid/v1"}},
        "routes": {"default": {"targets": [{"provider": "a", "model": "model-a"}]}},
        "clients": {"alice": alice},
    })  # fmt: skip
    auth = ClientAuth.from_config(config)
    async with open_baton(config, {"a": provider}) as baton, trio.open_nursery() as nursery:
        http = await nursery.start(partial(serve_http, baton, auth=auth))
        ws = await nursery.start(partial(serve_ws, baton, auth=auth))
        yield Servers(
            baton=baton, provider=provider, auth=auth, http=f"http://127.0.0.1:{http}",
            ws=f"ws://127.0.0.1:{ws}/v1/stream",
        )  # fmt: skip
        nursery.cancel_scope.cancel()


async def frame(ws: ClientConnection) -> dict[str, Any]:
    data = await ws.recv()
    assert isinstance(data, str)
    parsed: dict[str, Any] = json.loads(data)
    return parsed


async def until_end(ws: ClientConnection) -> list[dict[str, Any]]:
    """Frames up to and including a stream's terminal one."""
    frames = [await frame(ws)]
    while frames[-1]["type"] not in ("done", "error"):
        frames.append(await frame(ws))
    return frames


async def start_two_and_drop(servers: Servers) -> list[str]:
    """alice starts ``MAX_STREAMS`` streams on one WS and her connection drops; their ids,
    once Baton holds both detached (running, no reader)."""
    async with open_ws(servers.ws, ALICE) as ws:
        for ref in ("one", "two"):
            await send(ws, start(ref=ref))
        started = [await frame(ws) for _ in range(MAX_STREAMS)]
        ws.transport.abort()  # the network goes
    assert [f["type"] for f in started] == ["started"] * MAX_STREAMS
    servers.wait(lambda: servers.baton.statistics().detached_streams == MAX_STREAMS)
    return [f["stream"] for f in started]


# --- WebSocket ---------------------------------------------------------------------------------


@pytest.mark.parametrize("end", ["done", "window"])
async def test_ws_streams_detached_by_a_drop_count_until_they_end(end: str) -> None:
    async def conversation(servers: Servers) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        await start_two_and_drop(servers)
        async with open_ws(servers.ws, ALICE) as ws:
            await send(ws, start(ref="three"))
            refused = await frame(ws)
            assert servers.active_now() == MAX_STREAMS  # the detached two, still running
            if end == "done":
                servers.release()  # the detached streams finish with nobody reading
            # else their resume window passes: Baton cancels them and closes their upstream
            servers.wait(lambda: servers.active() == 0)
            await send(ws, start(ref="four"))
            servers.release()
            return refused, await until_end(ws)

    async with serving(window=WINDOW if end == "window" else 60.0) as servers:
        refused, admitted = await client(conversation, servers)
        assert refused["type"] == "error" and refused["ref"] == "three"
        assert refused["code"] == "too_many_streams" and refused["retryable"] is True
        assert "max_streams" in refused["message"]
        assert (admitted[0]["type"], admitted[-1]["type"]) == ("started", "done")
        detached = servers.provider.requests[:MAX_STREAMS]
        if end == "done":
            assert all(r.finished and r.closed for r in detached)
        else:
            assert all(r.abandoned for r in detached)  # cancelled at the window's end
        await wait_until(lambda: servers.active() == 0)
        assert servers.auth.statistics()["alice"].refused == 1


async def test_ws_resuming_its_own_detached_stream_is_never_refused_by_max_streams() -> None:
    async def conversation(servers: Servers) -> list[list[dict[str, Any]]]:
        streams = await start_two_and_drop(servers)
        async with open_ws(servers.ws, ALICE) as ws:
            for stream in streams:  # at max_streams: both are resumed, none is counted again
                await send(ws, resume(stream, 0))
            assert servers.active_now() == MAX_STREAMS
            servers.release()
            return [await until_end(ws), await until_end(ws)]

    async with serving() as servers:
        resumed = await client(conversation, servers)
        assert sorted(f[-1]["type"] for f in resumed) == ["done", "done"]
        await wait_until(lambda: servers.active() == 0)
        assert servers.auth.statistics()["alice"].refused == 0


async def test_ws_a_cancel_and_a_shutdown_release_each_stream_once() -> None:
    async def conversation(servers: Servers) -> dict[str, Any]:
        async with open_ws(servers.ws, ALICE) as ws:
            await send(ws, start(ref="cancelled"))
            stream = (await frame(ws))["stream"]
            await send(ws, {"type": "cancel", "stream": stream})
            ended = await frame(ws)
            servers.wait(lambda: servers.active() == 0)
            await send(ws, start(ref="read"))
            await frame(ws)  # started
        servers.wait(lambda: servers.baton.statistics().detached_streams == 1)
        return ended

    async with serving() as servers:
        ended = await client(conversation, servers)
        assert ended["type"] == "error" and ended["code"] == "cancelled"
        assert servers.active() == 1  # the detached one runs on
        auth, baton = servers.auth, servers.baton
    # Leaving ``serving`` shut Baton down: the detached stream ended and was released once.
    assert baton.statistics().active_streams == 0
    assert auth.statistics()["alice"].active_streams == 0


# --- SSE -----------------------------------------------------------------------------------------


async def open_sse(http: httpx.AsyncClient, servers: Servers) -> str:
    """Start a streamed answer, read its first chunk, hang up; its stream id."""
    url = servers.http + "/v1/chat/completions"
    request = http.build_request("POST", url, json=CHAT, headers=AUTH)
    servers.provider.release(1)  # headers wait for the first output
    response = await http.send(request, stream=True)
    assert response.status_code == 200, await response.aread()
    stream_id = response.headers["x-baton-stream"]
    await response.aclose()
    return stream_id


async def post(http: httpx.AsyncClient, servers: Servers) -> httpx.Response:
    return await http.post(servers.http + "/v1/chat/completions", json=CHAT, headers=AUTH)


async def test_sse_streams_dropped_by_their_client_count_until_they_end_and_resume_freely() -> None:
    async with serving() as servers, httpx.AsyncClient(timeout=10) as http:
        streams = [await open_sse(http, servers) for _ in range(MAX_STREAMS)]
        await wait_until(lambda: servers.baton.statistics().detached_streams == MAX_STREAMS)
        over = await post(http, servers)
        assert over.status_code == 429
        assert over.json()["error"]["code"] == "too_many_streams"
        assert servers.active() == MAX_STREAMS
        # Resuming one of its own detached streams at max_streams is not refused.
        url = servers.http + f"/v1/streams/{streams[0]}"
        request = http.build_request("GET", url, headers={**AUTH, "last-event-id": "0"})
        resumed = await http.send(request, stream=True)
        assert resumed.status_code == 200
        assert servers.active() == MAX_STREAMS
        servers.provider.release()
        body = (await resumed.aread()).decode()
        assert body.rstrip().endswith("data: [DONE]")
        await wait_until(lambda: servers.active() == 0)  # the other ended detached
        admitted = await post(http, servers)
        assert admitted.status_code == 200, admitted.text
        assert admitted.text.rstrip().endswith("data: [DONE]")
        await wait_until(lambda: servers.active() == 0)
        assert servers.auth.statistics()["alice"].refused == 1


async def test_sse_streams_are_released_when_their_resume_window_passes() -> None:
    async with serving(window=WINDOW) as servers, httpx.AsyncClient(timeout=10) as http:
        for _ in range(MAX_STREAMS):
            await open_sse(http, servers)
        assert (await post(http, servers)).status_code == 429
        await wait_until(lambda: servers.active() == 0)  # the window passed: cancelled
        assert all(r.abandoned for r in servers.provider.requests)
        assert servers.baton.statistics().finished.get("cancelled") == MAX_STREAMS
        servers.provider.release()
        admitted = await post(http, servers)
        assert admitted.status_code == 200, admitted.text
        await wait_until(lambda: servers.active() == 0)


async def test_sse_a_refused_start_and_a_whole_answer_release_once() -> None:
    async with serving() as servers, httpx.AsyncClient(timeout=10) as http:
        unknown = await http.post(
            servers.http + "/v1/chat/completions", headers=AUTH, json={**CHAT, "model": "nope"}
        )
        assert unknown.status_code == 404  # start_stream refused it: admitted, then released
        assert unknown.json()["error"]["code"] == "model_not_found"
        assert servers.active() == 0
        servers.provider.release()
        whole = await http.post(
            servers.http + "/v1/chat/completions", headers=AUTH,
            json={**CHAT, "stream": False},
        )  # fmt: skip
        assert whole.status_code == 200, whole.text
        await wait_until(lambda: servers.active() == 0)
        assert servers.active() == 0
