"""The ``baton`` command: ``serve``, ``scenarios`` and ``bench``.

``main`` builds the parser, adds the options of the one subcommand being run and hands the
parsed arguments to that subcommand's module. It sits at the top of the import graph and
imports a subcommand's module only when that subcommand runs: the suites load hypothesis and
the benchmark its load generator, and ``baton serve`` should start without either.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from . import _serve

DESCRIPTION = "A high-availability streaming proxy for LLM APIs."
COMMANDS = {
    "serve": "run the proxy",
    "bench": "measure Baton's latency, throughput, CPU and memory against a local mock",
    "scenarios": "fault-injection suites, replays and the reliability comparison",
}
BENCH_MODULE = "python -m scenarios.bench"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``baton ARGV...``; returns the exit status (argparse exits 2 on a bad option)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="baton", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)
    subparsers = {name: commands.add_parser(name, help=text) for name, text in COMMANDS.items()}
    # No option comes before the command, so the first word that is not an option names it.
    # Anything else (none, an unknown one, --help) falls through to serve's branch, where
    # argparse reports it.
    match next((arg for arg in argv if not arg.startswith("-")), None):
        case "scenarios":
            from . import _scenarios

            _scenarios.add_arguments(subparsers["scenarios"])
            return _scenarios.run(parser.parse_args(argv))
        case "bench":
            from . import _bench

            _bench.add_arguments(subparsers["bench"])
            return _bench.run(parser.parse_args(argv), command=shlex.join(["baton", *argv]))
        case _:
            _serve.add_arguments(subparsers["serve"])
            return _serve.run(parser.parse_args(argv))


def bench_main(argv: Sequence[str] | None = None) -> int:
    """Run ``python -m scenarios.bench ARGV...``: the options and report of ``baton bench``."""
    from . import _bench

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog=BENCH_MODULE, description=COMMANDS["bench"])
    _bench.add_arguments(parser)
    return _bench.run(parser.parse_args(argv), command=shlex.join([*BENCH_MODULE.split(), *argv]))
