"""Baton as a user runs it: real sockets all the way, from a ``websockets`` client through the
WebSocket server, the actors and the httpx adapters to simulated providers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json

import pytest
import trio
from websockets.asyncio.client import connect

from actors import Message, config_from_dict
from scenarios import Behaviour, FaultSchedule, answer_tokens, open_simulated_provider
from scenarios.cli import default_config, main
from transport import build_providers, load_config, run_baton

MESSAGES = [{"role": "user", "content": "Tell me about rivers."}]
ANSWER = "".join(answer_tokens([Message(**m) for m in MESSAGES]))


def websocket_stream(url: str, start: dict) -> list[dict]:
    """Run one stream with the independent ``websockets`` client (in its own event loop)."""

    async def talk() -> list[dict]:
        async with connect(url) as ws:
            await ws.send(json.dumps(start))
            events = []
            while True:
                event = json.loads(await asyncio.wait_for(ws.recv(), 20))
                events.append(event)
                if event["type"] in ("done", "error"):
                    return events

    return asyncio.run(talk())


def text_of(events: list[dict]) -> str:
    return "".join(e["text"] for e in events if e["type"] == "delta")


@pytest.mark.parametrize("kind_b", ["openai", "anthropic"])
async def test_a_reset_after_k_tokens_reaches_the_client_as_one_failover_and_every_token_once(
    kind_b,
):
    async with (
        open_simulated_provider(FaultSchedule.always(Behaviour("reset", at_token=7))) as a,
        open_simulated_provider() as b,
    ):
        config = config_from_dict(
            {
                "server": {"ws_port": 0, "http_port": 0},
                "providers": {
                    "a": {"kind": "openai", "base_url": a.base_url_openai},
                    "b": {
                        "kind": kind_b,
                        "base_url": b.base_url_anthropic
                        if kind_b == "anthropic"
                        else b.base_url_openai,
                    },
                },
                "routes": {
                    "default": {
                        "targets": [
                            {"provider": "a", "model": "ma"},
                            {"provider": "b", "model": "mb"},
                        ]
                    }
                },
            }
        )
        async with trio.open_nursery() as nursery:
            ws_port, _ = await nursery.start(run_baton, config, build_providers(config))
            url = f"ws://127.0.0.1:{ws_port}/v1/stream"
            events = await trio.to_thread.run_sync(
                websocket_stream, url, {"type": "start", "model": "default", "messages": MESSAGES}
            )
            with trio.fail_after(5):
                await a.wait_all_closed()
                await b.wait_all_closed()
            nursery.cancel_scope.cancel()
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert text_of(events) == ANSWER
    failovers = [e for e in events if e["type"] == "failover"]
    assert len(failovers) == 1 and failovers[0]["from"] == "a" and failovers[0]["to"] == "b"
    assert failovers[0]["mode"] == "continue"
    assert events[-1]["type"] == "done" and events[-1]["provider"] == "b"
    assert [e["type"] for e in events].count("done") == 1
    assert len(a.log) == 1 and len(a.log[0].tokens_sent) == 7
    # b continued from where a stopped: it sent only the rest of the answer.
    assert a.log[0].text_sent + b.log[0].text_sent == ANSWER
    assert a.open_attempts == [] and b.open_attempts == []


async def test_the_embedded_default_streams_across_openai_and_anthropic_simulators():
    async with open_simulated_provider() as oa, open_simulated_provider() as an:
        config = default_config(
            oa.base_url_openai, an.base_url_anthropic, host="127.0.0.1", ws_port=0, http_port=0
        )
        async with trio.open_nursery() as nursery:
            ws_port, _ = await nursery.start(run_baton, config, build_providers(config))
            events = await trio.to_thread.run_sync(
                websocket_stream, f"ws://127.0.0.1:{ws_port}/v1/stream",
                {"type": "start", "model": "default", "messages": MESSAGES, "ref": "x"},
            )  # fmt: skip
            nursery.cancel_scope.cancel()
    assert (
        events[0]["type"] == "started"
        and events[0]["ref"] == "x"
        and events[0]["provider"] == "sim-openai"
    )
    assert text_of(events) == ANSWER and events[-1]["type"] == "done"


def test_a_bad_config_file_stops_startup_with_one_clear_message(tmp_path, capsys):
    path = tmp_path / "baton.toml"
    path.write_text(
        '[providers.a]\nkind = "openai"\nbase_url = "http://x"\nmax_connections = "ten"\n'
        '[routes.default]\ntargets = [{ provider = "a", model = "m" }]\n'
    )
    assert main(["serve", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: providers.a.max_connections: must be an integer" in err


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "[routes.default]\ntargets = [{ provider = 'nope', model = 'm' }]\n",
            "routes.default.targets[0].provider: names unknown provider 'nope'",
        ),
        (
            "[providers.a]\nkind = 'openai'\nbase_url = 'http://x'\ncolour = 1\n",
            "providers.a.colour: unknown key",
        ),
        ("[providers.a\n", "is not valid TOML"),
        ("[providers.a]\nbase_url = 'http://x'\n", "providers.a.kind: is required"),
        ("[server]\nmax_read_delay = -0.1\n", "server.max_read_delay: must not be negative"),
        (
            "[providers.a]\nkind = 'openai'\nbase_url = 'http://x'\nidle_timeout = 0.2\n",
            "providers.a.idle_timeout: must be longer than server.max_read_delay (0.25 s), not 0.2",
        ),
    ],
)
def test_config_mistakes_name_the_file_and_key(tmp_path, text, message):
    from actors import ConfigError

    path = tmp_path / "baton.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and message in str(info.value)


def sdk_stream(base_url: str) -> tuple[str, list[str]]:
    """Stream one answer with the official openai SDK; returns its text and the chunks' models."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
    text, models = "", []
    for chunk in client.chat.completions.create(model="default", messages=MESSAGES, stream=True):
        models.append(chunk.model)
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    return text, models


@pytest.mark.parametrize("first, second", [("openai", "anthropic"), ("anthropic", "openai")])
async def test_the_openai_sdk_streams_across_a_midstream_failover_between_provider_kinds(
    first, second
):
    import httpx

    async with (
        open_simulated_provider(FaultSchedule.always(Behaviour("reset", at_token=9))) as a,
        open_simulated_provider() as b,
    ):
        url = {"openai": lambda s: s.base_url_openai, "anthropic": lambda s: s.base_url_anthropic}
        config = config_from_dict(
            {
                "server": {"ws_port": 0, "http_port": 0},
                "providers": {
                    "a": {"kind": first, "base_url": url[first](a)},
                    "b": {"kind": second, "base_url": url[second](b)},
                },
                "routes": {
                    "default": {
                        "targets": [
                            {"provider": "a", "model": "model-a"},
                            {"provider": "b", "model": "model-b"},
                        ]
                    }
                },
            }
        )
        async with trio.open_nursery() as nursery:
            _, http_port = await nursery.start(run_baton, config, build_providers(config))
            base = f"http://127.0.0.1:{http_port}"
            text, models = await trio.to_thread.run_sync(sdk_stream, base + "/v1")
            async with httpx.AsyncClient(base_url=base) as client:
                metrics = (await client.get("/metrics")).text
                status = (await client.get("/status")).json()
            nursery.cancel_scope.cancel()
    assert text == ANSWER
    assert models[0] == "model-a" and models[-1] == "model-b"
    labels = 'from="a",phase="midstream",reason="reset",route="default",to="b"'
    assert f"proxy_failovers_total{{{labels}}} 1.0" in metrics
    requests = 'model="model-b",outcome="done",provider="b",route="default"'
    assert f"proxy_requests_total{{{requests}}} 1.0" in metrics
    assert status["providers"]["a"]["consecutive_failures"] == 1
    assert status["providers"]["b"]["kind"] == second
