"""Fair shares of a route's outage queue: how many of its places one client may hold.

The share is static: a client of priority ``p`` may hold ``floor(queue_size * p / total)``
places (at least one), where ``total`` is the priority of every configured client that may use
the route. So however early one client fills its places, the others' places stay free for them.
The anonymous client (streams without a client key) is not shared against anyone: the whole
queue, first come first served, as without client keys.
"""

from __future__ import annotations


def queue_share(*, queue_size: int, priority: int, total_priority: int) -> int:
    """The places of a ``queue_size`` outage queue a client of ``priority`` may hold.

    ``total_priority`` is the sum over the route's clients (the client's own included); zero
    or less means nobody to share with: the whole queue.
    """
    if total_priority <= 0:
        return queue_size
    return min(queue_size, max(1, queue_size * max(1, priority) // total_priority))
