"""Health and routing beyond reactive failover: recovery, hedging, strategies, budgets, queues."""

from __future__ import annotations

import pytest
import trio

from actors import Delta, Done, Started, StreamError, open_baton
from scenarios import Behaviour, FakeProvider, FaultSchedule, Rule

from .conftest import PROMPT, make_config, run_stream


async def test_a_flapping_primary_is_routed_around_and_back_within_seconds_of_healing(
    autojump_clock,
):
    down = FaultSchedule((Rule(Behaviour("status", status=503), start=0.0, end=60.0),))
    a, b = FakeProvider("a", down), FakeProvider("b")
    served = []

    async def one(baton, start):
        run = await run_stream(baton)
        served.append((start, run.terminal))

    async with (
        open_baton(make_config(), {"a": a, "b": b}, seed=3) as baton,
        trio.open_nursery() as nursery,
    ):
        for _ in range(35):  # a request every 4 s for 140 s
            nursery.start_soon(one, baton, trio.current_time())
            await trio.sleep(4)
    assert len(served) == 35
    assert all(isinstance(t, Done) for _, t in served), "every request is answered"
    back = min(start for start, t in served if start >= 60 and t.provider == "a")
    assert back < 70, f"traffic returned to the primary only at {back}"
    assert all(t.provider == "a" for start, t in served if start >= 70)
    spent_while_down = [r for r in a.log if r.opened_at < 60]
    assert len(spent_while_down) <= 12, "the sick primary was hammered"
    # health noticed: at least one state change to unhealthy and one back to healthy
    assert any(p.at >= 60 for p in a.probes)


async def test_hedging_keeps_time_to_first_token_near_the_backups(autojump_clock):
    slow = FaultSchedule.always(Behaviour("stall", at_token=0, stall=3.0))
    a, b = FakeProvider("a", slow), FakeProvider("b")
    config = make_config(route={"hedge_after": 0.5})
    ttfts = []
    async with open_baton(config, {"a": a, "b": b}, seed=1) as baton:
        for _ in range(20):
            start = trio.current_time()
            handle = baton.start_stream(route="default", messages=PROMPT)
            first = None
            async for event in handle:
                if isinstance(event, Delta) and first is None:
                    first = trio.current_time() - start
            ttfts.append(first)
            assert isinstance(event, Done) and event.provider == "b"
    ttfts.sort()
    assert ttfts[int(0.95 * len(ttfts)) - 1] == pytest.approx(0.5, abs=0.05)
    assert a.open_attempts == [] and all(r.outcome == "abandoned" for r in a.log)
    assert len(a.log) == 20 and len(b.log) == 20


async def test_hedging_never_starts_after_the_first_token(autojump_clock):
    drip = FaultSchedule.always(Behaviour("drip", token_delay=0.4))
    a, b = FakeProvider("a", drip), FakeProvider("b")
    async with open_baton(make_config(route={"hedge_after": 0.5}), {"a": a, "b": b}) as baton:
        run = await run_stream(baton)
    assert run.terminal.provider == "a" and b.log == []


async def test_the_fast_primary_wins_a_hedge_and_the_hedge_is_cancelled(autojump_clock):
    a = FakeProvider("a", FaultSchedule.always(Behaviour("stall", at_token=0, stall=0.7)))
    b = FakeProvider("b", FaultSchedule.always(Behaviour("stall", at_token=0, stall=5.0)))
    async with open_baton(make_config(route={"hedge_after": 0.5}), {"a": a, "b": b}) as baton:
        run = await run_stream(baton)
    assert isinstance(run.terminal, Done) and run.terminal.provider == "a"
    assert not [e for e in run.events if type(e).__name__ == "Failover"]
    assert len(b.log) == 1 and b.open_attempts == [] and b.log[0].outcome == "abandoned"


async def test_least_latency_follows_a_change_in_latency(autojump_clock):
    a = FakeProvider(
        "a",
        FaultSchedule(
            (Rule(Behaviour("drip", token_delay=0.5), end=200.0),),
            default=Behaviour("drip", token_delay=0.02),
        ),
    )
    b = FakeProvider("b", FaultSchedule.always(Behaviour("drip", token_delay=0.1)))
    config = make_config(route={"strategy": "least_latency"}, a={"health": {"slow_ttft": 60.0}})
    picks = []
    async with open_baton(config, {"a": a, "b": b}, seed=5) as baton:
        while trio.current_time() < 600:
            handle = baton.start_stream(route="default", messages=PROMPT, params={"max_tokens": 2})
            events = [e async for e in handle]
            picks.append((trio.current_time(), events[0].provider))
            await trio.sleep(1)
    early = [p for t, p in picks if 50 < t < 200]
    late = [p for t, p in picks if t > 400]
    assert early.count("b") / len(early) > 0.85
    assert late.count("a") / len(late) > 0.85


async def test_when_no_target_is_usable_a_request_waits_for_recovery(autojump_clock):
    broken = FaultSchedule((Rule(Behaviour("status", status=401), end=20.0),))
    a, b = FakeProvider("a", broken), FakeProvider("b", broken)
    config = make_config(
        route={"queue_timeout": 60.0},
        a={"health": {"cooldown": 30.0}},
        b={"health": {"cooldown": 30.0}},
    )
    async with open_baton(config, {"a": a, "b": b}) as baton:
        first = await run_stream(baton)  # both trip their breakers
        assert first.terminal.code == "all_providers_unavailable"
        start = trio.current_time()
        second = await run_stream(baton)
        waited = trio.current_time() - start
    assert isinstance(second.terminal, Done)
    assert 25 <= waited <= 36  # until the cooldown ends and a trial succeeds


async def test_a_request_that_waits_too_long_learns_each_providers_state(autojump_clock):
    a = FakeProvider("a", FaultSchedule.always(Behaviour("status", status=401)))
    b = FakeProvider("b", FaultSchedule.always(Behaviour("status", status=401)))
    config = make_config(route={"queue_timeout": 5.0})
    async with open_baton(config, {"a": a, "b": b}) as baton:
        await run_stream(baton)
        start = trio.current_time()
        run = await run_stream(baton)
        assert trio.current_time() - start == pytest.approx(5.0, abs=0.01)
    error = run.terminal
    assert isinstance(error, StreamError) and error.code == "all_providers_unavailable"
    assert "a unhealthy (next try in" in error.message and "b unhealthy" in error.message
    assert not [e for e in run.events if isinstance(e, Started)]


async def test_a_full_outage_queue_answers_overloaded_at_once(autojump_clock):
    a = FakeProvider("a", FaultSchedule.always(Behaviour("status", status=401)))
    config = make_config(("a",), route={"queue_timeout": 5.0, "queue_size": 2})
    results = []
    async with open_baton(config, {"a": a}) as baton:
        await run_stream(baton)
        async with trio.open_nursery() as nursery:
            for _ in range(4):

                async def one():
                    results.append((await run_stream(baton)).terminal.code)

                nursery.start_soon(one)
                await trio.sleep(0.01)
    assert sorted(results) == ["all_providers_unavailable"] * 2 + ["overloaded"] * 2


async def test_the_retry_budget_stops_an_outage_from_multiplying_load(autojump_clock):
    a = FakeProvider("a", FaultSchedule.always(Behaviour("refuse")))
    b = FakeProvider("b")
    # a's breaker never opens here, so only the budget limits the failovers.
    config = make_config(route={"retry_budget": 0.2}, a={"health": {"failure_threshold": 1000}})
    async with open_baton(config, {"a": a, "b": b}) as baton:
        outcomes = []
        async with trio.open_nursery() as nursery:
            for _ in range(50):

                async def one():
                    outcomes.append((await run_stream(baton)).terminal)

                nursery.start_soon(one)
        peak = baton.statistics().router.routes["default"].peak_retries_in_flight
    done = [t for t in outcomes if isinstance(t, Done)]
    refused = [t for t in outcomes if isinstance(t, StreamError)]
    # a refuses all 50 at once: max(3, 20% of the 50 requests in flight) = 10 may fail over
    assert peak == 10
    assert len(done) == 10 and len(refused) == 40
    assert all("retry budget" in t.message for t in refused)


async def test_a_hedge_that_was_never_needed_gives_back_its_half_open_trial(autojump_clock):
    from actors._health import Report

    a = FakeProvider("a", FaultSchedule((Rule(Behaviour("refuse"), start=10.0),)))
    b = FakeProvider("b")
    config = make_config(
        route={"hedge_after": 0.5}, b={"health": {"cooldown": 2.0, "half_open_requests": 1}}
    )
    async with open_baton(config, {"a": a, "b": b}) as baton:
        baton._ctx.health["b"].report_nowait(Report(outcome="failure", trip=True))
        await trio.sleep(3)
        assert baton.statistics().providers["b"].health.status == "probing"
        fast = await run_stream(baton)  # a answers at once; b was admitted as the hedge, unused
        assert fast.terminal.provider == "a" and b.log == []
        await trio.sleep(10)
        failed_over = await run_stream(baton)  # a refuses now: b's trial place must be free
    assert isinstance(failed_over.terminal, Done) and failed_over.terminal.provider == "b"
