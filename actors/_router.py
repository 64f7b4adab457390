"""RouterActor: picks the target of each attempt for a route, from the providers' health.

Sessions ask with ``pick``; the router reads the ``HealthBoard`` and keeps each route's
strategy memory (weighted round-robin) and the retry budget. It is consulted per attempt,
never per token. When nobody else is waiting for it, a pick is answered on the asker's own turn
(``pick_nowait``), without the two task switches of a message and its reply.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Mapping

import attrs
import trio

from ._config import RouteConfig, Target
from ._errors import BatonError
from ._health import HealthBoard
from ._vocab import RefusalReason
from .policy._health_view import HealthSnapshot
from .policy._route import choose

log = logging.getLogger(__name__)


class RouterFailed(BatonError):
    """The router crashed while answering; the asking session cannot go on."""


RETRY_WINDOW = 10.0  # seconds over which the retry budget is measured
RETRY_FLOOR = 3  # retries always allowed inside the window, however few requests there were


@attrs.frozen(kw_only=True)
class Picked:
    index: int
    target: Target


@attrs.frozen(kw_only=True)
class Unavailable:
    """No target can take the attempt; ``snapshots`` says why, provider by provider."""

    reason: RefusalReason
    snapshots: Mapping[str, HealthSnapshot | None]


PickResult = Picked | Unavailable


@attrs.frozen(kw_only=True)
class Pick:
    route: str
    exclude: frozenset[int]
    retry: bool
    hedge: bool
    reply: trio.MemorySendChannel[PickResult]


@attrs.frozen(kw_only=True)
class Crashed:
    """A pick answered on the asker's turn crashed: the router's task crashes with it."""

    error: Exception


RouterMsg = Pick | Crashed


@attrs.frozen(kw_only=True)
class RouterStatistics:
    total_picks: int  # picks answered
    picked_nowait: int  # of those, answered on the asker's turn (nobody else was waiting)


class RouterActor:
    """Owns the routes' strategy state; ``pick`` is its one question."""

    def __init__(
        self, routes: Mapping[str, RouteConfig], board: HealthBoard, *, seed: int | None = None
    ) -> None:
        self._routes = dict(routes)
        self._board = board
        self._send, self._receive = trio.open_memory_channel[RouterMsg](0)
        self._random = random.Random(seed)
        self._weights: dict[str, dict[int, float]] = {}
        self._budget: deque[tuple[float, bool]] = deque()
        self._total_picks = 0
        self._picked_nowait = 0

    def statistics(self) -> RouterStatistics:
        return RouterStatistics(total_picks=self._total_picks, picked_nowait=self._picked_nowait)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Answer picks until the mailbox closes."""
        task_status.started()
        async for msg in self._receive:
            match msg:
                case Crashed(error=error):
                    raise error
                case Pick(route=route, exclude=exclude, retry=retry, hedge=hedge, reply=reply):
                    # Closing the reply even if _pick crashes tells the asker at once
                    # (EndOfChannel) instead of leaving it waiting for an answer the restarted
                    # router never sends.
                    with reply:
                        result = self._pick(route, exclude=exclude, retry=retry, hedge=hedge)
                        self._total_picks += 1
                        try:
                            reply.send_nowait(result)
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            pass  # the asker is gone

    def close(self) -> None:
        """End the actor in order: its loop sees the end of its mailbox."""
        self._send.close()

    async def pick(
        self,
        route: str,
        *,
        exclude: frozenset[int] = frozenset(),
        retry: bool = False,
        hedge: bool = False,
    ) -> PickResult:
        """Ask for the target of the next attempt on ``route``.

        ``retry``: the request already had an attempt (counts against the retry budget);
        ``hedge``: a parallel attempt racing a slow first one (limited by ``hedge_after``, not
        by the budget). Answered at once when the router is idle (``pick_nowait``); otherwise
        the question waits its turn behind the others. Raises ``RouterFailed`` when the router
        crashes while answering.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            return self.pick_nowait(route, exclude=exclude, retry=retry, hedge=hedge)
        except trio.WouldBlock:
            pass
        reply_send, reply_receive = trio.open_memory_channel[PickResult](1)
        await self._send.send(
            Pick(route=route, exclude=exclude, retry=retry, hedge=hedge, reply=reply_send)
        )
        with reply_receive:
            try:
                return await reply_receive.receive()
            except trio.EndOfChannel:
                raise RouterFailed(
                    f"the router failed while choosing a target of {route!r}"
                ) from None

    def pick_nowait(
        self,
        route: str,
        *,
        exclude: frozenset[int] = frozenset(),
        retry: bool = False,
        hedge: bool = False,
    ) -> PickResult:
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
            result = self._pick(route, exclude=exclude, retry=retry, hedge=hedge)
        except Exception as exc:
            # A bug in route choice crashes the router, wherever it ran: its task takes the
            # error and the supervisor restarts it (and counts the restart) as for any crash.
            self._send.send_nowait(Crashed(error=exc))
            raise RouterFailed(f"the router failed while choosing a target of {route!r}") from exc
        self._total_picks += 1
        self._picked_nowait += 1
        return result

    def _within_budget(self, route: RouteConfig, now: float, retry: bool) -> bool:
        budget = self._budget
        while budget and budget[0][0] < now - RETRY_WINDOW:
            budget.popleft()
        if retry:
            retries = sum(1 for _, is_retry in budget if is_retry)
            requests = len(budget) - retries
            if retries >= RETRY_FLOOR + route.retry_budget * requests:
                return False
        budget.append((now, retry))
        return True

    def _pick(
        self, route_name: str, *, exclude: frozenset[int], retry: bool, hedge: bool
    ) -> PickResult:
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
        if not hedge and not self._within_budget(route, trio.current_time(), retry):
            log.warning("route %s: retry budget spent; not failing over", route.name)
            return Unavailable(reason="retry_budget", snapshots=named)
        return Picked(index=index, target=route.targets[index])
