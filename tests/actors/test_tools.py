"""Tool calls, reasoning, JSON answers and capabilities through the session (MockClock).

The providers here are scripts of upstream events, so each test says exactly where an answer
breaks: inside a tool call's arguments, inside a JSON document, after reasoning.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

import pytest
import trio

from actors import (
    Delta,
    Done,
    Failover,
    Failure,
    FailureKind,
    Finish,
    FunctionCall,
    Message,
    Reasoning,
    ReasoningDelta,
    RequestError,
    StreamError,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallPart,
    UpstreamError,
    open_baton,
    parse_messages,
    parse_params,
)
from actors._tools import ToolCallBuffer

from .conftest import PROMPT, make_config, run_stream

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
TOOLS = {"tools": [WEATHER_TOOL]}
RESET = object()  # in a script: the connection breaks here


class Script:
    """A provider that plays one list of upstream events per request, in order of arrival.

    ``RESET`` in a list raises a connection reset there. ``requests`` records what it was asked.
    """

    kind = "openai"

    def __init__(self, name: str, *scripts: list[object]) -> None:
        self.name = name
        self.scripts = list(scripts)
        self.requests: list = []

    async def probe(self, kind):
        return None

    def stream(self, request, *, read_delay=None):
        @asynccontextmanager
        async def attempt():
            index = len(self.requests)
            self.requests.append(request)
            script = self.scripts[min(index, len(self.scripts) - 1)]

            async def events():
                for item in script:
                    await trio.lowlevel.checkpoint()
                    if item is RESET:
                        raise UpstreamError(Failure(kind=FailureKind.RESET, message="reset"))
                    yield item

            yield events()

        return attempt()


def call(index: int, call_id: str, arguments: str, pieces: int = 2) -> list[object]:
    """A tool call's fragments: id and name first, then ``arguments`` in ``pieces`` parts."""
    size = max(1, len(arguments) // pieces)
    parts = [arguments[i : i + size] for i in range(0, len(arguments), size)]
    return [
        ToolCallDelta(index=index, id=call_id, name="get_weather"),
        *(ToolCallDelta(index=index, arguments=p) for p in parts),
    ]


ARGS = '{"city": "Paris"}'
TOOL_FINISH = Finish(reason="tool_calls")


async def test_a_reset_inside_tool_arguments_gives_the_client_one_whole_call(autojump_clock):
    half = call(0, "call_a", ARGS)[:2]  # the id, the name and half of the arguments
    providers = {
        "a": Script("a", [TextDelta("Let me check. "), *half, RESET]),
        "b": Script("b", [*call(0, "call_b", ARGS, pieces=4), TOOL_FINISH]),
    }
    async with open_baton(make_config(), providers) as baton:
        run = await run_stream(baton, params=TOOLS)
    assert run.text == "Let me check. "
    calls = run.of(ToolCall)
    assert [(c.index, c.id, c.name, c.arguments) for c in calls] == [
        (0, "call_b", "get_weather", ARGS)
    ]
    assert run.of(ToolCallPart) == []
    failover = run.of(Failover)[0]
    assert (failover.mode, failover.phase, failover.to_provider) == ("continue", "midstream", "b")
    assert isinstance(run.terminal, Done) and run.terminal.finish_reason == "tool_calls"
    # The backup was asked to continue the delivered text, with the tools still in the request.
    asked = providers["b"].requests[0]
    assert asked.params["tools"] == [WEATHER_TOOL]
    assert any(m.role == "assistant" and m.text == "Let me check. " for m in asked.messages)


async def test_parallel_calls_arrive_in_order_once_the_response_finished(autojump_clock):
    script = [*call(0, "call_1", ARGS), *call(1, "call_2", '{"city": "Oslo"}'), TOOL_FINISH]
    providers = {"a": Script("a", script), "b": Script("b", [])}
    async with open_baton(make_config(), providers) as baton:
        run = await run_stream(baton, params=TOOLS)
    assert [(c.index, c.id) for c in run.of(ToolCall)] == [(0, "call_1"), (1, "call_2")]
    # Every call comes after the last fragment was read: together, just before done.
    kinds = [type(e).__name__ for e in run.events]
    assert kinds == ["Started", "ToolCall", "ToolCall", "Done"]


async def test_arguments_that_do_not_parse_fail_the_attempt_and_the_next_target_answers(
    autojump_clock,
):
    providers = {
        "a": Script("a", [*call(0, "call_a", '{"city": "Par'), TOOL_FINISH]),
        "b": Script("b", [*call(0, "call_b", ARGS), TOOL_FINISH]),
    }
    async with open_baton(make_config(), providers) as baton:
        run = await run_stream(baton, params=TOOLS)
    assert [c.id for c in run.of(ToolCall)] == ["call_b"]
    first = run.statistics.attempts[0]
    assert (first.provider, first.outcome, first.reason) == ("a", "failed", "malformed")


@pytest.mark.parametrize("can_reset", [True, False])
async def test_live_tool_streaming_resets_or_diverges_when_a_call_breaks(autojump_clock, can_reset):
    providers = {
        "a": Script("a", [*call(0, "call_a", ARGS)[:2], RESET]),
        "b": Script("b", [*call(0, "call_b", ARGS), TOOL_FINISH]),
    }
    config = make_config(route={"tool_streaming": "live"})
    async with open_baton(config, providers) as baton:
        run = await run_stream(baton, params=TOOLS, can_reset=can_reset)
    parts = run.of(ToolCallPart)
    assert parts[0].id == "call_a" and parts[0].name == "get_weather"
    assert run.of(ToolCall) == []
    if can_reset:
        failover = run.of(Failover)[0]
        assert failover.mode == "reset"
        after = run.events[run.events.index(failover) :]
        pieces = [e.arguments for e in after if isinstance(e, ToolCallPart)]
        assert "".join(pieces) == ARGS
        assert isinstance(run.terminal, Done)
    else:
        assert isinstance(run.terminal, StreamError)
        assert run.terminal.code == "stream_diverged"
        assert 'tool_streaming = "live"' in run.terminal.message


async def test_reasoning_reaches_the_client_apart_from_the_text(autojump_clock):
    script = [
        ReasoningDelta("Think. "),
        ReasoningDelta("Again."),
        TextDelta("Hi"),
        Finish(reason="stop"),
    ]
    providers = {"a": Script("a", script), "b": Script("b", [])}
    async with open_baton(make_config(), providers) as baton:
        run = await run_stream(baton, params={"reasoning_effort": "low"})
    assert [e.text for e in run.of(Reasoning)] == ["Think. ", "Again."]
    assert run.text == "Hi"


async def test_logprobs_stay_with_their_text_when_deltas_merge(autojump_clock):
    entries = [{"token": t, "logprob": -0.1, "top_logprobs": []} for t in ("He", "llo")]
    script = [
        TextDelta("He", (entries[0],)),
        TextDelta("llo", (entries[1],)),
        Finish(reason="stop"),
    ]
    providers = {"a": Script("a", script), "b": Script("b", [])}
    async with open_baton(make_config(), providers) as baton:
        handle = baton.start_stream(route="default", messages=PROMPT, params={"logprobs": True})
        await trio.sleep(1)  # the reader is behind: both deltas merge into one event
        events = [e async for e in handle]
    deltas = [e for e in events if isinstance(e, Delta)]
    assert [d.text for d in deltas] == ["Hello"]
    assert deltas[0].logprobs == tuple(entries)


JSON_PARAMS = {"response_format": {"type": "json_object"}}


async def test_a_json_answer_cut_mid_document_is_continued_by_prefill_and_parses(
    autojump_clock,
):
    providers = {
        "a": Script("a", [TextDelta('{"city": '), TextDelta('"Pa'), RESET]),
        "b": Script("b", [TextDelta('ris"}'), Finish(reason="stop")]),
    }
    config = make_config(b={"prefill": True})
    async with open_baton(config, providers) as baton:
        run = await run_stream(baton, params=JSON_PARAMS)
    assert run.text == '{"city": "Paris"}'
    asked = providers["b"].requests[0]
    assert asked.prefill and asked.messages[-1].text == '{"city": "Pa'
    assert isinstance(run.terminal, Done)


async def test_a_json_answer_is_never_continued_by_instruction(autojump_clock):
    # b does not honour prefill: it is asked afresh (replay), not told to "continue".
    providers = {
        "a": Script("a", [TextDelta('{"city": "Pa'), RESET]),
        "b": Script("b", [TextDelta('{"city": "Paris"}'), Finish(reason="stop")]),
    }
    async with open_baton(make_config(), providers) as baton:
        run = await run_stream(baton, params=JSON_PARAMS)
    asked = providers["b"].requests[0]
    assert not asked.prefill and asked.messages == PROMPT
    assert run.text == '{"city": "Paris"}'


@pytest.mark.parametrize("can_reset", [True, False])
async def test_a_spliced_json_answer_that_does_not_parse_starts_afresh(autojump_clock, can_reset):
    providers = {
        "a": Script("a", [TextDelta('{"city": "Pa'), RESET]),
        "b": Script("b", [TextDelta('ris", oops'), Finish(reason="stop")]),
        "c": Script("c", [TextDelta('{"city": "Rome"}'), Finish(reason="stop")]),
    }
    config = make_config(("a", "b", "c"), b={"prefill": True})
    async with open_baton(config, providers) as baton:
        run = await run_stream(baton, params=JSON_PARAMS, can_reset=can_reset)
    if can_reset:
        assert [f.mode for f in run.of(Failover)][-1] == "reset"
        assert run.text == '{"city": "Rome"}'
        assert isinstance(run.terminal, Done)
    else:
        assert isinstance(run.terminal, StreamError)
        assert run.terminal.code == "stream_diverged"
        assert "not valid JSON" in run.terminal.message
    assert run.statistics.attempts[1].reason == "invalid_json"


async def test_a_strict_schema_is_checked_on_a_spliced_answer(autojump_clock):
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer"}},
        "required": ["n"],
    }
    params = {
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "n", "schema": schema, "strict": True},
        }
    }
    providers = {
        "a": Script("a", [TextDelta('{"n": '), RESET]),
        "b": Script("b", [TextDelta('"seven"}'), Finish(reason="stop")]),
    }
    config = make_config(b={"prefill": True})
    async with open_baton(config, providers) as baton:
        run = await run_stream(baton, params=params, can_reset=False)
    assert isinstance(run.terminal, StreamError) and run.terminal.code == "stream_diverged"
    assert "does not match the schema" in run.terminal.message


# --- capabilities ---------------------------------------------------------------------------


def anthropic_first(**b):
    return make_config(a={"kind": "anthropic"}, b=b)


async def test_a_target_that_cannot_serve_the_request_is_skipped(autojump_clock):
    providers = {
        "a": Script("a", [TextDelta("from a"), Finish(reason="stop")]),
        "b": Script("b", [TextDelta("from b"), Finish(reason="stop")]),
    }
    async with open_baton(anthropic_first(), providers) as baton:
        run = await run_stream(baton, params={"logprobs": True})
    assert run.text == "from b" and providers["a"].requests == []


async def test_no_capable_target_is_a_clear_unsupported_error(autojump_clock):
    providers = {"a": Script("a", []), "b": Script("b", [])}
    audio = Message(
        role="user",
        content=({"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},),
    )
    config = anthropic_first(supports={"audio": False})
    async with open_baton(config, providers) as baton:
        with pytest.raises(RequestError) as raised:
            baton.start_stream(route="default", messages=(audio,))
    assert raised.value.code == "unsupported" and raised.value.status == 400
    assert "a lacks audio" in raised.value.message and "b lacks audio" in raised.value.message


async def test_a_failed_capable_target_names_the_incapable_one_in_the_error(autojump_clock):
    providers = {
        "a": Script("a", []),
        "b": Script("b", [RESET]),
    }
    async with open_baton(anthropic_first(retries=0), providers) as baton:
        run = await run_stream(baton, params={"logprobs": True})
    assert isinstance(run.terminal, StreamError)
    assert run.terminal.code == "all_providers_unavailable"
    assert "a (model-a): cannot serve logprobs" in run.terminal.message


# --- pieces ---------------------------------------------------------------------------------


def test_the_buffer_numbers_calls_and_fills_in_what_servers_leave_out():
    buffer = ToolCallBuffer()
    # Some servers send every call at index 0, told apart by id; some send no id at all.
    for part in [
        ToolCallDelta(index=0, id="x", name="f", arguments='{"a"'),
        ToolCallDelta(index=0, arguments=": 1}"),
        ToolCallDelta(index=0, id="y", name="g"),
        ToolCallDelta(index=5, name="h"),
    ]:
        buffer.add(part)
    assert buffer.complete() == (
        (0, FunctionCall(id="x", name="f", arguments='{"a": 1}')),
        (1, FunctionCall(id="y", name="g", arguments="{}")),
        (2, FunctionCall(id="call_2", name="h", arguments="{}")),
    )


@pytest.mark.parametrize(
    ("parts", "words"),
    [
        ([ToolCallDelta(index=0, id="x", arguments="{}")], "no function name"),
        ([ToolCallDelta(index=0, id="x", name="f", arguments="[1]")], "not a JSON object"),
        (
            [ToolCallDelta(index=0, id="x", name="f"), ToolCallDelta(index=1, id="x", name="g")],
            "same id",
        ),
    ],
)
def test_the_buffer_refuses_broken_calls(parts, words):
    buffer = ToolCallBuffer()
    for part in parts:
        buffer.add(part)
    with pytest.raises(UpstreamError) as raised:
        buffer.complete()
    assert raised.value.failure.kind is FailureKind.MALFORMED
    assert words in raised.value.failure.message


def test_messages_of_a_tool_loop_parse():
    messages = parse_messages(
        [
            {"role": "developer", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Weather here?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ARGS},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
        ]
    )
    assert [m.role for m in messages] == ["system", "user", "assistant", "tool"]
    assert messages[1].text == "Weather here?"
    assert messages[2].tool_calls == (
        FunctionCall(id="call_1", name="get_weather", arguments=ARGS),
    )
    assert messages[3].tool_call_id == "call_1"


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ([{"role": "tool", "content": "18 C"}], "tool_call_id"),
        ([{"role": "assistant", "content": None}], "may be null only"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}],
            "https:// URL or a data:image",
        ),
        ([{"role": "system", "content": [{"type": "image_url"}]}], "of type text"),
        (
            [{"role": "assistant", "content": "", "tool_calls": [{"id": "c", "function": {}}]}],
            "tool_calls[0] must be",
        ),
    ],
)
def test_bad_messages_are_named(raw, words):
    with pytest.raises(RequestError) as raised:
        parse_messages(raw)
    assert words in raised.value.message


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"tools": [{"type": "function"}]}, "tools[0] must be"),
        ({"tools": [WEATHER_TOOL, WEATHER_TOOL]}, "used twice"),
        ({"tool_choice": "required"}, "needs at least one tool"),
        (
            {**TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "which 'tools' does not have",
        ),
        ({"top_logprobs": 3}, "needs 'logprobs': true"),
        ({"reasoning_effort": "extreme"}, "'reasoning_effort' must be one of"),
        ({"response_format": {"type": "yaml"}}, "'response_format' must be"),
        ({"prompt_cache_retention": "24h"}, "unknown parameter"),
    ],
)
def test_bad_params_are_named(params, words):
    with pytest.raises(RequestError) as raised:
        parse_params(params)
    assert words in raised.value.message


def test_unknown_params_can_be_forwarded_as_they_are():
    params = parse_params({"prompt_cache_retention": "24h", **TOOLS}, forward_unknown=True)
    assert params == {"prompt_cache_retention": "24h", **TOOLS}


async def test_a_tool_only_answer_has_a_time_to_first_token(autojump_clock, caplog):
    caplog.set_level(logging.INFO, logger="actors._session")

    class Slow(Script):
        def stream(self, request, *, read_delay=None):
            inner = super().stream(request)

            @asynccontextmanager
            async def attempt():
                async with inner as events:

                    async def slowly():
                        async for event in events:
                            await trio.sleep(0.5)
                            yield event

                    yield slowly()

            return attempt()

    script = [*call(0, "call_a", ARGS), TOOL_FINISH]
    providers = {"a": Slow("a", script), "b": Script("b", [])}
    async with open_baton(make_config(), providers) as baton:
        run = await run_stream(baton, params=TOOLS)
    assert len(run.of(ToolCall)) == 1
    (line,) = [r.getMessage() for r in caplog.records if "finished" in r.getMessage()]
    # The call reaches the client when the response finished (every event 0.5 s apart): that
    # is the answer's first output, and its time to first token.
    assert f"ttft={0.5 * len(script):.3f}" in line, line
