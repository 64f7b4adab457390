"""The fakes answer tools, JSON mode, reasoning and images as real models do.

The wire shapes are read with the official ``openai`` and ``anthropic`` SDKs (their stream
accumulators), so a shape they would not accept fails here; the in-memory fake is read as
upstream events.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import jsonschema
import openai
import orjson
import pytest
import trio

from actors import (
    Finish,
    Message,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    UpstreamError,
    UpstreamRequest,
)
from scenarios import Behaviour, FaultSchedule, SimulatedProvider, open_simulated_provider
from scenarios._answers import Piece, calls_wanted, json_tokens, value_for
from scenarios._faults import plan_attempt
from scenarios._textgen import _Draws
from scenarios.sim import FakeProvider

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "hourly": {"type": "boolean"},
        "where": {
            "type": "object",
            "properties": {"lat": {"type": "number"}, "tags": {"type": "array", "items": {}}},
            "required": ["lat", "tags"],
        },
    },
    "required": ["city", "unit", "days", "hourly", "where"],
    "additionalProperties": False,
}
TIME = {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "parameters": TIME}},
]
ANTHROPIC_TOOLS = [
    {"name": "get_weather", "description": "Weather.", "input_schema": WEATHER},
    {"name": "get_time", "description": "Time.", "input_schema": TIME},
]
USER = "What is the weather in Paris?"
PIXEL = (  # a 1x1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def user(text: str = USER) -> tuple[Message, ...]:
    return (Message(role="user", content=text),)


# --- the generator ----------------------------------------------------------------------------


def test_arguments_follow_the_schema_and_are_deterministic() -> None:
    for n in range(30):
        value = value_for(WEATHER, _Draws(n.to_bytes(4, "big")), "plain")
        jsonschema.validate(value, WEATHER)
        assert value == value_for(WEATHER, _Draws(n.to_bytes(4, "big")), "plain")


def test_which_tools_are_called() -> None:
    msgs = user()
    assert calls_wanted(msgs, {"tools": TOOLS}) == ["get_weather", "get_time"]
    assert calls_wanted(msgs, {"tools": TOOLS, "parallel_tool_calls": False}) == ["get_weather"]
    forced = {"type": "function", "function": {"name": "get_time"}}
    assert calls_wanted(msgs, {"tools": TOOLS, "tool_choice": forced}) == ["get_time"]
    assert calls_wanted(msgs, {"tools": TOOLS, "tool_choice": "none"}) == []
    assert calls_wanted(msgs, {}) == []
    result = (
        *msgs,
        Message(
            role="assistant",
            content=None,
            tool_calls=(),
        ),
        Message(role="tool", content="18 degrees and sunny", tool_call_id="call_1"),
    )
    assert calls_wanted(result, {"tools": TOOLS}) == []


def test_a_tool_result_is_used_in_the_answer() -> None:
    msgs = (*user(), Message(role="tool", content="18 degrees and sunny", tool_call_id="c"))
    plan = plan_attempt(Behaviour(), msgs, params={"tools": TOOLS})
    text = "".join(plan.tokens)
    assert text.startswith("Result: 18 degrees and sunny. ") and plan.finish_reason == "stop"


def test_a_plan_lists_every_piece_in_order_and_counts_faults_over_them() -> None:
    params = {"tools": TOOLS, "reasoning_effort": "low"}
    plan = plan_attempt(Behaviour(), user(), params=params)
    kinds = [p.kind for p in plan.pieces]
    assert kinds[0] == "reasoning" and "text" not in kinds
    assert kinds.index("tool_call") > max(plan.piece_indexes("reasoning"))
    assert plan.finish_reason == "tool_calls" and len(plan.calls) == 2
    for i, call in enumerate(plan.calls):
        args = "".join(p.text for p in plan.pieces if p.kind == "tool_args" and p.index == i)
        assert args == call.arguments and isinstance(orjson.loads(args), dict)
        assert call.id.startswith("call_")
    cut = plan_attempt(Behaviour(), user(), params=params, max_tokens=20)
    assert cut.finish_reason == "length"
    assert sum(p.kind != "tool_call" for p in cut.pieces) == 20


def test_json_mode_answers_a_document_that_a_prefill_continues_exactly() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER, "strict": True}}
    params = {"response_format": fmt}
    plan = plan_attempt(Behaviour(), user(), params=params)
    jsonschema.validate(orjson.loads("".join(plan.tokens)), WEATHER)
    assert all(not t.endswith((" ", "\n")) for t in plan.tokens)
    half = len(plan.tokens) // 2
    prefill = (*user(), Message(role="assistant", content="".join(plan.tokens[:half])))
    resumed = plan_attempt(Behaviour(), prefill, params=params)
    assert resumed.mode == "prefill" and resumed.tokens == plan.tokens[half:]
    obj = "".join(json_tokens(user(), {"response_format": {"type": "json_object"}}))
    assert isinstance(orjson.loads(obj), dict)


def test_images_are_counted() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + PIXEL}}
    msgs = (Message(role="user", content=({"type": "text", "text": "Look"}, image, image)),)
    assert "".join(plan_attempt(Behaviour(), msgs).tokens).startswith("I see 2 images. ")


# --- the in-memory fake -----------------------------------------------------------------------


async def _events(provider: FakeProvider, params: dict[str, Any]) -> list[Any]:
    request = UpstreamRequest(model="m", messages=user(), params=params)
    out = []
    async with provider.stream(request) as events:
        async for event in events:
            out.append(event)
    return out


@pytest.mark.trio
async def test_the_fake_yields_reasoning_then_tool_call_fragments() -> None:
    events = await _events(FakeProvider("a"), {"tools": TOOLS, "reasoning_effort": "high"})
    assert isinstance(events[0], ReasoningDelta)
    calls = [e for e in events if isinstance(e, ToolCallDelta)]
    assert calls[0].id and calls[0].name == "get_weather" and calls[0].arguments == ""
    assert not any(isinstance(e, TextDelta) for e in events)
    finish = events[-1]
    assert isinstance(finish, Finish) and finish.reason == "tool_calls"
    assert finish.usage is not None and finish.usage.reasoning_tokens == sum(
        isinstance(e, ReasoningDelta) for e in events
    )


@pytest.mark.trio
async def test_a_reset_can_be_put_halfway_through_a_tool_calls_arguments() -> None:
    params = {"tools": TOOLS[:1]}
    plan = plan_attempt(Behaviour(), user(), params=params)
    args = plan.piece_indexes("tool_args")
    halfway = args[len(args) // 2]
    provider = FakeProvider("a", FaultSchedule.always(Behaviour("reset", at_token=halfway)))
    seen: list[Any] = []
    with pytest.raises(UpstreamError):
        seen += await _events(provider, params)
    record = provider.log[0]
    assert record.outcome == "reset" and record.pieces_sent == list(plan.pieces[:halfway])
    sent = "".join(p.text for p in record.pieces_sent if p.kind == "tool_args")
    assert 0 < len(sent) < len(plan.calls[0].arguments)


# --- the HTTP simulator, read with the official SDKs ------------------------------------------


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedProvider]:
    async with open_simulated_provider() as provider:
        yield provider


def _openai(sim: SimulatedProvider) -> openai.AsyncOpenAI:
    http = httpx.AsyncClient(verify=False)
    return openai.AsyncOpenAI(
        base_url=sim.base_url_openai, api_key="sk-test", max_retries=0, http_client=http
    )


def _anthropic(sim: SimulatedProvider) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url=sim.base_url_anthropic, api_key="sk-test", max_retries=0
    )


@pytest.mark.trio
async def test_openai_stream_carries_tool_call_deltas(sim: SimulatedProvider) -> None:
    expected = plan_attempt(Behaviour(), user(), params={"tools": TOOLS}).calls
    async with _openai(sim) as client:
        stream = await client.chat.completions.create(
            model="gpt-test",
            messages=[{"role": "user", "content": USER}],
            tools=TOOLS,  # type: ignore[arg-type]
            stream=True,
        )
        chunks = [chunk async for chunk in stream]
    deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
    firsts = [d for d in deltas if d.id]
    assert [(d.index, d.id, d.type) for d in firsts] == [
        (i, c.id, "function") for i, c in enumerate(expected)
    ]
    assert all(d.function and d.function.arguments == "" for d in firsts)
    for i, call in enumerate(expected):
        pieces = [d.function.arguments for d in deltas if d.index == i and d.function]
        assert "".join(p or "" for p in pieces) == call.arguments
        assert max(len(p or "") for p in pieces) <= 5
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.trio
async def test_openai_reasoning_comes_first_and_usage_counts_it(sim: SimulatedProvider) -> None:
    async with _openai(sim) as client:
        stream = await client.chat.completions.create(
            model="gpt-test",
            messages=[{"role": "user", "content": USER}],
            reasoning_effort="low",
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    kinds = []
    for c in chunks:
        if c.choices:
            delta = c.choices[0].delta.model_dump()
            if delta.get("reasoning_content"):
                kinds.append("reasoning")
            elif delta.get("content"):
                kinds.append("text")
    assert kinds[0] == "reasoning" and kinds[-1] == "text"
    assert kinds == sorted(kinds)  # every reasoning piece before every text piece
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == kinds.count("reasoning")


@pytest.mark.trio
async def test_openai_tool_result_and_image_and_json_non_streaming(sim: SimulatedProvider) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
    messages: list[Any] = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": USER},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + PIXEL}},
            ],
        },
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "noon in Paris"},
    ]
    async with _openai(sim) as client:
        answer = await client.chat.completions.create(
            model="gpt-test",
            messages=messages,
            tools=TOOLS,  # type: ignore[arg-type]
        )
        json_answer = await client.chat.completions.create(
            model="gpt-test",
            messages=[{"role": "user", "content": USER}],
            response_format={"type": "json_object"},
        )
    text = answer.choices[0].message.content or ""
    assert text.startswith("I see 1 image. Result: noon in Paris.")
    assert isinstance(orjson.loads(json_answer.choices[0].message.content or ""), dict)


@pytest.mark.trio
async def test_anthropic_stream_has_thinking_and_tool_use_blocks(sim: SimulatedProvider) -> None:
    async with (
        _anthropic(sim) as client,
        client.messages.stream(
            model="claude-test",
            max_tokens=1000,
            messages=[{"role": "user", "content": USER}],
            tools=ANTHROPIC_TOOLS,  # type: ignore[arg-type]
            tool_choice={"type": "tool", "name": "get_time"},
            thinking={"type": "enabled", "budget_tokens": 1024},
        ) as stream,
    ):
        events = [event async for event in stream]
        message = await stream.get_final_message()
    types = [b.type for b in message.content]
    assert types == ["thinking", "tool_use"] and message.stop_reason == "tool_use"
    thinking, tool_use = message.content
    assert thinking.type == "thinking" and thinking.thinking and thinking.signature
    assert tool_use.type == "tool_use" and tool_use.name == "get_time"
    assert tool_use.id.startswith("toolu_") and isinstance(tool_use.input, dict)
    jsonschema.validate(tool_use.input, TIME)
    raw = [e.type for e in events]
    assert raw.count("content_block_start") == 2 and raw.count("content_block_stop") == 2
    deltas = [e.delta.type for e in events if e.type == "content_block_delta"]
    assert "thinking_delta" in deltas and "signature_delta" in deltas
    assert "input_json_delta" in deltas


@pytest.mark.trio
async def test_anthropic_reads_tool_results_and_images(sim: SimulatedProvider) -> None:
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": PIXEL},
    }
    tool_use = {"type": "tool_use", "id": "toolu_1", "name": "get_time", "input": {}}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "noon in Paris"}
    messages: list[Any] = [
        {"role": "user", "content": [{"type": "text", "text": USER}, image, image]},
        {"role": "assistant", "content": [tool_use]},
        {"role": "user", "content": [result]},
    ]
    async with _anthropic(sim) as client:
        message = await client.messages.create(
            model="claude-test",
            max_tokens=1000,
            messages=messages,
            tools=ANTHROPIC_TOOLS,  # type: ignore[arg-type]
        )
    assert message.stop_reason == "end_turn" and message.content[0].type == "text"
    assert message.content[0].text.startswith("I see 2 images. Result: noon in Paris.")
    record = sim.log[0]
    assert [m.role for m in record.request.messages] == ["user", "assistant", "tool"]


@pytest.mark.trio
async def test_a_reset_inside_tool_arguments_on_the_wire() -> None:
    params = {"tools": TOOLS[:1]}
    plan = plan_attempt(Behaviour(), user(), params=params)
    args = plan.piece_indexes("tool_args")
    schedule = FaultSchedule.always(Behaviour("reset", at_token=args[len(args) // 2]))
    async with open_simulated_provider(schedule) as sim, _openai(sim) as client:
        stream = await client.chat.completions.create(
            model="gpt-test",
            messages=[{"role": "user", "content": USER}],
            tools=TOOLS[:1],  # type: ignore[arg-type]
            stream=True,
        )
        got = []
        with pytest.raises((openai.APIConnectionError, httpx.ReadError)):
            async for chunk in stream:
                for tc in chunk.choices[0].delta.tool_calls or ():
                    got.append(tc.function.arguments if tc.function else "")
        with trio.fail_after(2):
            await sim.wait_all_closed()
    sent = "".join(got)
    assert sim.log[0].outcome == "reset" and 0 < len(sent) < len(plan.calls[0].arguments)
    assert [p for p in sim.log[0].pieces_sent] == list(plan.pieces[: len(sim.log[0].pieces_sent)])
    assert isinstance(plan.pieces[0], Piece)


async def test_anthropic_json_through_batons_json_tool_is_the_openai_json_text(
    sim: SimulatedProvider,
) -> None:
    schema = {"name": "w", "schema": WEATHER, "strict": True}
    fmt = {"type": "json_schema", "json_schema": schema}
    async with _openai(sim) as client:
        openai_answer = await client.chat.completions.create(
            model="gpt-test",
            messages=[{"role": "user", "content": USER}],
            response_format=fmt,  # type: ignore[arg-type]
        )
    json_tool = {"name": "baton_json_answer", "input_schema": WEATHER}
    async with _anthropic(sim) as client:
        async with client.messages.stream(
            model="claude-test",
            max_tokens=1000,
            messages=[{"role": "user", "content": USER}],
            tools=[json_tool],  # type: ignore[list-item]
            tool_choice={"type": "tool", "name": "baton_json_answer"},
        ) as stream:
            partial = [
                e.delta.partial_json
                async for e in stream
                if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
            ]
        # Continuing it: no tool, the system prompt's JSON-only paragraph, the text so far.
        half = "".join(partial[: len(partial) // 2])
        system = (
            "Answer with JSON only, continuing the JSON text exactly where it stops; it must "
            "match this JSON schema: " + orjson.dumps(WEATHER).decode() + "."
        )
        continued = await client.messages.create(
            model="claude-test",
            max_tokens=1000,
            system=system,
            messages=[
                {"role": "user", "content": USER},
                {"role": "assistant", "content": half},
            ],
        )
    text = openai_answer.choices[0].message.content
    assert text == "".join(partial) and isinstance(orjson.loads(text), dict)
    assert continued.content[0].type == "text" and half + continued.content[0].text == text
    assert sim.log[-1].mode == "prefill"
