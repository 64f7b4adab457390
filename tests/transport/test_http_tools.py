"""The HTTP API carries the whole Chat Completions surface, seen through the official SDK.

The ``openai`` SDK talks to a real Baton HTTP server on 127.0.0.1; Baton's providers are the
real ``OpenAIProvider`` adapter over an ``httpx.MockTransport`` upstream that plays OpenAI's
own chunk shapes and records every body it is sent. So each test follows a field from the
client's call to the upstream body, and an upstream chunk back to the SDK's objects: tool
calls (atomic and live), tool results, reasoning, logprobs, usage details, unknown fields.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
import openai
import orjson
import trio

from actors import Baton, ProviderConfig, ToolCallPart, Usage, config_from_dict, open_baton
from transport import serve_http
from transport._openai_codec import Answer, ChunkEncoder, usage_object
from transport.providers import OpenAIProvider

from .test_openai_provider import ChunkStream
from .test_openai_sdk import FLAVOURS, Chunks, create, stream

MODEL = "gpt-test-1"
PROMPT = [{"role": "user", "content": "What is the weather in Paris and in Oslo?"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
USAGE = {
    "prompt_tokens": 40,
    "completion_tokens": 25,
    "total_tokens": 65,
    "prompt_tokens_details": {"cached_tokens": 32, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 11, "audio_tokens": 0},
}


def chunk(delta: Mapping[str, Any] | None = None, finish: str | None = None, **extra: Any) -> bytes:
    """One ``data:`` event as OpenAI streams a ``chat.completion.chunk``."""
    body: dict[str, Any] = {
        "id": "chatcmpl-up",
        "object": "chat.completion.chunk",
        "created": 1726000000,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}],
        "usage": None,
    }
    body.update(extra)
    return b"data: " + orjson.dumps(body) + b"\n\n"


def call_chunks(index: int, call_id: str, name: str, arguments: str) -> list[bytes]:
    """A tool call as OpenAI streams it: id and name first, then the arguments in pieces."""
    first = {"index": index, "id": call_id, "type": "function"}
    pieces = [arguments[i : i + 5] for i in range(0, len(arguments), 5)]
    return [
        chunk({"tool_calls": [{**first, "function": {"name": name, "arguments": ""}}]}),
        *(chunk({"tool_calls": [{"index": index, "function": {"arguments": p}}]}) for p in pieces),
    ]


PARIS = ("call_paris", "get_weather", '{"city": "Paris"}')
OSLO = ("call_oslo", "get_weather", '{"city": "Oslo"}')
TOOL_ANSWER = [
    chunk({"role": "assistant", "content": None}),
    *call_chunks(0, *PARIS),
    *call_chunks(1, *OSLO),
    chunk({}, finish="tool_calls"),
    chunk(choices=[], usage=USAGE),
    b"data: [DONE]\n\n",
]


def text_answer(*pieces: str, reasoning: Sequence[str] = ()) -> list[bytes]:
    return [
        chunk({"role": "assistant", "content": ""}),
        *(chunk({"content": None, "reasoning_content": r}) for r in reasoning),
        *(chunk({"content": p}) for p in pieces),
        chunk({}, finish="stop"),
        chunk(choices=[], usage=USAGE),
        b"data: [DONE]\n\n",
    ]


@attrs.define
class Upstream:
    """An OpenAI-compatible server in memory: answers its n-th chat request with
    ``answers[n]`` (the last again after that), breaking with ``errors[n]`` if given, and
    keeps every body it was sent."""

    answers: list[list[bytes]]
    errors: dict[int, Exception] = attrs.field(factory=dict)
    bodies: list[dict[str, Any]] = attrs.field(factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):  # health probes
            return httpx.Response(200, json={"object": "list", "data": []})
        n = len(self.bodies)
        self.bodies.append(orjson.loads(request.content))
        answer = self.answers[min(n, len(self.answers) - 1)]
        body = ChunkStream(answer, error=self.errors.get(n))
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=body)


@attrs.frozen
class Server:
    baton: Baton
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def config(kinds: Mapping[str, str] | None = None, **route: Any) -> dict[str, Any]:
    """Route ``r`` over providers ``a`` then ``b`` (OpenAI-compatible unless ``kinds`` says)."""
    kinds = {"a": "openai", "b": "openai", **(kinds or {})}
    return {
        "providers": {
            name: {"kind": kind, "base_url": f"http://{name}.invalid/v1"}
            for name, kind in kinds.items()
        },
        "routes": {
            "r": {
                "targets": [{"provider": "a", "model": "ma"}, {"provider": "b", "model": "mb"}],
                **route,
            }
        },
    }


@asynccontextmanager
async def serving(
    upstreams: Mapping[str, Upstream], raw: Mapping[str, Any] | None = None
) -> AsyncIterator[Server]:
    """Baton over ``OpenAIProvider``s whose upstreams are ``upstreams``, on a free port."""
    baton_config = config_from_dict(raw or config())
    providers = {
        name: _provider(baton_config.providers[name], upstream)
        for name, upstream in upstreams.items()
    }
    async with open_baton(baton_config, providers) as baton, trio.open_nursery() as nursery:
        port = await nursery.start(lambda task_status: serve_http(baton, task_status=task_status))
        yield Server(baton, port)
        nursery.cancel_scope.cancel()


def _provider(config: ProviderConfig, upstream: Upstream) -> OpenAIProvider:
    client = httpx.AsyncClient(transport=httpx.MockTransport(upstream))
    return OpenAIProvider(config, client=client, api_key="sk-up")


def healthy(*answers: list[bytes]) -> dict[str, Upstream]:
    return {"a": Upstream(list(answers)), "b": Upstream([text_answer("b answered")])}


def tool_call_chunks(chunks: Chunks) -> list[Any]:
    return [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]


def joined_calls(chunks: Chunks) -> dict[int, dict[str, str]]:
    """The SDK's streamed tool call deltas put together by index, as a client does."""
    calls: dict[int, dict[str, str]] = {}
    for delta in tool_call_chunks(chunks):
        call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
        call["id"] += delta.id or ""
        if delta.function is not None:
            call["name"] += delta.function.name or ""
            call["arguments"] += delta.function.arguments or ""
    return calls


def finish_reasons(chunks: Chunks) -> list[str]:
    return [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]


# --- tool calls ----------------------------------------------------------------------------------


@FLAVOURS
async def test_streamed_tool_calls_reach_the_sdk_whole_one_chunk_per_call(flavour: str) -> None:
    async with serving(healthy(TOOL_ANSWER)) as server:
        chunks, error = await stream(
            server, flavour, model="r", messages=PROMPT, tools=[WEATHER], tool_choice="auto"
        )
    assert error is None
    deltas = tool_call_chunks(chunks)
    # Atomic (the default): each call arrives complete in one chunk, never as fragments.
    assert [(d.index, d.id, d.type, d.function.name) for d in deltas] == [
        (0, "call_paris", "function", "get_weather"),
        (1, "call_oslo", "function", "get_weather"),
    ]
    assert [json.loads(d.function.arguments) for d in deltas] == [
        {"city": "Paris"},
        {"city": "Oslo"},
    ]
    assert finish_reasons(chunks) == ["tool_calls"]
    assert all(not (c.choices and c.choices[0].delta.content) for c in chunks)


@FLAVOURS
async def test_non_streamed_tool_calls_are_sdk_tool_call_objects(flavour: str) -> None:
    async with serving(healthy(TOOL_ANSWER)) as server:
        completion = await create(server, flavour, model="r", messages=PROMPT, tools=[WEATHER])
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert all(isinstance(c, openai.types.chat.ChatCompletionMessageToolCall) for c in calls)
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("call_paris", "get_weather", {"city": "Paris"}),
        ("call_oslo", "get_weather", {"city": "Oslo"}),
    ]


async def test_a_tool_result_round_trip_reaches_the_upstream_in_openais_shape() -> None:
    upstreams = healthy(TOOL_ANSWER, text_answer("Rain in Paris, ", "snow in Oslo."))
    async with serving(upstreams) as server:
        first = await create(server, "sync", model="r", messages=PROMPT, tools=[WEATHER])
        calls = first.choices[0].message.tool_calls
        messages = [
            *PROMPT,
            first.choices[0].message.model_dump(exclude_none=True),
            *(
                {"role": "tool", "tool_call_id": c.id, "content": f"weather of {c.id}"}
                for c in calls
            ),
        ]
        second = await create(server, "sync", model="r", messages=messages, tools=[WEATHER])
    assert second.choices[0].message.content == "Rain in Paris, snow in Oslo."
    assert second.choices[0].finish_reason == "stop"
    sent = upstreams["a"].bodies[1]
    assert sent["tools"] == [WEATHER]
    assert sent["messages"] == [
        *PROMPT,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
                for i, n, a in (PARIS, OSLO)
            ],
        },
        {"role": "tool", "content": "weather of call_paris", "tool_call_id": "call_paris"},
        {"role": "tool", "content": "weather of call_oslo", "tool_call_id": "call_oslo"},
    ]


async def test_live_tool_calls_stream_as_openais_fragments() -> None:
    raw = config(tool_streaming="live")
    async with serving(healthy(TOOL_ANSWER), raw) as server:
        chunks, error = await stream(server, "sync", model="r", messages=PROMPT, tools=[WEATHER])
    assert error is None
    deltas = tool_call_chunks(chunks)
    assert len(deltas) > 2  # fragments, not whole calls
    firsts = [d for d in deltas if d.id is not None]
    assert [(d.index, d.id, d.type, d.function.name) for d in firsts] == [
        (0, "call_paris", "function", "get_weather"),
        (1, "call_oslo", "function", "get_weather"),
    ]
    rest = [d for d in deltas if d.id is None]
    assert rest and all(d.type is None and d.function.name is None for d in rest)
    calls = joined_calls(chunks)
    assert {i: json.loads(c["arguments"]) for i, c in calls.items()} == {
        0: {"city": "Paris"},
        1: {"city": "Oslo"},
    }
    assert finish_reasons(chunks) == ["tool_calls"]


async def test_a_provider_breaking_inside_a_tool_call_leaves_one_whole_call() -> None:
    # a breaks inside the arguments of its first call; atomic mode held them, so b's call is
    # the only one the client sees.
    broken = TOOL_ANSWER[:4]
    upstreams = {
        "a": Upstream([broken], errors={0: httpx.ReadError("connection reset")}),
        "b": Upstream([TOOL_ANSWER]),
    }
    async with serving(upstreams) as server:
        chunks, error = await stream(server, "sync", model="r", messages=PROMPT, tools=[WEATHER])
    assert error is None
    assert {i: c["id"] for i, c in joined_calls(chunks).items()} == {
        0: "call_paris",
        1: "call_oslo",
    }
    assert len(tool_call_chunks(chunks)) == 2
    assert {c.model for c in chunks} >= {"mb"}


async def test_a_live_tool_call_broken_off_ends_the_sse_stream_with_stream_diverged() -> None:
    broken = TOOL_ANSWER[:4]
    upstreams = {
        "a": Upstream([broken], errors={0: httpx.ReadError("connection reset")}),
        "b": Upstream([TOOL_ANSWER]),
    }
    async with serving(upstreams, config(tool_streaming="live")) as server:
        chunks, error = await stream(server, "sync", model="r", messages=PROMPT, tools=[WEATHER])
    assert tool_call_chunks(chunks)  # the fragments a sent reached the client
    assert isinstance(error, openai.APIError)
    assert error.code == "stream_diverged"
    assert finish_reasons(chunks) == []


# --- reasoning, logprobs, usage, unknown fields --------------------------------------------------


async def test_reasoning_content_is_visible_streamed_and_whole() -> None:
    answer = text_answer("It is ", "42.", reasoning=["Let me ", "think."])
    async with serving(healthy(answer)) as server:
        chunks, error = await stream(
            server, "sync", model="r", messages=PROMPT, reasoning_effort="low"
        )
        completion = await create(server, "sync", model="r", messages=PROMPT)
    assert error is None
    reasoning = [
        c.choices[0].delta.model_extra.get("reasoning_content")
        for c in chunks
        if c.choices and c.choices[0].delta.model_extra
    ]
    assert "".join(r for r in reasoning if r) == "Let me think."
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "It is 42."
    message = completion.choices[0].message
    assert message.content == "It is 42."
    assert message.model_extra["reasoning_content"] == "Let me think."


def logprob(token: str, value: float) -> dict[str, Any]:
    entry = {"token": token, "logprob": value, "bytes": list(token.encode())}
    return {**entry, "top_logprobs": [entry]}


async def test_logprobs_reach_the_sdk_with_their_text() -> None:
    first, second = chunk({"content": "Hi"}), chunk({"content": " there"})
    with_lp = []
    for raw, entries in ((first, [logprob("Hi", -0.25)]), (second, [logprob(" there", -1.5)])):
        data = orjson.loads(raw[6:])
        data["choices"][0]["logprobs"] = {"content": entries, "refusal": None}
        with_lp.append(b"data: " + orjson.dumps(data) + b"\n\n")
    answer = [chunk({"role": "assistant", "content": ""}), *with_lp, chunk({}, finish="stop")]
    upstreams = healthy(answer)
    async with serving(upstreams) as server:
        kwargs: dict[str, Any] = {"model": "r", "messages": PROMPT, "logprobs": True}
        chunks, error = await stream(server, "sync", top_logprobs=1, **kwargs)
        completion = await create(server, "sync", **kwargs)
    assert error is None
    streamed = [
        (e.token, e.logprob)
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content or ()
    ]
    assert streamed == [("Hi", -0.25), (" there", -1.5)]
    whole = completion.choices[0].logprobs.content
    assert [(e.token, e.logprob, e.top_logprobs[0].token) for e in whole] == [
        ("Hi", -0.25, "Hi"),
        (" there", -1.5, " there"),
    ]
    assert upstreams["a"].bodies[0]["logprobs"] is True
    assert upstreams["a"].bodies[0]["top_logprobs"] == 1


@FLAVOURS
async def test_usage_details_reach_the_sdk(flavour: str) -> None:
    async with serving(healthy(text_answer("ok"))) as server:
        chunks, _ = await stream(
            server, flavour, model="r", messages=PROMPT, stream_options={"include_usage": True}
        )
        completion = await create(server, flavour, model="r", messages=PROMPT)
    [streamed] = [c.usage for c in chunks if c.usage is not None]
    for usage in (streamed, completion.usage):
        assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (40, 25, 65)
        assert usage.prompt_tokens_details.cached_tokens == 32
        assert usage.completion_tokens_details.reasoning_tokens == 11


async def test_unknown_and_new_fields_reach_the_upstream_body_unchanged() -> None:
    schema = {"name": "answer", "schema": {"type": "object"}, "strict": False}
    upstreams = healthy(text_answer('{"ok": true}'))
    async with serving(upstreams) as server:
        await create(
            server, "sync", model="r", messages=PROMPT, tools=[WEATHER], tool_choice="none",
            parallel_tool_calls=False,
            response_format={"type": "json_schema", "json_schema": schema},
            reasoning_effort="minimal", user="u-7", metadata={"team": "x"},
            extra_body={"prompt_cache_retention": "24h", "vendor_knob": {"depth": [1, 2]}},
        )  # fmt: skip
    [body] = upstreams["a"].bodies
    assert body["prompt_cache_retention"] == "24h"
    assert body["vendor_knob"] == {"depth": [1, 2]}
    assert body["tools"] == [WEATHER]
    assert body["tool_choice"] == "none"
    assert body["parallel_tool_calls"] is False
    assert body["response_format"] == {"type": "json_schema", "json_schema": schema}
    assert (body["reasoning_effort"], body["user"], body["metadata"]) == (
        "minimal",
        "u-7",
        {"team": "x"},
    )
    assert (body["model"], body["stream"]) == ("ma", True)


async def test_an_anthropic_first_target_names_the_fields_it_drops() -> None:
    # The header follows the configured kind of the route's first target; the upstream object
    # behind it does not matter here, so it is the same recording OpenAI one.
    raw = config({"a": "anthropic"})
    upstreams = {"a": Upstream([text_answer("x")]), "b": Upstream([text_answer("x")])}
    url = "/v1/chat/completions"
    dropping = {"model": "r", "messages": PROMPT, "seed": 3, "prompt_cache_retention": "24h"}
    async with serving(upstreams, raw) as server, httpx.AsyncClient(timeout=10) as client:
        whole = await client.post(server.url + url, json=dropping)
        streamed = await client.post(server.url + url, json={**dropping, "stream": True})
        kept = await client.post(
            server.url + url, json={"model": "r", "messages": PROMPT, "max_tokens": 9}
        )
    for response in (whole, streamed):
        assert response.status_code == 200
        assert response.headers["x-baton-dropped-fields"] == "prompt_cache_retention, seed"
    assert streamed.text.endswith("data: [DONE]\n\n")
    assert kept.status_code == 200 and "x-baton-dropped-fields" not in kept.headers


# --- the encoder's shapes ------------------------------------------------------------------------


def _delta_of(data: bytes) -> Any:
    assert data.startswith(b"data: ") and data.endswith(b"\n\n")
    return orjson.loads(data[6:])["choices"][0]["delta"]


def test_live_fragments_of_a_server_that_numbers_every_call_0_get_their_own_indexes() -> None:
    encoder = ChunkEncoder(completion_id="c", created=1, model="m", include_usage=False)
    answer = Answer()
    parts = [
        ToolCallPart(stream="s", seq=1, index=0, id="x1", name="f", arguments='{"a"'),
        ToolCallPart(stream="s", seq=2, index=0, id=None, name=None, arguments=": 1}"),
        ToolCallPart(stream="s", seq=3, index=0, id="x2", name="g", arguments="{}"),
        ToolCallPart(stream="s", seq=4, index=1, id=None, name="h", arguments="{}"),
    ]
    deltas = [_delta_of(encoder.tool_call_part(p))["tool_calls"] for p in parts]
    for part in parts:
        answer.tool_call_part(part)
    first = {"type": "function"}
    assert deltas == [
        [{"index": 0, "id": "x1", **first, "function": {"name": "f", "arguments": '{"a"'}}],
        [{"index": 0, "function": {"arguments": ": 1}"}}],
        [{"index": 1, "id": "x2", **first, "function": {"name": "g", "arguments": "{}"}}],
        [{"index": 2, "id": "call_2", **first, "function": {"name": "h", "arguments": "{}"}}],
    ]
    assert answer.message()["tool_calls"] == [
        {"id": "x1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}},
        {"id": "x2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
        {"id": "call_2", "type": "function", "function": {"name": "h", "arguments": "{}"}},
    ]
    assert answer.message()["content"] is None


def test_usage_names_only_the_details_the_provider_reported() -> None:
    assert usage_object(Usage(prompt_tokens=3, completion_tokens=2)) == {
        "prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5,
    }  # fmt: skip
    anthropic = Usage(
        prompt_tokens=30, completion_tokens=2, cached_tokens=20, cache_creation_tokens=7
    )
    assert usage_object(anthropic) == {
        "prompt_tokens": 30, "completion_tokens": 2, "total_tokens": 32,
        "prompt_tokens_details": {"cached_tokens": 20}, "cache_creation_input_tokens": 7,
    }  # fmt: skip


def test_text_without_logprobs_keeps_the_pre_encoded_fast_path() -> None:
    encoder = ChunkEncoder(completion_id="c", created=1, model="m", include_usage=True)
    plain = encoder.delta("hi")
    assert plain == encoder._content + b'"hi"' + encoder._delta_tail
    entry = {"token": "hi", "logprob": -0.5, "bytes": [104, 105], "top_logprobs": []}
    with_logprobs = orjson.loads(encoder.delta("hi", (entry,))[6:])
    assert with_logprobs["choices"][0]["logprobs"] == {"content": [entry], "refusal": None}
    assert with_logprobs["usage"] is None
    assert orjson.loads(plain[6:])["choices"][0]["delta"] == {"content": "hi"}


# --- a broken answer that cannot be continued ----------------------------------------------------


def broken_json_upstreams() -> dict[str, Upstream]:
    """a breaks inside a JSON answer; b (asked to continue) writes a JSON answer of its own,
    which joined to a's start would not be the JSON the request asks for."""
    start = [chunk({"role": "assistant", "content": ""}), chunk({"content": '{"city": '})]
    return {
        "a": Upstream([start], errors={n: httpx.ReadError("connection reset") for n in (0, 1)}),
        "b": Upstream([text_answer('{"weather": ', '"rain"}')]),
    }


async def test_a_whole_answer_that_cannot_be_continued_is_answered_afresh() -> None:
    upstreams = broken_json_upstreams()
    json_object = {"type": "json_object"}
    async with serving(upstreams) as server:
        completion = await create(
            server, "sync", model="r", messages=PROMPT, response_format=json_object
        )
        chunks, error = await stream(
            server, "sync", model="r", messages=PROMPT, response_format=json_object
        )
    # Not streamed, the client held nothing yet: b's answer replaces a's broken start.
    assert json.loads(completion.choices[0].message.content) == {"weather": "rain"}
    assert completion.model == MODEL and len(upstreams["b"].bodies) == 2  # b's own answer
    # Streamed, the client holds a's start and cannot take a new answer: the stream ends.
    assert isinstance(error, openai.APIError) and error.code == "stream_diverged"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == '{"city": '
