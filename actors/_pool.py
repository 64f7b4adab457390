"""PoolActor: the bounded upstream capacity of every provider, handed out fairly between clients.

Callers take a slot with ``async with pool.slot(provider, timeout=..., client=...)``; when a
provider is at ``max_connections``, callers wait until a slot frees or their timeout passes
(``PoolTimeout``), never silently dropped. A freed slot goes to the client whose turn it is
(``policy.next_client``: round-robin between the clients that wait, weighted by priority) and
within a client to its oldest waiter; without clients everyone is the anonymous client, so
that is arrival order. The decisions live in ``PoolState``
(synchronous, like httpcore's pool); the actor loop only applies messages to it. While the
actor is idle, a caller applies its own acquire or release on its own turn instead (see
``PoolActor.slot``), sparing the task switches of a message and a grant.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import attrs
import trio

from ._errors import BatonError
from .policy._fair import ANONYMOUS, ClientTag, FairState, Head, next_client

log = logging.getLogger(__name__)

# Each waiter's reply channel holds one grant so the actor never blocks on a slow caller.
GRANT_BUFFER = 1
# Releases are tells sent from cleanup code, which must never block (the pool may already be
# gone at shutdown); the mailbox holds at most one Acquire and one Release per live attempt.
MAILBOX_BUFFER = math.inf


class PoolTimeout(BatonError):
    """No upstream slot of the provider freed up within the caller's timeout."""


@attrs.frozen(kw_only=True)
class Acquire:
    provider: str
    token: object
    reply: trio.MemorySendChannel[bool]
    client: ClientTag = ANONYMOUS


@attrs.frozen(kw_only=True)
class Release:
    """Give back a slot, or stop waiting for one (whichever the token has)."""

    provider: str
    token: object
    waited: float = 0.0


PoolMsg = Acquire | Release


@attrs.frozen(kw_only=True)
class ProviderPoolStatistics:
    max_connections: int
    in_use: int
    waiting: int
    total_acquired: int
    total_acquired_nowait: int  # of those, granted on the caller's turn: free, nobody waiting
    total_waited: float  # seconds callers spent waiting, summed
    total_timeouts: int
    waiting_by_client: Mapping[str | None, int]  # clients with waiters (None: anonymous)
    granted_by_client: Mapping[str | None, int]  # slots granted to waiters (not nowait), by client


@attrs.frozen(kw_only=True)
class PoolStatistics:
    providers: Mapping[str, ProviderPoolStatistics]


class _ProviderPool:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.holders: set[object] = set()
        self.waiters: dict[str | None, deque[tuple[int, Acquire]]] = {}  # by client, FIFO
        self.arrivals = 0  # numbers the waiters in arrival order
        self.fair = FairState()
        self.granted_by_client: Counter[str | None] = Counter()
        self.total_acquired = 0
        self.total_acquired_nowait = 0
        self.total_waited = 0.0
        self.total_timeouts = 0


class PoolState:
    """The synchronous core: who holds a slot, who waits, who is served next."""

    def __init__(self, limits: Mapping[str, int]) -> None:
        self._pools = {name: _ProviderPool(limit) for name, limit in limits.items()}

    def apply(self, msg: PoolMsg) -> None:
        pool = self._pools[msg.provider]
        match msg:
            case Acquire(client=client):
                pool.waiters.setdefault(client.name, deque()).append((pool.arrivals, msg))
                pool.arrivals += 1
            case Release(token=token, waited=waited):
                pool.total_waited += waited
                if token in pool.holders:
                    pool.holders.discard(token)
                else:
                    self._leave_line(pool, token)
        self._grant(pool)

    @staticmethod
    def _leave_line(pool: _ProviderPool, token: object) -> None:
        for name, line in pool.waiters.items():
            for entry in line:
                if entry[1].token is token:
                    line.remove(entry)
                    if not line:
                        del pool.waiters[name]
                    pool.total_timeouts += 1
                    return

    def acquire_nowait(self, provider: str, token: object) -> bool:
        """Grant ``token`` a slot at once if one is free and nobody waits for one."""
        pool = self._pools[provider]
        if pool.waiters or len(pool.holders) >= pool.limit:
            return False
        pool.holders.add(token)
        pool.total_acquired += 1
        pool.total_acquired_nowait += 1
        return True

    def _grant(self, pool: _ProviderPool) -> None:
        while pool.waiters and len(pool.holders) < pool.limit:
            heads = {
                name: Head(arrived=line[0][0], priority=line[0][1].client.priority)
                for name, line in pool.waiters.items()
            }
            name, pool.fair = next_client(heads, pool.fair)
            line = pool.waiters[name]
            _, waiter = line.popleft()
            if not line:
                del pool.waiters[name]
            try:
                waiter.reply.send_nowait(True)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                continue  # the caller is gone; its Release will find nothing to free
            pool.holders.add(waiter.token)
            pool.total_acquired += 1
            pool.granted_by_client[name] += 1

    def statistics(self) -> PoolStatistics:
        return PoolStatistics(
            providers={
                name: ProviderPoolStatistics(
                    max_connections=p.limit,
                    in_use=len(p.holders),
                    waiting=sum(len(line) for line in p.waiters.values()),
                    total_acquired=p.total_acquired,
                    total_acquired_nowait=p.total_acquired_nowait,
                    total_waited=p.total_waited,
                    total_timeouts=p.total_timeouts,
                    waiting_by_client={name: len(line) for name, line in p.waiters.items()},
                    granted_by_client=dict(p.granted_by_client),
                )
                for name, p in self._pools.items()
            }
        )


class PoolActor:
    """Owns ``PoolState``; others talk to it through ``slot()``."""

    def __init__(self, limits: Mapping[str, int]) -> None:
        self._limits = dict(limits)
        self._state = PoolState(self._limits)
        self._send, self._receive = trio.open_memory_channel[PoolMsg](MAILBOX_BUFFER)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve slot requests until the mailbox closes. A restart starts from empty state."""
        self._state = PoolState(self._limits)
        task_status.started()
        async for msg in self._receive:
            self._state.apply(msg)

    def close(self) -> None:
        """End the actor in order: its loop sees the end of its mailbox."""
        self._send.close()

    def statistics(self) -> PoolStatistics:
        return self._state.statistics()

    @asynccontextmanager
    async def slot(
        self, provider: str, *, timeout: float, client: ClientTag = ANONYMOUS
    ) -> AsyncIterator[float]:
        """Hold one upstream slot of ``provider`` for the body; yields the seconds waited.

        Waits for its ``client``'s turn, behind that client's earlier waiters; raises
        ``PoolTimeout`` after ``timeout`` seconds. Cancellation while waiting or holding gives
        the slot back.

        While the actor is idle (parked on an empty mailbox), a free slot nobody waits for is
        granted on the caller's own turn, and a slot is given back the same way: that is what
        the actor would do with the message next, and doing it here is safe because trio runs
        one task at a time and ``PoolState`` never awaits, so nobody else touches the state
        meanwhile. Otherwise the caller sends its message and queues behind those before it.
        """
        token = object()
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._idle() and self._state.acquire_nowait(provider, token):
            waited = 0.0
        else:
            waited = await self._wait_in_line(provider, token, timeout, client)
        try:
            yield waited
        finally:
            self._release(provider, token, waited)

    def _idle(self) -> bool:
        mailbox = self._receive.statistics()
        return mailbox.current_buffer_used == 0 and mailbox.tasks_waiting_receive == 1

    async def _wait_in_line(
        self, provider: str, token: object, timeout: float, client: ClientTag
    ) -> float:
        """Ask the actor for a slot and wait for it; leaves the line on a timeout or cancel."""
        reply_send, reply_receive = trio.open_memory_channel[bool](GRANT_BUFFER)
        started = trio.current_time()
        try:
            self._send.send_nowait(
                Acquire(provider=provider, token=token, reply=reply_send, client=client)
            )
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise PoolTimeout(f"the upstream pool is shut down; no slot of {provider}") from None
        waited = 0.0
        granted = False
        try:
            with trio.move_on_after(timeout) as waiting:
                await reply_receive.receive()
            waited = trio.current_time() - started
            if waiting.cancelled_caught:
                # A grant racing the timeout is harmless: the Release below frees it.
                raise PoolTimeout(f"no upstream slot of {provider} freed up within {timeout:g} s")
            granted = True
            return waited
        finally:
            reply_receive.close()
            if not granted:
                self._release(provider, token, waited)

    def _release(self, provider: str, token: object, waited: float) -> None:
        """Give back the token's slot, or its place in line (never blocks)."""
        release = Release(provider=provider, token=token, waited=waited)
        if self._idle():
            self._state.apply(release)
            return
        try:
            self._send.send_nowait(release)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the pool is shutting down; there is nothing left to give back
