"""A fast OpenAI-compatible mock provider for the benchmark, meant to run in its own process.

``python -m scenarios.bench._mock`` listens on 127.0.0.1 (port 0 by default), prints one JSON
line ``{"port": N}`` on stdout once it accepts connections, and serves until its stdin closes
(so it dies with the benchmark that started it, however that one ends) or it is killed.

It serves ``POST /v1/chat/completions`` (always streaming) and ``GET /v1/models`` over
HTTP/1.1 with keep-alive, and ``GET /stats``: ``{"connections": N, "requests": M}`` so far (a
client that reuses connections makes far fewer connections than requests). The request's
``model`` names the pacing: ``mock-<tokens>-<delay>``, e.g. ``mock-200-0.05`` streams 200
tokens with 50 ms before each one (``mock-200-0`` with no delay); anything else streams
``DEFAULT_TOKENS`` (``_answers``) tokens without delay. Each token is its own SSE ``data:``
event in OpenAI's ``chat.completion.chunk`` format, then a ``finish_reason`` chunk, a usage
chunk when ``stream_options.include_usage`` asked for it, and ``data: [DONE]``.

It is deliberately much cheaper than the proxy it feeds: raw trio sockets, a minimal
HTTP/1.1 parser (``Content-Length`` bodies only; clients that send chunked request bodies get
a 501), and every response's bytes, already framed as HTTP chunks, built once per model and
reused. With no delay the events of a response go out ``burst`` at a time (default 1: one
write per token, as a real model's tokens arrive); paced tokens are written by one task on a
schedule (``_Pacer``) rather than one timer per token per stream. The text of token ``i`` is
``token_text(i)``, so a client can check it received every character.

The mock's sibling ``SimulatedProvider`` (``scenarios/sim/_simulated.py``) is the one with
faults; this one has none and is only about speed.
"""

from __future__ import annotations

import argparse
import functools
import heapq
import itertools
import json
import math
import os
import sys
from collections.abc import Sequence

import orjson
import trio

from ._answers import parse_model, token_text

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024
_READ_SIZE = 65536
_YIELD_EVERY = 16  # token writes between checkpoints when there is no delay
_CACHE_LIMIT = 64  # distinct models whose responses are kept pre-rendered

_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n"
    b"\r\n"
)
_LAST_CHUNK = b"0\r\n\r\n"


def _framed(event: bytes) -> bytes:
    """One SSE event as one HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(event), event)


class _Answer:
    """The pre-rendered bytes of one model's streamed answer."""

    def __init__(self, model: str) -> None:
        self.tokens, self.delay = parse_model(model)
        base = {
            "id": "chatcmpl-mock",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
        }

        def event(choices: list[object], **extra: object) -> bytes:
            return b"data: " + orjson.dumps({**base, "choices": choices, **extra}) + b"\n\n"

        def choice(delta: dict[str, str], finish: str | None = None) -> list[object]:
            return [{"index": 0, "delta": delta, "finish_reason": finish}]

        self.opening = _framed(event(choice({"role": "assistant", "content": ""})))
        self.token_chunks = [
            _framed(event(choice({"content": token_text(i)}))) for i in range(self.tokens)
        ]
        usage = {
            "prompt_tokens": 8,
            "completion_tokens": self.tokens,
            "total_tokens": 8 + self.tokens,
        }
        self.finish = _framed(event(choice({}, "stop")))
        self.usage = _framed(event([], usage=usage))
        self.done = _framed(b"data: [DONE]\n\n") + _LAST_CHUNK


class MockServer:
    """The mock's HTTP/1.1 server; ``serve`` runs it until cancelled.

    ``burst``: with no delay, how many token events go out per ``send``.
    """

    def __init__(self, *, burst: int = 1) -> None:
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.burst = burst
        self._answers: dict[str, _Answer] = {}
        models = {
            "object": "list",
            "data": [{"id": "mock", "object": "model", "created": 0, "owned_by": "baton-bench"}],
        }
        self._models_response = _whole(200, orjson.dumps(models))
        self.requests = 0
        self.connections = 0
        self._pacer = _Pacer()

    async def serve(
        self, *, host: str = "127.0.0.1", port: int = 0,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:  # fmt: skip
        """Accept connections on ``host:port`` until cancelled; reports the bound port."""
        listeners = await trio.open_tcp_listeners(port, host=host, backlog=4096)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pacer.run)
            bound = listeners[0].socket.getsockname()[1]
            await nursery.start(trio.serve_listeners, self._connection, listeners)
            task_status.started(bound)

    def _answer(self, model: str) -> _Answer:
        answer = self._answers.get(model)
        if answer is None:
            if len(self._answers) >= _CACHE_LIMIT:
                self._answers.clear()
            answer = self._answers[model] = _Answer(model)
        return answer

    async def _connection(self, stream: trio.SocketStream) -> None:
        """Serve one keep-alive connection; a client that goes away just ends it."""
        self.connections += 1
        try:
            async with stream:
                await self._requests(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _requests(self, stream: trio.SocketStream) -> None:
        buffer = bytearray()
        while True:
            end = buffer.find(b"\r\n\r\n")
            while end < 0:
                if len(buffer) > MAX_HEAD_BYTES:
                    await stream.send_all(_whole(431, b'{"error":"head too large"}', close=True))
                    return
                data = await stream.receive_some(_READ_SIZE)
                if not data:
                    return
                buffer += data
                end = buffer.find(b"\r\n\r\n")
            lines = bytes(buffer[:end]).split(b"\r\n")
            del buffer[: end + 4]
            request_line = lines[0].split(b" ")
            if len(request_line) != 3:
                await stream.send_all(_whole(400, b'{"error":"bad request line"}', close=True))
                return
            method, target, version = request_line
            length, keep_alive, chunked = 0, version == b"HTTP/1.1", False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection":
                    value = value.strip().lower()
                    keep_alive = value != b"close" and (keep_alive or value == b"keep-alive")
                elif name == b"transfer-encoding":
                    chunked = True
            if chunked or not 0 <= length <= MAX_BODY_BYTES:
                await stream.send_all(
                    _whole(501, b'{"error":"only Content-Length bodies"}', close=True)
                )
                return
            while len(buffer) < length:
                data = await stream.receive_some(_READ_SIZE)
                if not data:
                    return
                buffer += data
            body = bytes(buffer[:length])
            del buffer[:length]
            path = target.split(b"?", 1)[0]
            if method == b"POST" and path in (b"/v1/chat/completions", b"/chat/completions"):
                await self._chat(stream, body)
            elif method == b"GET" and path in (b"/v1/models", b"/models"):
                await stream.send_all(self._models_response)
            elif method == b"GET" and path == b"/stats":
                stats = {"connections": self.connections, "requests": self.requests}
                await stream.send_all(_whole(200, orjson.dumps(stats)))
            else:
                await stream.send_all(
                    _whole(404, b'{"error":{"message":"not found","type":"invalid_request_error"}}')
                )
            if not keep_alive:
                return

    async def _chat(self, stream: trio.SocketStream, body: bytes) -> None:
        try:
            request = orjson.loads(body)
            model = request["model"]
            include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            await stream.send_all(
                _whole(400, b'{"error":{"message":"bad body","type":"invalid_request_error"}}')
            )
            return
        self.requests += 1
        answer = self._answer(str(model))
        tail = answer.finish + (answer.usage if include_usage else b"") + answer.done
        chunks = answer.token_chunks
        if answer.delay > 0:
            await stream.send_all(_SSE_HEAD + answer.opening)
            await self._pacer.send(stream, chunks, answer.delay)
            await stream.send_all(tail)
            return
        if not chunks:
            await stream.send_all(_SSE_HEAD + answer.opening + tail)
            return
        await stream.send_all(_SSE_HEAD + answer.opening)
        # One write per ``burst`` events straight on the socket: a trio send per token would
        # make the mock cost as much as the proxy. A socket that will not take it all (the
        # client reads slowly) gets the rest through send_all, which waits: backpressure.
        fd, burst = stream.socket.fileno(), self.burst
        for writes, start in enumerate(range(0, len(chunks), burst), 1):
            data = chunks[start] if burst == 1 else b"".join(chunks[start : start + burst])
            try:
                written = os.write(fd, data)
            except BlockingIOError:
                written = 0
            except OSError as exc:
                raise trio.BrokenResourceError(str(exc)) from None
            if written < len(data):
                await stream.send_all(data[written:])
            elif writes % _YIELD_EVERY == 0:
                await trio.lowlevel.checkpoint()  # let the other connections have their turn
        await stream.send_all(tail)


class _Paced:
    """One paced answer in flight: its socket, its token chunks, which is next and when."""

    __slots__ = ("backlog", "chunks", "delay", "error", "fd", "next", "start", "wakeup")

    def __init__(self, fd: int, chunks: list[bytes], delay: float) -> None:
        self.fd, self.chunks, self.delay = fd, chunks, delay
        self.next = 0
        self.start = trio.current_time()
        self.backlog: bytes | None = None  # what the socket would not take at once
        self.error: OSError | None = None
        self.wakeup = trio.Event()

    def due(self) -> float:
        # Absolute times, so that a late wake-up does not push every later token back.
        return self.start + (self.next + 1) * self.delay


class _Pacer:
    """Sends the tokens of every paced answer on time, from one task.

    One timer per token per stream would cost the mock more than the proxy it feeds (500
    streams x 20 tokens/s is 10,000 wake-ups a second). Here one task keeps a heap of due
    times and writes each due token with one non-blocking ``os.write`` on its socket. What a
    socket does not take at once (a slow reader) goes back to the connection's own task, which
    sends it with ``send_all`` (backpressure), then rejoins the schedule.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, _Paced]] = []
        self._order = itertools.count()
        self._changed = trio.Event()

    async def send(self, stream: trio.SocketStream, chunks: list[bytes], delay: float) -> None:
        """Send ``chunks`` one every ``delay`` seconds.

        Raises ``BrokenResourceError`` if the client left.
        """
        if not chunks:
            return
        paced = _Paced(stream.socket.fileno(), chunks, delay)
        self._push(paced)
        while True:
            await paced.wakeup.wait()
            if paced.error is not None:
                raise trio.BrokenResourceError(str(paced.error))
            if paced.backlog is None:
                return
            backlog, paced.backlog = paced.backlog, None
            await stream.send_all(backlog)
            if paced.next == len(chunks):
                return
            paced.wakeup = trio.Event()
            self._push(paced)

    def _push(self, paced: _Paced) -> None:
        heapq.heappush(self._heap, (paced.due(), next(self._order), paced))
        self._changed.set()

    async def run(self) -> None:
        """Write every token when it is due, until cancelled."""
        heap = self._heap
        while True:
            if heap and heap[0][0] <= trio.current_time():
                now = trio.current_time()
                while heap and heap[0][0] <= now:
                    self._write(heapq.heappop(heap)[2])
                await trio.lowlevel.checkpoint()
                continue
            self._changed = trio.Event()
            with trio.move_on_at(heap[0][0] if heap else math.inf):
                await self._changed.wait()

    def _write(self, paced: _Paced) -> None:
        data = paced.chunks[paced.next]
        try:
            written = os.write(paced.fd, data)
        except BlockingIOError:
            written = 0
        except OSError as exc:  # the client went away
            paced.error = exc
            paced.wakeup.set()
            return
        paced.next += 1
        if written < len(data):
            paced.backlog = data[written:]
            paced.wakeup.set()
        elif paced.next == len(paced.chunks):
            paced.wakeup.set()
        else:
            heapq.heappush(self._heap, (paced.due(), next(self._order), paced))


def _whole(status: int, body: bytes, *, close: bool = False) -> bytes:
    """A complete JSON response."""
    reason = {
        200: b"OK",
        400: b"Bad Request",
        404: b"Not Found",
        431: b"Request Header Fields Too Large",
        501: b"Not Implemented",
    }[status]
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % (
        status,
        reason,
        len(body),
    )
    return head + (b"connection: close\r\n" if close else b"") + b"\r\n" + body


async def watch_stdin_then_cancel(scope: trio.CancelScope) -> None:
    """Cancel ``scope`` when stdin reaches EOF: the process that started us is gone or done."""
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with stdin:
        while await stdin.receive_some(4096):
            pass
    scope.cancel()


async def _run(host: str, port: int, burst: int) -> None:
    server = MockServer(burst=burst)
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(functools.partial(server.serve, host=host, port=port))
        print(json.dumps({"port": bound}), flush=True)
        nursery.start_soon(watch_stdin_then_cancel, nursery.cancel_scope)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the mock until stdin closes; see the module docstring."""
    parser = argparse.ArgumentParser(
        prog="python -m scenarios.bench._mock", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--burst", type=int, default=1, help="token events per send when there is no delay"
    )
    args = parser.parse_args(argv)
    try:
        trio.run(_run, args.host, args.port, args.burst)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
