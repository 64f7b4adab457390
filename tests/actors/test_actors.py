"""Pool, health, router and supervisor actors, each on its own under MockClock."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from actors import HealthConfig, RouteConfig, Target
from actors._health import HealthActor, HealthBoard, Report
from actors._pool import PoolActor, PoolTimeout
from actors._router import Picked, RouterActor, Unavailable
from actors._supervisor import EscalationError, Supervisor
from scenarios import Behaviour, FakeProvider, FaultSchedule, Rule

# --- pool ------------------------------------------------------------------------------------


async def test_pool_hands_out_slots_fifo_and_reports_waiting(autojump_clock):
    pool = PoolActor({"p": 2})
    order = []
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)

        async def user(name, hold):
            async with pool.slot("p", timeout=100):
                order.append(name)
                await trio.sleep(hold)

        for i, name in enumerate("abcde"):
            nursery.start_soon(user, name, 10)
            await trio.sleep(0.001)  # arrival order a, b, c, d, e
        stats = pool.statistics().providers["p"]
        assert (stats.in_use, stats.waiting) == (2, 3)
        await trio.sleep(100)
        pool.close()
    assert order == list("abcde")
    stats = pool.statistics().providers["p"]
    assert stats.in_use == 0 and stats.total_acquired == 5
    assert stats.total_waited == pytest.approx(10 + 10 + 20, abs=0.1)


async def test_pool_timeout_raises_and_frees_the_place_in_line(autojump_clock):
    pool = PoolActor({"p": 1})
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)

        async def holder():
            async with pool.slot("p", timeout=1):
                await trio.sleep(50)

        nursery.start_soon(holder)
        await trio.sleep(0.01)
        with pytest.raises(PoolTimeout):
            async with pool.slot("p", timeout=5):
                pass
        await trio.testing.wait_all_tasks_blocked()
        assert pool.statistics().providers["p"].waiting == 0
        assert pool.statistics().providers["p"].total_timeouts == 1
        await trio.sleep(60)
        async with pool.slot("p", timeout=1) as waited:
            assert waited == 0
        pool.close()


async def test_a_cancelled_holder_gives_its_slot_back(autojump_clock):
    pool = PoolActor({"p": 1})
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        with trio.move_on_after(1):
            async with pool.slot("p", timeout=1):
                await trio.sleep_forever()
        await trio.testing.wait_all_tasks_blocked()
        assert pool.statistics().providers["p"].in_use == 0
        pool.close()


async def test_an_idle_pool_grants_a_free_slot_on_the_callers_turn(autojump_clock):
    pool = PoolActor({"p": 2})
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        for _ in range(3):
            async with pool.slot("p", timeout=1) as waited:
                assert waited == 0
        async with pool.slot("p", timeout=1), pool.slot("p", timeout=1):
            stats = pool.statistics().providers["p"]
            assert stats.in_use == 2
        pool.close()
    stats = pool.statistics().providers["p"]
    assert stats.total_acquired == stats.total_acquired_nowait == 5 and stats.in_use == 0


async def test_a_freed_slot_goes_to_the_caller_in_line_not_to_a_newcomer(autojump_clock):
    pool = PoolActor({"p": 1})
    order = []
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)

        async def greedy():
            async with pool.slot("p", timeout=100):
                order.append("greedy")
                await trio.sleep(1)
            # Given back and asked for again on the same turn: the one waiting goes first.
            async with pool.slot("p", timeout=100):
                order.append("greedy again")

        async def patient():
            await trio.sleep(0.5)
            async with pool.slot("p", timeout=100):
                order.append("patient")
                await trio.sleep(1)

        nursery.start_soon(greedy)
        nursery.start_soon(patient)
        await trio.sleep(0.75)
        assert pool.statistics().providers["p"].waiting == 1
        await trio.sleep(10)
        pool.close()
    assert order == ["greedy", "patient", "greedy again"]
    stats = pool.statistics().providers["p"]
    assert stats.total_acquired == 3 and stats.total_acquired_nowait == 1
    assert stats.total_waited == pytest.approx(0.5 + 1.0)


# --- health ----------------------------------------------------------------------------------


def health_actor(schedule=None, **config):
    board = HealthBoard()
    provider = FakeProvider("p", schedule or FaultSchedule.healthy())
    cfg = HealthConfig(**{"probe_interval": 1000.0, **config})
    return HealthActor(provider, cfg, board), board, provider


async def test_admission_hears_the_reports_sent_before_it(autojump_clock):
    actor, board, _ = health_actor(failure_threshold=1, cooldown=30.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        assert await actor.admit()  # healthy and idle: admitted at once
        actor.report_nowait(Report(outcome="failure"))
        # The failure is still in the mailbox; the answer must take it into account.
        assert not await actor.admit()
        assert board.get("p").status == "unhealthy"
        actor.close()


async def test_consecutive_failures_open_the_breaker_and_cooldown_lets_traffic_try_again(
    autojump_clock,
):
    actor, board, _ = health_actor(failure_threshold=3, cooldown=30.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        for _ in range(2):
            actor.report_nowait(Report(outcome="failure"))
        actor.report_nowait(Report(outcome="success"))  # a success resets the count
        for _ in range(2):
            actor.report_nowait(Report(outcome="failure"))
        await trio.sleep(0.1)
        assert board.get("p").status == "healthy" and board.get("p").consecutive_failures == 2
        actor.report_nowait(Report(outcome="failure"))
        await trio.sleep(0.1)
        assert board.get("p").status == "unhealthy"
        assert not await actor.admit()
        await trio.sleep(30)
        assert board.get("p").status == "probing"
        assert await actor.admit()  # one trial request
        assert not await actor.admit()  # and no more while it runs
        actor.report_nowait(Report(outcome="success", ttft=0.2))
        await trio.sleep(0.1)
        assert board.get("p").status == "healthy"
        actor.close()


async def test_probes_run_on_a_ticker_and_failing_probes_open_the_breaker(autojump_clock):
    schedule = FaultSchedule.always(Behaviour("status", status=503))
    actor, board, provider = health_actor(schedule, probe_interval=30.0, failure_threshold=3)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        await trio.sleep(95)
        assert len(provider.probes) == 3
        assert [p.at for p in provider.probes] == pytest.approx([30, 60, 90], abs=0.01)
        assert board.get("p").status == "unhealthy"
        actor.close()


async def test_client_side_outcomes_never_count_against_the_provider(autojump_clock):
    actor, board, _ = health_actor(failure_threshold=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        for outcome in ("neutral", "abandoned", "neutral"):
            actor.report_nowait(Report(outcome=outcome))
        await trio.sleep(0.1)
        assert board.get("p").status == "healthy" and board.get("p").consecutive_failures == 0
        actor.close()


# --- router ----------------------------------------------------------------------------------


def route(strategy="priority", weights=(1, 1)):
    targets = tuple(Target(provider=f"p{i}", model="m", weight=w) for i, w in enumerate(weights))
    return RouteConfig(name="r", targets=targets, strategy=strategy)


async def test_router_picks_the_first_usable_target_and_says_why_when_none_is(autojump_clock):
    board = HealthBoard()
    router = RouterActor({"r": route()}, board, seed=1)
    actors = {}
    async with trio.open_nursery() as nursery:
        for i in range(2):
            actor, _, _ = health_actor(failure_threshold=1)
            actor.name = f"p{i}"
            actor._board = board
            actors[i] = actor
            await nursery.start(actor.run)
        await nursery.start(router.run)
        picked = await router.pick("r")
        assert isinstance(picked, Picked) and picked.index == 0
        picked = await router.pick("r", exclude=frozenset({0}))
        assert picked.index == 1
        actors[0].report_nowait(Report(outcome="failure"))
        await trio.sleep(0.01)
        assert (await router.pick("r")).index == 1
        actors[1].report_nowait(Report(outcome="failure"))
        await trio.sleep(0.01)
        result = await router.pick("r")
        assert isinstance(result, Unavailable) and result.reason == "none_usable"
        assert {name: s.status for name, s in result.snapshots.items()} == {
            "p0": "unhealthy",
            "p1": "unhealthy",
        }
        router.close()
        for actor in actors.values():
            actor.close()


async def test_weighted_route_honours_weights(autojump_clock):
    board = HealthBoard()
    router = RouterActor({"r": route("weighted", (3, 1))}, board)
    async with trio.open_nursery() as nursery:
        await nursery.start(router.run)
        picks = [(await router.pick("r")).index for _ in range(400)]
        router.close()
    assert picks.count(0) == 300 and picks.count(1) == 100


async def test_an_idle_router_answers_on_the_askers_turn(autojump_clock):
    router = RouterActor({"r": route("weighted", (1, 1))}, HealthBoard())
    async with trio.open_nursery() as nursery:
        await nursery.start(router.run)
        picks = [(await router.pick("r")).index for _ in range(4)]
        router.close()
    assert picks == [0, 1, 0, 1]
    stats = router.statistics()
    assert stats.total_picks == stats.picked_nowait == 4


async def test_askers_queued_for_a_busy_router_are_answered_in_arrival_order(autojump_clock):
    # Four equal weights: the n-th pick the router answers goes to target n, so each asker's
    # answer shows its place in the order of answers.
    router = RouterActor({"r": route("weighted", (1, 1, 1, 1))}, HealthBoard())
    answers = {}
    async with trio.open_nursery() as nursery:

        async def ask(name):
            answers[name] = (await router.pick("r")).index

        for name in "abcd":  # the router is not running yet: each asker queues
            nursery.start_soon(ask, name)
            await trio.sleep(0.001)
        await nursery.start(router.run)
        await trio.testing.wait_all_tasks_blocked()
        assert answers == {"a": 0, "b": 1, "c": 2, "d": 3}
        assert router.statistics().picked_nowait == 0
        assert (await router.pick("r")).index == 0  # idle again: answered on the asker's turn
        router.close()
    assert router.statistics().total_picks == 5 and router.statistics().picked_nowait == 1


# --- supervisor ------------------------------------------------------------------------------


async def test_a_crashed_permanent_actor_is_restarted_until_the_limit(autojump_clock):
    runs = []

    async def flaky(*, task_status=trio.TASK_STATUS_IGNORED):
        runs.append(trio.current_time())
        task_status.started()
        await trio.sleep(1)
        raise RuntimeError("boom")

    escalated = False
    try:
        async with trio.open_nursery() as nursery, trio.open_nursery() as sessions:
            supervisor = Supervisor(nursery, sessions, max_restarts=3, period=10.0)
            await supervisor.start_permanent("flaky", flaky)
    except* EscalationError:
        escalated = True
    assert escalated
    assert len(runs) == 4  # the first run and three restarts; the fourth crash escalates
    assert supervisor.statistics().restarts == 3


async def test_recovery_is_noticed_by_probes_within_the_unhealthy_probe_interval(autojump_clock):
    down = FaultSchedule((Rule(Behaviour("status", status=503), end=100.0),))
    actor, board, provider = health_actor(
        down, probe_kind="chat", cooldown=30.0, probe_interval=10.0, probe_interval_unhealthy=5.0
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        while board.get("p").status != "unhealthy":
            await trio.sleep(1)
        opened_at = board.get("p").since
        assert opened_at <= 30  # three failed probes, ten seconds apart
        while board.get("p").status != "healthy":
            await trio.sleep(0.5)
        healed_noticed = trio.current_time()
        actor.close()
    assert 100 <= healed_noticed <= 105.5
    # while it rested after opening, it was not probed at all
    assert not [p for p in provider.probes if opened_at < p.at < opened_at + 30 - 1e-9]


async def test_while_an_active_probe_tests_a_probing_provider_no_live_trial_is_admitted(
    autojump_clock,
):
    import trio.testing

    gate = trio.Event()

    class SlowProbe(FakeProvider):
        async def probe(self, kind):
            await gate.wait()
            await super().probe(kind)

    board = HealthBoard()
    provider = SlowProbe("p")
    actor = HealthActor(
        provider,
        HealthConfig(cooldown=10.0, probe_interval_unhealthy=5.0, probe_timeout=100.0),
        board,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        actor.report_nowait(Report(outcome="failure", trip=True))
        await trio.sleep(15.5)  # rested 10 s; the probe loop's next tick (15 s) started a probe
        await trio.testing.wait_all_tasks_blocked()
        assert board.get("p").status == "probing"
        assert not await actor.admit()  # the probe is this interval's trial
        gate.set()
        await trio.sleep(0.1)
        actor.close()
    assert provider.probes and provider.probes[-1].ok
