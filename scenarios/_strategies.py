"""Hypothesis strategies for fault models and client models, and what "stays healthy" means.

Behaviour families are scaled to a provider's timeouts: a *short* stall or drip stays under the
timeout that would cut it (the answer still arrives), a *long* one outlasts it (Baton must give
up on the attempt). ``stays_healthy`` is the matching predicate: a provider whose every
scheduled behaviour finishes the answer within its timeouts, which is what the invariant "if any
target stayed healthy, the stream ends in done" needs.

``fault_table`` is the deterministic "random fault with probability p per request" mechanism:
a seeded table of behaviours by request index, written as one ``Rule`` per faulty index.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from hypothesis import strategies as st

from actors import ProviderConfig

from ._faults import Behaviour, FaultSchedule, Rule
from ._scenario import ClientSpec

HEALTHY = Behaviour()
TRANSIENT_STATUSES = (500, 502, 503, 504, 529)
AUTH_STATUSES = (401, 403)
MAX_AT_TOKEN = 60
# What drawn clients ask for: half plain text (the suites' original meaning), the rest tools,
# JSON or reasoning. The first entry is what hypothesis shrinks towards.
CLIENT_ASKS = ("text", "text", "text", "tools", "json", "reasoning")


@attrs.frozen
class Timeouts:
    """The two timeouts that decide whether a stall or a drip is survivable."""

    first_token: float = 5.0
    idle: float = 4.0

    @classmethod
    def of(cls, config: ProviderConfig) -> Timeouts:
        return cls(config.first_token_timeout, config.idle_timeout)

    @property
    def short(self) -> float:
        """A pause every attempt survives."""
        return round(min(self.first_token, self.idle) / 8, 3)

    @property
    def long(self) -> float:
        """A pause no attempt survives."""
        return max(30.0, 2 * max(self.first_token, self.idle))


def prestream_faults(t: Timeouts = Timeouts()) -> st.SearchStrategy[Behaviour]:
    """Faults that strike before the first token: refusals, statuses, silent starts."""
    return st.one_of(
        st.just(Behaviour("refuse")),
        st.sampled_from(TRANSIENT_STATUSES).map(lambda s: Behaviour("status", status=s)),
        st.sampled_from([None, 0.5, 3.0, 120.0]).map(
            lambda r: Behaviour("status", status=429, retry_after=r)
        ),
        st.sampled_from(AUTH_STATUSES).map(lambda s: Behaviour("status", status=s)),
        st.just(
            Behaviour("status", status=400, code="context_length_exceeded", message="too long")
        ),
        st.sampled_from([t.short, t.long]).map(lambda s: Behaviour("stall", stall=s)),
        st.just(Behaviour("keepalive_stall", stall=t.long)),
        st.just(Behaviour("stream_error")),
    )


def rejections() -> st.SearchStrategy[Behaviour]:
    """A client error the provider answers the request itself with (ends the stream)."""
    return st.just(
        Behaviour("status", status=400, code="invalid_request_error", message="bad temperature")
    )


def midstream_faults(t: Timeouts = Timeouts(), *, first: int = 1) -> st.SearchStrategy[Behaviour]:
    """Faults that strike after ``first`` or more tokens: the answer breaks in the middle."""
    at = st.integers(first, MAX_AT_TOKEN)
    return st.one_of(
        at.map(lambda k: Behaviour("reset", at_token=k)),
        st.tuples(at, st.sampled_from([t.short, t.long])).map(
            lambda ks: Behaviour("stall", at_token=ks[0], stall=ks[1])
        ),
        at.map(lambda k: Behaviour("keepalive_stall", at_token=k, stall=t.long)),
        at.map(lambda k: Behaviour("stream_error", at_token=k)),
        at.map(lambda k: Behaviour("malformed", at_token=k)),
        st.just(Behaviour("no_finish")),
        st.just(Behaviour("no_done")),
        st.sampled_from([t.short / 4, t.idle * 1.5]).map(
            lambda d: Behaviour("drip", token_delay=d)
        ),
    )


def continuers(t: Timeouts = Timeouts()) -> st.SearchStrategy[Behaviour]:
    """What a target asked to continue an answer does: continue, restart, refuse prefill or fail."""
    return st.one_of(
        st.just(HEALTHY),
        st.just(Behaviour("healthy", prefill="restart")),
        st.just(Behaviour("healthy", prefill="reject")),
        midstream_faults(t),
    )


def any_behaviour(
    t: Timeouts = Timeouts(), *, rejecting: bool = True
) -> st.SearchStrategy[Behaviour]:
    """Any behaviour at all, healthy included, at any token position.

    ``rejecting=False`` leaves out the 400 that ends a stream whatever the other targets do.
    """
    return st.one_of(
        st.just(HEALTHY),
        prestream_faults(t),
        rejections() if rejecting else st.nothing(),
        midstream_faults(t, first=0),
        st.just(Behaviour("healthy", prefill="restart")),
        st.just(Behaviour("healthy", prefill="reject")),
    )


def first_then(
    first: st.SearchStrategy[Behaviour], rest: st.SearchStrategy[Behaviour]
) -> st.SearchStrategy[FaultSchedule]:
    """The first 1-3 requests get one behaviour, every later request another."""
    return st.builds(
        lambda b, n, r: FaultSchedule((Rule(b, last_request=n - 1),), default=r),
        first, st.integers(1, 3), rest,
    )  # fmt: skip


def flapping(t: Timeouts = Timeouts()) -> st.SearchStrategy[FaultSchedule]:
    """Down for D seconds, up for U, a few times over, then healthy for good."""
    down = st.one_of(
        st.just(Behaviour("refuse")),
        st.sampled_from(TRANSIENT_STATUSES).map(lambda s: Behaviour("status", status=s)),
        st.just(Behaviour("stall", stall=t.long)),
    )
    return st.builds(
        lambda d, b, u, c: FaultSchedule.flapping(d, b, up_for=u, cycles=c),
        st.sampled_from([2.0, 10.0, 45.0]), down, st.sampled_from([1.0, 10.0, 60.0]),
        st.integers(1, 3),
    )  # fmt: skip


def request_table(
    behaviours: st.SearchStrategy[Behaviour], *, max_index: int, max_rules: int
) -> st.SearchStrategy[FaultSchedule]:
    """Faults at some request indexes, healthy elsewhere (shrinks towards fewer faults)."""
    entries = st.lists(
        st.tuples(st.integers(0, max_index), behaviours),
        max_size=max_rules,
        unique_by=lambda e: e[0],
    )
    return entries.map(
        lambda es: FaultSchedule(
            tuple(
                Rule(b, first_request=i, last_request=i) for i, b in sorted(es, key=lambda e: e[0])
            )
        )
    )


def clients(
    routes: Sequence[str],
    *,
    min_size: int = 1,
    max_size: int = 3,
    spread: float = 2.0,
    cancels: bool = True,
    slow: bool = True,
    asks: Sequence[str] = CLIENT_ASKS,
) -> st.SearchStrategy[tuple[ClientSpec, ...]]:
    """Streams started over ``spread`` seconds; some read slowly, some leave early; some ask
    for tools, JSON or reasoning (``asks``, drawn; shrinks towards plain text)."""
    one = st.builds(
        ClientSpec,
        start_at=st.one_of(st.just(0.0), st.floats(0.0, spread).map(lambda x: round(x, 2))),
        route=st.sampled_from(sorted(routes)),
        cancel_at_token=st.one_of(st.none(), st.integers(0, 40)) if cancels else st.none(),
        read_delay=st.sampled_from([0.0, 0.05, 1.5]) if slow else st.just(0.0),
        can_reset=st.booleans(),
        asks=st.sampled_from(list(asks)),
    )
    return st.lists(one, min_size=min_size, max_size=max_size).map(tuple)


def drops(window: float) -> st.SearchStrategy[dict[str, Any]]:
    """How a client's network drops (``ClientSpec``'s resume fields): after 1 to 12 events,
    away briefly, for most of the ``window``, or beyond it; resuming from where it is, a few
    events back, or from the start (``stale`` past the first seq); up to three times."""
    away = st.one_of(
        st.sampled_from([0.0, 0.5, 3.0]),
        st.sampled_from([round(window / 2, 2), max(0.0, window - 1.0)]),
        st.sampled_from([window + 1.0, window + 20.0]),
    )
    return st.builds(
        lambda at, away, stale, times: {
            "drop_at_event": at, "away": away, "stale": stale, "drops": times
        },
        st.integers(1, 12), away, st.one_of(st.just(0), st.sampled_from([1, 3, 1000])),
        st.integers(1, 3),
    )  # fmt: skip


# --- what "stays healthy" means ---------------------------------------------------------------


def finishes(b: Behaviour, config: ProviderConfig) -> bool:
    """Whether an attempt with behaviour ``b`` delivers the whole answer with a finish reason."""
    if b.prefill == "reject":
        return False  # it needs a second attempt (instruct) to continue an answer
    if b.kind in ("healthy", "no_done", "malformed"):
        pause = 0.0
    elif b.kind in ("stall", "keepalive_stall"):
        pause = b.stall
    elif b.kind == "drip":
        pause = 0.0
    else:
        return False
    limit = min(config.first_token_timeout, config.idle_timeout)
    return pause + b.token_delay < limit


def stays_healthy(schedule: FaultSchedule, config: ProviderConfig) -> bool:
    """Whether every request a provider with this schedule gets is answered in full."""
    behaviours = [rule.behaviour for rule in schedule.rules] + [schedule.default]
    return all(finishes(b, config) for b in behaviours)


# --- random faults at a rate, deterministically --------------------------------------------------


def fault_table(
    rate: float,
    requests: int,
    pick: Callable[[random.Random], Behaviour],
    *,
    seed: int,
    default: Behaviour = HEALTHY,
) -> FaultSchedule:
    """Each of the first ``requests`` requests is faulty with probability ``rate``.

    A faulty request gets ``pick(rng)``, with ``rng`` a ``random.Random(seed)``; the table is
    one ``Rule`` per faulty request index, so the same seed gives the same schedule in every
    process. Later requests get ``default``.
    """
    rng = random.Random(seed)
    rules = []
    for index in range(requests):
        if rng.random() < rate:
            rules.append(Rule(pick(rng), first_request=index, last_request=index))
    return FaultSchedule(tuple(rules), default=default)
