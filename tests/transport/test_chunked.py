"""The merging chunked-body reader against h11's own: same body, same end, same errors."""

from __future__ import annotations

import itertools

import h11
import pytest
from h11 import _readers as h11_readers
from h11._receivebuffer import ReceiveBuffer
from hypothesis import example, given, settings
from hypothesis import strategies as st

from transport.providers import install_merging_chunked_reader
from transport.providers._chunked import MergingChunkedReader

Outcome = tuple[bytes, int, object]


def read(reader: h11_readers.ChunkedReader, pieces: list[bytes]) -> Outcome:
    """Feed ``pieces`` as h11 does (read events until it needs data, then add the next piece).

    Returns the body delivered, the number of ``Data`` events, and how it ended: the trailer
    headers, ``"error"`` for a framing error, or ``"incomplete"``.
    """
    buf = ReceiveBuffer()
    body = bytearray()
    events = 0
    for piece in pieces:
        buf += piece
        while True:
            try:
                event = reader(buf)
            except h11.LocalProtocolError:
                return bytes(body), events, "error"
            if event is None:
                break
            if type(event) is h11.EndOfMessage:
                return bytes(body), events, list(event.headers)
            assert type(event) is h11.Data
            body += event.data
            events += 1
    return bytes(body), events, "incomplete"


def frame(chunks: list[bytes], *, extension: bytes = b"", trailer: bytes = b"") -> bytes:
    framed = b"".join(b"%x%s\r\n%s\r\n" % (len(c), extension, c) for c in chunks if c)
    return framed + b"0\r\n" + trailer + b"\r\n"


@st.composite
def wires(draw: st.DrawFn) -> list[bytes]:
    """A chunked body, sometimes corrupted, cut into the pieces it arrives in."""
    chunks = draw(st.lists(st.binary(min_size=1, max_size=40), max_size=12))
    extension = draw(st.sampled_from([b"", b";name=value", b" ", b";x\t"]))
    trailer = draw(st.sampled_from([b"", b"x-usage: 3\r\n", b"bad trailer\r\n"]))
    wire = bytearray(frame(chunks, extension=extension, trailer=trailer))
    if draw(st.booleans()):
        at = draw(st.integers(0, len(wire) - 1))
        wire[at] = draw(st.sampled_from(b"\r\n0aZ;\x00 "))
    cuts = sorted(draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    bounds = [0, *cuts, len(wire)]
    return [bytes(wire[a:b]) for a, b in itertools.pairwise(bounds)]


@settings(max_examples=600, deadline=None)
@given(wires())
@example([frame([b"data: a\n\n"])[:3], frame([b"data: a\n\n"])[3:]])
@example([b"5\r\nhello\r", b"\n0\r\n\r\n"])
@example([b"5\r\nhelloXY0\r\n\r\n"])
@example([b"3\r\nabc\r\nzz\r\n"])
@example([b"A\r\n0123456789\r\n0\r\n\r\n"])
@example([b"00000000000000000003\r\nabc\r\n0\r\n\r\n"])
@example([b"000000000000000000003\r\nabc\r\n0\r\n\r\n"])
@example([b"\r\nabc\r\n0\r\n\r\n"])
def test_delivers_what_h11s_reader_delivers(pieces: list[bytes]) -> None:
    stock_body, stock_events, stock_end = read(h11_readers.ChunkedReader(), pieces)
    body, events, end = read(MergingChunkedReader(), pieces)
    assert (body, end) == (stock_body, stock_end)
    assert events <= stock_events


def test_a_read_full_of_chunks_is_one_event() -> None:
    tokens = [b'data: {"t": %d}\n\n' % i for i in range(200)]
    wire = frame(tokens)
    assert read(MergingChunkedReader(), [wire]) == (b"".join(tokens), 1, [])
    assert read(h11_readers.ChunkedReader(), [wire])[1] == 200


def test_data_before_a_framing_error_is_delivered_first() -> None:
    reader = MergingChunkedReader()
    buf = ReceiveBuffer()
    buf += b"2\r\nok\r\nnot-hex\r\n"
    event = reader(buf)
    assert type(event) is h11.Data and bytes(event.data) == b"ok"
    with pytest.raises(h11.LocalProtocolError, match="illegal chunk header"):
        reader(buf)


def test_installed_into_h11_for_whole_responses() -> None:
    """Once installed, an h11 client connection reads a response through the new reader."""
    assert install_merging_chunked_reader()
    tokens = [b"data: %d\n\n" % i for i in range(50)]
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("host", "example")]))
    client.send(h11.EndOfMessage())
    client.receive_data(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + frame(tokens))
    events = []
    while (event := client.next_event()) is not h11.NEED_DATA:
        events.append(type(event))
        if type(event) is h11.EndOfMessage:
            break
    assert events == [h11.Response, h11.Data, h11.EndOfMessage]
    assert client.their_state is h11.DONE
