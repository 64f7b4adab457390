"""``Baton.start_stream(on_end=...)``: called exactly once when the stream's task ends.

However the stream ends (done, cancelled, its resume window over while detached, shutdown) and
whoever reads it (its first reader, a resumed one, none), the callback runs once; one that
raises is logged and changes nothing else. The transports count a client's ``max_streams``
with it. Everything runs under trio's MockClock against in-memory providers.
"""

from __future__ import annotations

import logging
from collections import Counter

import pytest
import trio

from actors import Done, StreamError, open_baton

from .conftest import PROMPT
from .test_resume import WINDOW, config, provider, take_events, take_rest


class Ends:
    """Counts each stream's ``on_end`` calls."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"<Ends {dict(self.calls)}>"

    def callback(self, name: str):
        return lambda: self.calls.update([name])


async def test_on_end_runs_once_for_a_done_a_cancel_a_window_over_and_a_shutdown(
    autojump_clock,
):
    ends = Ends()
    async with open_baton(config(), {"a": provider()}) as baton:
        done = baton.start_stream(route="default", messages=PROMPT, on_end=ends.callback("done"))
        events = await take_rest(done)
        assert isinstance(events[-1], Done)

        cancelled = baton.start_stream(
            route="default", messages=PROMPT, on_end=ends.callback("cancelled")
        )
        await take_events(cancelled, 2)
        cancelled.cancel()
        events = await take_rest(cancelled)
        assert isinstance(events[-1], StreamError) and events[-1].code == "cancelled"

        abandoned = baton.start_stream(
            route="default", messages=PROMPT, on_end=ends.callback("abandoned")
        )
        await take_events(abandoned, 2)
        baton.detach(abandoned)
        await trio.sleep(WINDOW / 2)
        assert ends.calls["abandoned"] == 0  # detached, it still runs
        await trio.sleep(WINDOW)

        resumed = baton.start_stream(
            route="default", messages=PROMPT, on_end=ends.callback("resumed")
        )
        seen = await take_events(resumed, 2)
        baton.detach(resumed)
        again, _ = baton.resume(resumed.id, seen[-1].seq, client=None)
        await take_rest(again)

        running = baton.start_stream(
            route="default", messages=PROMPT, on_end=ends.callback("shutdown")
        )
        await take_events(running, 2)
        await trio.sleep(1)  # the ended streams' tasks finish
        assert ends.calls == Counter(["done", "cancelled", "abandoned", "resumed"])
    assert ends.calls == Counter(["done", "cancelled", "abandoned", "resumed", "shutdown"])


async def test_a_failing_on_end_is_logged_and_the_stream_and_baton_go_on(
    autojump_clock, caplog: pytest.LogCaptureFixture
):
    def broken() -> None:
        raise RuntimeError("a transport's bug")

    async with open_baton(config(), {"a": provider()}) as baton:
        handle = baton.start_stream(route="default", messages=PROMPT, on_end=broken)
        events = await take_rest(handle)
        assert isinstance(events[-1], Done)
        while baton.statistics().active_streams:
            await trio.sleep(0.1)
        after = baton.start_stream(route="default", messages=PROMPT)
        assert isinstance((await take_rest(after))[-1], Done)
        assert baton.statistics().finished == {"done": 2}
    failures = [r for r in caplog.records if "on_end callback failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].levelno == logging.ERROR


async def test_a_stream_that_cannot_start_never_calls_on_end(autojump_clock):
    ends = Ends()
    async with open_baton(config(), {"a": provider()}) as baton:
        with pytest.raises(Exception, match="Unknown model"):
            baton.start_stream(route="nope", messages=PROMPT, on_end=ends.callback("nope"))
    assert not ends.calls
