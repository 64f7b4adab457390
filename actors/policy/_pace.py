"""Read pacing under load: how long a stream waits between upstream reads, from event-loop lag.

Each token a provider sends is its own network read, and each read costs the same CPU whether
it carries one token or ten. When Baton has more streams than its CPU can read token by token,
its event loop falls behind: every task, including new streams waiting for their first token,
waits longer for its turn, and the backlog only grows. Pacing turns that around: while the loop
lags, a stream that already has text waits a little before its next read, so more of the answer
arrives per read and the CPU goes further. The text is the same, in fewer and larger deltas;
first tokens are never paced. Without lag there is no wait at all.

``next_pace`` is the pure step: a smoothed lag from one more lag sample, and the wait it calls
for. ``next_sample_interval`` says when to sample next: often while the loop lags, rarely while
it keeps up (so an idle system, or a test under ``MockClock``, is not woken 50 times a second).
"""

from __future__ import annotations

import attrs

#: Weight of the newest lag sample in the smoothed lag.
LAG_ALPHA = 0.2
#: Smoothed lag below which reads are not paced (a loop this prompt is keeping up).
LAG_THRESHOLD = 0.005
#: The wait between reads, as a multiple of the smoothed lag (up to the configured maximum).
PACE_GAIN = 20.0
#: Seconds between lag samples while the loop lags; each calm sample doubles the interval up
#: to the longest, and a lagging one brings it back.
SAMPLE_INTERVAL = 0.02
LONGEST_SAMPLE_INTERVAL = 1.0


@attrs.frozen
class Pace:
    """The smoothed event-loop lag and the wait between reads it calls for (seconds)."""

    lag: float = 0.0
    read_delay: float = 0.0


def next_pace(previous: Pace, lag_sample: float, max_read_delay: float) -> Pace:
    """Fold one lag sample into ``previous``; ``max_read_delay`` 0 turns pacing off."""
    lag = previous.lag + LAG_ALPHA * (max(0.0, lag_sample) - previous.lag)
    if lag < LAG_THRESHOLD or max_read_delay <= 0:
        return Pace(lag=lag, read_delay=0.0)
    return Pace(lag=lag, read_delay=min(max_read_delay, PACE_GAIN * lag))


def next_sample_interval(interval: float, lag_sample: float, pace: Pace) -> float:
    """The wait before the next lag sample, after one that found ``lag_sample``."""
    if lag_sample >= LAG_THRESHOLD / 2 or pace.lag >= LAG_THRESHOLD / 2:
        return SAMPLE_INTERVAL
    return min(LONGEST_SAMPLE_INTERVAL, 2 * interval)
