"""Tests for the OpenAI adapter over httpx.MockTransport, with OpenAI's real stream shapes."""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
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
    UsageReport,
)
from transport.providers import OpenAIProvider, make_provider
from transport.providers._errors import parse_retry_after

KEY = "sk-test-SECRET-0123456789abcdef"
MODEL = "gpt-4o-mini-2024-07-18"


class ChunkStream(httpx.AsyncByteStream):
    """A response body that yields ``chunks``, then raises ``error`` or blocks, if given."""

    def __init__(
        self, chunks: Sequence[bytes], *, error: Exception | None = None, block: bool = False
    ) -> None:
        self.chunks = list(chunks)
        self.error = error
        self.block = block
        self.closed = False

    def __repr__(self) -> str:
        return f"<ChunkStream {len(self.chunks)} chunks error={self.error!r}>"

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            await trio.lowlevel.checkpoint()
            yield chunk
        if self.error is not None:
            raise self.error
        if self.block:
            await trio.sleep_forever()

    async def aclose(self) -> None:
        self.closed = True


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> bytes:
    """One ``data:`` event exactly as OpenAI streams a chat.completion.chunk."""
    body: dict[str, Any] = {
        "id": "chatcmpl-AbC123",
        "object": "chat.completion.chunk",
        "created": 1726000000,
        "model": MODEL,
        "system_fingerprint": "fp_e2bde53e6e",
        "choices": [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}],
        "usage": None,
    }
    body.update(extra)
    return b"data: " + orjson.dumps(body) + b"\n\n"


USAGE = {
    "prompt_tokens": 9,
    "completion_tokens": 2,
    "total_tokens": 11,
    "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 1, "audio_tokens": 0},
}
# USAGE as Baton reads it: the details ride along.
USAGE_READ = Usage(prompt_tokens=9, completion_tokens=2, cached_tokens=4, reasoning_tokens=1)
STREAM = b"".join(
    [
        chunk({"role": "assistant", "content": "", "refusal": None}),
        b": keep-alive\n\n",
        chunk({"content": "Hello"}),
        chunk({"content": " wörld 🙂"}),
        chunk({}, finish="stop"),
        chunk(choices=[], usage=USAGE),
        b"data: [DONE]\n\n",
    ]
)
EVENTS: list[UpstreamEvent] = [
    TextDelta("Hello"),
    TextDelta(" wörld 🙂"),
    Finish(reason="stop", usage=None, model=MODEL),
    UsageReport(usage=USAGE_READ),
]
REQUEST = UpstreamRequest(
    model="gpt-4o-mini",
    messages=(Message(role="system", content="Be brief."), Message(role="user", content="Hi")),
    params={"temperature": 0.5, "max_tokens": 50},
)


def config(**overrides: Any) -> ProviderConfig:
    fields: dict[str, Any] = {
        "name": "oai",
        "kind": "openai",
        "base_url": "https://api.example.test/v1",
    }
    return ProviderConfig(**{**fields, **overrides})


def provider_for(
    handler: Callable[[httpx.Request], httpx.Response], **overrides: Any
) -> OpenAIProvider:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return OpenAIProvider(config(**overrides), client=client, api_key=KEY, probe_model="gpt-x")


def sse(chunks: Sequence[bytes], **kwargs: Any) -> Callable[[httpx.Request], httpx.Response]:
    """A handler answering 200 with an event stream made of ``chunks``."""
    return lambda request: httpx.Response(
        200, headers={"content-type": "text/event-stream"}, stream=ChunkStream(chunks, **kwargs)
    )


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def collect(
    provider: OpenAIProvider, request: UpstreamRequest = REQUEST
) -> list[UpstreamEvent]:
    async with provider.stream(request) as events:
        return [event async for event in events]


async def failure_of(provider: OpenAIProvider, request: UpstreamRequest = REQUEST) -> UpstreamError:
    with pytest.raises(UpstreamError) as info:
        await collect(provider, request)
    return info.value


async def test_stream_yields_text_finish_and_late_usage() -> None:
    assert await collect(provider_for(sse(pieces(STREAM, 7)))) == EVENTS


async def test_request_shape_and_headers() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return sse([STREAM])(request)

    request = UpstreamRequest(
        model="gpt-4o-mini",
        messages=REQUEST.messages,
        # A client cannot switch streaming off or drop the usage chunk through params.
        params={"temperature": 0.5, "stream": False, "stream_options": {"include_usage": False}},
    )
    await collect(provider_for(handler), request)
    [sent] = seen
    assert sent.method == "POST"
    assert str(sent.url) == "https://api.example.test/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers["content-type"] == "application/json"
    assert orjson.loads(sent.content) == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ],
        "temperature": 0.5,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def test_no_key_no_authorization_header() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return sse([STREAM])(request)

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    await collect(OpenAIProvider(config(), client=client))
    assert "authorization" not in seen[0].headers


PREFILL = UpstreamRequest(
    model="m",
    messages=(Message(role="user", content="Count"), Message(role="assistant", content="1, 2, ")),
    prefill=True,
)


@pytest.mark.parametrize("configured", [True, None, False])
async def test_prefill_flags_only_when_the_provider_is_said_to_honour_them(
    configured: bool | None,
) -> None:
    bodies: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(orjson.loads(request.content))
        return sse([STREAM])(request)

    await collect(provider_for(handler, prefill=configured), PREFILL)
    [body] = bodies
    last = body["messages"][-1]
    assert last["content"] == "1, 2, "  # sent as it is, trailing space included
    if configured:
        assert last["prefix"] is True
        assert body["continue_final_message"] is True
        assert body["add_generation_prompt"] is False
    else:
        assert "prefix" not in last
        assert "continue_final_message" not in body
        assert "add_generation_prompt" not in body


async def test_crlf_and_comments_split_awkwardly() -> None:
    crlf = STREAM.replace(b"\n", b"\r\n").replace(b"data: [DONE]", b": ping\r\n\r\ndata: [DONE]")
    for size in (1, 2, 3, 5, 64):
        assert await collect(provider_for(sse(pieces(crlf, size)))) == EVENTS, size


async def test_done_ends_iteration_even_if_more_follows() -> None:
    stream = chunk({"content": "a"}) + b"data: [DONE]\n\n" + chunk({"content": "ignored"})
    assert await collect(provider_for(sse([stream]))) == [TextDelta("a")]


async def test_eof_without_finish_just_ends() -> None:
    # The session, not the adapter, turns a missing finish reason into an EOF failure.
    stream = chunk({"content": "cut sh"})
    assert await collect(provider_for(sse([stream]))) == [TextDelta("cut sh")]


async def test_last_event_without_its_blank_line_still_counts() -> None:
    # A server that ends the body right after the finish chunk's line (no blank line, no
    # [DONE]) still delivered a whole event; the HTTP layer saw a clean end.
    stream = chunk({"content": "x"}) + chunk({}, finish="stop")[:-1]
    assert await collect(provider_for(sse([stream]))) == [
        TextDelta("x"),
        Finish(reason="stop", usage=None, model=MODEL),
    ]


async def test_usage_in_the_finish_chunk_rides_on_finish() -> None:
    stream = chunk({"content": "x"}, finish="length", usage=USAGE) + b"data: [DONE]\n\n"
    assert await collect(provider_for(sse([stream]))) == [
        TextDelta("x"),
        Finish(reason="length", usage=USAGE_READ, model=MODEL),
    ]


async def test_the_providers_own_total_passes_through() -> None:
    # Baton passes on the provider's total as it is, even one that is not the plain sum.
    usage = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 13}
    stream = chunk({"content": "x"}, finish="stop") + chunk(choices=[], usage=usage)
    events = await collect(provider_for(sse([stream + b"data: [DONE]\n\n"])))
    assert events[-1] == UsageReport(
        usage=Usage(prompt_tokens=9, completion_tokens=2, total_tokens=13)
    )


async def test_a_server_that_reports_no_usage_gives_none() -> None:
    # Servers that ignore stream_options end with [DONE] and no usage chunk; nothing is made up.
    stream = chunk({"content": "x"}) + chunk({}, finish="stop") + b"data: [DONE]\n\n"
    assert await collect(provider_for(sse([stream]))) == [
        TextDelta("x"),
        Finish(reason="stop", usage=None, model=MODEL),
    ]


STRICT_REFUSAL = (
    b'{"error":{"message":"Unrecognized request argument supplied: stream_options",'
    b'"type":"invalid_request_error","param":null,"code":null}}'
)


async def test_a_server_refusing_stream_options_is_asked_again_without_it() -> None:
    bodies: list[dict[str, Any]] = []
    no_usage = chunk({"content": "x"}) + chunk({}, finish="stop") + b"data: [DONE]\n\n"

    def strict(request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        bodies.append(body)
        if "stream_options" in body:
            return httpx.Response(400, content=STRICT_REFUSAL)
        return sse([no_usage])(request)

    provider = provider_for(strict)
    expected = [TextDelta("x"), Finish(reason="stop", usage=None, model=MODEL)]
    assert await collect(provider) == expected
    assert await collect(provider) == expected
    # Refused once, asked again at once without it, and never again with it.
    assert ["stream_options" in body for body in bodies] == [True, False, False]
    assert bodies[0]["stream_options"] == {"include_usage": True}
    assert {k: v for k, v in bodies[0].items() if k != "stream_options"} == bodies[1]


async def test_other_refusals_are_not_asked_again() -> None:
    requests: list[httpx.Request] = []
    body = b'{"error":{"message":"temperature too high","type":"invalid_request_error"}}'

    def refusing(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(400, content=body)

    provider = provider_for(refusing)
    assert (await failure_of(provider)).failure.status == 400
    assert (await failure_of(provider)).failure.status == 400
    assert len(requests) == 2
    assert all("stream_options" in orjson.loads(r.content) for r in requests)


async def test_azure_style_empty_first_chunk_is_not_malformed() -> None:
    filter_chunk = (
        b'data: {"choices":[],"created":0,"id":"","model":"","object":"",'
        b'"prompt_filter_results":[]}\n\n'
    )
    assert await collect(provider_for(sse([filter_chunk, STREAM]))) == EVENTS


async def test_malformed_json_is_reported_and_skipped() -> None:
    stream = chunk({"content": "a"}) + b'data: {"choices": [\n\n' + b"data: 42\n\n" + STREAM
    events = await collect(provider_for(sse([stream])))
    assert events == [
        TextDelta("a"),
        Malformed(raw='{"choices": ['),
        Malformed(raw="42"),
        *EVENTS,
    ]


async def test_in_stream_error_after_text() -> None:
    error = (
        b'data: {"error":{"message":"The server had an error while processing your request.",'
        b'"type":"server_error","param":null,"code":null}}\n\n'
    )
    got: list[UpstreamEvent] = []
    with pytest.raises(UpstreamError) as info:
        async with provider_for(sse([chunk({"content": "par"}) + error])).stream(REQUEST) as events:
            async for event in events:
                got.append(event)
    assert got == [TextDelta("par")]  # text that came before the error is still delivered
    failure = info.value.failure
    assert failure.kind is FailureKind.STREAM_ERROR
    assert failure.code == "server_error"
    assert failure.status == 500
    assert "processing your request" in failure.message


async def test_vllm_style_error_with_status_in_code() -> None:
    error = (
        b'data: {"error":{"object":"error","message":"boom","type":"BadRequestError",'
        b'"param":null,"code":400}}\n\n'
    )
    failure = (await failure_of(provider_for(sse([error])))).failure
    assert (failure.kind, failure.status, failure.code) == (
        FailureKind.STREAM_ERROR,
        400,
        "BadRequestError",
    )


def status_handler(
    status: int, body: bytes, headers: dict[str, str] | None = None
) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(status, headers=headers or {}, content=body)


async def test_429_with_retry_after_seconds() -> None:
    body = (
        b'{"error":{"message":"Rate limit reached for gpt-4o-mini","type":"requests",'
        b'"param":null,"code":"rate_limit_exceeded"}}'
    )
    provider = provider_for(status_handler(429, body, {"retry-after": "7"}))
    failure = (await failure_of(provider)).failure
    assert failure.kind is FailureKind.STATUS
    assert (failure.status, failure.code, failure.retry_after) == (429, "rate_limit_exceeded", 7.0)
    assert failure.message == "Rate limit reached for gpt-4o-mini"


async def test_429_with_retry_after_http_date() -> None:
    when = datetime.now(UTC) + timedelta(seconds=120)
    provider = provider_for(
        status_handler(429, b"{}", {"retry-after": format_datetime(when, usegmt=True)})
    )
    retry_after = (await failure_of(provider)).failure.retry_after
    assert retry_after is not None and 100 < retry_after <= 120


async def test_retry_after_ms_wins() -> None:
    headers = {"retry-after": "20", "retry-after-ms": "1500"}
    failure = (await failure_of(provider_for(status_handler(503, b"", headers)))).failure
    assert (failure.status, failure.retry_after) == (503, 1.5)
    assert failure.message == "HTTP 503 Service Unavailable"


async def test_400_context_length_exceeded() -> None:
    body = (
        b'{"error":{"message":"This model\'s maximum context length is 128000 tokens. However, your'
        b' messages resulted in 130000 tokens. Please reduce the length of the messages.",'
        b'"type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}'
    )
    failure = (await failure_of(provider_for(status_handler(400, body)))).failure
    assert (failure.kind, failure.status, failure.code) == (
        FailureKind.STATUS,
        400,
        "context_length_exceeded",
    )
    assert failure.retry_after is None
    assert "maximum context length" in failure.message


async def test_401_never_repeats_the_key(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    body = orjson.dumps(
        {
            "error": {
                "message": f"Incorrect API key provided: {KEY}.",
                "type": "invalid_request_error",
                "code": "invalid_api_key",
            }
        }
    )
    error = await failure_of(provider_for(status_handler(401, body)))
    assert (error.failure.status, error.failure.code) == (401, "invalid_api_key")
    assert "Incorrect API key provided" in str(error)
    assert KEY not in str(error) and KEY not in repr(error.failure)
    assert caplog.records, "the failure should be logged"
    assert all(KEY not in record.getMessage() for record in caplog.records)


async def test_html_error_page_becomes_a_short_message_without_the_page() -> None:
    body = b"<html>\n<head><title>502 Bad Gateway</title></head>\n<body>nginx</body></html>"
    failure = (await failure_of(provider_for(status_handler(502, body)))).failure
    assert failure.status == 502 and failure.code is None
    # The page is no structured error: the client sees the status, the log the page.
    assert failure.message.startswith("HTTP 502 Bad Gateway")
    assert "<html>" not in failure.message and "nginx" not in failure.message


async def test_json_error_with_status_200() -> None:
    handler = status_handler(
        200,
        b'{"error":{"message":"overloaded","type":"overloaded_error"}}',
        {"content-type": "application/json"},
    )
    failure = (await failure_of(provider_for(handler))).failure
    assert (failure.kind, failure.status, failure.code) == (
        FailureKind.STREAM_ERROR,
        529,
        "overloaded_error",
    )


async def test_connect_refused(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = OpenAIProvider(config(base_url=f"http://127.0.0.1:{port}/v1"), api_key=KEY)
    try:
        failure = (await failure_of(provider)).failure
    finally:
        await provider.aclose()
    assert failure.kind is FailureKind.CONNECT
    assert all(KEY not in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (
            httpx.RemoteProtocolError("Server disconnected without sending a response."),
            FailureKind.CONNECT,
        ),
        (httpx.ReadError("[Errno 104] Connection reset by peer"), FailureKind.CONNECT),
        (httpx.ConnectTimeout("timed out"), FailureKind.CONNECT),
        (httpx.PoolTimeout("no free connection"), FailureKind.TIMEOUT),
        (httpx.WriteTimeout("body too slow"), FailureKind.TIMEOUT),
    ],
)
async def test_failures_before_the_response_head(error: Exception, kind: FailureKind) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    failure = (await failure_of(provider_for(handler))).failure
    assert failure.kind is kind
    assert type(error).__name__ in failure.message


@pytest.mark.parametrize(
    "error",
    [
        httpx.ReadError("[Errno 104] Connection reset by peer"),
        httpx.RemoteProtocolError("peer closed connection without sending complete message body"),
    ],
)
async def test_reset_mid_stream_after_delivering_what_came(error: Exception) -> None:
    # Everything up to the middle of the second text chunk, then the connection breaks.
    cut = STREAM.index(b"w\xc3\xb6rld") + 2
    body = ChunkStream(pieces(STREAM[:cut], 50), error=error)
    provider = provider_for(lambda request: httpx.Response(200, stream=body))
    got: list[UpstreamEvent] = []
    with pytest.raises(UpstreamError) as info:
        async with provider.stream(REQUEST) as events:
            async for event in events:
                got.append(event)
    assert info.value.failure.kind is FailureKind.RESET
    assert isinstance(info.value.__cause__, httpx.HTTPError)
    assert got == [TextDelta("Hello")]
    assert body.closed


async def test_leaving_early_closes_the_upstream_body() -> None:
    body = ChunkStream([STREAM])
    async with provider_for(lambda request: httpx.Response(200, stream=body)).stream(
        REQUEST
    ) as events:
        assert await events.__anext__() == TextDelta("Hello")
    assert body.closed


async def test_cancelled_read_still_closes_the_upstream_body(
    autojump_clock: trio.testing.MockClock,
) -> None:
    body = ChunkStream([chunk({"content": "a"})], block=True)
    provider = provider_for(lambda request: httpx.Response(200, stream=body))
    got = []
    with trio.move_on_after(30) as scope:
        async with provider.stream(REQUEST) as events:
            async for event in events:
                got.append(event)
    assert scope.cancelled_caught
    assert got == [TextDelta("a")]
    assert body.closed


async def test_a_cancelled_read_is_not_mistaken_for_the_end(
    autojump_clock: trio.testing.MockClock,
) -> None:
    body = ChunkStream([chunk({"content": "a"})], block=True)
    async with provider_for(lambda request: httpx.Response(200, stream=body)).stream(
        REQUEST
    ) as events:
        assert await events.__anext__() == TextDelta("a")
        with trio.move_on_after(5):
            await events.__anext__()
        with pytest.raises(UpstreamError) as info:
            await events.__anext__()
    assert info.value.failure.kind is FailureKind.RESET


async def test_probe_models_and_chat() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"object": "list", "data": []})

    provider = provider_for(handler)
    await provider.probe("models")
    await provider.probe("chat")
    models, chat = seen
    assert (models.method, str(models.url)) == ("GET", "https://api.example.test/v1/models")
    assert models.headers["authorization"] == f"Bearer {KEY}"
    assert (chat.method, str(chat.url)) == ("POST", "https://api.example.test/v1/chat/completions")
    assert orjson.loads(chat.content)["max_tokens"] == 1
    assert orjson.loads(chat.content)["model"] == "gpt-x"


async def test_chat_probe_without_a_model_lists_models(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"object": "list", "data": []})

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    provider = OpenAIProvider(config(), client=client, api_key=KEY)
    await provider.probe("chat")
    await provider.probe("chat")
    assert [(r.method, r.url.path) for r in seen] == [("GET", "/v1/models")] * 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "oai" in warnings[0].getMessage()


async def test_probe_failure_raises() -> None:
    provider = provider_for(
        status_handler(503, b'{"error":{"message":"down","type":"server_error"}}')
    )
    with pytest.raises(UpstreamError) as info:
        await provider.probe("models")
    assert (info.value.failure.status, info.value.failure.code) == (503, "server_error")


async def test_make_provider_reads_the_key_from_the_environment(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    missing = make_provider(config(api_key_env="BATON_TEST_KEY"), environ={})
    assert isinstance(missing, OpenAIProvider)
    assert any(
        "BATON_TEST_KEY" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records
    )
    caplog.clear()
    present = make_provider(config(api_key_env="BATON_TEST_KEY"), environ={"BATON_TEST_KEY": KEY})
    assert not caplog.records
    assert KEY not in repr(present)
    await missing.aclose()
    await present.aclose()


async def test_own_client_has_no_read_timeout() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return sse([STREAM])(request)

    await collect(provider_for(handler, connect_timeout=2.5, pool_timeout=4.0))
    timeout = seen[0].extensions["timeout"]
    assert timeout["read"] is None
    assert (timeout["connect"], timeout["pool"]) == (2.5, 4.0)


# --- property: the way the bytes are cut never changes the events -----------------------------


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, len(STREAM)), max_size=12))
def test_any_chunking_yields_the_same_events(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(STREAM)]
    chunks = [STREAM[a:b] for a, b in itertools.pairwise(bounds)]

    async def main() -> list[UpstreamEvent]:
        return await collect(provider_for(sse(chunks)))

    assert trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0)) == EVENTS


# --- Retry-After parsing (shared by both adapters) --------------------------------------------

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "12"}, 12.0),
        ({"retry-after": " 0.25 "}, 0.25),
        ({"retry-after": "-3"}, 0.0),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "Thu, 02 Jan 2025 03:05:05 GMT"}, 60.0),
        ({"retry-after": "Thu, 02 Jan 2025 03:05:35 -0000"}, 90.0),
        ({"retry-after": "Thu, 02 Jan 2025 03:00:00 GMT"}, 0.0),  # already past
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after-ms": "junk", "retry-after": "9"}, 9.0),
        ({}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(httpx.Headers(headers), now=NOW) == expected


# --- a real socket: httpx's own errors under trio --------------------------------------------


async def serve_once(stream: trio.SocketStream, body_chunks: Sequence[bytes], finish: bool) -> None:
    """Answer one request with a chunked event stream; without ``finish``, hang up mid-body."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += await stream.receive_some()
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += await stream.receive_some()
    await stream.send_all(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    for piece in body_chunks:
        await stream.send_all(b"%x\r\n%s\r\n" % (len(piece), piece))
    if finish:
        await stream.send_all(b"0\r\n\r\n")
    await stream.aclose()


@pytest.mark.parametrize("finish", [True, False])
async def test_real_socket_stream_and_truncated_body(finish: bool) -> None:
    cut = STREAM.index(b"w\xc3\xb6rld") + 2
    body_chunks = pieces(STREAM, 33) if finish else pieces(STREAM[:cut], 33)

    async def handler(stream: trio.SocketStream) -> None:
        await serve_once(stream, body_chunks, finish)

    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(
            functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
        )
        port = listener.socket.getsockname()[1]
        provider = OpenAIProvider(config(base_url=f"http://127.0.0.1:{port}/v1"), api_key=KEY)
        got: list[UpstreamEvent] = []
        try:
            async with provider.stream(REQUEST) as events:
                async for event in events:
                    got.append(event)
        except UpstreamError as exc:
            assert not finish
            assert exc.failure.kind is FailureKind.RESET
            assert got == [TextDelta("Hello")]
        else:
            assert finish
            assert got == EVENTS
        finally:
            await provider.aclose()
            nursery.cancel_scope.cancel()


async def test_reads_wait_the_read_delay_once_text_arrived_and_until_the_finish(
    autojump_clock,
) -> None:
    """Pacing under load: the first text and what follows the finish are never delayed."""
    parts = [chunk({"role": "assistant", "content": ""}), chunk({"content": "Hello"}),
             chunk({"content": " wörld"}), chunk({"content": "!"}), chunk({}, finish="stop"),
             chunk(choices=[], usage=USAGE), b"data: [DONE]\n\n"]  # fmt: skip
    provider = provider_for(sse(parts))
    start = trio.current_time()
    seen: list[tuple[str, float]] = []
    async with provider.stream(REQUEST, read_delay=lambda: 1.0) as events:
        async for event in events:
            label = event.text if isinstance(event, TextDelta) else type(event).__name__
            seen.append((label, trio.current_time() - start))
    assert seen == [
        ("Hello", 0.0), (" wörld", 1.0), ("!", 2.0), ("Finish", 3.0), ("UsageReport", 3.0),
    ]  # fmt: skip


async def test_a_read_delay_of_zero_reads_at_once(autojump_clock) -> None:
    provider = provider_for(sse(pieces(STREAM, 7)))
    start = trio.current_time()
    async with provider.stream(REQUEST, read_delay=lambda: 0.0) as events:
        assert [event async for event in events] == EVENTS
    assert trio.current_time() == start


async def test_a_providers_split_pools_act_as_one_client() -> None:
    """The pools are lent most-free-first and share one cookie jar (limits: the 70-stream test)."""
    from contextlib import ExitStack

    from transport.providers._http import Clients

    clients = Clients.for_provider(config(max_connections=70))
    with ExitStack() as stack:
        # Each lease goes to the pool with the most free connections: 24, 23, 23 free at first.
        leased = [stack.enter_context(clients.lease()) for _ in range(4)]
        pools = list(dict.fromkeys(leased))
        assert [leased.index(pool) for pool in pools] == [0, 2, 3]  # pools 1, 1, 2, 3
        pools[0].cookies.set("lb", "node-7", domain="api.example.test")
        assert dict(pools[1].cookies) == dict(pools[2].cookies) == {"lb": "node-7"}
    with clients.lease() as again:
        assert again is pools[0]  # all idle again: the first pool, whose connections are warm
    await clients.aclose()


# --- the whole Chat Completions request and answer ----------------------------------------------


async def test_messages_go_in_openais_shape_and_params_as_they_are() -> None:
    bodies: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(orjson.loads(request.content))
        return sse([STREAM])(request)

    image = {"type": "image_url", "image_url": {"url": "https://x.test/a.png", "detail": "low"}}
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]
    request = UpstreamRequest(
        model="m",
        messages=(
            Message(role="user", content=({"type": "text", "text": "Where?"}, image), name="ann"),
            Message(
                role="assistant",
                content=None,
                tool_calls=(FunctionCall(id="call_1", name="weather", arguments='{"c":"Oslo"}'),),
            ),
            Message(role="tool", content="rain", tool_call_id="call_1"),
        ),
        params={
            "tools": tools, "tool_choice": "auto", "logprobs": True, "top_logprobs": 2,
            "reasoning_effort": "low", "prompt_cache_retention": "24h",
        },
    )  # fmt: skip
    await collect(provider_for(handler), request)
    [body] = bodies
    assert body["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Where?"}, image],
            "name": "ann",
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"c":"Oslo"}'},
                }
            ],
        },
        {"role": "tool", "content": "rain", "tool_call_id": "call_1"},
    ]
    assert {k: body[k] for k in request.params} == request.params
    assert list(body)[: len(request.params)] == list(request.params)  # params first


def tool_chunk(*calls: dict[str, Any], content: str | None = None) -> bytes:
    return chunk({"role": "assistant", "content": content, "tool_calls": list(calls)})


async def test_openais_tool_call_fragments() -> None:
    # OpenAI: the first entry names id, type and function name with empty arguments; the rest
    # add argument pieces under the same index; the delta's content is null throughout.
    stream = b"".join([
        tool_chunk({"index": 0, "id": "call_a", "type": "function",
                    "function": {"name": "weather", "arguments": ""}}),
        tool_chunk({"index": 0, "function": {"arguments": '{"city"'}}),
        tool_chunk({"index": 0, "function": {"arguments": ': "Oslo"}'}}),
        tool_chunk({"index": 1, "id": "call_b", "type": "function",
                    "function": {"name": "time", "arguments": "{}"}}),
        chunk({}, finish="tool_calls"),
        b"data: [DONE]\n\n",
    ])  # fmt: skip
    assert await collect(provider_for(sse(pieces(stream, 11)))) == [
        ToolCallDelta(index=0, id="call_a", name="weather", arguments=""),
        ToolCallDelta(index=0, arguments='{"city"'),
        ToolCallDelta(index=0, arguments=': "Oslo"}'),
        ToolCallDelta(index=1, id="call_b", name="time", arguments="{}"),
        Finish(reason="tool_calls", usage=None, model=MODEL),
    ]


async def test_servers_that_send_whole_calls_or_repeat_ids_or_leave_out_the_index() -> None:
    whole = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    stream = b"".join([
        tool_chunk({"index": 0, **whole}),  # vLLM/Ollama-style: a whole call in one entry
        tool_chunk({"index": 1, "id": "c2", "function": {"name": "g", "arguments": "{"}}),
        tool_chunk({"index": 1, "id": "c2", "function": {"name": "g", "arguments": "}"}}),
        tool_chunk({"id": "c3", "function": {"name": "h", "arguments": None}}),  # no index
        chunk({}, finish="tool_calls"),
    ])  # fmt: skip
    assert await collect(provider_for(sse([stream]))) == [
        ToolCallDelta(index=0, id="c1", name="f", arguments='{"a":1}'),
        ToolCallDelta(index=1, id="c2", name="g", arguments="{"),
        ToolCallDelta(index=1, id="c2", name="g", arguments="}"),
        ToolCallDelta(index=0, id="c3", name="h", arguments=""),
        Finish(reason="tool_calls", usage=None, model=MODEL),
    ]


async def test_reasoning_under_either_name_and_text_beside_a_tool_call() -> None:
    stream = b"".join([
        chunk({"role": "assistant", "content": None, "reasoning_content": "Think"}),  # vLLM
        chunk({"content": "", "reasoning": " more"}),  # Ollama, OpenRouter
        chunk({"reasoning_content": None, "content": "Calling."}),
        tool_chunk({"index": 0, "id": "c", "function": {"name": "f", "arguments": "{}"}},
                   content="!"),
        chunk({}, finish="tool_calls"),
    ])  # fmt: skip
    assert await collect(provider_for(sse([stream]))) == [
        ReasoningDelta("Think"),
        ReasoningDelta(" more"),
        TextDelta("Calling."),
        TextDelta("!"),
        ToolCallDelta(index=0, id="c", name="f", arguments="{}"),
        Finish(reason="tool_calls", usage=None, model=MODEL),
    ]


async def test_logprobs_ride_on_their_chunks_text() -> None:
    entry = {"token": "Hi", "logprob": -0.1, "bytes": [72, 105],
             "top_logprobs": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105]}]}  # fmt: skip
    with_logprobs = orjson.loads(chunk({"content": "Hi"})[6:])
    with_logprobs["choices"][0]["logprobs"] = {"content": [entry], "refusal": None}
    stream = (
        b"data: " + orjson.dumps(with_logprobs) + b"\n\n"
        + chunk({"content": "!"}) + chunk({}, finish="stop")
    )  # fmt: skip
    assert await collect(provider_for(sse([stream]))) == [
        TextDelta("Hi", logprobs=(entry,)),
        TextDelta("!"),
        Finish(reason="stop", usage=None, model=MODEL),
    ]


@pytest.mark.parametrize(
    "tool_calls",
    [
        "call",
        [5],
        [{"index": -1, "function": {"name": "f"}}],
        [{"index": 0, "function": {"name": 3}}],
        [{"index": 0, "function": {"arguments": {"a": 1}}}],
    ],
)
async def test_tool_call_entries_that_are_not_fragments_are_malformed(tool_calls: Any) -> None:
    bad = chunk({"tool_calls": tool_calls})
    events = await collect(provider_for(sse([bad + chunk({}, finish="stop")])))
    assert events == [
        Malformed(raw=bad.decode()[6:-2]),
        Finish(reason="stop", usage=None, model=MODEL),
    ]
