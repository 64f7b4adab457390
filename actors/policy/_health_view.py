"""What the rest of Baton sees of a provider's health: the snapshot its health actor publishes.

The health actor writes it; the router's route choice, the session and ``statistics()`` read it.
It lives below both, so a policy never imports an actor.
"""

from __future__ import annotations

import attrs

from ._breaker import Status


@attrs.frozen(kw_only=True)
class HealthSnapshot:
    """One provider's health as last published."""

    provider: str
    status: Status
    consecutive_failures: int
    next_try_at: float | None
    ttft_ewma: float | None
    ttft_p95: float | None = None
    ttft_at: float | None = None  # when the last time to first token was measured
    since: float

    @property
    def usable(self) -> bool:
        return self.status in ("healthy", "degraded", "probing")


@attrs.frozen(kw_only=True)
class HealthTransition:
    """A provider's breaker changed state: what ``open_baton(..., on_transition=...)`` is told.

    ``consecutive_failures`` is the count at the change. ``credentials_rejected``: the provider
    rejected Baton's credentials, which opens the breaker at once whatever the count (only ever
    true for a change to ``unhealthy``).
    """

    provider: str
    old: Status
    new: Status
    consecutive_failures: int
    at: float
    credentials_rejected: bool = False
