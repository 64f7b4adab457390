"""LoadMonitor: measures how far the event loop lags and paces upstream reads from it.

A task sleeps and notes how much later than asked it woke up: that is how long a ready task
waits for its turn. It samples only while streams are running, every 20 ms while the loop lags
and backing off to once a second while it keeps up; a new stream brings it back to 20 ms, as
load usually arrives with new streams. ``read_delay()`` is what adapters wait between the reads
of a stream that already has text (see ``policy._pace``). Time is trio's clock, so a test moves
it with ``MockClock.jump``.
"""

from __future__ import annotations

import math

import attrs
import trio

from .policy._pace import (
    SAMPLE_INTERVAL,
    Pace,
    next_pace,
    next_sample_interval,
)


@attrs.frozen(kw_only=True)
class LoadStatistics:
    """The smoothed event-loop lag and the current wait between upstream reads (seconds)."""

    event_loop_lag: float
    read_delay: float
    samples: int  # lag samples taken so far


class LoadMonitor:
    """Samples event-loop lag while streams run; ``read_delay()`` is the pace it sets."""

    def __init__(self, max_read_delay: float) -> None:
        self._max_read_delay = max_read_delay
        self._pace = Pace()
        self._active = 0
        self._wakeup = trio.Event()
        self._closed = False
        self._samples = 0
        self._interval = math.inf  # seconds until the next sample; inf: idle, no stream runs

    def __repr__(self) -> str:
        return f"<LoadMonitor lag={self._pace.lag:.4f} read_delay={self._pace.read_delay:.4f}>"

    def read_delay(self) -> float:
        """Seconds to wait before the next read of a stream that already has text."""
        return self._pace.read_delay

    def statistics(self) -> LoadStatistics:
        """A snapshot of the lag, the pace and the samples taken."""
        pace = self._pace
        return LoadStatistics(
            event_loop_lag=pace.lag, read_delay=pace.read_delay, samples=self._samples
        )

    def stream_started(self) -> None:
        """Count a stream in; a monitor that is idle or backed off samples again soon."""
        self._active += 1
        if self._interval > SAMPLE_INTERVAL:  # idle or backed off: sample soon
            self._interval = SAMPLE_INTERVAL
            self._wakeup.set()

    def stream_ended(self) -> None:
        """Count a stream out; with none left the monitor stops sampling."""
        self._active -= 1

    def close(self) -> None:
        """End ``run`` in order."""
        self._closed = True
        self._wakeup.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sample until closed; between streams it waits without sampling (and forgets lag)."""
        task_status.started()
        while not self._closed:
            self._wakeup = trio.Event()
            if self._active <= 0:
                self._pace = Pace()
                self._interval = math.inf
                await self._wakeup.wait()
                continue
            asked = trio.current_time() + self._interval
            with trio.move_on_at(asked):
                await self._wakeup.wait()
                continue  # a stream started (or closing): sample again from the short interval
            lag = trio.current_time() - asked
            self._pace = next_pace(self._pace, lag, self._max_read_delay)
            self._samples += 1
            self._interval = next_sample_interval(self._interval, lag, self._pace)
