"""``Baton.drain``: refuse new streams, let running ones finish, end the rest; under MockClock."""

from __future__ import annotations

import pytest
import trio

from actors import Done, RequestError, StreamError, open_baton
from scenarios import Behaviour, FaultSchedule

from .conftest import PROMPT, make_config

DRIP = FaultSchedule.always(Behaviour("drip", token_delay=1.0))  # a token a second


async def collect(handle, into: list) -> None:
    async for event in handle:
        into.append(event)


async def test_a_drain_lets_short_streams_finish_and_ends_the_rest_after_its_timeout(
    autojump_clock, fakes
):
    providers = fakes(a=DRIP)
    async with open_baton(make_config(("a",)), providers) as baton, trio.open_nursery() as n:
        short_events: list = []
        long_events: list = []
        short = baton.start_stream(route="default", messages=PROMPT, params={"max_tokens": 3})
        n.start_soon(collect, short, short_events)
        n.start_soon(collect, baton.start_stream(route="default", messages=PROMPT), long_events)
        await trio.sleep(1.5)
        began = trio.current_time()
        drained = await baton.drain(10)
        assert trio.current_time() - began == pytest.approx(10, abs=0.1)
        assert baton.ready() == (False, "draining: Baton is shutting down and takes no new streams")
        with pytest.raises(RequestError) as refused:
            baton.start_stream(route="default", messages=PROMPT)
        assert refused.value.code == "shutting_down" and refused.value.status == 503
    assert (drained.running, drained.finished, drained.ended, drained.left) == (2, 1, 1, 0)
    assert drained.duration == pytest.approx(10, abs=0.1)
    assert isinstance(short_events[-1], Done)
    assert isinstance(long_events[-1], StreamError) and long_events[-1].code == "shutting_down"
    assert providers["a"].open_attempts == []


async def test_a_drain_returns_as_soon_as_the_last_stream_ends(autojump_clock, fakes):
    providers = fakes(a=DRIP)
    async with open_baton(make_config(("a",)), providers) as baton, trio.open_nursery() as n:
        events: list = []
        handle = baton.start_stream(route="default", messages=PROMPT, params={"max_tokens": 3})
        n.start_soon(collect, handle, events)
        began = trio.current_time()
        drained = await baton.drain(30)
        assert trio.current_time() - began < 5
    assert (drained.running, drained.finished, drained.ended) == (1, 1, 0)
    assert isinstance(events[-1], Done)


async def test_end_streams_cuts_a_drain_short(autojump_clock, fakes):
    providers = fakes(a=DRIP)
    async with open_baton(make_config(("a",)), providers) as baton, trio.open_nursery() as n:
        events: list = []
        n.start_soon(collect, baton.start_stream(route="default", messages=PROMPT), events)
        await trio.sleep(1.5)

        async def second_signal() -> None:
            await trio.sleep(2)
            assert baton.end_streams() == 1

        n.start_soon(second_signal)
        began = trio.current_time()
        drained = await baton.drain(30)
        assert trio.current_time() - began == pytest.approx(2, abs=0.1)
    assert (drained.running, drained.finished, drained.ended, drained.left) == (1, 0, 1, 0)
    assert isinstance(events[-1], StreamError) and events[-1].code == "shutting_down"
    assert [e.seq for e in events] == list(range(len(events)))
