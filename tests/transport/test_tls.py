"""HTTPS and WSS with ``[server] tls_cert`` and ``tls_key``, through real clients.

A certificate authority and a certificate for 127.0.0.1 are made at test time (``trustme``).
Baton runs as ``baton serve`` runs it (``run_baton``) over an in-memory ``FakeProvider``; the
official ``openai`` SDK streams a chat completion over HTTPS and the ``websockets`` library runs
a stream to ``done`` over ``wss://``, each trusting only the test CA.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trio
import trustme
from cryptography.hazmat.primitives import serialization
from hypercorn.config import Config as HypercornConfig
from websockets.asyncio.client import connect

from actors import ConfigError, Message, config_from_dict
from scenarios import FakeProvider, answer_tokens
from transport import ConnectionLimiter, ConnectionLimits, load_config, run_baton
from transport._accept import serve_asgi, server_ssl_context

PROMPT = [{"role": "user", "content": "Tell me about the harbour."}]
ANSWER = "".join(answer_tokens([Message(role="user", content=PROMPT[0]["content"])]))
CLIENT_TIMEOUT = 20.0


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def pem_files(ca: trustme.CA, tmp_path: Path) -> tuple[str, str]:
    """The server's certificate chain and key as PEM files, as an operator has them."""
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_pem.write_to_path(str(key_path))
    cert_path.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    return str(cert_path), str(key_path)


def tls_config(cert: str, key: str) -> dict[str, Any]:
    return {
        "server": {"ws_port": 0, "http_port": 0, "tls_cert": cert, "tls_key": key},
        "providers": {"a": {"kind": "openai", "base_url": "http://a.invalid/v1"}},
        "routes": {"default": {"targets": [{"provider": "a", "model": "ma"}]}},
    }


@asynccontextmanager
async def serving(config: dict[str, Any]) -> AsyncIterator[tuple[int, int]]:
    """Run Baton as the process does; yields ``(ws_port, http_port)``."""
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(
            lambda task_status: run_baton(
                config_from_dict(config), {"a": FakeProvider("a")}, task_status=task_status
            )
        )
        yield ports
        nursery.cancel_scope.cancel()


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def test_the_openai_sdk_streams_a_chat_completion_over_https(
    ca: trustme.CA, pem_files: tuple[str, str]
) -> None:
    def stream(port: int) -> tuple[str, str]:
        http_client = httpx.Client(verify=client_context(ca), timeout=CLIENT_TIMEOUT)
        with openai.OpenAI(
            base_url=f"https://127.0.0.1:{port}/v1", api_key="x", max_retries=0,
            http_client=http_client,
        ) as client:  # fmt: skip
            chunks = list(
                client.chat.completions.create(model="default", messages=PROMPT, stream=True)
            )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        return text, str(finish)

    async with serving(tls_config(*pem_files)) as (_, http_port):
        text, finish = await trio.to_thread.run_sync(stream, http_port, abandon_on_cancel=True)
    assert (text, finish) == (ANSWER, "stop")


async def test_the_application_is_told_the_scheme_is_https(
    ca: trustme.CA, pem_files: tuple[str, str]
) -> None:
    schemes: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        schemes.append(scope["scheme"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    server = config_from_dict(tls_config(*pem_files)).server
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    limiter = ConnectionLimiter(
        ConnectionLimits(max_connections=4, max_connections_per_client=4, max_refusing=4)
    )
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(serve_asgi, app, app, config, limiter, server=server))
        assert binds[0].startswith("https://")
        async with httpx.AsyncClient(verify=client_context(ca), timeout=5) as client:
            response = await client.get(f"{binds[0]}/")
        nursery.cancel_scope.cancel()
    assert (response.status_code, schemes) == (200, ["https"])


async def test_plain_http_to_the_tls_port_gets_no_answer(pem_files: tuple[str, str]) -> None:
    async with (
        serving(tls_config(*pem_files)) as (_, http_port),
        httpx.AsyncClient(timeout=5) as client,
    ):
        with pytest.raises(httpx.HTTPError):
            await client.get(f"http://127.0.0.1:{http_port}/healthz")


async def test_a_stream_runs_to_done_over_wss(ca: trustme.CA, pem_files: tuple[str, str]) -> None:
    async def conversation(port: int) -> list[dict[str, Any]]:
        start = {"type": "start", "ref": "q1", "model": "default", "messages": PROMPT}
        events: list[dict[str, Any]] = []
        async with asyncio.timeout(CLIENT_TIMEOUT):
            uri = f"wss://127.0.0.1:{port}/v1/stream"
            async with connect(uri, ssl=client_context(ca)) as ws:
                await ws.send(json.dumps(start))
                while not events or events[-1]["type"] not in ("done", "error"):
                    events.append(json.loads(await ws.recv()))
        return events

    async with serving(tls_config(*pem_files)) as (ws_port, _):
        events = await trio.to_thread.run_sync(
            lambda: asyncio.run(conversation(ws_port)), abandon_on_cancel=True
        )
    assert events[0]["type"] == "started"
    assert events[-1]["type"] == "done", events[-1]
    assert "".join(e["text"] for e in events if e["type"] == "delta") == ANSWER
    assert [e["seq"] for e in events] == list(range(len(events)))


async def test_a_tls_handshake_not_finished_in_time_closes_the_connection(
    pem_files: tuple[str, str],
) -> None:
    config = tls_config(*pem_files)
    config["server"]["handshake_timeout"] = 0.3
    async with serving(config) as ports:
        for port in ports:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            with trio.fail_after(5):  # the server hangs up, well before this
                assert await stream.receive_some() == b""
            await stream.aclose()


def test_a_missing_certificate_file_names_the_key_and_the_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    path = tmp_path / "baton.toml"
    path.write_text(
        f'[server]\ntls_cert = "{missing}"\ntls_key = "{missing}"\n'
        '[providers.a]\nkind = "openai"\nbase_url = "http://a.invalid/v1"\n'
        '[routes.default]\ntargets = [{ provider = "a", model = "m" }]\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(path) in message and "server.tls_cert" in message and missing in message


def test_a_file_that_is_no_certificate_names_the_key_and_the_file(
    tmp_path: Path, pem_files: tuple[str, str]
) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    path = tmp_path / "baton.toml"
    path.write_text(
        f'[server]\ntls_cert = "{junk}"\ntls_key = "{pem_files[1]}"\n'
        '[providers.a]\nkind = "openai"\nbase_url = "http://a.invalid/v1"\n'
        '[routes.default]\ntargets = [{ provider = "a", model = "m" }]\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "server.tls_cert" in message and str(junk) in message and "PEM" in message


def test_an_encrypted_key_is_a_config_error_not_a_password_prompt(
    tmp_path: Path, pem_files: tuple[str, str]
) -> None:
    key = serialization.load_pem_private_key(Path(pem_files[1]).read_bytes(), None)
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret-passphrase"),
        )
    )
    config = config_from_dict(tls_config(pem_files[0], str(encrypted)))
    with pytest.raises(ConfigError, match="unencrypted private key"):
        server_ssl_context(config.server)


def test_a_certificate_without_its_key_is_a_config_error() -> None:
    config = tls_config("cert.pem", "key.pem")
    del config["server"]["tls_key"]
    with pytest.raises(ConfigError, match=r"server\.tls_key.*required with server\.tls_cert"):
        config_from_dict(config)
