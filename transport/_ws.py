"""The WebSocket server: protocol v1 at ``ws://HOST:PORT/v1/stream``, over trio-websocket.

One connection carries many concurrent streams; the frames are ``transport._ws_codec``'s.

Decisions of protocol v1:

- A frame the server cannot act on is answered by an ``error`` that belongs to no stream:
  ``"stream": null, "seq": null``, plus the start's ``ref`` when it had a usable one. Codes:
  ``bad_request`` (not JSON, a binary frame, not an object, an unknown ``type``, a missing,
  ill-typed or unknown field, bad ``messages`` or ``params``), ``unknown_model`` (no such
  route), ``unsupported`` (no target of the route can serve what the request needs: tools,
  images, ...), ``too_large`` (see below), ``too_many_streams`` (retryable). A ``cancel``
  naming no stream of this connection gets ``unknown_stream`` with that ``stream`` and
  ``"seq": null``. The connection and its other streams carry on.
- A ``cancel`` of a stream of this connection that has already ended is ignored: a client
  cannot avoid that race, so it is not an error. The last ``FINISHED_REMEMBERED`` ended ids
  of a connection are remembered for this; older ones get ``unknown_stream``.
- A frame longer than ``config.server.max_request_bytes`` characters gets ``too_large``; one
  longer than ``HARD_LIMIT_FACTOR`` times that closes the connection with 1009, because
  trio-websocket buffers a whole message before we see it.
- At most ``max_streams`` streams of one connection run at once (resumed ones count). A client
  key's own ``max_streams`` counts the client's streams until they end, detached ones too
  (``transport._auth``).
- A client that disconnects does not cancel its streams: each is detached (``Baton.detach``)
  and runs on for ``[server] resume_window`` seconds, its events logged, waiting for a
  ``resume``; after that with none it is cancelled and its upstream request closed.
  ``resume_window = 0`` cancels them at once, as a ``cancel`` always does.
- ``{"type": "resume", "stream": "st_...", "after": 41}``, on any connection of the client that
  started the stream (the same client key; without keys, the secret stream id is enough),
  sends the stream's events with ``seq > 41`` as they were first sent (same seqs and payloads,
  the terminal one too if the stream has ended, a stream ``error`` with its start's ``ref``),
  then its live events; the stream now belongs to this connection (``cancel`` works on it).
  ``after`` is the seq of the last event the client holds (-1: none). A client that names an
  older seq gets events it holds again, identical ones: it drops them by seq. A connection that
  was reading the stream stops sending it, without an error. A resume of a stream this
  connection is reading replays from ``after`` and goes on, the same. Errors (``"seq": null``,
  ``stream`` the named one, and the resume's ``ref`` if it had one): ``unknown_stream`` (it
  never existed, its resume window is over, or another client started it), ``resume_unavailable``
  (events after ``after`` were dropped from the capped log: ``server.event_log_cap``; the
  message names the oldest seq still held), ``bad_request`` (``after`` not an integer >= -1, or
  beyond what the stream has sent), ``too_many_streams``. Resuming can be repeated after every
  drop. A stream whose terminal event was sent (written to the socket) is forgotten at once, as
  ``Baton`` forgets a stream read to its end; one that ended while detached is kept for the
  window, its terminal event replayed by a resume.
- Cancelling ``serve_ws`` itself (rather than a ``shutdown_trigger``) cancels the streams of
  every connection, as before resuming existed.
- When the server stops (``shutdown_trigger``), each connection sends its streams' events up
  to their terminal ones, then closes with 1001 (going away).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import weakref
from collections.abc import Awaitable, Callable
from functools import partial
from urllib.parse import urlsplit

import attrs
import orjson
import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
)

from actors import Baton, ClientEvent, RequestError, StreamDisplaced, StreamHandle, clip, short_id

from ._accept import serve_websocket, server_ssl_context
from ._auth import Client, ClientAuth, Refused, TokenMeter
from ._limits import server_connection_limiter
from ._origin import ORIGIN_REFUSED_BODY, OriginPolicy, header
from ._ws_codec import (
    CancelRequest,
    ClientFrameError,
    ResumeRequest,
    StartRequest,
    decode_client_message,
    encode_event,
    encode_protocol_error,
)

# The codec's names stay importable from here, where ``transport/__init__`` takes them from.
__all__ = ["ClientFrameError", "decode_client_message", "encode_event", "serve_ws"]

log = logging.getLogger(__name__)

PATH = "/v1/stream"
MAX_STREAMS_PER_CONNECTION = 100
FINISHED_REMEMBERED = 1024  # ended stream ids per connection whose late cancel is ignored
HARD_LIMIT_FACTOR = 2
CLOSE_TIMEOUT = 5.0  # seconds we wait for the closing handshake of a client that went quiet
GOING_AWAY_TIMEOUT = 0.5  # seconds to send the close frame when a connection is cancelled
GRACEFUL_TIMEOUT = 3.0  # seconds a stopping server gives its connections to finish and close
GOING_AWAY = "Baton is shutting down; please reconnect."
IDLE_CLOSE = "No stream and no frame for server.ws_idle_timeout seconds; reconnect when needed."

# The body of a refused handshake, OpenAI-shaped like the HTTP API's errors.
_TOO_MANY_CONNECTIONS = orjson.dumps({"error": {
    "message": "Baton holds as many WebSocket connections as it may (server.max_connections, or "
    "server.max_connections_per_client from one address); retry in a moment, and carry many "
    "streams on one connection rather than opening many.",
    "type": "server_error", "param": None, "code": "too_many_connections",
}})  # fmt: skip
_REFUSED_HEADERS = [(b"retry-after", b"1"), (b"content-type", b"application/json")]
_JSON = [(b"content-type", b"application/json")]
_JSON_HEADERS = ((b"content-type", b"application/json"),)
_connection_ids = itertools.count(1)


@attrs.define(eq=False)
class _Stream:
    """What the server keeps of a stream across the connections that read it."""

    ref: str | None  # the start's: the stream's error carries it, resumed elsewhere too
    meter: TokenMeter  # tokens_per_minute: one per stream, whichever connection sends it
    metered: int = -1  # the newest seq counted

    def count(self, events: list[ClientEvent]) -> None:
        """Count the events not counted yet: a replay repeats ones an earlier reader counted."""
        fresh = [event for event in events if event.seq > self.metered]
        if fresh:
            self.meter.see(fresh)
            self.metered = fresh[-1].seq


# Keyed by the stream's log, so that an entry goes when Baton forgets the stream.
_streams: weakref.WeakKeyDictionary[object, _Stream] = weakref.WeakKeyDictionary()


async def serve_ws(
    baton: Baton,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    max_streams: int = MAX_STREAMS_PER_CONNECTION,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    graceful_timeout: float = GRACEFUL_TIMEOUT,
    auth: ClientAuth | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve protocol v1 for ``baton`` on ``host:port`` until cancelled.

    Reports the bound port through ``task_status`` (the first listener's, should ``host`` name
    several interfaces). Cancelling it closes every connection and cancels their streams.
    When ``shutdown_trigger`` returns, it stops accepting connections; each connection sends
    its streams' events up to their terminal ones (end the streams first: ``Baton.drain``),
    then closes with 1001. Connections still open ``graceful_timeout`` seconds later are
    cancelled (they too say 1001); then it returns.
    """
    max_frame = baton.config.server.max_request_bytes
    door = auth or ClientAuth.from_config(baton.config)  # shared with HTTP: pass it
    stopping = trio.Event()
    open_connections = 0

    async def handler(request: WebSocketRequest) -> None:
        nonlocal open_connections
        open_connections += 1
        try:
            await _handle(
                request, baton, max_streams=max_streams, max_frame=max_frame, stopping=stopping,
                auth=door,
            )  # fmt: skip
        finally:
            open_connections -= 1

    async with trio.open_nursery() as connections:
        serve = partial(
            serve_websocket, handler, host, port, server_ssl_context(baton.config.server),
            handler_nursery=connections,
            max_message_size=HARD_LIMIT_FACTOR * max_frame,
            limiter=server_connection_limiter(baton.config, name="WebSocket"), refuse=_refuse,
            connect_timeout=baton.config.server.handshake_timeout, disconnect_timeout=CLOSE_TIMEOUT,
        )  # fmt: skip
        async with trio.open_nursery() as listening:
            server = await listening.start(serve)
            endpoints = [e for e in server.listeners if not isinstance(e, str)]
            urls = ", ".join(f"{e.url}{PATH}" for e in endpoints)
            log.info("WebSocket server listening on %s", urls)
            task_status.started(endpoints[0].port)
            if shutdown_trigger is None:
                await trio.sleep_forever()
            else:
                await shutdown_trigger()
            listening.cancel_scope.cancel()  # closes the listeners: new clients are refused
        stopping.set()
        log.debug("WebSocket server stopping: closing %d connection(s)", open_connections)
        connections.cancel_scope.deadline = trio.current_time() + graceful_timeout
    if connections.cancel_scope.cancelled_caught:
        log.warning(
            "WebSocket server: connections were still sending %g s after it stopped; "
            "they were closed (1001) without their last events",
            graceful_timeout,
        )


async def _handle(
    request: WebSocketRequest, baton: Baton, *, max_streams: int, max_frame: int,
    stopping: trio.Event, auth: ClientAuth,
) -> None:  # fmt: skip
    """Serve one client connection, from the handshake to its close."""
    name = f"ws{next(_connection_ids)}"
    remote = request.remote
    peer = remote if isinstance(remote, str) else f"{remote.address}:{remote.port}"
    try:
        origin = header(request.headers, b"origin")
        if not OriginPolicy(baton.config.server).allows(origin):
            log.info("connection %s from %s: refused origin %s", name, peer, clip(origin))
            # A new list each time: trio-websocket appends Content-Length to the one it is given.
            await request.reject(403, extra_headers=[*_JSON], body=ORIGIN_REFUSED_BODY)
            return
        path = urlsplit(request.path).path
        if path != PATH:
            log.info("connection %s from %s: rejected unknown path %s", name, peer, clip(path))
            await request.reject(
                404, body=f"Not found; protocol v1 is served at {PATH}.\n".encode()
            )
            return
        try:
            client, subprotocol = auth.handshake(
                request.path, request.headers, request.proposed_subprotocols
            )
        except Refused as exc:
            log.info("connection %s from %s: refused (%s)", name, peer, exc.code)
            # A new list: trio-websocket appends Content-Length to the one it is given.
            await request.reject(exc.status, extra_headers=[*_JSON_HEADERS], body=exc.body())
            return
        ws = await request.accept(subprotocol=subprotocol)
        who = f" (client {client.name})" if client.name is not None else ""
        log.info("connection %s from %s opened%s", name, peer, who)
        connection = _Connection(
            ws, baton, name, max_streams=max_streams, max_frame=max_frame, stopping=stopping,
            client=client, auth=auth,
        )  # fmt: skip
        await connection.run()
        log.info("connection %s closed (%s)", name, ws.closed)
    except ConnectionClosed:
        log.info("connection %s closed during the handshake", name)
    except Exception:
        # A bug on one connection must not take the whole server (and every other client) down.
        log.exception("connection %s failed", name)


async def _refuse(request: WebSocketRequest) -> None:
    """Refuse the handshake of a connection over the server's limits: 503, retry later."""
    remote = request.remote
    peer = remote if isinstance(remote, str) else remote.address
    log.debug("refused a connection from %s: too many connections", peer)
    with contextlib.suppress(ConnectionClosed):
        await request.reject(
            503, extra_headers=[*_REFUSED_HEADERS], body=_TOO_MANY_CONNECTIONS
        )  # a new list: see _handle


class _Connection:
    """One client's connection: reads its frames and runs one reader task per stream."""

    def __init__(
        self, ws: WebSocketConnection, baton: Baton, name: str, *, max_streams: int,
        max_frame: int, stopping: trio.Event, client: Client, auth: ClientAuth,
    ) -> None:  # fmt: skip
        self._ws = ws
        self._client = client
        self._auth = auth
        self._baton = baton
        self._name = name
        self._max_streams = max_streams
        self._max_frame = max_frame
        self._active: dict[str, StreamHandle] = {}
        self._finished: dict[str, None] = {}  # insertion-ordered: the oldest is dropped first
        self._nursery: trio.Nursery | None = None
        self._stopping = stopping  # set when the server stops
        self._stream_ended = trio.Event()  # set, and replaced by a waiter, as a stream ends
        self._going_away = False  # our close frame is sent; the client's reply is awaited
        # The client went away (or its connection broke): its streams are detached, not
        # cancelled, so that it can resume them from another connection.
        self._client_left = False
        # Stream readers send their frames themselves, one at a time under this lock, rather
        # than handing them to a writer task: that is one task fewer and no hand-off per batch,
        # a batch's frames leave back to back, trio.Lock is FIFO so streams take turns batch by
        # batch, and a slow client blocks the sender (backpressure: the stream's log merges
        # deltas meanwhile) and surfaces ConnectionClosed in the task whose stream it was.
        self._send_lock = trio.Lock()
        self._idle_timeout = baton.config.server.ws_idle_timeout
        self._last_activity = trio.current_time()  # a frame from the client or a stream's end

    async def run(self) -> None:
        """Read frames until the client leaves; then detach every stream still running.

        When the server stops, it closes the connection with 1001 (going away) once every
        stream sent its terminal event; cancelling it closes with 1001 at once.
        """
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._go_away_when_stopping)
                await self._receive()
                if self._going_away:
                    return  # the nursery waits for the closing handshake
                # A server being cancelled closes the connection too: its streams are cancelled
                # (raises Cancelled), not kept for a client that cannot come back here.
                await trio.lowlevel.checkpoint_if_cancelled()
                self._client_left = True
                if self._active:
                    log.info(
                        "connection %s: client left; detaching %d stream(s) for a resume",
                        self._name,
                        len(self._active),
                    )
                nursery.cancel_scope.cancel()
        finally:
            # Each stream's reader has detached or cancelled its stream on the way out (see
            # _pump). Closing is a no-op when the client has left. When the server stops,
            # trio-websocket's reader is cancelled with us, so the client's reply can never be
            # read: say why and hang up without waiting for it.
            with trio.move_on_after(GOING_AWAY_TIMEOUT, shield=True):
                await self._ws.aclose(1001, GOING_AWAY)

    async def _go_away_when_stopping(self) -> None:
        """When the server stops: let every stream send its terminal event, then close (1001)."""
        await self._stopping.wait()
        while self._active:
            self._stream_ended = trio.Event()
            await self._stream_ended.wait()
        self._going_away = True
        # The reader still runs, so the client's closing reply is read and the TCP connection
        # ends cleanly; a client that never replies is hung up on after CLOSE_TIMEOUT.
        with trio.move_on_after(CLOSE_TIMEOUT):
            await self._ws.aclose(1001, GOING_AWAY)

    async def _receive(self) -> None:
        ws = self._ws
        while True:
            try:
                with trio.move_on_at(self._last_activity + self._idle_timeout) as idle:
                    frame = await ws.get_message()
            except ConnectionClosed:
                return
            if idle.cancelled_caught:
                if self._active:
                    self._last_activity = trio.current_time()  # running streams are activity
                    continue
                log.info("connection %s: idle for %g s; closing it", self._name, self._idle_timeout)
                await self._ws.aclose(1000, IDLE_CLOSE)
                return
            self._last_activity = trio.current_time()
            try:
                if len(frame) > self._max_frame:
                    raise ClientFrameError(
                        "too_large",
                        f"The frame has {len(frame)} characters; the limit is {self._max_frame}.",
                    )
                match decode_client_message(frame):
                    case StartRequest() as start:
                        self._start(start)
                    case CancelRequest(stream=stream_id):
                        self._cancel(stream_id)
                    case ResumeRequest() as resume:
                        self._resume(resume)
            except ClientFrameError as exc:
                log.info(
                    "connection %s: refused a frame (%s: %s)", self._name, exc.code, exc.message
                )
                try:
                    await self._send([encode_protocol_error(exc)])
                except ConnectionClosed:
                    return

    def _start(self, start: StartRequest) -> None:
        if len(self._active) >= self._max_streams:
            raise ClientFrameError(
                "too_many_streams",
                f"This connection already runs {len(self._active)} streams, the most it may; "
                "wait for one to end or open another connection.",
                ref=start.ref, retryable=True,
            )  # fmt: skip
        try:
            self._auth.admit(self._client, start.route)
        except Refused as exc:
            raise ClientFrameError(
                exc.ws_code, exc.message, ref=start.ref, retryable=exc.status == 429
            ) from None
        try:
            handle = self._baton.start_stream(
                route=start.route, messages=start.messages, params=start.params, ref=start.ref,
                can_reset=True, transport="ws", client=self._client.name,
                # Counted while the stream runs, read or detached, not while this connection
                # reads it: a client cannot pass max_streams by dropping connections.
                on_end=partial(self._auth.release, self._client),
            )  # fmt: skip
        except BaseException as exc:
            self._auth.release(self._client)  # it never started: its on_end will not be called
            if not isinstance(exc, RequestError):
                raise
            retryable = exc.code == "shutting_down"  # a retry can reach another instance
            raise ClientFrameError(
                exc.code, exc.message, ref=start.ref, retryable=retryable
            ) from None
        log.debug(
            "connection %s: stream %s started (ref %s)", self._name, handle.id, clip(start.ref)
        )
        stream = _streams[handle.log] = _Stream(start.ref, self._auth.meter(self._client))
        self._active[handle.id] = handle
        assert self._nursery is not None
        self._nursery.start_soon(partial(self._pump, handle, stream))

    def _resume(self, resume: ResumeRequest) -> None:
        stream_id = resume.stream
        if stream_id not in self._active and len(self._active) >= self._max_streams:
            raise ClientFrameError(
                "too_many_streams",
                f"This connection already runs {len(self._active)} streams, the most it may; "
                "resume this one on another connection, or wait for one to end (it is kept "
                "for server.resume_window seconds).",
                ref=resume.ref, stream=stream_id, retryable=True,
            )  # fmt: skip
        try:
            handle, replay = self._baton.resume(stream_id, resume.after, client=self._client.name)
        except RequestError as exc:
            raise ClientFrameError(
                exc.code, exc.message, ref=resume.ref, stream=stream_id
            ) from None
        # A reader of the stream on this connection is displaced: it stops sending at once.
        self._active[stream_id] = handle
        self._finished.pop(stream_id, None)
        log.debug(
            "connection %s: stream %s resumed after seq %d (%d events replayed)",
            self._name, stream_id, resume.after, len(replay),
        )  # fmt: skip
        stream = _streams.get(handle.log)
        if stream is None:  # started over HTTP (SSE)
            stream = _streams[handle.log] = _Stream(None, self._auth.meter(self._client))
        assert self._nursery is not None
        self._nursery.start_soon(partial(self._pump, handle, stream, replay=replay))

    def _cancel(self, stream_id: str) -> None:
        handle = self._active.get(stream_id)
        if handle is not None:
            log.debug("connection %s: client cancels stream %s", self._name, stream_id)
            handle.cancel()
        elif stream_id not in self._finished:
            raise ClientFrameError(
                "unknown_stream",
                f"No stream {clip(stream_id)} was started on this connection.",
                stream=stream_id,
            )

    async def _send(self, frames: list[str], handle: StreamHandle | None = None) -> None:
        """Send ``frames`` back to back; a stream's only while ``handle`` still reads it.

        A reader displaced by a resume while it waited for its turn sends nothing: the new
        reader's replay has its events already, and they must not follow it out of order.
        """
        async with self._send_lock:
            if handle is not None and not handle.reading:
                return
            for frame in frames:
                await self._ws.send_message(frame)

    async def _pump(
        self, handle: StreamHandle, stream: _Stream, *, replay: list[ClientEvent] | None = None
    ) -> None:
        """Send one stream's events to the client, batch by batch, up to its terminal event.

        ``replay``: a resumed stream's events the client missed, sent first. The stream's count
        against its client's ``max_streams`` is not the reader's: ``Baton`` releases it when
        the stream ends (``start_stream``'s ``on_end``), so a resume is not counted again.
        """
        stream_id, ref = handle.id, stream.ref
        delivered = False  # the terminal event was taken and sent
        try:
            if replay:
                stream.count(replay)  # and what was made while no connection read the stream
                await self._send([encode_event(event, ref=ref) for event in replay], handle)
            while True:
                try:
                    batch = await handle.take()
                except StreamDisplaced:
                    log.debug(
                        "connection %s: stream %s was handed to another reader",
                        self._name,
                        stream_id,
                    )
                    return
                except trio.EndOfChannel:
                    delivered = True
                    return
                stream.count(batch)
                await self._send([encode_event(event, ref=ref) for event in batch], handle)
        except ConnectionClosed:
            # The client is gone, unless the server is being cancelled (that raises here).
            await trio.lowlevel.checkpoint_if_cancelled()
            self._client_left = True
            log.info(
                "stream %s: connection %s closed; detaching its streams", short_id(stream_id),
                self._name,
            )  # fmt: skip
            assert self._nursery is not None
            self._nursery.cancel_scope.cancel()
        finally:
            if not delivered:
                if self._client_left:
                    # Kept for a resume (Baton decides how long; resume_window 0 cancels it).
                    # Does nothing for a reader a resume displaced.
                    self._baton.detach(handle)
                elif not handle.log.closed:
                    # Only a stream without its terminal event is cancelled: cancelling one that
                    # has it could interrupt the session while it closes its upstream request.
                    handle.cancel()  # does nothing from a displaced reader
            if self._active.get(stream_id) is handle:
                del self._active[stream_id]
                self._finished[stream_id] = None
                if len(self._finished) > FINISHED_REMEMBERED:
                    del self._finished[next(iter(self._finished))]
            self._stream_ended.set()
            self._last_activity = trio.current_time()
