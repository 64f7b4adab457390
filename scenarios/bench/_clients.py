"""The benchmark's clients: one streamed answer over HTTP/SSE or WebSocket protocol v1.

Each client call runs one stream and returns a ``StreamResult``: when its first text arrived,
how much text, in how many events, and what went wrong if anything did. The same HTTP client
(the lean ``RawHTTPClient``, or httpx) talks to Baton's OpenAI-compatible API and, for the
baseline, straight to the mock provider.

A stream counts as complete only if it ended properly (``[DONE]`` or ``done``) *and* carried
exactly the mock's answer text; anything else is an error with a short reason, so a proxy that
drops or duplicates text cannot look fast.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import attrs
import httpx
import orjson
import trio
import trio_websocket

from ._http import RawHTTPClient, RawHTTPError

USER_MESSAGES = [{"role": "user", "content": "Say something for the benchmark."}]
_WS_RECEIVE_BUFFER = 65536  # trio-websocket reads 4 KiB at a time by default
_refs = itertools.count(1)


@attrs.frozen(kw_only=True)
class StreamResult:
    """What one client saw of one stream; times in seconds from sending the request."""

    started_at: float  # trio.current_time() when the request was sent
    ttft: float | None  # the first non-empty text
    elapsed: float  # the end of the stream, or the failure
    chars: int  # characters of answer text received
    events: int  # events (SSE data events, WebSocket frames) that carried text
    error: str | None  # None: complete and exactly the expected text
    longest_gap: float  # the longest wait between two text events (0 with fewer than two)

    @property
    def ok(self) -> bool:
        return self.error is None


class SSETextReader:
    """Reads an OpenAI chat-completions event stream fed in arbitrary byte pieces.

    Minimal but correct for what OpenAI-compatible servers send: events end with a blank line
    (``\\n\\n``, or ``\\r\\n\\r\\n``, normalised), ``data:`` lines of one event are joined with
    ``\\n``, comments and other fields are ignored. ``[DONE]`` sets ``done``; an ``error``
    payload or undecodable JSON sets ``error``.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self.first_text_at: float | None = None
        self.last_text_at = 0.0
        self.longest_gap = 0.0
        self.chars = 0
        self.events = 0
        self.done = False
        self.error: str | None = None

    def feed(self, data: bytes, now: float) -> None:
        """Take the next bytes of the body, received at ``now``."""
        buffer = self._buffer + data if self._buffer else data
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        blocks = buffer.split(b"\n\n")
        self._buffer = blocks.pop()
        for block in blocks:
            if block.startswith(b"data: ") and b"\n" not in block:
                payload = block[6:]  # the common case: one data line
            else:
                lines = [
                    line[6:] if line.startswith(b"data: ") else line[5:]
                    for line in block.split(b"\n")
                    if line.startswith(b"data:")
                ]
                if not lines:
                    continue
                payload = b"\n".join(lines)
            self._payload(payload, now)

    def _payload(self, payload: bytes, now: float) -> None:
        if payload == b"[DONE]":
            self.done = True
            return
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.error = self.error or f"undecodable event {payload[:80]!r}"
            return
        if not isinstance(chunk, dict):
            self.error = self.error or f"not a chunk: {payload[:80]!r}"
            return
        if "error" in chunk:
            error = chunk["error"]
            code = error.get("code") if isinstance(error, dict) else None
            self.error = self.error or f"error event ({code or error})"
            return
        choices = chunk.get("choices")
        if not choices:
            return
        delta = choices[0].get("delta") or {}
        content = delta.get("content")
        if content:
            if self.first_text_at is None:
                self.first_text_at = now
            else:
                self.longest_gap = max(self.longest_gap, now - self.last_text_at)
            self.last_text_at = now
            self.chars += len(content)
            self.events += 1


def make_http_client(max_connections: int) -> httpx.AsyncClient:
    """An httpx client that keeps up to ``max_connections`` connections alive, no timeouts.

    Time limits are the caller's (``trio.fail_after`` around each stream).
    """
    return httpx.AsyncClient(
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
        timeout=httpx.Timeout(None),
    )


async def http_stream(
    client: httpx.AsyncClient | RawHTTPClient, url: str, model: str, *, expected_chars: int,
    timeout: float,
) -> StreamResult:  # fmt: skip
    """POST one streaming chat completion to ``url`` and read it to its end.

    ``client`` is httpx's or the benchmark's lean ``RawHTTPClient`` (for ``url``'s host). Never
    raises for a failure of the stream (it becomes the result's ``error``); gives up after
    ``timeout`` seconds.
    """
    body = orjson.dumps({"model": model, "messages": USER_MESSAGES, "stream": True})
    reader = SSETextReader()
    started = trio.current_time()
    error: str | None = None
    with trio.move_on_after(timeout) as scope:
        if isinstance(client, RawHTTPClient):
            try:
                status, text = await client.request(
                    "POST",
                    urlsplit(url).path,
                    body,
                    lambda piece: reader.feed(piece, trio.current_time()),
                )
            except RawHTTPError as exc:
                error = f"RawHTTPError: {exc}"
            else:
                if status != 200:
                    error = f"HTTP {status}: {text[:200].decode(errors='replace')}"
        else:
            try:
                headers = {"content-type": "application/json"}
                async with client.stream("POST", url, content=body, headers=headers) as response:
                    if response.status_code != 200:
                        text = (await response.aread())[:200]
                        error = f"HTTP {response.status_code}: {text.decode(errors='replace')}"
                    else:
                        async for piece in response.aiter_raw():
                            reader.feed(piece, trio.current_time())
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
    if scope.cancelled_caught:
        error = f"timed out after {timeout:g} s"
    if error is None:
        error = reader.error
    if error is None and not reader.done:
        error = "the stream ended without [DONE]"
    return _result(
        started,
        reader.first_text_at,
        reader.chars,
        reader.events,
        reader.longest_gap,
        error,
        expected_chars,
    )


def _result(
    started: float, first_at: float | None, chars: int, events: int, longest_gap: float,
    error: str | None, expected_chars: int,
) -> StreamResult:  # fmt: skip
    if error is None and chars != expected_chars:
        error = f"received {chars} characters of text, expected {expected_chars}"
    return StreamResult(
        started_at=started, ttft=None if first_at is None else first_at - started,
        elapsed=trio.current_time() - started, chars=chars, events=events, error=error,
        longest_gap=longest_gap,
    )  # fmt: skip


class _WSStream:
    __slots__ = ("chars", "error", "events", "finished", "first_at", "last_at", "longest_gap")

    def __init__(self) -> None:
        self.first_at: float | None = None
        self.last_at = 0.0
        self.longest_gap = 0.0
        self.chars = 0
        self.events = 0
        self.error: str | None = None
        self.finished = trio.Event()


class WSClient:
    """One WebSocket connection to Baton carrying many concurrent streams (protocol v1).

    A reader task routes every frame to its stream by ``ref`` (until ``started`` names the
    stream) and then by ``stream``. Made by ``open_ws_client``.
    """

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self._ws = ws
        self._by_ref: dict[str, _WSStream] = {}
        self._by_stream: dict[str, _WSStream] = {}
        self.broken: str | None = None

    async def stream(self, route: str, *, expected_chars: int, timeout: float) -> StreamResult:
        """Run one stream of ``route`` on this connection; never raises for its failure."""
        ref = f"b{next(_refs)}"
        state = _WSStream()
        self._by_ref[ref] = state
        frame = orjson.dumps(
            {"type": "start", "ref": ref, "model": route, "messages": USER_MESSAGES}
        ).decode()
        started = trio.current_time()
        try:
            with trio.move_on_after(timeout) as scope:
                try:
                    await self._ws.send_message(frame)
                except trio_websocket.ConnectionClosed as exc:
                    state.error = f"connection closed ({exc.reason})"
                else:
                    await state.finished.wait()
            if scope.cancelled_caught:
                state.error = f"timed out after {timeout:g} s"
        finally:
            self._by_ref.pop(ref, None)
        return _result(
            started,
            state.first_at,
            state.chars,
            state.events,
            state.longest_gap,
            state.error,
            expected_chars,
        )

    async def read_frames(self) -> None:
        """Route frames to their streams until the connection closes."""
        try:
            while True:
                self._frame(await self._ws.get_message())
        except trio_websocket.ConnectionClosed as exc:
            self.broken = f"connection closed ({exc.reason})"
            for state in [*self._by_ref.values(), *self._by_stream.values()]:
                state.error = state.error or self.broken
                state.finished.set()

    def _frame(self, frame: str | bytes) -> None:
        event = orjson.loads(frame)
        kind = event.get("type")
        stream_id = event.get("stream")
        if kind == "delta":
            state = self._by_stream.get(stream_id)
            if state is not None:
                now = trio.current_time()
                if state.first_at is None:
                    state.first_at = now
                else:
                    state.longest_gap = max(state.longest_gap, now - state.last_at)
                state.last_at = now
                state.chars += len(event["text"])
                state.events += 1
        elif kind == "started":
            state = self._by_ref.get(event.get("ref"))
            if state is not None:
                self._by_stream[stream_id] = state
        elif kind == "done":
            state = self._by_stream.pop(stream_id, None)
            if state is not None:
                state.finished.set()
        elif kind == "error":
            state = self._by_stream.pop(stream_id, None) or self._by_ref.get(event.get("ref"))
            if state is not None:
                state.error = f"error {event.get('code')}: {event.get('message')}"
                state.finished.set()
        elif kind == "failover":
            state = self._by_stream.get(stream_id)
            if state is not None and event.get("mode") == "reset":
                state.chars = 0  # the text so far is void; a new answer follows


@asynccontextmanager
async def open_ws_client(url: str) -> AsyncIterator[WSClient]:
    """Connect to ``url`` and yield a ``WSClient`` whose reader runs until the block ends."""
    async with trio_websocket.open_websocket_url(
        url, max_message_size=16 * 1024 * 1024, receive_buffer_size=_WS_RECEIVE_BUFFER,
        connect_timeout=10, disconnect_timeout=2,
    ) as ws:  # fmt: skip
        client = WSClient(ws)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.read_frames)
            try:
                yield client
            finally:
                nursery.cancel_scope.cancel()


def percentile(values: list[float], share: float) -> float:
    """The ``share`` (0..1) percentile of ``values`` by the nearest-rank method; NaN if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]
