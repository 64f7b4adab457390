"""Protocol v1 carries the whole Chat Completions request: tools, content parts, reasoning, JSON.

A real Baton WebSocket server on 127.0.0.1 and the ``websockets`` client (asyncio, in a worker
thread), as in ``test_ws.py``; the upstreams are scripted ``actors.Provider`` objects that play
the events each test chooses, so a test can break a provider inside a tool call's arguments.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio

from actors import (
    Delta,
    Done,
    Failure,
    FailureKind,
    Finish,
    FunctionCall,
    Message,
    ProbeKind,
    Reasoning,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallPart,
    UpstreamError,
    UpstreamEvent,
    UpstreamRequest,
    Usage,
    config_from_dict,
    open_baton,
)
from transport import decode_client_message, encode_event, serve_ws

from .test_ws import check_stream, client, open_ws, receive, send, until_terminal

#: One attempt's upstream: events played in order; a ``Failure`` breaks the stream there.
Script = Sequence[UpstreamEvent | Failure]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city now.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
QUESTION = {"role": "user", "content": "What is the weather in Paris?"}
USAGE = Usage(prompt_tokens=12, completion_tokens=8)
RESET = Failure(kind=FailureKind.RESET, message="connection reset mid-answer")


def answer(text: str, usage: Usage | None = USAGE) -> Script:
    """A healthy text answer, two pieces and a stop."""
    middle = len(text) // 2
    return [TextDelta(text[:middle]), TextDelta(text[middle:]), Finish(reason="stop", usage=usage)]


@attrs.define
class ScriptedProvider:
    """An ``actors.Provider`` that plays ``scripts[n]`` to its n-th request (the last again
    after that) and records every request it was sent."""

    name: str
    scripts: list[Script]
    kind: str = "openai"
    requests: list[UpstreamRequest] = attrs.field(factory=list)
    open_streams: int = 0

    @asynccontextmanager
    async def stream(
        self, request: UpstreamRequest, *, read_delay: Callable[[], float] | None = None
    ) -> AsyncIterator[AsyncIterator[UpstreamEvent]]:
        script = self.scripts[min(len(self.requests), len(self.scripts) - 1)]
        self.requests.append(request)
        self.open_streams += 1
        try:
            await trio.lowlevel.checkpoint()
            yield self._play(script)
        finally:
            self.open_streams -= 1

    async def _play(self, script: Script) -> AsyncIterator[UpstreamEvent]:
        for event in script:
            await trio.lowlevel.checkpoint()
            if isinstance(event, Failure):
                raise UpstreamError(event)
            yield event

    async def probe(self, kind: ProbeKind) -> None:
        await trio.lowlevel.checkpoint()


@attrs.frozen(kw_only=True)
class Server:
    url: str
    a: ScriptedProvider
    b: ScriptedProvider


@asynccontextmanager
async def running(
    a: list[Script], b: list[Script] | None = None, *, a_supports: dict[str, bool] | None = None
) -> AsyncIterator[Server]:
    """Baton over scripted ``a`` then ``b`` behind ``serve_ws``.

    Routes: ``default`` (a, then b; atomic tool calls), ``live`` (the same, tool calls streamed
    live) and ``only_a`` (a alone).
    """
    providers = {"a": ScriptedProvider("a", a), "b": ScriptedProvider("b", b or [answer("B.")])}
    config = config_from_dict({
        "providers": {
            "a": {"kind": "openai", "base_url": "http://a.invalid/v1",
                  "supports": a_supports or {}},
            "b": {"kind": "openai", "base_url": "http://b.invalid/v1"},
        },
        "routes": {
            "default": {"targets": [
                {"provider": "a", "model": "model-a"}, {"provider": "b", "model": "model-b"},
            ]},
            "live": {"targets": [
                {"provider": "a", "model": "model-a"}, {"provider": "b", "model": "model-b"},
            ], "tool_streaming": "live"},
            "only_a": {"targets": [{"provider": "a", "model": "model-a"}]},
        },
    })  # fmt: skip
    serving = trio.CancelScope()

    async def serve_until_stopped(task_status: trio.TaskStatus[int]) -> None:
        with serving:
            await serve_ws(baton, task_status=task_status)

    async with open_baton(config, providers, seed=0) as baton, trio.open_nursery() as nursery:
        port = await nursery.start(serve_until_stopped)
        yield Server(url=f"ws://127.0.0.1:{port}/v1/stream", a=providers["a"], b=providers["b"])
        serving.cancel()


def start(ref: str, messages: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {"type": "start", "ref": ref, "model": "default", "messages": messages, **fields}


async def one_stream(url: str, frame: dict[str, Any]) -> list[dict[str, Any]]:
    """Run one start on a fresh connection; return the stream's frames."""

    async def conversation(url: str) -> list[dict[str, Any]]:
        async with open_ws(url) as ws:
            await send(ws, frame)
            return await until_terminal(ws)

    return await client(conversation, url)


# --- the tool loop ------------------------------------------------------------------------------


async def test_tool_loop_survives_a_reset_inside_the_call_arguments() -> None:
    """Step 1: a breaks halfway through the call's arguments, b answers with a whole call; the
    client sees b's call once. Step 2: the call's result goes back and the answer is text."""
    broken: Script = [
        ToolCallDelta(index=0, id="call_a1", name="get_weather", arguments='{"ci'),
        ToolCallDelta(index=0, arguments='ty": "Par'),
        RESET,
    ]
    calls: Script = [
        ToolCallDelta(index=0, id="call_b1", name="get_weather", arguments=""),
        ToolCallDelta(index=0, arguments='{"city":'),
        ToolCallDelta(index=0, arguments=' "Paris"}'),
        Finish(reason="tool_calls", usage=USAGE),
    ]
    result = "18 °C and sunny"

    async def conversation(url: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with open_ws(url) as ws:
            await send(ws, start("step1", [QUESTION], tools=[WEATHER_TOOL], tool_choice="auto"))
            first = await until_terminal(ws)
            [call] = [f for f in first if f["type"] == "tool_call"]
            # The client runs the tool and sends back the call and its result, as with OpenAI.
            history: list[dict[str, Any]] = [
                QUESTION,
                {"role": "assistant", "content": None, "tool_calls": [{
                    "id": call["id"], "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]},
                }]},
                {"role": "tool", "tool_call_id": call["id"], "content": result},
            ]  # fmt: skip
            await send(ws, start("step2", history, tools=[WEATHER_TOOL]))
            return first, await until_terminal(ws)

    async with running([broken, answer("It is 18 °C and sunny in Paris.")], [calls]) as server:
        first, second = await client(conversation, server.url)
        assert server.a.open_streams == server.b.open_streams == 0
    check_stream(first)
    stream = first[0]["stream"]
    assert [f["type"] for f in first] == ["started", "failover", "tool_call", "done"], first
    assert first[1] == {
        "type": "failover", "stream": stream, "seq": 1, "from": "a", "to": "b", "model": "model-b",
        "reason": "reset", "mode": "continue", "phase": "prestream",
    }  # fmt: skip
    # "prestream": a's half call was held back (atomic), so the client held nothing of it.
    # Exactly one call, whole, and it is the backup's: nothing of a's broken one.
    assert first[2] == {
        "type": "tool_call", "stream": stream, "seq": 2, "index": 0, "id": "call_b1",
        "name": "get_weather", "arguments": '{"city": "Paris"}',
    }  # fmt: skip
    assert json.loads(first[2]["arguments"]) == {"city": "Paris"}
    assert first[3]["finish_reason"] == "tool_calls" and first[3]["provider"] == "b"
    # Both targets were asked with the tools, fresh (b does not continue a's half call).
    for request in (server.a.requests[0], server.b.requests[0]):
        assert request.params["tools"] == [WEATHER_TOOL]
        assert request.params["tool_choice"] == "auto"
        assert request.messages == (Message(role="user", content=QUESTION["content"]),)
    assert check_stream(second) == "It is 18 °C and sunny in Paris."
    assert second[0]["ref"] == "step2" and second[-1]["finish_reason"] == "stop"
    assert not [f for f in second if f["type"] in ("tool_call", "tool_call_part", "failover")]
    # The second step reached the provider as the conversation the client sent.
    assert server.a.requests[1].messages == (
        Message(role="user", content=QUESTION["content"]),
        Message(
            role="assistant", content=None,
            tool_calls=(
                FunctionCall(id="call_b1", name="get_weather", arguments='{"city": "Paris"}'),
            ),
        ),
        Message(role="tool", content=result, tool_call_id="call_b1"),
    )  # fmt: skip
    assert server.a.requests[1].params == {"tools": [WEATHER_TOOL]}


async def test_parallel_calls_arrive_whole_in_the_providers_order() -> None:
    interleaved: Script = [
        ToolCallDelta(index=0, id="call_p", name="get_weather", arguments='{"city": '),
        ToolCallDelta(index=1, id="call_o", name="get_weather", arguments='{"city": "Oslo"'),
        ToolCallDelta(index=0, arguments='"Paris"}'),
        ToolCallDelta(index=1, arguments="}"),
        Finish(reason="tool_calls", usage=USAGE),
    ]
    frame = start("both", [QUESTION], tools=[WEATHER_TOOL], parallel_tool_calls=True)
    async with running([interleaved]) as server:
        frames = await one_stream(server.url, frame)
        assert server.a.requests[0].params["parallel_tool_calls"] is True
    check_stream(frames)
    calls = [(f["seq"], f["index"], f["id"], f["arguments"]) for f in frames[1:-1]]
    assert calls == [
        (1, 0, "call_p", '{"city": "Paris"}'),
        (2, 1, "call_o", '{"city": "Oslo"}'),
    ]
    assert {f["type"] for f in frames[1:-1]} == {"tool_call"}
    assert frames[-1]["finish_reason"] == "tool_calls"


async def test_live_tool_calls_arrive_as_parts() -> None:
    script: Script = [
        ToolCallDelta(index=0, id="call_1", name="get_weather", arguments='{"city"'),
        ToolCallDelta(index=0, arguments=': "Oslo"}'),
        Finish(reason="tool_calls", usage=None),
    ]
    async with running([script]) as server:
        frames = await one_stream(
            server.url, start("live", [QUESTION], model="live", tools=[WEATHER_TOOL])
        )
    check_stream(frames)
    stream = frames[0]["stream"]
    assert frames[1:] == [
        {"type": "tool_call_part", "stream": stream, "seq": 1, "index": 0, "id": "call_1",
         "name": "get_weather", "arguments": '{"city"'},
        {"type": "tool_call_part", "stream": stream, "seq": 2, "index": 0, "id": None,
         "name": None, "arguments": ': "Oslo"}'},
        {"type": "done", "stream": stream, "seq": 3, "finish_reason": "tool_calls",
         "provider": "a", "model": "model-a", "usage": None},
    ]  # fmt: skip


async def test_live_tool_call_broken_midway_is_reset_for_the_backups() -> None:
    broken: Script = [
        ToolCallDelta(index=0, id="call_a1", name="get_weather", arguments='{"ci'),
        RESET,
    ]
    whole: Script = [
        ToolCallDelta(index=0, id="call_b1", name="get_weather", arguments='{"city": "Oslo"}'),
        Finish(reason="tool_calls", usage=None),
    ]
    async with running([broken], [whole]) as server:
        frames = await one_stream(
            server.url, start("live", [QUESTION], model="live", tools=[WEATHER_TOOL])
        )
    check_stream(frames)
    stream = frames[0]["stream"]
    # The client holds a's fragment when a breaks: the failover tells it to drop it.
    assert frames[1:] == [
        {"type": "tool_call_part", "stream": stream, "seq": 1, "index": 0, "id": "call_a1",
         "name": "get_weather", "arguments": '{"ci'},
        {"type": "failover", "stream": stream, "seq": 2, "from": "a", "to": "b",
         "model": "model-b", "reason": "reset", "mode": "reset", "phase": "midstream"},
        {"type": "tool_call_part", "stream": stream, "seq": 3, "index": 0, "id": "call_b1",
         "name": "get_weather", "arguments": '{"city": "Oslo"}'},
        {"type": "done", "stream": stream, "seq": 4, "finish_reason": "tool_calls",
         "provider": "b", "model": "model-b", "usage": None},
    ]  # fmt: skip


# --- reasoning, log probabilities, content parts, structured output ----------------------------


async def test_reasoning_comes_before_the_answer_and_usage_has_its_details() -> None:
    usage = Usage(prompt_tokens=20, completion_tokens=30, cached_tokens=16, reasoning_tokens=24)
    script: Script = [
        ReasoningDelta("Paris is in France;"),
        ReasoningDelta(" it is warm today."),
        TextDelta("Warm."),
        Finish(reason="stop", usage=usage),
    ]
    async with running([script]) as server:
        frames = await one_stream(
            server.url, start("r", [QUESTION], params={"reasoning_effort": "high"})
        )
        assert server.a.requests[0].params == {"reasoning_effort": "high"}
    stream = frames[0]["stream"]
    assert check_stream(frames) == "Warm."
    assert frames[1:] == [
        {"type": "reasoning", "stream": stream, "seq": 1, "text": "Paris is in France;"},
        {"type": "reasoning", "stream": stream, "seq": 2, "text": " it is warm today."},
        {"type": "delta", "stream": stream, "seq": 3, "text": "Warm."},  # and no logprobs
        {"type": "done", "stream": stream, "seq": 4, "finish_reason": "stop", "provider": "a",
         "model": "model-a", "usage": {"prompt_tokens": 20, "completion_tokens": 30,
                                       "total_tokens": 50, "cached_tokens": 16,
                                       "reasoning_tokens": 24}},
    ]  # fmt: skip


def token(text: str, logprob: float) -> dict[str, Any]:
    """One token's entry as OpenAI sends it in ``choices[0].logprobs.content``."""
    return {
        "token": text, "logprob": logprob, "bytes": list(text.encode()),
        "top_logprobs": [{"token": text, "logprob": logprob, "bytes": list(text.encode())}],
    }  # fmt: skip


async def test_deltas_carry_their_tokens_logprobs() -> None:
    entries = [token("Sun", -0.01), token("ny", -0.2), token(".", -0.003)]
    script: Script = [
        TextDelta("Sun", logprobs=(entries[0],)),
        TextDelta("ny.", logprobs=tuple(entries[1:])),
        Finish(reason="stop", usage=USAGE),
    ]
    params = {"logprobs": True, "top_logprobs": 1}
    async with running([script]) as server:
        frames = await one_stream(server.url, start("lp", [QUESTION], params=params))
        assert server.a.requests[0].params == params
    assert check_stream(frames) == "Sunny."
    deltas = [f for f in frames if f["type"] == "delta"]
    # However the deltas were merged on the way, every token's entry is there once, in order.
    assert [e for f in deltas for e in f["logprobs"]] == entries


async def test_a_message_with_an_image_part_is_accepted() -> None:
    parts: list[dict[str, Any]] = [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=",
                                            "detail": "low"}},
    ]  # fmt: skip
    async with running([answer("A lighthouse.")]) as server:
        frames = await one_stream(server.url, start("img", [{"role": "user", "content": parts}]))
        [request] = server.a.requests
    assert check_stream(frames) == "A lighthouse." and frames[-1]["type"] == "done"
    assert request.messages == (Message(role="user", content=tuple(parts)),)


async def test_response_format_goes_upstream_beside_the_messages() -> None:
    schema = {
        "type": "json_schema",
        "json_schema": {"name": "weather", "strict": True, "schema": {
            "type": "object", "properties": {"celsius": {"type": "number"}},
            "required": ["celsius"],
        }},
    }  # fmt: skip
    script: Script = [TextDelta('{"celsius": '), TextDelta("18}"), Finish(reason="stop")]
    async with running([script]) as server:
        frames = await one_stream(
            server.url,
            start("json", [QUESTION], response_format=schema, params={"temperature": 0}),
        )
        assert server.a.requests[0].params == {"temperature": 0, "response_format": schema}
    assert json.loads(check_stream(frames)) == {"celsius": 18}


@pytest.mark.parametrize(
    ("backup", "mode", "text"),
    [
        # b, asked afresh (it cannot continue a prefill), gives the same start: joined on.
        ('{"celsius": 18}', "continue", '{"celsius": 18}'),
        # b's JSON starts otherwise: the client drops a's half and takes b's whole answer.
        ('{"temp": 18}', "reset", '{"temp": 18}'),
    ],
    ids=["same start", "other start"],
)
async def test_a_json_answer_broken_midway_ends_as_json(backup: str, mode: str, text: str) -> None:
    broken: Script = [TextDelta('{"celsius": '), RESET]
    async with running([broken], [answer(backup)]) as server:
        frames = await one_stream(
            server.url, start("json", [QUESTION], response_format={"type": "json_object"})
        )
        assert server.b.requests[0].messages == (Message(role="user", content=QUESTION["content"]),)
    [failover] = [f for f in frames if f["type"] == "failover"]
    assert (failover["from"], failover["to"], failover["mode"]) == ("a", "b", mode)
    deltas = [f["text"] for f in frames if f["type"] == "delta"]
    if mode == "reset":
        assert frames.index(failover) == 2  # after a's only delta, before any of b's
        deltas = deltas[1:]
    assert "".join(deltas) == text and frames[-1]["type"] == "done"
    check_stream(frames)


async def test_a_request_no_target_can_serve_is_refused_as_unsupported() -> None:
    async def conversation(url: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        async with open_ws(url) as ws:
            await send(ws, start("t", [QUESTION], model="only_a", tools=[WEATHER_TOOL]))
            refused = await receive(ws)
            await send(ws, start("plain", [QUESTION], model="only_a"))
            return refused, await until_terminal(ws)

    async with running([answer("Mild.")], a_supports={"tools": False}) as server:
        refused, plain = await client(conversation, server.url)
        assert len(server.a.requests) == 1  # only the plain request went upstream
    assert {k: refused[k] for k in ("type", "stream", "seq", "code", "retryable", "ref")} == {
        "type": "error", "stream": None, "seq": None, "code": "unsupported", "retryable": False,
        "ref": "t",
    }  # fmt: skip
    assert "a lacks tools" in refused["message"]
    assert check_stream(plain) == "Mild."


# --- bad shapes ---------------------------------------------------------------------------------

BAD_STARTS = [
    (
        "tool result without tool_call_id",
        start("q", [QUESTION, {"role": "tool", "content": "18 °C"}]),
        "messages[1] is a tool result: its 'tool_call_id' must name the call",
    ),
    (
        "tools not a list",
        start("q", [QUESTION], tools=WEATHER_TOOL),
        "'tools' must be a list",
    ),
    (
        "a tool without a function",
        start("q", [QUESTION], tools=[{"type": "function"}]),
        "tools[0] must be",
    ),
    (
        "tool_choice names no tool",
        start(
            "q",
            [QUESTION],
            tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "function": {"name": "get_time"}},
        ),
        "'tool_choice' names function 'get_time', which 'tools' does not have",
    ),
    (
        "unknown param",
        start("q", [QUESTION], params={"reasoning": "high"}),
        "unknown parameter 'reasoning'",
    ),
    (
        "tools inside params",
        start("q", [QUESTION], params={"tools": [WEATHER_TOOL]}),
        "'tools' goes beside 'messages' in a start frame, not in 'params'",
    ),
    (
        "unknown top-level field",
        start("q", [QUESTION], functions=[WEATHER_TOOL]),
        "Unknown field(s) 'functions' in a 'start' frame",
    ),
    (
        "top_logprobs without logprobs",
        start("q", [QUESTION], params={"top_logprobs": 3}),
        "'top_logprobs' needs 'logprobs': true",
    ),
    (
        "an image in a system message",
        start(
            "q",
            [
                {
                    "role": "system",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
                    ],
                },
                QUESTION,
            ],
        ),
        "messages[0].content[0] must be a content part of type text (in a system message)",
    ),
    (
        "assistant message with neither content nor tool_calls",
        start("q", [QUESTION, {"role": "assistant", "content": None}]),
        "messages[1].content may be null only when the message has tool_calls",
    ),
    (
        "reasoning_effort not a level",
        start("q", [QUESTION], params={"reasoning_effort": "max"}),
        "'reasoning_effort' must be one of",
    ),
]


@pytest.mark.parametrize(
    ("frame", "says"), [c[1:] for c in BAD_STARTS], ids=[c[0] for c in BAD_STARTS]
)
async def test_a_bad_start_gets_an_error_and_the_connection_serves_on(
    frame: dict[str, Any], says: str
) -> None:
    async def conversation(url: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        async with open_ws(url) as ws:
            await send(ws, frame)
            error = await receive(ws)
            await send(ws, start("good", [QUESTION], tools=[WEATHER_TOOL]))
            return error, await until_terminal(ws)

    async with running([answer("Fine.")]) as server:
        error, good = await client(conversation, server.url)
        assert len(server.a.requests) == 1  # the bad start never went upstream
    assert error == {
        "type": "error", "stream": None, "seq": None, "code": "bad_request",
        "message": error["message"], "retryable": False, "ref": "q",
    }  # fmt: skip
    assert says in error["message"] and error["message"].endswith("."), error["message"]
    assert good[0]["ref"] == "good" and check_stream(good) == "Fine."


# --- the codec ----------------------------------------------------------------------------------


def test_a_plain_delta_frame_is_unchanged() -> None:
    frame = encode_event(Delta(stream="st_1", seq=4, text="héllo"))
    assert frame == '{"type":"delta","stream":"st_1","seq":4,"text":"héllo"}'


def test_encode_event_writes_the_new_events() -> None:
    entry = token("hi", -0.5)
    full = Usage(
        prompt_tokens=3, completion_tokens=5, cached_tokens=0, cache_creation_tokens=2,
        reasoning_tokens=1,
    )  # fmt: skip
    cases: list[tuple[Any, dict[str, Any]]] = [
        (Delta(stream="s", seq=1, text="hi", logprobs=(entry,)),
         {"type": "delta", "stream": "s", "seq": 1, "text": "hi", "logprobs": [entry]}),
        (Reasoning(stream="s", seq=2, text="Hm."),
         {"type": "reasoning", "stream": "s", "seq": 2, "text": "Hm."}),
        (ToolCall(stream="s", seq=3, index=1, id="c", name="f", arguments='{"x": 1}'),
         {"type": "tool_call", "stream": "s", "seq": 3, "index": 1, "id": "c", "name": "f",
          "arguments": '{"x": 1}'}),
        (ToolCallPart(stream="s", seq=4, index=0, id=None, name=None, arguments="1}"),
         {"type": "tool_call_part", "stream": "s", "seq": 4, "index": 0, "id": None,
          "name": None, "arguments": "1}"}),
        # A detail reported as 0 is sent as 0; one not reported is left out.
        (Done(stream="s", seq=5, finish_reason="tool_calls", provider="a", model="m", usage=full),
         {"type": "done", "stream": "s", "seq": 5, "finish_reason": "tool_calls", "provider": "a",
          "model": "m", "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8,
                                  "cached_tokens": 0, "cache_creation_tokens": 2,
                                  "reasoning_tokens": 1}}),
    ]  # fmt: skip
    for event, expected in cases:
        assert json.loads(encode_event(event)) == expected


def test_decode_joins_the_request_fields_into_params() -> None:
    frame = start(
        "q", [QUESTION], tools=[WEATHER_TOOL], tool_choice="required", parallel_tool_calls=False,
        response_format={"type": "json_object"}, params={"max_tokens": 9, "logprobs": True},
    )  # fmt: skip
    message = decode_client_message(json.dumps(frame))
    assert message.params == {  # type: ignore[union-attr]
        "max_tokens": 9, "logprobs": True, "tools": [WEATHER_TOOL], "tool_choice": "required",
        "parallel_tool_calls": False, "response_format": {"type": "json_object"},
    }  # fmt: skip
    # A null request field counts as absent, as a JSON client's "no value" usually means.
    nulls = start("q", [QUESTION], tools=None, response_format=None)
    assert decode_client_message(json.dumps(nulls)).params == {}  # type: ignore[union-attr]
