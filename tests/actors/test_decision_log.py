"""The log line after a failed attempt says in words what Baton does next."""

from __future__ import annotations

import logging

import pytest

from actors import open_baton
from actors.policy._failover import FailOver, Reject, Retry, explain
from scenarios import Behaviour, FaultSchedule

from .conftest import make_config, run_stream

CLASS_NAMES = ("Retry", "FailOver", "Reject")


def test_each_decision_is_explained_in_words():
    assert explain(Retry(delay=0.25, reason="upstream_503"), alternatives=True) == (
        "retrying the same target in 0.2 s"
    )
    assert "same target" in explain(Retry(delay=0.0, reason="p", instruct=True), alternatives=True)
    assert explain(FailOver(reason="reset"), alternatives=True) == (
        "failing over to the next target"
    )
    assert "no other target" in explain(FailOver(reason="reset"), alternatives=False)
    assert explain(Reject(reason="upstream_400"), alternatives=True).startswith("rejecting: ")


@pytest.mark.parametrize(
    ("behaviour", "words"),
    [
        (Behaviour("reset", at_token=3), "failing over to the next target"),
        (Behaviour("status", status=503), "retrying the same target in "),
        (Behaviour("status", status=400), "rejecting: the provider refused the request"),
    ],
)
async def test_the_failed_attempt_log_line_says_what_happens_next(
    autojump_clock, fakes, caplog, behaviour, words
):
    providers = fakes(a=FaultSchedule.first(1, behaviour), b=FaultSchedule.healthy())
    with caplog.at_level(logging.WARNING, logger="actors._session"):
        async with open_baton(make_config(), providers) as baton:
            await run_stream(baton)
    [line] = [r.getMessage() for r in caplog.records if "attempt on a failed" in r.getMessage()]
    assert words in line
    assert not any(name in line for name in CLASS_NAMES)
