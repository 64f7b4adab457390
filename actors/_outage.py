"""OutageQueue: one route's places for streams waiting out a total outage, shared by clients.

A stream that finds no usable provider takes a place (never blocking) and gives it back when it
stops waiting. It is refused when the queue is full or when its client already holds its share
(``policy.queue_share``); streams without a client are only limited by the queue's size.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Literal

import attrs

from .policy._fair import ClientTag
from .policy._queue_share import queue_share

QueueRefusal = Literal["queue_full", "share_full"]


@attrs.frozen(kw_only=True)
class OutageQueueStatistics:
    """A route's outage queue: its size and the streams waiting in it, per client."""

    size: int
    waiting: int
    waiting_by_client: Mapping[str | None, int]


class OutageQueue:
    """The places of one route's outage queue; ``priorities``: the route's configured clients."""

    def __init__(self, size: int, priorities: Mapping[str, int]) -> None:
        self.size = size
        self._priorities = dict(priorities)
        self._waiting: Counter[str | None] = Counter()

    def share(self, client: ClientTag) -> int:
        """The places ``client`` may hold at once."""
        if client.name is None:
            return self.size
        total = sum(self._priorities.values())
        if client.name not in self._priorities:
            total += max(1, client.priority)
        return queue_share(queue_size=self.size, priority=client.priority, total_priority=total)

    def held(self, client: ClientTag) -> int:
        """The places ``client`` holds now."""
        return self._waiting[client.name]

    def enter_nowait(self, client: ClientTag) -> QueueRefusal | None:
        """Take a place for one of ``client``'s streams; the refusal, or None: taken."""
        share = self.share(client)
        if share < self.size and self._waiting[client.name] >= share:
            return "share_full"
        if sum(self._waiting.values()) >= self.size:
            return "queue_full"
        self._waiting[client.name] += 1
        return None

    def leave(self, client: ClientTag) -> None:
        """Give back a place ``client`` took."""
        self._waiting[client.name] -= 1
        if self._waiting[client.name] <= 0:
            del self._waiting[client.name]

    def statistics(self) -> OutageQueueStatistics:
        return OutageQueueStatistics(
            size=self.size,
            waiting=sum(self._waiting.values()),
            waiting_by_client=dict(self._waiting),
        )
