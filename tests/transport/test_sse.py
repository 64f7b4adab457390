"""Tests for the incremental SSE decoder: the spec's rules, and chunking never changes events."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from transport.providers import SSEDecoder, SSEError, SSEEvent


def decode(*chunks: bytes) -> list[SSEEvent]:
    """Feed ``chunks`` one by one, then close; return every event."""
    decoder = SSEDecoder()
    events = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    events.extend(decoder.close())
    return events


def reference(data: bytes) -> list[SSEEvent]:
    """A line-at-a-time transcription of the WHATWG rules, as an oracle for the fast decoder.

    Like ``SSEDecoder.close``, a last event that lacks its blank line is dispatched and a last
    line that lacks its line end is dropped.
    """
    text = data.decode("utf-8", "replace")
    text = text.removeprefix("\ufeff")
    lines = re.split(r"\r\n|\r|\n", text)[:-1]
    events: list[SSEEvent] = []
    name: str | None = None
    buffer: list[str] = []
    for line in lines + [""]:
        if line == "":
            if buffer:
                events.append(SSEEvent(name, "\n".join(buffer)))
            name, buffer = None, []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "data":
                buffer.append(value)
            elif field == "event":
                name = value or None
    return events


OPENAI_LIKE = (
    b": keep-alive\n\n"
    b'data: {"choices":[{"index":0,"delta":{"content":"h\xc3\xa9llo \xf0\x9f\x99\x82"}}]}\r\n\r\n'
    b"event: message_delta\r"
    b"data: line one\r"
    b"data: line two\r\r"
    b"data: [DONE]\n\n"
)
OPENAI_LIKE_EVENTS = [
    SSEEvent(None, '{"choices":[{"index":0,"delta":{"content":"héllo 🙂"}}]}'),
    SSEEvent("message_delta", "line one\nline two"),
    SSEEvent(None, "[DONE]"),
]


def test_fields_comments_and_line_ends() -> None:
    assert decode(OPENAI_LIKE) == OPENAI_LIKE_EVENTS


def test_every_single_split_point_gives_the_same_events() -> None:
    for cut in range(len(OPENAI_LIKE) + 1):
        assert decode(OPENAI_LIKE[:cut], OPENAI_LIKE[cut:]) == OPENAI_LIKE_EVENTS, cut


def test_byte_at_a_time() -> None:
    chunks = [OPENAI_LIKE[i : i + 1] for i in range(len(OPENAI_LIKE))]
    assert decode(*chunks) == OPENAI_LIKE_EVENTS


def test_events_arrive_as_soon_as_their_blank_line_does() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n") == []
    assert decoder.feed(b"\ndata: b\n\n") == [SSEEvent(None, "a"), SSEEvent(None, "b")]
    assert decoder.feed(b"data: c") == []
    assert decoder.feed(b"\r\n\r\n") == [SSEEvent(None, "c")]


def test_multibyte_character_split_across_chunks() -> None:
    data = "data: 🙂é\n\n".encode()
    for cut in range(7, 12):  # every cut inside the two characters
        assert decode(data[:cut], data[cut:]) == [SSEEvent(None, "🙂é")]


def test_crlf_split_between_cr_and_lf_is_one_line_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    # Had the "\n" counted as a second line end, "a" would be dispatched here on its own.
    assert decoder.feed(b"\ndata: b\r") == []
    # A lone "\r" already ends a (blank) line: the event is complete without waiting.
    assert decoder.feed(b"\n\r") == [SSEEvent(None, "a\nb")]
    # This "\n" completes that "\r\n"; it is no further blank line.
    assert decoder.feed(b"\ndata: c\n") == []
    assert decoder.feed(b"\n") == [SSEEvent(None, "c")]


def test_lone_cr_line_ends() -> None:
    assert decode(b"data: a\r\rdata: b\r\r") == [SSEEvent(None, "a"), SSEEvent(None, "b")]


def test_keep_alive_comments_produce_nothing() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b": keep-alive\n\n" * 3) == []
    assert decoder.feed(b":\n\n: ping\r\n\r\n") == []


def test_field_spelling_rules() -> None:
    stream = (
        b"data:no-space\n\n"  # the space after the colon is optional
        b"data:  two-spaces\n\n"  # only one space is removed
        b"data\n\n"  # a field without a colon has an empty value
        b"data:\ndata:\n\n"  # empty data lines still make an event
        b"event: lonely\n\n"  # no data: nothing is dispatched
        b"id: 7\nretry: 10\nfoo: bar\ndata: x\n\n"  # other fields are ignored
        b"event:\ndata: y\n\n"  # an empty event name means no name
    )
    assert decode(stream) == [
        SSEEvent(None, "no-space"),
        SSEEvent(None, " two-spaces"),
        SSEEvent(None, ""),
        SSEEvent(None, "\n"),
        SSEEvent(None, "x"),
        SSEEvent(None, "y"),
    ]


def test_event_name_does_not_leak_into_the_next_event() -> None:
    assert decode(b"event: ping\ndata: {}\n\ndata: next\n\n") == [
        SSEEvent("ping", "{}"),
        SSEEvent(None, "next"),
    ]


def test_blank_lines_in_a_row() -> None:
    assert decode(b"\n\n\ndata: a\n\n\n\n\ndata: b\n\n\n") == [
        SSEEvent(None, "a"),
        SSEEvent(None, "b"),
    ]


def test_leading_bom_is_skipped_even_when_split() -> None:
    data = b"\xef\xbb\xbfdata: a\n\n"
    for cut in range(4):
        assert decode(data[:cut], data[cut:]) == [SSEEvent(None, "a")]


def test_close_dispatches_a_last_event_without_blank_line_but_drops_a_cut_line() -> None:
    assert decode(b"data: a\n\ndata: b\n") == [SSEEvent(None, "a"), SSEEvent(None, "b")]
    assert decode(b'data: a\n\ndata: {"cut') == [SSEEvent(None, "a")]


def test_an_endless_line_is_refused() -> None:
    decoder = SSEDecoder(max_event_bytes=100)
    decoder.feed(b"data: " + b"x" * 90)
    with pytest.raises(SSEError):
        decoder.feed(b"x" * 20)


def test_invalid_utf8_is_replaced_not_raised() -> None:
    assert decode(b"data: a\xffb\n\n") == [SSEEvent(None, "a\ufffdb")]


# --- property: chunking never matters, and the fast decoder agrees with the oracle ------------

_pieces = st.sampled_from(
    [
        "data",
        "event",
        ":",
        " ",
        "x",
        "é",
        "🙂",
        "\n",
        "\r",
        "\r\n",
        "\n\n",
        "[DONE]",
        "id",
        "\ufeff",
    ]
)
_streams = st.lists(_pieces, max_size=40).map(lambda parts: "".join(parts).encode())


@st.composite
def _chunked(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    data = draw(_streams)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=10)))
    bounds = [0, *cuts, len(data)]
    return data, [data[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=500, deadline=None)
@given(_chunked())
@example((b"data: a\r\n\r\n", [b"data: a\r", b"\n\r", b"\n"]))
@example(("data: é\n\n".encode(), [b"data: \xc3", b"\xa9\n\n"]))
def test_any_chunking_matches_the_reference(case: tuple[bytes, list[bytes]]) -> None:
    data, chunks = case
    assert decode(*chunks) == reference(data)
