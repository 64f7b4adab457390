"""What to do after an upstream attempt fails: retry it, fail over, or give up.

``decide`` is a pure function of the classified failure, where the stream stands, the attempts
already made on the target, the provider's settings and the time. The session performs what it
returns. Nothing here awaits.
"""

from __future__ import annotations

import attrs

from .._config import ProviderConfig
from .._errors import Failure, FailureKind

TRANSIENT_STATUSES = frozenset({500, 502, 503, 504, 529})
BACKOFF_BASE = 0.25  # seconds; the first retry waits 0.125-0.25 s
# "No tight loops": at most TIGHT_LOOP_ATTEMPTS attempts on one target inside TIGHT_LOOP_WINDOW.
TIGHT_LOOP_ATTEMPTS = 2
TIGHT_LOOP_WINDOW = 1.5

_PREFILL_WORDS = ("assistant", "prefill", "final message", "last message", "continue_final_message")


@attrs.frozen(kw_only=True)
class Retry:
    """Try the same target again after ``delay`` seconds."""

    delay: float
    reason: str
    instruct: bool = False  # the target rejected a prefill: ask it with ``instruct`` from now on


@attrs.frozen(kw_only=True)
class FailOver:
    """Leave this target for the rest of the request and ask the router for another."""

    reason: str


@attrs.frozen(kw_only=True)
class Reject:
    """The request itself is wrong: pass the provider's answer to the client, no failover."""

    reason: str


Decision = Retry | FailOver | Reject


@attrs.frozen(kw_only=True)
class HealthVerdict:
    """How an attempt's outcome counts for the provider's health.

    ``counts``: a failure that is the provider's fault; ``trip``: open the breaker at once
    (broken credentials do not heal by themselves); ``rate_limited_for``: seconds the provider
    asked to be left alone.
    """

    counts: bool = False
    trip: bool = False
    rate_limited: bool = False
    rate_limited_for: float | None = None


def reason_code(failure: Failure, *, midstream: bool) -> str:
    """The stable short code naming why an attempt was left (used in events and metrics)."""
    kind = failure.kind
    if kind is FailureKind.STATUS and failure.status is not None:
        status = failure.status
        if status == 429:
            return "rate_limited"
        if status in (401, 403):
            return "auth_failed"
        if failure.code == "context_length_exceeded":
            return "context_length_exceeded"
        if status >= 500:
            return f"upstream_{status}"
        return f"upstream_{status}"
    if kind is FailureKind.TIMEOUT:
        return "idle_timeout" if midstream else "first_token_timeout"
    return {
        FailureKind.CONNECT: "connect_error",
        FailureKind.RESET: "reset",
        FailureKind.EOF: "eof",
        FailureKind.STREAM_ERROR: "stream_error",
        FailureKind.MALFORMED: "malformed",
        FailureKind.PROTOCOL: "protocol_error",
        FailureKind.STATUS: "upstream_error",
        FailureKind.ANSWER_TOO_LARGE: "answer_too_large",
        FailureKind.STREAM_TOO_LONG: "stream_too_long",
        FailureKind.INVALID_JSON: "invalid_json",
    }[kind]


def explain(decision: Decision, *, alternatives: bool) -> str:
    """What follows a failed attempt, in words for an operator's log line.

    ``alternatives``: another target of the route could take the request now.
    """
    match decision:
        case Retry(instruct=True):
            return "retrying the same target, asking it to continue in words (no prefill)"
        case Retry(delay=delay):
            return f"retrying the same target in {delay:.1f} s"
        case FailOver() if alternatives:
            return "failing over to the next target"
        case FailOver():
            return "leaving this target; no other target is left to fail over to"
        case Reject():
            return "rejecting: the provider refused the request itself"


def is_prefill_rejection(failure: Failure) -> bool:
    """Whether a 400 looks like the provider refusing a trailing assistant message."""
    if failure.kind is not FailureKind.STATUS or failure.status not in (400, 422):
        return False
    text = f"{failure.code or ''} {failure.message}".lower()
    return any(word in text for word in _PREFILL_WORDS)


def health_verdict(failure: Failure) -> HealthVerdict:
    """Whether a failure counts against the provider (client errors never do).

    A spliced JSON answer that does not parse is the splice's fault, not the provider's.
    """
    if failure.kind is FailureKind.INVALID_JSON:
        return HealthVerdict()
    if failure.kind is FailureKind.STATUS and failure.status is not None:
        status = failure.status
        if status in (401, 403):
            return HealthVerdict(counts=True, trip=True)
        if status == 429:
            return HealthVerdict(rate_limited=True, rate_limited_for=failure.retry_after)
        if 400 <= status < 500:
            return HealthVerdict()
        return HealthVerdict(counts=True)
    return HealthVerdict(counts=True)


def backoff(retry_number: int, jitter: float) -> float:
    """The jittered delay before retry number ``retry_number`` (1-based); ``jitter`` in [0, 1)."""
    return BACKOFF_BASE * 2.0 ** (retry_number - 1) * (0.5 + 0.5 * jitter)


def _spacing(previous_starts: tuple[float, ...], now: float) -> float:
    """Seconds to wait so that no more than TIGHT_LOOP_ATTEMPTS start inside the window."""
    if len(previous_starts) < TIGHT_LOOP_ATTEMPTS:
        return 0.0
    earliest = previous_starts[-TIGHT_LOOP_ATTEMPTS] + TIGHT_LOOP_WINDOW
    return max(0.0, earliest - now)


def decide(
    failure: Failure,
    *,
    produced_text: bool,
    midstream: bool,
    was_prefill: bool,
    previous_starts: tuple[float, ...],
    config: ProviderConfig,
    now: float,
    jitter: float,
    trial: bool = False,
    alternatives: bool = True,
    breaker_closed: bool = True,
) -> Decision:
    """Decide what follows a failed attempt.

    ``produced_text``: this attempt had streamed text before it failed. ``midstream``: the
    client already holds text of this stream. ``previous_starts``: the start times of every
    attempt on this target within this request, including the failed one. ``trial``: the
    attempt was a half-open trial of a probing breaker. ``alternatives``: another target of the
    route could take the request now. ``breaker_closed``: the target's breaker is closed
    (healthy or degraded) as far as is known.

    A failed trial is never retried on its target: the breaker's answer is "not yet", and a
    retry would bypass its limit on trials. An answer that broke off in the middle goes to
    another target; only when none is left does the same target continue it after a transient
    fault, within its ``retries``. An answer ended at the provider's limits (``answer_too_large``,
    ``stream_too_long``) is never continued on the same target: it would babble again.
    """
    decision = _decide(
        failure, produced_text=produced_text, midstream=midstream, was_prefill=was_prefill,
        previous_starts=previous_starts, config=config, now=now, jitter=jitter,
    )  # fmt: skip
    if trial:
        return FailOver(reason=decision.reason) if isinstance(decision, Retry) else decision
    retries_used = len(previous_starts) - 1
    if (
        isinstance(decision, FailOver)
        and (produced_text or midstream)
        and not alternatives
        and breaker_closed
        and retries_used < config.retries
        and _transient_midstream(failure)
    ):
        delay = max(backoff(retries_used + 1, jitter), _spacing(previous_starts, now))
        return Retry(delay=delay, reason=decision.reason)
    return decision


def _transient_midstream(failure: Failure) -> bool:
    """Whether a break in the middle of an answer may heal on the same target at once.

    A reset, an early end, silence, or a server error (an HTTP status or an in-stream error
    such as ``overloaded_error``); never a client error.
    """
    if failure.kind in (FailureKind.STATUS, FailureKind.STREAM_ERROR) and failure.status:
        return failure.status >= 500  # TRANSIENT_STATUSES are all among them
    return failure.kind in (
        FailureKind.RESET, FailureKind.EOF, FailureKind.TIMEOUT, FailureKind.STREAM_ERROR
    )  # fmt: skip


def _decide(
    failure: Failure,
    *,
    produced_text: bool,
    midstream: bool,
    was_prefill: bool,
    previous_starts: tuple[float, ...],
    config: ProviderConfig,
    now: float,
    jitter: float,
) -> Decision:
    """The decision for a target with a closed breaker and other targets to go to."""
    reason = reason_code(failure, midstream=midstream or produced_text)
    if produced_text:
        # Mid-attempt breakage: the target has shown it cannot finish this answer now.
        return FailOver(reason=reason)
    retries_used = len(previous_starts) - 1
    retries_left = retries_used < config.retries
    kind = failure.kind
    if kind is FailureKind.STATUS and failure.status is not None:
        status = failure.status
        if was_prefill and is_prefill_rejection(failure):
            # Not a failure of the target: it only refuses this form of continuation.
            return Retry(delay=0.0, reason="prefill_rejected", instruct=True)
        if status == 429:
            wait = failure.retry_after
            if wait is not None and wait <= config.max_retry_wait and retries_left:
                return Retry(delay=max(wait, _spacing(previous_starts, now)), reason=reason)
            return FailOver(reason=reason)
        if status in (401, 403) or failure.code == "context_length_exceeded":
            return FailOver(reason=reason)
        if 400 <= status < 500:
            return Reject(reason=reason)
        if status in TRANSIENT_STATUSES and retries_left:
            delay = max(backoff(retries_used + 1, jitter), _spacing(previous_starts, now))
            return Retry(delay=delay, reason=reason)
        return FailOver(reason=reason)
    if kind in (FailureKind.STREAM_ERROR, FailureKind.MALFORMED, FailureKind.EOF) and retries_left:
        delay = max(backoff(retries_used + 1, jitter), _spacing(previous_starts, now))
        return Retry(delay=delay, reason=reason)
    # Connect errors, silence and everything else: the next target, at once.
    return FailOver(reason=reason)
