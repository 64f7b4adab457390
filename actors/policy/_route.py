"""Route choice: which target of a route serves the next attempt. Pure, no awaits."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence

from .._config import RouteConfig
from ._health_view import HealthSnapshot

EXPLORATION_SHARE = 0.05  # least_latency: share of picks that measure a random usable target
# least_latency: a usable target not measured for this long is picked once to measure it again,
# so a target that became fast (or recovered) is noticed without waiting for random exploration.
STALE_AFTER = 15.0


def _usable(snapshot: HealthSnapshot | None) -> bool:
    return snapshot is None or snapshot.usable


def _preferred(snapshot: HealthSnapshot | None) -> bool:
    return snapshot is None or snapshot.status in ("healthy", "probing")


def candidates(
    route: RouteConfig, snapshots: Mapping[str, HealthSnapshot], exclude: frozenset[int]
) -> list[int]:
    """Indices of the route's targets that may take traffic, best tier first.

    Healthy and probing (half-open) targets come first; degraded ones only when none of those
    is left.
    """
    usable = [
        i for i, t in enumerate(route.targets)
        if i not in exclude and _usable(snapshots.get(t.provider))
    ]  # fmt: skip
    preferred = [i for i in usable if _preferred(snapshots.get(route.targets[i].provider))]
    return preferred or usable


def choose(
    route: RouteConfig,
    snapshots: Mapping[str, HealthSnapshot],
    exclude: frozenset[int],
    *,
    weights_state: MutableMapping[int, float],
    random: float,
    now: float = 0.0,
) -> int | None:
    """Pick the index of the target for the next attempt, or None when none is usable.

    ``weights_state`` is the route's smooth weighted round-robin memory (updated in place);
    ``random`` is a uniform draw in [0, 1) used for exploration.
    """
    pool = candidates(route, snapshots, exclude)
    if not pool:
        return None
    if route.strategy == "weighted":
        return _smooth_weighted(route, pool, weights_state)
    if route.strategy == "least_latency":
        return _least_latency(route, pool, snapshots, random, now)
    return pool[0]


def _smooth_weighted(
    route: RouteConfig, pool: Sequence[int], state: MutableMapping[int, float]
) -> int:
    """nginx's smooth weighted round-robin over ``pool``."""
    total = 0.0
    best = pool[0]
    for i in pool:
        weight = route.targets[i].weight
        state[i] = state.get(i, 0.0) + weight
        total += weight
        if state[i] > state[best]:
            best = i
    state[best] -= total
    return best


def _least_latency(
    route: RouteConfig,
    pool: Sequence[int],
    snapshots: Mapping[str, HealthSnapshot],
    random: float,
    now: float,
) -> int:
    for i in pool:
        snapshot = snapshots.get(route.targets[i].provider)
        if (
            snapshot is not None
            and snapshot.ttft_at is not None
            and now - snapshot.ttft_at > STALE_AFTER
        ):
            return i
    if len(pool) > 1 and random < EXPLORATION_SHARE:
        return pool[int(random / EXPLORATION_SHARE * len(pool)) % len(pool)]

    def latency(i: int) -> float:
        snapshot = snapshots.get(route.targets[i].provider)
        return snapshot.ttft_ewma if snapshot and snapshot.ttft_ewma is not None else 0.0

    return min(pool, key=latency)
