"""A route's retry budget, with Envoy's semantics: a cap on retries running at the same time.

A retry is any attempt of a request after its first: the same target again, or another one.
Retries in flight on a route stay under ``max(min_retry_concurrency, retry_budget x requests in
flight on the route)``, so the cap grows with traffic, a quiet route still has a few, and a
retry gives its place back as soon as its attempt ends (nothing is remembered over a window).
A continuation of an answer the client already holds part of is never refused: refusing it
would turn a recoverable break into a truncated answer. It still counts while it runs.

Every function takes a route's ``RetryLoad`` and returns the new one; the router owns them.
Nothing here awaits.
"""

from __future__ import annotations

import attrs


@attrs.frozen(kw_only=True)
class RetryLoad:
    """One route's requests and retries in flight, and what its budget has done so far."""

    requests: int = 0  # requests in flight (from their start to their terminal event)
    retries: int = 0  # retry attempts running now
    peak_retries: int = 0  # the most retry attempts that ever ran at once
    refusals: int = 0  # retries the budget refused


def retry_limit(requests: int, *, retry_budget: float, min_retry_concurrency: int) -> float:
    """How many retries may run at once on a route with ``requests`` requests in flight."""
    return max(float(min_retry_concurrency), retry_budget * requests)


def request_started(load: RetryLoad) -> RetryLoad:
    return attrs.evolve(load, requests=load.requests + 1)


def request_ended(load: RetryLoad) -> RetryLoad:
    return attrs.evolve(load, requests=max(0, load.requests - 1))


def retry_started(
    load: RetryLoad, *, retry_budget: float, min_retry_concurrency: int, continuation: bool
) -> tuple[RetryLoad, bool]:
    """Whether one more retry may start now; if so it counts until ``retry_ended``.

    ``continuation``: the client already holds text of this request, so the retry is always
    allowed.
    """
    limit = retry_limit(
        load.requests, retry_budget=retry_budget, min_retry_concurrency=min_retry_concurrency
    )
    if not continuation and load.retries + 1 > limit:
        return attrs.evolve(load, refusals=load.refusals + 1), False
    retries = load.retries + 1
    return attrs.evolve(load, retries=retries, peak_retries=max(load.peak_retries, retries)), True


def retry_ended(load: RetryLoad) -> RetryLoad:
    return attrs.evolve(load, retries=max(0, load.retries - 1))
