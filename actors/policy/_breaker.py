"""The circuit breaker of one provider: a pure state machine over (state, event, now).

States::

    healthy ──N failures──▶ unhealthy ──cooldown──▶ probing ──trial succeeds──▶ healthy
       ▲  │                                          │  ▲
       │  └─slow TTFT─▶ degraded                     └──┘ trial fails: try again after
       └──────recovers──────┘                             probe_interval_unhealthy
    any ──429 with a time──▶ rate_limited ──that time──▶ the state it left

An open breaker first rests for its cooldown (``unhealthy``: no traffic, no probes), then tests
recovery (``probing``): every ``probe_interval_unhealthy`` one trial, either an active probe or
up to ``half_open_requests`` live requests. A live trial or a ``chat`` probe that succeeds
closes it; a ``models`` probe that succeeds, or any probe that cannot judge (``inconclusive``:
the provider has no endpoint to ask), only lets a live trial go at once. Re-opening within
``stable_period`` of recovering doubles the cooldown (up to ``max_cooldown``); a stable healthy
period resets it. So a flapping provider changes state at most once per cooldown while open,
and a healed one is noticed within ``probe_interval_unhealthy`` once its cooldown is over.

Live traffic outranks probes: a live success resets the failure count and closes a probing
breaker, and a failed probe counts only if no live request succeeded since the previous probe,
so a provider that keeps answering live traffic is never opened by its probes.

``traffic`` is the one definition of whether a provider takes live traffic now (``all``,
``trial``: a half-open trial place is free, or ``none``); ``admit``, the health snapshot, the
router, ``/status``, ``/readyz`` and the metrics all follow it.

Every function takes the state, the provider's ``HealthConfig`` and ``now`` and returns the new
state; the health actor stores it, logs and counts transitions, and publishes snapshots.
"""

from __future__ import annotations

from typing import Literal, get_args

import attrs

from .._config import HealthConfig
from .._provider import ProbeKind
from .._vocab import Traffic

Status = Literal["healthy", "degraded", "unhealthy", "probing", "rate_limited"]
STATUSES: tuple[Status, ...] = get_args(Status)  # every state, in the order above
RATE_LIMIT_DEFAULT = 1.0  # seconds out of rotation after a 429 that named no time
DEGRADED_RECOVERY = 0.8  # a degraded provider is healthy again below this share of slow_ttft


@attrs.frozen(kw_only=True)
class BreakerState:
    status: Status = "healthy"
    consecutive_failures: int = 0
    cooldown: float = 0.0  # the current open period; 0 until first configured
    reopen_at: float | None = None  # when an open breaker starts probing
    rate_limited_until: float | None = None
    resume_status: Status = "healthy"  # where a rate limit returns to
    half_open_in_flight: int = 0
    next_trial_at: float | None = None  # probing: when the next trial may start
    opened_before: bool = False
    healthy_since: float | None = 0.0
    ttft_ewma: float | None = None
    last_change: float = 0.0
    probe_out: bool = False  # an active probe is running (probing: it is the trial)
    live_success_since_probe: bool = False  # a live request succeeded since the last probe

    def next_try_at(self) -> float | None:
        """When a provider that is not usable will next be tried, if known."""
        if self.status == "unhealthy":
            return self.reopen_at
        if self.status == "rate_limited":
            return self.rate_limited_until
        return None


def initial(config: HealthConfig, now: float) -> BreakerState:
    return BreakerState(cooldown=config.cooldown, healthy_since=now, last_change=now)


def _move(state: BreakerState, status: Status, now: float, **changes: object) -> BreakerState:
    if status != state.status:
        changes["last_change"] = now
    return attrs.evolve(state, status=status, **changes)  # type: ignore[arg-type]


def _open(state: BreakerState, config: HealthConfig, now: float) -> BreakerState:
    cooldown = config.cooldown
    recovered_recently = (
        state.healthy_since is not None and now - state.healthy_since < config.stable_period
    )
    if state.opened_before and recovered_recently:
        cooldown = min(state.cooldown * 2, config.max_cooldown)
    return _move(
        state, "unhealthy", now,
        cooldown=cooldown, reopen_at=now + cooldown, half_open_in_flight=0, healthy_since=None,
        opened_before=True, next_trial_at=None, live_success_since_probe=False,
    )  # fmt: skip


def advance(state: BreakerState, config: HealthConfig, now: float) -> BreakerState:
    """Apply the transitions that only the passing of time causes."""
    if state.status == "unhealthy" and state.reopen_at is not None and now >= state.reopen_at:
        state = _move(state, "probing", now, half_open_in_flight=0, next_trial_at=now)
    rate_limit_over = state.rate_limited_until is not None and now >= state.rate_limited_until
    if state.status == "rate_limited" and rate_limit_over:
        if state.resume_status == "unhealthy":
            # Failures piled up while rate limited: open for a whole cooldown from now.
            state = _open(attrs.evolve(state, rate_limited_until=None), config, now)
        else:
            state = _move(state, state.resume_status, now, rate_limited_until=None)
    if (
        state.status == "healthy"
        and state.healthy_since is not None
        and now - state.healthy_since >= config.stable_period
        and state.cooldown != config.cooldown
    ):
        state = attrs.evolve(state, cooldown=config.cooldown)
    return state


def traffic(state: BreakerState, config: HealthConfig, now: float) -> Traffic:
    """Which live traffic the provider takes now: ``all``, one more ``trial``, or ``none``.

    Closed (healthy, degraded): all. Probing: a trial while a trial place is free, the interval
    after a failed trial is over and no active probe is out (the probe is then the trial).
    Unhealthy and rate limited: none.
    """
    state = advance(state, config, now)
    if state.status in ("healthy", "degraded"):
        return "all"
    if (
        state.status == "probing"
        and not state.probe_out
        and state.half_open_in_flight < config.half_open_requests
        and (state.next_trial_at is None or now >= state.next_trial_at)
    ):
        return "trial"
    return "none"


def admit(state: BreakerState, config: HealthConfig, now: float) -> tuple[BreakerState, bool]:
    """Whether one live request may go to this provider now; a probing one admits a few."""
    state = advance(state, config, now)
    match traffic(state, config, now):
        case "all":
            return state, True
        case "trial":
            return attrs.evolve(state, half_open_in_flight=state.half_open_in_flight + 1), True
        case "none":
            return state, False


def wants_probe(state: BreakerState, config: HealthConfig, now: float) -> bool:
    """Whether an active probe runs now: on the ticker when closed, as the trial when probing."""
    state = advance(state, config, now)
    if state.probe_out:
        return False
    if state.status in ("healthy", "degraded"):
        return True
    return state.status == "probing" and state.half_open_in_flight == 0


def on_probe_sent(state: BreakerState, config: HealthConfig, now: float) -> BreakerState:
    """An active probe went out; while it runs it is a probing provider's trial."""
    return attrs.evolve(advance(state, config, now), probe_out=True)


def on_success(
    state: BreakerState,
    config: HealthConfig,
    now: float,
    *,
    ttft: float | None = None,
    live: bool = True,
) -> BreakerState:
    """A live request (or, ``live=False``, a chat probe) succeeded; ``ttft`` feeds the average."""
    state = advance(state, config, now)
    ewma = state.ttft_ewma
    if ttft is not None:
        ewma = ttft if ewma is None else config.ttft_alpha * ttft + (1 - config.ttft_alpha) * ewma
    if state.status == "unhealthy":
        # A request that began before the breaker opened: the rest period still runs out.
        return attrs.evolve(state, ttft_ewma=ewma)
    state = attrs.evolve(
        state,
        consecutive_failures=0,
        ttft_ewma=ewma,
        live_success_since_probe=state.live_success_since_probe or live,
    )
    if state.status == "probing":
        state = _move(
            state, "healthy", now,
            half_open_in_flight=0, reopen_at=None, next_trial_at=None, healthy_since=now,
        )  # fmt: skip
    if state.status == "rate_limited":
        return attrs.evolve(state, resume_status="healthy")
    if ewma is not None:
        if state.status == "healthy" and ewma > config.slow_ttft:
            state = _move(state, "degraded", now)
        elif state.status == "degraded" and ewma <= config.slow_ttft * DEGRADED_RECOVERY:
            state = _move(state, "healthy", now)
    return state


def on_failure(
    state: BreakerState, config: HealthConfig, now: float, *, trip: bool = False
) -> BreakerState:
    """A failure that is the provider's fault; ``trip`` opens the breaker at once."""
    state = advance(state, config, now)
    failures = state.consecutive_failures + 1
    state = attrs.evolve(state, consecutive_failures=failures)
    if state.status == "probing":
        # A failed trial: stay open and try again after the probing interval.
        return attrs.evolve(
            state,
            half_open_in_flight=max(0, state.half_open_in_flight - 1),
            next_trial_at=now + config.probe_interval_unhealthy,
        )
    if state.status == "unhealthy":
        return state
    if state.status == "rate_limited":
        if trip or failures >= config.failure_threshold:
            return attrs.evolve(state, resume_status="unhealthy")
        return state
    if trip or failures >= config.failure_threshold:
        return _open(state, config, now)
    return state


def on_trial_abandoned(state: BreakerState, config: HealthConfig, now: float) -> BreakerState:
    """A half-open trial ended without a verdict (the client left): free its place."""
    state = advance(state, config, now)
    if state.status == "probing" and state.half_open_in_flight > 0:
        return attrs.evolve(state, half_open_in_flight=state.half_open_in_flight - 1)
    return state


def on_rate_limited(
    state: BreakerState, config: HealthConfig, now: float, *, retry_after: float | None
) -> BreakerState:
    """The provider asked to be left alone for ``retry_after`` seconds."""
    state = advance(state, config, now)
    until = now + (retry_after if retry_after is not None else RATE_LIMIT_DEFAULT)
    if state.status == "rate_limited":
        return attrs.evolve(state, rate_limited_until=max(until, state.rate_limited_until or until))
    if state.status == "unhealthy":
        return state
    resume: Status = state.status
    if state.status == "probing":
        # The trial got an answer, if a busy one: the provider is back, as after a successful
        # trial, and returns healthy with its failures forgotten once the rate limit ends.
        resume = "healthy"
        state = attrs.evolve(
            state, consecutive_failures=0, reopen_at=None, next_trial_at=None, healthy_since=now
        )
    return _move(
        state,
        "rate_limited",
        now,
        rate_limited_until=until,
        resume_status=resume,
        half_open_in_flight=0,
    )


def on_probe(
    state: BreakerState, config: HealthConfig, now: float, *, ok: bool, kind: ProbeKind
) -> BreakerState:
    """An active probe finished. Only a ``chat`` probe can close an open breaker.

    A failed probe counts only if no live request succeeded since the previous probe: live
    traffic that keeps succeeding outweighs a probe that fails.
    """
    state = advance(state, config, now)
    answered_live = state.live_success_since_probe
    state = attrs.evolve(state, probe_out=False, live_success_since_probe=False)
    if ok:
        if kind == "chat":
            return on_success(state, config, now, live=False)
        return _let_a_trial_go(state, now)
    if state.status == "probing":
        return attrs.evolve(state, next_trial_at=now + config.probe_interval_unhealthy)
    if answered_live:
        return state
    return on_failure(state, config, now)


def on_probe_inconclusive(state: BreakerState, config: HealthConfig, now: float) -> BreakerState:
    """An active probe finished without a verdict (the provider has no endpoint to ask).

    Neither a success nor a failure: a probing provider lets a live trial go at once.
    """
    state = advance(state, config, now)
    state = attrs.evolve(state, probe_out=False, live_success_since_probe=False)
    return _let_a_trial_go(state, now)


def _let_a_trial_go(state: BreakerState, now: float) -> BreakerState:
    """The provider answers, if not as a proof of health: a probing one lets live traffic try."""
    if state.status == "probing":
        return attrs.evolve(state, next_trial_at=now)
    return state
