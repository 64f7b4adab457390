"""What reaches a client of a failed upstream: the provider's structured message, never its
raw body, URL credentials or the upstream's host and port (over HTTP, SSE and WebSocket)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
import pytest
import trio
from websockets.asyncio.client import connect

from actors import config_from_dict, open_baton
from transport import serve_http, serve_ws
from transport.providers import OpenAIProvider
from transport.providers._errors import redact

LEAK = b"FATAL: pool error for postgres://admin:hunter2@db.internal:5432/x\n  at db.connect()"
SECRETS = ("hunter2", "db.internal")
PROMPT = [{"role": "user", "content": "Tell me about the harbour."}]
CHAT = {"model": "r", "messages": PROMPT}


async def serve_canned(status: int, body: bytes, task_status: Any) -> None:
    """An upstream on 127.0.0.1 that answers every request with ``status`` and ``body``."""

    async def answer(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            data += chunk
        head, rest = data.split(b"\r\n\r\n", 1)
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            rest += await stream.receive_some(65536)
        await stream.send_all(
            b"HTTP/1.1 %d Oops\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n" % (status, len(body)) + body
        )
        await stream.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(answer, listeners)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@attrs.frozen(kw_only=True)
class Servers:
    http: str
    ws: str
    upstream_port: int


@asynccontextmanager
async def running(
    status: int = 500, body: bytes = LEAK, *, up: bool = True
) -> AsyncIterator[Servers]:
    """Baton (one provider ``a``, no retries) over a canned upstream, both servers on."""
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_canned, status, body) if up else closed_port()
        config = config_from_dict({
            "providers": {"a": {
                "kind": "openai", "base_url": f"http://127.0.0.1:{port}/v1", "retries": 0,
                "health": {"probe_interval": 3600.0, "probe_interval_unhealthy": 3600.0},
            }},
            "routes": {"r": {"targets": [{"provider": "a", "model": "ma"}], "max_attempts": 1}},
        })  # fmt: skip
        provider = OpenAIProvider(config.providers["a"])
        async with open_baton(config, {"a": provider}, seed=0) as baton:
            http_port = await nursery.start(
                lambda task_status: serve_http(baton, task_status=task_status)
            )
            ws_port = await nursery.start(
                lambda task_status: serve_ws(baton, task_status=task_status)
            )
            yield Servers(
                http=f"http://127.0.0.1:{http_port}",
                ws=f"ws://127.0.0.1:{ws_port}/v1/stream",
                upstream_port=port,
            )
            nursery.cancel_scope.cancel()
        await provider.aclose()


async def ws_error(url: str) -> dict[str, Any]:
    """Run one stream over a WebSocket and return its terminal frame."""

    async def conversation() -> dict[str, Any]:
        async with connect(url, proxy=None, open_timeout=5, close_timeout=2) as ws:
            await ws.send(json.dumps({"type": "start", "model": "r", "messages": PROMPT}))
            while True:
                frame: dict[str, Any] = json.loads(await ws.recv())
                if frame["type"] in ("done", "error"):
                    return frame

    async def bounded() -> dict[str, Any]:
        async with asyncio.timeout(10):
            return await conversation()

    return await trio.to_thread.run_sync(lambda: asyncio.run(bounded()))


async def every_client_view(servers: Servers) -> list[str]:
    """The error a client gets over HTTP (whole and streaming) and over a WebSocket."""
    views = []
    async with httpx.AsyncClient(timeout=10) as http:
        url = servers.http + "/v1/chat/completions"
        for stream in (False, True):
            response = await http.post(url, json={**CHAT, "stream": stream})
            assert response.status_code >= 400, response.text
            views.append(response.text)
    frame = await ws_error(servers.ws)
    assert frame["type"] == "error"
    views.append(json.dumps(frame))
    return views


@pytest.mark.parametrize(
    "body",
    [LEAK, b'{"error": "' + LEAK.replace(b"\n", b" ") + b'"}', b"<html>" + LEAK + b"</html>"],
)
async def test_an_unstructured_upstream_body_reaches_only_the_log_redacted(
    body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with running(500, body) as servers:
        views = await every_client_view(servers)
    for view in views:
        assert not any(secret in view for secret in SECRETS), view
        assert "HTTP 500" in view  # the status, and Baton's code, are still there
        assert "all_providers_unavailable" in view
    logged = [record.getMessage() for record in caplog.records]
    assert any("db.internal" in line for line in logged), "the detail belongs in the log"
    assert not any("hunter2" in line for line in logged)


async def test_a_structured_provider_error_reaches_the_client_bounded() -> None:
    message = "This model's maximum context length is 8192 tokens. " + "x" * 2000
    body = json.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "code": "bad"}}
    )
    async with running(400, body.encode()) as servers:
        views = await every_client_view(servers)
    for view in views:
        assert "maximum context length is 8192 tokens" in view
        assert "x" * 300 not in view and "x" * 200 in view
        assert "upstream_rejected" in view or "bad" in view


async def test_a_connect_error_does_not_name_the_upstream_host_and_port(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with running(up=False) as servers:
        views = await every_client_view(servers)
    where = f"127.0.0.1:{servers.upstream_port}"
    for view in views:
        assert "could not connect to provider a" in view
        assert where not in view and str(servers.upstream_port) not in view


@pytest.mark.parametrize(
    ("text", "kept", "gone"),
    [
        ("dsn postgres://admin:hunter2@db:5432/x", "postgres://[redacted]@db:5432/x", "hunter2"),
        ("see https://tok3n@git.example/r", "https://[redacted]@git.example/r", "tok3n"),
        ("the key sk-live-123 is wrong", "the key [redacted] is wrong", "sk-live-123"),
        ("mail ops@example.com, https://example.com/a@b", "ops@example.com", "[redacted]"),
    ],
)
def test_redact_removes_the_key_and_url_credentials(text: str, kept: str, gone: str) -> None:
    redacted = redact(text, "sk-live-123")
    assert kept in redacted and gone not in redacted
