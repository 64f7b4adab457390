"""Baton under test, in its own process: ``python -m scenarios.bench._proxy CONFIG``.

The same three calls as ``baton serve --config CONFIG`` (``load_config``, ``build_providers``,
``run_baton``: WebSocket and HTTP servers, health probes, metrics), except that once both
servers listen it prints one JSON line ``{"ws_port": N, "http_port": M}`` on stdout for the
benchmark to read, and it stops when its stdin closes, so it dies with the benchmark that
started it. Logs go to stderr at ``--log-level`` (WARNING by default: the benchmark counts
warnings and errors as signs of trouble under load).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import trio

from actors import BatonConfig
from transport import build_providers, configure_logging, load_config, run_baton

from ._mock import watch_stdin_then_cancel


async def _run(config: BatonConfig) -> None:
    async with trio.open_nursery() as nursery:
        ws_port, http_port = await nursery.start(run_baton, config, build_providers(config))
        print(json.dumps({"ws_port": ws_port, "http_port": http_port}), flush=True)
        nursery.start_soon(watch_stdin_then_cancel, nursery.cancel_scope)


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the config until stdin closes; see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m scenarios.bench._proxy")
    parser.add_argument("config", help="a baton.toml")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    configure_logging(level=args.log_level)
    try:
        trio.run(_run, load_config(args.config))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
