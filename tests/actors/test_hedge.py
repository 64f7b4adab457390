"""Hedging on its own: when a rival starts, who wins the race, what the loser comes back as."""

from __future__ import annotations

import pytest
import trio

from actors import HealthSnapshot, RouteConfig, Target
from actors._attempt import AttemptOutcome
from actors._hedge import HedgeRace, hedge_delay, wants_hedge

from .conftest import make_config

TARGETS = (Target(provider="a", model="m"), Target(provider="b", model="m"))


def route(hedge_after: float | str | None = 0.5, max_attempts: int = 4) -> RouteConfig:
    return RouteConfig(
        name="r", targets=TARGETS, hedge_after=hedge_after, max_attempts=max_attempts
    )


class Attempt:
    """A scripted attempt: text after ``text_at`` seconds (or none), its end ``end_at`` later."""

    def __init__(self, name: str, *, text_at: float | None, end_at: float, kind="done") -> None:
        self.name = name
        self.text_at = text_at
        self.end_at = end_at
        self.kind = kind
        self.started_at: float | None = None
        self.cancelled_at: float | None = None
        self.claimed: bool | None = None

    def __repr__(self) -> str:
        return f"<Attempt {self.name} text_at={self.text_at} end_at={self.end_at} {self.kind}>"

    async def __call__(self, claim) -> AttemptOutcome:
        self.started_at = trio.current_time()
        try:
            if self.text_at is not None:
                await trio.sleep(self.text_at)
                self.claimed = claim()
                if not self.claimed:
                    return AttemptOutcome(kind="lost")
            await trio.sleep(self.end_at)
            return AttemptOutcome(kind=self.kind, produced_text=self.text_at is not None)
        except trio.Cancelled:
            self.cancelled_at = trio.current_time()
            raise


async def race(primary: Attempt, hedge: Attempt, delay: float = 0.5):
    won: list[float] = []
    contest = HedgeRace(delay, on_hedge_wins=lambda: won.append(trio.current_time()))
    outcomes = await contest.run(primary, hedge)
    return contest.winner, outcomes, won


def test_only_a_first_attempt_with_one_to_spare_is_hedged():
    assert wants_hedge(route(), attempts=0, delivered=False)
    assert not wants_hedge(route(hedge_after=None), attempts=0, delivered=False)
    assert not wants_hedge(route(), attempts=1, delivered=False)
    assert not wants_hedge(route(), attempts=0, delivered=True)
    assert not wants_hedge(route(max_attempts=1), attempts=0, delivered=False)


def test_auto_hedging_waits_for_the_primarys_p95_or_half_its_first_token_timeout():
    provider = make_config().providers["a"]
    assert hedge_delay(route(0.25), provider, None) == 0.25
    assert hedge_delay(route("auto"), provider, None) == provider.first_token_timeout / 2
    snapshot = HealthSnapshot(
        provider="a", status="healthy", consecutive_failures=0, next_try_at=None,
        ttft_ewma=0.4, ttft_p95=0.9, since=0.0,
    )  # fmt: skip
    assert hedge_delay(route("auto"), provider, snapshot) == 0.9


async def test_a_primary_with_text_before_the_delay_never_starts_the_hedge(autojump_clock):
    primary = Attempt("primary", text_at=0.2, end_at=1.0)
    hedge = Attempt("hedge", text_at=0.1, end_at=1.0)
    winner, (first, second), won = await race(primary, hedge)
    assert winner == "primary" and first.kind == "done" and primary.claimed
    assert second.kind == "lost" and not second.started and hedge.started_at is None
    assert won == []


async def test_a_slow_primary_is_raced_from_the_delay_and_cancelled_when_the_hedge_wins(
    autojump_clock,
):
    primary = Attempt("primary", text_at=3.0, end_at=1.0)
    hedge = Attempt("hedge", text_at=0.1, end_at=1.0)
    winner, (first, second), won = await race(primary, hedge, delay=0.5)
    assert hedge.started_at == pytest.approx(0.5)
    assert winner == "hedge" and won == [pytest.approx(0.6)]
    assert primary.cancelled_at == pytest.approx(0.6) and first.kind == "lost" and first.started
    assert second.kind == "done" and second.started


async def test_a_primary_that_fails_before_the_delay_starts_the_hedge_at_once(autojump_clock):
    primary = Attempt("primary", text_at=None, end_at=0.1, kind="failed")
    hedge = Attempt("hedge", text_at=0.1, end_at=1.0)
    winner, (first, second), _ = await race(primary, hedge, delay=5.0)
    assert first.kind == "failed"
    assert hedge.started_at == pytest.approx(0.1) and winner == "hedge" and second.kind == "done"


async def test_a_primary_that_wins_after_the_hedge_started_cancels_the_hedge(autojump_clock):
    primary = Attempt("primary", text_at=0.7, end_at=1.0)
    hedge = Attempt("hedge", text_at=5.0, end_at=1.0)
    winner, (first, second), won = await race(primary, hedge, delay=0.5)
    assert winner == "primary" and first.kind == "done" and won == []
    assert hedge.cancelled_at == pytest.approx(0.7)
    assert second.kind == "lost" and second.started  # it ran, so it cost an attempt


async def test_attempts_with_text_at_the_same_moment_have_exactly_one_winner(autojump_clock):
    primary = Attempt("primary", text_at=0.1, end_at=1.0)
    hedge = Attempt("hedge", text_at=0.1, end_at=1.0)
    winner, (first, second), won = await race(primary, hedge, delay=0.0)
    assert [primary.claimed, hedge.claimed].count(True) == 1
    loser = second if winner == "primary" else first
    assert loser.kind == "lost" and (won == []) == (winner == "primary")
