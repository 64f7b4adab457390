"""Tests for the Anthropic adapter over httpx.MockTransport, with Anthropic's real event shapes."""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import httpx
import orjson
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from actors import (
    FailureKind,
    Finish,
    Malformed,
    Message,
    ProviderConfig,
    ReasoningDelta,
    TextDelta,
    UpstreamError,
    UpstreamEvent,
    UpstreamRequest,
    Usage,
)
from transport.providers import AnthropicProvider, make_provider

KEY = "sk-ant-api03-SECRET-abcdef0123456789"
MODEL = "claude-3-5-haiku-20241022"


class ChunkStream(httpx.AsyncByteStream):
    """A response body that yields ``chunks``, then raises ``error`` if given."""

    def __init__(self, chunks: Sequence[bytes], *, error: Exception | None = None) -> None:
        self.chunks = list(chunks)
        self.error = error
        self.closed = False

    def __repr__(self) -> str:
        return f"<ChunkStream {len(self.chunks)} chunks error={self.error!r}>"

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            await trio.lowlevel.checkpoint()
            yield chunk
        if self.error is not None:
            raise self.error

    async def aclose(self) -> None:
        self.closed = True


def event(name: str, data: dict[str, Any]) -> bytes:
    """One named event exactly as Anthropic sends it."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def text(piece: str) -> bytes:
    return event(
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
    )


MESSAGE_START = event(
    "message_start",
    {
        "type": "message_start",
        "message": {
            "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": MODEL,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 25, "output_tokens": 1},
        },
    },
)
BLOCK_START = event(
    "content_block_start",
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
)
PING = event("ping", {"type": "ping"})
BLOCK_STOP = event("content_block_stop", {"type": "content_block_stop", "index": 0})


def message_delta(stop_reason: str, output_tokens: int = 15) -> bytes:
    return event(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": output_tokens},
        },
    )


MESSAGE_STOP = event("message_stop", {"type": "message_stop"})
STREAM = b"".join(
    [
        MESSAGE_START,
        BLOCK_START,
        PING,
        text("Hello"),
        text(" wörld 🙂"),
        BLOCK_STOP,
        message_delta("end_turn"),
        MESSAGE_STOP,
    ]
)
EVENTS: list[UpstreamEvent] = [
    TextDelta("Hello"),
    TextDelta(" wörld 🙂"),
    Finish(reason="stop", usage=Usage(prompt_tokens=25, completion_tokens=15), model=MODEL),
]
REQUEST = UpstreamRequest(
    model=MODEL,
    messages=(Message(role="system", content="Be brief."), Message(role="user", content="Hi")),
)


def config(**overrides: Any) -> ProviderConfig:
    fields: dict[str, Any] = {
        "name": "claude",
        "kind": "anthropic",
        "base_url": "https://api.example.test",
    }
    return ProviderConfig(**{**fields, **overrides})


def provider_for(
    handler: Callable[[httpx.Request], httpx.Response], **overrides: Any
) -> AnthropicProvider:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return AnthropicProvider(config(**overrides), client=client, api_key=KEY, probe_model=MODEL)


def sse(chunks: Sequence[bytes], **kwargs: Any) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(
        200, headers={"content-type": "text/event-stream"}, stream=ChunkStream(chunks, **kwargs)
    )


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def collect(
    provider: AnthropicProvider, request: UpstreamRequest = REQUEST
) -> list[UpstreamEvent]:
    async with provider.stream(request) as events:
        return [e async for e in events]


async def sent_body(request: UpstreamRequest, **overrides: Any) -> dict[str, Any]:
    """Stream ``request`` and return the JSON body the provider sent."""
    bodies: list[dict[str, Any]] = []

    def handler(http_request: httpx.Request) -> httpx.Response:
        bodies.append(orjson.loads(http_request.content))
        return sse([STREAM])(http_request)

    await collect(provider_for(handler, **overrides), request)
    return bodies[0]


async def test_stream_yields_text_and_finish_with_usage() -> None:
    assert await collect(provider_for(sse(pieces(STREAM, 9)))) == EVENTS


@pytest.mark.parametrize(
    ("base_url", "expected"),
    [
        ("https://api.example.test", "https://api.example.test/v1/messages"),
        ("https://api.example.test/", "https://api.example.test/v1/messages"),
        ("https://gw.example.test/anthropic/v1", "https://gw.example.test/anthropic/v1/messages"),
    ],
)
async def test_url_and_headers(base_url: str, expected: str) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return sse([STREAM])(request)

    await collect(provider_for(handler, base_url=base_url, anthropic_version="2023-06-01"))
    [sent] = seen
    assert (sent.method, str(sent.url)) == ("POST", expected)
    assert sent.headers["x-api-key"] == KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.headers["content-type"] == "application/json"
    assert "authorization" not in sent.headers


async def test_body_moves_system_merges_turns_and_translates_params() -> None:
    request = UpstreamRequest(
        model=MODEL,
        messages=(
            Message(role="system", content="Be brief."),
            Message(role="user", content="First."),
            Message(role="system", content="Use French."),
            Message(role="user", content="Second."),
            Message(role="assistant", content="Oui."),
            Message(role="user", content="Third."),
        ),
        params={"temperature": 1.7, "top_p": 0.9, "stop": "END", "seed": 7, "user": "u-1"},
    )
    assert await sent_body(request) == {
        "model": MODEL,
        "stream": True,
        "system": "Be brief.\n\nUse French.",
        "messages": [
            {"role": "user", "content": "First.\n\nSecond."},
            {"role": "assistant", "content": "Oui."},
            {"role": "user", "content": "Third."},
        ],
        "max_tokens": 4096,  # required by Anthropic; defaulted
        "temperature": 1.0,  # clamped to Anthropic's range
        "top_p": 0.9,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-1"},
        # "seed" is dropped: Anthropic rejects fields it does not know
    }


async def test_client_max_tokens_and_stop_list() -> None:
    body = await sent_body(
        UpstreamRequest(
            model=MODEL, messages=REQUEST.messages, params={"max_tokens": 50, "stop": ["a", "b"]}
        )
    )
    assert (body["max_tokens"], body["stop_sequences"]) == (50, ["a", "b"])
    assert "system" in body and "temperature" not in body


async def test_prefill_loses_its_trailing_whitespace() -> None:
    request = UpstreamRequest(
        model=MODEL,
        messages=(
            Message(role="user", content="Count"),
            Message(role="assistant", content="1, 2, \n"),
        ),
        prefill=True,
    )
    body = await sent_body(request)
    assert body["messages"][-1] == {"role": "assistant", "content": "1, 2,"}


async def test_blank_prefill_is_dropped() -> None:
    request = UpstreamRequest(
        model=MODEL,
        messages=(Message(role="user", content="Count"), Message(role="assistant", content="  ")),
        prefill=True,
    )
    assert (await sent_body(request))["messages"] == [{"role": "user", "content": "Count"}]


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ],
)
async def test_stop_reasons(stop_reason: str, finish_reason: str) -> None:
    stream = MESSAGE_START + text("x") + message_delta(stop_reason, 3) + MESSAGE_STOP
    events = await collect(provider_for(sse([stream])))
    assert events[-1] == Finish(
        reason=finish_reason, usage=Usage(prompt_tokens=25, completion_tokens=3), model=MODEL
    )


async def test_thinking_is_reasoning_not_text_and_unknown_events_are_ignored() -> None:
    thinking = event(
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "hmm"},
        },
    )
    unknown = event("brand_new_event", {"type": "brand_new_event", "x": 1})
    stream = (
        MESSAGE_START
        + thinking
        + unknown
        + PING
        + text("ok")
        + message_delta("end_turn")
        + MESSAGE_STOP
    )
    events = await collect(provider_for(sse([stream])))
    assert events == [
        ReasoningDelta("hmm"),
        TextDelta("ok"),
        Finish(reason="stop", usage=Usage(prompt_tokens=25, completion_tokens=15), model=MODEL),
    ]


async def test_cached_prompt_tokens_count_as_prompt_tokens() -> None:
    start = event(
        "message_start",
        {
            "type": "message_start",
            "message": {
                "model": MODEL,
                "usage": {
                    "input_tokens": 5,
                    "cache_creation_input_tokens": 100,
                    "cache_read_input_tokens": 20,
                    "output_tokens": 1,
                },
            },
        },
    )
    events = await collect(
        provider_for(sse([start + text("x") + message_delta("end_turn", 2) + MESSAGE_STOP]))
    )
    assert events[-1] == Finish(
        reason="stop",
        usage=Usage(
            prompt_tokens=125, completion_tokens=2, cached_tokens=20, cache_creation_tokens=100
        ),
        model=MODEL,
    )


async def test_cumulative_input_tokens_in_message_delta_win() -> None:
    delta = event(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {
                "input_tokens": 30,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 10,
                "output_tokens": 7,
            },
        },
    )
    events = await collect(provider_for(sse([MESSAGE_START + text("x") + delta + MESSAGE_STOP])))
    assert events[-1] == Finish(
        reason="stop",
        usage=Usage(
            prompt_tokens=40, completion_tokens=7, cached_tokens=10, cache_creation_tokens=0
        ),
        model=MODEL,
    )


async def test_usage_is_the_input_and_output_tokens_as_reported() -> None:
    [*_, finish] = await collect(provider_for(sse([STREAM])))
    assert isinstance(finish, Finish) and finish.usage == Usage(
        prompt_tokens=25, completion_tokens=15, total_tokens=40
    )


@pytest.mark.parametrize("reported", ["neither", "input only", "output only"])
async def test_no_usage_unless_both_counts_were_reported(reported: str) -> None:
    start_usage = {"input_tokens": 25} if reported == "input only" else None
    start = event(
        "message_start",
        {"type": "message_start", "message": {"model": MODEL, "usage": start_usage}},
    )
    delta: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
    }
    if reported == "output only":
        delta["usage"] = {"output_tokens": 3}
    stream = start + text("x") + event("message_delta", delta) + MESSAGE_STOP
    assert await collect(provider_for(sse([stream]))) == [
        TextDelta("x"),
        Finish(reason="stop", usage=None, model=MODEL),
    ]


async def test_message_stop_ends_iteration() -> None:
    stream = MESSAGE_START + text("a") + message_delta("end_turn") + MESSAGE_STOP + text("ignored")
    assert await collect(provider_for(sse([stream]))) == [
        TextDelta("a"),
        Finish(reason="stop", usage=Usage(prompt_tokens=25, completion_tokens=15), model=MODEL),
    ]


async def test_eof_without_message_delta_just_ends() -> None:
    assert await collect(provider_for(sse([MESSAGE_START + text("cut")]))) == [TextDelta("cut")]


async def test_malformed_event_is_reported_and_skipped() -> None:
    stream = (
        MESSAGE_START
        + b"event: content_block_delta\ndata: {not json\n\n"
        + text("a")
        + MESSAGE_STOP
    )
    assert await collect(provider_for(sse([stream]))) == [
        Malformed(raw="{not json"),
        TextDelta("a"),
    ]


@pytest.mark.parametrize(
    ("error_type", "status"),
    [
        ("overloaded_error", 529),
        ("api_error", 500),
        ("rate_limit_error", 429),
        ("mystery_error", None),
    ],
)
async def test_error_event_after_text(error_type: str, status: int | None) -> None:
    error = event(
        "error", {"type": "error", "error": {"type": error_type, "message": "Overloaded"}}
    )
    got: list[UpstreamEvent] = []
    with pytest.raises(UpstreamError) as info:
        async with provider_for(sse([MESSAGE_START + text("par") + error])).stream(
            REQUEST
        ) as events:
            async for e in events:
                got.append(e)
    assert got == [TextDelta("par")]
    failure = info.value.failure
    assert (failure.kind, failure.code, failure.status) == (
        FailureKind.STREAM_ERROR,
        error_type,
        status,
    )
    assert failure.message == "Overloaded"


async def test_http_529_with_anthropic_error_body() -> None:
    body = b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
    provider = provider_for(lambda request: httpx.Response(529, content=body))
    with pytest.raises(UpstreamError) as info:
        await collect(provider)
    failure = info.value.failure
    assert (failure.kind, failure.status, failure.code) == (
        FailureKind.STATUS,
        529,
        "overloaded_error",
    )
    assert failure.message == "Overloaded"


async def test_http_429_retry_after_and_key_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    body = orjson.dumps(
        {
            "type": "error",
            "error": {"type": "rate_limit_error", "message": f"Too many requests for key {KEY}"},
        }
    )
    provider = provider_for(
        lambda request: httpx.Response(429, headers={"retry-after": "30"}, content=body)
    )
    with pytest.raises(UpstreamError) as info:
        await collect(provider)
    failure = info.value.failure
    assert (failure.status, failure.code, failure.retry_after) == (429, "rate_limit_error", 30.0)
    assert KEY not in str(info.value) and "Too many requests" in failure.message
    assert caplog.records
    assert all(KEY not in record.getMessage() for record in caplog.records)


async def test_reset_mid_stream() -> None:
    body = ChunkStream([MESSAGE_START, text("a")], error=httpx.ReadError("connection reset"))
    with pytest.raises(UpstreamError) as info:
        await collect(provider_for(lambda request: httpx.Response(200, stream=body)))
    assert info.value.failure.kind is FailureKind.RESET
    assert body.closed


async def test_probe_models_and_chat() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"data": [], "has_more": False})

    provider = provider_for(handler)
    await provider.probe("models")
    await provider.probe("chat")
    models, chat = seen
    assert (models.method, str(models.url)) == ("GET", "https://api.example.test/v1/models")
    assert models.headers["x-api-key"] == KEY
    assert (chat.method, str(chat.url)) == ("POST", "https://api.example.test/v1/messages")
    assert orjson.loads(chat.content) == {
        "model": MODEL,
        "max_tokens": 1,
        "messages": [{"role": "user", "content": "ping"}],
    }


async def test_make_provider_builds_the_anthropic_adapter() -> None:
    provider = make_provider(
        config(api_key_env="BATON_TEST_ANTHROPIC"), environ={"BATON_TEST_ANTHROPIC": KEY}
    )
    assert isinstance(provider, AnthropicProvider) and provider.kind == "anthropic"
    assert KEY not in repr(provider)
    await provider.aclose()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, len(STREAM)), max_size=12))
def test_any_chunking_yields_the_same_events(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(STREAM)]
    chunks = [STREAM[a:b] for a, b in itertools.pairwise(bounds)]

    async def main() -> list[UpstreamEvent]:
        return await collect(provider_for(sse(chunks)))

    assert trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0)) == EVENTS
