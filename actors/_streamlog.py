"""A stream's numbered event log: what the session emits and the client transport reads.

The session appends without blocking; the one reader takes every event it has not seen in a
batch. A delta appended while the reader is behind is merged into the last unread delta, so a
slow client gets fewer, larger frames, with seqs still gapless (a merged delta is one event).
The log keeps at most ``cap`` events for resuming from a seq.

The text the reader has not taken yet is the client's backlog. Once it passes ``max_unread``
characters the log is ``full``, and the writer's attempt waits in ``wait_for_room`` before it
reads more from its provider, until the reader takes the backlog: a client that stops reading
stops the upstream (TCP pushes back on the provider) instead of growing Baton's memory.

Resuming (``Baton.resume``): the reader may go away (``detach``): the log then never becomes
``full``, since backpressure is for a slow reader, not an absent one; the answer stays bounded
by the provider's ``max_answer_bytes`` and the log by its cap. ``reattach`` hands the log to a
new reader: it returns the retained events after a seq (sealed, so a seq always carries the
same payload: a delta is sealed when a reader takes it or a replay includes it, and only the
unsealed tail, which no reader has seen, ever grows) and the new reader's number. Each reader
passes its number to ``take``; a reader whose number is no longer the log's gets
``StreamDisplaced``, so two connections never read one stream.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import trio

from ._messages import ClientEvent, Delta, Failover, Started, is_terminal

DEFAULT_MAX_UNREAD = 256 * 1024  # characters; ``ServerConfig.max_client_backlog``


class ResumeUnavailable(Exception):
    """The events asked for were dropped from the log (older than its cap).

    ``oldest``: the oldest seq the log still holds.
    """

    def __init__(self, message: str, *, oldest: int) -> None:
        super().__init__(message)
        self.oldest = oldest


class StreamDisplaced(trio.EndOfChannel):
    """This reader's stream was handed to another reader (a resume) or left without one.

    An ``EndOfChannel``, so a transport loop that stops at the end of a stream stops here too,
    quietly; one that must tell the two apart catches this first.
    """


def short_id(stream_id: str) -> str:
    """A stream id cut to its first 8 characters, for INFO logs: a whole id is a capability."""
    return stream_id[:8] + "…" if len(stream_id) > 8 else stream_id


class StreamLog:
    """The numbered events of one stream; one writer (the session), one reader."""

    def __init__(
        self, stream_id: str, *, cap: int = 4096, max_unread: int = DEFAULT_MAX_UNREAD
    ) -> None:
        self.stream_id = stream_id
        self._events: deque[ClientEvent] = deque(maxlen=cap)
        self._next_seq = 0
        self._read_seq = 0  # the first seq the reader has not taken
        self._wakeup = trio.Event()
        self.terminal: ClientEvent | None = None
        # The last delta while the reader has not taken it: its pieces are joined only when it
        # is taken, so merging costs a list append per token, not a string copy.
        self._tail: list[str] | None = None
        self._tail_logprobs: list[Any] | None = None  # the tail's tokens' logprobs, if asked
        # A reader that shows nothing for ``started`` and ``failover`` (OpenAI's chunk format:
        # they only change the model of later chunks) sets this, and is not woken by them; they
        # reach it in the next batch, in order.
        self.wake_for_text_only = False
        # Characters of text appended since the reader last took its batch; ``full`` once they
        # pass ``max_unread``. A plain attribute, so the writer checks it per token for free.
        self._unread = 0
        self._max_unread = max_unread
        self.full = False
        self._room = trio.Event()
        # No reader is attached (its connection went away): nothing makes the log ``full``.
        self.detached = False
        self.reader = 0  # the number of the reader that may take; ``reattach`` makes a new one

    def __repr__(self) -> str:
        return f"<StreamLog {self.stream_id} next_seq={self._next_seq} read={self._read_seq}>"

    @property
    def closed(self) -> bool:
        return self.terminal is not None

    def append_text(self, text: str, logprobs: tuple[Any, ...] | None = None) -> None:
        """Append answer text, merged into the last delta if the reader has not taken it.

        ``logprobs``: the text's tokens' entries, kept with it through merging.
        """
        if not text or self.terminal is not None:
            return
        self._unread += len(text)
        if self._unread > self._max_unread and not self.detached:
            self.full = True
        if self._tail is not None:
            self._tail.append(text)
            if logprobs:
                if self._tail_logprobs is None:
                    self._tail_logprobs = []
                self._tail_logprobs.extend(logprobs)
            return
        self._tail = [text]
        self._tail_logprobs = list(logprobs) if logprobs else None
        self._next_seq += 1
        self._wakeup.set()

    def append(self, make: type[ClientEvent], **fields: Any) -> ClientEvent | None:
        """Append an event built as ``make(stream=..., seq=..., **fields)``.

        Nothing is appended after the terminal event; returns the event or None.
        """
        if self.terminal is not None:
            return None
        self._seal()
        event = make(stream=self.stream_id, seq=self._next_seq, **fields)
        self._events.append(event)
        self._next_seq += 1
        if is_terminal(event):
            self.terminal = event
            self._wakeup.set()
            self._room.set()
        elif not (self.wake_for_text_only and isinstance(event, (Started, Failover))):
            self._wakeup.set()
        return event

    def _seal(self) -> None:
        """Turn the pending tail into a ``Delta`` event (its seq was reserved when it began)."""
        tail = self._tail
        if tail is not None:
            self._tail = None
            text = tail[0] if len(tail) == 1 else "".join(tail)
            logprobs = self._tail_logprobs
            self._tail_logprobs = None
            self._events.append(
                Delta(
                    stream=self.stream_id, seq=self._next_seq - 1, text=text,
                    logprobs=None if logprobs is None else tuple(logprobs),
                )
            )  # fmt: skip

    def take_nowait(self) -> list[ClientEvent]:
        """Every event the reader has not taken yet (possibly none)."""
        count = self._next_seq - self._read_seq
        if count <= 0:
            return []
        self._seal()
        events = self._events
        batch = (
            [events[i] for i in range(len(events) - count, len(events))]
            if count < len(events)
            else list(events)
        )
        self._read_seq = self._next_seq
        self._unread = 0
        if self.full:
            self.full = False
            self._room.set()
        return batch

    async def wait_for_room(self) -> None:
        """Wait until the reader has taken the backlog (at once unless ``full``).

        Returns at once after the terminal event, which nothing more follows. Cancelling it
        only stops the wait.
        """
        while self.full and self.terminal is None:
            self._room = trio.Event()
            await self._room.wait()

    async def take(self, reader: int | None = None) -> list[ClientEvent]:
        """Wait for events the reader has not taken and return them all, in seq order.

        Raises ``trio.EndOfChannel`` once the terminal event has been taken, and
        ``StreamDisplaced`` (also while waiting) once ``reader`` is not the log's reader.
        """
        while True:
            if reader is not None and reader != self.reader:
                raise StreamDisplaced
            batch = self.take_nowait()
            if batch:
                return batch
            if self.terminal is not None:
                raise trio.EndOfChannel
            self._wakeup = trio.Event()
            await self._wakeup.wait()

    @property
    def last_seq(self) -> int:
        """The seq of the newest event (a pending delta included); -1 before the first."""
        return self._next_seq - 1

    def since(self, seq: int) -> list[ClientEvent]:
        """The retained events from ``seq`` on, for a client resuming a stream.

        Raises ``ResumeUnavailable`` when some of them were dropped (the cap).
        """
        self._seal()
        if not self._events or seq >= self._next_seq:
            return []
        first = self._events[0].seq
        if seq < first:
            raise ResumeUnavailable(f"events before seq {first} are no longer kept", oldest=first)
        return list(self._events)[seq - first :]

    def detach(self) -> None:
        """The reader went away: the writer never waits for room until a reader reattaches.

        A reader still taking is displaced (``StreamDisplaced``).
        """
        self.reader += 1
        self.detached = True
        self._release()

    def reattach(self, after: int) -> tuple[int, list[ClientEvent]]:
        """Hand the log to a new reader: its number, and the retained events after ``after``.

        The replay is everything up to now; the new reader's ``take`` returns what comes after
        it. Any reader before it is displaced. Raises ``ResumeUnavailable`` (and changes
        nothing) when events after ``after`` were dropped.
        """
        replay = self.since(after + 1)
        self.reader += 1
        self.detached = False
        self.wake_for_text_only = False  # the new reader sets it if its format wants it
        self._read_seq = self._next_seq
        self._release()
        return self.reader, replay

    def _release(self) -> None:
        """Free the writer from waiting for room, and wake a waiting reader to see its fate."""
        self._unread = 0
        if self.full:
            self.full = False
        self._room.set()
        self._wakeup.set()
