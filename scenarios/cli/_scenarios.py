"""``baton scenarios``: run the fault-injection suites, replay a failure, measure reliability.

::

    baton scenarios list
    baton scenarios run [SUITE...] [--examples N] [--seed S] [--config baton.toml]
                        [--real-sockets] [--replay BLOB]
    baton scenarios reliability [--streams N] [--fail-rate 0.08] [--quick]

``run`` exits with 1 when a suite finds an invariant violation (or a replayed scenario still
breaks one), 2 on a bad argument, configuration or blob, and 0 otherwise.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from typing import TextIO

from actors import BatonConfig, ConfigError
from transport import configure_logging, load_config

from .._invariants import INVARIANTS, describe
from .._reliability import ReliabilitySettings, format_reliability, run_reliability
from .._runner import format_scenario, format_suite, replay, run_suite
from .._suites import SUITES

MAX_STREAMS = 1000  # reliability runs stay bounded in time and memory


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``scenarios`` subcommands to ``parser``."""
    sub = parser.add_subparsers(dest="scenarios_command", required=True)
    sub.add_parser("list", help="list the suites and the invariants they check")
    run = sub.add_parser(
        "run", help="search suites for invariant violations (all suites by default)"
    )
    run.add_argument("suites", nargs="*", metavar="SUITE", help=f"one of: {', '.join(SUITES)}")
    run.add_argument("--examples", type=int, default=100, help="scenarios per suite (default 100)")
    run.add_argument(
        "--seed",
        type=int,
        default=0,
        help="the search's seed: the same seed draws the same scenarios",
    )
    run.add_argument(
        "--config", help="run against this baton.toml's providers, routes and policies"
    )
    run.add_argument(
        "--real-sockets",
        action="store_true",
        help="through the httpx adapters and simulated HTTP providers on 127.0.0.1",
    )
    run.add_argument(
        "--replay", metavar="BLOB", help="play one scenario from a report's replay blob"
    )
    run.add_argument(
        "--log-level", default="CRITICAL", choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
    )
    rel = sub.add_parser(
        "reliability", help="the same failing providers, directly and through Baton, side by side"
    )
    rel.add_argument(
        "--streams",
        type=int,
        default=200,
        help=f"client streams per side (default 200, at most {MAX_STREAMS})",
    )
    rel.add_argument(
        "--fail-rate",
        type=float,
        default=0.08,
        help="share of requests the primary breaks (default 0.08)",
    )
    rel.add_argument(
        "--backup-fail-rate",
        type=float,
        default=None,
        help="share the backup breaks (default: --fail-rate)",
    )
    rel.add_argument(
        "--token-delay", type=float, default=0.005, help="seconds between tokens (default 0.005)"
    )
    rel.add_argument(
        "--timeout",
        type=float,
        default=2.0,
        help="Baton's upstream first-token and idle timeout (default 2)",
    )
    rel.add_argument("--concurrency", type=int, default=8, help="streams at once (default 8)")
    rel.add_argument("--seed", type=int, default=1, help="seed of the fault tables (default 1)")
    rel.add_argument(
        "--budget", type=float, default=60.0, help="seconds the whole run may take (default 60)"
    )
    rel.add_argument("--quick", action="store_true", help="a smoke run: 20 streams")
    rel.add_argument(
        "--log-level", default="CRITICAL", choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
    )


def run(args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the ``scenarios`` subcommand ``args`` names; returns the exit status."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    if args.scenarios_command == "list":
        return _list(out)
    _quiet_logging(args.log_level)
    if args.scenarios_command == "reliability":
        return _reliability(args, out, err)
    try:
        user_config = load_config(args.config) if args.config else None
    except ConfigError as exc:
        print(f"baton: bad configuration: {exc}", file=err)
        return 2
    if args.replay:
        return _replay(args, user_config, out, err)
    unknown = [name for name in args.suites if name not in SUITES]
    if unknown or args.examples < 1:
        what = f"unknown suite {', '.join(unknown)}" if unknown else "--examples must be at least 1"
        print(f"baton scenarios: {what} (suites: {', '.join(SUITES)})", file=err)
        return 2
    return _run(args, user_config, out, err)


def _quiet_logging(level: str) -> None:
    # Faults make Baton log warnings by the thousand; the tables say what matters.
    configure_logging(level=level)
    for handler in logging.getLogger().handlers:
        handler.setLevel(level)


def _list(out: TextIO) -> int:
    print("Suites (baton scenarios run SUITE...):", file=out)
    for suite in SUITES.values():
        print(f"  {suite.name:<10} {suite.summary}", file=out)
    print(f"Invariants checked on every run: {', '.join(INVARIANTS)}", file=out)
    print("Other commands: baton scenarios reliability [--streams N] [--fail-rate P]", file=out)
    return 0


def _run(
    args: argparse.Namespace, user_config: BatonConfig | None, out: TextIO, err: TextIO
) -> int:
    names = args.suites or list(SUITES)
    interactive = err.isatty()

    def progress(suite: str, runs: int, examples: int) -> None:
        if interactive:
            print(
                f"\r  {suite}: {runs} runs ({examples} examples asked)",
                end="",
                file=err,
                flush=True,
            )

    failed = 0
    totals = [0, 0, 0]
    for name in names:
        print(
            f"running {name} ({args.examples} examples, seed {args.seed})...", file=err, flush=True
        )
        report = run_suite(
            name, examples=args.examples, seed=args.seed, user_config=user_config,
            real_sockets=args.real_sockets, progress=progress,
        )  # fmt: skip
        if interactive:
            print(file=err)
        print(
            format_suite(report, config_path=args.config, real_sockets=args.real_sockets), file=out
        )
        print(file=out, flush=True)
        failed += report.failure is not None
        totals[0] += report.examples
        totals[1] += report.streams
        totals[2] += report.failovers
    verdict = f"{failed} with violations" if failed else "no violations"
    print(
        f"scenarios: {len(names)} suites, {totals[0]} examples, {totals[1]} streams, "
        f"{totals[2]} failovers: {verdict}",
        file=out,
    )
    return 1 if failed else 0


def _replay(
    args: argparse.Namespace, user_config: BatonConfig | None, out: TextIO, err: TextIO
) -> int:
    try:
        scenario, history, violations = replay(
            args.replay, user_config=user_config, real_sockets=args.real_sockets
        )
    except ValueError as exc:
        print(f"baton scenarios: cannot replay: {exc}", file=err)
        return 2
    if args.suites and args.suites != [scenario.suite]:
        print(f"note: the blob is a {scenario.suite} scenario; replaying it as such", file=err)
    print(f"replaying a {scenario.suite} scenario:", file=out)
    for line in format_scenario(scenario):
        print(f"  {line}", file=out)
    print("what the clients saw:", file=out)
    for run in history.clients:
        print(f"  client {run.index}: {describe(run)}", file=out)
    if violations:
        print(f"{len(violations)} violations:", file=out)
        for violation in violations:
            print(f"  {violation}", file=out)
        return 1
    print("no violation: every invariant holds", file=out)
    return 0


def _reliability(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    streams = 20 if args.quick else args.streams
    rates = (args.fail_rate, args.backup_fail_rate if args.backup_fail_rate is not None else 0.0)
    if (
        not 1 <= streams <= MAX_STREAMS
        or not all(0 <= r <= 1 for r in rates)
        or args.concurrency < 1
    ):
        print(
            f"baton scenarios reliability: --streams must be 1-{MAX_STREAMS}, rates 0-1, "
            "--concurrency >= 1",
            file=err,
        )
        return 2
    settings = ReliabilitySettings(
        streams=streams, fail_rate=args.fail_rate, backup_fail_rate=args.backup_fail_rate,
        token_delay=args.token_delay, timeout=args.timeout, concurrency=args.concurrency,
        seed=args.seed, budget=args.budget,
    )  # fmt: skip
    print(
        f"running {streams} streams directly, then through Baton (real sockets, real clock)...",
        file=err,
        flush=True,
    )
    report = run_reliability(settings)
    command = [
        "baton",
        "scenarios",
        "reliability",
        "--streams",
        str(streams),
        "--fail-rate",
        f"{args.fail_rate:g}",
    ]
    if args.backup_fail_rate is not None:
        command += ["--backup-fail-rate", f"{args.backup_fail_rate:g}"]
    command += ["--seed", str(args.seed)]
    print(format_reliability(report, command=shlex.join(command)), file=out)
    return 0
