"""A WebSocket connection with nothing to do is closed after ``server.ws_idle_timeout``.

An idle client cannot hold a connection (and its file descriptor) for ever; a connection whose
stream is still running is never idle, however long the answer takes. Real time, short
timeouts: the client is the ``websockets`` library in a thread.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from actors import config_from_dict, open_baton
from scenarios import Behaviour, FaultSchedule
from scenarios.sim import FakeProvider
from transport import serve_ws

IDLE = 0.4  # seconds
SLOW = FaultSchedule.always(Behaviour("drip", token_delay=0.03))  # an answer longer than IDLE
START = {"type": "start", "model": "default", "messages": [{"role": "user", "content": "Hi"}]}


@asynccontextmanager
async def serving() -> AsyncIterator[str]:
    config = config_from_dict(
        {
            "server": {"ws_idle_timeout": IDLE},
            "providers": {"a": {"kind": "openai", "base_url": "http://a.invalid/v1"}},
            "routes": {"default": {"targets": [{"provider": "a", "model": "m"}]}},
        }
    )
    async with (
        open_baton(config, {"a": FakeProvider("a", SLOW)}, seed=0) as baton,
        trio.open_nursery() as nursery,
    ):
        port = await nursery.start(lambda task_status: serve_ws(baton, task_status=task_status))
        yield f"ws://127.0.0.1:{port}/v1/stream"
        nursery.cancel_scope.cancel()


def in_thread(conversation: object) -> object:
    async def bounded() -> object:
        async with asyncio.timeout(10):
            return await conversation()  # type: ignore[operator]

    return trio.to_thread.run_sync(lambda: asyncio.run(bounded()))


async def test_an_idle_connection_is_closed_with_1000() -> None:
    async def conversation(url: str) -> tuple[int | None, float]:
        async with connect(url, proxy=None, open_timeout=5, close_timeout=2) as ws:
            loop = asyncio.get_running_loop()
            opened = loop.time()
            try:
                await ws.recv()
            except ConnectionClosed as exc:
                return (exc.rcvd.code if exc.rcvd else None), loop.time() - opened
            return None, loop.time() - opened

    async with serving() as url:
        code, after = await in_thread(lambda: conversation(url))  # type: ignore[misc]
    assert code == 1000
    assert IDLE * 0.8 <= after < IDLE + 2.0


async def test_a_connection_whose_stream_runs_longer_than_the_idle_timeout_stays_open() -> None:
    async def conversation(url: str) -> tuple[list[str], float]:
        async with connect(url, proxy=None, open_timeout=5, close_timeout=2) as ws:
            loop = asyncio.get_running_loop()
            opened = loop.time()
            await ws.send(json.dumps(START))
            kinds: list[str] = []
            while not kinds or kinds[-1] not in ("done", "error"):
                kinds.append(json.loads(await ws.recv())["type"])
            return kinds, loop.time() - opened

    async with serving() as url:
        kinds, took = await in_thread(lambda: conversation(url))  # type: ignore[misc]
    assert took > 2 * IDLE  # the answer outlasted the idle timeout twice over
    assert kinds[0] == "started" and kinds[-1] == "done"
    assert kinds.count("done") == 1
