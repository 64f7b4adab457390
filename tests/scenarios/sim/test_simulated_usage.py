"""How the simulated providers report token usage: as each real API does, and as some don't.

Real loopback sockets and trio's real clock, like the other simulated-provider tests.
"""

from __future__ import annotations

import pytest

from actors import Finish, UpstreamRequest, Usage
from scenarios import FakeProvider, open_simulated_provider

from .test_simulated_provider import (
    ANSWER,
    ANTHROPIC_BODY,
    OPENAI_BODY,
    USER,
    http_client,
    read_all,
    settled,
)

WITH_USAGE = {**OPENAI_BODY, "stream_options": {"include_usage": True}}


async def test_openai_reports_usage_only_when_asked_and_records_what_it_sent() -> None:
    async with open_simulated_provider() as sim, http_client() as client:
        url = f"{sim.base_url_openai}/chat/completions"
        plain = await read_all(client, url, OPENAI_BODY)
        asked = await read_all(client, url, WITH_USAGE)
        await settled(sim)
    assert all("usage" not in e.json() for e in plain if e.data != "[DONE]")
    usage = asked[-2].json()["usage"]
    assert sim.usage_sent == {1: usage}
    assert usage["completion_tokens"] == len(ANSWER) and usage["prompt_tokens"] > 0


async def test_a_server_that_ignores_stream_options_never_reports_usage() -> None:
    async with (
        open_simulated_provider(stream_options="ignored") as sim,
        http_client() as client,
    ):
        events = await read_all(client, f"{sim.base_url_openai}/chat/completions", WITH_USAGE)
        await settled(sim)
    chunks = [e.json() for e in events if e.data != "[DONE]"]
    assert all(c["choices"] and "usage" not in c for c in chunks)
    assert sim.usage_sent == {} and [r.outcome for r in sim.log] == ["finished"]


async def test_a_strict_server_refuses_stream_options_with_a_400() -> None:
    async with (
        open_simulated_provider(stream_options="rejected") as sim,
        http_client() as client,
    ):
        url = f"{sim.base_url_openai}/chat/completions"
        refused = await client.post(url, json=WITH_USAGE)
        answered = await read_all(client, url, OPENAI_BODY)
        await settled(sim)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["message"] == "Unrecognized request argument supplied: stream_options"
    assert answered[-1].data == "[DONE]"
    assert len(sim.log) == 1  # a refused request never reaches the schedule


async def test_anthropic_reports_input_tokens_at_start_and_output_tokens_at_the_end() -> None:
    async with open_simulated_provider() as sim, http_client() as client:
        headers = {"anthropic-version": "2023-06-01"}
        events = await read_all(
            client, f"{sim.base_url_anthropic}/v1/messages", ANTHROPIC_BODY, headers
        )
        await settled(sim)
    [start] = [e.json() for e in events if e.event == "message_start"]
    [delta] = [e.json() for e in events if e.event == "message_delta"]
    input_tokens = start["message"]["usage"]["input_tokens"]
    assert delta["usage"] == {"output_tokens": len(ANSWER)}
    assert sim.usage_sent == {0: {"input_tokens": input_tokens, "output_tokens": len(ANSWER)}}


@pytest.mark.parametrize("reports", [True, False])
async def test_the_fake_reports_usage_unless_told_not_to(reports: bool) -> None:
    fake = FakeProvider("a", reports_usage=reports)
    async with fake.stream(UpstreamRequest(model="m", messages=USER)) as events:
        [*_, finish] = [event async for event in events]
    assert isinstance(finish, Finish)
    if reports:
        assert finish.usage == fake.usage_sent[0]
        assert isinstance(finish.usage, Usage) and finish.usage.completion_tokens == len(ANSWER)
    else:
        assert finish.usage is None and fake.usage_sent == {}
