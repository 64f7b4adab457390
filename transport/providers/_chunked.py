"""A faster chunked-body reader for h11, the HTTP/1.1 parser under httpx.

Why this exists: an LLM provider sends every token as its own HTTP/1.1 chunk. h11's stock
``ChunkedReader`` turns each chunk into its own ``Data`` event, and every event then travels
alone through h11's state machine, httpcore's read loop and httpx's stream generators. The
benchmark measured about 12 us of CPU per token in h11 alone and about 25 us per token to read
a stream through httpx at all: more than Baton's whole per-token budget. ``MergingChunkedReader``
strips the framing of every complete chunk in the receive buffer in one pass and returns their
payloads as one ``Data`` event, so h11, httpcore and httpx do their per-event work once per
network read instead of once per token.

It changes nothing a caller can rely on: the body's bytes, the trailers, where the message ends
and the errors for malformed framing are the stock reader's (a differential property test checks
this against h11's own reader). Only ``Data.chunk_start``/``chunk_end`` lose their meaning, which
h11 documents as "you probably shouldn't use this attribute at all". Data is never held back
waiting for more: what the buffer has is returned at once, a partial chunk included.

``install_merging_chunked_reader()`` puts the reader into h11's table of body readers, so every
h11 connection in the process uses it (httpx's upstream connections and the HTTP server's
request bodies alike). Nothing calls it on import or when a provider is built: the process that
wants it (``baton serve``) calls it once at start-up, where a reader of that program sees it. It
checks that h11's internals have the shape it was written for and leaves h11 alone otherwise,
so a future h11 degrades to the stock speed, never to a wrong body.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import h11
from h11 import LocalProtocolError
from h11 import _readers as h11_readers
from h11._receivebuffer import ReceiveBuffer

logger = logging.getLogger(__name__)

# The grammar h11 accepts for a chunk's size line (chunk-size, optional extensions, optional
# trailing whitespace), checked with ``fullmatch`` on the line including its CRLF.
_CHUNK_HEADER = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;.*)?[ \t]*\r\n")
_CRLF = b"\r\n"
_HEX_DIGITS = b"0123456789abcdefABCDEF"


class MergingChunkedReader(h11_readers.ChunkedReader):
    """h11's chunked-body reader, returning every complete chunk in the buffer as one event.

    The trailer section and the end of the body are parsed by the stock reader, which this one
    hands over to once it reads the last (zero-size) chunk's size line.
    """

    def __init__(self) -> None:
        super().__init__()
        # The end of the message or a framing error, found in the same pass as data before
        # it: the data is returned first and this by the next call, as the stock reader would.
        self._end: h11.Data | h11.EndOfMessage | None = None
        self._error: LocalProtocolError | None = None

    def __call__(self, buf: ReceiveBuffer) -> h11.Data | h11.EndOfMessage | None:
        if self._error is not None:
            raise self._error
        if self._end is not None:
            end, self._end = self._end, None
            return end
        if self._reading_trailer:
            return super().__call__(buf)
        data: bytearray = buf._data
        size = len(data)
        pos = 0
        pieces: list[bytes | bytearray] = []
        remaining = self._bytes_in_chunk
        discard = self._bytes_to_discard
        try:
            while pos < size:
                if discard:
                    got = data[pos : pos + len(discard)]
                    if got != discard[: len(got)]:
                        raise LocalProtocolError(
                            f"malformed chunk footer: {bytes(got)!r} (expected {discard!r})"
                        )
                    pos += len(got)
                    discard = discard[len(got) :]
                    continue
                if remaining == 0:
                    eol = data.find(_CRLF, pos)
                    if eol < 0:
                        break
                    digits = bytes(data[pos:eol])
                    if 0 < len(digits) <= 20 and not digits.translate(None, _HEX_DIGITS):
                        remaining = int(digits, 16)  # the common line: only the size
                    else:
                        line = bytes(data[pos : eol + 2])
                        match = _CHUNK_HEADER.fullmatch(line)
                        if match is None:
                            raise LocalProtocolError(f"illegal chunk header: {line!r}")
                        remaining = int(match[1], 16)
                    pos = eol + 2
                    if remaining == 0:
                        self._reading_trailer = True
                        break
                    continue
                take = min(remaining, size - pos)
                pieces.append(data[pos : pos + take])
                pos += take
                remaining -= take
                if remaining == 0:
                    discard = _CRLF
        except LocalProtocolError as exc:
            if not pieces:
                raise
            self._error = exc
        finally:
            self._bytes_in_chunk = remaining
            self._bytes_to_discard = discard
            if pos:
                # One deletion for the whole pass (the stock reader moves the buffer per chunk);
                # the buffer's line searches restart, as after any extraction.
                buf._extract(pos)
        if self._reading_trailer and pieces:
            try:
                self._end = super().__call__(buf)
            except LocalProtocolError as exc:
                self._error = exc
        elif self._reading_trailer:
            return super().__call__(buf)
        if not pieces:
            return None
        return h11.Data(data=b"".join(pieces))


def _stock_readers() -> dict[Any, Any] | None:
    """h11's table of body readers by framing, if it has the shape this module knows."""
    table = getattr(h11_readers, "READERS", None)
    if not isinstance(table, dict):
        return None
    by_framing = table.get(h11.SEND_BODY)
    if not isinstance(by_framing, dict) or "chunked" not in by_framing:
        return None
    reader = by_framing["chunked"]
    if reader is not h11_readers.ChunkedReader and reader is not MergingChunkedReader:
        return None
    probe = h11_readers.ChunkedReader()
    if not all(hasattr(probe, name) for name in _STATE) or probe._bytes_to_discard != b"":
        return None  # (h11 before 0.16 counted the bytes to discard as an int)
    if not hasattr(ReceiveBuffer, "_extract") or not hasattr(ReceiveBuffer(), "_data"):
        return None
    return by_framing


_STATE = ("_bytes_in_chunk", "_bytes_to_discard", "_reading_trailer")
_warned = False


def install_merging_chunked_reader() -> bool:
    """Make every h11 connection in the process read chunked bodies with ``MergingChunkedReader``.

    Returns whether it does. Idempotent. Returns false, and changes nothing (with one warning),
    when h11's internals are not the ones this reader was written against.
    """
    global _warned
    by_framing = _stock_readers()
    if by_framing is None:
        if _warned:
            return False
        _warned = True
        logger.warning(
            "h11 %s has an unfamiliar body reader table; chunked bodies are read with h11's own"
            " reader (correct, slower)",
            getattr(h11, "__version__", "?"),
        )
        return False
    by_framing["chunked"] = MergingChunkedReader
    return True
