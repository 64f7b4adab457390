"""The Anthropic adapter's translation both ways: Chat Completions requests into Messages API
bodies (exact dicts, in the shapes of Anthropic's API reference), and realistic Messages API
event sequences into upstream events."""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

import httpx
import orjson
import pytest

from actors import (
    FailureKind,
    Finish,
    FunctionCall,
    Malformed,
    Message,
    ProviderConfig,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    UpstreamError,
    UpstreamEvent,
    UpstreamRequest,
    Usage,
    parse_messages,
    parse_params,
)
from transport.providers import AnthropicEventParser, AnthropicProvider, SSEEvent
from transport.providers._anthropic import dropped_fields, messages_body, translate

MODEL = "claude-sonnet-4-5"
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    "+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
PDF = "JVBERi0xLjQKJcfsj6IKNSAwIG9iago8PC9MZW5ndGggNiAwIFI+PgpzdHJlYW0K"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
CLOCK = {"type": "function", "function": {"name": "get_time"}}
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "integer"}},
    "required": ["answer"],
    "additionalProperties": False,
}
JSON_SCHEMA = {
    "type": "json_schema",
    "json_schema": {"name": "sum", "schema": SCHEMA, "strict": True},
}


def body_for(
    messages: list[dict[str, Any]], params: dict[str, Any] | None = None, *, prefill: bool = False
) -> dict[str, Any]:
    """The body for a client's raw ``messages`` and fields, checked as the APIs check them."""
    request = UpstreamRequest(
        model=MODEL,
        messages=parse_messages(messages),
        params=parse_params(params or {}, forward_unknown=True),
        prefill=prefill,
    )
    return messages_body(request)


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


# --- messages ---------------------------------------------------------------------------------


def test_system_parts_join_and_turns_of_one_role_merge() -> None:
    body = body_for(
        [
            {
                "role": "developer",
                "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}],
            },
            user("First."),
            {"role": "system", "content": "Use French."},
            user("Second."),
        ]
    )
    assert body == {
        "model": MODEL,
        "stream": True,
        "max_tokens": 4096,
        "system": "Be brief.\n\nUse French.",
        "messages": [{"role": "user", "content": "First.\n\nSecond."}],
    }


def test_user_media_become_image_and_document_blocks() -> None:
    body = body_for(
        [
            user(
                [
                    {"type": "text", "text": "Compare these."},
                    {
                        "type": "image_url",
                        "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "high"},
                    },
                    {"type": "image_url", "image_url": {"url": "https://example.test/cat.jpg"}},
                    {
                        "type": "file",
                        "file": {
                            "file_data": f"data:application/pdf;base64,{PDF}",
                            "filename": "a.pdf",
                        },
                    },
                    {"type": "file", "file": {"file_data": PDF, "filename": "REPORT.PDF"}},
                    {"type": "file", "file": {"file_data": f"data:application/pdf;base64,{PDF}"}},
                ]
            )
        ]
    )
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Compare these."},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                },
                {"type": "image", "source": {"type": "url", "url": "https://example.test/cat.jpg"}},
                {
                    "type": "document",
                    "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
                    "title": "a.pdf",
                },
                {
                    "type": "document",
                    "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
                    "title": "REPORT.PDF",
                },
                {
                    "type": "document",
                    "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
                },
            ],
        }
    ]


def test_a_text_turn_merged_with_a_media_turn_keeps_each_block() -> None:
    body = body_for(
        [
            user("Look:"),
            user(
                [
                    {"type": "image_url", "image_url": {"url": "https://example.test/a.png"}},
                    {"type": "text", "text": ""},
                ]
            ),
        ]
    )
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Look:"},
                {"type": "image", "source": {"type": "url", "url": "https://example.test/a.png"}},
            ],  # the empty text part is left out: Anthropic refuses empty text blocks
        }
    ]


@pytest.mark.parametrize(
    ("part", "words"),
    [
        (
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
            "input_audio",
        ),
        ({"type": "file", "file": {"file_id": "file-abc123"}}, "file_id"),
        ({"type": "file", "file": {"file_data": "data:text/csv;base64,YSxi"}}, "PDF"),
        ({"type": "file", "file": {"file_data": "YSxi", "filename": "notes.txt"}}, "PDF"),
    ],
)
def test_media_anthropic_cannot_take_is_refused_plainly(part: dict[str, Any], words: str) -> None:
    with pytest.raises(UpstreamError) as info:
        body_for([user([{"type": "text", "text": "Hear this"}, part])])
    failure = info.value.failure
    assert (failure.kind, failure.status, failure.code) == (
        FailureKind.STATUS,
        400,
        "unsupported_content",
    )
    assert "messages[0].content[1]" in failure.message and words in failure.message


async def test_unsendable_media_fail_before_anything_is_sent() -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(500)

    provider = AnthropicProvider(
        ProviderConfig(name="claude", kind="anthropic", base_url="https://api.example.test"),
        client=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
        api_key="sk-ant-test",
    )
    audio = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
    request = UpstreamRequest(model=MODEL, messages=parse_messages([user([audio])]))
    with pytest.raises(UpstreamError) as info:
        async with provider.stream(request):
            pass
    assert info.value.failure.code == "unsupported_content" and sent == []


TOOL_LOOP = [
    user("Weather in Paris and Oslo?"),
    {
        "role": "assistant",
        "content": "Checking both.",
        "tool_calls": [
            {
                "id": "toolu_01",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            },
            {
                "id": "toolu_02",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
            },
        ],
    },
    {"role": "tool", "tool_call_id": "toolu_01", "content": "18 C"},
    {"role": "tool", "tool_call_id": "toolu_02", "content": [{"type": "text", "text": "9 C"}]},
    user("Answer in one line."),
]


def test_tool_calls_become_tool_use_and_results_one_user_turn() -> None:
    assert body_for(TOOL_LOOP, {"tools": [WEATHER]})["messages"] == [
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking both."},
                {
                    "type": "tool_use",
                    "id": "toolu_01",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_02",
                    "name": "get_weather",
                    "input": {"city": "Oslo"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "content": "18 C"},
                {"type": "tool_result", "tool_use_id": "toolu_02", "content": "9 C"},
                {"type": "text", "text": "Answer in one line."},
            ],
        },
    ]


def test_assistant_without_content_sends_only_tool_use() -> None:
    messages = [
        user("Time?"),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "toolu_9",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": ""},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_9", "content": "noon"},
    ]
    assert body_for(messages, {"tools": [CLOCK]})["messages"][1:] == [
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_9", "name": "get_time", "input": {}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_9", "content": "noon"}],
        },
    ]


def test_tool_call_arguments_that_are_no_object_are_refused() -> None:
    request = UpstreamRequest(
        model=MODEL,
        messages=(
            Message(role="user", content="x"),
            Message(
                role="assistant",
                content=None,
                tool_calls=(FunctionCall(id="t1", name="f", arguments="[1, 2]"),),
            ),
        ),
    )
    with pytest.raises(UpstreamError) as info:
        messages_body(request)
    assert info.value.failure.code == "unsupported_content"
    assert "messages[1].tool_calls[0]" in info.value.failure.message


def test_prefill_with_parts_loses_trailing_whitespace() -> None:
    messages = [
        user("Count"),
        {"role": "assistant", "content": [{"type": "text", "text": "1, 2, "}]},
    ]
    assert body_for(messages, prefill=True)["messages"][-1] == {
        "role": "assistant",
        "content": "1, 2,",
    }


# --- tools and tool_choice --------------------------------------------------------------------

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": WEATHER["function"]["parameters"],  # type: ignore[index]
}
CLOCK_TOOL = {"name": "get_time", "input_schema": {"type": "object"}}


@pytest.mark.parametrize(
    ("fields", "tool_choice"),
    [
        ({}, None),
        ({"tool_choice": "auto"}, {"type": "auto"}),
        ({"tool_choice": "required"}, {"type": "any"}),
        ({"tool_choice": "none"}, {"type": "none"}),
        (
            {"tool_choice": {"type": "function", "function": {"name": "get_time"}}},
            {"type": "tool", "name": "get_time"},
        ),
        ({"parallel_tool_calls": False}, {"type": "auto", "disable_parallel_tool_use": True}),
        (
            {"tool_choice": "required", "parallel_tool_calls": False},
            {"type": "any", "disable_parallel_tool_use": True},
        ),
        ({"tool_choice": "none", "parallel_tool_calls": False}, {"type": "none"}),
        ({"parallel_tool_calls": True}, None),
    ],
)
def test_tools_and_tool_choice(fields: dict[str, Any], tool_choice: dict[str, Any] | None) -> None:
    body = body_for([user("Hi")], {"tools": [WEATHER, CLOCK], **fields})
    assert body["tools"] == [WEATHER_TOOL, CLOCK_TOOL]
    assert body.get("tool_choice") == tool_choice


def test_no_tool_choice_without_tools() -> None:
    body = body_for([user("Hi")], {"tool_choice": "none", "parallel_tool_calls": False})
    assert "tools" not in body and "tool_choice" not in body


# --- structured output ------------------------------------------------------------------------

JSON_DESCRIPTION = "Give your answer as this tool's input: a JSON object matching the schema."


def test_json_schema_is_asked_through_a_forced_synthetic_tool() -> None:
    translation = translate(
        UpstreamRequest(
            model=MODEL,
            messages=parse_messages([user("1+1?")]),
            params={"response_format": JSON_SCHEMA},
        )
    )
    assert translation.json_tool == "baton_json_answer"
    assert translation.body["tools"] == [
        {"name": "baton_json_answer", "description": JSON_DESCRIPTION, "input_schema": SCHEMA}
    ]
    assert translation.body["tool_choice"] == {
        "type": "tool",
        "name": "baton_json_answer",
        "disable_parallel_tool_use": True,
    }
    assert "system" not in translation.body


def test_json_object_with_client_tools_lets_the_model_pick_any() -> None:
    translation = translate(
        UpstreamRequest(
            model=MODEL,
            messages=parse_messages([user("Hi")]),
            params={"response_format": {"type": "json_object"}, "tools": [WEATHER]},
        )
    )
    assert translation.body["tools"] == [
        WEATHER_TOOL,
        {
            "name": "baton_json_answer",
            "description": "Give your answer as this tool's input: a JSON object.",
            "input_schema": {"type": "object"},
        },
    ]
    assert translation.body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


def test_json_tool_name_steps_aside_for_a_client_tool_of_that_name() -> None:
    mine = {"type": "function", "function": {"name": "baton_json_answer"}}
    translation = translate(
        UpstreamRequest(
            model=MODEL,
            messages=parse_messages([user("Hi")]),
            params={"response_format": {"type": "json_object"}, "tools": [mine]},
        )
    )
    assert translation.json_tool == "baton_json_answer_"
    assert [t["name"] for t in translation.body["tools"]] == [
        "baton_json_answer",
        "baton_json_answer_",
    ]


def test_json_with_tool_choice_none_hides_the_client_tools() -> None:
    body = body_for(
        [user("Hi")],
        {"response_format": {"type": "json_object"}, "tools": [WEATHER], "tool_choice": "none"},
    )
    assert [t["name"] for t in body["tools"]] == ["baton_json_answer"]
    assert body["tool_choice"] == {
        "type": "tool",
        "name": "baton_json_answer",
        "disable_parallel_tool_use": True,
    }


def test_json_prefill_keeps_the_prefill_and_asks_for_json_in_the_system_prompt() -> None:
    translation = translate(
        UpstreamRequest(
            model=MODEL,
            messages=parse_messages(
                [
                    {"role": "system", "content": "You add numbers."},
                    user("1+1?"),
                    {"role": "assistant", "content": '{"answer": '},
                ]
            ),
            params={"response_format": JSON_SCHEMA},
            prefill=True,
        )
    )
    assert translation.json_tool is None
    assert translation.body == {
        "model": MODEL,
        "stream": True,
        "max_tokens": 4096,
        "system": "You add numbers.\n\nAnswer with JSON only, continuing the JSON text exactly "
        "where it stops; it must match this JSON schema: " + orjson.dumps(SCHEMA).decode() + ".",
        "messages": [
            {"role": "user", "content": "1+1?"},
            {"role": "assistant", "content": '{"answer":'},
        ],
    }


# --- reasoning and generation parameters -------------------------------------------------------


@pytest.mark.parametrize(
    ("effort", "budget"),
    [("minimal", 1024), ("low", 1024), ("medium", 4096), ("high", 16384), ("xhigh", 32000)],
)
def test_reasoning_effort_becomes_a_thinking_budget(effort: str, budget: int) -> None:
    body = body_for([user("Why?")], {"reasoning_effort": effort, "max_completion_tokens": 2000})
    assert body["thinking"] == {"type": "enabled", "budget_tokens": budget}
    # max_tokens must exceed the budget; the answer keeps the room the client gave it
    assert body["max_tokens"] == (2000 if budget < 2000 else budget + 2000)


def test_no_thinking_for_effort_none() -> None:
    body = body_for([user("Why?")], {"reasoning_effort": "none", "temperature": 0.5})
    assert "thinking" not in body and body["temperature"] == 0.5


def test_thinking_drops_temperature_top_k_and_a_low_top_p() -> None:
    params = {"reasoning_effort": "medium", "temperature": 0.3, "top_p": 0.5, "max_tokens": 8000}
    body = body_for([user("Why?")], params)
    assert {k: v for k, v in body.items() if k not in ("model", "stream", "messages")} == {
        "max_tokens": 8000,
        "thinking": {"type": "enabled", "budget_tokens": 4096},
    }
    assert dropped_fields(params) == ("temperature", "top_p")
    assert body_for([user("Why?")], {"reasoning_effort": "low", "top_p": 0.97})["top_p"] == 0.97


@pytest.mark.parametrize(
    "case", ["forced tool", "json answer", "prefill", "tool loop", "user after tool results"]
)
def test_thinking_gives_way(case: str) -> None:
    messages: list[dict[str, Any]] = [user("Why?")]
    params: dict[str, Any] = {"reasoning_effort": "high", "temperature": 0.2}
    prefill = False
    if case == "forced tool":
        params.update(tools=[WEATHER], tool_choice="required")
    elif case == "json answer":
        params["response_format"] = {"type": "json_object"}
    elif case == "prefill":
        messages.append({"role": "assistant", "content": "Because"})
        prefill = True
    else:
        messages = TOOL_LOOP if case == "user after tool results" else TOOL_LOOP[:-1]
        params["tools"] = [WEATHER]
    body = body_for(messages, params, prefill=prefill)
    assert "thinking" not in body and body["temperature"] == 0.2
    parsed = parse_messages(messages)
    assert dropped_fields(params, messages=parsed, prefill=prefill) == ("reasoning_effort",)
    assert dropped_fields(params, messages=parsed) == ("reasoning_effort",)


def test_thinking_stays_on_once_a_new_user_turn_follows_the_tool_loop() -> None:
    messages = [
        *TOOL_LOOP,
        {"role": "assistant", "content": "Paris 18 C, Oslo 9 C."},
        user("Thanks!"),
    ]
    body = body_for(messages, {"tools": [WEATHER], "reasoning_effort": "low"})
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert dropped_fields({"reasoning_effort": "low"}, messages=parse_messages(messages)) == ()


def test_generation_parameters() -> None:
    body = body_for(
        [user("Hi")],
        {
            "max_completion_tokens": 77,
            "temperature": 1.4,
            "top_p": 0.8,
            "stop": ["END", "STOP"],
            "user": "u-7",
        },
    )
    assert {k: v for k, v in body.items() if k not in ("model", "stream", "messages")} == {
        "max_tokens": 77,
        "temperature": 1.0,
        "top_p": 0.8,
        "stop_sequences": ["END", "STOP"],
        "metadata": {"user_id": "u-7"},
    }


def test_fields_without_an_anthropic_equivalent_are_dropped_and_named() -> None:
    params = {
        "logprobs": True,
        "top_logprobs": 3,
        "seed": 7,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.1,
        "service_tier": "flex",
        "store": True,
        "prompt_cache_key": "k-1",
        "brand_new_field": {"x": 1},
        "temperature": 0.5,
        "stream_options": {"include_usage": True},
        "max_tokens": 10,
    }
    body = body_for([user("Hi")], params)
    assert {k: v for k, v in body.items() if k not in ("model", "stream", "messages")} == {
        "max_tokens": 10,
        "temperature": 0.5,
    }
    assert dropped_fields(params) == (
        "brand_new_field",
        "frequency_penalty",
        "logprobs",
        "presence_penalty",
        "prompt_cache_key",
        "seed",
        "service_tier",
        "store",
        "top_logprobs",
    )
    assert dropped_fields({"logprobs": False, "store": None, "temperature": 1}) == ()


async def test_dropped_names_are_logged_once_at_debug_without_values(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="transport.providers._anthropic")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=b"")

    provider = AnthropicProvider(
        ProviderConfig(name="claude", kind="anthropic", base_url="https://api.example.test"),
        client=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
    )
    request = UpstreamRequest(
        model=MODEL,
        messages=parse_messages([user("Hi")]),
        params={"seed": 424242, "prompt_cache_key": "secret-cache-key"},
    )
    async with provider.stream(request) as events:
        assert [e async for e in events] == []
    records = [r for r in caplog.records if r.name == "transport.providers._anthropic"]
    assert len(records) == 1 and records[0].levelno == logging.DEBUG
    line = records[0].getMessage()
    assert "prompt_cache_key" in line and "seed" in line
    assert "424242" not in line and "secret-cache-key" not in line


# --- events -----------------------------------------------------------------------------------


def ev(data: dict[str, Any]) -> SSEEvent:
    return SSEEvent(data["type"], orjson.dumps(data).decode())


def start(input_tokens: int = 30, **cache: int) -> SSEEvent:
    usage = {"input_tokens": input_tokens, "output_tokens": 1, **cache}
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": MODEL,
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    return ev({"type": "message_start", "message": message})


def block(index: int, content_block: dict[str, Any]) -> SSEEvent:
    return ev({"type": "content_block_start", "index": index, "content_block": content_block})


def delta(index: int, **fields: Any) -> SSEEvent:
    return ev({"type": "content_block_delta", "index": index, "delta": fields})


def stop_block(index: int) -> SSEEvent:
    return ev({"type": "content_block_stop", "index": index})


def end(stop_reason: str, output_tokens: int = 50) -> list[SSEEvent]:
    return [
        ev(
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            }
        ),
        ev({"type": "message_stop"}),
    ]


def tool_use(index: int, call_id: str, name: str) -> SSEEvent:
    return block(index, {"type": "tool_use", "id": call_id, "name": name, "input": {}})


def parse(events: list[SSEEvent], *, json_tool: str | None = None) -> list[UpstreamEvent]:
    """Feed ``events`` one at a time, as they arrive; the parser must say when they end."""
    parser = AnthropicEventParser(json_tool=json_tool)
    out: deque[UpstreamEvent] = deque()
    ended = [parser.feed([e], out) for e in events]
    assert ended == [False] * (len(events) - 1) + [True]
    return list(out)


def finish(reason: str, completion: int = 50, prompt: int = 30) -> Finish:
    return Finish(
        reason=reason, usage=Usage(prompt_tokens=prompt, completion_tokens=completion), model=MODEL
    )


def test_a_tool_use_with_split_input_after_text() -> None:
    events = [
        start(),
        block(0, {"type": "text", "text": ""}),
        delta(0, type="text_delta", text="Let me check."),
        stop_block(0),
        tool_use(1, "toolu_01A", "get_weather"),
        delta(1, type="input_json_delta", partial_json=""),
        delta(1, type="input_json_delta", partial_json='{"ci'),
        delta(1, type="input_json_delta", partial_json='ty": "Pa'),
        delta(1, type="input_json_delta", partial_json='ris"}'),
        stop_block(1),
        *end("tool_use"),
    ]
    assert parse(events) == [
        TextDelta("Let me check."),
        ToolCallDelta(index=0, id="toolu_01A", name="get_weather"),
        ToolCallDelta(index=0, arguments='{"ci'),
        ToolCallDelta(index=0, arguments='ty": "Pa'),
        ToolCallDelta(index=0, arguments='ris"}'),
        finish("tool_calls"),
    ]


def test_parallel_tool_uses_are_numbered_from_zero() -> None:
    events = [
        start(),
        tool_use(0, "toolu_A", "get_weather"),
        delta(0, type="input_json_delta", partial_json='{"city": "Paris"}'),
        stop_block(0),
        tool_use(1, "toolu_B", "get_weather"),
        tool_use(2, "toolu_C", "get_time"),
        delta(2, type="input_json_delta", partial_json="{}"),
        delta(1, type="input_json_delta", partial_json='{"city": "Oslo"}'),
        stop_block(1),
        stop_block(2),
        *end("tool_use"),
    ]
    assert parse(events) == [
        ToolCallDelta(index=0, id="toolu_A", name="get_weather"),
        ToolCallDelta(index=0, arguments='{"city": "Paris"}'),
        ToolCallDelta(index=1, id="toolu_B", name="get_weather"),
        ToolCallDelta(index=2, id="toolu_C", name="get_time"),
        ToolCallDelta(index=2, arguments="{}"),
        ToolCallDelta(index=1, arguments='{"city": "Oslo"}'),
        finish("tool_calls"),
    ]


def test_thinking_then_text() -> None:
    events = [
        start(),
        block(0, {"type": "thinking", "thinking": ""}),
        delta(0, type="thinking_delta", thinking="Let me think"),
        delta(0, type="thinking_delta", thinking=" it through."),
        delta(0, type="signature_delta", signature="EqQBCgIYAhIM1gbcDa9GJwZA2b3h"),
        stop_block(0),
        block(1, {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"}),
        stop_block(1),
        block(2, {"type": "text", "text": ""}),
        delta(2, type="text_delta", text="It is 4."),
        stop_block(2),
        *end("end_turn"),
    ]
    assert parse(events) == [
        ReasoningDelta("Let me think"),
        ReasoningDelta(" it through."),
        TextDelta("It is 4."),
        finish("stop"),
    ]


def test_the_synthetic_json_tool_is_answer_text() -> None:
    events = [
        start(),
        tool_use(0, "toolu_J", "baton_json_answer"),
        delta(0, type="input_json_delta", partial_json=""),
        delta(0, type="input_json_delta", partial_json='{"answer"'),
        delta(0, type="input_json_delta", partial_json=": 2}"),
        stop_block(0),
        *end("tool_use", 12),
    ]
    assert parse(events, json_tool="baton_json_answer") == [
        TextDelta('{"answer"'),
        TextDelta(": 2}"),
        finish("stop", 12),
    ]
    # without the translation's word, the same tool is an ordinary tool call
    assert parse(events)[0] == ToolCallDelta(index=0, id="toolu_J", name="baton_json_answer")


def test_a_client_tool_call_beside_the_json_tool_finishes_as_tool_calls() -> None:
    events = [
        start(),
        tool_use(0, "toolu_W", "get_weather"),
        delta(0, type="input_json_delta", partial_json='{"city": "Rome"}'),
        stop_block(0),
        *end("tool_use"),
    ]
    assert parse(events, json_tool="baton_json_answer") == [
        ToolCallDelta(index=0, id="toolu_W", name="get_weather"),
        ToolCallDelta(index=0, arguments='{"city": "Rome"}'),
        finish("tool_calls"),
    ]


def test_usage_with_cache_counts() -> None:
    events = [
        start(12, cache_creation_input_tokens=2048, cache_read_input_tokens=1000),
        delta(0, type="text_delta", text="ok"),
        *end("end_turn", 9),
    ]
    assert parse(events)[-1] == Finish(
        reason="stop",
        usage=Usage(
            prompt_tokens=3060, completion_tokens=9, cached_tokens=1000, cache_creation_tokens=2048
        ),
        model=MODEL,
    )


def test_tool_input_for_an_unopened_block_is_malformed() -> None:
    stray = delta(3, type="input_json_delta", partial_json="{}")
    bad_start = block(0, {"type": "tool_use", "name": "get_time"})  # no id
    assert parse([start(), stray, bad_start, *end("end_turn")]) == [
        Malformed(raw=stray.data),
        Malformed(raw=bad_start.data),
        finish("stop"),
    ]


def test_tool_results_go_before_text_that_came_first_in_their_turn() -> None:
    messages = [
        user("Weather in Paris?"),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "toolu_01",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        user("In Celsius, please."),
        {"role": "tool", "tool_call_id": "toolu_01", "content": "18 C"},
    ]
    assert body_for(messages, {"tools": [WEATHER]})["messages"][-1] == {
        "role": "user",
        "content": [  # Anthropic refuses text ahead of a turn's tool results
            {"type": "tool_result", "tool_use_id": "toolu_01", "content": "18 C"},
            {"type": "text", "text": "In Celsius, please."},
        ],
    }
