"""A client's huge values stay out of Baton's error messages and log lines.

Five WebSocket frames with a 4 MB model name once added 21 MB to the log: every value a client
sends is quoted cut short (``actors.clip``), over WebSocket and over HTTP alike.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
from websockets.asyncio.client import connect

from actors import clip, config_from_dict, open_baton
from scenarios import FakeProvider
from transport import serve_http, serve_ws

HUGE = "m" * 4_000_000  # 4 MB
LIMIT = 16 * 1024 * 1024  # requests this large are accepted, so the value reaches the checks
SHORT = 400  # characters: more than any message needs, far less than the value
MESSAGES = [{"role": "user", "content": "Hi"}]


def test_clip_quotes_a_short_value_whole_and_cuts_a_long_one():
    assert clip("gpt-4o") == "'gpt-4o'"
    assert clip(None) == "None"
    cut = clip(HUGE)
    assert cut == f"{'m' * 64!r}… (4000000 characters)"
    assert clip(list(range(1000)), limit=10).endswith("… (4890 characters)")


@asynccontextmanager
async def serving() -> AsyncIterator[tuple[int, int]]:
    config = config_from_dict({
        "server": {"max_request_bytes": LIMIT},
        "providers": {"a": {"kind": "openai", "base_url": "http://a.invalid/v1"}},
        "routes": {"default": {"targets": [{"provider": "a", "model": "m"}]}},
    })  # fmt: skip
    async with open_baton(config, {"a": FakeProvider("a")}) as baton, trio.open_nursery() as n:
        ws_port = await n.start(lambda task_status: serve_ws(baton, task_status=task_status))
        http_port = await n.start(
            lambda task_status: serve_http(baton, max_request_bytes=LIMIT, task_status=task_status)
        )
        yield ws_port, http_port
        n.cancel_scope.cancel()


def assert_short_logs(caplog: pytest.LogCaptureFixture) -> None:
    lines = [r.getMessage() for r in caplog.records]
    assert lines, "nothing was logged"
    longest = max(lines, key=len)
    assert len(longest) < SHORT, longest[:200]


WS_FRAMES = {
    "model": {"type": "start", "model": HUGE, "messages": MESSAGES},
    "frame type": {"type": HUGE},
    "field": {"type": "start", "model": "default", "messages": MESSAGES, HUGE: 1},
    "parameter": {"type": "start", "model": "default", "messages": MESSAGES, "params": {HUGE: 1}},
    "role": {"type": "start", "model": "default", "messages": [{"role": HUGE, "content": "x"}]},
    "stream id": {"type": "cancel", "stream": HUGE},
}


@pytest.mark.parametrize("what", list(WS_FRAMES))
async def test_a_huge_value_in_a_websocket_frame_gets_a_short_error_and_short_log_lines(
    caplog, what
):
    async def conversation(url: str) -> dict[str, Any]:
        async with connect(url, proxy=None, max_size=None, open_timeout=5) as ws:
            await ws.send(json.dumps(WS_FRAMES[what]))
            return json.loads(await asyncio.wait_for(ws.recv(), 15))

    caplog.set_level(logging.DEBUG)
    async with serving() as (ws_port, _):
        url = f"ws://127.0.0.1:{ws_port}/v1/stream"
        error = await trio.to_thread.run_sync(lambda: asyncio.run(conversation(url)))
    assert error["type"] == "error" and error["code"] in (
        "unknown_model", "bad_request", "unknown_stream",
    )  # fmt: skip
    assert len(error["message"]) < SHORT and "(4000000 characters)" in error["message"]
    assert_short_logs(caplog)


HTTP_BODIES = {
    "model": {"model": HUGE, "messages": MESSAGES, "stream": True},
    "field": {"model": "default", "messages": MESSAGES, HUGE: 1},
    "role": {"model": "default", "messages": [{"role": HUGE, "content": "x"}]},
}


@pytest.mark.parametrize("what", list(HTTP_BODIES))
async def test_a_huge_value_in_an_http_request_gets_a_short_error_and_short_log_lines(caplog, what):
    caplog.set_level(logging.DEBUG)
    async with serving() as (_, http_port), httpx.AsyncClient(timeout=15) as http:
        response = await http.post(
            f"http://127.0.0.1:{http_port}/v1/chat/completions",
            content=json.dumps(HTTP_BODIES[what]),
            headers={"content-type": "application/json"},
        )
    assert response.status_code in (400, 404)
    error = response.json()["error"]
    assert len(response.content) < SHORT + 200
    assert "(4000000 characters)" in error["message"]
    assert_short_logs(caplog)


async def test_a_long_path_gets_a_short_error():
    async with serving() as (_, http_port), httpx.AsyncClient(timeout=15) as http:
        long_model = "n" * 8000
        response = await http.get(f"http://127.0.0.1:{http_port}/v1/models/{long_model}")
        other = await http.get(f"http://127.0.0.1:{http_port}/{long_model}")
    assert response.status_code == other.status_code == 404
    for answer in (response, other):
        assert len(answer.json()["error"]["message"]) < SHORT
