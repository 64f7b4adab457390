"""The stream's event log: numbering, merging for a slow reader, resuming, the cap."""

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from actors import Delta, Done, Reasoning, Started, StreamDisplaced
from actors._streamlog import ResumeUnavailable, StreamLog


def done_fields():
    return {"finish_reason": "stop", "provider": "p", "model": "m", "usage": None}


async def test_a_reader_that_keeps_up_gets_every_delta_as_its_own_event():
    log = StreamLog("s")
    log.append(Started, ref=None, route="r", provider="p", model="m")
    assert [type(e) for e in await log.take()] == [Started]
    for piece in ["a", "b", "c"]:
        log.append_text(piece)
        [event] = await log.take()
        assert event.text == piece
    log.append(Done, **done_fields())
    assert [e.seq for e in log.since(0)] == [0, 1, 2, 3, 4]
    assert isinstance((await log.take())[0], Done)
    with pytest.raises(trio.EndOfChannel):
        await log.take()


async def test_a_reader_that_falls_behind_gets_merged_deltas_with_gapless_seqs():
    log = StreamLog("s")
    log.append(Started, ref=None, route="r", provider="p", model="m")
    for piece in "hello":
        log.append_text(piece)
    log.append_text(" ")
    batch = await log.take()
    assert [(type(e), e.seq) for e in batch] == [(Started, 0), (Delta, 1)]
    assert batch[1].text == "hello "
    for piece in "wor":
        log.append_text(piece)
    log.append(Done, **done_fields())
    log.append_text("ignored after the end")
    batch = await log.take()
    assert [(type(e), e.seq) for e in batch] == [(Delta, 2), (Done, 3)]
    assert batch[0].text == "wor"


def test_resuming_from_a_seq_returns_what_is_kept_and_refuses_what_was_dropped():
    log = StreamLog("s", cap=3)
    log.append(Started, ref=None, route="r", provider="p", model="m")
    for piece in ["a", "b", "c", "d"]:
        log.append_text(piece)
        log.take_nowait()
    assert [e.seq for e in log.since(2)] == [2, 3, 4]
    assert [e.text for e in log.since(3)] == ["c", "d"]
    with pytest.raises(ResumeUnavailable):
        log.since(0)


async def test_a_reader_woken_only_for_text_gets_the_other_events_with_it(autojump_clock):
    log = StreamLog("s")
    log.wake_for_text_only = True
    batches: list[list] = []

    async def reader() -> None:
        while True:
            try:
                batches.append(await log.take())
            except trio.EndOfChannel:
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.sleep(1.0)
        log.append(Started, ref=None, route="r", provider="p", model="m")
        await trio.sleep(1.0)
        assert batches == []  # a Started alone does not wake this reader
        log.append_text("hi")
        await trio.sleep(1.0)
        log.append(Done, **done_fields())
    assert [[(type(e), e.seq) for e in batch] for batch in batches] == [
        [(Started, 0), (Delta, 1)],
        [(Done, 2)],  # the end always wakes it
    ]


# --- readers that come and go (resuming) ---------------------------------------------------------


def test_a_replay_seals_the_pending_delta_so_its_seq_never_changes_text():
    log = StreamLog("s")
    log.append(Started, ref=None, route="r", provider="p", model="m")
    log.take_nowait()
    log.detach()
    for piece in ["a", "b", "c"]:
        log.append_text(piece)
    _, replay = log.reattach(0)
    assert [(e.seq, e.text) for e in replay] == [(1, "abc")]
    log.append_text("d")  # a new delta: seq 1 keeps the text it was replayed with
    assert [(e.seq, e.text) for e in log.since(1)] == [(1, "abc"), (2, "d")]
    assert [(e.seq, e.text) for e in log.take_nowait()] == [(2, "d")]


async def test_a_detached_log_never_holds_its_writer_back(autojump_clock):
    log = StreamLog("s", max_unread=4)
    log.append_text("12345")
    assert log.full
    async with trio.open_nursery() as nursery:
        nursery.start_soon(log.wait_for_room)
        await trio.sleep(1.0)
        log.detach()  # frees the waiting writer
    log.append_text("x" * 100)
    assert not log.full
    log.reattach(-1)
    log.append_text("x" * 5)
    assert log.full  # a reader is back: backpressure is back


async def test_a_reader_waiting_for_events_learns_at_once_that_it_was_displaced(autojump_clock):
    log = StreamLog("s")
    outcome = []

    async def first_reader() -> None:
        with pytest.raises(StreamDisplaced):
            await log.take(0)
        outcome.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(first_reader)
        await trio.sleep(1.0)
        reader, _ = log.reattach(-1)
        log.append_text("for the new reader")
    assert outcome == [1.0]
    assert [e.text for e in await log.take(reader)] == ["for the new reader"]


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("text"), st.sampled_from(["a", "bc", "def"])),
        st.tuples(st.just("event"), st.just("")),
        st.tuples(st.just("take"), st.just("")),
        st.tuples(st.just("lose"), st.integers(min_value=1, max_value=4)),
        st.tuples(st.just("resume"), st.just("")),
    ),
    max_size=40,
)


@given(OPS)
def test_what_a_resuming_client_holds_is_gapless_and_every_seq_keeps_its_payload(ops):
    """A client takes, loses the last events sent to it, and resumes, in any order."""
    log = StreamLog("s")
    log.append(Started, ref=None, route="r", provider="p", model="m")
    written = ""
    held: list = []
    seen: dict[int, object] = {}
    connected = True

    def receive(events) -> None:
        for event in events:
            assert seen.setdefault(event.seq, event) == event, "a seq changed its payload"
            assert event.seq == (held[-1].seq + 1 if held else 0), "a gap or a repeat"
            held.append(event)

    for op, arg in ops:
        if op == "text":
            log.append_text(arg)
            written += arg
        elif op == "event":
            log.append(Reasoning, text="thinking")
        elif op == "take":
            batch = log.take_nowait()
            if connected:  # else sent into a connection that is gone
                receive(batch)
        elif op == "lose" and held:
            del held[-arg:]  # sent, but lost with the connection
            connected = False
        elif op == "resume":
            connected = True
            log.detach()
            receive(log.reattach(held[-1].seq if held else -1)[1])
    log.append(Done, **done_fields())
    log.detach()
    receive(log.reattach(held[-1].seq if held else -1)[1])
    assert [e.seq for e in held] == list(range(len(held)))
    assert isinstance(held[-1], Done)
    assert "".join(e.text for e in held if isinstance(e, Delta)) == written
