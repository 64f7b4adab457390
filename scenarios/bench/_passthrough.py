"""The bare stack, for comparison: ``python -m scenarios.bench._passthrough CONFIG``.

A minimal pass-through proxy on the libraries Baton is built on (trio, hypercorn, httpx):
``POST /v1/chat/completions`` swaps the route name in ``model`` for the first target's model,
sends the request to that target's provider with one pooled ``httpx.AsyncClient`` and relays the
response bytes as they arrive. No health, routing, failover, parsing, event log or metrics:
what it costs is what the stack costs, and the benchmark measures Baton against it (the issue's
"40-line pass-through proxy on trio + httpx" row). It reads the same ``baton.toml`` as Baton.

Like ``_proxy`` it prints ``{"http_port": N}`` once it listens and stops when its stdin
closes. Not a proxy to use: a broken upstream simply breaks the client's response.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from functools import partial
from typing import Any

import httpx
import orjson
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from actors import BatonConfig
from transport import LISTEN_BACKLOG, load_config

from ._mock import watch_stdin_then_cancel

_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class PassThrough:
    """The ASGI app: each route goes to its first target, bytes relayed unchanged."""

    def __init__(self, config: BatonConfig, client: httpx.AsyncClient) -> None:
        self._client = client
        self._targets: dict[str, tuple[httpx.URL, str]] = {}
        for name, route in config.routes.items():
            target = route.targets[0]
            base = config.providers[target.provider].base_url.rstrip("/")
            self._targets[name] = (httpx.URL(f"{base}/chat/completions"), target.model)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()  # startup
            await send({"type": "lifespan.startup.complete"})
            await receive()  # shutdown
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = orjson.loads(body)
        url, request["model"] = self._targets[request["model"]]
        async with self._client.stream("POST", url, content=orjson.dumps(request)) as response:
            headers = (
                _SSE if response.status_code == 200 else [(b"content-type", b"application/json")]
            )
            await send(
                {"type": "http.response.start", "status": response.status_code, "headers": headers}
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _run(config: BatonConfig) -> None:
    connections = max(provider.max_connections for provider in config.providers.values())
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    server = HypercornConfig()
    server.bind = ["127.0.0.1:0"]
    server.accesslog = None
    server.errorlog = logging.getLogger("hypercorn.error")  # no handlers: warnings only, on stderr
    server.backlog = LISTEN_BACKLOG  # as Baton's server: 500 connections may arrive at once
    async with (
        httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(30.0)) as client,
        trio.open_nursery() as nursery,
    ):
        # hypercorn types the app with its TypedDict events; ours takes plain mappings.
        app: Any = PassThrough(config, client)
        binds = await nursery.start(partial(serve, app, server, mode="asgi"))
        print(json.dumps({"http_port": int(binds[0].rsplit(":", 1)[1])}), flush=True)
        nursery.start_soon(watch_stdin_then_cancel, nursery.cancel_scope)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the config's routes as a bare pass-through until stdin closes."""
    parser = argparse.ArgumentParser(prog="python -m scenarios.bench._passthrough")
    parser.add_argument("config", help="a baton.toml")
    args = parser.parse_args(argv)
    try:
        trio.run(_run, load_config(args.config))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
