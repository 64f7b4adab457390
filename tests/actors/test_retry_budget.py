"""The retry budget per route (Envoy's semantics) and failover that no accounting refuses.

Retries in flight on a route stay under max(min_retry_concurrency, retry_budget x requests in
flight on it); a continuation of text the client holds is never refused; a failed half-open
trial is not retried on its target; a one-target route continues a broken answer itself.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from actors import (
    ConfigError,
    Done,
    Failover,
    StreamError,
    TextDelta,
    config_from_dict,
    open_baton,
)
from scenarios import Behaviour, FakeProvider, FaultSchedule, Rule, answer_tokens
from scenarios._scenario import client_prompt

from .conftest import PROMPT, healthy_answer, make_config, run_stream

REFUSE = FaultSchedule.always(Behaviour("refuse"))


def routes_config(
    count: int, *, provider: dict[str, Any] | None = None, route: dict[str, Any] | None = None
):
    """Routes ``r0``..., each with its own primary ``p<i>`` and backup ``b<i>``."""
    providers, routes = {}, {}
    for i in range(count):
        for name in (f"p{i}", f"b{i}"):
            providers[name] = {
                "kind": "openai", "base_url": f"http://{name}.invalid/v1", **(provider or {})
            }  # fmt: skip
        routes[f"r{i}"] = {
            "targets": [
                {"provider": f"p{i}", "model": "m"},
                {"provider": f"b{i}", "model": "m"},
            ],
            **(route or {}),
        }
    return config_from_dict({"providers": providers, "routes": routes})


def answer(messages) -> str:
    return "".join(answer_tokens(messages, seed=0))


def counted(reader: InMemoryMetricReader, name: str) -> dict[str, int]:
    """A counter's value per route, as a metrics exporter would see it."""
    data = reader.get_metrics_data()
    points = [
        point
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]
    return {str(p.attributes["route"]): int(p.value) for p in points}


async def test_thirty_routes_each_fail_over_one_request_within_a_second(autojump_clock):
    config = routes_config(30)
    providers = {}
    for i in range(30):
        providers[f"p{i}"] = FakeProvider(f"p{i}", REFUSE)
        providers[f"b{i}"] = FakeProvider(f"b{i}")
    ends = {}
    async with open_baton(config, providers) as baton, trio.open_nursery() as nursery:
        for i in range(30):

            async def one(route: str) -> None:
                handle = baton.start_stream(route=route, messages=PROMPT)
                events = [event async for event in handle]
                ends[route] = events[-1]

            nursery.start_soon(one, f"r{i}")
            await trio.sleep(1 / 30)
    assert len(ends) == 30
    refused = {r: e.message for r, e in ends.items() if not isinstance(e, Done)}
    assert refused == {}, "a route's failover was refused for other routes' failures"
    assert all(e.provider == f"b{r[1:]}" for r, e in ends.items())


async def test_fifty_streams_broken_mid_answer_all_finish_on_the_backup(autojump_clock):
    dies = FaultSchedule.always(Behaviour("reset", at_token=20, token_delay=0.05))
    a, b = FakeProvider("a", dies), FakeProvider("b")
    config = make_config(a={"max_connections": 100}, b={"max_connections": 100})
    runs = {}
    async with open_baton(config, {"a": a, "b": b}) as baton, trio.open_nursery() as nursery:
        for i in range(50):

            async def one(i: int) -> None:
                runs[i] = await run_stream(baton, messages=client_prompt(i))

            nursery.start_soon(one, i)
        await trio.sleep(0.5)  # every stream holds text from a; a has not broken yet
        assert baton.statistics().active_streams == 50
        assert all(len(r.tokens_sent) > 0 for r in a.log) and len(a.log) == 50
    assert len(runs) == 50
    for i, run in sorted(runs.items()):
        assert isinstance(run.terminal, Done), f"stream {i}: {run.terminal}"
        assert run.text == answer(client_prompt(i)), f"stream {i} lost or repeated text"
        [failover] = run.of(Failover)
        assert (failover.from_provider, failover.to_provider) == ("a", "b")
        assert (failover.phase, failover.mode) == ("midstream", "continue")
    assert baton.statistics().router.routes["default"].refusals == 0


async def test_concurrent_retries_stay_within_the_budget_and_refusals_are_counted(
    autojump_clock,
):
    reader = InMemoryMetricReader()
    a, b = FakeProvider("a", REFUSE), FakeProvider("b")
    spare = FakeProvider("spare")
    config = config_from_dict(
        {
            "providers": {
                name: {
                    "kind": "openai", "base_url": f"http://{name}.invalid/v1",
                    "max_connections": 500,
                    # a's breaker never opens here, so only the budget limits the failovers
                    "health": {"failure_threshold": 1000},
                }
                for name in ("a", "b", "spare")
            },
            "routes": {
                "default": {
                    "targets": [{"provider": "a", "model": "m"}, {"provider": "b", "model": "m"}]
                },
                "quiet": {"targets": [{"provider": "spare", "model": "m"}]},
            },
        }
    )  # fmt: skip
    ends = []
    async with open_baton(
        config, {"a": a, "b": b, "spare": spare},
        meter_provider=MeterProvider(metric_readers=[reader]),
    ) as baton:  # fmt: skip
        assert counted(reader, "proxy_retry_budget_exhausted") == {"default": 0, "quiet": 0}
        async with trio.open_nursery() as nursery:
            for _ in range(200):

                async def one() -> None:
                    ends.append((await run_stream(baton)).terminal)

                nursery.start_soon(one)
        stats = baton.statistics().router.routes["default"]
    done = [e for e in ends if isinstance(e, Done)]
    refused = [e for e in ends if isinstance(e, StreamError)]
    # 200 requests in flight when a refused them all: max(3, 0.2 x 200) = 40 may fail over
    assert stats.peak_retries_in_flight == 40
    assert len(done) == 40 and len(refused) == 160
    assert stats.refusals == 160
    assert (stats.requests_in_flight, stats.retries_in_flight) == (0, 0)
    for error in refused:
        assert error.code == "all_providers_unavailable" and error.retryable
        assert "the route's retry budget is spent: 40 retries already running for" in (
            error.message
        )
        assert "retry_budget = 0.2 and min_retry_concurrency = 3" in error.message
    assert counted(reader, "proxy_retry_budget_exhausted") == {"default": 160, "quiet": 0}


async def test_a_six_second_outage_with_a_request_every_1_2_s_serves_every_request(
    autojump_clock,
):
    outage = FaultSchedule((Rule(Behaviour("status", status=503), start=0.0, end=6.0),))
    a, b = FakeProvider("a", outage), FakeProvider("b")
    # a's breaker opens late: every request during the outage fails over
    config = make_config(a={"health": {"failure_threshold": 20}})
    ends = []
    async with open_baton(config, {"a": a, "b": b}) as baton, trio.open_nursery() as nursery:
        for _ in range(10):

            async def one() -> None:
                ends.append((await run_stream(baton)).terminal)

            nursery.start_soon(one)
            await trio.sleep(1.2)
    assert len(ends) == 10
    assert [type(e).__name__ for e in ends] == ["Done"] * 10, [
        getattr(e, "message", "") for e in ends
    ]
    assert {e.provider for e in ends[:5]} == {"b"} and ends[-1].provider == "a"


async def test_a_one_target_route_continues_an_answer_its_provider_broke_off(autojump_clock):
    once = FaultSchedule((Rule(Behaviour("reset", at_token=40), last_request=0),))
    a = FakeProvider("a", once)
    async with open_baton(make_config(("a",)), {"a": a}) as baton:
        run = await run_stream(baton)
    assert isinstance(run.terminal, Done) and run.terminal.provider == "a"
    assert run.text == healthy_answer()
    [failover] = run.of(Failover)
    assert (failover.from_provider, failover.to_provider) == ("a", "a")
    assert (failover.reason, failover.mode, failover.phase) == ("reset", "continue", "midstream")
    assert len(a.log) == 2 and len(a.log[0].tokens_sent) == 40
    assert a.open_attempts == []


async def test_a_one_target_route_continues_only_within_the_providers_retries(autojump_clock):
    a = FakeProvider("a", FaultSchedule.always(Behaviour("reset", at_token=10)))
    async with open_baton(make_config(("a",), a={"retries": 2}), {"a": a}) as baton:
        run = await run_stream(baton)
    assert isinstance(run.terminal, StreamError)
    assert run.terminal.code == "all_providers_unavailable"
    assert len(a.log) == 3  # the first attempt and two continuations
    assert run.text == healthy_answer()[: len(run.text)]


async def test_the_same_target_continues_only_when_no_other_target_is_left(autojump_clock):
    breaks = FaultSchedule.always(Behaviour("reset", at_token=10))
    a, b = FakeProvider("a", breaks), FakeProvider("b", breaks)
    async with open_baton(make_config(), {"a": a, "b": b}) as baton:
        run = await run_stream(baton)
    moves = [(f.from_provider, f.to_provider) for f in run.of(Failover)]
    # a breaks: b continues; b breaks too and a is out, so b continues itself (retries = 1)
    assert moves == [("a", "b"), ("b", "b")]
    assert len(a.log) == 1 and len(b.log) == 2
    assert isinstance(run.terminal, StreamError)


async def test_a_failed_half_open_trial_fails_over_instead_of_retrying_the_target(
    autojump_clock,
):
    # a answers probes but breaks every live request (an in-stream "overloaded" error)
    a = FakeProvider("a", FaultSchedule((Rule(Behaviour("stream_error"), end=20.0),)))
    b = FakeProvider("b")
    config = make_config(a={"health": {"failure_threshold": 1, "cooldown": 5.0}})
    async with open_baton(config, {"a": a, "b": b}) as baton:
        await run_stream(baton)  # a's error opens its breaker at once
        await trio.sleep(6)
        assert baton.statistics().providers["a"].health.status == "probing"
        tried = len(a.log)
        run = await run_stream(baton)  # a live trial on a: the error again
    assert isinstance(run.terminal, Done) and run.terminal.provider == "b"
    assert len(a.log) == tried + 1, "the failed trial was retried on the probing provider"


async def test_requests_and_retries_in_flight_are_given_back_whatever_ends_a_stream(
    autojump_clock,
):
    slow_backup = FaultSchedule.always(Behaviour("drip", token_delay=0.1))
    a, b = FakeProvider("a", REFUSE), FakeProvider("b", slow_backup)
    async with open_baton(make_config(), {"a": a, "b": b}) as baton:
        handles = [baton.start_stream(route="default", messages=PROMPT) for _ in range(6)]
        await trio.sleep(0.5)
        stats = baton.statistics().router.routes["default"]
        assert (stats.requests_in_flight, stats.retries_in_flight) == (3, 3)
        assert stats.refusals == 3 and stats.limit == 3
        running = [h for h in handles if not h.log.closed]
        assert len(running) == 3
        running[0].cancel()  # a stream whose retry runs
        await trio.sleep(0.01)
        assert baton.statistics().router.routes["default"].retries_in_flight == 2
    # open_baton's exit cancelled the rest: shutdown gives everything back too
    stats = baton.statistics().router.routes["default"]
    assert (stats.requests_in_flight, stats.retries_in_flight) == (0, 0)
    assert stats.peak_retries_in_flight == 3


class CrashingProvider:
    """An adapter with a bug: its stream raises something that is not an upstream failure."""

    name = "b"
    kind = "openai"

    async def probe(self, kind):
        return None

    @asynccontextmanager
    async def stream(self, request, *, read_delay=None):
        async def events():
            yield TextDelta("Hello")
            raise ZeroDivisionError("a bug in an adapter")

        yield events()


async def test_a_session_that_crashes_during_a_retry_gives_back_its_places(autojump_clock):
    a = FakeProvider("a", REFUSE)
    async with open_baton(make_config(), {"a": a, "b": CrashingProvider()}) as baton:
        run = await run_stream(baton)  # a refuses; the retry on b crashes the session
        stats = baton.statistics().router.routes["default"]
    assert isinstance(run.terminal, StreamError) and run.terminal.code == "internal_error"
    assert stats.peak_retries_in_flight == 1
    assert (stats.requests_in_flight, stats.retries_in_flight) == (0, 0)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1, "routes.default.min_retry_concurrency: must not be negative, not -1"),
        (2.5, "routes.default.min_retry_concurrency: must be an integer, not a number"),
        ("3", "routes.default.min_retry_concurrency: must be an integer, not a string"),
    ],
)
def test_a_bad_min_retry_concurrency_names_the_file_and_key(value, message):
    table = {
        "providers": {"a": {"kind": "openai", "base_url": "http://a.invalid/v1"}},
        "routes": {
            "default": {
                "targets": [{"provider": "a", "model": "m"}],
                "min_retry_concurrency": value,
            }
        },
    }
    with pytest.raises(ConfigError) as info:
        config_from_dict(table, source="baton.toml")
    assert str(info.value) == f"baton.toml: {message}"


def test_min_retry_concurrency_defaults_to_three_and_zero_is_allowed():
    assert make_config().routes["default"].min_retry_concurrency == 3
    assert (
        make_config(route={"min_retry_concurrency": 0}).routes["default"].min_retry_concurrency == 0
    )
