"""The simulated HTTP provider over real loopback sockets, with httpx as the client.

These tests use trio's real clock (no autojump: the sockets are real) and zero delays, except
where a fault needs a moment to be visible.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import attrs
import httpx
import orjson
import pytest
import trio

from actors import Message
from scenarios import (
    Behaviour,
    FaultSchedule,
    SimulatedProvider,
    answer_tokens,
    open_simulated_provider,
)

USER = (Message(role="user", content="Tell me a story."),)
ANSWER = answer_tokens(USER)
OPENAI_BODY = {
    "model": "gpt-test",
    "messages": [{"role": "user", "content": USER[0].content}],
    "stream": True,
}
ANTHROPIC_BODY = {**OPENAI_BODY, "model": "claude-test", "max_tokens": 1000}


def http_client() -> httpx.AsyncClient:
    # Plain HTTP on loopback: skip loading CA certificates, which costs ~0.1 s per client.
    return httpx.AsyncClient(verify=False)


@attrs.frozen
class Sse:
    event: str | None
    data: str | None
    comment: str | None = None

    def json(self) -> Any:
        assert self.data is not None
        return orjson.loads(self.data)


async def sse(response: httpx.Response) -> AsyncIterator[Sse]:
    """A tiny SSE parser: yields events, and comments as their own items."""
    event: str | None = None
    data: list[str] = []
    async for line in response.aiter_lines():
        if line.startswith(":"):
            yield Sse(None, None, line[1:].strip())
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif line == "" and (event or data):
            yield Sse(event, "\n".join(data) if data else None)
            event, data = None, []


async def read_all(
    client: httpx.AsyncClient, url: str, body: dict, headers: dict | None = None
) -> list[Sse]:
    async with client.stream("POST", url, json=body, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return [item async for item in sse(response)]


def openai_text(events: list[Sse]) -> str:
    chunks = [e.json() for e in events if e.data and e.data != "[DONE]"]
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])


def anthropic_text(events: list[Sse]) -> str:
    return "".join(e.json()["delta"]["text"] for e in events if e.event == "content_block_delta")


async def settled(sim: SimulatedProvider) -> SimulatedProvider:
    """The provider once the server has finished with every attempt (the client can be faster)."""
    with trio.fail_after(2):
        await sim.wait_all_closed()
    return sim


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedProvider]:
    async with open_simulated_provider(model_name=None) as provider:
        yield provider


async def test_healthy_openai_stream_has_openai_shapes(sim: SimulatedProvider) -> None:
    async with http_client() as client:
        events = await read_all(client, f"{sim.base_url_openai}/chat/completions", OPENAI_BODY)
    assert events[-1].data == "[DONE]"
    chunks = [e.json() for e in events[:-1]]
    first, *content, last = chunks
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert content[0] == {
        "id": first["id"],
        "object": "chat.completion.chunk",
        "created": first["created"],
        "model": "gpt-test",
        "system_fingerprint": None,
        "choices": [
            {"index": 0, "delta": {"content": ANSWER[0]}, "logprobs": None, "finish_reason": None}
        ],
    }
    assert first["id"].startswith("chatcmpl-") and len({c["id"] for c in chunks}) == 1
    assert last["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]
    assert "usage" not in last
    assert openai_text(events) == "".join(ANSWER)
    [record] = (await settled(sim)).log
    assert record.outcome == "finished" and record.closed_at is not None and record.api == "openai"
    assert record.request.model == "gpt-test" and record.request.messages == USER


async def test_openai_usage_chunk(sim: SimulatedProvider) -> None:
    body = {**OPENAI_BODY, "stream_options": {"include_usage": True}}
    async with http_client() as client:
        events = await read_all(client, f"{sim.base_url_openai}/chat/completions", body)
    chunks = [e.json() for e in events[:-1]]
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == len(ANSWER)
    assert usage_chunk["usage"]["total_tokens"] == usage_chunk["usage"]["prompt_tokens"] + len(
        ANSWER
    )
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"


async def test_anthropic_event_sequence(sim: SimulatedProvider) -> None:
    async with http_client() as client:
        events = await read_all(client, f"{sim.base_url_anthropic}/v1/messages", ANTHROPIC_BODY)
    names = [e.event for e in events]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * len(ANSWER),
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(e.json()["type"] == e.event for e in events)
    message = events[0].json()["message"]
    assert message["id"].startswith("msg_") and message["model"] == "claude-test"
    assert (message["role"], message["content"], message["stop_reason"]) == ("assistant", [], None)
    assert events[1].json() == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert events[3].json() == {
        "type": "content_block_delta",
        "index": 0,
        "delta": {"type": "text_delta", "text": ANSWER[0]},
    }
    assert events[-2].json() == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": len(ANSWER)},
    }
    assert anthropic_text(events) == "".join(ANSWER)


async def test_max_tokens_stops_with_length() -> None:
    async with open_simulated_provider() as sim, http_client() as client:
        events = await read_all(
            client, f"{sim.base_url_openai}/chat/completions", {**OPENAI_BODY, "max_tokens": 3}
        )
        assert openai_text(events) == "".join(ANSWER[:3])
        assert events[-2].json()["choices"][0]["finish_reason"] == "length"
        events = await read_all(
            client, f"{sim.base_url_anthropic}/v1/messages", {**ANTHROPIC_BODY, "max_tokens": 3}
        )
        assert events[-2].json()["delta"]["stop_reason"] == "max_tokens"


async def test_anthropic_requires_max_tokens(sim: SimulatedProvider) -> None:
    async with http_client() as client:
        response = await client.post(f"{sim.base_url_anthropic}/v1/messages", json=OPENAI_BODY)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert sim.log == [] and sim.invalid_requests == ["max_tokens: Field required"]


async def test_developer_is_a_system_message_and_an_unknown_role_is_400(
    sim: SimulatedProvider,
) -> None:
    developer = {"role": "developer", "content": "Be brief."}
    body = {**OPENAI_BODY, "messages": [developer, *OPENAI_BODY["messages"]]}
    tool = {**OPENAI_BODY, "messages": [{"role": "robot", "content": "42"}]}
    async with http_client() as client:
        events = await read_all(client, f"{sim.base_url_openai}/chat/completions", body)
        response = await client.post(f"{sim.base_url_openai}/chat/completions", json=tool)
    system = Message(role="system", content="Be brief.")
    assert openai_text(events) == "".join(answer_tokens((system, *USER)))
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert sim.invalid_requests == ["messages: unknown role 'robot'"]


async def test_status_error_bodies_and_retry_after() -> None:
    schedule = FaultSchedule.always(
        Behaviour("status", status=429, retry_after=3.0, message="slow down")
    )
    async with open_simulated_provider(schedule) as sim, http_client() as client:
        openai = await client.post(f"{sim.base_url_openai}/chat/completions", json=OPENAI_BODY)
        anthropic = await client.post(f"{sim.base_url_anthropic}/v1/messages", json=ANTHROPIC_BODY)
        assert [r.outcome for r in (await settled(sim)).log] == ["status", "status"]
    assert openai.status_code == anthropic.status_code == 429
    assert openai.headers["retry-after"] == anthropic.headers["retry-after"] == "3"
    assert openai.json() == {
        "error": {
            "message": "slow down",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert anthropic.json() == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "slow down"},
    }


async def test_status_without_retry_after_has_no_header() -> None:
    schedule = FaultSchedule.always(Behaviour("status", status=500))
    async with open_simulated_provider(schedule) as sim, http_client() as client:
        response = await client.post(f"{sim.base_url_openai}/chat/completions", json=OPENAI_BODY)
    assert response.status_code == 500 and "retry-after" not in response.headers
    assert response.json()["error"]["type"] == "server_error"


async def test_reset_breaks_the_stream_mid_body() -> None:
    async with open_simulated_provider(FaultSchedule.always(Behaviour("reset", at_token=3))) as sim:
        received: list[Sse] = []
        async with http_client() as client:
            with pytest.raises(httpx.ReadError):
                async with client.stream(
                    "POST", f"{sim.base_url_openai}/chat/completions", json=OPENAI_BODY
                ) as r:
                    assert r.status_code == 200
                    async for item in sse(r):
                        received.append(item)
        assert openai_text(received) == "".join(ANSWER[:3])
        [record] = (await settled(sim)).log
        assert (
            record.outcome == "reset"
            and record.tokens_sent == ANSWER[:3]
            and record.closed_at is not None
        )


async def test_refuse_sends_no_response() -> None:
    async with open_simulated_provider(FaultSchedule.first(1, Behaviour("refuse"))) as sim:
        async with http_client() as client:
            with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
                await client.post(f"{sim.base_url_openai}/chat/completions", json=OPENAI_BODY)
            ok = await client.post(f"{sim.base_url_openai}/chat/completions", json=OPENAI_BODY)
        assert ok.status_code == 200
        assert [r.outcome for r in (await settled(sim)).log] == ["refused", "finished"]
        assert sim.connections == 2


def prefill_body(i: int, behaviour_body: dict = OPENAI_BODY) -> dict:
    messages = [*behaviour_body["messages"], {"role": "assistant", "content": "".join(ANSWER[:i])}]
    return {**behaviour_body, "messages": messages}


async def test_prefill_continue_in_both_formats(sim: SimulatedProvider) -> None:
    async with http_client() as client:
        openai = await read_all(client, f"{sim.base_url_openai}/chat/completions", prefill_body(5))
        anthropic = await read_all(
            client, f"{sim.base_url_anthropic}/v1/messages", prefill_body(7, ANTHROPIC_BODY)
        )
    assert openai_text(openai) == "".join(ANSWER[5:])
    assert anthropic_text(anthropic) == "".join(ANSWER[7:])
    assert [(r.start, r.mode, r.request.prefill) for r in (await settled(sim)).log] == [
        (5, "prefill", True),
        (7, "prefill", True),
    ]


async def test_prefill_restart_and_reject() -> None:
    restart = FaultSchedule.always(Behaviour(prefill="restart"))
    reject = FaultSchedule.always(Behaviour(prefill="reject"))
    async with (
        open_simulated_provider(restart) as a,
        open_simulated_provider(reject) as b,
        http_client() as client,
    ):
        events = await read_all(client, f"{a.base_url_openai}/chat/completions", prefill_body(5))
        rejected = await client.post(f"{b.base_url_openai}/chat/completions", json=prefill_body(5))
        accepted = await client.post(f"{b.base_url_openai}/chat/completions", json=OPENAI_BODY)
    assert openai_text(events) == "".join(ANSWER)
    assert rejected.status_code == 400
    error = rejected.json()["error"]
    assert error["code"] == "invalid_request_error" and "prefill" in error["message"]
    assert accepted.status_code == 200


async def test_models_endpoint_in_both_shapes(sim: SimulatedProvider) -> None:
    async with http_client() as client:
        openai = await client.get(f"{sim.base_url_openai}/models")
        anthropic = await client.get(
            f"{sim.base_url_anthropic}/v1/models", headers={"anthropic-version": "2023-06-01"}
        )
    assert openai.json()["object"] == "list" and openai.json()["data"][0]["object"] == "model"
    assert anthropic.json()["data"][0]["type"] == "model" and anthropic.json()["has_more"] is False
    assert [p.ok for p in sim.probes] == [True, True] and sim.log == []


async def test_models_endpoint_follows_the_schedule() -> None:
    async with (
        open_simulated_provider(FaultSchedule.always(Behaviour("status", status=503))) as sim,
        http_client() as client,
    ):
        response = await client.get(f"{sim.base_url_openai}/models")
    assert response.status_code == 503 and [p.ok for p in sim.probes] == [False]


async def test_keep_alive_reuses_one_connection(sim: SimulatedProvider) -> None:
    url = f"{sim.base_url_openai}/chat/completions"
    async with http_client() as client:
        await read_all(client, url, OPENAI_BODY)
        plain = await client.post(url, json={**OPENAI_BODY, "stream": False})
        assert sim.connections == 1
        closing = await client.post(url, json=OPENAI_BODY, headers={"connection": "close"})
        assert closing.headers["connection"] == "close"
        await client.post(url, json=OPENAI_BODY)
    assert sim.connections == 2
    assert [r.outcome for r in (await settled(sim)).log] == ["finished"] * 4
    assert plain.json()["choices"][0]["message"] == {
        "role": "assistant",
        "content": "".join(ANSWER),
        "refusal": None,
    }
    assert plain.json()["usage"]["completion_tokens"] == len(ANSWER)


async def test_anthropic_non_streaming(sim: SimulatedProvider) -> None:
    async with http_client() as client:
        response = await client.post(
            f"{sim.base_url_anthropic}/v1/messages", json={**ANTHROPIC_BODY, "stream": False}
        )
    body = response.json()
    assert body["type"] == "message" and body["content"] == [
        {"type": "text", "text": "".join(ANSWER)}
    ]
    assert body["stop_reason"] == "end_turn" and body["usage"]["output_tokens"] == len(ANSWER)


async def test_in_stream_faults_on_the_wire() -> None:
    schedule = FaultSchedule.always(Behaviour("stream_error", at_token=2))
    async with open_simulated_provider(schedule) as sim, http_client() as client:
        anthropic = await read_all(client, f"{sim.base_url_anthropic}/v1/messages", ANTHROPIC_BODY)
        openai = await read_all(client, f"{sim.base_url_openai}/chat/completions", OPENAI_BODY)
        assert [r.outcome for r in (await settled(sim)).log] == ["stream_error", "stream_error"]
    assert anthropic[-1].event == "error"
    assert anthropic[-1].json() == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }
    assert anthropic_text(anthropic) == "".join(ANSWER[:2])
    assert openai[-1].json()["error"]["code"] == "overloaded_error"


async def test_malformed_no_done_and_no_finish() -> None:
    url = "/chat/completions"
    schedule = FaultSchedule.always(Behaviour("malformed", at_token=1))
    async with open_simulated_provider(schedule) as sim, http_client() as client:
        events = await read_all(client, sim.base_url_openai + url, OPENAI_BODY)
    bad = [e for e in events if e.data and e.data != "[DONE]" and not _is_json(e.data)]
    assert len(bad) == 1 and events.index(bad[0]) == 2  # after the role chunk and one token
    assert events[-1].data == "[DONE]"

    async with (
        open_simulated_provider(FaultSchedule.always(Behaviour("no_done"))) as sim,
        http_client() as client,
    ):
        events = await read_all(client, sim.base_url_openai + url, OPENAI_BODY)
        anthropic = await read_all(client, f"{sim.base_url_anthropic}/v1/messages", ANTHROPIC_BODY)
    assert events[-1].json()["choices"][0]["finish_reason"] == "stop"
    assert anthropic[-1].event == "message_delta"

    async with (
        open_simulated_provider(FaultSchedule.always(Behaviour("no_finish"))) as sim,
        http_client() as client,
    ):
        events = await read_all(client, sim.base_url_openai + url, OPENAI_BODY)
        assert [r.outcome for r in (await settled(sim)).log] == ["eof"]
    assert events[-1].json()["choices"][0]["delta"] == {"content": ANSWER[-1]}


def _is_json(data: str) -> bool:
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return True


async def test_keepalive_stall_sends_comments_then_continues() -> None:
    schedule = FaultSchedule.always(Behaviour("keepalive_stall", at_token=2, stall=0.03))
    async with open_simulated_provider(schedule) as sim, http_client() as client:
        events = await read_all(client, f"{sim.base_url_openai}/chat/completions", OPENAI_BODY)
        anthropic = await read_all(client, f"{sim.base_url_anthropic}/v1/messages", ANTHROPIC_BODY)
    comments = [i for i, e in enumerate(events) if e.comment == "keep-alive"]
    assert comments and comments[0] == 3  # role chunk, two tokens, then keep-alives
    assert openai_text(events) == "".join(ANSWER)
    assert [e.event for e in anthropic].count("ping") >= 2


async def test_client_leaving_a_stall_closes_the_attempt() -> None:
    schedule = FaultSchedule.always(Behaviour("stall", at_token=1, stall=30.0))
    async with open_simulated_provider(schedule) as sim, http_client() as client:
        async with client.stream(
            "POST", f"{sim.base_url_openai}/chat/completions", json=OPENAI_BODY
        ) as r:
            async for item in sse(r):
                if openai_text([item]):
                    break
        [record] = (await settled(sim)).log
        assert record.outcome == "abandoned" and record.tokens_sent == ANSWER[:1]


async def test_unknown_route_is_404(sim: SimulatedProvider) -> None:
    async with http_client() as client:
        response = await client.get(f"{sim.base_url_openai}/embeddings")
    assert response.status_code == 404 and "error" in response.json()


async def test_official_openai_sdk_reads_the_stream(sim: SimulatedProvider) -> None:
    openai = pytest.importorskip("openai")
    client = openai.AsyncOpenAI(base_url=sim.base_url_openai, api_key="sk-test", max_retries=0)
    try:
        stream = await client.chat.completions.create(
            model="gpt-test",
            messages=[{"role": "user", "content": USER[0].content}],
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces = []
        usage = None
        async for chunk in stream:
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
            if chunk.usage:
                usage = chunk.usage
    finally:
        await client.close()
    assert "".join(pieces) == "".join(ANSWER)
    assert usage is not None and usage.completion_tokens == len(ANSWER)


async def test_multibyte_text_and_odd_whitespace_survive_the_wire() -> None:
    exotic = "".join(answer_tokens(USER, seed=2, words="exotic"))
    assert "\n" in exotic and not exotic.isascii()
    async with open_simulated_provider(seed=2, words="exotic") as sim, http_client() as client:
        openai = await read_all(client, f"{sim.base_url_openai}/chat/completions", OPENAI_BODY)
        anthropic = await read_all(client, f"{sim.base_url_anthropic}/v1/messages", ANTHROPIC_BODY)
    assert openai_text(openai) == anthropic_text(anthropic) == exotic
