"""The circuit breaker state machine, driven directly and by random operation sequences."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from actors import HealthConfig
from actors.policy import _breaker as breaker

CFG = HealthConfig(failure_threshold=3, cooldown=30.0, max_cooldown=120.0, stable_period=60.0)


def open_now(state, now):
    for _ in range(3):
        state = breaker.on_failure(state, CFG, now)
    return state


def test_cooldown_doubles_on_each_reopen_soon_after_recovery_up_to_the_maximum():
    state = open_now(breaker.initial(CFG, 0.0), 0.0)
    assert state.status == "unhealthy" and state.reopen_at == 30.0
    cooldowns = [state.cooldown]
    for _ in range(4):
        now = state.reopen_at
        state, ok = breaker.admit(state, CFG, now)
        assert ok and state.status == "probing"
        state = breaker.on_success(state, CFG, now)  # recovered ...
        state = open_now(state, now + 1)  # ... and broke again a second later
        cooldowns.append(state.cooldown)
    assert cooldowns == [30.0, 60.0, 120.0, 120.0, 120.0]


def test_a_failed_trial_keeps_probing_and_allows_the_next_trial_after_the_probe_interval():
    cfg = HealthConfig(failure_threshold=3, cooldown=30.0, probe_interval_unhealthy=5.0)
    state = open_now(breaker.initial(cfg, 0.0), 0.0)
    state, ok = breaker.admit(state, cfg, 30.0)
    assert ok
    state = breaker.on_failure(state, cfg, 31.0)
    assert state.status == "probing"
    assert not breaker.admit(state, cfg, 35.9)[1]
    state, ok = breaker.admit(state, cfg, 36.0)
    assert ok


def test_the_cooldown_resets_after_a_stable_healthy_period():
    state = open_now(breaker.initial(CFG, 0.0), 0.0)
    state, _ = breaker.admit(state, CFG, 30.0)
    state = breaker.on_success(state, CFG, 30.0)
    state = open_now(state, 40.0)  # re-opened 10 s after recovering: 60 s
    assert state.cooldown == 60.0
    state, _ = breaker.admit(state, CFG, 100.0)
    state = breaker.on_success(state, CFG, 100.0)
    state = open_now(state, 161.0)  # healthy for longer than stable_period: back to 30 s
    assert state.cooldown == 30.0


def test_slow_first_tokens_degrade_and_fast_ones_recover():
    cfg = HealthConfig(slow_ttft=5.0, ttft_alpha=0.5)
    state = breaker.initial(cfg, 0.0)
    state = breaker.on_success(state, cfg, 1.0, ttft=9.0)
    assert state.status == "degraded"
    state = breaker.on_success(state, cfg, 2.0, ttft=1.0)  # ewma 5.0: not recovered yet
    assert state.status == "degraded"
    state = breaker.on_success(state, cfg, 3.0, ttft=1.0)  # ewma 3.0
    assert state.status == "healthy"


def test_a_rate_limit_takes_the_provider_out_until_the_time_it_named():
    state = breaker.initial(CFG, 0.0)
    state = breaker.on_rate_limited(state, CFG, 10.0, retry_after=20.0)
    assert state.status == "rate_limited" and breaker.traffic(state, CFG, 10.0) == "none"
    assert state.next_try_at() == 30.0
    assert breaker.advance(state, CFG, 29.9).status == "rate_limited"
    assert breaker.advance(state, CFG, 30.0).status == "healthy"


def test_a_rate_limited_trial_recovers_the_provider_once_the_limit_ends():
    state = breaker.initial(CFG, 0.0)
    for _ in range(3):
        state = breaker.on_failure(state, CFG, 0.0)
    state = breaker.on_rate_limited(state, CFG, CFG.cooldown, retry_after=5.0)
    assert state.status == "rate_limited"
    state = breaker.advance(state, CFG, CFG.cooldown + 5.0)
    assert state.status == "healthy" and state.consecutive_failures == 0
    # One more failure is one, not the threshold's worth: the open breaker was closed.
    assert breaker.on_failure(state, CFG, CFG.cooldown + 6.0).status == "healthy"


def test_only_a_chat_probe_closes_an_open_breaker():
    state = breaker.initial(CFG, 0.0)
    for _ in range(3):
        state = breaker.on_failure(state, CFG, 0.0)
    state = breaker.advance(state, CFG, 30.0)
    assert state.status == "probing"
    assert breaker.on_probe(state, CFG, 31.0, ok=True, kind="models").status == "probing"
    assert breaker.on_probe(state, CFG, 31.0, ok=True, kind="chat").status == "healthy"
    assert breaker.on_probe(state, CFG, 31.0, ok=False, kind="chat").status == "probing"


def probing_now(cfg, now=0.0):
    """A breaker opened at 0 whose cooldown ends at ``now``: probing, a trial place free."""
    state = breaker.on_failure(breaker.initial(cfg, 0.0), cfg, 0.0, trip=True)
    state = breaker.advance(state, cfg, now)
    assert state.status == "probing"
    return state


def test_a_failed_probe_counts_only_if_no_live_request_succeeded_since_the_previous_probe():
    state = breaker.initial(CFG, 0.0)
    state = breaker.on_success(state, CFG, 1.0)
    state = breaker.on_failure(state, CFG, 2.0)
    state = breaker.on_failure(state, CFG, 3.0)
    # Two live failures after a live success: the probe's failure would be the third.
    state = breaker.on_probe(state, CFG, 4.0, ok=False, kind="models")
    assert state.status == "healthy" and state.consecutive_failures == 2
    # No live success since that probe: the next failed probe counts, and opens the breaker.
    state = breaker.on_probe(state, CFG, 34.0, ok=False, kind="models")
    assert state.status == "unhealthy" and state.consecutive_failures == 3


def test_probes_that_keep_failing_never_open_a_breaker_that_live_traffic_keeps_closing():
    state = breaker.initial(CFG, 0.0)
    now = 0.0
    for _ in range(20):
        now += 1.0
        state = breaker.on_success(state, CFG, now)  # a live request succeeds ...
        for _ in range(CFG.failure_threshold - 1):
            now += 1.0
            state = breaker.on_failure(state, CFG, now)  # ... some fail, short of the threshold
        now += 1.0
        state = breaker.on_probe(state, CFG, now, ok=False, kind="chat")  # ... the probe fails
        assert state.status == "healthy", now


def test_a_chat_probe_success_is_no_live_success_for_the_next_failed_probe():
    state = breaker.initial(CFG, 0.0)
    state = breaker.on_failure(state, CFG, 1.0)
    state = breaker.on_probe(state, CFG, 2.0, ok=True, kind="chat")
    assert state.consecutive_failures == 0
    for now in (3.0, 4.0, 5.0):
        state = breaker.on_probe(state, CFG, now, ok=False, kind="chat")
    assert state.status == "unhealthy"


def test_a_live_success_closes_a_probing_breaker_whatever_the_probes_said():
    cfg = HealthConfig(cooldown=30.0, probe_interval_unhealthy=5.0)
    state = probing_now(cfg, 30.0)
    state = breaker.on_probe_sent(state, cfg, 30.0)
    state = breaker.on_probe(state, cfg, 31.0, ok=False, kind="chat")
    assert state.status == "probing" and breaker.traffic(state, cfg, 31.0) == "none"
    state, ok = breaker.admit(state, cfg, 36.0)
    assert ok
    state = breaker.on_success(state, cfg, 37.0)
    assert state.status == "healthy" and state.consecutive_failures == 0


def test_a_probing_provider_takes_a_trial_only_while_no_probe_or_trial_holds_the_place():
    cfg = HealthConfig(cooldown=30.0, probe_interval_unhealthy=5.0, half_open_requests=1)
    state = probing_now(cfg, 30.0)
    assert breaker.traffic(state, cfg, 30.0) == "trial"
    sent = breaker.on_probe_sent(state, cfg, 30.0)
    assert breaker.traffic(sent, cfg, 30.0) == "none"
    assert breaker.admit(sent, cfg, 30.0)[1] is False
    assert not breaker.wants_probe(sent, cfg, 30.0)  # one probe at a time
    # The probe failed: no trial until the probing interval has passed.
    failed = breaker.on_probe(sent, cfg, 31.0, ok=False, kind="models")
    assert breaker.traffic(failed, cfg, 35.9) == "none"
    assert breaker.traffic(failed, cfg, 36.0) == "trial"
    # A live trial holds the one place.
    trial, ok = breaker.admit(state, cfg, 30.0)
    assert ok and breaker.traffic(trial, cfg, 30.0) == "none"


def test_traffic_is_all_when_closed_and_none_when_open_or_rate_limited():
    cfg = HealthConfig(cooldown=30.0, slow_ttft=1.0, ttft_alpha=1.0)
    healthy = breaker.initial(cfg, 0.0)
    assert breaker.traffic(healthy, cfg, 0.0) == "all"
    assert breaker.traffic(breaker.on_probe_sent(healthy, cfg, 0.0), cfg, 0.0) == "all"
    degraded = breaker.on_success(healthy, cfg, 1.0, ttft=2.0)
    assert degraded.status == "degraded" and breaker.traffic(degraded, cfg, 1.0) == "all"
    unhealthy = breaker.on_failure(healthy, cfg, 1.0, trip=True)
    assert breaker.traffic(unhealthy, cfg, 30.9) == "none"
    limited = breaker.on_rate_limited(healthy, cfg, 1.0, retry_after=10.0)
    assert breaker.traffic(limited, cfg, 10.9) == "none"
    assert breaker.traffic(limited, cfg, 11.0) == "all"


def test_an_inconclusive_probe_counts_for_nothing_and_lets_a_probing_provider_try_live():
    cfg = HealthConfig(cooldown=30.0, probe_interval_unhealthy=5.0)
    state = breaker.initial(cfg, 0.0)
    for now in range(1, 10):
        state = breaker.on_probe_inconclusive(breaker.on_probe_sent(state, cfg, now), cfg, now)
    assert state.status == "healthy" and state.consecutive_failures == 0
    state = breaker.on_probe_sent(probing_now(cfg, 30.0), cfg, 30.0)
    state = breaker.on_probe_inconclusive(state, cfg, 31.0)
    assert state.status == "probing" and breaker.traffic(state, cfg, 31.0) == "trial"


operations = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "success",
                "failure",
                "trip",
                "admit",
                "probe_sent",
                "probe_ok",
                "probe_fail",
                "probe_inconclusive",
                "rate_limit",
            ]
        ),
        st.floats(0.0, 20.0),
    ),
    max_size=80,
)


@given(operations)
def test_breaker_invariants_under_any_sequence(ops):
    cfg = HealthConfig(failure_threshold=3, cooldown=30.0, max_cooldown=300.0, half_open_requests=1)
    state = breaker.initial(cfg, 0.0)
    now = 0.0
    in_flight_trials = 0
    changes = []
    for op, gap in ops:
        now += gap
        before = state
        if op == "success":
            state = breaker.on_success(state, cfg, now, ttft=0.1)
        elif op in ("failure", "trip"):
            state = breaker.on_failure(state, cfg, now, trip=op == "trip")
        elif op == "admit":
            takes = breaker.traffic(state, cfg, now)
            state, ok = breaker.admit(state, cfg, now)
            if ok and state.status == "probing":
                in_flight_trials += 1
            assert not ok or state.status != "unhealthy"
            # one definition of "takes traffic now": admission follows it exactly
            assert ok == (takes != "none")
        elif op == "probe_sent":
            state = breaker.on_probe_sent(state, cfg, now)
        elif op in ("probe_ok", "probe_fail"):
            state = breaker.on_probe(state, cfg, now, ok=op == "probe_ok", kind="chat")
        elif op == "probe_inconclusive":
            state = breaker.on_probe_inconclusive(state, cfg, now)
            assert state.consecutive_failures == before.consecutive_failures
        else:
            state = breaker.on_rate_limited(state, cfg, now, retry_after=5.0)
        # probing never admits more than allowed
        assert state.half_open_in_flight <= cfg.half_open_requests
        # N consecutive failures always open it (unless a rate limit holds it, which opens later)
        if state.consecutive_failures >= cfg.failure_threshold and state.status not in (
            "unhealthy",
            "rate_limited",
        ):
            assert state.status == "probing" or before.status in (
                "unhealthy",
                "probing",
                "rate_limited",
            )
        if state.status != before.status:
            changes.append((now, before.status, state.status))
        # an open breaker stays open for its whole cooldown
        if (
            before.status != "unhealthy"
            and state.status == "unhealthy"
            and state.reopen_at is not None
        ):
            assert state.reopen_at - now >= cfg.cooldown - 1e-9
    # While it flaps, an opening is followed by no other change for at least a cooldown.
    for (t0, _, to), (t1, _, _) in pairwise(changes):
        if to == "unhealthy":
            assert t1 - t0 >= cfg.cooldown - 1e-9
