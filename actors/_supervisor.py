"""Supervisor: the root nursery of an actor system, restarting permanent actors (one_for_one).

A permanent actor that crashes is restarted on its own; more than ``max_restarts`` crashes
within ``period`` seconds escalate: the supervisor raises and the whole system stops (OTP's
restart intensity). Temporary children (stream sessions) run in a nursery of their own and are
never restarted; a session handles its own crash by ending its stream with an error.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable

import attrs
import trio

from ._errors import BatonError

log = logging.getLogger(__name__)


class EscalationError(BatonError):
    """A permanent actor crashed more often than its restart intensity allows."""


@attrs.frozen(kw_only=True)
class SupervisorStatistics:
    restarts: int
    children: tuple[str, ...]


class Supervisor:
    """Runs permanent children with restarts and temporary children without."""

    def __init__(
        self,
        nursery: trio.Nursery,
        sessions: trio.Nursery,
        *,
        max_restarts: int = 5,
        period: float = 10.0,
    ) -> None:
        self._nursery = nursery
        self._sessions = sessions
        self._max_restarts = max_restarts
        self._period = period
        self._restarts: deque[float] = deque()
        self._children: list[str] = []
        self.total_restarts = 0

    def statistics(self) -> SupervisorStatistics:
        return SupervisorStatistics(restarts=self.total_restarts, children=tuple(self._children))

    async def start_permanent(self, name: str, run: Callable[..., Awaitable[None]]) -> None:
        """Start ``run(task_status=...)`` and keep it running; returns once it is ready."""
        self._children.append(name)
        await self._nursery.start(self._keep_running, name, run)

    async def _keep_running(
        self,
        name: str,
        run: Callable[..., Awaitable[None]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        first = True
        while True:
            try:
                if first:
                    first = False
                    await run(task_status=task_status)
                else:
                    await run()
                return  # an orderly end: the actor's mailbox was closed
            except Exception as exc:
                now = trio.current_time()
                self._restarts.append(now)
                while self._restarts and self._restarts[0] < now - self._period:
                    self._restarts.popleft()
                if len(self._restarts) > self._max_restarts:
                    log.critical(
                        "actor %s crashed %d times in %g s; stopping",
                        name,
                        len(self._restarts),
                        self._period,
                    )
                    raise EscalationError(f"actor {name} keeps crashing: {exc!r}") from exc
                self.total_restarts += 1
                log.exception("actor %s crashed; restarting it", name)

    def start_temporary(self, run: Callable[[], Awaitable[None]]) -> None:
        """Start a temporary child (a stream session); it is never restarted."""
        self._sessions.start_soon(run)
