"""What one attempt's end tells its provider's health: the one place it becomes a ``Report``.

Every attempt reports exactly once, when it ends, with ``report_for(outcome, failure)``. Only
failures that are the provider's fault count against it; an attempt that ends for any other
reason (the client left, a lost hedge race, no slot) gives back a half-open trial place it may
have held. Nothing here awaits.
"""

from __future__ import annotations

import attrs

from .._errors import Failure
from .._vocab import AttemptEnd, ReportOutcome
from ._failover import health_verdict


@attrs.frozen(kw_only=True)
class Report:
    """What became of one live attempt, told to its provider's health actor."""

    outcome: ReportOutcome
    ttft: float | None = None
    trip: bool = False
    retry_after: float | None = None
    admitted: bool = False  # the attempt may have held a half-open trial place: free it


_NO_VERDICT = Report(outcome="abandoned", admitted=True)
_NOT_ITS_FAULT = Report(outcome="neutral", admitted=True)


def report_for(
    outcome: AttemptEnd, failure: Failure | None = None, *, ttft: float | None = None
) -> Report:
    """The health report for an attempt that ended with ``outcome``.

    ``failure`` is required for ``failed``; ``ttft`` (seconds to the first token) goes with
    ``done`` into the provider's latency figures.
    """
    match outcome:
        case "done":
            return Report(outcome="success", ttft=ttft)
        case "failed":
            assert failure is not None, "a failed attempt reports its failure"
            verdict = health_verdict(failure)
            if verdict.rate_limited:
                return Report(outcome="rate_limited", retry_after=verdict.rate_limited_for)
            if verdict.counts:
                return Report(outcome="failure", trip=verdict.trip)
            return _NOT_ITS_FAULT
        case "diverged" | "pool_full" | "client_too_slow":
            return _NOT_ITS_FAULT
        case "cancelled" | "lost":
            return _NO_VERDICT
