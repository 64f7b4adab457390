"""Read pacing under load: the pure policy, and the monitor that measures event-loop lag."""

import pytest
import trio

from actors import Delta, Done, Message, open_baton
from actors._load import SAMPLE_INTERVAL
from actors.policy._pace import LAG_THRESHOLD, PACE_GAIN, Pace, next_pace
from scenarios._fake import FakeProvider
from scenarios._faults import Behaviour, FaultSchedule

from .conftest import make_config


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


async def hog(clock, step: float) -> None:
    """A task whose every step takes ``step`` seconds of the clock, as a CPU-bound one would."""
    while True:
        clock.jump(step)
        await trio.sleep(SAMPLE_INTERVAL / 2)


async def test_the_monitor_paces_reads_while_the_loop_lags_and_only_while_streams_run(autojump_clock):
    slow = FakeProvider("a", FaultSchedule.always(Behaviour("drip", token_delay=0.1)))
    providers = {"a": slow, "b": FakeProvider("b")}
    async with open_baton(make_config(), providers) as baton:
        assert baton.statistics().load.read_delay == 0.0
        handle = baton.start_stream(route="default", messages=[Message(role="user", content="hi")])
        await trio.sleep(1.0)
        assert baton.statistics().active_streams == 1
        assert baton.statistics().load.read_delay == 0.0  # a stream runs, but the loop keeps up
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hog, autojump_clock, 0.05)
            await trio.sleep(1.0)
            busy = baton.statistics().load
            assert baton.statistics().active_streams == 1
            nursery.cancel_scope.cancel()
        assert busy.event_loop_lag > LAG_THRESHOLD and busy.read_delay == 0.25
        events = [e async for e in handle]
        assert isinstance(events[-1], Done)
        assert baton.statistics().active_streams == 0
        await trio.sleep(1.0)
        assert baton.statistics().load.read_delay == 0.0 and baton.statistics().load.event_loop_lag == 0.0
        # Lag while no stream runs is not measured: there is nothing to pace.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hog, autojump_clock, 0.05)
            await trio.sleep(1.0)
            idle = baton.statistics().load
            nursery.cancel_scope.cancel()
        assert idle.read_delay == 0.0
    assert any(isinstance(e, Delta) for e in events)
