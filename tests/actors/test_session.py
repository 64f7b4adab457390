"""StreamSession end to end over in-memory providers, under trio's MockClock."""

from __future__ import annotations

import pytest
import trio

from actors import (
    Delta,
    Done,
    Failover,
    Started,
    StreamError,
    TextDelta,
    config_from_dict,
    open_baton,
)
from scenarios import Behaviour, FakeProvider, FaultSchedule, answer_tokens

from .conftest import (
    PROMPT,
    Run,
    ScriptedProvider,
    healthy_answer,
    make_config,
    run_stream,
)

HEALTHY = FaultSchedule.healthy()


def always(kind, **kw):
    return FaultSchedule.always(Behaviour(kind, **kw))


def first(n, kind, **kw):
    return FaultSchedule.first(n, Behaviour(kind, **kw))


async def test_a_healthy_stream_is_started_streamed_and_done(autojump_clock, fakes):
    providers = fakes(a=HEALTHY, b=HEALTHY)
    async with open_baton(make_config(), providers) as baton:
        run = await run_stream(baton, ref="r1")
    started = run.events[0]
    assert isinstance(started, Started) and started.ref == "r1" and started.provider == "a"
    assert started.model == "model-a" and started.route == "default"
    assert run.text == healthy_answer()
    done = run.terminal
    assert isinstance(done, Done) and done.provider == "a" and done.finish_reason == "stop"
    assert done.usage.completion_tokens == len(providers["a"].log[0].tokens_sent)
    assert providers["b"].log == []
    assert providers["a"].open_attempts == []


@pytest.mark.parametrize("at_token", [1, 5, 20])
async def test_a_reset_mid_stream_continues_on_the_next_target_without_loss_or_repeat(
    autojump_clock, fakes, at_token
):
    providers = fakes(a=always("reset", at_token=at_token), b=HEALTHY)
    async with open_baton(make_config(), providers) as baton:
        run = await run_stream(baton)
    assert run.text == healthy_answer()
    [failover] = run.of(Failover)
    assert (failover.from_provider, failover.to_provider) == ("a", "b")
    assert (
        failover.mode == "continue" and failover.phase == "midstream" and failover.reason == "reset"
    )
    done = run.terminal
    assert isinstance(done, Done) and done.provider == "b" and done.model == "model-b"
    # The client's usage is the finishing attempt's own, as b reported it (its prompt holds the
    # delivered text it continued); a broke before reporting any, as its statistics show.
    a_attempt, b_attempt = run.statistics.attempts
    assert done.usage is not None and done.usage == b_attempt.usage
    assert done.usage.completion_tokens == len(providers["b"].log[0].tokens_sent)
    assert a_attempt.usage is None
    # b was asked to continue exactly the delivered text (instruct form for OpenAI-compatible)
    request = providers["b"].log[0].request
    assert request.messages[-2].role == "assistant"
    assert request.messages[-2].content == providers["a"].log[0].text_sent
    assert providers["a"].open_attempts == [] and providers["b"].open_attempts == []


async def test_prefill_is_used_where_the_provider_honours_it(autojump_clock, fakes):
    providers = fakes(a=always("reset", at_token=4), b=HEALTHY)
    config = make_config(b={"prefill": True})
    async with open_baton(config, providers) as baton:
        run = await run_stream(baton)
    assert run.text == healthy_answer()
    request = providers["b"].log[0].request
    assert request.prefill and request.messages[-1].role == "assistant"


async def test_a_target_that_restarts_its_answer_is_spliced(autojump_clock, fakes):
    providers = fakes(
        a=always("reset", at_token=7),
        b=FaultSchedule.always(Behaviour("healthy", prefill="restart")),
    )
    async with open_baton(make_config(b={"prefill": True}), providers) as baton:
        run = await run_stream(baton)
    assert providers["b"].log[0].mode == "restart"
    assert run.text == healthy_answer()
    assert [f.mode for f in run.of(Failover)] == ["continue"]


async def test_a_rejected_prefill_is_asked_again_in_instruct_form(autojump_clock, fakes):
    providers = fakes(
        a=always("reset", at_token=3),
        b=FaultSchedule.always(Behaviour("healthy", prefill="reject")),
    )
    async with open_baton(make_config(b={"prefill": True}), providers) as baton:
        run = await run_stream(baton)
    assert run.text == healthy_answer()
    assert [r.request.prefill for r in providers["b"].log] == [True, False]
    assert providers["b"].log[1].mode == "instruct"


def restarted_differently() -> list[str]:
    """A new answer that begins like the healthy one, then says something else."""
    tokens = answer_tokens(PROMPT)
    return tokens[:3] + [" but", " then", " something", " else", " entirely", "."]


async def test_a_diverging_continuation_resets_a_client_that_can_take_it(autojump_clock, fakes):
    b = ScriptedProvider("b", restarted_differently())
    providers = {**fakes(a=always("reset", at_token=6)), "b": b}
    async with open_baton(make_config(), providers) as baton:
        run = await run_stream(baton, can_reset=True)
    failovers = run.of(Failover)
    assert [f.mode for f in failovers] == ["reset"]
    assert run.text == "".join(restarted_differently())
    assert isinstance(run.terminal, Done) and run.terminal.provider == "b"


async def test_a_diverging_continuation_ends_a_client_that_cannot_reset_with_stream_diverged(
    autojump_clock, fakes
):
    b = ScriptedProvider("b", restarted_differently())
    providers = {**fakes(a=always("reset", at_token=6)), "b": b}
    async with open_baton(make_config(), providers) as baton:
        run = await run_stream(baton, can_reset=False)
    error = run.terminal
    assert isinstance(error, StreamError) and error.code == "stream_diverged" and error.retryable
    # nothing of b's different answer reached the client
    assert run.text == providers["a"].log[0].text_sent
    assert b.open == 0


async def test_connection_refused_fails_over_before_the_first_token(autojump_clock, fakes):
    providers = fakes(a=always("refuse"), b=HEALTHY)
    async with open_baton(make_config(), providers) as baton:
        run = await run_stream(baton)
    assert run.text == healthy_answer()
    [failover] = run.of(Failover)
    assert failover.phase == "prestream" and failover.reason == "connect_error"
    assert len(providers["a"].log) == 1


async def test_a_transient_status_is_retried_once_on_the_same_target(autojump_clock, fakes):
    providers = fakes(a=first(1, "status", status=503), b=HEALTHY)
    async with open_baton(make_config(), providers) as baton:
        start = trio.current_time()
        run = await run_stream(baton)
        elapsed = trio.current_time() - start
    assert run.text == healthy_answer()
    assert run.of(Failover) == []  # a retry of the same target is invisible
    assert len(providers["a"].log) == 2 and providers["b"].log == []
    assert 0.1 <= elapsed <= 0.3  # the jittered backoff


async def test_a_transient_status_twice_fails_over(autojump_clock, fakes):
    providers = fakes(a=always("status", status=529), b=HEALTHY)
    async with open_baton(make_config(), providers) as baton:
        run = await run_stream(baton)
    assert len(providers["a"].log) == 2
    assert run.of(Failover)[0].reason == "upstream_529"
    assert run.text == healthy_answer()


async def test_a_short_retry_after_is_honoured_on_the_same_target(autojump_clock, fakes):
    providers = fakes(a=first(1, "status", status=429, retry_after=2.0), b=HEALTHY)
    async with open_baton(make_config(), providers) as baton:
        run = await run_stream(baton)
    assert [r.opened_at for r in providers["a"].log][1] - providers["a"].log[
        0
    ].opened_at == pytest.approx(2.0)
    assert providers["b"].log == [] and run.text == healthy_answer()


async def test_a_long_retry_after_fails_over_and_keeps_the_provider_out_of_rotation(
    autojump_clock, fakes
):
    providers = fakes(a=first(1, "status", status=429, retry_after=60.0), b=HEALTHY)
    async with open_baton(make_config(), providers) as baton:
        await run_stream(baton)
        assert baton.statistics().providers["a"].health.status == "rate_limited"
        await run_stream(baton)  # a is skipped while rate limited
        assert len(providers["a"].log) == 1
        await trio.sleep(61)
        await run_stream(baton)
        assert len(providers["a"].log) == 2


async def test_silence_before_the_first_token_fails_over_and_closes_the_attempt(
    autojump_clock, fakes
):
    providers = fakes(a=always("stall", at_token=0, stall=1000.0), b=HEALTHY)
    async with open_baton(make_config(a={"first_token_timeout": 2.0}), providers) as baton:
        start = trio.current_time()
        run = await run_stream(baton)
        assert trio.current_time() - start == pytest.approx(2.0, abs=0.01)
    assert run.of(Failover)[0].reason == "first_token_timeout"
    assert len(providers["a"].log) == 1  # a silent target is not retried
    assert providers["a"].open_attempts == []
    assert run.text == healthy_answer()


@pytest.mark.parametrize("kind", ["stall", "keepalive_stall"])
async def test_silence_mid_stream_fails_over_after_the_idle_timeout(autojump_clock, fakes, kind):
    providers = fakes(a=always(kind, at_token=5, stall=1000.0), b=HEALTHY)
    async with open_baton(make_config(a={"idle_timeout": 3.0}), providers) as baton:
        run = await run_stream(baton)
    failover = run.of(Failover)[0]
    assert failover.reason == "idle_timeout" and failover.phase == "midstream"
    assert run.text == healthy_answer()
    assert providers["a"].open_attempts == []


async def test_end_of_stream_without_a_finish_reason_is_a_failure(autojump_clock, fakes):
    providers = fakes(a=always("no_finish"), b=HEALTHY)
    async with open_baton(make_config(), providers) as baton:
        run = await run_stream(baton)
    assert run.of(Failover)[0].reason == "eof"
    assert isinstance(run.terminal, Done) and run.terminal.provider == "b"
    assert run.text == healthy_answer()


async def test_a_finish_reason_without_done_marker_completes(autojump_clock, fakes):
    providers = fakes(a=always("no_done"), b=HEALTHY)
    async with open_baton(make_config(), providers) as baton:
        run = await run_stream(baton)
    assert run.of(Failover) == [] and run.terminal.provider == "a"


async def test_a_malformed_event_is_skipped_and_counted(autojump_clock, fakes):
    providers = fakes(a=always("malformed", at_token=3), b=HEALTHY)
    async with open_baton(make_config(), providers) as baton:
        run = await run_stream(baton)
    assert run.text == healthy_answer() and run.of(Failover) == []
    assert run.statistics.attempts[0].malformed == 1


async def test_client_errors_are_passed_through_without_failover(autojump_clock, fakes):
    providers = fakes(
        a=always("status", status=400, code="invalid_request_error", message="bad temperature"),
        b=HEALTHY,
    )
    async with open_baton(make_config(), providers) as baton:
        run = await run_stream(baton)
        assert baton.statistics().providers["a"].health.consecutive_failures == 0
    error = run.terminal
    assert (
        isinstance(error, StreamError) and error.code == "upstream_rejected" and not error.retryable
    )
    assert (
        error.status == 400
        and error.upstream_code == "invalid_request_error"
        and "bad temperature" in error.message
    )
    assert providers["b"].log == []


async def test_context_length_exceeded_fails_over(autojump_clock, fakes):
    providers = fakes(
        a=always("status", status=400, code="context_length_exceeded", message="too long"),
        b=HEALTHY,
    )
    async with open_baton(make_config(), providers) as baton:
        run = await run_stream(baton)
    assert run.of(Failover)[0].reason == "context_length_exceeded" and len(providers["a"].log) == 1


async def test_broken_credentials_mark_the_provider_unhealthy_at_once(
    autojump_clock, fakes, caplog
):
    providers = fakes(a=always("status", status=401), b=HEALTHY)
    async with open_baton(make_config(a={"api_key_env": "SECRET_ENV"}), providers) as baton:
        run = await run_stream(baton)
        await trio.sleep(0.01)
        assert baton.statistics().providers["a"].health.status == "unhealthy"
    assert run.of(Failover)[0].reason == "auth_failed"
    assert any("credentials" in r.getMessage() for r in caplog.records)


async def test_health_transitions_reach_on_transition_and_are_counted(autojump_clock, fakes):
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    changes = []
    providers = fakes(a=first(1, "status", status=401), b=HEALTHY)
    config = make_config(a={"health": {"cooldown": 5.0, "probe_interval_unhealthy": 1.0}})
    async with open_baton(
        config, providers, meter_provider=MeterProvider(metric_readers=[reader]),
        on_transition=changes.append,
    ) as baton:  # fmt: skip
        await run_stream(baton)
        await trio.sleep(5.5)  # the cooldown ends: probing
        await run_stream(baton)  # the trial succeeds: healthy
    assert [(c.provider, c.old, c.new) for c in changes] == [
        ("a", "healthy", "unhealthy"),
        ("a", "unhealthy", "probing"),
        ("a", "probing", "healthy"),
    ]
    assert [c.credentials_rejected for c in changes] == [True, False, False]
    assert changes[0].consecutive_failures == 1 and changes[1].at == pytest.approx(5.0)
    [metric] = [
        m
        for rm in reader.get_metrics_data().resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "proxy_health_transitions"
    ]
    counted = {
        tuple(p.attributes.get(k) for k in ("provider", "from", "to")): p.value
        for p in metric.data.data_points
    }
    assert counted == {
        ("a", None, None): 0,  # every provider's series exists from start-up
        ("b", None, None): 0,
        ("a", "healthy", "unhealthy"): 1,
        ("a", "unhealthy", "probing"): 1,
        ("a", "probing", "healthy"): 1,
    }


async def test_every_target_failing_ends_with_all_providers_unavailable(autojump_clock, fakes):
    providers = fakes(a=always("refuse"), b=always("status", status=503))
    async with open_baton(make_config(), providers) as baton:
        run = await run_stream(baton)
    error = run.terminal
    assert (
        isinstance(error, StreamError)
        and error.code == "all_providers_unavailable"
        and error.retryable
    )
    assert "a (model-a)" in error.message and "b (model-b)" in error.message
    assert "503" in error.message and "connect" in error.message


async def test_attempts_per_request_are_bounded_by_max_attempts(autojump_clock, fakes):
    providers = fakes(
        a=always("status", status=503),
        b=always("status", status=503),
        c=always("status", status=503),
    )
    config = make_config(("a", "b", "c"), route={"max_attempts": 3})
    async with open_baton(config, providers) as baton:
        run = await run_stream(baton)
    assert sum(len(p.log) for p in providers.values()) == 3
    assert run.terminal.code == "all_providers_unavailable"


async def test_cancelling_a_stream_closes_its_upstream_request(autojump_clock, fakes):
    providers = fakes(a=always("drip", token_delay=1.0), b=HEALTHY)
    async with open_baton(make_config(), providers) as baton:
        handle = baton.start_stream(route="default", messages=PROMPT)
        seen = []
        async for event in handle:
            seen.append(event)
            if len(seen) == 4:
                handle.cancel()
    assert seen[-1].code == "cancelled"
    assert providers["a"].open_attempts == [] and providers["a"].log[0].outcome == "abandoned"
    assert providers["b"].log == []


async def test_shutdown_ends_running_streams_with_a_terminal_event(autojump_clock, fakes):
    providers = fakes(a=always("drip", token_delay=1.0), b=HEALTHY)
    async with open_baton(make_config(), providers) as baton:
        handle = baton.start_stream(route="default", messages=PROMPT)
        await trio.sleep(3.5)
    events = handle.log.take_nowait()
    assert events[-1].code == "shutting_down"
    assert providers["a"].open_attempts == []


async def test_unknown_route_is_refused_before_a_stream_starts(autojump_clock, fakes):
    from actors import RequestError

    async with open_baton(make_config(), fakes(a=HEALTHY, b=HEALTHY)) as baton:
        with pytest.raises(RequestError) as info:
            baton.start_stream(route="nope", messages=PROMPT)
    assert info.value.code == "unknown_model" and "default" in info.value.message


async def test_a_slow_reader_gets_merged_deltas_with_gapless_seqs(autojump_clock, fakes):
    providers = fakes(a=HEALTHY, b=HEALTHY)
    async with open_baton(make_config(), providers) as baton:
        handle = baton.start_stream(route="default", messages=PROMPT)
        await trio.sleep(1)  # the whole answer arrives before the client reads anything
        batch = await handle.take()
    assert [type(e).__name__ for e in batch] == ["Started", "Delta", "Done"]
    assert batch[1].text == healthy_answer()
    assert [e.seq for e in batch] == [0, 1, 2]


async def test_draining_ends_running_streams_with_shutting_down_and_refuses_new_ones(
    autojump_clock, fakes
):
    from actors import RequestError

    providers = fakes(a=always("drip", token_delay=1.0), b=HEALTHY)
    async with open_baton(make_config(), providers) as baton:
        handle = baton.start_stream(route="default", messages=PROMPT)
        await trio.sleep(3.5)
        await baton.drain(timeout=5)
        events = handle.log.take_nowait()
        assert events[-1].code == "shutting_down" and events[-1].retryable
        assert baton.statistics().active_streams == 0
        with pytest.raises(RequestError) as info:
            baton.start_stream(route="default", messages=PROMPT)
        assert info.value.code == "shutting_down" and info.value.status == 503
    assert providers["a"].open_attempts == []


class BrokenProvider:
    """A provider with a bug: its stream raises something that is not an UpstreamError."""

    name = "a"
    kind = "openai"

    async def probe(self, kind):
        return None

    def stream(self, request, *, read_delay=None):
        from contextlib import asynccontextmanager

        @asynccontextmanager
        async def attempt():
            async def events():
                yield TextDelta("Hello")
                raise ZeroDivisionError("a bug in an adapter")

            yield events()

        return attempt()


async def test_a_crashing_session_ends_only_its_own_stream_with_an_error(autojump_clock):
    # One system, two routes: "broken" over an adapter with a bug, "default" over a slow,
    # healthy provider whose stream is running when the other one crashes.
    config = config_from_dict({
        "providers": {
            "a": {"kind": "openai", "base_url": "http://a.invalid/v1"},
            "b": {"kind": "openai", "base_url": "http://b.invalid/v1"},
        },
        "routes": {
            "default": {"targets": [{"provider": "b", "model": "model-b"}]},
            "broken": {"targets": [{"provider": "a", "model": "model-a"}]},
        },
    })  # fmt: skip
    slow = FakeProvider("b", FaultSchedule.always(Behaviour("drip", token_delay=0.1)))
    async with open_baton(config, {"a": BrokenProvider(), "b": slow}) as baton:
        running = baton.start_stream(route="default", messages=PROMPT)
        before = []
        while not any(isinstance(e, Delta) for e in before):  # started, and some of its text
            before += await running.take()
        assert not running.log.closed
        crashed = [e async for e in baton.start_stream(route="broken", messages=PROMPT)]
        assert isinstance(crashed[-1], StreamError) and crashed[-1].code == "internal_error"
        assert crashed[-1].retryable
        assert not running.log.closed, "the crash must not end the other stream"
        survivor = Run(before + [e async for e in running], running.statistics())
        survivor.check_shape()
        after = await run_stream(baton)
        stats = baton.statistics()
    assert isinstance(survivor.terminal, Done) and survivor.text == healthy_answer()
    assert isinstance(after.terminal, Done) and after.text == healthy_answer()
    assert stats.finished == {"internal_error": 1, "done": 2} and stats.restarts == 0


async def test_a_router_crash_ends_the_asking_stream_and_the_restarted_router_serves_the_next(
    autojump_clock, fakes
):
    from actors._router import RouterActor

    crashes = []
    original = RouterActor._pick

    def pick_once_broken(self, route, **question):
        if not crashes:
            crashes.append(route)
            raise RuntimeError("a bug in route choice")
        return original(self, route, **question)

    providers = fakes(a=HEALTHY, b=HEALTHY)
    async with open_baton(make_config(), providers) as baton:
        RouterActor._pick = pick_once_broken
        try:
            with trio.fail_after(5):
                first = await run_stream(baton)
                second = await run_stream(baton)
        finally:
            RouterActor._pick = original
        assert baton.statistics().restarts == 1
    assert first.terminal.code == "internal_error"
    assert isinstance(second.terminal, Done)
