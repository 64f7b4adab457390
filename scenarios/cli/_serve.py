"""``baton serve``: run the proxy.

``baton serve --config baton.toml`` serves the file's providers and routes. Without ``--config``
it starts two simulated providers on 127.0.0.1 (one speaking OpenAI's API, one Anthropic's) and
a ``default`` route over them, so Baton can be tried with nothing else installed; only then
does the HTTP port answer the page's fault buttons (``/sim/faults``: a ``SimulatorFaults`` over
the two simulators), since only then are the providers Baton's own to break.
"""

from __future__ import annotations

import argparse
import errno
import functools
import socket
import sys

import attrs
import trio

from actors import BatonConfig, ConfigError, ServerConfig, config_from_dict
from transport import build_providers, configure_logging, load_config, run_baton

from ..sim import SimulatedProvider, SimulatorFaults

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
    """Run Baton over two simulated providers, with their fault buttons, until interrupted."""
    openai_sim, anthropic_sim = SimulatedProvider(), SimulatedProvider()
    async with trio.open_nursery() as nursery:
        await nursery.start(openai_sim.serve)
        await nursery.start(anthropic_sim.serve)
        config = default_config(
            openai_sim.base_url_openai, anthropic_sim.base_url_anthropic,
            host=host, ws_port=ws_port, http_port=http_port,
        )  # fmt: skip
        faults = SimulatorFaults({"sim-openai": openai_sim, "sim-anthropic": anthropic_sim})

        async def run_then_stop(task_status: trio.TaskStatus[tuple[int, int]]) -> None:
            await run_baton(
                config, build_providers(config), handle_signals=True, task_status=task_status,
                faults=faults,
            )  # fmt: skip
            nursery.cancel_scope.cancel()  # drained after a signal: stop the simulators too

        ports = await nursery.start(run_then_stop)
        print(POINTERS.format(host=host, ws=ports[0], http=ports[1]), flush=True)


async def _start(config: BatonConfig) -> None:
    # run_baton logs the one "Baton listening" line itself.
    await run_baton(config, build_providers(config), handle_signals=True)


def with_flags(config: BatonConfig, args: argparse.Namespace) -> BatonConfig:
    """``config`` with the listen flags the command line gave: a flag overrides the file."""
    changes = {
        key: value
        for key, value in (
            ("host", args.host), ("ws_port", args.ws_port), ("http_port", args.http_port)
        )
        if value is not None
    }  # fmt: skip
    if not changes:
        return config
    return attrs.evolve(config, server=attrs.evolve(config.server, **changes))


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (0-65535; 0 picks a free one)")
    return port


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``serve``'s options to ``parser``."""
    parser.add_argument("--config", help="a baton.toml; without it, serve two simulated providers")
    parser.add_argument(
        "--host", help="listen address (default 127.0.0.1; overrides [server] host)"
    )
    parser.add_argument(
        "--ws-port", type=_port, help="WebSocket port (default 8765; overrides [server] ws_port)"
    )
    parser.add_argument(
        "--http-port", type=_port, help="HTTP port (default 8080; overrides [server] http_port)"
    )
    parser.add_argument("--log-format", choices=["text", "json"], default="text")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted; returns the exit status (2 on a bad configuration)."""
    configure_logging(log_format=args.log_format, level=args.log_level)
    server = with_flags(BatonConfig(), args).server  # the default setup's listen addresses
    try:
        if args.config:
            config = with_flags(load_config(args.config), args)
            server = config.server
            trio.run(_start, config)
        else:
            trio.run(
                functools.partial(serve_default, server.host, server.ws_port, server.http_port)
            )
    except ConfigError as exc:
        print(f"baton: bad configuration: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    except (OSError, BaseExceptionGroup) as exc:
        in_use = _address_in_use(exc)
        if in_use is None:
            raise
        print(f"baton: {_describe_in_use(in_use, server)}", file=sys.stderr)
        return 1
    return 0


def _address_in_use(exc: BaseException) -> OSError | None:
    """The "address already in use" error inside ``exc`` (a trio nursery groups them), if any."""
    if isinstance(exc, OSError):
        return exc if exc.errno == errno.EADDRINUSE else None
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _address_in_use(inner)
            if found is not None:
                return found
    return None


def _describe_in_use(error: OSError, server: ServerConfig) -> str:
    """One line naming the busy port, the setting that chose it and what to do."""
    # The servers' bind errors do not say which address; find the busy one by trying both.
    for key, flag, port in (
        ("http_port", "--http-port", server.http_port),
        ("ws_port", "--ws-port", server.ws_port),
    ):
        if port and not _can_bind(server.host, port):
            return (
                f"cannot listen on {server.host}:{port} ([server] {key}): the address is already "
                f"in use. Stop the process using it, or choose another port ({flag} or "
                f"[server] {key})."
            )
    return f"cannot listen: {error.strerror or error}; is another Baton running?"


def _can_bind(host: str, port: int) -> bool:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return True  # not this port's fault
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
        try:
            probe.bind(address)
        except OSError:
            return False
    return True
