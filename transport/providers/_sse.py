"""An incremental Server-Sent-Events decoder fed raw byte chunks.

``SSEDecoder.feed(chunk)`` returns the events completed by ``chunk``; ``close()`` returns what a
cleanly ended stream left pending. It follows the WHATWG event-stream rules that matter for LLM
APIs: ``\\r\\n``, ``\\n`` and ``\\r`` line ends (also when a ``\\r\\n`` pair is split across
chunks), comment lines, ``event:`` and ``data:`` fields, multi-line data joined by ``\\n``, a
blank line dispatches, an event without data is dropped, a leading BOM is skipped.

The hot path works on whole buffers: line ends are normalised with two ``bytes.replace`` calls
per chunk, complete events are found with one ``rfind`` of the blank line, decoded with one
``decode`` and split with ``str.split``. Only complete events are decoded, and an event boundary
is ASCII, so a multi-byte UTF-8 character split across chunks is never decoded in halves.
"""

from __future__ import annotations

from typing import NamedTuple

#: The longest event (in bytes) the decoder buffers before giving up on the stream: an upstream
#: that never sends a blank line must not grow our memory without bound.
MAX_EVENT_BYTES = 16 * 1024 * 1024


class SSEEvent(NamedTuple):
    """One dispatched event: its ``event:`` name (``None`` when unnamed) and its data.

    A named tuple rather than an attrs class: one is made per token, and a tuple is built in a
    third of the time.
    """

    event: str | None
    data: str


class SSEError(ValueError):
    """The byte stream cannot be decoded as events (an event grew past the size limit)."""


class SSEDecoder:
    """Turns a stream of byte chunks into ``SSEEvent`` objects, incrementally.

    Not thread-safe and synchronous: one decoder per response. ``feed`` raises ``SSEError`` when
    a pending event exceeds ``max_event_bytes``.
    """

    def __init__(self, *, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._buf = bytearray()
        # Where the next search for a blank line may start: everything before it was searched.
        self._scan_from = 0
        # The previous chunk ended with "\r", already turned into "\n"; a "\n" that opens the
        # next chunk is the second half of that "\r\n" and must be dropped.
        self._pending_cr = False
        self._at_start = True
        self._max_event_bytes = max_event_bytes

    def __repr__(self) -> str:
        return f"<SSEDecoder buffered={len(self._buf)}>"

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Add ``chunk`` and return the events it completes (often none, sometimes several)."""
        if not chunk:
            return []
        if self._pending_cr and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._pending_cr = chunk[-1:] == b"\r"
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf = self._buf
        buf += chunk
        # A blank line is "\n\n" once line ends are normalised; the previous search already saw
        # everything before the last byte of the old buffer.
        end = buf.rfind(b"\n\n", self._scan_from)
        if end < 0:
            if len(buf) > self._max_event_bytes:
                raise SSEError(f"an event exceeded {self._max_event_bytes} bytes")
            self._scan_from = max(len(buf) - 1, 0)
            return []
        complete = bytes(buf[:end])
        del buf[: end + 2]
        self._scan_from = max(len(buf) - 1, 0)
        return self._parse(complete.decode("utf-8", "replace"))

    def close(self) -> list[SSEEvent]:
        """Return the event a cleanly ended stream left without its closing blank line.

        The spec discards it; LLM servers that omit the final blank line exist, and a stream that
        ended cleanly (the HTTP layer reported no truncation) carries a whole last event. A last
        line without its line end may be cut short, so it is dropped.
        """
        buf = self._buf
        cut = buf.rfind(b"\n")
        text = bytes(buf[:cut]).decode("utf-8", "replace") if cut >= 0 else ""
        buf.clear()
        self._scan_from = 0
        return self._parse(text) if text else []

    def _parse(self, text: str) -> list[SSEEvent]:
        """Parse complete events (separated by blank lines) into ``SSEEvent`` objects."""
        if self._at_start:
            self._at_start = False
            text = text.removeprefix("\ufeff")
        events: list[SSEEvent] = []
        for block in text.split("\n\n"):
            # The common case for OpenAI-style streams: one "data: ..." line and nothing else.
            if block.startswith("data: ") and "\n" not in block:
                events.append(SSEEvent(None, block[6:]))
                continue
            name: str | None = None
            data: list[str] = []
            for line in block.split("\n"):
                if not line:
                    # A blank line inside a block comes from three or more line ends in a row:
                    # it dispatches like any blank line.
                    if data:
                        events.append(SSEEvent(name, "\n".join(data)))
                    name, data = None, []
                    continue
                if line[0] == ":":
                    continue  # a comment, e.g. ": keep-alive"; not an event, not progress
                field, _, value = line.partition(":")
                if value[:1] == " ":
                    value = value[1:]
                if field == "data":
                    data.append(value)
                elif field == "event":
                    name = value or None
                # "id" and "retry" steer browser reconnects, which a proxy never does.
            if data:
                events.append(SSEEvent(name, "\n".join(data)))
        return events
