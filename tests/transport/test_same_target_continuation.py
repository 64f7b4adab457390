"""A provider that continues its own broken answer, as clients see it over WebSocket and HTTP.

When no other target of the route can take over, the same target continues after a transient
break: WebSocket clients get a ``failover`` from the provider to itself (``continue``,
``midstream``), HTTP clients get the whole answer once, with its ``[DONE]``.
"""

from __future__ import annotations

from typing import Any

import orjson

from scenarios import Behaviour, FaultSchedule

from .test_http import ANSWER, BREAK_AT, PROMPT, breaking_a, chat, one_target, sse_events
from .test_http import running as running_http
from .test_ws import (
    MESSAGES,
    check_stream,
    client,
    expected_text,
    open_ws,
    send,
    start,
    until_terminal,
)
from .test_ws import running as running_ws


async def test_over_websocket_the_client_sees_a_failover_from_the_provider_to_itself() -> None:
    # a breaks: b continues; b breaks too and a is out, so b continues its own answer.
    once = FaultSchedule.first(1, Behaviour("reset", at_token=7))

    async def conversation(url: str) -> list[dict[str, Any]]:
        async with open_ws(url) as ws:
            await send(ws, start("r1"))
            return await until_terminal(ws)

    async with running_ws(once, once) as server:
        frames = await client(conversation, server.url)
    moves = [(f["from"], f["to"], f["mode"], f["phase"]) for f in frames if f["type"] == "failover"]
    assert moves == [("a", "b", "continue", "midstream"), ("b", "b", "continue", "midstream")]
    assert frames[-1]["type"] == "done" and frames[-1]["provider"] == "b"
    assert check_stream(frames) == expected_text(MESSAGES)


async def test_over_http_a_one_target_route_answers_in_full_once() -> None:
    a = breaking_a()  # resets after BREAK_AT tokens, once
    async with running_http(one_target(), {"a": a}) as server:
        response = await chat(server, {"model": "r", "messages": PROMPT, "stream": True})
        failovers = server.baton.statistics().failovers
    assert response.status_code == 200
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == ANSWER
    assert {c["model"] for c in chunks} == {"ma"}
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert failovers == 1
    assert [r.outcome for r in a.log] == ["reset", "finished"]
    assert len(a.log[0].tokens_sent) == BREAK_AT
