"""Client keys on real sockets: the ``openai`` SDK against HTTP, ``websockets`` against WS.

Two clients: ``alice`` (key from the environment, route ``default`` only) and ``bob`` (only
the SHA-256 of his key in the config, every route). Both servers share one ``ClientAuth``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar

import attrs
import httpx
import openai
import pytest
import trio
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from actors import (
    ClientEvent,
    ConfigError,
    Delta,
    Done,
    Reasoning,
    ToolCall,
    ToolCallPart,
    Usage,
    config_from_dict,
    open_baton,
)
from scenarios import Behaviour, FakeProvider, FaultSchedule
from transport import ClientAuth, MetricsEndpoint, Refused, client_auth, serve_http, serve_ws
from transport._auth import TokenMeter, TokenWindow

ALICE = "sk-alice-SECRETKEY-7f3a9c41d2"
BOB = "sk-bob-SECRETKEY-0d2e81b5aa"
NOT_A_KEY = "sk-mallory-SECRETKEY-99e1"
MESSAGES = [{"role": "user", "content": "Tell me about rivers."}]
DRIP = Behaviour("drip", token_delay=0.05)  # a stream that lasts seconds: time to act mid-stream
T = TypeVar("T")


@attrs.frozen(kw_only=True)
class Servers:
    http: str
    ws: str
    auth: ClientAuth


def config(**alice: Any) -> dict[str, Any]:
    return {
        "providers": {
            name: {"kind": "openai", "base_url": f"http://{name}.invalid/v1"} for name in "ab"
        },
        "routes": {
            "default": {"targets": [{"provider": "a", "model": "model-a"}]},
            "private": {"targets": [{"provider": "b", "model": "model-b"}]},
        },
        "clients": {
            "alice": {"key_env": "ALICE_KEY", "routes": ["default"], **alice},
            "bob": {"key_sha256": hashlib.sha256(BOB.encode()).hexdigest()},
        },
    }


@asynccontextmanager
async def serving(
    a: FaultSchedule | None = None, *, token_ttl: float = 60.0, **alice: Any
) -> AsyncIterator[Servers]:
    """Baton over fakes ``a`` and ``b``, HTTP and WS sharing one ``ClientAuth``."""
    settings = config_from_dict(config(**alice))
    auth = ClientAuth.from_config(settings, environ={"ALICE_KEY": ALICE}, token_ttl=token_ttl)
    providers = {"a": FakeProvider("a", a), "b": FakeProvider("b")}
    metrics = MetricsEndpoint()
    async with (
        open_baton(settings, providers, meter_provider=metrics.meter_provider, seed=0) as baton,
        trio.open_nursery() as nursery,
    ):
        http = await nursery.start(partial(serve_http, baton, metrics=metrics, auth=auth))
        ws = await nursery.start(partial(serve_ws, baton, auth=auth))
        yield Servers(
            http=f"http://127.0.0.1:{http}", ws=f"ws://127.0.0.1:{ws}/v1/stream", auth=auth
        )
        nursery.cancel_scope.cancel()
    metrics.close()


async def in_thread(action: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(action)


def sdk(servers: Servers, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{servers.http}/v1", api_key=key, max_retries=0, timeout=10)


def chat(servers: Servers, key: str, model: str = "default") -> str:
    with sdk(servers, key) as client:
        answer = client.chat.completions.create(model=model, messages=MESSAGES)  # type: ignore[arg-type]
        return answer.choices[0].message.content or ""


def models(servers: Servers, key: str) -> list[str]:
    with sdk(servers, key) as client:
        return [m.id for m in client.models.list()]


def ws_conversation(
    url: str, frames: list[dict[str, Any]], *, count: int = 1, **connect_args: Any
) -> tuple[str | None, list[dict[str, Any]]]:
    """Open a WS, send ``frames``, read until ``count`` streams ended; (subprotocol, frames)."""

    async def talk() -> tuple[str | None, list[dict[str, Any]]]:
        async with asyncio.timeout(15):
            async with connect(url, proxy=None, open_timeout=5, **connect_args) as ws:
                for frame in frames:
                    await ws.send(json.dumps(frame))
                received: list[dict[str, Any]] = []
                ended = 0
                while ended < count:
                    received.append(json.loads(await ws.recv()))
                    ended += received[-1]["type"] in ("done", "error")
                return ws.subprotocol, received

    return asyncio.run(talk())


def ws_refusal(url: str, **connect_args: Any) -> int:
    """The HTTP status of a refused handshake."""
    with pytest.raises(InvalidStatus) as refused:
        ws_conversation(url, [], count=0, **connect_args)
    return refused.value.response.status_code


def start(model: str = "default", ref: str = "r1") -> dict[str, Any]:
    return {"type": "start", "ref": ref, "model": model, "messages": MESSAGES}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# --- HTTP -----------------------------------------------------------------------------------


async def test_each_key_sees_and_uses_only_its_routes() -> None:
    async with serving() as servers:
        assert await in_thread(lambda: models(servers, ALICE)) == ["default"]
        assert await in_thread(lambda: models(servers, BOB)) == ["default", "private"]
        assert await in_thread(lambda: chat(servers, ALICE))
        assert await in_thread(lambda: chat(servers, BOB, "private"))
        with pytest.raises(openai.NotFoundError) as hidden:
            await in_thread(lambda: chat(servers, ALICE, "private"))
        assert hidden.value.code == "model_not_found"
        assert "private" not in hidden.value.message.replace("'private'", "")

        def retrieve() -> Any:
            with sdk(servers, ALICE) as client:
                return client.models.retrieve("private")

        with pytest.raises(openai.NotFoundError):
            await in_thread(retrieve)


async def test_a_wrong_or_missing_key_is_an_openai_shaped_401() -> None:
    async with serving() as servers:
        with pytest.raises(openai.AuthenticationError) as wrong:
            await in_thread(lambda: chat(servers, NOT_A_KEY))
        assert wrong.value.code == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            await in_thread(lambda: models(servers, NOT_A_KEY))
        async with httpx.AsyncClient() as http:
            missing = await http.get(f"{servers.http}/v1/models")
            health = await http.get(f"{servers.http}/healthz")
        assert missing.status_code == 401
        assert missing.json()["error"]["type"] == "invalid_request_error"
        assert missing.json()["error"]["code"] == "invalid_api_key"
        assert set(missing.json()["error"]) >= {"message", "type", "code"}
        assert health.status_code == 200  # the operator endpoints are not the client API


async def test_max_streams_is_per_key_and_the_other_key_still_streams() -> None:
    async with serving(FaultSchedule.always(DRIP), max_streams=1) as servers:
        # alice's first stream drips for seconds; her second start on the same connection
        # is refused, and so is an HTTP request of hers meanwhile; bob streams on.
        frames = [start(ref="first"), start(ref="second")]
        async with trio.open_nursery() as nursery:
            results: dict[str, Any] = {}

            async def alice_ws() -> None:
                results["ws"] = await in_thread(
                    lambda: ws_conversation(
                        servers.ws, frames, count=2, additional_headers=bearer(ALICE)
                    )
                )

            nursery.start_soon(alice_ws)
            await wait_until(lambda: servers.auth.statistics()["alice"].active_streams == 1)
            async with httpx.AsyncClient(timeout=10) as http:
                over = await http.post(
                    f"{servers.http}/v1/chat/completions", headers=bearer(ALICE),
                    json={"model": "default", "messages": MESSAGES},
                )  # fmt: skip
            assert over.status_code == 429
            assert over.json()["error"]["code"] == "too_many_streams"
            assert int(over.headers["retry-after"]) >= 1
            assert await in_thread(lambda: chat(servers, BOB, "private"))
        _, received = results["ws"]
        refused = [f for f in received if f.get("ref") == "second"]
        assert refused[0]["code"] == "too_many_streams" and refused[0]["retryable"] is True
        assert [f["type"] for f in received if f.get("stream") and f["seq"] is not None][-1] in (
            "done",
            "delta",
        )
        assert any(f["type"] == "done" for f in received)
        assert servers.auth.statistics()["alice"].active_streams == 0


async def test_requests_per_minute_is_per_key_with_the_wait_in_retry_after() -> None:
    async with serving(requests_per_minute=2) as servers:
        for _ in range(2):
            assert await in_thread(lambda: chat(servers, ALICE))
        with pytest.raises(openai.RateLimitError) as limited:
            await in_thread(lambda: chat(servers, ALICE))
        assert limited.value.code == "rate_limit_exceeded"
        assert 1 <= int(limited.value.response.headers["retry-after"]) <= 60
        _, received = await in_thread(
            lambda: ws_conversation(servers.ws, [start()], additional_headers=bearer(ALICE))
        )
        assert received[-1]["code"] == "rate_limit_exceeded" and received[-1]["retryable"]
        assert await in_thread(lambda: chat(servers, BOB))  # bob is not disturbed


# --- WebSocket ------------------------------------------------------------------------------


async def test_the_three_websocket_methods_open_a_connection() -> None:
    async with serving() as servers:
        protocol, by_header = await in_thread(
            lambda: ws_conversation(servers.ws, [start()], additional_headers=bearer(ALICE))
        )
        assert by_header[-1]["type"] == "done"
        protocol, by_subprotocol = await in_thread(
            lambda: ws_conversation(
                servers.ws, [start()], subprotocols=["baton.v1", f"baton.key.{BOB}"]
            )
        )
        assert protocol == "baton.v1"  # never the key
        assert by_subprotocol[-1]["type"] == "done"
        async with httpx.AsyncClient() as http:
            issued = await http.post(f"{servers.http}/v1/tokens", headers=bearer(BOB))
        assert issued.status_code == 200
        token = issued.json()["token"]
        assert issued.json()["expires_in"] == 60 and issued.json()["client"] == "bob"
        _, by_token = await in_thread(
            lambda: ws_conversation(f"{servers.ws}?token={token}", [start("private")])
        )
        assert by_token[-1]["type"] == "done"
        # A token opens one connection.
        assert await in_thread(lambda: ws_refusal(f"{servers.ws}?token={token}")) == 401


async def test_a_websocket_without_a_valid_key_is_refused_before_the_upgrade() -> None:
    async with serving(token_ttl=0.0) as servers:
        url = servers.ws
        assert await in_thread(lambda: ws_refusal(url)) == 401
        assert await in_thread(lambda: ws_refusal(url, additional_headers=bearer(NOT_A_KEY))) == 401
        wrong_protocol = ["baton.v1", f"baton.key.{NOT_A_KEY}"]
        assert await in_thread(lambda: ws_refusal(url, subprotocols=wrong_protocol)) == 401
        assert await in_thread(lambda: ws_refusal(f"{url}?token=forged.token")) == 401
        async with httpx.AsyncClient() as http:
            issued = await http.post(f"{servers.http}/v1/tokens", headers=bearer(ALICE))
            no_key = await http.post(f"{servers.http}/v1/tokens")
        assert no_key.status_code == 401
        expired = issued.json()["token"]  # a token_ttl of 0: expired as soon as issued
        assert await in_thread(lambda: ws_refusal(f"{url}?token={expired}")) == 401
        # A route the key may not use is, on WS too, a route that does not exist.
        _, received = await in_thread(
            lambda: ws_conversation(url, [start("private")], additional_headers=bearer(ALICE))
        )
        assert received[-1]["code"] == "unknown_model"


async def test_a_token_expires_after_its_ttl(autojump_clock: trio.testing.MockClock) -> None:
    auth = ClientAuth.from_config(
        config_from_dict(config()), environ={"ALICE_KEY": ALICE}, token_ttl=30.0
    )
    alice = auth.identify(ALICE)
    fresh = json.loads(auth.issue_token(alice))["token"]
    stale = json.loads(auth.issue_token(alice))["token"]
    await trio.sleep(29.0)
    assert auth.redeem_token(fresh).name == "alice"
    await trio.sleep(2.0)
    with pytest.raises(Refused) as refused:
        auth.redeem_token(stale)
    assert refused.value.status == 401 and refused.value.code == "invalid_api_key"
    tampered = stale[:-2] + ("AA" if not stale.endswith("AA") else "BB")
    with pytest.raises(Refused):
        auth.redeem_token(tampered)


async def test_requests_per_minute_frees_up_as_the_minute_slides(
    autojump_clock: trio.testing.MockClock,
) -> None:
    auth = ClientAuth.from_config(
        config_from_dict(config(requests_per_minute=2)), environ={"ALICE_KEY": ALICE}
    )
    alice = auth.identify(ALICE)
    for _ in range(2):
        auth.release(auth.admit(alice, "default"))
        await trio.sleep(10.0)
    with pytest.raises(Refused) as limited:
        auth.admit(alice, "default")
    assert limited.value.retry_after == pytest.approx(40.0)
    await trio.sleep(40.0)
    auth.release(auth.admit(alice, "default"))
    assert auth.statistics()["alice"].refused == 1


# --- start-up -------------------------------------------------------------------------------


def test_an_unset_key_env_stops_start_up_naming_the_variable() -> None:
    with pytest.raises(ConfigError) as error:
        ClientAuth.from_config(config_from_dict(config()), environ={}, source="baton.toml")
    assert "baton.toml: clients.alice.key_env" in str(error.value)
    assert "ALICE_KEY" in str(error.value)


@pytest.mark.parametrize(
    ("host", "clients", "warned"),
    [("0.0.0.0", False, True), ("127.0.0.1", False, False), ("::1", False, False),
     ("localhost", False, False), ("0.0.0.0", True, False)],
)  # fmt: skip
def test_serving_beyond_loopback_without_clients_warns_once(
    caplog: pytest.LogCaptureFixture, host: str, clients: bool, warned: bool
) -> None:
    data = config()
    data["server"] = {"host": host}
    if not clients:
        del data["clients"]
    client_auth(config_from_dict(data), environ={"ALICE_KEY": ALICE})
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.name for r in warnings] == (["transport._auth"] if warned else [])


# --- secrets --------------------------------------------------------------------------------


async def test_no_key_or_token_appears_in_logs_status_metrics_or_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    bodies: list[str] = []
    async with serving(max_streams=1) as servers, httpx.AsyncClient(timeout=10) as http:
        for key in (ALICE, BOB, NOT_A_KEY):
            for model in ("default", "private", "nonexistent"):
                response = await http.post(
                    f"{servers.http}/v1/chat/completions", headers=bearer(key),
                    json={"model": model, "messages": MESSAGES},
                )  # fmt: skip
                bodies.append(response.text)
        issued = await http.post(f"{servers.http}/v1/tokens", headers=bearer(ALICE))
        token = issued.json()["token"]
        for protocol in ([f"baton.key.{NOT_A_KEY}"], ["baton.v1", f"baton.key.{ALICE}"]):
            try:
                _, frames = await in_thread(
                    partial(ws_conversation, servers.ws, [start("private")], subprotocols=protocol)
                )
                bodies.append(json.dumps(frames))
            except InvalidStatus as exc:
                bodies.append(exc.response.body.decode() if exc.response.body else "")
        bodies.append(
            json.dumps(
                await in_thread(partial(ws_conversation, f"{servers.ws}?token={token}", [start()]))
            )
        )
        status = await http.get(f"{servers.http}/status")
        metrics = await http.get(f"{servers.http}/metrics")
    assert set(status.json()["clients"]) == {"alice", "bob"}  # by name
    # Baton's own logs and the servers' libraries; the test's clients log what they send.
    clients = ("websockets.client", "httpx", "httpcore", "openai")
    logs = [r.getMessage() for r in caplog.records if not r.name.startswith(clients)]
    assert any("client alice" in line for line in logs)  # logs name the client
    assert 'client="alice"' in metrics.text  # and so do the metrics of its streams
    seen = "\n".join([*bodies, *logs, status.text, metrics.text])
    assert "invalid_api_key" in seen and "alice" in seen  # the captures hold what they should
    for secret in (ALICE, BOB, NOT_A_KEY, "SECRETKEY", token):
        assert secret not in seen


async def wait_until(condition: Callable[[], bool], *, within: float = 5.0) -> None:
    with trio.move_on_after(within):
        while not condition():
            await trio.sleep(0.01)
    assert condition(), f"not true after {within} s"


# --- tokens_per_minute counts every kind of output ------------------------------------------------


async def test_the_token_meter_counts_reasoning_and_tool_arguments(
    autojump_clock: trio.testing.MockClock,
) -> None:
    window = TokenWindow(1000)
    meter = TokenMeter(window)
    s = "st_x"
    batch: list[ClientEvent] = [
        Reasoning(stream=s, seq=1, text="r" * 8),  # 2 tokens
        Delta(stream=s, seq=2, text="t" * 4),  # 1
        # The name and arguments, 'sum{"a": 1, "b": 22}': 20 characters, 5 tokens.
        ToolCall(stream=s, seq=3, index=0, id="call_1", name="sum", arguments='{"a": 1, "b": 22}'),
        ToolCallPart(stream=s, seq=4, index=1, id="call_2", name="mul", arguments=""),  # 1
        ToolCallPart(stream=s, seq=5, index=1, id=None, name=None, arguments='{"x": 10}'),  # 3
    ]
    meter.see(batch)
    assert window.count(trio.current_time()) == 2 + 1 + 5 + 1 + 3
    meter.see([Delta(stream=s, seq=6, text="abcdefgh")])
    assert window.count(trio.current_time()) == 12 + 2
    # The provider's count replaces the attempt's estimates at the end.
    usage = Usage(prompt_tokens=5, completion_tokens=28, total_tokens=33)
    done = Done(stream=s, seq=7, finish_reason="stop", provider="a", model="m", usage=usage)
    meter.see([done])
    assert window.count(trio.current_time()) == pytest.approx(28)
