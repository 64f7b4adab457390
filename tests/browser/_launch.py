"""Run ``baton serve``'s embedded default for the browser tests, in a process of its own.

``python -m tests.browser._launch --ws-port W --http-port H [--token-delay S]`` runs the same
``serve_default`` as ``baton serve`` (two simulated providers, route ``default``). With
``--token-delay`` its simulated providers pause before each token, so a browser sees an answer
stream for a few seconds and can cancel it or go offline in the middle; with
``--first-reset-at K`` the OpenAI simulator's first answer is cut (a TCP reset) after K tokens,
so that answer fails over mid-stream. The simulators it makes are the ones ``serve_default``
hands its ``SimulatorFaults``, so the page's fault buttons break them as they would in
``baton serve``.
"""

from __future__ import annotations

import argparse
import logging

import trio

from scenarios import Behaviour, FaultSchedule, Rule
from scenarios.cli import _serve
from scenarios.sim import SimulatedProvider
from transport import configure_logging


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ws-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--token-delay", type=float, default=0.0)
    parser.add_argument("--first-reset-at", type=int, default=None)
    args = parser.parse_args()
    configure_logging(log_format="text", level="INFO")
    logging.getLogger("transport._ws").setLevel(logging.DEBUG)  # "client cancels stream ..."
    if args.token_delay or args.first_reset_at is not None:
        slow = Behaviour(token_delay=args.token_delay)
        schedules = [FaultSchedule(default=slow)] * 2
        if args.first_reset_at is not None:
            # serve_default makes the OpenAI simulator first: its first answer breaks.
            reset = Behaviour("reset", at_token=args.first_reset_at, token_delay=args.token_delay)
            schedules[0] = FaultSchedule((Rule(reset, last_request=0),), default=slow)
        made = iter(schedules)
        _serve.SimulatedProvider = lambda: SimulatedProvider(next(made))  # type: ignore[misc,assignment]
    trio.run(_serve.serve_default, "127.0.0.1", args.ws_port, args.http_port)


if __name__ == "__main__":
    main()
