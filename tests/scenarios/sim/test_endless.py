"""The ``endless`` behaviour: an answer that never finishes, in memory and on the wire."""

from __future__ import annotations

import httpx
import orjson

from actors import Finish, Message, TextDelta, UpstreamRequest
from scenarios import (
    Behaviour,
    FakeProvider,
    FaultSchedule,
    answer_tokens,
    open_simulated_provider,
)

USER = (Message(role="user", content="Tell me a story."),)
ANSWER = answer_tokens(USER)
ENDLESS = FaultSchedule.always(Behaviour("endless"))


async def test_a_fake_endless_answer_repeats_its_tokens_without_a_finish(autojump_clock):
    fake = FakeProvider("a", ENDLESS)
    request = UpstreamRequest(model="m", messages=USER, params={})
    events = []
    async with fake.stream(request) as stream:
        async for event in stream:
            assert not isinstance(event, Finish)
            events.append(event)
            if len(events) == 3 * len(ANSWER):
                break
    assert [e.text for e in events if isinstance(e, TextDelta)] == ANSWER * 3
    record = fake.log[0]
    assert record.outcome == "abandoned" and record.closed_at is not None


async def test_a_simulated_endless_answer_streams_until_the_client_leaves():
    body = {"model": "m", "messages": [{"role": "user", "content": USER[0].content}]}
    async with open_simulated_provider(ENDLESS) as sim:
        async with httpx.AsyncClient() as http:
            request = {**body, "stream": True}
            url = f"{sim.base_url_openai}/chat/completions"
            async with http.stream("POST", url, json=request) as response:
                texts = []
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        chunk = orjson.loads(line[len("data: ") :])
                        texts.append(chunk["choices"][0]["delta"].get("content", ""))
                    if len(texts) > 2 * len(ANSWER):
                        break
        await sim.wait_all_closed()
    assert "".join(texts).startswith("".join(ANSWER) * 2)
    assert sim.log[0].outcome == "abandoned" and len(sim.log[0].tokens_sent) > 2 * len(ANSWER)
