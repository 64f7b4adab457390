"""Read pacing under load: the pure policy, and the monitor that measures event-loop lag."""

import pytest
import trio

from actors import Delta, Done, Message, open_baton
from actors.policy._pace import (
    LAG_THRESHOLD,
    LONGEST_SAMPLE_INTERVAL,
    PACE_GAIN,
    SAMPLE_INTERVAL,
    Pace,
    next_pace,
    next_sample_interval,
)
from scenarios import Behaviour, FakeProvider, FaultSchedule

from .conftest import lag_the_loop, make_config


def settle(lag: float, max_read_delay: float = 0.25, samples: int = 200) -> Pace:
    pace = Pace()
    for _ in range(samples):
        pace = next_pace(pace, lag, max_read_delay)
    return pace


def test_a_loop_that_keeps_up_is_not_paced():
    assert settle(0.0) == Pace(lag=0.0, read_delay=0.0)
    assert settle(LAG_THRESHOLD * 0.9).read_delay == 0.0


def test_lag_above_the_threshold_paces_reads_in_proportion_up_to_the_maximum():
    lag = LAG_THRESHOLD * 1.5
    assert settle(lag).read_delay == pytest.approx(PACE_GAIN * lag)
    assert settle(1.0).read_delay == 0.25
    assert settle(1.0, max_read_delay=0.1).read_delay == 0.1


def test_a_maximum_of_zero_turns_pacing_off_but_lag_is_still_measured():
    pace = settle(1.0, max_read_delay=0.0)
    assert pace.read_delay == 0.0 and pace.lag == pytest.approx(1.0)


def test_one_late_wakeup_is_smoothed_and_forgotten_again():
    pace = next_pace(Pace(), 0.1, 0.25)
    assert 0 < pace.lag < 0.1  # one sample moves the average only part of the way
    calm = pace
    for _ in range(50):
        calm = next_pace(calm, 0.0, 0.25)
    assert calm.read_delay == 0.0 and calm.lag < LAG_THRESHOLD
    assert next_pace(Pace(), -0.01, 0.25) == Pace()  # early wake-ups are not negative lag


def test_sampling_backs_off_while_the_loop_keeps_up_and_returns_when_it_lags():
    calm = Pace()
    intervals = [SAMPLE_INTERVAL]
    for _ in range(10):
        intervals.append(next_sample_interval(intervals[-1], 0.0, calm))
    assert intervals[:4] == [
        SAMPLE_INTERVAL,
        2 * SAMPLE_INTERVAL,
        4 * SAMPLE_INTERVAL,
        8 * SAMPLE_INTERVAL,
    ]
    assert intervals[-1] == LONGEST_SAMPLE_INTERVAL
    assert next_sample_interval(LONGEST_SAMPLE_INTERVAL, LAG_THRESHOLD, calm) == SAMPLE_INTERVAL
    lagging = Pace(lag=LAG_THRESHOLD, read_delay=0.1)
    assert next_sample_interval(SAMPLE_INTERVAL, 0.0, lagging) == SAMPLE_INTERVAL


async def test_the_monitor_paces_reads_while_the_loop_lags_and_only_while_streams_run(
    autojump_clock,
):
    slow = FakeProvider("a", FaultSchedule.always(Behaviour("drip", token_delay=0.1)))
    providers = {"a": slow, "b": FakeProvider("b")}
    async with open_baton(make_config(), providers) as baton:
        assert baton.statistics().load.read_delay == 0.0
        handle = baton.start_stream(route="default", messages=[Message(role="user", content="hi")])
        await trio.sleep(1.0)
        assert baton.statistics().active_streams == 1
        assert baton.statistics().load.read_delay == 0.0  # a stream runs, but the loop keeps up
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lag_the_loop, autojump_clock)
            await trio.sleep(2.0)  # the calm second let sampling back off to once a second
            busy = baton.statistics().load
            assert baton.statistics().active_streams == 1
            nursery.cancel_scope.cancel()
        assert busy.event_loop_lag > LAG_THRESHOLD and busy.read_delay == 0.25
        events = [e async for e in handle]
        assert isinstance(events[-1], Done)
        assert baton.statistics().active_streams == 0
        await trio.sleep(1.0)
        assert (
            baton.statistics().load.read_delay == 0.0
            and baton.statistics().load.event_loop_lag == 0.0
        )
        # Lag while no stream runs is not measured: there is nothing to pace.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lag_the_loop, autojump_clock)
            await trio.sleep(1.0)
            idle = baton.statistics().load
            nursery.cancel_scope.cancel()
        assert idle.read_delay == 0.0
    assert any(isinstance(e, Delta) for e in events)


async def test_a_long_calm_stream_is_sampled_rarely(autojump_clock):
    """Under MockClock a ten-minute stream takes milliseconds, not 30,000 wake-ups."""
    slow = FakeProvider("a", FaultSchedule.always(Behaviour("drip", token_delay=5.0)))
    providers = {"a": slow, "b": FakeProvider("b")}
    async with open_baton(make_config(a={"idle_timeout": 60.0}), providers) as baton:
        start = trio.current_time()
        events = [
            e
            async for e in baton.start_stream(
                route="default", messages=[Message(role="user", content="hi")]
            )
        ]
        seconds = trio.current_time() - start
        samples = baton.statistics().load.samples
    assert isinstance(events[-1], Done) and seconds > 300
    assert samples < seconds / LONGEST_SAMPLE_INTERVAL + 10
