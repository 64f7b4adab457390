"""Fair admission: which client's waiter gets the next free slot (stride scheduling).

Each client with waiters has a *pass*; the client with the lowest pass is served next (its
oldest waiter: FIFO within a client) and its pass grows by ``1 / priority``, so a client of
priority 2 is served twice per round to a priority-1 client's once. ``floor`` is the pass of
the last grant: a client that starts waiting begins there, so it neither catches up on turns it
did not wait for nor falls behind the ones already waiting. Ties go to the older waiter, so
with one client (the anonymous one, when there are no client keys) this is plain FIFO.
"""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction

import attrs


@attrs.frozen(kw_only=True)
class ClientTag:
    """Whose stream it is, for fair admission: a client's name (None: anonymous) and weight."""

    name: str | None = None
    priority: int = 1


ANONYMOUS = ClientTag()


@attrs.frozen(kw_only=True)
class Head:
    """A client's oldest waiter: when it arrived (an order number) and its client's weight."""

    arrived: int
    priority: int = 1


@attrs.frozen(kw_only=True)
class FairState:
    """Each client's pass (its virtual time of next service) and the pass of the last grant."""

    passes: Mapping[str | None, Fraction] = attrs.field(factory=dict)
    floor: Fraction = Fraction(0)


def next_client(heads: Mapping[str | None, Head], state: FairState) -> tuple[str | None, FairState]:
    """Pick the client whose oldest waiter is granted next; return it and the new state.

    ``heads`` holds the clients that have waiters (it must not be empty). Clients that wait no
    more and are not ahead of the floor are forgotten, so the state stays as small as the set
    of clients.
    """
    if not heads:
        raise ValueError("next_client needs at least one waiting client")

    def start(client: str | None) -> Fraction:
        return max(state.passes.get(client, state.floor), state.floor)

    chosen = min(heads, key=lambda client: (start(client), heads[client].arrived))
    begin = start(chosen)
    passes = {c: p for c, p in state.passes.items() if c in heads or p > begin}
    passes[chosen] = begin + Fraction(1, max(1, heads[chosen].priority))
    return chosen, FairState(passes=passes, floor=begin)
