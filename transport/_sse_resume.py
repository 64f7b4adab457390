"""A streamed chat completion as resumable SSE: its chunks, its pump and ``GET /v1/streams/{id}``.

Every SSE event carries ``id: <seq>`` (the seq of the stream event it encodes) and the
response ``x-baton-stream: st_...``. A client whose connection drops asks ``GET
/v1/streams/{stream}`` with ``Last-Event-ID: N`` (what a browser's ``EventSource`` sends by
itself) or ``?after=N`` and gets the same chunk stream from after event N: same completion
id, ``created`` and model (``ChunkStream``), no loss, no repeat. Meanwhile the stream runs on
without a reader for ``[server] resume_window`` seconds (``Baton.detach``); 0 cancels it when
its client leaves. Errors: 404 ``unknown_stream``, 410 ``resume_unavailable``; with client
keys only the stream's own client may resume it. A resume after the stream's last event
answers 204, which tells an ``EventSource`` to stop reconnecting.

``ResumableStreams`` keeps what a resume needs besides the stream's log (``Resumable``);
``stream_chunks`` relays a stream as SSE for the first reader and for every resume alike.
The HTTP app (``transport._http``) routes the requests and watches the client's connection.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any
from urllib.parse import parse_qs

import trio

from actors import (
    Baton,
    ClientEvent,
    Delta,
    Done,
    Failover,
    Reasoning,
    RequestError,
    Started,
    StreamError,
    StreamHandle,
    ToolCall,
    ToolCallPart,
    clip,
    short_id,
)

from ._auth import Client, TokenMeter
from ._http_response import Responder, Scope, send_stream_error
from ._openai_codec import REQUEST_ERROR_CODES, APIError, ChunkEncoder

log = logging.getLogger("transport._http")  # its lines are the HTTP API's, as they were

STREAMS_PATH = "/v1/streams/"
DONE_EVENT = b"data: [DONE]\n\n"
SSE_HEADERS: Sequence[tuple[bytes, bytes]] = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx would otherwise hold the stream back
)

Headers = tuple[tuple[bytes, bytes], ...]
# What the HTTP app runs over a handle until the answer is sent: (handle, send, headers).
Relay = Callable[[StreamHandle, Responder, Headers], Awaitable[None]]


class Resumable:
    """What a resume of one streamed answer needs besides its log: its chunks' shared parts
    and its client's token meter (which counts each seq once, whichever reader sends it).

    Kept by ``ResumableStreams`` weakly keyed by the stream's log, so it lives as long as Baton
    keeps the stream; it must hold no reference to the log or a handle.
    """

    def __init__(self, chunks: ChunkStream, meter: TokenMeter) -> None:
        self.chunks = chunks
        self._meter = meter
        self._metered = -1  # the newest seq counted

    def meter(self, batch: list[ClientEvent]) -> None:
        """Count the batch's events for ``tokens_per_minute``, those a replay repeats once."""
        new = [event for event in batch if event.seq > self._metered]
        if new:
            self._metered = new[-1].seq
            self._meter.see(new)


class ResumableStreams:
    """The streamed answers a resume can continue, of one HTTP app.

    By log (alive while Baton keeps the stream) and by id (for the lookup before the resume
    itself); both weak, so a stream Baton forgets is forgotten here too.
    """

    def __init__(self, baton: Baton) -> None:
        self.baton = baton
        self._by_log: weakref.WeakKeyDictionary[Any, Resumable] = weakref.WeakKeyDictionary()
        self._by_id: weakref.WeakValueDictionary[str, Resumable] = weakref.WeakValueDictionary()

    def __repr__(self) -> str:
        return f"<ResumableStreams {len(self._by_id)}>"

    def keep(self, handle: StreamHandle, chunks: ChunkStream, meter: TokenMeter) -> Relay:
        """Keep a new streamed answer for resumes; the ``Relay`` its first reader runs."""
        resumable = Resumable(chunks, meter)
        self._by_log[handle.log] = resumable
        self._by_id[handle.id] = resumable
        return partial(stream_chunks, resumable, chunks.writer())

    def resume(self, scope: Scope) -> tuple[StreamHandle, Relay, Headers]:
        """``GET /v1/streams/{stream}``: the new reader's handle, its ``Relay`` (the missed
        events first) and headers; ``APIError`` 400, 404 or 410 when it cannot resume."""
        stream_id = scope["path"][len(STREAMS_PATH) :]
        after = resume_after(scope)
        client: Client = scope["baton.client"]
        resumable = self._by_id.get(stream_id)
        if resumable is None:  # not a streamed chat completion of this app, or forgotten
            raise APIError(
                404, "unknown_stream",
                f"No stream {clip(short_id(stream_id))} can be resumed here: it never existed, "
                "it was not a streamed chat completion, or its resume window is over. Start "
                "the request again.",
            )  # fmt: skip
        try:
            handle, replay = self.baton.resume(stream_id, after, client=client.name)
        except RequestError as exc:
            param = "after" if exc.code == "bad_request" else None
            code = REQUEST_ERROR_CODES.get(exc.code, exc.code)
            raise APIError(exc.status, code, exc.message, param=param) from None
        handle.log.wake_for_text_only = True
        headers = ((b"x-request-id", handle.id.encode()), (b"x-baton-stream", handle.id.encode()))
        writer = resumable.chunks.writer(after)
        return handle, partial(stream_chunks, resumable, writer, replay=replay), headers


async def stream_chunks(
    resumable: Resumable,
    writer: ChunkWriter,
    handle: StreamHandle,
    send: Responder,
    headers: Headers,
    replay: list[ClientEvent] | None = None,
) -> None:
    """Relay the stream as SSE chunks, one ``send`` per batch, until its end is sent.

    ``replay``: a resume's missed events, sent first. Headers wait for the first output;
    a stream that ends before any (a resume after its last event, or a reader displaced by
    another resume) is answered 204.
    """
    batch = replay or []
    while True:
        if not batch:
            try:
                batch = await handle.take()
            except trio.EndOfChannel:
                if not send.started:
                    await send.whole(204, b"", headers=headers, content_type=False)
                elif not send.finished:
                    await send.body(b"", more=False)  # displaced: a newer reader took over
                return
        resumable.meter(batch)  # tokens_per_minute
        out: list[bytes] = []
        ended = False
        for event in batch:
            if isinstance(event, StreamError) and not writer.opened:
                await send_stream_error(send, handle, event)
                await _took_the_end(handle)
                return
            data, ended = writer.write(event)
            out.append(data)
            if isinstance(event, StreamError):
                log.info("stream %s broke after text: %s", short_id(handle.id), event.code)
            if ended:
                break
        body = b"".join(out)
        if body:
            if not send.started:
                await send.start(200, (*SSE_HEADERS, *headers))
            await send.body(body, more=not ended)
        if ended:
            await _took_the_end(handle)
            return
        batch = []


def resume_after(scope: Scope) -> int:
    """The seq of the last event a resuming client holds: ``Last-Event-ID`` (which an
    ``EventSource`` updates as it reads) over ``?after=`` (fixed in its URL); -1 if neither."""
    raw: str | None = None
    for name, value in scope["headers"]:
        if name == b"last-event-id":
            raw = value.decode("latin-1").strip()
    if raw is None:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("after")
        raw = query[-1].strip() if query else None
    if raw is None or raw == "":
        return -1
    if not raw.lstrip("-").isdigit() or len(raw) > 20 or int(raw) < -1:
        raise APIError(
            400, "invalid_value",
            f"Last-Event-ID / 'after' must be the seq of the last event you hold (an integer, "
            f"-1: none), not {clip(raw)}.", param="after",
        )  # fmt: skip
    return int(raw)


async def _took_the_end(handle: StreamHandle) -> None:
    """Take past the terminal event just sent, so that Baton keeps nothing of the stream for a
    resume: its client holds it all (a resume is then ``unknown_stream``).

    The take raises ``EndOfChannel`` at once after the terminal event; the zero timeout only
    guards against a handle that would wait.
    """
    with trio.move_on_after(0):
        try:
            await handle.take()
        except trio.EndOfChannel:
            pass


class ChunkStream:
    """What every chunk of one streamed answer shares, kept with the stream for a resume.

    A resumed stream (``GET /v1/streams/{id}``) must be byte-compatible with the one the
    client began to read: the same completion id, ``created`` and ``include_usage``, the model
    the chunks named at the client's last event, no second role chunk if the first was sent,
    and live tool calls numbered on from where they were. The first reader records here,
    per seq, the few events that change that state (model changes, the first output, the
    beginnings of live calls); ``writer(after)`` rebuilds it as it was after event ``after``.
    Holds nothing of the stream's log (``ResumableStreams`` keys these by it, weakly).
    """

    def __init__(
        self, *, completion_id: str, created: int, model: str, include_usage: bool
    ) -> None:
        self.completion_id = completion_id
        self.created = created
        self.include_usage = include_usage
        self._models: list[tuple[int, str]] = [(-1, model)]  # (seq, the model from then on)
        self._opened_at: int | None = None  # seq of the first event that sent output
        self._calls: list[ToolCallPart] = []  # the parts that began a live call, in seq order
        self._recorded = -1  # the newest seq recorded

    def __repr__(self) -> str:
        return f"<ChunkStream {self.completion_id} recorded={self._recorded}>"

    def writer(self, after: int = -1) -> ChunkWriter:
        """A writer in the state the chunks were in once event ``after`` was written."""
        model = next(m for seq, m in reversed(self._models) if seq <= after)
        encoder = ChunkEncoder(
            completion_id=self.completion_id, created=self.created, model=model,
            include_usage=self.include_usage,
        )  # fmt: skip
        for part in self._calls:
            if part.seq <= after:
                encoder.tool_call_part(part)  # numbers the call as the first reader did
        opened = self._opened_at is not None and self._opened_at <= after
        return ChunkWriter(self, encoder, opened=opened)

    def _record(self, event: ClientEvent, *, model: str | None, opens: bool, call: bool) -> None:
        if event.seq <= self._recorded:
            return  # a replayed event: recorded when it was first written
        self._recorded = event.seq
        if model is not None and model != self._models[-1][1]:
            self._models.append((event.seq, model))
        if opens and self._opened_at is None:
            self._opened_at = event.seq
        if call:
            assert isinstance(event, ToolCallPart)
            self._calls.append(event)


class ChunkWriter:
    """Writes one reader's share of a stream as SSE chunk events, each with ``id: <seq>``.

    The ``id`` is the seq of the event a chunk encodes: a browser's ``EventSource`` sends the
    last one back as ``Last-Event-ID`` when it reconnects. An event written as several SSE
    events (the role chunk and the first text; the finish, usage and ``[DONE]``) carries it
    on the last only, so a client cut off inside the group asks for the whole group again;
    an event that writes nothing (``started``, ``failover``) carries none.
    """

    def __init__(self, stream: ChunkStream, encoder: ChunkEncoder, *, opened: bool) -> None:
        self._stream = stream
        self._encoder = encoder
        self.opened = opened  # the role chunk went out: the client holds (possibly empty) text

    def write(self, event: ClientEvent) -> tuple[bytes, bool]:
        """The SSE bytes of ``event`` (possibly none), and whether it ends the stream.

        A ``StreamError`` before any output is the caller's to answer with an error status.
        """
        encoder = self._encoder
        out: list[bytes] = []
        model: str | None = None
        ended = False
        began_call = False
        match event:
            case Delta(text=text, logprobs=logprobs):
                out.append(encoder.delta(text, logprobs))
            case Reasoning(text=text):
                out.append(encoder.reasoning(text))
            case ToolCall():
                out.append(encoder.tool_call(event))
            case ToolCallPart():
                before = encoder.live_calls
                out.append(encoder.tool_call_part(event))
                began_call = encoder.live_calls > before
            case Started(model=model) | Failover(to_model=model):
                encoder.set_model(model)
            case Done():
                model = event.model
                encoder.set_model(model)
                out.append(encoder.finish(event.finish_reason))
                if self._stream.include_usage:
                    out.append(encoder.usage(event.usage))
                out.append(DONE_EVENT)
                ended = True
            case StreamError():
                out.append(encoder.error(event))
                ended = True
        opens = bool(out) and not isinstance(event, StreamError)
        if opens and not self.opened:
            self.opened = True
            content = not isinstance(event, (ToolCall, ToolCallPart))
            out.insert(0, encoder.role(content=content))
        self._stream._record(event, model=model, opens=opens, call=began_call)
        if not out:
            return b"", ended
        out[-1] = b"id: " + str(event.seq).encode() + b"\n" + out[-1]
        return b"".join(out), ended
