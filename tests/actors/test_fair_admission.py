"""Fair admission to upstream slots: round-robin between clients, weighted by priority.

First the pure scheduler (``policy.next_client``), then the pool and a whole actor system under
MockClock: one client's hundred streams do not hold back another client's one.
"""

from __future__ import annotations

from collections import Counter
from fractions import Fraction

import pytest
import trio

from actors import Delta, Done, StreamError, config_from_dict, open_baton
from actors._outage import OutageQueue
from actors._pool import PoolActor
from actors.policy._fair import ANONYMOUS, ClientTag, FairState, Head, next_client
from actors.policy._queue_share import queue_share
from scenarios import Behaviour, FakeProvider, FaultSchedule, Rule

from .conftest import PROMPT, run_stream

# --- the pure scheduler ------------------------------------------------------------------------


def serve(lines: dict[str | None, list[int]], priorities: dict[str | None, int], grants: int):
    """Grant ``grants`` times from per-client lines of arrival numbers; the clients served."""
    lines = {name: list(line) for name, line in lines.items() if line}
    state = FairState()
    served: list[str | None] = []
    for _ in range(grants):
        heads = {
            name: Head(arrived=line[0], priority=priorities.get(name, 1))
            for name, line in lines.items()
        }
        name, state = next_client(heads, state)
        served.append(name)
        lines[name].pop(0)
        if not lines[name]:
            del lines[name]
    return served


def test_clients_with_waiters_take_turns():
    served = serve({"a": [0, 1, 2, 3, 4], "b": [5, 6, 7]}, {}, 8)
    assert served == ["a", "b", "a", "b", "a", "b", "a", "a"]


def test_a_client_of_priority_two_is_served_twice_per_round():
    served = serve({"a": list(range(30)), "b": list(range(30, 60))}, {"a": 2}, 30)
    assert Counter(served) == {"a": 20, "b": 10}
    # Every stretch of three grants has both clients in it, in the 2:1 ratio.
    for i in range(1, 28, 3):
        assert sorted(served[i : i + 3]) == ["a", "a", "b"]


def test_weights_hold_for_three_clients():
    lines = {"a": list(range(100)), "b": list(range(100, 200)), "c": list(range(200, 300))}
    served = serve(lines, {"a": 3, "b": 2}, 60)
    assert Counter(served) == {"a": 30, "b": 20, "c": 10}


def test_within_a_client_the_oldest_waiter_goes_first():
    """The scheduler names a client; its head (the oldest) is served, and ties go to the older."""
    heads = {"a": Head(arrived=7), "b": Head(arrived=3)}
    assert next_client(heads, FairState())[0] == "b"
    state = FairState(passes={"b": Fraction(1)}, floor=Fraction(0))
    assert next_client(heads, state)[0] == "a"


def test_the_anonymous_client_alone_is_plain_fifo():
    served = serve({None: [0, 1, 2, 3]}, {}, 4)
    assert served == [None, None, None, None]
    client, state = next_client({None: Head(arrived=0)}, FairState())
    assert client is None and state.floor == 0


def test_a_newcomer_starts_at_the_floor_and_does_not_jump_the_whole_line():
    # "a" has been served 100 times alone: its pass and the floor moved on together.
    state = FairState()
    for i in range(100):
        _, state = next_client({"a": Head(arrived=i)}, state)
    served = []
    for i in range(6):
        heads = {"a": Head(arrived=100 + i), "b": Head(arrived=1000 + i)}
        name, state = next_client(heads, state)
        served.append(name)
    assert served == ["b", "a", "b", "a", "b", "a"]


def test_a_client_that_stops_waiting_is_forgotten_once_behind():
    _, state = next_client({"a": Head(arrived=0), "b": Head(arrived=1)}, FairState())
    for i in range(3):
        _, state = next_client({"b": Head(arrived=2 + i)}, state)
    assert set(state.passes) == {"b"}


def test_next_client_needs_a_waiting_client():
    with pytest.raises(ValueError):
        next_client({}, FairState())


# --- the pool ----------------------------------------------------------------------------------


async def test_the_pool_alternates_clients_and_reports_waiters_and_grants_per_client(
    autojump_clock,
):
    pool = PoolActor({"p": 1})
    order: list[str] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)

        async def user(client: str, i: int) -> None:
            async with pool.slot("p", timeout=100, client=ClientTag(name=client)):
                order.append(f"{client}{i}")
                await trio.sleep(1)

        for i in range(4):
            nursery.start_soon(user, "a", i)
            await trio.sleep(0.001)
        for i in range(2):
            nursery.start_soon(user, "b", i)
            await trio.sleep(0.001)
        stats = pool.statistics().providers["p"]
        assert (stats.in_use, stats.waiting) == (1, 5)
        assert stats.waiting_by_client == {"a": 3, "b": 2}
        await trio.sleep(100)
        pool.close()
    assert order == ["a0", "a1", "b0", "a2", "b1", "a3"]
    stats = pool.statistics().providers["p"]
    assert stats.waiting_by_client == {}
    assert stats.granted_by_client == {"a": 3, "b": 2}  # a0 took a free slot on its own turn


# --- a whole actor system ----------------------------------------------------------------------

TOKEN_DELAY = 0.02  # the answer has 101 tokens: about 2 s per answer
ANSWER_TIME = 101 * TOKEN_DELAY


def fair_config(priorities: dict[str, int]):
    return config_from_dict(
        {
            "providers": {
                "a": {"kind": "openai", "base_url": "http://a.invalid/v1", "max_connections": 10}
            },
            "routes": {"default": {"targets": [{"provider": "a", "model": "model-a"}]}},
            "clients": {
                name: {"key_sha256": "00" * 32, "priority": priority}
                for name, priority in priorities.items()
            },
        }
    )


def slow_provider() -> dict[str, FakeProvider]:
    return {"a": FakeProvider("a", FaultSchedule.always(Behaviour(token_delay=TOKEN_DELAY)))}


async def test_one_clients_hundred_streams_do_not_hold_back_another_clients_stream(
    autojump_clock,
):
    """With FIFO admission B waited behind A's 90 queued streams and got a pool timeout."""
    async with open_baton(fair_config({"a": 1, "b": 1}), slow_provider()) as baton:
        ends: dict[str, list[object]] = {"a": [], "b": []}

        async def stream(client: str, first_token: list[float] | None = None) -> None:
            began = trio.current_time()
            handle = baton.start_stream(route="default", messages=PROMPT, client=client)
            async for event in handle:
                if isinstance(event, Delta) and first_token is not None and not first_token:
                    first_token.append(trio.current_time() - began)
                if isinstance(event, Done | StreamError):
                    ends[client].append(event)

        b_ttft: list[float] = []
        async with trio.open_nursery() as nursery:
            for _ in range(100):
                nursery.start_soon(stream, "a")
            await trio.sleep(0.1)
            stats = baton.statistics().providers["a"].pool
            assert (stats.in_use, stats.waiting_by_client) == (10, {"a": 90})
            nursery.start_soon(stream, "b", b_ttft)
            await trio.sleep(0.01)
            assert baton.statistics().providers["a"].pool.waiting_by_client == {"a": 90, "b": 1}
    assert len(b_ttft) == 1 and b_ttft[0] <= ANSWER_TIME
    assert [type(e) for e in ends["b"]] == [Done]
    assert len(ends["a"]) == 100


async def test_grants_over_a_contended_period_follow_the_priorities(autojump_clock):
    """Priority 2 to 1: of 30 slots freed while both wait, A gets 20 and B 10 (FIFO: 30 and 0)."""
    async with open_baton(fair_config({"a": 2, "b": 1}), slow_provider()) as baton:

        async def stream(client: str) -> None:
            async for _ in baton.start_stream(route="default", messages=PROMPT, client=client):
                pass

        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(stream, "a")
            await trio.sleep(0.01)
            for _ in range(50):
                nursery.start_soon(stream, "b")
            await trio.sleep(0.01)
            assert baton.statistics().providers["a"].pool.waiting_by_client == {"a": 40, "b": 50}
            # Three answers' time: three rounds of ten freed slots.
            await trio.sleep(3 * ANSWER_TIME + 0.5)
            stats = baton.statistics().providers["a"].pool
            assert stats.granted_by_client == {"a": 20, "b": 10}
            nursery.cancel_scope.cancel()


async def test_streams_without_a_client_are_one_anonymous_client_served_in_order(
    autojump_clock,
):
    cfg = config_from_dict(
        {
            "providers": {
                "a": {"kind": "openai", "base_url": "http://a.invalid/v1", "max_connections": 2}
            },
            "routes": {"default": {"targets": [{"provider": "a", "model": "model-a"}]}},
        }
    )
    async with open_baton(cfg, slow_provider()) as baton:
        done_order: list[int] = []

        async def stream(i: int) -> None:
            async for _ in baton.start_stream(route="default", messages=PROMPT):
                pass
            done_order.append(i)

        async with trio.open_nursery() as nursery:
            for i in range(6):
                nursery.start_soon(stream, i)
                await trio.sleep(0.001)
            await trio.sleep(0.01)
            assert baton.statistics().providers["a"].pool.waiting_by_client == {None: 4}
    assert done_order == [0, 1, 2, 3, 4, 5]


# --- the outage queue --------------------------------------------------------------------------


def test_a_clients_share_of_the_outage_queue_follows_its_priority():
    assert queue_share(queue_size=4, priority=1, total_priority=2) == 2
    assert queue_share(queue_size=10, priority=2, total_priority=3) == 6
    assert queue_share(queue_size=10, priority=1, total_priority=3) == 3
    assert queue_share(queue_size=3, priority=1, total_priority=5) == 1  # at least one place
    assert queue_share(queue_size=3, priority=9, total_priority=9) == 3  # never past the queue
    assert queue_share(queue_size=5, priority=1, total_priority=0) == 5  # nobody to share with


def test_the_outage_queue_refuses_a_full_share_and_a_full_queue():
    queue = OutageQueue(4, {"a": 1, "b": 1})
    a, b = ClientTag(name="a"), ClientTag(name="b")
    assert [queue.enter_nowait(a) for _ in range(3)] == [None, None, "share_full"]
    assert [queue.enter_nowait(b) for _ in range(3)] == [None, None, "share_full"]
    assert queue.enter_nowait(ANONYMOUS) == "queue_full"
    queue.leave(a)
    assert queue.enter_nowait(a) is None
    assert queue.statistics().waiting_by_client == {"a": 2, "b": 2}


def test_without_a_client_the_outage_queue_is_first_come_first_served():
    queue = OutageQueue(3, {"a": 1, "b": 1})
    assert [queue.enter_nowait(ANONYMOUS) for _ in range(4)] == [None, None, None, "queue_full"]
    alone = OutageQueue(3, {})
    named = ClientTag(name="x", priority=1)
    assert [alone.enter_nowait(named) for _ in range(4)] == [None, None, None, "queue_full"]
    assert queue.share(ANONYMOUS) == alone.share(ANONYMOUS) == 3


async def test_one_client_cannot_take_another_clients_places_in_the_outage_queue(autojump_clock):
    """Before the fair share, A's four streams filled the queue of four and B got overloaded."""
    outage = Rule(Behaviour("status", status=401), end=20.0)
    provider = FakeProvider("a", FaultSchedule((outage,)))
    cfg = config_from_dict(
        {
            "providers": {
                "a": {
                    "kind": "openai",
                    "base_url": "http://a.invalid/v1",
                    # every waiter's first request back is one of the trial requests
                    "health": {"half_open_requests": 3},
                }
            },
            "routes": {
                "default": {
                    "targets": [{"provider": "a", "model": "model-a"}],
                    "queue_size": 4,
                    "queue_timeout": 60.0,
                }
            },
            "clients": {name: {"key_sha256": "00" * 32, "priority": 1} for name in ("a", "b")},
        }
    )
    ends: dict[str, list[object]] = {"a": [], "b": []}
    async with open_baton(cfg, {"a": provider}) as baton:

        async def stream(client: str) -> None:
            handle = baton.start_stream(route="default", messages=PROMPT, client=client)
            async for event in handle:
                if isinstance(event, Done | StreamError):
                    ends[client].append(event)

        tripped = await run_stream(baton)  # the 401 marks the provider unhealthy
        assert tripped.terminal.code == "all_providers_unavailable"
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(stream, "a")
                await trio.sleep(0.01)
            assert baton.statistics().outage_queues["default"].waiting_by_client == {"a": 2}
            nursery.start_soon(stream, "b")
            await trio.sleep(0.01)
            queue = baton.statistics().outage_queues["default"]
            assert queue.waiting_by_client == {"a": 2, "b": 1}
    refused = [e for e in ends["a"] if isinstance(e, StreamError)]
    assert [e.code for e in refused] == ["overloaded", "overloaded"]
    assert all("client 'a' already has its share" in e.message for e in refused)
    assert [type(e) for e in ends["a"]] == [StreamError, StreamError, Done, Done]
    assert [type(e) for e in ends["b"]] == [Done]
    assert baton.statistics().outage_queues["default"].waiting == 0
