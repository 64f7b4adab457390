"""The stream's event log: numbering, merging for a slow reader, resuming, the cap."""

import pytest
import trio

from actors import Delta, Done, Started
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
