"""What a browser may send: the Origin allow-list on both servers, CORS, the JSON body rule."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
import pytest
import trio
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from actors import ConfigError, config_from_dict, open_baton
from scenarios import FakeProvider
from transport import serve_http, serve_ws

LISTED = "https://app.example.com"
EVIL = "https://evil.example"
OWN = "http://127.0.0.1:8080"  # server.host and the configured server.http_port
PROMPT = [{"role": "user", "content": "Tell me about the harbour."}]
CHAT = {"model": "r", "messages": PROMPT}


def config(**server: Any) -> dict[str, Any]:
    return {
        "server": {"allowed_origins": [LISTED, "http://localhost:5173"], **server},
        "providers": {"a": {"kind": "openai", "base_url": "http://a.invalid/v1"}},
        "routes": {"r": {"targets": [{"provider": "a", "model": "ma"}]}},
    }


@attrs.frozen(kw_only=True)
class Servers:
    http: str
    ws: str


@asynccontextmanager
async def running(**server: Any) -> AsyncIterator[Servers]:
    """Run Baton over one healthy fake with both servers on free ports."""
    providers = {"a": FakeProvider("a")}
    async with (
        open_baton(config_from_dict(config(**server)), providers, seed=0) as baton,
        trio.open_nursery() as nursery,
    ):
        http_port = await nursery.start(
            lambda task_status: serve_http(baton, task_status=task_status)
        )
        ws_port = await nursery.start(lambda task_status: serve_ws(baton, task_status=task_status))
        yield Servers(
            http=f"http://127.0.0.1:{http_port}", ws=f"ws://127.0.0.1:{ws_port}/v1/stream"
        )
        nursery.cancel_scope.cancel()


async def ws_handshake(url: str, origin: str | None) -> int | str:
    """Open a WebSocket with ``origin`` and run one stream: its terminal type, or the status."""

    async def conversation() -> int | str:
        try:
            async with connect(
                url,
                origin=origin,
                proxy=None,
                open_timeout=5,
                close_timeout=2,  # type: ignore[arg-type]
            ) as ws:
                await ws.send(json.dumps({"type": "start", "model": "r", "messages": PROMPT}))
                while True:
                    frame = json.loads(await ws.recv())
                    if frame["type"] in ("done", "error"):
                        return str(frame["type"])
        except InvalidStatus as exc:
            return exc.response.status_code

    async def bounded() -> int | str:
        async with asyncio.timeout(10):
            return await conversation()

    return await trio.to_thread.run_sync(lambda: asyncio.run(bounded()))


# --- WebSocket handshakes ----------------------------------------------------------------------


async def test_a_websocket_from_an_unlisted_origin_is_refused_with_403() -> None:
    async with running() as servers:
        assert await ws_handshake(servers.ws, EVIL) == 403
        assert await ws_handshake(servers.ws, "null") == 403  # sandboxed pages, file://


@pytest.mark.parametrize("origin", [LISTED, "http://localhost:5173", OWN, None])
async def test_a_websocket_from_a_listed_origin_baton_itself_or_no_browser_works(
    origin: str | None,
) -> None:
    async with running() as servers:
        assert await ws_handshake(servers.ws, origin) == "done"


# --- the HTTP API ------------------------------------------------------------------------------


async def test_an_http_request_from_an_unlisted_origin_is_refused_before_any_work() -> None:
    async with running() as servers, httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            servers.http + "/v1/chat/completions", json=CHAT, headers={"origin": EVIL}
        )
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "origin_not_allowed"
        assert "access-control-allow-origin" not in response.headers
        preflight = await http.options(
            servers.http + "/v1/chat/completions",
            headers={"origin": EVIL, "access-control-request-method": "POST"},
        )
        assert preflight.status_code == 403
        assert "access-control-allow-origin" not in preflight.headers


async def test_a_listed_origin_gets_its_preflight_and_cors_headers_on_answers() -> None:
    async with running() as servers, httpx.AsyncClient(timeout=10) as http:
        preflight = await http.options(
            servers.http + "/v1/chat/completions",
            headers={
                "origin": LISTED,
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, content-type, x-stainless-os",
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == LISTED
        assert "origin" in preflight.headers["vary"].lower()
        assert "POST" in preflight.headers["access-control-allow-methods"]
        allowed = {h.strip() for h in preflight.headers["access-control-allow-headers"].split(",")}
        assert {"authorization", "content-type", "x-stainless-os"} <= allowed
        response = await http.post(
            servers.http + "/v1/chat/completions", json=CHAT, headers={"origin": LISTED}
        )
        assert response.status_code == 200, response.text
        assert response.headers["access-control-allow-origin"] == LISTED
        assert response.json()["choices"][0]["message"]["content"]


async def test_a_listed_origin_may_read_the_stream_id_it_needs_to_resume() -> None:
    """A page on another allowed origin reads only the headers CORS exposes: without
    ``x-baton-stream`` it could not name its stream to ``GET /v1/streams/{id}``."""
    async with running() as servers, httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            servers.http + "/v1/chat/completions", json={**CHAT, "stream": True},
            headers={"origin": LISTED},
        )  # fmt: skip
        assert response.status_code == 200, response.text
        exposed = {h.strip() for h in response.headers["access-control-expose-headers"].split(",")}
        assert {"x-request-id", "x-baton-stream"} <= exposed
        stream_id = response.headers["x-baton-stream"]
        assert stream_id.startswith("st_")
        # The resume endpoint answers that page with CORS too (this stream was read to its
        # end, so there is nothing to resume: the page can read why).
        resumed = await http.get(
            servers.http + f"/v1/streams/{stream_id}", headers={"origin": LISTED}
        )
        assert resumed.status_code == 404
        assert resumed.headers["access-control-allow-origin"] == LISTED
        assert resumed.json()["error"]["code"] == "unknown_stream"


async def test_baton_s_own_page_and_non_browser_clients_may_post() -> None:
    async with running() as servers, httpx.AsyncClient(timeout=10) as http:
        url = servers.http + "/v1/chat/completions"
        same_origin = await http.post(url, json=CHAT, headers={"origin": servers.http})
        assert same_origin.status_code == 200, same_origin.text
        no_origin = await http.post(url, json=CHAT)
        assert no_origin.status_code == 200, no_origin.text
        assert "access-control-allow-origin" not in no_origin.headers


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None],
)
async def test_a_chat_request_that_is_not_declared_json_gets_415(content_type: str | None) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    async with running() as servers, httpx.AsyncClient(timeout=10) as http:
        response = await http.post(
            servers.http + "/v1/chat/completions", content=json.dumps(CHAT), headers=headers
        )
        assert response.status_code == 415
        error = response.json()["error"]
        assert error["code"] == "unsupported_media_type"
        assert "application/json" in error["message"]
        with_charset = await http.post(
            servers.http + "/v1/chat/completions",
            content=json.dumps(CHAT),
            headers={"content-type": "application/json; charset=utf-8"},
        )
        assert with_charset.status_code == 200, with_charset.text


# --- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["*", "https://app.example.com/", "app.example.com", 5])
def test_allowed_origins_must_be_bare_origins(bad: Any) -> None:
    data: Mapping[str, Any] = config(allowed_origins=[bad])
    with pytest.raises(ConfigError, match=r"baton\.toml: server\.allowed_origins\[0\]"):
        config_from_dict(data, source="baton.toml")
