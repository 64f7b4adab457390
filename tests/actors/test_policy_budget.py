"""The retry budget's pure policy: Envoy's cap on retries in flight, driven by counts alone."""

import pytest

from actors.policy._budget import (
    RetryLoad,
    request_ended,
    request_started,
    retry_ended,
    retry_limit,
    retry_started,
)


def start(load: RetryLoad, *, continuation: bool = False, budget: float = 0.2, floor: int = 3):
    return retry_started(
        load, retry_budget=budget, min_retry_concurrency=floor, continuation=continuation
    )


@pytest.mark.parametrize(
    ("requests", "limit"), [(0, 3), (1, 3), (15, 3), (16, 3.2), (50, 10), (200, 40)]
)
def test_the_limit_is_the_larger_of_the_floor_and_the_share_of_requests(requests, limit):
    assert retry_limit(requests, retry_budget=0.2, min_retry_concurrency=3) == pytest.approx(limit)


def test_retries_start_until_the_limit_and_each_end_frees_a_place():
    load = RetryLoad(requests=5)
    for _ in range(3):
        load, allowed = start(load)
        assert allowed
    load, allowed = start(load)
    assert not allowed and load.retries == 3 and load.refusals == 1
    load = retry_ended(load)
    load, allowed = start(load)
    assert allowed and load.retries == 3 and load.peak_retries == 3


def test_the_cap_grows_with_the_requests_in_flight():
    load = RetryLoad()
    for _ in range(50):
        load = request_started(load)
    started = 0
    while True:
        load, allowed = start(load)
        if not allowed:
            break
        started += 1
    assert started == 10 and load.peak_retries == 10
    for _ in range(45):
        load = request_ended(load)
    assert load.requests == 5
    load, allowed = start(load)  # 10 still run: the cap is back at the floor of 3
    assert not allowed


def test_a_continuation_is_never_refused_but_counts():
    load, allowed = start(RetryLoad(requests=1, retries=3, peak_retries=3), continuation=True)
    assert allowed and load.retries == 4 and load.peak_retries == 4 and load.refusals == 0
    load, allowed = start(load)
    assert not allowed and load.refusals == 1


def test_no_retries_at_all_with_a_zero_budget_and_floor():
    load, allowed = start(RetryLoad(requests=100), budget=0.0, floor=0)
    assert not allowed
    load, allowed = start(load, budget=0.0, floor=0, continuation=True)
    assert allowed


def test_ends_never_go_below_zero():
    assert retry_ended(RetryLoad()).retries == 0
    assert request_ended(RetryLoad()).requests == 0
