"""The probe fallback: which probe a provider gets, and what an "endpoint missing" answer means.

The pure judgement first, then the health actor and the whole system under ``MockClock`` with
providers whose models endpoint (or every probe endpoint) does not exist.
"""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from actors import Done, Failure, FailureKind, HealthConfig, UpstreamError, open_baton
from actors._health import HealthActor, HealthBoard
from actors.policy._probe import ProbePlan, judge
from scenarios import Behaviour, FakeProvider, FaultSchedule

from .conftest import make_config, run_stream


def status(code: int) -> Failure:
    return Failure(kind=FailureKind.STATUS, status=code, message=f"HTTP {code}")


# --- the pure judgement ------------------------------------------------------------------------


@pytest.mark.parametrize("code", [404, 405, 501])
def test_a_missing_models_endpoint_moves_the_provider_to_chat_probes_without_a_verdict(code):
    judgement = judge(ProbePlan(kind="models"), status(code))
    assert judgement.verdict == "inconclusive"
    assert judgement.change == "to_chat"
    assert judgement.plan == ProbePlan(kind="chat", missing_status=code)
    # From then on chat probes are judged as any probe.
    assert judge(judgement.plan, None).verdict == "ok"
    assert judge(judgement.plan, status(503)).verdict == "failed"
    assert judge(judgement.plan, None).change is None


def test_a_missing_chat_probe_endpoint_makes_probes_inconclusive_and_is_news_once():
    first = judge(ProbePlan(kind="chat", missing_status=404), status(404))
    assert (first.verdict, first.change) == ("inconclusive", "inconclusive")
    assert first.plan.kind == "chat" and first.plan.inconclusive
    again = judge(first.plan, status(404))
    assert (again.verdict, again.change, again.plan) == ("inconclusive", None, first.plan)
    # A provider that stops answering at all still fails its probes.
    refused = Failure(kind=FailureKind.CONNECT, message="connection refused")
    assert judge(first.plan, refused).verdict == "failed"


@pytest.mark.parametrize(
    "failure",
    [
        status(500),
        status(503),
        status(401),
        status(400),
        Failure(kind=FailureKind.CONNECT, message="connection refused"),
        Failure(kind=FailureKind.TIMEOUT, message="no answer within 5 s"),
    ],
)
def test_every_other_probe_failure_is_a_failure_and_keeps_the_plan(failure):
    for plan in (ProbePlan(kind="models"), ProbePlan(kind="chat")):
        judgement = judge(plan, failure)
        assert (judgement.verdict, judgement.change, judgement.plan) == ("failed", None, plan)


# --- the health actor and the system ---------------------------------------------------------


class NoModelsEndpoint(FakeProvider):
    """A server that answers chat completions but has no ``GET /models`` (answers 404)."""

    def __init__(self, name, schedule=None, *, missing=frozenset({"models"}), code=404):
        super().__init__(name, schedule or FaultSchedule.healthy())
        self.missing = missing
        self.code = code
        self.asked: list[str] = []

    async def probe(self, kind):
        self.asked.append(kind)
        if kind in self.missing:
            await trio.lowlevel.checkpoint()
            raise UpstreamError(status(self.code))
        await super().probe(kind)


def warnings_about(caplog, name):
    return [
        r
        for r in caplog.records
        if r.name == "actors._health" and r.levelno == logging.WARNING and name in r.args
    ]


async def test_a_provider_without_a_models_endpoint_is_probed_by_chat_and_stays_healthy(
    autojump_clock, caplog
):
    caplog.set_level(logging.INFO, logger="actors")
    provider = NoModelsEndpoint("p")
    board = HealthBoard()
    cfg = HealthConfig(probe_interval=10.0, failure_threshold=3)
    actor = HealthActor(provider, cfg, board)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        await trio.sleep(10 * 20 + 1)  # twenty probe intervals
        snapshot = board.get("p")
        actor.close()
    assert provider.asked == ["models"] + ["chat"] * 19
    assert snapshot.status == "healthy" and snapshot.consecutive_failures == 0
    assert (snapshot.probe, snapshot.last_probe, snapshot.traffic) == ("chat", "ok", "all")
    assert actor.probe_kind == "chat"
    assert len(warnings_about(caplog, "p")) == 1  # the fallback, once


async def test_without_any_probe_endpoint_probes_count_for_nothing_and_live_traffic_judges(
    autojump_clock, caplog
):
    caplog.set_level(logging.INFO, logger="actors")
    # Every probe endpoint answers 405; live requests 0-2 are refused, later ones answered.
    live = FaultSchedule.first(3, Behaviour("refuse"))
    provider = NoModelsEndpoint("a", live, missing=frozenset({"models", "chat"}), code=405)
    config = make_config(
        ("a",),
        a={"health": {"probe_interval": 1.0, "probe_interval_unhealthy": 1.0, "cooldown": 10.0}},
    )
    async with open_baton(config, {"a": provider}) as baton:
        await trio.sleep(30)  # thirty probes that cannot judge: still healthy
        health = baton.statistics().providers["a"].health
        assert (health.status, health.consecutive_failures) == ("healthy", 0)
        assert (health.probe, health.last_probe) == ("chat", "inconclusive")
        # The fallback to chat probes, and that those cannot judge either: once each.
        assert len(warnings_about(caplog, "a")) == 2
        for _ in range(3):  # three refused live requests open the breaker
            run = await run_stream(baton)
            assert not isinstance(run.terminal, Done)
        await trio.testing.wait_all_tasks_blocked()
        assert baton.statistics().providers["a"].health.status == "unhealthy"
        await trio.sleep(10.5)  # rested; a probe cannot close it, a live trial can
        run = await run_stream(baton)
        assert isinstance(run.terminal, Done) and run.terminal.provider == "a"
        await trio.testing.wait_all_tasks_blocked()  # the health actor hears the report
        assert baton.statistics().providers["a"].health.status == "healthy"
    assert provider.asked[:2] == ["models", "chat"] and set(provider.asked[2:]) == {"chat"}


async def test_a_server_without_a_models_endpoint_serves_streams_after_many_probe_intervals(
    autojump_clock,
):
    # The report: three 404 probes shut out a provider that answered every request.
    provider = NoModelsEndpoint("a")
    config = make_config(("a",), a={"health": {"probe_interval": 5.0, "failure_threshold": 3}})
    async with open_baton(config, {"a": provider}) as baton:
        await trio.sleep(5 * 30 + 1)
        for _ in range(3):
            run = await run_stream(baton)
            assert isinstance(run.terminal, Done) and run.terminal.provider == "a"
        assert baton.ready() == (True, "ok")
        health = baton.statistics().providers["a"].health
        assert health.status == "healthy" and health.probe == "chat"
