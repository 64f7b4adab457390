"""Hedging: race a second target against a slow first one for a stream's first text.

A route with ``hedge_after`` gives the first attempt of a stream a rival when it has an attempt
to spare (``wants_hedge``): ``pick_hedge`` asks the router for a second target and that target's
health for admission, and a ``HedgeRace`` runs the two. The primary starts at once; the hedge
starts after ``hedge_delay`` seconds, or at once when the primary ends without an answer
sooner, and not at all when the primary already holds the stream. The first attempt to produce
text claims the stream; the other is cancelled at once and comes back ``lost``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Literal

import trio

from ._attempt import AttemptOutcome
from ._config import ProviderConfig, RouteConfig
from ._context import SessionContext
from ._router import Picked
from .policy._health_view import HealthSnapshot

Claim = Callable[[], bool]  # an attempt calls it at its first text: may it take the stream?
Runner = Callable[[Claim], Awaitable[AttemptOutcome]]  # runs one attempt to its end

Side = Literal["primary", "hedge"]

_NOT_STARTED = AttemptOutcome(kind="lost", started=False)
_STARTED = AttemptOutcome(kind="lost")  # started, so it costs an attempt, but never finished


def wants_hedge(route: RouteConfig, *, attempts: int, delivered: bool) -> bool:
    """Whether the next attempt gets a rival: only a stream's first, with an attempt to spare."""
    return (
        route.hedge_after is not None
        and attempts == 0
        and not delivered
        and route.max_attempts >= 2
    )


def hedge_delay(
    route: RouteConfig, primary: ProviderConfig, health: HealthSnapshot | None
) -> float:
    """Seconds the primary has to produce text before its rival starts.

    ``hedge_after = "auto"`` is the primary's recent 95th percentile time to first token, or half
    its ``first_token_timeout`` until that is known.
    """
    hedge_after = route.hedge_after
    if hedge_after == "auto":
        p95 = health.ttft_p95 if health is not None else None
        return p95 if p95 is not None else primary.first_token_timeout / 2
    assert isinstance(hedge_after, float)
    return hedge_after


async def pick_hedge(ctx: SessionContext, route: RouteConfig, primary: int) -> Picked | None:
    """A second target of ``route`` admitted by its health, or None when there is none.

    The caller holds its admission (it may be a half-open trial place) and must give it back
    if the hedge never starts.
    """
    # A hedge races the stream's first attempt: ``hedge_after`` limits it, not the retry budget.
    picked = await ctx.router.pick(route.name, exclude=frozenset({primary}))
    if not isinstance(picked, Picked):
        return None
    if not await ctx.health[picked.target.provider].admit():
        return None
    return picked


class HedgeRace:
    """One race between a primary attempt and its hedge; ``run`` it once.

    ``on_hedge_wins`` is called when the hedge claims the stream, before its first text is
    delivered (the session announces the move to the client then).
    """

    def __init__(self, delay: float, *, on_hedge_wins: Callable[[], None]) -> None:
        self._delay = delay
        self._on_hedge_wins = on_hedge_wins
        self.winner: Side | None = None  # once one of them has claimed the stream
        self._primary_scope = trio.CancelScope()
        self._hedge_scope = trio.CancelScope()
        self._primary_unanswered = trio.Event()
        self._primary = _STARTED
        self._hedge = _NOT_STARTED

    def __repr__(self) -> str:
        return f"<HedgeRace delay={self._delay:g} winner={self.winner}>"

    async def run(self, primary: Runner, hedge: Runner) -> tuple[AttemptOutcome, AttemptOutcome]:
        """Run both attempts to their ends; return (primary's outcome, hedge's outcome).

        The loser comes back ``lost``; a hedge that never had to start comes back ``lost`` with
        ``started=False``. Cancelling the race cancels both attempts.
        """
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._run_primary, primary)
            nursery.start_soon(self._run_hedge, hedge)
        return self._primary, self._hedge

    async def _run_primary(self, primary: Runner) -> None:
        with self._primary_scope:
            self._primary = await primary(self._claim_for_primary)
        if self._primary.kind != "done":
            self._primary_unanswered.set()  # whatever ended it, the hedge need not wait longer

    async def _run_hedge(self, hedge: Runner) -> None:
        with self._hedge_scope:
            with trio.move_on_after(self._delay):
                await self._primary_unanswered.wait()
            if self.winner is not None:
                return
            self._hedge = _STARTED
            self._hedge = await hedge(self._claim_for_hedge)

    def _claim_for_primary(self) -> bool:
        return self._claim("primary", loser=self._hedge_scope)

    def _claim_for_hedge(self) -> bool:
        return self._claim("hedge", loser=self._primary_scope)

    def _claim(self, who: Side, *, loser: trio.CancelScope) -> bool:
        if self.winner is None:
            self.winner = who
            loser.cancel()
            if who == "hedge":
                self._on_hedge_wins()
        return self.winner == who
