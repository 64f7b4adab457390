"""``baton bench`` (also ``python -m scenarios.bench``): measure what Baton costs on this machine.

Starts a fast OpenAI-compatible mock, Baton and a bare pass-through proxy on Baton's libraries
(each in its own process, on 127.0.0.1), drives latency, throughput and capacity workloads
through Baton's HTTP/SSE and WebSocket APIs, through the pass-through and straight to the mock,
and prints a table per workload, a verdict per target and Baton against the bare stack. The
default run takes about three minutes; ``--quick`` takes seconds with small counts. Linux only
(CPU and memory are read from ``/proc``).

    baton bench                            # the full run
    baton bench --quick                    # a smoke run
    baton bench --profile /tmp/baton-profile   # then profile Baton with py-spy

This module turns the options into ``BenchSettings`` and the run into a report; the benchmark
itself is ``scenarios.bench``.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

import attrs
import trio

from ..bench import (
    DEFAULT,
    QUICK,
    TARGETS,
    WORKLOADS,
    BenchSettings,
    format_profile,
    format_report,
    hot_spots,
    proc_available,
    py_spy_available,
    run_bench,
    to_json,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's options to ``parser``."""
    parser.add_argument(
        "--quick", action="store_true", help="a short run (seconds) with small counts"
    )
    parser.add_argument(
        "--workloads", nargs="+", choices=WORKLOADS, help="run only these workloads"
    )
    parser.add_argument("--targets", nargs="+", choices=TARGETS, help="run only these targets")
    parser.add_argument("--throughput-seconds", type=float, help="seconds per target and round")
    parser.add_argument("--throughput-streams", type=int, help="concurrent streams (default 50)")
    parser.add_argument(
        "--capacity-streams", type=int, help="slow streams open at once (default 500)"
    )
    parser.add_argument(
        "--mock-burst", type=int, help="token events per send at the mock with no delay (default 1)"
    )
    parser.add_argument(
        "--http-client",
        choices=("raw", "httpx"),
        help="the load generator's HTTP client: raw (lean, default) or httpx",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="afterwards, profile Baton with py-spy under the throughput workload",
    )
    parser.add_argument(
        "--profile-workload",
        choices=WORKLOADS,
        default="throughput",
        help="the workload to profile under (default throughput)",
    )
    parser.add_argument(
        "--proxy-log-level", default="INFO", help="Baton's log level (default INFO, as baton serve)"
    )


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    """The run's sizes: the default or quick preset with the options' overrides."""
    settings = QUICK if args.quick else DEFAULT
    overrides = {
        "workloads": tuple(args.workloads) if args.workloads else None,
        "targets": tuple(args.targets) if args.targets else None,
        "throughput_seconds": args.throughput_seconds,
        "throughput_streams": args.throughput_streams,
        "capacity_streams": args.capacity_streams,
        "mock_burst": args.mock_burst,
        "http_client": args.http_client,
    }
    return attrs.evolve(settings, **{k: v for k, v in overrides.items() if v is not None})


def run(args: argparse.Namespace, *, command: str) -> int:
    """Run the benchmark the options describe and print its report; returns the exit status."""
    if not proc_available():
        print(
            "baton bench: needs Linux's /proc to read Baton's CPU time and memory", file=sys.stderr
        )
        return 2
    if args.profile is not None and not py_spy_available():
        print("baton bench: --profile needs py-spy (pip install py-spy)", file=sys.stderr)
        return 2
    if args.profile is not None:
        try:
            args.profile.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"baton bench: cannot use {args.profile} for profiles: {exc}", file=sys.stderr)
            return 2
    settings = settings_from_args(args)
    say = partial(print, flush=True)
    result, status = None, 1
    try:
        result = trio.run(
            partial(
                run_bench,
                settings,
                say=say,
                profile_dir=args.profile,
                profile_workload=args.profile_workload,
                proxy_log_level=args.proxy_log_level,
            )
        )
    except* (RuntimeError, OSError) as group:
        # A child that would not start, py-spy that could not attach: one line, not a traceback.
        print(f"baton bench: {_first_leaf(group)}", file=sys.stderr)
    except* KeyboardInterrupt:
        print("baton bench: interrupted; the mock and Baton were stopped", file=sys.stderr)
        status = 130
    if result is None:
        return status
    print()
    print(format_report(result, command=command))
    for target, raw in result.profiles.items():
        print()
        print(format_profile(hot_spots(raw), f"{args.profile_workload} workload via {target}"))
        print(f"  (raw stacks: {raw}; open in https://speedscope.app or flamegraph.pl)")
    if args.json is not None:
        args.json.write_text(json.dumps(to_json(result), indent=2, default=str))
    return 0


def _first_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
