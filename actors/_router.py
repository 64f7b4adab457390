"""RouterActor: picks the target of each attempt for a route, from the providers' health.

Sessions ask with ``pick``; the router reads the ``HealthBoard`` and keeps each route's
strategy memory (weighted round-robin) and its retry budget (``policy.budget``: the requests
and retries in flight). It is consulted per attempt, never per token. When nobody else is
waiting for it, a pick is answered on the asker's own turn (``pick_nowait``), without the two
task switches of a message and its reply. Sessions tell it when a request and each retry
attempt start and end with the ``*_nowait`` calls, which only count and never wait.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping

import attrs
import trio

from ._config import RouteConfig, Target
from ._errors import BatonError
from ._health import HealthBoard
from ._vocab import RefusalReason
from .policy import _budget as budget
from .policy._budget import RetryLoad
from .policy._health_view import HealthSnapshot
from .policy._route import choose

log = logging.getLogger(__name__)


class RouterFailed(BatonError):
    """The router crashed while answering; the asking session cannot go on."""


@attrs.frozen(kw_only=True)
class Picked:
    index: int
    target: Target


@attrs.frozen(kw_only=True)
class Unavailable:
    """No target can take the attempt; ``snapshots`` says why, provider by provider.

    ``detail``: what more a person needs to act on the refusal (the budget's numbers).
    """

    reason: RefusalReason
    snapshots: Mapping[str, HealthSnapshot | None]
    detail: str = ""


PickResult = Picked | Unavailable


@attrs.frozen(kw_only=True)
class Pick:
    route: str
    exclude: frozenset[int]
    reply: trio.MemorySendChannel[PickResult]


@attrs.frozen(kw_only=True)
class Crashed:
    """A pick answered on the asker's turn crashed: the router's task crashes with it."""

    error: Exception


RouterMsg = Pick | Crashed


@attrs.frozen(kw_only=True)
class RouteRetryStatistics:
    """One route's retry budget: requests and retries in flight now, the peak, the refusals."""

    requests_in_flight: int
    retries_in_flight: int
    peak_retries_in_flight: int  # the most retry attempts that ran at once
    refusals: int  # retries the budget refused
    limit: float  # retries that may run at once now: max(min_retry_concurrency, share)


@attrs.frozen(kw_only=True)
class RouterStatistics:
    total_picks: int  # picks answered
    picked_nowait: int  # of those, answered on the asker's turn (nobody else was waiting)
    routes: Mapping[str, RouteRetryStatistics]


class RouterActor:
    """Owns the routes' strategy state and retry budgets; ``pick`` is its one question."""

    def __init__(
        self, routes: Mapping[str, RouteConfig], board: HealthBoard, *, seed: int | None = None
    ) -> None:
        self._routes = dict(routes)
        self._board = board
        self._send, self._receive = trio.open_memory_channel[RouterMsg](0)
        self._random = random.Random(seed)
        self._weights: dict[str, dict[int, float]] = {}
        self._loads = {name: RetryLoad() for name in self._routes}
        self._total_picks = 0
        self._picked_nowait = 0

    def statistics(self) -> RouterStatistics:
        routes = {}
        for name, load in self._loads.items():
            route = self._routes[name]
            limit = budget.retry_limit(
                load.requests, retry_budget=route.retry_budget,
                min_retry_concurrency=route.min_retry_concurrency,
            )  # fmt: skip
            routes[name] = RouteRetryStatistics(
                requests_in_flight=load.requests, retries_in_flight=load.retries,
                peak_retries_in_flight=load.peak_retries, refusals=load.refusals, limit=limit,
            )  # fmt: skip
        return RouterStatistics(
            total_picks=self._total_picks, picked_nowait=self._picked_nowait, routes=routes
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Answer picks until the mailbox closes."""
        task_status.started()
        async for msg in self._receive:
            match msg:
                case Crashed(error=error):
                    raise error
                case Pick(route=route, exclude=exclude, reply=reply):
                    # Closing the reply even if _pick crashes tells the asker at once
                    # (EndOfChannel) instead of leaving it waiting for an answer the restarted
                    # router never sends.
                    with reply:
                        result = self._pick(route, exclude=exclude)
                        self._total_picks += 1
                        try:
                            reply.send_nowait(result)
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            pass  # the asker is gone

    def close(self) -> None:
        """End the actor in order: its loop sees the end of its mailbox."""
        self._send.close()

    async def pick(self, route: str, *, exclude: frozenset[int] = frozenset()) -> PickResult:
        """Ask for the target of the next attempt on ``route``, leaving out ``exclude``.

        Answered at once when the router is idle (``pick_nowait``); otherwise the question
        waits its turn behind the others. Raises ``RouterFailed`` when the router crashes while
        answering. Whether a retry may run at all is ``start_retry_nowait``'s question.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            return self.pick_nowait(route, exclude=exclude)
        except trio.WouldBlock:
            pass
        reply_send, reply_receive = trio.open_memory_channel[PickResult](1)
        await self._send.send(Pick(route=route, exclude=exclude, reply=reply_send))
        with reply_receive:
            try:
                return await reply_receive.receive()
            except trio.EndOfChannel:
                raise RouterFailed(
                    f"the router failed while choosing a target of {route!r}"
                ) from None

    def pick_nowait(self, route: str, *, exclude: frozenset[int] = frozenset()) -> PickResult:
        """Answer ``pick`` on the caller's turn; ``trio.WouldBlock`` unless the router is idle.

        Idle: the router's task is parked on its empty mailbox and nobody is queued to ask.
        Then the answer is the one the router would give next, and giving it here is safe:
        trio runs one task at a time and ``_pick`` never awaits, so the router's state is
        touched by nobody else meanwhile, exactly as if its own task ran it. When others are
        queued (or the router is busy or restarting), the caller must ask with ``pick`` and
        wait its turn, which keeps the order first come, first served.
        """
        mailbox = self._receive.statistics()
        if mailbox.tasks_waiting_receive != 1 or mailbox.tasks_waiting_send != 0:
            raise trio.WouldBlock
        try:
            result = self._pick(route, exclude=exclude)
        except Exception as exc:
            # A bug in route choice crashes the router, wherever it ran: its task takes the
            # error and the supervisor restarts it (and counts the restart) as for any crash.
            self._send.send_nowait(Crashed(error=exc))
            raise RouterFailed(f"the router failed while choosing a target of {route!r}") from exc
        self._total_picks += 1
        self._picked_nowait += 1
        return result

    # --- the retry budget: counts the sessions keep, on their own turn -----------------------
    #
    # These touch only the route's counts and never wait, so, as for ``pick_nowait``, running
    # them on the caller's turn is running them on the router's: trio runs one task at a time.
    # Unlike a pick there is no order to keep, so they never queue, and a session can call the
    # ending ones from its ``finally`` whatever ended it (a cancellation or a crash too).

    def start_request_nowait(self, route: str) -> None:
        """A request on ``route`` started; ``end_request_nowait`` must follow, once."""
        self._loads[route] = budget.request_started(self._loads[route])

    def end_request_nowait(self, route: str) -> None:
        self._loads[route] = budget.request_ended(self._loads[route])

    def start_retry_nowait(self, route: str, *, continuation: bool) -> Unavailable | None:
        """Let one retry attempt of a request on ``route`` start, or refuse it (the budget).

        None: it may run, and counts until ``end_retry_nowait``. ``continuation``: the client
        already holds text of the request, which the budget never refuses.
        """
        config = self._routes[route]
        load, allowed = budget.retry_started(
            self._loads[route], retry_budget=config.retry_budget,
            min_retry_concurrency=config.min_retry_concurrency, continuation=continuation,
        )  # fmt: skip
        self._loads[route] = load
        if allowed:
            return None
        log.warning(
            "route %s: retry budget spent (%d retries in flight for %d requests); not retrying",
            route, load.retries, load.requests,
        )  # fmt: skip
        return Unavailable(
            reason="retry_budget",
            snapshots={t.provider: self._board.get(t.provider) for t in config.targets},
            detail=(
                f"{load.retries} retries already running for {load.requests} requests, the most "
                f"that retry_budget = {config.retry_budget:g} and min_retry_concurrency = "
                f"{config.min_retry_concurrency} allow"
            ),
        )

    def end_retry_nowait(self, route: str) -> None:
        """A retry attempt that ``start_retry_nowait`` let start has ended."""
        self._loads[route] = budget.retry_ended(self._loads[route])

    def _pick(self, route_name: str, *, exclude: frozenset[int]) -> PickResult:
        """The decision itself: synchronous, so it can run on the router's turn or the asker's."""
        route = self._routes[route_name]
        snapshots = self._board.all()
        named = {t.provider: snapshots.get(t.provider) for t in route.targets}
        if len(exclude) >= len(route.targets):
            return Unavailable(reason="exhausted", snapshots=named)
        index = choose(
            route, snapshots, exclude,
            weights_state=self._weights.setdefault(route.name, {}),
            random=self._random.random(), now=trio.current_time(),
        )  # fmt: skip
        if index is None:
            return Unavailable(reason="none_usable", snapshots=named)
        return Picked(index=index, target=route.targets[index])
