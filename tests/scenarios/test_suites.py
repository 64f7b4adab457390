"""The scenario suites run against the real code and find nothing wrong (small budgets for CI).

Each suite is a hypothesis search; a violation would fail the test with the suite's report: the
shrunk scenario, what its clients saw and the command that replays it. The suites found two
real bugs, in hedging and in the splice guard; the scenarios they shrank to are kept below as
regression tests.
"""

from __future__ import annotations

import attrs
import pytest

from actors import config_from_dict
from scenarios._faults import Behaviour, FaultSchedule
from scenarios._invariants import check
from scenarios._play import play
from scenarios._runner import format_suite, run_suite
from scenarios._scenario import ClientSpec, ProviderSpec, Scenario

SEED = 1
BUDGETS = {"midstream": 40, "prestream": 40, "health": 25, "overload": 20}


@pytest.mark.parametrize("name", list(BUDGETS))
def test_the_suite_finds_no_violation(name: str) -> None:
    report = run_suite(name, examples=BUDGETS[name], seed=SEED)
    assert report.failure is None, format_suite(report)
    assert report.examples == BUDGETS[name]
    assert report.streams >= report.examples
    if name == "midstream":
        assert report.failovers > 0 and report.outcomes["done"] > 0


def test_the_suites_hold_over_real_sockets() -> None:
    """The same fault models through the httpx adapters and the simulated HTTP providers."""
    for name in ("midstream", "prestream"):
        report = run_suite(name, examples=6, seed=SEED, real_sockets=True)
        assert report.failure is None, format_suite(report, real_sockets=True)
        assert report.streams >= 6


def test_chaos_finds_no_violation() -> None:
    report = run_suite("chaos", examples=40, seed=SEED)
    assert report.failure is None, format_suite(report)


UNHEDGED = {
    "providers": {
        "east": {
            "kind": "openai",
            "base_url": "https://east.invalid/v1",
            "first_token_timeout": 3.0,
            "idle_timeout": 2.0,
        },
        "west": {
            "kind": "anthropic",
            "base_url": "https://west.invalid",
            "retries": 2,
            "health": {"failure_threshold": 2},
        },
        "local": {
            "kind": "openai",
            "base_url": "http://local.invalid/v1",
            "prefill": True,
            "continuation": "prefill",
        },
    },
    "routes": {
        "default": {
            "targets": [
                {"provider": "east", "model": "e"},
                {"provider": "west", "model": "w"},
                {"provider": "local", "model": "l"},
            ]
        },
        "spread": {
            "targets": [
                {"provider": "west", "model": "w", "weight": 3},
                {"provider": "local", "model": "l"},
            ],
            "strategy": "weighted",
        },
    },
}


def test_chaos_against_a_config_without_hedging() -> None:
    """Chaos keeps covering everything else while the hedge bug stands, on a user's config."""
    report = run_suite("chaos", examples=30, seed=SEED, user_config=config_from_dict(UNHEDGED))
    assert report.failure is None, format_suite(report)
    assert set(report.providers) == {"east", "west", "local"}


def _hedged(max_attempts: int, primary: Behaviour) -> Scenario:
    return Scenario(
        suite="chaos",
        providers=[
            ProviderSpec(name="primary", schedule=FaultSchedule.always(primary)),
            ProviderSpec(name="backup"),
        ],
        clients=[ClientSpec(can_reset=False)],
        provider_settings={"retries": 0},
        route_settings={"max_attempts": max_attempts, "hedge_after": 0.5},
    )


def test_a_hedge_does_not_exceed_max_attempts() -> None:
    # Shrunk by the chaos suite: two upstream requests for a route that allows one.
    violations = check(play(_hedged(1, Behaviour("refuse"))))
    assert violations == [], violations


def test_a_hedge_that_never_started_leaves_the_failover_its_attempt() -> None:
    # Shrunk by the chaos suite: the primary breaks after one token, the backup is healthy,
    # yet the stream ends all_providers_unavailable ("gave up after 2 attempts").
    violations = check(play(_hedged(2, Behaviour("reset", at_token=1))))
    assert violations == [], violations


def test_a_short_last_continuation_is_not_taken_for_a_repeat() -> None:
    # Found by the midstream suite (shrunk, then simplified to plain words and one client):
    # the primary breaks two tokens before the end; the backup continues with ' library.',
    # which the guard drops because 'library.' occurs earlier in the answer.
    scenario = Scenario(
        suite="midstream",
        providers=[
            ProviderSpec(
                name="primary", schedule=FaultSchedule.always(Behaviour("reset", at_token=64))
            ),
            ProviderSpec(name="backup"),
        ],
        clients=[ClientSpec()],
        seed=4,
    )
    violations = check(play(scenario))
    assert violations == [], violations


def _two_broken_one_spare() -> Scenario:
    # Shrunk by the midstream suite (the "continued" invariant) from the code before the retry
    # budget counted per route and at once: primary and backup both break after one token, so
    # three streams need two continuations each within moments; the old budget (3 retries per
    # 10 s, all routes together) refused the later ones while the spare stayed healthy.
    broken = FaultSchedule.always(Behaviour("reset", at_token=1))
    return Scenario(
        suite="midstream",
        providers=[
            ProviderSpec(name="primary", schedule=broken),
            ProviderSpec(name="backup", schedule=broken),
            ProviderSpec(name="spare"),
        ],
        clients=[ClientSpec(can_reset=False)] * 3,
    )


def test_continuations_are_never_refused_by_the_retry_budget() -> None:
    violations = check(play(_two_broken_one_spare()))
    assert violations == [], violations


def test_a_budget_that_refuses_continuations_breaks_the_continued_invariant(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from actors.policy import _budget

    original = _budget.retry_started

    def refuses_continuations(load, *, continuation, **limits):  # type: ignore[no-untyped-def]
        return original(load, continuation=False, **limits)

    monkeypatch.setattr(_budget, "retry_started", refuses_continuations)
    scenario = attrs.evolve(_two_broken_one_spare(), route_settings={"min_retry_concurrency": 1})
    violations = check(play(scenario))
    assert violations and {v.invariant for v in violations} == {"continued"}, violations
