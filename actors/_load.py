"""LoadMonitor: measures how far the event loop lags and paces upstream reads from it.

A task sleeps ``SAMPLE_INTERVAL`` at a time and notes how much later than asked it woke up:
that is how long a ready task waits for its turn. It samples only while streams are running.
``read_delay()`` is what adapters wait between the reads of a stream that already has text
(see ``policy._pace``). Time is trio's clock, so a test moves it with ``MockClock.jump``.
"""

from __future__ import annotations

import attrs
import trio

from .policy._pace import Pace, next_pace

#: Seconds between lag samples while streams run.
SAMPLE_INTERVAL = 0.02


@attrs.frozen(kw_only=True)
class LoadStatistics:
    """The smoothed event-loop lag and the current wait between upstream reads (seconds)."""

    event_loop_lag: float
    read_delay: float


class LoadMonitor:
    """Samples event-loop lag while streams run; ``read_delay()`` is the pace it sets."""

    def __init__(self, max_read_delay: float) -> None:
        self._max_read_delay = max_read_delay
        self._pace = Pace()
        self._active = 0
        self._wakeup = trio.Event()
        self._closed = False

    def __repr__(self) -> str:
        return f"<LoadMonitor lag={self._pace.lag:.4f} read_delay={self._pace.read_delay:.4f}>"

    def read_delay(self) -> float:
        """Seconds to wait before the next read of a stream that already has text."""
        return self._pace.read_delay

    def statistics(self) -> LoadStatistics:
        return LoadStatistics(event_loop_lag=self._pace.lag, read_delay=self._pace.read_delay)

    def stream_started(self) -> None:
        self._active += 1
        self._wakeup.set()

    def stream_ended(self) -> None:
        self._active -= 1

    def close(self) -> None:
        self._closed = True
        self._wakeup.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sample until closed; between streams it waits without sampling (and forgets lag)."""
        task_status.started()
        while not self._closed:
            if self._active <= 0:
                self._pace = Pace()
                self._wakeup = trio.Event()
                await self._wakeup.wait()
                continue
            asked = trio.current_time() + SAMPLE_INTERVAL
            await trio.sleep_until(asked)
            self._pace = next_pace(self._pace, trio.current_time() - asked, self._max_read_delay)
