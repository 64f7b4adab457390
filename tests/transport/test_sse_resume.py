"""Resuming a streamed chat completion over HTTP/SSE after the client's connection drops.

A real server on 127.0.0.1 over ``FakeProvider``s that drip their answer; clients are ``httpx``
(reading raw SSE, as a browser's ``EventSource`` does) and the ``openai`` SDK's chunk objects.
A client holds the events up to the last one with an ``id`` it read whole, and resumes after it.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest
import trio
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionChunk

from actors import (
    ClientEvent,
    Delta,
    Done,
    Failover,
    Reasoning,
    Started,
    ToolCallPart,
    Usage,
    config_from_dict,
    open_baton,
)
from scenarios import Behaviour, FakeProvider, FaultSchedule
from tests.transport.test_http import (
    ANSWER,
    PROMPT,
    TOKENS,
    Server,
    assert_error,
    client_for_tests,
    healthy_pair,
    running,
    sse_ids,
    two_targets,
    wait_for,
)
from transport import serve_http
from transport._sse_resume import ChunkStream

DRIP = FaultSchedule.always(Behaviour("drip", token_delay=0.01))
BODY = {"model": "r", "messages": PROMPT, "stream": True}


def dripping(**server: Any) -> tuple[dict[str, Any], dict[str, FakeProvider]]:
    config = two_targets()
    if server:
        config["server"] = server
    return config, healthy_pair(schedule=DRIP)


async def read_some(
    client: httpx.AsyncClient, server: Server, texts: int
) -> tuple[str, list[tuple[int | None, str]]]:
    """Start a streamed answer, read until ``texts`` chunks with content came whole, hang up.

    Returns the stream id and the events the client holds: those up to the last with an id
    (events after it without one are sent again by a resume).
    """
    request = client.build_request("POST", server.url + "/v1/chat/completions", json=BODY)
    response = await client.send(request, stream=True)
    assert response.status_code == 200
    stream_id = response.headers["x-baton-stream"]
    buffer = ""
    async for piece in response.aiter_text():
        buffer += piece
        whole = buffer[: buffer.rfind("\n\n") + 2]
        if whole and sum('"content":"' in data for _, data in sse_ids(whole)) >= texts:
            break
    await response.aclose()
    events = sse_ids(buffer[: buffer.rfind("\n\n") + 2])
    last = max(i for i, (seq, _) in enumerate(events) if seq is not None)
    return stream_id, events[: last + 1]


def text_of(events: list[tuple[int | None, str]]) -> str:
    chunks = [ChatCompletionChunk.model_validate_json(d) for _, d in events if d != "[DONE]"]
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


async def resume(
    client: httpx.AsyncClient, server: Server, stream_id: str, *, after: int | None = None,
    last_event_id: int | None = None, key: str | None = None,
) -> httpx.Response:  # fmt: skip
    headers = {} if last_event_id is None else {"last-event-id": str(last_event_id)}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    params = {} if after is None else {"after": str(after)}
    return await client.get(server.url + f"/v1/streams/{stream_id}", headers=headers, params=params)


def assert_continues(
    held: list[tuple[int | None, str]], resumed: httpx.Response, stream_id: str
) -> list[tuple[int | None, str]]:
    """The resumed response goes on from ``held`` with the same chunk identity, gapless."""
    assert resumed.status_code == 200, resumed.text
    assert resumed.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert resumed.headers["x-baton-stream"] == stream_id
    rest = sse_ids(resumed.text)
    assert rest[-1][1] == "[DONE]"
    first = orjson.loads(held[0][1])
    for _, data in rest[:-1]:
        chunk = orjson.loads(data)
        assert (chunk["id"], chunk["created"]) == (first["id"], first["created"])
        assert chunk["id"] == "chatcmpl-" + stream_id
        assert chunk["model"] == "ma"
        assert "role" not in chunk["choices"][0]["delta"]  # the role chunk was sent once
    ids = [seq for seq, _ in held + rest if seq is not None]
    assert ids == list(range(ids[0], ids[0] + len(ids))), ids  # no seq lost or repeated
    return rest


# --- resuming ------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["last-event-id", "after"])
async def test_a_dropped_client_resumes_and_holds_the_whole_answer_once(how: str) -> None:
    config, providers = dripping()
    async with running(config, providers) as server, client_for_tests() as client:
        stream_id, held = await read_some(client, server, texts=3)
        last = held[-1][0]
        assert last is not None
        assert text_of(held) and len(text_of(held)) < len(ANSWER)
        await wait_for(lambda: server.baton.statistics().detached_streams == 1)
        status = (await client.get(server.url + "/status")).json()
        assert status["detached_streams"] == 1
        if how == "after":
            resumed = await resume(client, server, stream_id, after=last)
        else:  # the header wins over a stale ?after= in the URL, as EventSource sends it
            resumed = await resume(client, server, stream_id, after=0, last_event_id=last)
        rest = assert_continues(held, resumed, stream_id)
        assert text_of(held) + text_of(rest) == ANSWER
        assert server.baton.statistics().detached_streams == 0
        # The upstream answer ran on; it was never cancelled nor asked twice.
        assert [entry.outcome for entry in server.providers["a"].log] == ["finished"]
        assert len(server.providers["a"].log[0].tokens_sent) == len(TOKENS)
        assert server.providers["b"].log == []


async def test_resuming_again_after_a_second_drop() -> None:
    config, providers = dripping()
    async with running(config, providers) as server, client_for_tests() as client:
        stream_id, held = await read_some(client, server, texts=2)
        await wait_for(lambda: server.baton.statistics().detached_streams == 1)
        url = server.url + f"/v1/streams/{stream_id}"
        request = client.build_request("GET", url, headers={"last-event-id": str(held[-1][0])})
        response = await client.send(request, stream=True)
        buffer = ""
        async for piece in response.aiter_text():
            buffer += piece
            if buffer.count('"content":"') >= 2 and buffer.endswith("\n\n"):
                break
        await response.aclose()
        second = sse_ids(buffer)
        held += second[: max(i for i, (s, _) in enumerate(second) if s is not None) + 1]
        await wait_for(lambda: server.baton.statistics().detached_streams == 1)
        resumed = await resume(client, server, stream_id, last_event_id=held[-1][0])
        rest = assert_continues(held, resumed, stream_id)
        assert text_of(held) + text_of(rest) == ANSWER


async def test_the_openai_sdk_reads_ids_and_a_resumed_stream_parses_as_its_chunks() -> None:
    config, providers = dripping()
    async with running(config, providers) as server, client_for_tests() as client:
        sdk = AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", http_client=client)
        raw = await sdk.chat.completions.with_raw_response.create(
            model="r", messages=PROMPT, stream=True
        )
        stream_id = raw.headers["x-baton-stream"]
        text = ""
        async for chunk in raw.parse():
            text += chunk.choices[0].delta.content or ""
        assert text == ANSWER
        # Read to the end: nothing is kept for a resume.
        assert_error(await resume(client, server, stream_id, after=1), 404, "unknown_stream")


async def test_a_stream_that_ended_while_detached_gives_its_end_and_nothing_after_it() -> None:
    config, providers = dripping()
    async with running(config, providers) as server, client_for_tests() as client:
        first, held = await read_some(client, server, texts=1)
        second, _ = await read_some(client, server, texts=1)
        await wait_for(lambda: server.baton.statistics().finished.get("done") == 2)
        assert server.baton.statistics().detached_streams == 2
        resumed = await resume(client, server, first, last_event_id=held[-1][0])
        rest = assert_continues(held, resumed, first)
        assert text_of(held) + text_of(rest) == ANSWER
        # An 'after' beyond the stream's events is refused, naming its last seq.
        beyond = await resume(client, server, second, after=10**6)
        message = assert_error(beyond, 400, "invalid_value", "after")["message"]
        terminal = int(message.split("up to seq ")[1].split()[0])
        # After the terminal event there is nothing left: 204, which stops an EventSource.
        empty = await resume(client, server, second, last_event_id=terminal)
        assert empty.status_code == 204 and empty.content == b""
        assert "content-length" not in empty.headers
        # A client that has read the end holds everything: nothing is kept.
        assert server.baton.statistics().detached_streams == 0
        for stream_id in (first, second):
            gone = await resume(client, server, stream_id, after=1)
            assert_error(gone, 404, "unknown_stream")


# --- refusals ------------------------------------------------------------------------------------


async def test_unknown_bad_and_dropped_resumes_are_refused() -> None:
    config, providers = dripping(event_log_cap=4)
    async with running(config, providers) as server, client_for_tests() as client:
        unknown = await resume(client, server, "st_" + "A" * 22, after=3)
        assert_error(unknown, 404, "unknown_stream")
        stream_id, held = await read_some(client, server, texts=8)
        for bad in ("x", "-2", "1.5"):
            response = await resume(client, server, stream_id, last_event_id=bad)  # type: ignore[arg-type]
            assert_error(response, 400, "invalid_value", "after")
        await wait_for(lambda: server.baton.statistics().detached_streams == 1)
        # The log keeps only its last 4 events: a client that holds only seq 1 cannot resume.
        assert held[-1][0] is not None and held[-1][0] > 5
        gone = await resume(client, server, stream_id, after=1)
        assert "oldest seq" in assert_error(gone, 410, "resume_unavailable")["message"]


async def test_only_the_client_that_started_a_stream_may_resume_it() -> None:
    config, providers = dripping()
    config["clients"] = {
        "alice": {"key_sha256": _sha("alice-key")},
        "bob": {"key_sha256": _sha("bob-key")},
    }
    async with running(config, providers) as server:
        headers = {"authorization": "Bearer alice-key"}
        async with httpx.AsyncClient(timeout=10, headers=headers) as alice:
            stream_id, held = await read_some(alice, server, texts=1)
        await wait_for(lambda: server.baton.statistics().detached_streams == 1)
        async with client_for_tests() as client:
            last = held[-1][0]
            other = await resume(client, server, stream_id, after=last, key="bob-key")
            assert_error(other, 404, "unknown_stream")
            nobody = await resume(client, server, stream_id, after=last)
            assert_error(nobody, 401, "invalid_api_key")
            resumed = await resume(client, server, stream_id, after=last, key="alice-key")
            assert text_of(held) + text_of(assert_continues(held, resumed, stream_id)) == ANSWER


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def test_a_stream_that_failed_before_any_text_keeps_nothing_for_a_resume() -> None:
    reject = FaultSchedule.always(Behaviour("status", status=422, code="nope", message="No."))
    providers = {"a": FakeProvider("a", reject), "b": FakeProvider("b")}
    async with running(two_targets(), providers) as server, client_for_tests() as client:
        response = await client.post(server.url + "/v1/chat/completions", json=BODY)
        assert_error(response, 422, "nope", None)
        stream_id = response.headers["x-request-id"]
        await wait_for(lambda: server.baton.statistics().active_streams == 0)
        assert server.baton.statistics().detached_streams == 0
        assert_error(await resume(client, server, stream_id, after=-1), 404, "unknown_stream")


# --- the window ---------------------------------------------------------------------------------


async def test_a_detached_stream_is_cancelled_upstream_when_its_window_ends() -> None:
    slow = FaultSchedule.always(Behaviour("drip", token_delay=0.05))  # ~6 s answer
    config = {**two_targets(), "server": {"resume_window": 0.5}}
    async with running(config, healthy_pair(schedule=slow)) as server:
        async with client_for_tests() as client:
            stream_id, held = await read_some(client, server, texts=1)
        a = server.providers["a"]
        left_at = trio.current_time()
        await wait_for(lambda: a.log[0].closed_at is not None)
        assert trio.current_time() - left_at >= 0.4  # kept for the window first
        assert a.log[0].outcome == "abandoned"
        assert len(a.log[0].tokens_sent) < len(TOKENS)
        await wait_for(lambda: server.baton.statistics().finished)
        assert server.baton.statistics().finished == {"cancelled": 1}
        assert server.baton.statistics().detached_streams == 0
        async with client_for_tests() as client:
            late = await resume(client, server, stream_id, last_event_id=held[-1][0])
            assert_error(late, 404, "unknown_stream")


async def test_a_whole_answer_keeps_nothing_for_a_resume() -> None:
    async with running(two_targets(), healthy_pair()) as server, client_for_tests() as client:
        response = await client.post(
            server.url + "/v1/chat/completions", json={**BODY, "stream": False}
        )
        assert response.status_code == 200
        assert "x-baton-stream" not in response.headers
        stream_id = response.headers["x-request-id"]
        await wait_for(lambda: server.baton.statistics().active_streams == 0)
        assert server.baton.statistics().detached_streams == 0
        assert_error(await resume(client, server, stream_id, after=0), 404, "unknown_stream")


# --- the page and the fault buttons -------------------------------------------------------------


class FakeInjector:
    def __init__(self) -> None:
        self.injected: list[tuple[str, str, float]] = []

    def providers(self) -> list[str]:
        return ["openai-sim", "anthropic-sim"]

    def inject(self, provider: str, fault: str, seconds: float) -> None:
        if provider not in self.providers():
            raise ValueError(f"no provider {provider}")
        self.injected.append((provider, fault, seconds))


@asynccontextmanager
async def serving_with(faults: FakeInjector | None) -> AsyncIterator[str]:
    config = config_from_dict({**two_targets(), "server": {"ws_port": 9123}})
    async with open_baton(config, healthy_pair()) as baton, trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: serve_http(baton, faults=faults, task_status=task_status)
        )
        yield f"http://127.0.0.1:{port}"
        nursery.cancel_scope.cancel()


async def test_the_fault_endpoint_lists_and_injects_with_an_injector() -> None:
    injector = FakeInjector()
    async with serving_with(injector) as url, client_for_tests() as client:
        listed = await client.get(url + "/sim/faults")
        assert listed.status_code == 200
        assert listed.json() == [
            {"provider": "openai-sim", "faults": ["reset", "stall", "status503"]},
            {"provider": "anthropic-sim", "faults": ["reset", "stall", "status503"]},
        ]
        done = await client.post(
            url + "/sim/faults/openai-sim", json={"fault": "status503", "seconds": 20}
        )
        assert done.status_code == 204
        assert injector.injected == [("openai-sim", "status503", 20.0)]
        post = client.post
        target = url + "/sim/faults/openai-sim"
        assert_error(await post(target, json={"fault": "melt"}), 400, "invalid_value", "fault")
        too_long = {"fault": "stall", "seconds": 10**6}
        assert_error(await post(target, json=too_long), 400, "invalid_value", "seconds")
        nobody = await post(url + "/sim/faults/real-openai", json={"fault": "reset"})
        assert_error(nobody, 404, "unknown_provider")
        form = await post(target, content=b"fault=reset")  # no JSON content type
        assert_error(form, 415, "unsupported_media_type")
        assert_error(await client.get(target), 405, "method_not_allowed")
        assert len(injector.injected) == 1


async def test_without_an_injector_the_fault_endpoint_is_404() -> None:
    async with serving_with(None) as url, client_for_tests() as client:
        assert_error(await client.get(url + "/sim/faults"), 404, "not_found")
        post = await client.post(url + "/sim/faults/openai-sim", json={"fault": "reset"})
        assert_error(post, 404, "not_found")


@pytest.mark.parametrize(
    ("path", "content_type", "needle"),
    [
        ("/", "text/html; charset=utf-8", b'content="9123"'),
        ("/index.html", "text/html; charset=utf-8", b"<html"),
        ("/client/baton.js", "text/javascript; charset=utf-8", b"export class Baton"),
        ("/client/page.js", "text/javascript; charset=utf-8", b"/sim/faults"),
        ("/client/page.css", "text/css; charset=utf-8", b"{"),
    ],
)
async def test_the_page_and_its_files_are_served(
    path: str, content_type: str, needle: bytes
) -> None:
    async with serving_with(None) as url, client_for_tests() as client:
        response = await client.get(url + path)
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert int(response.headers["content-length"]) == len(response.content)
    assert needle in response.content
    assert b"{{ws_port}}" not in response.content


# --- the chunks of a resume are the chunks the first reader wrote ---------------------------------


def story() -> list[ClientEvent]:
    """A stream with a reasoning start, a failover that changes the model, two live tool
    calls (the second's fragments numbered by the provider as index 0 again) and an end."""
    s = "st_story"
    usage = Usage(prompt_tokens=3, completion_tokens=9, total_tokens=12)
    return [
        Started(stream=s, seq=0, ref=None, route="r", provider="a", model="ma"),
        Reasoning(stream=s, seq=1, text="Let me think."),
        Delta(stream=s, seq=2, text="Hello"),
        Failover(
            stream=s,
            seq=3,
            from_provider="a",
            to_provider="b",
            to_model="mb",
            reason="reset",
            mode="continue",
            phase="midstream",
        ),
        Delta(stream=s, seq=4, text=", world"),
        ToolCallPart(stream=s, seq=5, index=0, id="call_a", name="sum", arguments='{"a"'),
        ToolCallPart(stream=s, seq=6, index=0, id=None, name=None, arguments=": 1}"),
        ToolCallPart(stream=s, seq=7, index=0, id="call_b", name="mul", arguments="{}"),
        Done(stream=s, seq=8, finish_reason="tool_calls", provider="b", model="mb", usage=usage),
    ]


@pytest.mark.parametrize("include_usage", [False, True])
def test_a_resumed_writer_writes_byte_for_byte_what_the_first_one_wrote(
    include_usage: bool,
) -> None:
    events = story()
    chunks = ChunkStream(
        completion_id="chatcmpl-st_story", created=1700000000, model="r",
        include_usage=include_usage,
    )  # fmt: skip
    first = chunks.writer()
    written = [first.write(event) for event in events]
    assert [ended for _, ended in written] == [False] * 8 + [True]
    whole = b"".join(data for data, _ in written)
    assert whole.count(b'"role":"assistant"') == 1
    assert b'"model":"ma"' in whole and b'"model":"mb"' in whole
    for after in range(-1, len(events)):
        resumed = chunks.writer(after)
        rest = b"".join(resumed.write(event)[0] for event in events[after + 1 :])
        expected = b"".join(data for data, _ in written[after + 1 :])
        assert rest == expected, after
