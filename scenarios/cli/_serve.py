"""``baton serve``: run the proxy.

``baton serve --config baton.toml`` serves the file's providers and routes. Without ``--config``
it starts two simulated providers on 127.0.0.1 (one speaking OpenAI's API, one Anthropic's) and
a ``default`` route over them, so Baton can be tried with nothing else installed.
"""

from __future__ import annotations

import argparse
import functools
import sys

import trio

from actors import BatonConfig, ConfigError, config_from_dict
from transport import build_providers, configure_logging, load_config, run_baton

from ..sim import SimulatedProvider

POINTERS = """\
Baton is serving two simulated providers (no network, no keys needed):
  WebSocket  ws://{host}:{ws}/v1/stream
  HTTP       http://{host}:{http}/v1   (OpenAI-compatible: set base_url to this)
  status     http://{host}:{http}/status   metrics  http://{host}:{http}/metrics
To proxy real providers, write a baton.toml (see README.md) and run: baton serve --config baton.toml
"""


def default_config(
    openai_url: str, anthropic_url: str, *, host: str, ws_port: int, http_port: int
) -> BatonConfig:
    """The embedded default: a route over a simulated OpenAI and a simulated Anthropic provider."""
    return config_from_dict(
        {
            "server": {"host": host, "ws_port": ws_port, "http_port": http_port},
            "providers": {
                "sim-openai": {"kind": "openai", "base_url": openai_url},
                "sim-anthropic": {"kind": "anthropic", "base_url": anthropic_url},
            },
            "routes": {
                "default": {
                    "targets": [
                        {"provider": "sim-openai", "model": "sim-gpt"},
                        {"provider": "sim-anthropic", "model": "sim-claude"},
                    ]
                }
            },
        },
        source="embedded default",
    )


async def serve_default(host: str, ws_port: int, http_port: int) -> None:
    """Run Baton over two simulated providers until interrupted."""
    openai_sim, anthropic_sim = SimulatedProvider(), SimulatedProvider()
    async with trio.open_nursery() as nursery:
        await nursery.start(openai_sim.serve)
        await nursery.start(anthropic_sim.serve)
        config = default_config(
            openai_sim.base_url_openai, anthropic_sim.base_url_anthropic,
            host=host, ws_port=ws_port, http_port=http_port,
        )  # fmt: skip

        async def run_then_stop(task_status: trio.TaskStatus[tuple[int, int]]) -> None:
            await run_baton(
                config, build_providers(config), handle_signals=True, task_status=task_status
            )
            nursery.cancel_scope.cancel()  # drained after a signal: stop the simulators too

        ports = await nursery.start(run_then_stop)
        print(POINTERS.format(host=host, ws=ports[0], http=ports[1]), flush=True)


async def _start(config: BatonConfig) -> tuple[int, int]:
    async with trio.open_nursery() as nursery:
        ports: tuple[int, int] = await nursery.start(
            functools.partial(run_baton, config, build_providers(config), handle_signals=True)
        )
        server = config.server
        print(
            f"Baton listening: ws://{server.host}:{ports[0]}/v1/stream and http://{server.host}:{ports[1]}/v1",
            flush=True,
        )
    return ports


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``serve``'s options to ``parser``."""
    parser.add_argument("--config", help="a baton.toml; without it, serve two simulated providers")
    parser.add_argument("--host", default="127.0.0.1", help="listen address for the default setup")
    parser.add_argument(
        "--ws-port", type=int, default=8765, help="WebSocket port for the default setup"
    )
    parser.add_argument(
        "--http-port", type=int, default=8080, help="HTTP port for the default setup"
    )
    parser.add_argument("--log-format", choices=["text", "json"], default="text")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted; returns the exit status (2 on a bad configuration)."""
    configure_logging(log_format=args.log_format, level=args.log_level)
    try:
        if args.config:
            config = load_config(args.config)
            trio.run(_start, config)
        else:
            trio.run(functools.partial(serve_default, args.host, args.ws_port, args.http_port))
    except ConfigError as exc:
        print(f"baton: bad configuration: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0
