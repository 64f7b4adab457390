"""Baton in front of a real OpenAI-compatible server it did not write, one without ``/v1/models``.

The server is the PyPI package ``mockllm`` (a FastAPI app under uvicorn, in a subprocess): it
answers ``POST /v1/chat/completions``, streamed one character per chunk or whole, and ``GET
/v1/models`` with 404. Before the probe fallback, three such 404s marked it unhealthy and every
request through Baton failed from then on. Here Baton runs as ``baton serve`` runs it
(``build_providers``, ``run_baton``) with fast probes, on real time (a subprocess breaks
``MockClock``), and the test checks, after many probe intervals, that the official ``openai``
SDK gets answers through Baton and that ``/status``, ``/readyz`` and the metrics call the server
healthy and probed by chat.
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trio

from actors import config_from_dict
from transport import build_providers, run_baton

pytest.importorskip("mockllm", reason="mockllm (the test extra) is not installed")

RESPONSES = """\
responses:
  "hello": "Hello there, this is a mock answer from an independent server."
defaults:
  unknown_response: "I am a mock server and I answer everything the same way."
settings:
  lag_enabled: false
"""
# Baton always streams from upstream, and mockllm 0.0.8 looks a streamed answer up twice (the
# second time with the first answer as the prompt): every streamed answer is unknown_response.
ANSWER = "I am a mock server and I answer everything the same way."
START_TIMEOUT = 15.0  # seconds uvicorn gets to start answering
PROBE_INTERVAL = 0.05
INTERVALS = 30  # probe intervals Baton runs before the checks: 10x the failure threshold


@pytest.fixture
def mockllm_url(tmp_path: Path) -> Iterator[str]:
    """Start ``mockllm`` under uvicorn on a socket this test opened; its base URL (``.../v1``).

    The socket listens before uvicorn starts (uvicorn serves it by ``--fd``), so connections
    wait in its backlog instead of failing: readiness is one request with a long timeout, not
    a polling loop.
    """
    responses = tmp_path / "responses.yml"
    responses.write_text(RESPONSES)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    log = (tmp_path / "mockllm.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "mockllm.server:app", "--fd", str(listener.fileno())],
        env={**os.environ, "MOCKLLM_RESPONSES_FILE": str(responses)},
        stdout=log,
        stderr=subprocess.STDOUT,
        pass_fds=(listener.fileno(),),
    )
    try:
        try:
            # mockllm has no /v1/models: its 404 says the app is up (the point of this file).
            answer = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=START_TIMEOUT)
        except httpx.HTTPError as exc:
            code = process.poll()
            raise RuntimeError(
                f"mockllm did not answer (exit code {code}); see {log.name}"
            ) from exc
        assert answer.status_code == 404, answer.text
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        listener.close()
        log.close()


def _config(base_url: str) -> dict[str, Any]:
    health = {
        "failure_threshold": 3, "probe_interval": PROBE_INTERVAL,
        "probe_interval_unhealthy": PROBE_INTERVAL, "probe_timeout": 2.0, "cooldown": 0.5,
    }  # fmt: skip
    return {
        "server": {"host": "127.0.0.1", "ws_port": 0, "http_port": 0},
        "providers": {"mock": {"kind": "openai", "base_url": base_url, "health": health}},
        "routes": {"default": {"targets": [{"provider": "mock", "model": "gpt-4o-mini"}]}},
    }


def _ask(base_url: str, *, stream: bool) -> str:
    """One chat completion through Baton with the official SDK (sync, in a worker thread)."""
    messages: Any = [{"role": "user", "content": "hello"}]
    with openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=10) as client:
        if not stream:
            completion = client.chat.completions.create(model="default", messages=messages)
            return completion.choices[0].message.content or ""
        parts = []
        for chunk in client.chat.completions.create(
            model="default", messages=messages, stream=True
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
        return "".join(parts)


async def _provider_status(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    status: dict[str, Any] = (await client.get(url + "/status")).json()["providers"]["mock"]
    return status


async def test_a_server_without_a_models_endpoint_keeps_serving_through_baton(
    mockllm_url: str,
) -> None:
    config = config_from_dict(_config(mockllm_url))
    providers = build_providers(config, environ={})
    async with trio.open_nursery() as nursery:
        _, http_port = await nursery.start(functools.partial(run_baton, config, providers))
        url = f"http://127.0.0.1:{http_port}"
        async with httpx.AsyncClient(timeout=10) as client:
            with trio.fail_after(10):
                # The models probe's 404 moves the provider to chat probes, which pass.
                while (await _provider_status(client, url))["last_probe"] != "ok":
                    await trio.sleep(PROBE_INTERVAL)
            await trio.sleep(INTERVALS * PROBE_INTERVAL)

            with trio.fail_after(20):
                whole = await trio.to_thread.run_sync(
                    functools.partial(_ask, url + "/v1", stream=False)
                )
                streamed = await trio.to_thread.run_sync(
                    functools.partial(_ask, url + "/v1", stream=True)
                )
            status = await _provider_status(client, url)
            ready = await client.get(url + "/readyz")
            metrics = (await client.get(url + "/metrics")).text.splitlines()
        nursery.cancel_scope.cancel()

    assert whole == ANSWER and streamed == ANSWER
    assert status["state"] == "healthy" and status["usable"] is True, status
    assert status["traffic"] == "all" and status["consecutive_failures"] == 0
    assert (status["probe"], status["last_probe"]) == ("chat", "ok")
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
    assert 'proxy_provider_state{provider="mock",state="healthy"} 1.0' in metrics
    assert 'proxy_provider_state{provider="mock",state="unhealthy"} 0.0' in metrics
    assert 'proxy_provider_healthy{provider="mock"} 1.0' in metrics
