"""The benchmark's own parts: its SSE reader, its lean HTTP client and its mock provider.

A benchmark whose client miscounts text or whose mock drops tokens would measure nothing, so
these check them against each other over real sockets on 127.0.0.1.
"""

from __future__ import annotations

import functools

import httpx
import pytest
import trio

from scenarios.bench._answers import answer_text, model_name
from scenarios.bench._clients import SSETextReader, http_stream
from scenarios.bench._http import RawHTTPClient
from scenarios.bench._mock import MockServer


def test_sse_reader_counts_the_same_text_however_the_bytes_are_split() -> None:
    body = (
        b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\r\n\r\n'
        b": keep-alive\n\n"
        b'data: {"choices":[{"index":0,"delta":{"content":"Hel"}}]}\n\n'
        b'event: message\ndata: {"choices":[{"index":0,\n'
        b'data: "delta":{"content":"lo \\u00e9"}}]}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\n'
        b"data: [DONE]\n\n"
    )
    for cut in range(1, len(body)):
        reader = SSETextReader()
        reader.feed(body[:cut], 1.0)
        reader.feed(body[cut:], 2.0)
        assert (reader.chars, reader.events, reader.done, reader.error) == (7, 2, True, None), cut


def test_sse_reader_reports_an_error_event() -> None:
    reader = SSETextReader()
    reader.feed(b'data: {"error":{"code":"stream_diverged","message":"no"}}\n\n', 1.0)
    assert reader.error == "error event (stream_diverged)"
    assert not reader.done


async def test_raw_client_and_httpx_read_the_whole_mock_answer_over_one_connection() -> None:
    server = MockServer()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(functools.partial(server.serve, host="127.0.0.1", port=0))
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        expected = len(answer_text(50))
        raw = RawHTTPClient("127.0.0.1", port)
        async with httpx.AsyncClient() as client_httpx:
            for client in (raw, raw, client_httpx, client_httpx):
                for delay in (0.0, 0.001):
                    result = await http_stream(
                        client, url, model_name(50, delay), expected_chars=expected, timeout=10
                    )
                    assert result.error is None
                    assert result.events == 50 and result.ttft is not None
        await raw.aclose()
        # Each client kept its one connection alive for all of its requests.
        assert (server.connections, server.requests) == (2, 8)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("kept", [1, 3])
async def test_raw_client_retries_kept_alive_connections_the_server_closed(kept: int) -> None:
    answers = 0
    hung_up = 0
    all_hung_up = trio.Event()

    async def one_answer_per_connection(stream: trio.SocketStream) -> None:
        nonlocal answers, hung_up
        async with stream:
            await stream.receive_some(65536)
            answers += 1
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            # No "connection: close": the client keeps it, and the server hangs up anyway.
        hung_up += 1
        if hung_up == kept:
            all_hung_up.set()

    async with trio.open_nursery() as nursery:
        serve = functools.partial(trio.serve_tcp, one_answer_per_connection, 0, host="127.0.0.1")
        listeners = await nursery.start(serve)
        client = RawHTTPClient("127.0.0.1", listeners[0].socket.getsockname()[1])
        # ``kept`` requests at once: the client keeps that many connections idle afterwards.
        async with trio.open_nursery() as requests:
            for _ in range(kept):
                requests.start_soon(client.request, "GET", "/")
        with trio.fail_after(5):
            await all_hung_up.wait()  # the server has closed every kept connection
        assert await client.request("GET", "/") == (200, b"ok")
        assert answers == kept + 1
        await client.aclose()
        nursery.cancel_scope.cancel()
