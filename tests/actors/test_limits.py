"""What a provider or a client can take of Baton's memory: answer and time limits, backpressure.

An endless upstream is ended at ``max_answer_bytes`` or ``max_stream_duration`` as the
provider's fault; a client that stops reading stops the upstream (the attempt reads nothing more
until the client takes its backlog). Everything runs under trio's MockClock.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from actors import (
    ClientEvent,
    ConfigError,
    Delta,
    Done,
    Failover,
    StreamError,
    config_from_dict,
    open_baton,
)
from actors._streamlog import StreamLog
from scenarios import Behaviour, FakeProvider, FaultSchedule
from scenarios._play import client_text

from .conftest import PROMPT, healthy_answer, run_stream

HEALTHY = FaultSchedule.healthy()
ENDLESS = FaultSchedule.always(Behaviour("endless"))
ANSWER = healthy_answer()


def config(
    names: tuple[str, ...] = ("a", "b"),
    *,
    server: dict[str, Any] | None = None,
    route: dict[str, Any] | None = None,
    **tables: dict[str, Any],
):
    providers = {
        name: {"kind": "openai", "base_url": f"http://{name}.invalid/v1", **tables.get(name, {})}
        for name in names
    }
    targets = [{"provider": name, "model": f"model-{name}"} for name in names]
    return config_from_dict({
        "server": server or {},
        "providers": providers,
        "routes": {"default": {"targets": targets, **(route or {})}},
    })  # fmt: skip


def fakes(**schedules: FaultSchedule) -> dict[str, FakeProvider]:
    return {name: FakeProvider(name, schedule) for name, schedule in schedules.items()}


def text_before_failover(events: list[ClientEvent]) -> str:
    text = ""
    for event in events:
        if isinstance(event, Failover):
            break
        if isinstance(event, Delta):
            text += event.text
    return text


async def take_until_text(handle) -> list[ClientEvent]:
    """Take batches until the client holds some text."""
    events: list[ClientEvent] = []
    while not any(isinstance(e, Delta) for e in events):
        events += await handle.take()
    return events


async def take_rest(handle, events: list[ClientEvent]) -> list[ClientEvent]:
    async for event in handle:
        events.append(event)
    return events


# --- max_answer_bytes --------------------------------------------------------------------------


async def test_an_endless_answer_is_ended_at_max_answer_bytes_and_answered_afresh_by_the_backup(
    autojump_clock,
):
    providers = fakes(a=ENDLESS, b=HEALTHY)
    async with open_baton(config(a={"max_answer_bytes": 2000}), providers) as baton:
        run = await run_stream(baton, can_reset=True)
        health = baton.statistics().providers["a"].health
    # The client's answer is b's whole answer: a's babble was dropped with a reset, once.
    assert isinstance(run.terminal, Done) and run.terminal.provider == "b"
    assert run.text == ANSWER
    [failover] = run.of(Failover)
    assert (failover.from_provider, failover.to_provider) == ("a", "b")
    assert (failover.reason, failover.mode, failover.phase) == (
        "answer_too_large", "reset", "midstream",
    )  # fmt: skip
    babble = text_before_failover(run.events)
    assert 1900 < len(babble.encode()) <= 2000
    # b was asked the question afresh, not to continue 2000 bytes of a loop.
    assert providers["b"].log[0].request.messages == PROMPT
    assert [(s.provider, s.outcome, s.reason) for s in run.statistics.attempts] == [
        ("a", "failed", "answer_too_large"), ("b", "done", None),
    ]  # fmt: skip
    # A provider that babbles is at fault; its one endless request was closed.
    assert health is not None and health.consecutive_failures == 1
    assert len(providers["a"].log) == 1 and providers["a"].open_attempts == []


async def test_an_endless_answer_ends_a_client_that_cannot_reset_with_one_clear_error(
    autojump_clock,
):
    providers = fakes(a=ENDLESS, b=HEALTHY)
    async with open_baton(config(a={"max_answer_bytes": 2000}), providers) as baton:
        run = await run_stream(baton, can_reset=False)
    error = run.terminal
    assert isinstance(error, StreamError) and error.code == "stream_diverged" and error.retryable
    assert "max_answer_bytes" in error.message and len(error.message) < 300
    assert run.of(Failover) == []
    assert len(run.text.encode()) <= 2000
    assert providers["b"].log == []  # nothing b says could be joined to a's text
    assert providers["a"].open_attempts == []


async def test_a_continuation_counts_the_text_it_continues_towards_max_answer_bytes(
    autojump_clock,
):
    # a breaks after 60 tokens (about 330 bytes); b may give an answer of 200 bytes at most, so
    # it is ended as soon as it is asked to continue, and the stream cannot go on.
    providers = fakes(a=FaultSchedule.always(Behaviour("reset", at_token=60)), b=HEALTHY)
    async with open_baton(config(b={"max_answer_bytes": 200}), providers) as baton:
        run = await run_stream(baton, can_reset=False)
    assert isinstance(run.terminal, StreamError) and run.terminal.code == "stream_diverged"
    assert [s.reason for s in run.statistics.attempts] == ["reset", "answer_too_large"]
    assert run.text == providers["a"].log[0].text_sent


async def test_an_answer_too_large_on_the_only_target_is_not_continued_there(autojump_clock):
    providers = fakes(a=ENDLESS)
    async with open_baton(config(("a",), a={"max_answer_bytes": 500}), providers) as baton:
        run = await run_stream(baton)
    error = run.terminal
    assert isinstance(error, StreamError) and error.code == "all_providers_unavailable"
    assert "answer_too_large" in error.message
    assert len(providers["a"].log) == 1


# --- max_stream_duration -----------------------------------------------------------------------


async def test_a_dripping_endless_answer_is_ended_at_max_stream_duration_and_continued(
    autojump_clock,
):
    drip = FaultSchedule.always(Behaviour("endless", token_delay=1.0))
    providers = fakes(a=drip, b=HEALTHY)
    async with open_baton(config(a={"max_stream_duration": 30.0}), providers) as baton:
        run = await run_stream(baton)
        health = baton.statistics().providers["a"].health
    record = providers["a"].log[0]
    assert record.closed_at - record.opened_at == pytest.approx(30.0)
    # 30 tokens of the answer in 30 s, then b continues exactly where the client's text stops.
    [failover] = run.of(Failover)
    assert (failover.reason, failover.mode, failover.phase) == (
        "stream_too_long", "continue", "midstream",
    )  # fmt: skip
    assert isinstance(run.terminal, Done) and run.text == ANSWER
    assert health is not None and health.consecutive_failures == 1


async def test_a_stream_too_long_is_never_continued_on_the_same_target(autojump_clock):
    drip = FaultSchedule.always(Behaviour("endless", token_delay=1.0))
    providers = fakes(a=drip)
    cfg = config(("a",), a={"max_stream_duration": 20.0, "retries": 3})
    async with open_baton(cfg, providers) as baton:
        run = await run_stream(baton)
    error = run.terminal
    assert isinstance(error, StreamError) and error.code == "all_providers_unavailable"
    assert "stream_too_long" in error.message
    assert len(providers["a"].log) == 1


# --- backpressure --------------------------------------------------------------------------------


async def test_a_client_that_stops_reading_stops_the_upstream_and_resumes_it_when_it_reads(
    autojump_clock,
):
    providers = fakes(a=HEALTHY, b=HEALTHY)
    cfg = config(server={"max_client_backlog": 40})
    async with open_baton(cfg, providers) as baton:
        handle = baton.start_stream(route="default", messages=PROMPT)
        events = await take_until_text(handle)
        await trio.sleep(1.0)
        pulled = len(providers["a"].log[0].tokens_sent)
        # The client reads nothing for a minute: six idle timeouts, four first-token timeouts.
        await trio.sleep(60.0)
        assert len(providers["a"].log[0].tokens_sent) == pulled
        # About 40 characters of unread text (a token is about 5), not the whole answer.
        assert pulled <= 2 + 40 // 3 < len(ANSWER.split())
        assert providers["a"].open_attempts != [] and providers["b"].log == []
        await take_rest(handle, events)
        stats = handle.statistics()
    assert isinstance(events[-1], Done) and events[-1].provider == "a"
    assert client_text(events) == ANSWER
    assert not any(isinstance(e, Failover) for e in events)
    assert [(a.provider, a.outcome) for a in stats.attempts] == [("a", "done")]


async def test_a_slow_reader_gets_the_whole_answer_with_the_upstream_paced_to_it(autojump_clock):
    providers = fakes(a=HEALTHY)
    async with open_baton(config(("a",), server={"max_client_backlog": 25}), providers) as baton:
        handle = baton.start_stream(route="default", messages=PROMPT)
        events: list[ClientEvent] = []
        most_ahead = 0
        while not (events and isinstance(events[-1], (Done, StreamError))):
            events += await handle.take()
            taken = len(client_text(events))
            await trio.sleep(20.0)  # longer than idle_timeout, between every read
            sent = len("".join(providers["a"].log[0].tokens_sent))
            most_ahead = max(most_ahead, sent - taken)
    assert isinstance(events[-1], Done) and client_text(events) == ANSWER
    assert most_ahead <= 25 + 20  # the bound, and the one token that passed it


async def test_an_endless_upstream_and_a_client_that_never_reads_end_at_max_stream_duration(
    autojump_clock,
):
    endless = FaultSchedule.always(Behaviour("endless", token_delay=0.01))
    providers = fakes(a=endless, b=HEALTHY)
    cfg = config(server={"max_client_backlog": 100}, a={"max_stream_duration": 120.0})
    async with open_baton(cfg, providers) as baton:
        handle = baton.start_stream(route="default", messages=PROMPT)
        events = await take_until_text(handle)
        await trio.sleep(10.0)
        pulled = len(providers["a"].log[0].tokens_sent)
        await trio.sleep(100.0)
        # 11,000 tokens in 110 s had it read on; it stopped at the client's backlog.
        assert len(providers["a"].log[0].tokens_sent) == pulled <= 40
        await trio.sleep(20.0)
        await take_rest(handle, events)
        health = baton.statistics().providers["a"].health
    error = events[-1]
    # The client held the answer back, not the provider: no failover, no mark against a.
    assert isinstance(error, StreamError) and error.code == "client_too_slow"
    assert "max_stream_duration" in error.message and not error.retryable
    assert providers["b"].log == [] and providers["a"].open_attempts == []
    assert health is not None and health.consecutive_failures == 0
    assert [a.outcome for a in handle.statistics().attempts] == ["client_too_slow"]


async def test_a_hedged_stream_waits_for_a_slow_client_and_ends_done(autojump_clock):
    slow_start = FaultSchedule.always(Behaviour("stall", at_token=0, stall=3.0))
    providers = fakes(a=slow_start, b=HEALTHY)
    cfg = config(server={"max_client_backlog": 30}, route={"hedge_after": 0.5})
    async with open_baton(cfg, providers) as baton:
        handle = baton.start_stream(route="default", messages=PROMPT)
        events = await take_until_text(handle)
        await trio.sleep(30.0)
        assert len(providers["b"].log[0].tokens_sent) < 20
        await take_rest(handle, events)
    assert isinstance(events[-1], Done) and events[-1].provider == "b"
    assert client_text(events) == ANSWER
    assert [f.reason for f in events if isinstance(f, Failover)] == ["hedge"]


async def test_a_spliced_continuation_waits_for_a_slow_client_and_joins_exactly(autojump_clock):
    providers = fakes(a=FaultSchedule.always(Behaviour("reset", at_token=30)), b=HEALTHY)
    cfg = config(server={"max_client_backlog": 20}, b={"prefill": True})
    async with open_baton(cfg, providers) as baton:
        handle = baton.start_stream(route="default", messages=PROMPT)
        events: list[ClientEvent] = []
        most_ahead = 0
        while not (events and isinstance(events[-1], (Done, StreamError))):
            events += await handle.take()
            taken = len(client_text(events))
            await trio.sleep(15.0)
            sent = sum(
                len("".join(record.tokens_sent)) for p in "ab" for record in providers[p].log
            )
            most_ahead = max(most_ahead, sent - taken)
    assert isinstance(events[-1], Done) and client_text(events) == ANSWER
    # The guard holds back the first words of b's continuation; b still waits for the client.
    assert most_ahead <= 20 + 40
    assert [(f.reason, f.mode) for f in events if isinstance(f, Failover)] == [
        ("reset", "continue")
    ]


# --- the stream log's backlog --------------------------------------------------------------------


async def test_the_log_is_full_past_its_bound_until_the_reader_takes_the_backlog():
    log = StreamLog("s", max_unread=10)
    log.append_text("12345")
    log.append_text("67890")
    assert not log.full
    log.append_text("x")
    assert log.full
    woke = []

    async def writer() -> None:
        await log.wait_for_room()
        woke.append(True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        assert woke == []
        [delta] = log.take_nowait()
        assert delta.text == "1234567890x"
    assert woke == [True] and not log.full


async def test_waiting_for_room_ends_with_the_stream():
    log = StreamLog("s", max_unread=1)
    log.append_text("ab")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log.wait_for_room)
        await trio.testing.wait_all_tasks_blocked()
        log.append(StreamError, code="cancelled", message="m", retryable=False)


# --- configuration -------------------------------------------------------------------------------


def test_the_limits_have_generous_defaults():
    cfg = config()
    assert cfg.providers["a"].max_answer_bytes == 8 * 1024 * 1024
    assert cfg.providers["a"].max_stream_duration == 900.0
    assert cfg.server.max_client_backlog == 256 * 1024


@pytest.mark.parametrize(
    ("section", "key", "value", "says"),
    [
        ("a", "max_answer_bytes", 0, "must be at least 1"),
        ("a", "max_answer_bytes", 1.5, "must be an integer"),
        ("a", "max_stream_duration", 0, "must be greater than 0"),
        ("server", "max_client_backlog", -1, "must be at least 1"),
    ],
)
def test_a_wrong_limit_names_its_key(section, key, value, says):
    with pytest.raises(ConfigError) as caught:
        if section == "server":
            config(server={key: value})
        else:
            config(**{section: {key: value}})
    where = f"server.{key}" if section == "server" else f"providers.a.{key}"
    assert caught.value.where == where and says in caught.value.message
