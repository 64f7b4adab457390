"""The process edge: logging setup and the one line each finished stream leaves."""

from __future__ import annotations

import json
import logging

import trio
import trio.lowlevel

from actors import open_baton, short_id
from scenarios import Behaviour, FakeProvider, FaultSchedule
from tests.actors.conftest import make_config, run_stream
from transport import JSONFormatter, configure_logging


def test_json_log_lines_are_one_object_per_line():
    record = logging.LogRecord(
        "actors._session",
        logging.WARNING,
        __file__,
        1,
        "stream %s: failover %s -> %s",
        ("st_1", "a", "b"),
        None,
    )
    line = JSONFormatter().format(record)
    data = json.loads(line)
    assert data["level"] == "WARNING" and data["logger"] == "actors._session"
    assert data["message"] == "stream st_1: failover a -> b"
    assert "\n" not in line


def test_configure_logging_installs_one_handler_of_the_chosen_format():
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        configure_logging(log_format="json", level="WARNING")
        assert len(root.handlers) == 1 and isinstance(root.handlers[0].formatter, JSONFormatter)
        assert root.level == logging.WARNING
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


async def test_each_finished_stream_logs_one_info_line_and_failovers_warn(autojump_clock, caplog):
    caplog.set_level(logging.INFO, logger="actors")
    providers = {
        "a": FakeProvider("a", FaultSchedule.always(Behaviour("reset", at_token=3))),
        "b": FakeProvider("b"),
    }
    async with open_baton(
        make_config(a={"api_key_env": "BATON_TEST_SECRET_KEY"}), providers
    ) as baton:
        run = await run_stream(baton)
        await trio.lowlevel.checkpoint()
    finished = [r for r in caplog.records if "finished" in r.getMessage()]
    assert len(finished) == 1 and finished[0].levelno == logging.INFO
    message = finished[0].getMessage()
    assert short_id(run.events[0].stream) in message and run.events[0].stream not in message
    for part in ("route=default", "providers=a,b", "outcome=done", "ttft=", "duration=", "deltas="):
        assert part in message
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("failover a -> b" in w for w in warnings)
