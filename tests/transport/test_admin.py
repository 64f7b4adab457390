"""The operator endpoints behind ``[server] admin_key_env``, and provider keys kept secret.

``/status`` and ``/metrics`` answer only with ``Authorization: Bearer <admin key>``;
``/healthz`` and ``/readyz`` stay open. A provider key given through ``api_key_env`` reaches
the provider and nothing else: not the logs (at DEBUG), ``/status``, ``/metrics`` or any error
body, also when the provider refuses it (401) or cannot be reached.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trio
import trustme

from actors import ConfigError, config_from_dict, open_baton
from scenarios import FakeProvider
from transport import MetricsEndpoint, build_app, build_providers, run_baton

from .test_drain import BATON, free_port
from .test_http import PROMPT, client_for_tests, one_target, running

ADMIN_ENV = "BATON_TEST_ADMIN_KEY"
ADMIN_KEY = "adm-0123456789abcdef"
SECRET = "sk-SECRETPROVIDERKEY123"
ADMIN_PATHS = ("/status", "/metrics")


def with_admin_key(config: dict[str, Any]) -> dict[str, Any]:
    return {**config, "server": {**config.get("server", {}), "admin_key_env": ADMIN_ENV}}


@pytest.fixture
def admin_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(ADMIN_ENV, ADMIN_KEY)
    return ADMIN_KEY


@pytest.mark.parametrize("path", ["/status", "/metrics"])
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-key", f"Basic {ADMIN_KEY}", f"Bearer {ADMIN_KEY}x", "Bearer"],
)
async def test_operator_endpoints_refuse_a_request_without_the_key(
    admin_key: str, path: str, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"authorization": authorization}
    async with (
        running(with_admin_key(one_target()), {"a": FakeProvider("a")}) as server,
        client_for_tests() as client,
    ):
        response = await client.get(f"{server.url}{path}", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    error = response.json()["error"]
    assert error["code"] == "invalid_api_key" and "Authorization: Bearer" in error["message"]
    assert ADMIN_KEY not in response.text


async def test_operator_endpoints_answer_with_the_key_and_health_checks_need_none(
    admin_key: str,
) -> None:
    bearer = {"authorization": f"Bearer {admin_key}"}
    async with (
        running(with_admin_key(one_target()), {"a": FakeProvider("a")}) as server,
        client_for_tests() as client,
    ):
        status = await client.get(f"{server.url}/status", headers=bearer)
        metrics = await client.get(f"{server.url}/metrics", headers=bearer)
        healthz = await client.get(f"{server.url}/healthz")
        readyz = await client.get(f"{server.url}/readyz")
    assert status.status_code == 200 and "a" in status.json()["providers"]
    assert metrics.status_code == 200 and "proxy_provider_healthy" in metrics.text
    assert (healthz.status_code, readyz.status_code) == (200, 200)


async def test_without_admin_key_env_the_operator_endpoints_are_open() -> None:
    async with (
        running(one_target(), {"a": FakeProvider("a")}) as server,
        client_for_tests() as client,
    ):
        status = await client.get(f"{server.url}/status")
    assert status.status_code == 200


async def test_an_unset_admin_key_variable_stops_start_up_naming_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ADMIN_ENV, raising=False)
    config = config_from_dict(with_admin_key(one_target()))
    with pytest.raises(ConfigError, match=rf"server\.admin_key_env.*{ADMIN_ENV}"):
        await run_baton(config, {"a": FakeProvider("a")})
    async with open_baton(config, {"a": FakeProvider("a")}) as baton:
        with pytest.raises(ConfigError, match=r"server\.admin_key_env"):
            build_app(baton, metrics=MetricsEndpoint())


# --- provider keys stay secret -----------------------------------------------------------------


async def serve_refusing_provider(
    heads: list[bytes], *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """A provider that answers every request 401, as one does to a revoked key."""
    body = orjson.dumps(
        {"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error",
                   "param": None, "code": "invalid_api_key"}}
    )  # fmt: skip

    async def answer(stream: trio.SocketStream) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            data = await stream.receive_some()
            if not data:
                return
            head += data
        heads.append(head)
        await stream.send_all(
            b"HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\n"
            b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        )
        await stream.aclose()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(answer, listeners)


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_a_provider_key_appears_in_no_log_status_metrics_or_error_body(
    admin_key: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("BATON_TEST_PROVIDER_KEY", SECRET)
    heads: list[bytes] = []
    seen: list[str] = []
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_refusing_provider, heads)
        refusing = f"http://127.0.0.1:{port}"
        unreachable = f"http://127.0.0.1:{closed_port()}"
        config = with_admin_key(
            {
                "providers": {
                    name: {
                        "kind": kind,
                        "base_url": url,
                        "api_key_env": "BATON_TEST_PROVIDER_KEY",
                        "retries": 0,
                    }
                    for name, kind, url in [
                        ("refusing", "openai", f"{refusing}/v1"),
                        ("refusing-anthropic", "anthropic", refusing),
                        ("unreachable", "openai", f"{unreachable}/v1"),
                    ]
                },
                "routes": {
                    "default": {
                        "targets": [
                            {"provider": "refusing", "model": "m"},
                            {"provider": "refusing-anthropic", "model": "m"},
                            {"provider": "unreachable", "model": "m"},
                        ],
                        "queue_timeout": 0.5,
                    },
                    "down": {
                        "targets": [{"provider": "unreachable", "model": "m"}],
                        "queue_timeout": 0.5,
                    },
                },
            }
        )
        baton_config = config_from_dict(config)
        async with (
            running(config, build_providers(baton_config)) as server,
            client_for_tests() as client,
        ):
            for model in ("default", "down"):
                for stream in (True, False):
                    body = {"model": model, "messages": PROMPT, "stream": stream}
                    response = await client.post(f"{server.url}/v1/chat/completions", json=body)
                    assert response.status_code >= 400
                    seen.append(response.text)
            bearer = {"authorization": f"Bearer {admin_key}"}
            for path in ("/status", "/metrics", "/readyz"):
                seen.append((await client.get(f"{server.url}{path}", headers=bearer)).text)
        nursery.cancel_scope.cancel()
    # The key did reach the provider, both ways a provider takes it...
    assert any(b"authorization: Bearer " + SECRET.encode() in h for h in heads)
    assert any(b"x-api-key: " + SECRET.encode() in h for h in heads)
    # ...and nowhere else.
    assert caplog.records, "nothing was logged: the check below would prove nothing"
    assert SECRET not in caplog.text
    for text in seen:
        assert SECRET not in text
    assert SECRET[3:] not in caplog.text + "".join(seen)  # not even without its prefix


async def test_baton_serve_over_tls_keeps_the_keys_out_of_its_output(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    http, ws = free_port(), free_port()
    heads: list[bytes] = []
    output = tmp_path / "baton.log"
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_refusing_provider, heads)
        config = tmp_path / "baton.toml"
        config.write_text(
            f'[server]\nhttp_port = {http}\nws_port = {ws}\ntls_cert = "{cert_path}"\n'
            f'tls_key = "{key_path}"\nadmin_key_env = "{ADMIN_ENV}"\n'
            '[providers.refusing]\nkind = "openai"\n'
            f'base_url = "http://127.0.0.1:{port}/v1"\napi_key_env = "PROVIDER_KEY"\n'
            '[providers.unreachable]\nkind = "anthropic"\n'
            f'base_url = "http://127.0.0.1:{closed_port()}"\napi_key_env = "PROVIDER_KEY"\n'
            "[routes.default]\nqueue_timeout = 0.5\ntargets = [\n"
            '  { provider = "refusing", model = "m" },\n'
            '  { provider = "unreachable", model = "m" },\n]\n'
        )
        environ = {**os.environ, ADMIN_ENV: ADMIN_KEY, "PROVIDER_KEY": SECRET}
        command = [*BATON, "serve", "--config", str(config), "--log-level", "DEBUG"]
        with output.open("wb") as out:
            process = await trio.lowlevel.open_process(
                command, stdout=out, stderr=subprocess.STDOUT, env=environ
            )
        seen: list[str] = []
        try:
            context = ssl.create_default_context()
            ca.configure_trust(context)
            base = f"https://127.0.0.1:{http}"
            async with httpx.AsyncClient(verify=context, timeout=10) as client:
                with trio.fail_after(30):
                    while True:
                        try:
                            if (await client.get(f"{base}/healthz")).status_code == 200:
                                break
                        except httpx.TransportError:
                            assert process.returncode is None, output.read_text()
                        await trio.sleep(0.05)
                for stream in (True, False):
                    body = {"model": "default", "messages": PROMPT, "stream": stream}
                    response = await client.post(f"{base}/v1/chat/completions", json=body)
                    assert response.status_code >= 400
                    seen.append(response.text)
                bearer = {"authorization": f"Bearer {ADMIN_KEY}"}
                for path in ("/status", "/metrics"):
                    response = await client.get(f"{base}{path}", headers=bearer)
                    assert response.status_code == 200
                    seen.append(response.text)
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(15):
                assert await process.wait() == 0
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                await process.wait()
        nursery.cancel_scope.cancel()
    log = output.read_text(errors="replace")
    assert any(SECRET.encode() in head for head in heads)  # the key was used
    assert "Baton listening" in log and "DEBUG" in log
    for text in (log, *seen):
        assert SECRET not in text and SECRET[3:] not in text
        assert ADMIN_KEY not in text


async def test_with_admin_port_the_operator_endpoints_have_a_listener_of_their_own(
    admin_key: str,
) -> None:
    admin_port = free_port()
    config = with_admin_key(one_target())
    config["server"] |= {"ws_port": 0, "http_port": 0, "admin_port": admin_port}
    bearer = {"authorization": f"Bearer {admin_key}"}
    operator = f"http://127.0.0.1:{admin_port}"
    async with trio.open_nursery() as nursery:
        _, http_port = await nursery.start(
            lambda task_status: run_baton(
                config_from_dict(config), {"a": FakeProvider("a")}, task_status=task_status
            )
        )
        api = f"http://127.0.0.1:{http_port}"
        async with client_for_tests() as client:
            on_api = {p: await client.get(f"{api}{p}", headers=bearer) for p in ADMIN_PATHS}
            healthz = await client.get(f"{api}/healthz")
            refused = await client.get(f"{operator}/status")
            served = {p: await client.get(f"{operator}{p}", headers=bearer) for p in ADMIN_PATHS}
            checks = [await client.get(f"{operator}{p}") for p in ("/healthz", "/readyz")]
            models = await client.get(f"{operator}/v1/models", headers=bearer)
        nursery.cancel_scope.cancel()
    assert {p: r.status_code for p, r in on_api.items()} == {p: 404 for p in ADMIN_PATHS}
    assert "admin_port" in on_api["/status"].json()["error"]["message"]
    assert healthz.status_code == 200
    assert refused.status_code == 401
    assert {p: r.status_code for p, r in served.items()} == {p: 200 for p in ADMIN_PATHS}
    assert "proxy_provider_healthy" in served["/metrics"].text
    assert [r.status_code for r in checks] == [200, 200]
    assert models.status_code == 404
