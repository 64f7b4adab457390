"""Fair admission over real sockets: a second key keeps its time to first token (issue 17).

Key ``flood`` opens 60 streams over HTTP against a provider with 10 upstream slots and answers
of about 2 s; then key ``second`` asks for one. In-process servers on 127.0.0.1 under
``autojump_clock``, so the seconds are virtual. With FIFO admission ``second`` waited behind
the whole burst (five rounds of answers); with fair admission it waits for one freed slot.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import httpx
import trio
import trio.testing

from actors import config_from_dict, open_baton
from scenarios import Behaviour, FakeProvider, FaultSchedule
from transport import ClientAuth, serve_http

FLOOD = "sk-flood-SECRETKEY-1b7c2e90aa"
SECOND = "sk-second-SECRETKEY-5d03f4c711"
SLOTS = 10
BURST = 60
TOKEN_DELAY = 0.02  # the fake answer has 101 tokens: about 2 s per answer
ANSWER_TIME = 101 * TOKEN_DELAY


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@asynccontextmanager
async def serving() -> AsyncIterator[str]:
    """Baton's HTTP API over one slow fake provider with ``SLOTS`` slots; yields its base URL."""
    settings = config_from_dict(
        {
            "providers": {
                "a": {
                    "kind": "openai",
                    "base_url": "http://a.invalid/v1",
                    "max_connections": SLOTS,
                    "pool_timeout": 60.0,  # the burst's last streams wait their turns, not fail
                }
            },
            "routes": {"default": {"targets": [{"provider": "a", "model": "model-a"}]}},
            "clients": {
                "flood": {"key_sha256": digest(FLOOD)},
                "second": {"key_sha256": digest(SECOND)},
            },
        }
    )
    auth = ClientAuth.from_config(settings, environ={})
    slow = FakeProvider("a", FaultSchedule.always(Behaviour(token_delay=TOKEN_DELAY)))
    async with open_baton(settings, {"a": slow}, seed=0) as baton, trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve_http, baton, auth=auth))
        yield f"http://127.0.0.1:{port}"
        nursery.cancel_scope.cancel()


async def stream(
    http: httpx.AsyncClient, base: str, key: str
) -> tuple[int, float | None, list[str]]:
    """One streamed chat completion: (status, seconds to the first text, its data lines)."""
    began = trio.current_time()
    first_token: float | None = None
    lines: list[str] = []
    body = {"model": "default", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    headers = {"Authorization": f"Bearer {key}"}
    async with http.stream("POST", f"{base}/v1/chat/completions", json=body, headers=headers) as r:
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            lines.append(data)
            if first_token is None and data != "[DONE]":
                delta = json.loads(data)["choices"][0]["delta"] if "choices" in data else {}
                if delta.get("content"):
                    first_token = trio.current_time() - began
        return r.status_code, first_token, lines


async def test_a_second_key_gets_its_first_token_within_one_answer_of_another_keys_burst(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limits = httpx.Limits(max_connections=BURST + 10)
    flood_ends: list[tuple[int, float | None, list[str]]] = []
    second_ends: list[tuple[int, float | None, list[str]]] = []
    async with (
        serving() as base,
        httpx.AsyncClient(timeout=120, limits=limits) as http,
        trio.open_nursery() as nursery,
    ):

        async def flood() -> None:
            flood_ends.append(await stream(http, base, FLOOD))

        async def second() -> None:
            second_ends.append(await stream(http, base, SECOND))

        for _ in range(BURST):
            nursery.start_soon(flood)
        await trio.sleep(0.5)  # the burst holds every slot and has 50 streams waiting
        nursery.start_soon(second)
    [(status, first_token, lines)] = second_ends
    assert status == 200
    assert first_token is not None and first_token <= ANSWER_TIME
    assert lines[-1] == "[DONE]"
    assert len(flood_ends) == BURST
    assert {status for status, _, _ in flood_ends} == {200}
