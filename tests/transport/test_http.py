"""Tests for the HTTP API on real sockets: the wire format, every refusal, health, status, metrics.

Each test runs Baton over in-memory ``FakeProvider``s, serves it with hypercorn on 127.0.0.1
(port 0), and talks to it with ``httpx`` as a client would.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
import orjson
import pytest
import trio

import transport._http as http_module
from actors import Baton, Message, RequestError, StreamError, Usage, config_from_dict, open_baton
from scenarios import Behaviour, FakeProvider, FaultSchedule, answer_tokens
from transport import MetricsEndpoint, serve_http
from transport._openai_codec import ChunkEncoder, stream_error_status
from transport.providers import install_merging_chunked_reader

PROMPT = [{"role": "user", "content": "Tell me about the harbour."}]
TOKENS = answer_tokens([Message(role="user", content=PROMPT[0]["content"])])
ANSWER = "".join(TOKENS)
BREAK_AT = 6  # tokens a sends before its connection resets, where it breaks


def two_targets(**route: Any) -> dict[str, Any]:
    """Route ``r``: ``a`` (model ``ma``) first, then ``b`` (``mb``); route ``solo``: ``b`` only."""
    return {
        "providers": {
            "a": {"kind": "openai", "base_url": "http://a.invalid/v1"},
            "b": {"kind": "openai", "base_url": "http://b.invalid/v1", "max_connections": 7},
        },
        "routes": {
            "r": {
                "targets": [{"provider": "a", "model": "ma"}, {"provider": "b", "model": "mb"}],
                **route,
            },
            "solo": {"targets": [{"provider": "b", "model": "mb"}]},
        },
    }


def one_target(**health: Any) -> dict[str, Any]:
    """Route ``r`` served by provider ``a`` alone, with the given health settings."""
    return {
        "providers": {"a": {"kind": "openai", "base_url": "http://a.invalid/v1", "health": health}},
        "routes": {"r": {"targets": [{"provider": "a", "model": "ma"}]}},
    }


@attrs.frozen(kw_only=True)
class Server:
    baton: Baton
    port: int
    metrics: MetricsEndpoint
    providers: Mapping[str, FakeProvider]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@asynccontextmanager
async def running(
    config: Mapping[str, Any], providers: Mapping[str, FakeProvider], **serve: Any
) -> AsyncIterator[Server]:
    """Run Baton over ``providers`` and serve its HTTP API on a free port until the body ends."""
    metrics = MetricsEndpoint()
    async with (
        open_baton(
            config_from_dict(config), providers, meter_provider=metrics.meter_provider
        ) as baton,
        trio.open_nursery() as nursery,
    ):
        port = await nursery.start(
            lambda task_status: serve_http(baton, metrics=metrics, task_status=task_status, **serve)
        )
        yield Server(baton=baton, port=port, metrics=metrics, providers=providers)
        nursery.cancel_scope.cancel()
    metrics.close()


# Every client speaks plain HTTP; building one SSL context once saves ~50 ms per client.
_TLS = ssl.create_default_context()


def client_for_tests() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=10, verify=_TLS)


def healthy_pair(**a: Any) -> dict[str, FakeProvider]:
    return {"a": FakeProvider("a", **a), "b": FakeProvider("b")}


def sse_events(text: str) -> list[str]:
    """The ``data`` of each SSE event in ``text``; every event must be one ``data:`` line,
    after an ``id: <seq>`` line or not (``sse_ids``)."""
    return [data for _, data in sse_ids(text)]


def sse_ids(text: str) -> list[tuple[int | None, str]]:
    """Each SSE event's ``id`` (None without one) and ``data``, in order."""
    assert text.endswith("\n\n"), text[-200:]
    events: list[tuple[int | None, str]] = []
    for block in text[:-2].split("\n\n"):
        seq: int | None = None
        if block.startswith("id: "):
            line, _, block = block.partition("\n")
            seq = int(line[len("id: ") :])
        assert block.startswith("data: ") and "\n" not in block, block
        events.append((seq, block[len("data: ") :]))
    return events


ANY_PARAM = "<any>"


def assert_error(
    response: httpx.Response, status: int, code: str, param: str | None = ANY_PARAM
) -> dict[str, Any]:
    """Check an OpenAI-shaped error answer and return its ``error`` object."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"]
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == (
        "server_error"
        if status >= 500
        else "rate_limit_error"
        if status == 429
        else "invalid_request_error"
    )
    if param != ANY_PARAM:
        assert error["param"] == param
    return error


async def chat(server: Server, body: Any, *, path: str = "/v1/chat/completions") -> httpx.Response:
    async with client_for_tests() as client:
        content = body if isinstance(body, bytes) else orjson.dumps(body)
        return await client.post(
            server.url + path, content=content, headers={"content-type": "application/json"}
        )


async def get(server: Server, path: str) -> httpx.Response:
    async with client_for_tests() as client:
        return await client.get(server.url + path)


# --- streaming -----------------------------------------------------------------------------------


async def test_stream_is_openais_exact_chunk_format() -> None:
    async with running(two_targets(), healthy_pair()) as server:
        response = await chat(server, {"model": "r", "messages": PROMPT, "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["x-baton-stream"] == response.headers["x-request-id"]
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    # Each event names the seq of the stream event it encodes (0 is ``started``, which
    # encodes nothing): the role chunk goes with the first text, the finish with [DONE].
    ids = [seq for seq, _ in sse_ids(response.text)]
    texts = len(events) - 3
    assert ids == [None, *range(1, texts + 1), None, texts + 1]
    chunks = [orjson.loads(e) for e in events[:-1]]
    first = chunks[0]
    assert first["id"] == "chatcmpl-" + response.headers["x-request-id"]
    assert isinstance(first["created"], int)

    def chunk(delta: dict[str, Any], finish: str | None) -> str:
        return orjson.dumps({
            "id": first["id"], "object": "chat.completion.chunk", "created": first["created"],
            "model": "ma", "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }).decode()  # fmt: skip

    # Byte for byte: compact JSON with OpenAI's key order.
    assert events[0] == chunk({"role": "assistant", "content": ""}, None)
    for event, parsed in zip(events[1:-2], chunks[1:-1], strict=True):
        assert event == chunk({"content": parsed["choices"][0]["delta"]["content"]}, None)
    assert events[-2] == chunk({}, "stop")
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == ANSWER
    assert all("usage" not in c for c in chunks)


async def test_a_chunked_request_body_is_read_whole_with_the_merging_reader() -> None:
    """The faster chunked reader is process-wide, so the server reads request bodies with it."""
    assert install_merging_chunked_reader()
    body = orjson.dumps({"model": "r", "messages": PROMPT, "stream": False})

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 7):
            yield body[start : start + 7]

    async with running(two_targets(), healthy_pair()) as server, client_for_tests() as client:
        response = await client.post(
            server.url + "/v1/chat/completions",
            content=pieces(),
            headers={"content-type": "application/json"},
        )
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == ANSWER


async def test_stream_with_include_usage_ends_with_a_usage_chunk() -> None:
    async with running(two_targets(), healthy_pair()) as server:
        body = {
            "model": "r",
            "messages": PROMPT,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        response = await chat(server, body)
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    *content, last = chunks
    assert all(c["usage"] is None and len(c["choices"]) == 1 for c in content)
    assert content[-1]["choices"][0]["finish_reason"] == "stop"
    assert last["choices"] == []
    assert last["model"] == "ma"
    record = server.providers["a"].log[0]
    expected = len(record.tokens_sent)
    assert last["usage"]["completion_tokens"] == expected == len(TOKENS)
    usage = last["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens"] > 0


async def test_stream_failover_changes_the_chunks_model_and_keeps_the_text() -> None:
    async with running(two_targets(), healthy_pair(schedule=breaking_schedule())) as server:
        response = await chat(server, {"model": "r", "messages": PROMPT, "stream": True})
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    texts = [c["choices"][0]["delta"].get("content", "") for c in chunks]
    assert "".join(texts) == ANSWER
    assert [c["model"] for c in chunks] == models_serving(texts)
    # Nothing else betrays the failover.
    assert all(set(c["choices"][0]["delta"]) <= {"role", "content"} for c in chunks)


def models_serving(texts: list[str]) -> list[str]:
    """The model each chunk must name: a's until a's text is out, then b's (finish included)."""
    a_text = len("".join(TOKENS[:BREAK_AT]))
    models, position = [], 0
    for text in texts[:-1]:
        models.append("ma" if position < a_text else "mb")
        position += len(text)
    return [*models, "mb"]


@functools.cache
def diverging_seed() -> int:
    """A seed whose answer starts like seed 0's (three tokens) and then departs from it.

    A provider with it, asked to continue seed 0's first ``BREAK_AT`` tokens, restarts its own
    answer: the splice guard sees a restart that departs from the delivered text.
    """
    for seed in range(1, 100_000):
        tokens = answer_tokens([Message(role="user", content=PROMPT[0]["content"])], seed=seed)
        if tokens[:3] == TOKENS[:3] and tokens[3] != TOKENS[3]:
            return seed
    raise AssertionError("no seed diverges after three tokens")


def breaking_schedule() -> FaultSchedule:
    """The first request resets after ``BREAK_AT`` tokens; later ones succeed."""
    return FaultSchedule.first(1, Behaviour("reset", at_token=BREAK_AT))


def breaking_a() -> FakeProvider:
    return FakeProvider("a", breaking_schedule())


async def test_a_failover_before_any_text_names_the_new_model_from_the_first_chunk() -> None:
    refuse = FaultSchedule.always(Behaviour("refuse"))
    async with running(
        two_targets(), {"a": FakeProvider("a", refuse), "b": FakeProvider("b")}
    ) as server:
        response = await chat(server, {"model": "r", "messages": PROMPT, "stream": True})
    chunks = [orjson.loads(e) for e in sse_events(response.text)[:-1]]
    assert {c["model"] for c in chunks} == {"mb"}
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == ANSWER


@pytest.mark.parametrize(
    ("config", "providers", "code"),
    [
        # One target that breaks after text and then refuses: it cannot continue its own
        # answer either, so nothing is left to continue with.
        (
            one_target(),
            lambda: {
                "a": FakeProvider(
                    "a", attrs.evolve(breaking_schedule(), default=Behaviour("refuse"))
                )
            },
            "all_providers_unavailable",
        ),
        # b restarts with another answer: the continuation cannot be joined.
        (
            two_targets(),
            lambda: {"a": breaking_a(), "b": FakeProvider("b", seed=diverging_seed())},
            "stream_diverged",
        ),
    ],
    ids=["exhausted", "diverged"],
)
async def test_stream_broken_after_text_ends_with_an_error_event_and_no_done(
    config: Any, providers: Any, code: str
) -> None:
    async with running(config, providers()) as server:
        response = await chat(server, {"model": "r", "messages": PROMPT, "stream": True})
    assert response.status_code == 200
    events = sse_events(response.text)
    assert "[DONE]" not in events
    *chunks, last = [orjson.loads(e) for e in events]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "".join(
        TOKENS[:BREAK_AT]
    )
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)
    assert list(last) == ["error"]
    assert last["error"]["code"] == code
    assert last["error"]["message"]


# --- errors before any text: plain statuses ------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
async def test_all_providers_refusing_is_a_503(stream: bool) -> None:
    refuse = FaultSchedule.always(Behaviour("refuse"))
    providers = {"a": FakeProvider("a", refuse), "b": FakeProvider("b", refuse)}
    async with running(two_targets(), providers) as server:
        response = await chat(server, {"model": "r", "messages": PROMPT, "stream": stream})
    error = assert_error(response, 503, "all_providers_unavailable", None)
    assert "a (ma)" in error["message"] and "b (mb)" in error["message"]
    assert response.headers["x-should-retry"] == "true"


@pytest.mark.parametrize("stream", [True, False])
async def test_upstream_rejection_keeps_the_providers_status_and_code(stream: bool) -> None:
    reject = FaultSchedule.always(
        Behaviour("status", status=422, code="unprocessable_thing", message="No.")
    )
    async with running(
        two_targets(), {"a": FakeProvider("a", reject), "b": FakeProvider("b")}
    ) as server:
        response = await chat(server, {"model": "r", "messages": PROMPT, "stream": stream})
        error = assert_error(response, 422, "unprocessable_thing", None)
        assert "No." in error["message"]
        assert response.headers["x-should-retry"] == "false"
        assert server.providers["b"].log == []  # a client error is not failed over


async def test_baton_over_capacity_is_a_429(monkeypatch: pytest.MonkeyPatch) -> None:
    async with running(two_targets(), healthy_pair()) as server:

        def full(**_: Any) -> Any:
            raise RequestError("overloaded", "Baton is at capacity; retry shortly.", status=429)

        monkeypatch.setattr(server.baton, "start_stream", full)
        for stream in (True, False):
            response = await chat(server, {"model": "r", "messages": PROMPT, "stream": stream})
            assert_error(response, 429, "overloaded", None)


async def test_unknown_model_is_a_404_model_not_found() -> None:
    async with running(two_targets(), healthy_pair()) as server:
        for stream in (True, False):
            response = await chat(
                server, {"model": "gpt-nope", "messages": PROMPT, "stream": stream}
            )
            error = assert_error(response, 404, "model_not_found", "model")
            assert "gpt-nope" in error["message"]


# --- request validation --------------------------------------------------------------------------

GOOD = {"model": "r", "messages": PROMPT}
BAD_BODIES = [
    (b"{not json", "invalid_json", None),
    (b"[" * 5000 + b"]" * 5000, "invalid_json", None),
    (b"", "invalid_json", None),
    (b"[1, 2]", "invalid_type", None),
    (b'"a string"', "invalid_type", None),
    ({"messages": PROMPT}, "missing_required_parameter", "model"),
    ({"model": 3, "messages": PROMPT}, "invalid_type", "model"),
    ({"model": "", "messages": PROMPT}, "invalid_type", "model"),
    ({"model": "r"}, "missing_required_parameter", "messages"),
    ({"model": "r", "messages": []}, "invalid_value", "messages"),
    ({"model": "r", "messages": "hi"}, "invalid_type", "messages"),
    ({"model": "r", "messages": ["hi"]}, "invalid_value", "messages"),
    (
        {"model": "r", "messages": [{"role": "wizard", "content": "hi"}]},
        "invalid_value",
        "messages",
    ),
    ({"model": "r", "messages": [{"role": "tool", "content": "hi"}]}, "invalid_value", "messages"),
    ({"model": "r", "messages": [{"role": "user", "content": 5}]}, "invalid_value", "messages"),
    (
        {
            "model": "r",
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
        },
        "invalid_value",
        "messages",
    ),
    ({**GOOD, "stream": "yes"}, "invalid_type", "stream"),
    ({**GOOD, "temperature": 5}, "invalid_value", "temperature"),
    ({**GOOD, "temperature": "hot"}, "invalid_value", "temperature"),
    ({**GOOD, "max_tokens": 0}, "invalid_value", "max_tokens"),
    ({**GOOD, "max_completion_tokens": 1.5}, "invalid_value", "max_completion_tokens"),
    ({**GOOD, "stop": ["a", "b", "c", "d", "e"]}, "invalid_value", "stop"),
    ({**GOOD, "top_p": True}, "invalid_value", "top_p"),
    # Fields that go upstream are checked by actors.parse_params; the error names the field.
    ({**GOOD, "tools": [{"type": "function", "function": {}}]}, "invalid_value", "tools"),
    ({**GOOD, "tools": "f"}, "invalid_value", "tools"),
    ({**GOOD, "tool_choice": "sometimes"}, "invalid_value", "tool_choice"),
    (
        {**GOOD, "tool_choice": {"type": "function", "function": {"name": "g"}}},
        "invalid_value",
        "tool_choice",
    ),
    ({**GOOD, "tool_choice": "required"}, "invalid_value", "tool_choice"),
    ({**GOOD, "logprobs": "yes"}, "invalid_value", "logprobs"),
    ({**GOOD, "top_logprobs": 3}, "invalid_value", "top_logprobs"),
    ({**GOOD, "response_format": {"type": "xml"}}, "invalid_value", "response_format"),
    ({**GOOD, "reasoning_effort": "max"}, "invalid_value", "reasoning_effort"),
    # OpenAI's deprecated function calling is refused with what to send instead.
    ({**GOOD, "functions": [{"name": "f"}]}, "unsupported_parameter", "functions"),
    ({**GOOD, "function_call": "auto"}, "unsupported_parameter", "function_call"),
    ({**GOOD, "n": 2}, "unsupported_value", "n"),
    ({**GOOD, "n": "1"}, "invalid_type", "n"),
    ({**GOOD, "stream_options": "yes"}, "invalid_type", "stream_options"),
    (
        {**GOOD, "stream": True, "stream_options": {"include_usage": "y"}},
        "invalid_type",
        "stream_options.include_usage",
    ),
    # Unknown fields are forwarded, but only names a real API could have.
    ({**GOOD, "temp rature": 0.5}, "unknown_parameter", "temp rature"),
    ({**GOOD, "x" * 65: 1}, "unknown_parameter", None),
]


@pytest.mark.parametrize(
    ("body", "code", "param"),
    BAD_BODIES,
    ids=[f"{c}-{i}" for i, (_, c, _) in enumerate(BAD_BODIES)],
)
async def test_bad_requests_get_a_400_naming_what_is_wrong(
    body: Any, code: str, param: str | None
) -> None:
    async with running(two_targets(), healthy_pair()) as server:
        response = await chat(server, body)
        assert_error(response, 400, code, param)
        assert server.providers["a"].log == []


async def test_every_field_but_baton_s_own_goes_upstream_as_it_is() -> None:
    # Standard fields Baton does not use and fields it does not know (a typo too: the
    # provider, not Baton, judges them) are forwarded; explicit nulls are absent, as in OpenAI.
    body = {
        **GOOD, "max_tokens": 5, "temperature": 0.3, "top_p": 0.9, "stop": "\n\n", "seed": 4,
        "presence_penalty": 0.5, "frequency_penalty": -0.5, "max_completion_tokens": None,
        "n": 1, "user": "u-1", "metadata": {"k": "v"}, "store": False, "logprobs": False,
        "tools": [], "tool_choice": "none", "response_format": {"type": "text"},
        "stream_options": {"include_usage": True}, "parallel_tool_calls": False,
        "modalities": ["text"], "temprature": 0.5, "prompt_cache_retention": "24h",
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": "Hi", "name": "ann"},
        ],
    }  # fmt: skip
    async with running(two_targets(), healthy_pair()) as server:
        response = await chat(server, body)
        assert response.status_code == 200, response.text
        request = server.providers["a"].log[0].request
    assert dict(request.params) == {
        "max_tokens": 5, "temperature": 0.3, "top_p": 0.9, "stop": ["\n\n"], "seed": 4,
        "presence_penalty": 0.5, "frequency_penalty": -0.5, "user": "u-1",
        "metadata": {"k": "v"}, "store": False, "logprobs": False, "tools": [],
        "tool_choice": "none", "response_format": {"type": "text"},
        "parallel_tool_calls": False, "modalities": ["text"], "temprature": 0.5,
        "prompt_cache_retention": "24h",
    }  # fmt: skip
    assert "x-baton-dropped-fields" not in response.headers  # an OpenAI-kind target
    assert request.messages == (
        Message(role="system", content="Be brief."),
        Message(role="user", content="Hi", name="ann"),
    )
    answer = response.json()["choices"][0]
    assert answer["finish_reason"] == "length"
    assert answer["message"]["content"] == "".join(answer_tokens(request.messages)[:5])


async def test_completion_is_openais_chat_completion_object() -> None:
    async with running(two_targets(), healthy_pair()) as server:
        response = await chat(server, GOOD, path="/chat/completions")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body == {
        "id": "chatcmpl-" + response.headers["x-request-id"],
        "object": "chat.completion",
        "created": body["created"],
        "model": "ma",
        "choices": [{
            "index": 0, "message": {"role": "assistant", "content": ANSWER, "refusal": None},
            "logprobs": None, "finish_reason": "stop",
        }],
        "usage": {"prompt_tokens": body["usage"]["prompt_tokens"], "completion_tokens": len(TOKENS),
                  "total_tokens": body["usage"]["prompt_tokens"] + len(TOKENS)},
        "system_fingerprint": None,
    }  # fmt: skip
    assert isinstance(body["created"], int) and body["usage"]["prompt_tokens"] > 0


async def test_bodies_over_the_limit_are_a_413_with_or_without_content_length() -> None:
    async with running(two_targets(), healthy_pair(), max_request_bytes=2000) as server:
        padded = {"model": "r", "messages": [{"role": "user", "content": "x" * 3000}]}
        assert_error(await chat(server, padded), 413, "request_too_large")

        async def chunked() -> AsyncIterator[bytes]:
            yield b'{"model": "r", "messages": [{"role": "user", "content": "'
            for _ in range(3):
                yield b"y" * 900
            yield b'"}]}'

        async with client_for_tests() as client:
            response = await client.post(
                server.url + "/v1/chat/completions",
                content=chunked(),
                headers={"content-type": "application/json"},
            )
        assert "content-length" not in response.request.headers
        assert_error(response, 413, "request_too_large")
        # Just under the limit is fine.
        small = {"model": "r", "messages": [{"role": "user", "content": "x" * 1900}]}
        assert (await chat(server, small)).status_code == 200
        assert len(server.providers["a"].log) == 1


async def test_unknown_paths_and_wrong_methods() -> None:
    async with running(two_targets(), healthy_pair()) as server:
        assert_error(await get(server, "/v1/completions"), 404, "not_found")
        assert_error(await get(server, "/index.htm"), 404, "not_found")
        assert_error(await get(server, "/client/../transport/_http.py"), 404, "not_found")
        assert_error(await get(server, "/sim/faults"), 404, "not_found")  # no injector
        response = await get(server, "/v1/chat/completions")
        assert_error(response, 405, "method_not_allowed")
        assert response.headers["allow"] == "POST"
        assert_error(await chat(server, GOOD, path="/healthz"), 405, "method_not_allowed")
        assert_error(await chat(server, GOOD, path="/v1/models"), 405, "method_not_allowed")


async def test_garbage_and_bad_requests_do_not_disturb_a_running_stream() -> None:
    slow = FaultSchedule.always(Behaviour("drip", token_delay=0.01))
    async with running(two_targets(), healthy_pair(schedule=slow)) as server:
        results: dict[str, Any] = {}

        async def good_stream() -> None:
            results["stream"] = await chat(server, {**GOOD, "stream": True})

        async def garbage() -> None:
            for junk in (
                b"\x00\xff GARBAGE\r\n\r\n",
                b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 99\r\n\r\n{",
            ):
                stream = await trio.open_tcp_stream("127.0.0.1", server.port)
                await stream.send_all(junk)
                await stream.aclose()
            for body, _, _ in BAD_BODIES:
                response = await chat(server, body)
                assert response.status_code == 400

        async with trio.open_nursery() as nursery:
            nursery.start_soon(good_stream)
            nursery.start_soon(garbage)
        events = sse_events(results["stream"].text)
        assert events[-1] == "[DONE]"
        text = "".join(
            orjson.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1]
        )
        assert text == ANSWER
        assert (await get(server, "/healthz")).status_code == 200


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    """Poll ``predicate`` (real time: the server runs on real sockets) until it holds."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


@pytest.mark.parametrize("stream", [True, False])
async def test_client_disconnect_cancels_the_stream(stream: bool) -> None:
    """A whole answer's client leaving cancels it; a streamed one's too with resume_window 0
    (with a window it is kept for a resume: ``test_sse_resume``)."""
    slow = FaultSchedule.always(Behaviour("drip", token_delay=0.02))
    config = {**two_targets(), "server": {"resume_window": 0}} if stream else two_targets()
    async with running(config, healthy_pair(schedule=slow)) as server:
        a = server.providers["a"]
        async with client_for_tests() as client:
            request = client.build_request(
                "POST", server.url + "/v1/chat/completions", json={**GOOD, "stream": stream}
            )
            response = await client.send(request, stream=True) if stream else None
            if response is not None:
                async for _ in response.aiter_bytes():
                    break  # one chunk of the answer, then hang up
                await response.aclose()
            else:
                with trio.move_on_after(0.2):
                    await client.send(request)
        await wait_for(lambda: a.log and a.log[0].closed_at is not None)
        assert a.log[0].outcome == "abandoned"
        assert len(a.log[0].tokens_sent) < len(TOKENS)
        await wait_for(lambda: server.baton.statistics().finished)
        assert server.baton.statistics().finished == {"cancelled": 1}
        assert server.baton.statistics().active_streams == 0


# --- models, health, status, metrics --------------------------------------------------------------


async def test_models_lists_the_routes() -> None:
    async with running(two_targets(), healthy_pair()) as server:
        response = await get(server, "/v1/models")
        assert response.json() == {
            "object": "list",
            "data": [
                {"id": "r", "object": "model", "created": 0, "owned_by": "baton"},
                {"id": "solo", "object": "model", "created": 0, "owned_by": "baton"},
            ],
        }
        assert (await get(server, "/v1/models/solo")).json()["id"] == "solo"
        assert_error(await get(server, "/v1/models/nope"), 404, "model_not_found", "model")


async def test_healthz_and_readyz_follow_the_providers_health() -> None:
    refuse = FaultSchedule.always(Behaviour("refuse"))
    async with running(one_target(failure_threshold=2), {"a": FakeProvider("a", refuse)}) as server:
        assert (await get(server, "/healthz")).json() == {"status": "ok"}
        ready = await get(server, "/readyz")
        assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
        for _ in range(2):
            assert_error(await chat(server, GOOD), 503, "all_providers_unavailable")
        await wait_for(lambda: not server.baton.ready()[0])
        ready = await get(server, "/readyz")
        assert ready.status_code == 503
        assert ready.json()["status"] == "not_ready"
        assert "'r'" in ready.json()["reason"] and "a unhealthy" in ready.json()["reason"]
        assert (await get(server, "/healthz")).status_code == 200


async def test_status_reports_health_pools_routes_and_streams() -> None:
    refuse = FakeProvider("a", FaultSchedule.always(Behaviour("refuse")))
    slow = FakeProvider("b", FaultSchedule.always(Behaviour("drip", token_delay=0.02)))
    async with (
        running(two_targets(), {"a": refuse, "b": slow}) as server,
        client_for_tests() as client,
    ):
        request = client.build_request(
            "POST", server.url + "/v1/chat/completions", json={**GOOD, "stream": True}
        )
        response = await client.send(request, stream=True)
        async for _ in response.aiter_bytes():
            break
        status = (await client.get(server.url + "/status")).json()
        await response.aclose()
    assert status["active_streams"] == 1
    load = status["load"]  # real time here: values depend on the machine, not on the test
    assert set(load) == {"event_loop_lag", "read_delay"}
    assert all(isinstance(v, float) and 0 <= v < 1 for v in load.values())
    a, b = status["providers"]["a"], status["providers"]["b"]
    assert a["kind"] == "openai" and a["consecutive_failures"] == 1 and a["state"] == "healthy"
    assert a["pool"] == {
        "in_use": 0,
        "waiting": 0,
        "max": 10,
        "total_acquired": 1,
        "total_timeouts": 0,
    }
    assert b["pool"]["in_use"] == 1 and b["pool"]["max"] == 7 and b["pool"]["waiting"] == 0
    assert b["state"] == "healthy" and b["consecutive_failures"] == 0 and b["next_try_in"] is None
    assert set(a) == {
        "kind",
        "state",
        "usable",
        "traffic",
        "consecutive_failures",
        "next_try_in",
        "state_for",
        "ttft_ewma",
        "probe",
        "last_probe",
        "pool",
    }
    assert (a["usable"], a["traffic"], a["probe"], a["last_probe"]) == (True, "all", "models", None)
    assert status["routes"] == {
        "r": {
            "targets": [
                {"provider": "a", "model": "ma", "weight": 1},
                {"provider": "b", "model": "mb", "weight": 1},
            ]
        },
        "solo": {"targets": [{"provider": "b", "model": "mb", "weight": 1}]},
    }
    assert status["ready"] is True


async def test_status_shows_when_an_unhealthy_provider_is_tried_next() -> None:
    refuse = FaultSchedule.always(Behaviour("refuse"))
    async with running(
        one_target(failure_threshold=1, cooldown=30.0), {"a": FakeProvider("a", refuse)}
    ) as server:
        await chat(server, GOOD)
        await wait_for(lambda: not server.baton.ready()[0])
        a = (await get(server, "/status")).json()["providers"]["a"]
    assert a["state"] == "unhealthy" and a["usable"] is False and a["consecutive_failures"] == 1
    assert 25.0 < a["next_try_in"] <= 30.0


async def test_metrics_expose_baton_names_after_traffic_with_a_failover() -> None:
    reset = FaultSchedule.first(1, Behaviour("reset", at_token=3))
    async with running(two_targets(), healthy_pair(schedule=reset)) as server:
        assert (await chat(server, {**GOOD, "stream": True})).status_code == 200
        assert (await chat(server, {**GOOD, "model": "solo"})).status_code == 200
        await wait_for(lambda: sum(server.baton.statistics().finished.values()) == 2)
        response = await get(server, "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    lines = set(response.text.splitlines())
    for line in (
        'proxy_requests_total{model="mb",outcome="done",provider="b",route="r"} 1.0',
        'proxy_requests_total{model="mb",outcome="done",provider="b",route="solo"} 1.0',
        'proxy_failovers_total{from="a",phase="midstream",reason="reset",route="r",to="b"} 1.0',
        'proxy_request_duration_seconds_count{model="mb",provider="b",route="r"} 1.0',
        'proxy_time_to_first_token_seconds_count{model="ma",provider="a",route="r"} 1.0',
        'proxy_time_to_first_token_seconds_count{model="mb",provider="b",route="solo"} 1.0',
        'proxy_provider_healthy{provider="a"} 1.0',
        'proxy_provider_healthy{provider="b"} 1.0',
        'proxy_pool_in_use{provider="a"} 0.0',
        'proxy_pool_wait_seconds_count{provider="a"} 1.0',
        'proxy_pool_wait_seconds_count{provider="b"} 2.0',
        'proxy_active_streams{transport="http"} 0.0',
        "# TYPE proxy_requests_total counter",
        "# TYPE proxy_request_duration_seconds histogram",
        "# TYPE proxy_time_to_first_token_seconds histogram",
        "# TYPE proxy_failovers_total counter",
        "# TYPE proxy_provider_healthy gauge",
        "# TYPE proxy_pool_in_use gauge",
        "# TYPE proxy_pool_wait_seconds histogram",
        "# TYPE proxy_active_streams gauge",
        "# TYPE proxy_event_loop_lag_seconds gauge",
        "# TYPE proxy_read_delay_seconds gauge",
    ):
        assert line in lines, line
    assert "otel_scope" not in response.text and "target_info" not in response.text


async def test_metrics_404_without_an_endpoint() -> None:
    async with (
        open_baton(config_from_dict(two_targets()), healthy_pair()) as baton,
        trio.open_nursery() as nursery,
    ):
        port = await nursery.start(lambda task_status: serve_http(baton, task_status=task_status))
        async with client_for_tests() as client:
            response = await client.get(f"http://127.0.0.1:{port}/metrics")
        nursery.cancel_scope.cancel()
    assert_error(response, 404, "not_found")


async def test_two_servers_on_one_process_keep_their_metrics_apart() -> None:
    async with (
        running(two_targets(), healthy_pair()) as first,
        running(two_targets(), healthy_pair()) as second,
    ):
        await chat(first, GOOD)
        await wait_for(lambda: first.baton.statistics().finished)
        text = (await get(second, "/metrics")).text
    assert "proxy_requests_total{" not in text


# --- the codec's pure parts ----------------------------------------------------------------------


def test_chunk_encoder_switches_model_and_encodes_text_as_json() -> None:
    encoder = ChunkEncoder(completion_id="chatcmpl-x", created=7, model="m1", include_usage=True)
    text = 'quote " backslash \\ newline \n emoji 🚀 nul \x00'
    first = orjson.loads(encoder.delta(text)[len(b"data: ") :])
    assert (
        first["choices"][0]["delta"] == {"content": text}
        and first["model"] == "m1"
        and first["usage"] is None
    )
    encoder.set_model("m2")
    assert orjson.loads(encoder.finish("length")[6:])["model"] == "m2"
    usage = orjson.loads(encoder.usage(Usage(prompt_tokens=2, completion_tokens=3))[6:])
    assert usage["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    assert usage["choices"] == [] and usage["model"] == "m2"


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("all_providers_unavailable", None, 503),
        ("overloaded", None, 429),
        ("upstream_rejected", 404, 404),
        ("upstream_rejected", None, 502),
        ("internal_error", None, 500),
        ("stream_diverged", None, 502),
    ],
)
def test_stream_error_statuses(code: str, status: int | None, expected: int) -> None:
    error = StreamError(stream="s", seq=1, code=code, message="m", retryable=True, status=status)
    assert stream_error_status(error) == expected


async def test_a_failure_inside_baton_is_a_500_or_an_error_event_and_the_server_lives_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_delta = ChunkEncoder.delta
    calls = 0

    def flaky_delta(self: ChunkEncoder, text: str, logprobs: Any = None) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("a bug while encoding")
        return real_delta(self, text, logprobs)

    def broken_parse(body: bytes) -> Any:
        raise RuntimeError("a bug while parsing")

    slow = FaultSchedule.always(Behaviour("drip", token_delay=0.01))
    async with running(two_targets(), healthy_pair(schedule=slow)) as server:
        with monkeypatch.context() as patch:
            patch.setattr(ChunkEncoder, "delta", flaky_delta)
            response = await chat(server, {**GOOD, "stream": True})
        events = sse_events(response.text)
        assert "[DONE]" not in events
        assert orjson.loads(events[-1])["error"]["code"] == "internal_error"
        a = server.providers["a"]
        await wait_for(lambda: a.log[0].closed_at is not None)
        assert a.log[0].outcome == "abandoned"  # the stream was cancelled, not left running

        with monkeypatch.context() as patch:
            patch.setattr(http_module, "parse_chat_request", broken_parse)
            assert_error(await chat(server, GOOD), 500, "internal_error")

        response = await chat(server, GOOD)
        assert response.json()["choices"][0]["message"]["content"] == ANSWER


async def test_serve_http_returns_after_its_shutdown_trigger() -> None:
    stop = trio.Event()
    async with open_baton(config_from_dict(two_targets()), healthy_pair()) as baton:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                port = await nursery.start(
                    lambda task_status: serve_http(
                        baton, shutdown_trigger=stop.wait, task_status=task_status
                    )
                )
                async with client_for_tests() as client:
                    assert (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
                stop.set()  # the nursery now ends only if serve_http returns by itself
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", port)


async def test_a_port_in_use_raises_oserror() -> None:
    taken = trio.socket.socket()
    await taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    with taken:
        async with open_baton(config_from_dict(two_targets()), healthy_pair()) as baton:
            with pytest.raises(OSError):
                await serve_http(baton, port=port)
