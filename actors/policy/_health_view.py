"""What the rest of Baton sees of a provider's health: the snapshot its health actor publishes.

The health actor writes it; the router's route choice, the session and ``statistics()`` read it.
It lives below both, so a policy never imports an actor.
"""

from __future__ import annotations

import attrs

from .._provider import ProbeKind
from .._vocab import ProbeVerdict, Traffic
from ._breaker import Status


def _traffic_of_status(snapshot: HealthSnapshot) -> Traffic:
    """The traffic a snapshot built without one implies (a probing one: a trial)."""
    status = snapshot.status
    return (
        "all" if status in ("healthy", "degraded") else "trial" if status == "probing" else "none"
    )


@attrs.frozen(kw_only=True)
class HealthSnapshot:
    """One provider's health as last published.

    ``traffic`` is the breaker's answer to "does it take live traffic now" at publication (the
    health actor publishes again whenever that answer changes); ``usable`` is the same as a yes
    or no. ``probe`` is the kind of active probe in use, ``last_probe`` what the last one said.
    """

    provider: str
    status: Status
    consecutive_failures: int
    next_try_at: float | None
    ttft_ewma: float | None
    ttft_p95: float | None = None
    ttft_at: float | None = None  # when the last time to first token was measured
    since: float
    traffic: Traffic = attrs.field(default=attrs.Factory(_traffic_of_status, takes_self=True))
    probe: ProbeKind = "models"
    last_probe: ProbeVerdict | None = None

    @property
    def usable(self) -> bool:
        """Whether the router may send it an attempt now (all traffic, or a trial)."""
        return self.traffic != "none"


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
