"""Streams that outlive their client's connection: ``Baton.detach`` and ``Baton.resume``.

A client holds the events up to some seq when its connection drops (the last few it was sent
may never have arrived); the stream runs on without a reader, and a resume hands it the events
after that seq and then the live rest. What the client finally holds must be the whole answer,
with gapless seqs, one terminal event, and every seq carrying the payload it was first sent
with. Everything runs under trio's MockClock against in-memory providers.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from actors import (
    ClientEvent,
    Done,
    RequestError,
    StreamDisplaced,
    StreamError,
    StreamHandle,
    config_from_dict,
    is_terminal,
    open_baton,
)
from scenarios import Behaviour, FakeProvider, FaultSchedule
from scenarios._play import client_text

from .conftest import PROMPT, healthy_answer

ANSWER = healthy_answer()
WINDOW = 60.0
# One token a second: a reader that waits for each gets every delta as its own event.
DRIPPING = FaultSchedule.always(Behaviour("healthy", token_delay=1.0))


def config(*, server: dict[str, Any] | None = None, clients: dict[str, Any] | None = None):
    return config_from_dict({
        "server": {"resume_window": WINDOW, **(server or {})},
        "providers": {"a": {"kind": "openai", "base_url": "http://a.invalid/v1"}},
        "routes": {"default": {"targets": [{"provider": "a", "model": "model-a"}]}},
        "clients": clients or {},
    })  # fmt: skip


def provider(schedule: FaultSchedule = DRIPPING) -> FakeProvider:
    return FakeProvider("a", schedule)


async def take_events(handle: StreamHandle, count: int) -> list[ClientEvent]:
    """Take batches until at least ``count`` events (or the terminal one) are taken."""
    events: list[ClientEvent] = []
    while len(events) < count and not (events and is_terminal(events[-1])):
        events += await handle.take()
    return events


async def take_rest(handle: StreamHandle) -> list[ClientEvent]:
    return [event async for event in handle]


def check_whole(events: list[ClientEvent]) -> None:
    """What a client finally holds: gapless seqs from 0, one terminal event, last."""
    assert [e.seq for e in events] == list(range(len(events)))
    assert [is_terminal(e) for e in events].count(True) == 1 and is_terminal(events[-1])


def metric_values(reader: InMemoryMetricReader) -> dict[str, float]:
    return {
        m.name: sum(p.value for p in m.data.data_points)
        for rm in reader.get_metrics_data().resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name in ("proxy_stream_resumes", "proxy_detached_streams")
    }


# --- missed events -------------------------------------------------------------------------------


@pytest.mark.parametrize("missed", [1, 3])
async def test_a_client_that_missed_events_gets_them_again_and_then_the_live_rest(
    autojump_clock, missed
):
    reader = InMemoryMetricReader()
    fake = provider()
    meters = MeterProvider(metric_readers=[reader])
    async with open_baton(config(), {"a": fake}, meter_provider=meters) as baton:
        handle = baton.start_stream(route="default", messages=PROMPT)
        taken = await take_events(handle, 10)
        # The connection drops: the last ``missed`` events sent never reached the client.
        held = taken[:-missed]
        baton.detach(handle)
        assert baton.statistics().detached_streams == 1
        assert metric_values(reader)["proxy_detached_streams"] == 1
        await trio.sleep(5.0)  # the answer goes on meanwhile
        with pytest.raises(StreamDisplaced):
            await handle.take()
        resumed, replay = baton.resume(handle.id, held[-1].seq, client=None)
        assert baton.statistics().detached_streams == 0
        # The missed events come back as they were sent, then what was made meanwhile.
        assert replay[:missed] == taken[-missed:]
        assert len(replay) == missed + 1 and len(replay[-1].text) > 0
        events = held + replay + await take_rest(resumed)
        assert metric_values(reader) == {"proxy_stream_resumes": 1, "proxy_detached_streams": 0}
    check_whole(events)
    assert isinstance(events[-1], Done) and client_text(events) == ANSWER
    assert [(r.outcome, r.closed_at is not None) for r in fake.log] == [("finished", True)]


async def test_a_stream_can_be_resumed_again_after_another_drop(autojump_clock):
    fake = provider()
    async with open_baton(config(), {"a": fake}) as baton:
        handle = baton.start_stream(route="default", messages=PROMPT)
        held = await take_events(handle, 5)
        for _drop in range(3):
            baton.detach(handle)
            await trio.sleep(2.0)
            handle, replay = baton.resume(handle.id, held[-1].seq, client=None)
            held += replay
            held += await take_events(handle, 3)
        held += await take_rest(handle)
        stats = baton.statistics()
    check_whole(held)
    assert client_text(held) == ANSWER
    assert stats.detached_streams == 0 and stats.finished == {"done": 1}


# --- the log's cap -------------------------------------------------------------------------------


async def test_resuming_works_up_to_event_log_cap_missed_events_and_not_one_more(autojump_clock):
    cap = 8
    async with open_baton(config(server={"event_log_cap": cap}), {"a": provider()}) as baton:
        handle = baton.start_stream(route="default", messages=PROMPT)
        taken = await take_events(handle, 20)
        last = taken[-1].seq
        baton.detach(handle)
        # One more missed event than the log keeps: refused, naming the oldest seq it holds.
        with pytest.raises(RequestError) as refused:
            baton.resume(handle.id, last - cap - 1, client=None)
        assert refused.value.code == "resume_unavailable" and refused.value.status == 410
        assert f"the oldest seq it still holds is {last - cap + 1}" in refused.value.message
        # Exactly as many missed events as the log keeps: all of them come back.
        resumed, replay = baton.resume(handle.id, last - cap, client=None)
        assert replay == taken[-cap:]
        events = taken + await take_rest(resumed)
    check_whole(events)
    assert client_text(events) == ANSWER


# --- the terminal event --------------------------------------------------------------------------


async def test_a_stream_that_ended_while_detached_replays_its_end_and_is_then_forgotten(
    autojump_clock,
):
    fast = FaultSchedule.always(Behaviour("healthy", token_delay=0.1))
    async with open_baton(config(), {"a": provider(fast)}) as baton:
        handle = baton.start_stream(route="default", messages=PROMPT)
        held = await take_events(handle, 4)
        baton.detach(handle)
        await trio.sleep(30.0)  # the answer ends about 10 s after it began
        assert baton.statistics().active_streams == 0
        resumed, replay = baton.resume(handle.id, held[-1].seq, client=None)
        assert isinstance(replay[-1], Done)
        with pytest.raises(trio.EndOfChannel) as ended:
            await resumed.take()
        assert not isinstance(ended.value, StreamDisplaced)
        # The client read past the end: nothing is left to resume.
        with pytest.raises(RequestError) as gone:
            baton.resume(handle.id, held[-1].seq, client=None)
        assert gone.value.code == "unknown_stream" and gone.value.status == 404
    check_whole(held + replay)
    assert client_text(held + replay) == ANSWER


async def test_an_ended_stream_is_kept_for_resume_window_after_its_end(autojump_clock):
    fast = FaultSchedule.always(Behaviour("healthy", token_delay=0.1))
    async with open_baton(config(), {"a": provider(fast)}) as baton:
        handle = baton.start_stream(route="default", messages=PROMPT)
        held = await take_events(handle, 2)
        baton.detach(handle)
        while not handle.log.closed:
            await trio.sleep(0.01)
        await trio.sleep(WINDOW - 1.0)
        resumed, replay = baton.resume(handle.id, held[-1].seq, client=None)
        assert isinstance(replay[-1], Done)
        baton.detach(resumed)  # dropped again before the end was sent
        assert baton.statistics().detached_streams == 1
        await trio.sleep(WINDOW + 1.0)
        assert baton.statistics().detached_streams == 0
        with pytest.raises(RequestError) as gone:
            baton.resume(handle.id, held[-1].seq, client=None)
        assert gone.value.code == "unknown_stream"


# --- the seq a client names ----------------------------------------------------------------------


async def test_a_stale_seq_replays_identical_events_and_a_future_one_is_refused(autojump_clock):
    async with open_baton(config(), {"a": provider()}) as baton:
        handle = baton.start_stream(route="default", messages=PROMPT)
        taken = await take_events(handle, 6)
        baton.detach(handle)
        await trio.sleep(3.0)
        for bad in (taken[-1].seq + 5, -2, True, "3"):
            with pytest.raises(RequestError) as refused:
                baton.resume(handle.id, bad, client=None)  # type: ignore[arg-type]
            assert refused.value.code == "bad_request", bad
        assert "up to seq" in str(
            pytest.raises(RequestError, baton.resume, handle.id, 10_000, client=None).value
        )
        # From before everything the client holds: the same seqs with the same payloads.
        resumed, replay = baton.resume(handle.id, -1, client=None)
        assert replay[: len(taken)] == taken
        events = replay + await take_rest(resumed)
    check_whole(events)
    assert client_text(events) == ANSWER


# --- whose stream --------------------------------------------------------------------------------


async def test_only_the_client_that_started_a_stream_may_resume_it(autojump_clock):
    clients = {"alice": {"key_sha256": "0" * 64}, "bob": {"key_sha256": "1" * 64}}
    async with open_baton(config(clients=clients), {"a": provider()}) as baton:
        handle = baton.start_stream(route="default", messages=PROMPT, client="alice")
        held = await take_events(handle, 3)
        baton.detach(handle)
        # An id that never existed, with the same first characters (the message shows those).
        never = handle.id[:8] + "x" * (len(handle.id) - 8)
        messages = set()
        for stream_id, client in ((handle.id, "bob"), (handle.id, None), (never, "alice")):
            with pytest.raises(RequestError) as refused:
                baton.resume(stream_id, held[-1].seq, client=client)
            assert (refused.value.code, refused.value.status) == ("unknown_stream", 404)
            assert handle.id not in refused.value.message
            messages.add(refused.value.message)
        assert len(messages) == 1  # nothing tells a stranger that the stream exists
        resumed, replay = baton.resume(handle.id, held[-1].seq, client="alice")
        events = held + replay + await take_rest(resumed)
    check_whole(events)
    assert client_text(events) == ANSWER


# --- two connections -----------------------------------------------------------------------------


async def test_a_resume_displaces_a_reader_that_has_not_noticed_its_connection_is_gone(
    autojump_clock,
):
    fake = provider()
    async with open_baton(config(server={"resume_window": 0}), {"a": fake}) as baton:
        old = baton.start_stream(route="default", messages=PROMPT)
        held = await take_events(old, 4)
        outcome: list[str] = []

        async def old_connection() -> None:
            try:
                while True:
                    await old.take()
            except StreamDisplaced:
                outcome.append("displaced")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(old_connection)
            await trio.sleep(2.5)
            new, replay = baton.resume(old.id, held[-1].seq, client=None)
            await trio.sleep(0.5)
            assert outcome == ["displaced"] and not old.reading and new.reading
            # The old connection noticing late changes nothing, even with resume_window 0.
            old.cancel()
            baton.detach(old)
            await trio.sleep(1.0)
            assert baton.statistics().detached_streams == 0
            events = held + replay + await take_rest(new)
    check_whole(events)
    assert isinstance(events[-1], Done) and client_text(events) == ANSWER
    assert [r.outcome for r in fake.log] == ["finished"]


# --- the window ----------------------------------------------------------------------------------


async def test_a_detached_stream_is_cancelled_upstream_when_resume_window_ends(autojump_clock):
    fake = provider(FaultSchedule.always(Behaviour("endless", token_delay=1.0)))
    async with open_baton(config(), {"a": fake}) as baton:
        handle = baton.start_stream(route="default", messages=PROMPT)
        held = await take_events(handle, 3)
        baton.detach(handle)
        detached_at = trio.current_time()
        sent = len(fake.log[0].tokens_sent)
        await trio.sleep(WINDOW - 1.0)
        # Still generating, unread, for the whole window.
        assert fake.open_attempts == fake.log and len(fake.log[0].tokens_sent) > sent + 50
        await trio.sleep(2.0)
        [record] = fake.log
        assert record.closed_at is not None and record.outcome == "abandoned"
        assert record.closed_at == pytest.approx(detached_at + WINDOW, abs=0.01)
        with pytest.raises(RequestError) as gone:
            baton.resume(handle.id, held[-1].seq, client=None)
        assert gone.value.code == "unknown_stream"
        stats = baton.statistics()
    assert stats.finished == {"cancelled": 1} and stats.detached_streams == 0
    assert isinstance(handle.log.terminal, StreamError)


async def test_resume_window_zero_cancels_a_stream_when_its_reader_leaves(autojump_clock):
    fake = provider(FaultSchedule.always(Behaviour("endless", token_delay=1.0)))
    async with open_baton(config(server={"resume_window": 0}), {"a": fake}) as baton:
        handle = baton.start_stream(route="default", messages=PROMPT)
        held = await take_events(handle, 3)
        baton.detach(handle)
        await trio.sleep(0.01)
        [record] = fake.log
        assert record.closed_at is not None and record.outcome == "abandoned"
        with pytest.raises(RequestError) as gone:
            baton.resume(handle.id, held[-1].seq, client=None)
        assert gone.value.code == "unknown_stream"
        assert baton.statistics().finished == {"cancelled": 1}


# --- backpressure --------------------------------------------------------------------------------


async def test_a_detached_streams_upstream_is_not_held_back_for_its_absent_reader(autojump_clock):
    fake = provider(FaultSchedule.healthy())
    async with open_baton(config(server={"max_client_backlog": 40}), {"a": fake}) as baton:
        handle = baton.start_stream(route="default", messages=PROMPT)
        held = await take_events(handle, 1)
        await trio.sleep(30.0)
        # A reader that is attached but does not read holds the upstream back ...
        [record] = fake.log
        paused = len(record.tokens_sent)
        assert paused < len(ANSWER.split()) and record.closed_at is None
        baton.detach(handle)
        await trio.sleep(1.0)
        # ... one that is gone does not.
        assert record.outcome == "finished" and "".join(record.tokens_sent) == ANSWER
        resumed, replay = baton.resume(handle.id, held[-1].seq, client=None)
        events = held + replay + await take_rest(resumed)
    check_whole(events)
    assert client_text(events) == ANSWER


async def test_a_released_stream_is_forgotten_at_its_end(autojump_clock):
    fast = FaultSchedule.always(Behaviour("healthy", token_delay=0.1))
    async with open_baton(config(), {"a": provider(fast)}) as baton:
        kept = baton.start_stream(route="default", messages=PROMPT)
        released = baton.start_stream(route="default", messages=PROMPT)
        released.release()
        for handle in (kept, released):
            # Both readers take the terminal event but never ask for more.
            await take_events(handle, 10_000)
        _resumed, replay = baton.resume(kept.id, 0, client=None)
        assert isinstance(replay[-1], Done)
        with pytest.raises(RequestError) as gone:
            baton.resume(released.id, 0, client=None)
        assert gone.value.code == "unknown_stream"
