"""The in-memory fake provider, behaviour by behaviour, under trio's MockClock."""

from __future__ import annotations

import pytest
import trio

from actors import (
    FailureKind,
    Finish,
    Malformed,
    Message,
    TextDelta,
    UpstreamError,
    UpstreamEvent,
    UpstreamRequest,
)
from scenarios import Behaviour, FakeProvider, FaultSchedule, Rule, answer_tokens

USER = (Message(role="user", content="Tell me a story."),)
ANSWER = answer_tokens(USER)
REQUEST = UpstreamRequest(model="gpt-test", messages=USER)


def fake(behaviour: Behaviour | None = None, **kwargs) -> FakeProvider:
    schedule = FaultSchedule.always(behaviour) if behaviour else FaultSchedule.healthy()
    return FakeProvider("primary", schedule, **kwargs)


async def collect(
    provider: FakeProvider, request: UpstreamRequest = REQUEST
) -> list[UpstreamEvent]:
    events: list[UpstreamEvent] = []
    async with provider.stream(request) as stream:
        async for event in stream:
            events.append(event)
    return events


def text_of(events: list) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


async def test_healthy_stream_yields_the_answer_then_finish(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = fake(model_name="gpt-real")
    events = await collect(provider)
    assert events[:-1] == [TextDelta(t) for t in ANSWER]
    finish = events[-1]
    assert isinstance(finish, Finish)
    assert finish.reason == "stop" and finish.model == "gpt-real"
    assert finish.usage is not None and finish.usage.completion_tokens == len(ANSWER)
    assert finish.usage.prompt_tokens > 0
    [record] = provider.log
    assert record.outcome == "finished" and record.text_sent == "".join(ANSWER)
    assert record.request is REQUEST and record.closed_at is not None
    assert provider.open_attempts == []


async def test_model_defaults_to_the_requested_one(autojump_clock: trio.testing.MockClock) -> None:
    finish = (await collect(fake()))[-1]
    assert isinstance(finish, Finish) and finish.model == "gpt-test"


async def test_refuse_raises_connect_on_entry(autojump_clock: trio.testing.MockClock) -> None:
    provider = fake(Behaviour("refuse"))
    with pytest.raises(UpstreamError) as info:
        await collect(provider)
    assert info.value.failure.kind is FailureKind.CONNECT
    assert provider.log[0].outcome == "refused" and provider.log[0].closed_at is not None


@pytest.mark.parametrize(
    "kind,code", [("openai", "rate_limit_exceeded"), ("anthropic", "rate_limit_error")]
)
async def test_status_raises_with_retry_after(
    autojump_clock: trio.testing.MockClock, kind: str, code: str
) -> None:
    provider = fake(Behaviour("status", status=429, retry_after=7.0), kind=kind)
    with pytest.raises(UpstreamError) as info:
        await collect(provider)
    failure = info.value.failure
    assert (failure.kind, failure.status, failure.code, failure.retry_after) == (
        FailureKind.STATUS,
        429,
        code,
        7.0,
    )
    assert provider.log[0].outcome == "status" and provider.log[0].tokens_sent == []


async def test_reset_after_k_tokens(autojump_clock: trio.testing.MockClock) -> None:
    provider = fake(Behaviour("reset", at_token=3))
    events: list = []
    with pytest.raises(UpstreamError) as info:
        async with provider.stream(REQUEST) as stream:
            async for event in stream:
                events.append(event)
    assert info.value.failure.kind is FailureKind.RESET
    assert events == [TextDelta(t) for t in ANSWER[:3]]
    assert provider.log[0].outcome == "reset" and provider.log[0].closed_at is not None


async def test_stream_error_is_overloaded(autojump_clock: trio.testing.MockClock) -> None:
    provider = fake(Behaviour("stream_error", at_token=2))
    with pytest.raises(UpstreamError) as info:
        await collect(provider)
    failure = info.value.failure
    assert (failure.kind, failure.code, failure.status) == (
        FailureKind.STREAM_ERROR,
        "overloaded_error",
        529,
    )
    assert provider.log[0].tokens_sent == ANSWER[:2]


async def test_stall_before_first_token(autojump_clock: trio.testing.MockClock) -> None:
    provider = fake(Behaviour("stall", stall=30.0))
    start = trio.current_time()
    async with provider.stream(REQUEST) as stream:
        entered = trio.current_time()
        first = await stream.__anext__()
        arrived = trio.current_time()
    assert entered == start  # the response head is not delayed
    assert arrived - start == pytest.approx(30.0)
    assert first == TextDelta(ANSWER[0])


@pytest.mark.parametrize("kind", ["stall", "keepalive_stall"])
async def test_stall_mid_stream_then_continues(
    autojump_clock: trio.testing.MockClock, kind: str
) -> None:
    provider = fake(Behaviour(kind, at_token=5, stall=12.0))
    times: list[float] = []
    events: list = []
    start = trio.current_time()
    async with provider.stream(REQUEST) as stream:
        async for event in stream:
            times.append(trio.current_time() - start)
            events.append(event)
    assert text_of(events) == "".join(ANSWER) and isinstance(events[-1], Finish)
    assert times[4] == pytest.approx(0.0) and times[5] == pytest.approx(12.0)


async def test_drip_delays_every_token(autojump_clock: trio.testing.MockClock) -> None:
    provider = fake(Behaviour("drip", token_delay=0.5))
    start = trio.current_time()
    events = await collect(provider)
    assert trio.current_time() - start == pytest.approx(0.5 * len(ANSWER))
    assert text_of(events) == "".join(ANSWER)


async def test_malformed_event_is_extra(autojump_clock: trio.testing.MockClock) -> None:
    events = await collect(fake(Behaviour("malformed", at_token=4)))
    assert isinstance(events[4], Malformed) and events[4].raw
    assert text_of(events) == "".join(ANSWER) and isinstance(events[-1], Finish)


async def test_no_finish_ends_without_finish(autojump_clock: trio.testing.MockClock) -> None:
    provider = fake(Behaviour("no_finish"))
    events = await collect(provider)
    assert events == [TextDelta(t) for t in ANSWER]
    assert provider.log[0].outcome == "eof"


async def test_no_done_still_finishes(autojump_clock: trio.testing.MockClock) -> None:
    events = await collect(fake(Behaviour("no_done")))
    assert isinstance(events[-1], Finish) and text_of(events) == "".join(ANSWER)


async def test_max_tokens_finishes_with_length(autojump_clock: trio.testing.MockClock) -> None:
    request = UpstreamRequest(model="m", messages=USER, params={"max_tokens": 4})
    events = await collect(fake(), request)
    assert text_of(events) == "".join(ANSWER[:4])
    assert isinstance(events[-1], Finish) and events[-1].reason == "length"


def prefill_request(i: int) -> UpstreamRequest:
    convo = (*USER, Message(role="assistant", content="".join(ANSWER[:i])))
    return UpstreamRequest(model="m", messages=convo, prefill=True)


async def test_prefill_continue(autojump_clock: trio.testing.MockClock) -> None:
    provider = fake()
    events = await collect(provider, prefill_request(6))
    assert text_of(events) == "".join(ANSWER[6:])
    assert (provider.log[0].start, provider.log[0].mode) == (6, "prefill")
    assert isinstance(events[-1], Finish) and events[-1].usage.completion_tokens == len(ANSWER) - 6  # type: ignore[union-attr]


async def test_prefill_restart(autojump_clock: trio.testing.MockClock) -> None:
    events = await collect(fake(Behaviour(prefill="restart")), prefill_request(6))
    assert text_of(events) == "".join(ANSWER)


async def test_prefill_reject(autojump_clock: trio.testing.MockClock) -> None:
    provider = fake(Behaviour(prefill="reject"))
    with pytest.raises(UpstreamError) as info:
        await collect(provider, prefill_request(6))
    failure = info.value.failure
    assert (failure.kind, failure.status, failure.code) == (
        FailureKind.STATUS,
        400,
        "invalid_request_error",
    )
    assert "prefill" in failure.message
    assert text_of(await collect(provider)) == "".join(ANSWER)  # no trailing assistant: fine


async def test_cancelled_stream_is_closed(autojump_clock: trio.testing.MockClock) -> None:
    provider = fake(Behaviour("stall", at_token=2, stall=60.0))
    with trio.move_on_after(10.0) as scope:
        async with provider.stream(REQUEST) as stream:
            async for _ in stream:
                pass
    assert scope.cancelled_caught
    [record] = provider.log
    assert record.outcome == "abandoned" and record.tokens_sent == ANSWER[:2]
    assert record.closed_at == pytest.approx(record.opened_at + 10.0)
    assert provider.open_attempts == []


async def test_abandoned_stream_is_closed(autojump_clock: trio.testing.MockClock) -> None:
    provider = fake()
    async with provider.stream(REQUEST) as stream:
        async for _ in stream:
            assert provider.open_attempts == [provider.log[0]]
            break
    assert provider.log[0].outcome == "abandoned" and provider.open_attempts == []


async def test_schedule_by_index_and_time(autojump_clock: trio.testing.MockClock) -> None:
    schedule = FaultSchedule(
        (Rule(Behaviour("refuse"), last_request=1), Rule(Behaviour("reset"), start=100.0))
    )
    provider = FakeProvider("p", schedule)
    outcomes = []
    for _ in range(3):
        try:
            await collect(provider)
        except UpstreamError as exc:
            outcomes.append(exc.failure.kind)
        else:
            outcomes.append("ok")
    await trio.sleep(100.0)
    with pytest.raises(UpstreamError):
        await collect(provider)
    assert outcomes == [FailureKind.CONNECT, FailureKind.CONNECT, "ok"]
    assert [r.index for r in provider.log] == [0, 1, 2, 3]


async def test_probe_follows_the_schedule_without_using_an_index(
    autojump_clock: trio.testing.MockClock,
) -> None:
    provider = FakeProvider("p", FaultSchedule.first(1, Behaviour("status", status=503)))
    with pytest.raises(UpstreamError) as info:
        await provider.probe("models")
    assert info.value.failure.status == 503
    with pytest.raises(UpstreamError):
        await provider.probe("chat")  # still request 0's behaviour
    with pytest.raises(UpstreamError):
        await collect(provider)
    await provider.probe("models")
    assert [(p.kind, p.ok) for p in provider.probes] == [
        ("models", False),
        ("chat", False),
        ("models", True),
    ]
    assert len(provider.log) == 1
