"""Connections a client opens to Baton's servers: timeouts, limits, and how they end.

Every test runs the real servers on 127.0.0.1 and speaks to them over raw sockets (with h11 to
read HTTP responses), so it sees exactly what a client sees: the status, the headers, and
whether and when the server closes the connection. The timeouts are configured small and the
waits are real, each bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import logging
import os
import struct
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import attrs
import h11
import orjson
import pytest
import trio

from actors import Baton, Message, config_from_dict, open_baton
from scenarios import Behaviour, FakeProvider, FaultSchedule, answer_tokens
from transport import (
    ConnectionLimiter,
    ConnectionLimits,
    connection_limits,
    serve_http,
    serve_ws,
)

PROMPT = [{"role": "user", "content": "Tell me about the harbour."}]
ANSWER = "".join(answer_tokens([Message(role="user", content=PROMPT[0]["content"])]))
DRIP = FaultSchedule.always(Behaviour("drip", token_delay=0.02))  # 128 tokens: about 2.5 s
BOUND = 5.0  # seconds any one exchange may take before the test fails
JSON_TYPE = ("content-type", "application/json")


def baton_config(**server: Any) -> dict[str, Any]:
    return {
        "server": server,
        "providers": {"a": {"kind": "openai", "base_url": "http://a.invalid/v1"}},
        "routes": {"r": {"targets": [{"provider": "a", "model": "ma"}]}},
    }


@attrs.frozen(kw_only=True)
class Servers:
    baton: Baton
    http_port: int
    ws_port: int


@asynccontextmanager
async def running(provider: FakeProvider | None = None, **server: Any) -> AsyncIterator[Servers]:
    """Run Baton over one fake provider with both servers on free ports of 127.0.0.1."""
    config = config_from_dict(baton_config(**server))
    providers: Mapping[str, FakeProvider] = {"a": provider or FakeProvider("a")}
    async with open_baton(config, providers) as baton, trio.open_nursery() as nursery:
        http_port = await nursery.start(functools.partial(serve_http, baton))
        ws_port = await nursery.start(functools.partial(serve_ws, baton))
        yield Servers(baton=baton, http_port=http_port, ws_port=ws_port)
        nursery.cancel_scope.cancel()


async def connect(port: int, *, source: str = "127.0.0.1") -> trio.SocketStream:
    """A TCP connection to ``port`` on 127.0.0.1 from the local address ``source``."""
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


def chat_body(*, stream: bool) -> bytes:
    return orjson.dumps({"model": "r", "messages": PROMPT, "stream": stream})


@attrs.define
class HTTPClient:
    """One HTTP/1.1 connection, written raw and read with h11."""

    stream: trio.SocketStream
    h11: h11.Connection = attrs.field(factory=lambda: h11.Connection(h11.CLIENT))

    async def send(self, *events: Any) -> None:
        for event in events:
            data = self.h11.send(event)
            if data:
                await self.stream.send_all(data)

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: tuple[Any, ...] = ()
    ) -> None:
        all_headers = [("host", "baton"), *headers]
        if method == "POST":
            all_headers += [("content-type", "application/json")]
            all_headers += [("content-length", str(len(body)))]
        await self.send(h11.Request(method=method, target=path, headers=all_headers))
        if body:
            await self.send(h11.Data(data=body))
        await self.send(h11.EndOfMessage())

    async def next_event(self) -> Any:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.h11.receive_data(await self.stream.receive_some(65536))

    async def response(self) -> tuple[h11.Response, bytes]:
        """Read one whole response: its head and its body."""
        head = await self.next_event()
        assert isinstance(head, h11.Response), head
        body = b""
        while not isinstance(event := await self.next_event(), h11.EndOfMessage):
            assert isinstance(event, h11.Data), event
            body += event.data
        return head, body

    async def first_data(self) -> tuple[h11.Response, bytes]:
        """The head and the first piece of a streaming response's body."""
        head = await self.next_event()
        assert isinstance(head, h11.Response), head
        event = await self.next_event()
        assert isinstance(event, h11.Data), event
        return head, event.data

    async def rest(self) -> bytes:
        """The rest of a response's body, up to its end."""
        body = b""
        while not isinstance(event := await self.next_event(), h11.EndOfMessage):
            body += event.data
        return body


async def closed_by_server(stream: trio.SocketStream) -> bytes:
    """Read until the server closes the connection; what it sent meanwhile."""
    received = b""
    while data := await stream.receive_some(65536):
        received += data
    return received


def header(response: h11.Response, name: bytes) -> bytes | None:
    return next((value for key, value in response.headers if key == name), None)


def error_code(body: bytes) -> str:
    error = orjson.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    code: str = error["code"]
    return code


# --- request bodies that never arrive ----------------------------------------------------------


async def test_a_chunked_body_that_never_ends_is_answered_408_and_closed() -> None:
    async with running(body_timeout=0.3, keep_alive_timeout=30) as servers:
        client = HTTPClient(await connect(servers.http_port))
        head = h11.Request(
            method="POST", target="/v1/chat/completions",
            headers=[("host", "baton"), ("transfer-encoding", "chunked"), JSON_TYPE],
        )  # fmt: skip
        await client.send(head, h11.Data(data=b'{"model": "r", '))  # and never the rest
        began = trio.current_time()
        with trio.fail_after(BOUND):
            response, body = await client.response()
            assert response.status_code == 408
            assert error_code(body) == "request_timeout"
            assert header(response, b"connection") == b"close"
            assert await closed_by_server(client.stream) == b""
        assert trio.current_time() - began >= 0.25


async def test_a_body_trickling_one_byte_at_a_time_is_answered_408_and_closed() -> None:
    body = chat_body(stream=False)
    async with running(body_timeout=0.5, keep_alive_timeout=30) as servers:
        client = HTTPClient(await connect(servers.http_port))
        head = h11.Request(
            method="POST", target="/v1/chat/completions",
            headers=[("host", "baton"), ("content-length", str(len(body))), JSON_TYPE],
        )  # fmt: skip
        await client.send(head)
        sent = 0

        async def trickle() -> None:
            nonlocal sent
            for byte in body:  # 0.05 s a byte: the body would take several seconds
                await client.stream.send_all(bytes([byte]))
                sent += 1
                await trio.sleep(0.05)

        with trio.fail_after(BOUND):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trickle)
                response, answer = await client.response()
                nursery.cancel_scope.cancel()
            assert response.status_code == 408, answer
            assert error_code(answer) == "request_timeout"
            assert sent < len(body)
            assert await closed_by_server(client.stream) == b""


async def test_a_body_that_arrives_in_time_is_answered_as_usual() -> None:
    async with running(body_timeout=2.0) as servers:
        client = HTTPClient(await connect(servers.http_port))
        with trio.fail_after(BOUND):
            await client.request("POST", "/v1/chat/completions", chat_body(stream=False))
            response, body = await client.response()
        assert response.status_code == 200, body
        assert orjson.loads(body)["choices"][0]["message"]["content"] == ANSWER


# --- request heads and handshakes that never end -----------------------------------------------


async def test_a_request_head_that_never_ends_is_closed_after_the_keep_alive_timeout() -> None:
    async with running(keep_alive_timeout=0.3) as servers:
        stream = await connect(servers.http_port)
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nhost: baton\r\n")  # no blank line
        with trio.fail_after(BOUND):
            assert await closed_by_server(stream) == b""


async def test_a_websocket_handshake_that_never_ends_is_closed() -> None:
    async with running(handshake_timeout=0.3) as servers:
        stream = await connect(servers.ws_port)
        await stream.send_all(b"GET /v1/stream HTTP/1.1\r\nhost: baton\r\n")  # no blank line
        with trio.fail_after(BOUND):
            assert await closed_by_server(stream) == b""


# --- how many connections ----------------------------------------------------------------------


@pytest.mark.parametrize("limit", ["max_connections", "max_connections_per_client"])
async def test_over_the_limit_http_gets_503_while_healthz_and_open_streams_carry_on(
    limit: str,
) -> None:
    """Two connections are the limit: a streaming answer and an idle keep-alive connection."""
    limits = {"max_connections": 100, "max_connections_per_client": 100, limit: 2}
    async with running(FakeProvider("a", DRIP), keep_alive_timeout=30, **limits) as servers:
        port = servers.http_port
        streaming = HTTPClient(await connect(port))
        idle = HTTPClient(await connect(port))
        with trio.fail_after(BOUND):
            await streaming.request("POST", "/v1/chat/completions", chat_body(stream=True))
            response, first = await streaming.first_data()
            assert response.status_code == 200
            await idle.request("GET", "/v1/models")
            assert (await idle.response())[0].status_code == 200

            over = HTTPClient(await connect(port))
            await over.request("POST", "/v1/chat/completions", chat_body(stream=False))
            response, body = await over.response()
            assert response.status_code == 503, body
            assert error_code(body) == "too_many_connections"
            assert orjson.loads(body)["error"]["type"] == "server_error"
            assert header(response, b"retry-after") == b"1"
            assert header(response, b"connection") == b"close"
            assert await closed_by_server(over.stream) == b""

            health = HTTPClient(await connect(port))
            await health.request("GET", "/healthz")
            response, body = await health.response()
            assert (response.status_code, orjson.loads(body)) == (200, {"status": "ok"})

            if limit == "max_connections_per_client":
                # Another address is another client: it is served.
                other = HTTPClient(await connect(port, source="127.0.0.2"))
                await other.request("POST", "/v1/chat/completions", chat_body(stream=False))
                response, body = await other.response()
                assert response.status_code == 200, body

            rest = await streaming.rest()
        events = (first + rest).decode()
        assert events.endswith("data: [DONE]\n\n")
        # Each SSE event is an ``id: <seq>`` line (for resuming) and its ``data:`` line.
        text = "".join(
            orjson.loads(line[len("data: ") :])["choices"][0]["delta"].get("content", "")
            for event in events.split("\n\n")
            for line in event.split("\n")
            if line.startswith("data: {")
        )
        assert text == ANSWER


async def test_a_connection_that_closed_frees_its_place() -> None:
    async with running(max_connections=1, keep_alive_timeout=30) as servers:
        first = HTTPClient(await connect(servers.http_port))
        with trio.fail_after(BOUND):
            await first.request("GET", "/v1/models")
            assert (await first.response())[0].status_code == 200
            await first.stream.aclose()
            while True:  # the server sees the close a moment later
                second = HTTPClient(await connect(servers.http_port))
                await second.request("GET", "/v1/models")
                response, _ = await second.response()
                if response.status_code == 200:
                    break
                assert response.status_code == 503
                await trio.sleep(0.02)


WS_HANDSHAKE = (
    b"GET /v1/stream HTTP/1.1\r\nhost: baton\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
    b"sec-websocket-key: " + base64.b64encode(b"0123456789abcdef") + b"\r\n"
    b"sec-websocket-version: 13\r\n\r\n"
)


async def ws_handshake(stream: trio.SocketStream) -> tuple[bytes, bytes]:
    """Send an opening handshake; the response's status line and anything after its head."""
    await stream.send_all(WS_HANDSHAKE)
    received = b""
    while b"\r\n\r\n" not in received:
        data = await stream.receive_some(65536)
        assert data, received
        received += data
    head, rest = received.split(b"\r\n\r\n", 1)
    return head, rest


@pytest.mark.parametrize("limit", ["max_connections", "max_connections_per_client"])
async def test_over_the_limit_a_websocket_handshake_is_refused_with_503(limit: str) -> None:
    limits = {"max_connections": 100, "max_connections_per_client": 100, limit: 1}
    async with running(**limits) as servers:
        with trio.fail_after(BOUND):
            held = await connect(servers.ws_port)
            head, _ = await ws_handshake(held)
            assert head.startswith(b"HTTP/1.1 101 ")
            over = await connect(servers.ws_port)
            head, rest = await ws_handshake(over)
            assert head.startswith(b"HTTP/1.1 503 "), head
            assert b"\r\nretry-after: 1" in head.lower()
            body = rest + await closed_by_server(over)
            assert orjson.loads(body)["error"]["code"] == "too_many_connections"


# --- connections that end --------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
async def test_connection_close_after_a_chat_completion_closes_the_connection(
    stream: bool,
) -> None:
    async with running(keep_alive_timeout=30) as servers:
        client = HTTPClient(await connect(servers.http_port))
        await client.request(
            "POST", "/v1/chat/completions", chat_body(stream=stream),
            headers=(("connection", "close"),),
        )  # fmt: skip
        with trio.fail_after(BOUND):
            response, body = await client.response()
            assert response.status_code == 200, body
            assert ANSWER[:20] in body.decode() or stream
            assert await closed_by_server(client.stream) == b""


@pytest.mark.parametrize("stream", [True, False])
async def test_after_a_chat_completion_an_idle_connection_closes_after_the_keep_alive_timeout(
    stream: bool,
) -> None:
    async with running(keep_alive_timeout=0.3) as servers:
        client = HTTPClient(await connect(servers.http_port))
        with trio.fail_after(BOUND):
            await client.request("POST", "/v1/chat/completions", chat_body(stream=stream))
            response, body = await client.response()
            assert response.status_code == 200, body
            # The connection is kept alive: a second request on it is answered...
            client.h11.start_next_cycle()
            await client.request("POST", "/v1/chat/completions", chat_body(stream=stream))
            response, body = await client.response()
            assert response.status_code == 200, body
            idle_since = trio.current_time()
            # ... and once idle for the keep-alive timeout, it is closed.
            assert await closed_by_server(client.stream) == b""
        assert trio.current_time() - idle_since >= 0.25


# --- WebSocket frames ---------------------------------------------------------------------------


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """One final client frame (clients mask theirs), payload under 126 bytes."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


async def read_frame(stream: trio.SocketStream, received: bytes) -> tuple[int, bytes]:
    """The next (unmasked, short) server frame: its opcode and payload."""
    while len(received) < 2 or len(received) < 2 + (received[1] & 0x7F):
        data = await stream.receive_some(65536)
        assert data, f"the server closed the connection without a frame ({received!r})"
        received += data
    length = received[1] & 0x7F
    assert length < 126
    return received[0] & 0x0F, received[2 : 2 + length]


async def test_a_text_frame_that_is_not_utf8_gets_close_code_1007() -> None:
    async with running() as servers:
        stream = await connect(servers.ws_port)
        with trio.fail_after(BOUND):
            head, rest = await ws_handshake(stream)
            assert head.startswith(b"HTTP/1.1 101 ")
            await stream.send_all(masked_frame(0x1, b'{"type": "\xff\xfe"}'))
            opcode, payload = await read_frame(stream, rest)
            assert opcode == 0x8  # close
            (code,) = struct.unpack("!H", payload[:2])
            assert code == 1007
            assert payload[2:].decode()  # a reason a person can read


# --- what is logged -----------------------------------------------------------------------------


def client_left_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Lines of the HTTP API saying that a client left, went away or disconnected."""
    words = ("disconnect", "went away", "left", "closed its connection")
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "transport._http" and any(w in r.getMessage() for w in words)
    ]


@pytest.mark.parametrize("stream", [True, False])
async def test_a_successful_answer_logs_no_disconnect(
    stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="transport._http")
    async with running() as servers:
        client = HTTPClient(await connect(servers.http_port))
        with trio.fail_after(BOUND):
            await client.request("POST", "/v1/chat/completions", chat_body(stream=stream))
            response, body = await client.response()
            assert response.status_code == 200, body
            await client.stream.aclose()
            while servers.baton.statistics().active_streams:
                await trio.sleep(0.01)
            await trio.sleep(0.1)  # time for the server to see the close
    assert client_left_lines(caplog) == []


async def test_a_client_that_leaves_early_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="transport._http")
    # resume_window = 0: a stream whose client left is cancelled at once (no resume).
    async with running(FakeProvider("a", DRIP), resume_window=0) as servers:
        client = HTTPClient(await connect(servers.http_port))
        with trio.fail_after(BOUND):
            await client.request("POST", "/v1/chat/completions", chat_body(stream=True))
            await client.first_data()
            await client.stream.aclose()
            while not servers.baton.statistics().finished:
                await trio.sleep(0.01)
    assert servers.baton.statistics().finished == {"cancelled": 1}
    lines = client_left_lines(caplog)
    assert len(lines) == 1, lines
    assert "before the answer ended" in lines[0]


# --- the limits themselves ----------------------------------------------------------------------


def test_limits_fit_the_open_files_allowed_or_are_lowered_with_a_warning() -> None:
    config = config_from_dict(baton_config(max_connections=4096, max_connections_per_client=256))
    limits, warning = connection_limits(config, descriptors=1_048_576)
    assert (limits.max_connections, limits.max_connections_per_client) == (4096, 256)
    assert warning is None
    assert connection_limits(config, descriptors=-1) == (limits, None)  # no limit at all

    lowered, warning = connection_limits(config, descriptors=4096)
    assert warning is not None and "ulimit -n" in warning and "server.max_connections" in warning
    assert 1000 < lowered.max_connections < 4096 / 2
    assert lowered.max_connections_per_client == 256
    upstream = sum(p.max_connections for p in config.providers.values())
    held = 2 * (lowered.max_connections + lowered.max_refusing) + upstream
    assert held < 4096  # both servers, at their limits and refusing, still leave room

    tiny, warning = connection_limits(config, descriptors=10)
    assert warning is not None
    assert tiny.max_connections >= 1 and tiny.max_connections_per_client >= 1


async def test_the_limiter_admits_refuses_then_drops_and_counts_each() -> None:
    limits = ConnectionLimits(max_connections=3, max_connections_per_client=2, max_refusing=1)
    limiter = ConnectionLimiter(limits)
    with contextlib.ExitStack() as held:
        verdicts = [held.enter_context(limiter.hold(client)) for client in ("a", "a", "a", "b")]
        assert verdicts == ["admitted", "admitted", "refused", "admitted"]
        assert held.enter_context(limiter.hold("c")) == "dropped"  # no refusal place left
        stats = limiter.statistics()
        assert (stats.open, stats.refusing, stats.clients) == (3, 1, 2)
        assert (stats.total_admitted, stats.total_refused, stats.total_dropped) == (3, 1, 1)
    stats = limiter.statistics()
    assert (stats.open, stats.refusing, stats.clients) == (0, 0, 0)
    with limiter.hold("a") as verdict:
        assert verdict == "admitted"
