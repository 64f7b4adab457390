"""A real HTTP server that plays OpenAI and Anthropic, following a fault schedule.

``SimulatedProvider`` serves ``POST /v1/chat/completions`` (OpenAI; also ``/chat/completions``),
``POST /v1/messages`` (Anthropic) and ``GET /v1/models`` (also ``/models``; Anthropic's shape
when an ``anthropic-version`` header is present) over HTTP/1.1 with keep-alive, on trio and
h11. Faults happen on the wire:

- ``refuse``: the request is read, then the TCP connection is aborted with a reset (RST) and
  no response, which is how a refused connection looks to a client that reuses connections;
  httpx raises ``ReadError`` (``ECONNRESET``) before any response head.
- ``reset``: after K token events the connection is aborted with SO_LINGER (1, 0), so the
  client reads the K tokens and then gets ``ECONNRESET`` mid-body.
- ``status``: an error body in the provider's exact shape, with ``Retry-After`` when set.
- ``stall``/``keepalive_stall``: after the response head and the opening events, silence, or
  only keep-alives (``: keep-alive`` for OpenAI, ``event: ping`` for Anthropic) every second.
- ``endless``: the answer's tokens again and again until the client leaves (one write each
  after a ``token_delay``, else ``ENDLESS_BURST`` per write, as fast as the client reads).
- ``malformed``: one event whose JSON is cut off; ``stream_error``: an in-stream error event,
  then the body ends; ``no_done``: no ``[DONE]``/``message_stop``; ``no_finish``: the body ends
  right after the last token. Every body ends with a proper end of message.

Usage is reported as each provider does: Anthropic's ``message_start`` carries the input tokens
and its ``message_delta`` the output tokens; OpenAI sends a final usage chunk only when the
request asks for it (``stream_options.include_usage``). ``stream_options`` plays the
OpenAI-compatible servers that differ: ``"ignored"`` never reports usage on a stream, and
``"rejected"`` refuses any request that carries the field with a 400, as strict servers do.

Faults can also be injected while it runs (``inject``; the page's fault buttons, see
``SimulatorFaults``): ``reset`` aborts every response being sent now, as a connection reset;
``stall`` holds every token of open and new answers for a while; ``status503`` answers every new
request, probes too, with a 503 for a while. These override the schedule.

Every chat request is recorded as an ``AttemptRecord`` in ``log``; ``closed_at`` is stamped
when the response ends, the connection is aborted, or the server sees the client go away.
``usage_sent`` maps a request's index to the usage object it was answered with, in the wire's
own names (OpenAI's ``prompt_tokens``..., Anthropic's ``input_tokens``/``output_tokens``).
"""

from __future__ import annotations

import functools
import itertools
import logging
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal

import attrs
import h11
import orjson
import trio

from actors import Failure, FailureKind, UpstreamRequest

from .._faults import (
    AttemptPlan,
    AttemptRecord,
    Behaviour,
    FaultSchedule,
    ProbeRecord,
    plan_attempt,
    probe_failure,
    stream_error_failure,
)
from .._textgen import Words
from ._fake import ENDLESS_FALLBACK
from ._wire import (
    AnthropicWire,
    BadRequest,
    OpenAIWire,
    Wire,
    error_body,
    models_body,
    parse_chat,
    retry_after_header,
)

logger = logging.getLogger(__name__)

KEEPALIVE_INTERVAL = 1.0
ENDLESS_BURST = 64  # token events per write of an endless answer without a token delay
_READ_SIZE = 65536
_CHAT_PATHS = ("/v1/chat/completions", "/chat/completions", "/v1/messages")
_MODELS_PATHS = ("/v1/models", "/models")

#: How a simulated OpenAI-compatible server treats ``stream_options`` (see the module docstring).
StreamOptions = Literal["honoured", "ignored", "rejected"]
#: A fault injected at run time (``SimulatedProvider.inject``), the names of ``/sim/faults``.
LiveFault = Literal["reset", "stall", "status503"]
LIVE_FAULTS: tuple[LiveFault, ...] = ("reset", "stall", "status503")


class _Abort(Exception):
    """End the connection with a TCP reset instead of a response."""


@attrs.frozen
class _HttpRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@attrs.define(eq=False)
class _Responding:
    """A response being sent; ``reset`` (``inject``) cancels ``scope`` and aborts it."""

    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    reset: bool = False


class SimulatedProvider:
    """An OpenAI- and Anthropic-compatible HTTP server whose answers follow a fault schedule.

    ``serve()`` runs it until cancelled; ``open_simulated_provider`` runs it for a block.
    Request indexes count chat requests at this server; schedule times are seconds since it
    started serving. ``seed``/``words`` choose the answers (the same as a ``FakeProvider``
    with the same seed gives); ``model_name`` overrides the model reported back;
    ``stream_options`` is how its OpenAI side treats that field.
    """

    def __init__(
        self,
        schedule: FaultSchedule | None = None,
        *,
        seed: int = 0,
        model_name: str | None = None,
        words: Words = "plain",
        stream_options: StreamOptions = "honoured",
    ) -> None:
        self.stream_options: StreamOptions = stream_options
        self.schedule = schedule if schedule is not None else FaultSchedule.healthy()
        self.seed = seed
        self.model_name = model_name
        self.words: Words = words
        self.log: list[AttemptRecord] = []
        self.probes: list[ProbeRecord] = []
        self.invalid_requests: list[str] = []
        self.usage_sent: dict[int, dict[str, int]] = {}
        self.connections = 0  # TCP connections accepted: shows whether clients reuse them
        self.host: str | None = None
        self.port: int | None = None
        self.epoch: float | None = None
        # A wire timestamp for the "created" fields, not used for any decision.
        self._created = int(time.time())
        self._attempt_closed = trio.Event()
        # Faults injected at run time (``inject``): trio times they last until.
        self._stalled_until = float("-inf")
        self._unavailable_until = float("-inf")
        self._responding: set[_Responding] = set()

    def __repr__(self) -> str:
        return f"SimulatedProvider({self.schedule!r}, port={self.port})"

    @property
    def base_url_openai(self) -> str:
        """Base URL for an OpenAI client (ends in ``/v1``)."""
        return f"http://{self.host}:{self._bound_port()}/v1"

    @property
    def base_url_anthropic(self) -> str:
        """Base URL for an Anthropic client (the SDK appends ``/v1/messages``)."""
        return f"http://{self.host}:{self._bound_port()}"

    @property
    def open_attempts(self) -> list[AttemptRecord]:
        """Attempts whose response has neither ended nor been abandoned yet."""
        return [record for record in self.log if record.closed_at is None]

    async def wait_all_closed(self) -> None:
        """Wait until every attempt so far is closed.

        A client can read the last byte of a response before the server is done with it, so
        check ``log`` and ``open_attempts`` after this, not straight after the client is done.
        """
        while self.open_attempts:
            await self._attempt_closed.wait()

    def inject(self, fault: LiveFault, seconds: float) -> None:
        """Break this server now, overriding its schedule (call it inside its trio run).

        ``reset``: every response being sent now is aborted with a TCP reset, mid-answer
        (``seconds`` is not used). ``stall``: for ``seconds``, no token is sent on any answer,
        open or new (heads and opening events still go out, as a stuck model's do), then they
        carry on. ``status503``: for ``seconds``, every new chat request and ``/models`` probe
        is answered 503. ``ValueError`` for another fault or a ``seconds`` that is not above 0.
        """
        if fault not in LIVE_FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {', '.join(LIVE_FAULTS)}")
        if not seconds > 0:
            raise ValueError(f"a fault lasts more than 0 seconds, not {seconds!r}")
        until = trio.current_time() + seconds
        if fault == "reset":
            for responding in self._responding:
                responding.reset = True
                responding.scope.cancel()
        elif fault == "stall":
            self._stalled_until = max(self._stalled_until, until)
        else:
            self._unavailable_until = max(self._unavailable_until, until)
        logger.info("simulated provider on port %s: injected %s (%gs)", self.port, fault, seconds)

    async def _unstalled(self) -> None:
        """Return once no injected stall holds tokens back (a stall may be extended meanwhile)."""
        while trio.current_time() < self._stalled_until:
            await trio.sleep_until(self._stalled_until)

    def _bound_port(self) -> int:
        if self.port is None:
            raise RuntimeError("the simulated provider is not serving yet")
        return self.port

    async def serve(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` (0 = any free port) and serve until cancelled.

        Reports the bound port through ``task_status``.
        """
        listeners = await trio.open_tcp_listeners(port, host=host)
        self.host = host
        self.port = listeners[0].socket.getsockname()[1]
        self.epoch = trio.current_time()
        logger.debug("simulated provider listening on %s:%d", host, self.port)
        task_status.started(self.port)
        await trio.serve_listeners(self._serve_connection, listeners)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await _receive_request(stream, conn)
                if request is None:
                    break
                keep_alive = await self._dispatch(stream, conn, request)
                if not (keep_alive and conn.our_state is conn.their_state is h11.DONE):
                    break
                conn.start_next_cycle()
        except _Abort:
            # SO_LINGER (on, 0 s) makes close() send RST instead of FIN.
            linger = struct.pack("ii", 1, 0)
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            stream.socket.close()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        finally:
            await stream.aclose()

    async def _dispatch(
        self, stream: trio.SocketStream, conn: h11.Connection, req: _HttpRequest
    ) -> bool:
        api = "anthropic" if req.path == "/v1/messages" else "openai"
        if req.path in _CHAT_PATHS and req.method == "POST":
            return await self._chat(stream, conn, req, api)
        if req.path in _MODELS_PATHS and req.method == "GET":
            api = "anthropic" if "anthropic-version" in req.headers else "openai"
            return await self._models(stream, conn, api)
        if req.path in _CHAT_PATHS or req.path in _MODELS_PATHS:
            status, code, message = 405, "method_not_allowed", f"{req.method} is not allowed here."
        else:
            status, code, message = 404, "not_found", f"There is no route {req.path}."
        failure = Failure(kind=FailureKind.STATUS, status=status, code=code, message=message)
        return await _send_failure(stream, conn, api, failure)

    def _behaviour_now(self, index: int) -> tuple[float, Behaviour]:
        now = trio.current_time()
        assert self.epoch is not None
        if now < self._unavailable_until:
            return now, _UNAVAILABLE
        return now, self.schedule.behaviour_for(index, now - self.epoch)

    async def _models(self, stream: trio.SocketStream, conn: h11.Connection, api: str) -> bool:
        # Like FakeProvider.probe: asks what the next chat request would get, uses no index.
        now, behaviour = self._behaviour_now(len(self.log))
        failure = probe_failure(behaviour, api)
        self.probes.append(
            ProbeRecord(kind="models", at=now, behaviour=behaviour, ok=failure is None)
        )
        if failure is not None and failure.kind is FailureKind.CONNECT:
            raise _Abort
        if failure is not None:
            return await _send_failure(stream, conn, api, failure)
        body = models_body(api, self.model_name or "baton-simulated", self._created)
        return await _send_json(stream, conn, 200, body)

    async def _chat(
        self, stream: trio.SocketStream, conn: h11.Connection, req: _HttpRequest, api: str
    ) -> bool:
        try:
            chat = parse_chat(req.body, api)
            if api == "openai" and chat.has_stream_options and self.stream_options == "rejected":
                raise BadRequest("Unrecognized request argument supplied: stream_options")
        except BadRequest as exc:
            # Invalid requests never reach the schedule, as a real API validates first.
            self.invalid_requests.append(str(exc))
            failure = Failure(
                kind=FailureKind.STATUS, status=400, code="invalid_request_error", message=str(exc)
            )
            return await _send_failure(stream, conn, api, failure)

        index = len(self.log)
        now, behaviour = self._behaviour_now(index)
        request = UpstreamRequest(
            model=chat.model,
            messages=chat.messages,
            params=chat.params,
            prefill=chat.messages[-1].role == "assistant",
        )
        record = AttemptRecord(
            index=index, request=request, behaviour=behaviour, opened_at=now, api=api
        )
        self.log.append(record)
        try:
            plan = plan_attempt(
                behaviour,
                chat.messages,
                kind=api,
                seed=self.seed,
                words=self.words,
                max_tokens=chat.max_tokens,
                params=chat.plan_params,
            )
            record.start, record.mode = plan.start, plan.mode
            if plan.rejection is not None and plan.rejection.kind is FailureKind.CONNECT:
                record.outcome = "refused"
                raise _Abort
            if plan.rejection is not None:
                record.outcome = "status"
                return await _send_failure(stream, conn, api, plan.rejection)
            model = self.model_name or request.model
            wire: Wire
            if api == "openai":
                ident = f"chatcmpl-baton{index:06d}"
                include_usage = chat.include_usage and self.stream_options == "honoured"
                wire = OpenAIWire(ident, model, self._created, include_usage)
            else:
                wire = AnthropicWire(f"msg_baton{index:06d}", model, plan.prompt_tokens)
            body = _stream_body if chat.stream else _complete_body
            respond = functools.partial(
                body, stream, conn, record, plan, wire, api, self._unstalled
            )
            responding = _Responding()
            self._responding.add(responding)
            try:
                with responding.scope:
                    result = await _watching_peer(stream, conn, respond)
            finally:
                self._responding.discard(responding)
            if responding.reset:
                record.outcome, result = "reset", "reset"
            if wire.usage_sent is not None and record.outcome == "finished":
                self.usage_sent[index] = wire.usage_sent
            if result == "reset":
                raise _Abort
            return result == "end"
        finally:
            if record.outcome == "streaming":
                record.outcome = "abandoned"
            record.closed_at = trio.current_time()
            self._attempt_closed.set()
            self._attempt_closed = trio.Event()


_UNAVAILABLE = Behaviour(
    "status", status=503,
    message="The simulated provider is unavailable (a 503 injected by the fault buttons).",
)  # fmt: skip


async def _stream_body(
    stream: trio.SocketStream,
    conn: h11.Connection,
    record: AttemptRecord,
    plan: AttemptPlan,
    wire: Wire,
    api: str,
    unstalled: Callable[[], Awaitable[None]],
) -> str:
    """Stream the answer as server-sent events, playing the behaviour's fault.

    Returns ``end`` (the HTTP message ended), ``reset`` (abort the connection) or ``broken``
    (the client went away). One write per token; ``unstalled()`` is awaited before each token
    write (an injected stall).
    """
    b = record.behaviour
    pieces = plan.pieces
    strike_at = min(b.at_token, len(pieces))
    try:
        head = conn.send(h11.Response(status_code=200, headers=wire.headers))
        preamble = wire.preamble(pieces[0] if pieces else None)
        await stream.send_all(head + conn.send(h11.Data(data=preamble)))
        if b.kind == "endless":
            # Without a delay, as fast as it may: ENDLESS_BURST token events per write.
            burst = 1 if b.token_delay > 0 else ENDLESS_BURST
            cycle = itertools.cycle(plan.tokens or plan.answer or ENDLESS_FALLBACK)
            while True:
                if b.token_delay > 0:
                    await trio.sleep(b.token_delay)
                await unstalled()
                sent = [next(cycle) for _ in range(burst)]
                data = b"".join(wire.token(token) for token in sent)
                await stream.send_all(conn.send(h11.Data(data=data)))
                record.tokens_sent.extend(sent)
        for i in range(len(pieces) + 1):
            if i == strike_at:
                if b.kind == "stall":
                    await trio.sleep(b.stall)
                elif b.kind == "keepalive_stall":
                    deadline = trio.current_time() + b.stall
                    while (left := deadline - trio.current_time()) > 0:
                        await stream.send_all(conn.send(h11.Data(data=wire.keepalive())))
                        await trio.sleep(min(KEEPALIVE_INTERVAL, left))
                elif b.kind == "malformed":
                    await stream.send_all(conn.send(h11.Data(data=wire.malformed())))
                elif b.kind == "reset":
                    record.outcome = "reset"
                    return "reset"
                elif b.kind == "stream_error":
                    error = conn.send(h11.Data(data=wire.error(stream_error_failure(b))))
                    await stream.send_all(error + conn.send(h11.EndOfMessage()))
                    record.outcome = "stream_error"
                    return "end"
            if i == len(pieces):
                break
            if b.token_delay > 0:
                await trio.sleep(b.token_delay)
            await unstalled()
            await stream.send_all(conn.send(h11.Data(data=wire.piece(pieces[i]))))
            record.record(pieces[i])
        if b.kind == "no_finish":
            await stream.send_all(conn.send(h11.EndOfMessage()))
            record.outcome = "eof"
            return "end"
        done = b.kind != "no_done"
        reasoning = sum(1 for p in record.pieces_sent if p.kind == "reasoning")
        await unstalled()
        tail = wire.finish(
            plan.finish_reason, plan.prompt_tokens, record.completion_pieces, done, reasoning
        )
        await stream.send_all(conn.send(h11.Data(data=tail)) + conn.send(h11.EndOfMessage()))
        record.outcome = "finished"
        return "end"
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return "broken"


async def _complete_body(
    stream: trio.SocketStream,
    conn: h11.Connection,
    record: AttemptRecord,
    plan: AttemptPlan,
    wire: Wire,
    api: str,
    unstalled: Callable[[], Awaitable[None]],
) -> str:
    """Answer ``stream: false``: the whole answer, after the time it would have streamed for
    (and after any injected stall, ``unstalled()``).

    ``reset`` aborts, ``stream_error`` becomes an error status, ``malformed`` cuts the JSON.
    """
    b = record.behaviour
    tokens = plan.pieces
    try:
        if b.kind == "endless":
            await trio.sleep_forever()  # the whole of an endless answer never comes
        if b.kind == "reset":
            await trio.sleep(b.token_delay * min(b.at_token, len(tokens)))
            record.outcome = "reset"
            return "reset"
        stalled = b.stall if b.kind in ("stall", "keepalive_stall") else 0.0
        await trio.sleep(stalled + b.token_delay * len(tokens))
        await unstalled()
        if b.kind == "stream_error":
            record.outcome = "stream_error"
            await _send_failure(stream, conn, api, stream_error_failure(b))
            return "end"
        counted = sum(1 for p in tokens if p.kind != "tool_call")
        reasoning = sum(1 for p in tokens if p.kind == "reasoning")
        completion = wire.completion(
            tokens, plan.finish_reason, plan.prompt_tokens, counted, reasoning
        )
        body = orjson.dumps(completion)
        if b.kind == "malformed":
            body = body[: len(body) // 2]
        await _send_json(stream, conn, 200, body)
        for piece in tokens:
            record.record(piece)
        record.outcome = "finished"
        return "end"
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return "broken"


async def _watching_peer(
    stream: trio.SocketStream, conn: h11.Connection, respond: Callable[[], Awaitable[str]]
) -> str:
    """Run ``respond()`` but stop it as soon as the client closes the connection.

    A client that gives up during a stall is noticed at once, not at the next write. Returns
    ``respond()``'s result, or ``closed``.
    """
    result = "closed"

    async def run() -> None:
        nonlocal result
        result = await respond()
        nursery.cancel_scope.cancel()

    async def watch() -> None:
        try:
            while data := await stream.receive_some(_READ_SIZE):
                conn.receive_data(data)  # h11 keeps a pipelined next request for later
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        nursery.start_soon(watch)
    return result


async def _receive_request(stream: trio.SocketStream, conn: h11.Connection) -> _HttpRequest | None:
    """Read one whole request, or ``None`` when the client closed the connection before one."""
    head: h11.Request | None = None
    chunks: list[bytes] = []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(_READ_SIZE))
        elif isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in head.headers}
            path = head.target.decode("latin-1").split("?", 1)[0]
            return _HttpRequest(head.method.decode("ascii"), path, headers, b"".join(chunks))
        else:  # ConnectionClosed
            return None


async def _send_failure(
    stream: trio.SocketStream, conn: h11.Connection, api: str, failure: Failure
) -> bool:
    assert failure.status is not None
    headers = []
    if failure.retry_after is not None:
        headers.append(("retry-after", retry_after_header(failure.retry_after)))
    return await _send_json(stream, conn, failure.status, error_body(api, failure), headers)


async def _send_json(
    stream: trio.SocketStream,
    conn: h11.Connection,
    status: int,
    payload: Any,
    headers: Sequence[tuple[str, str]] = (),
) -> bool:
    """Send a whole JSON response in one write; returns True (the connection may be reused)."""
    body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    head = [("content-type", "application/json"), ("content-length", str(len(body))), *headers]
    data = conn.send(h11.Response(status_code=status, headers=head))
    await stream.send_all(data + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
    return True


@asynccontextmanager
async def open_simulated_provider(
    schedule: FaultSchedule | None = None,
    *,
    seed: int = 0,
    model_name: str | None = None,
    words: Words = "plain",
    stream_options: StreamOptions = "honoured",
    host: str = "127.0.0.1",
    port: int = 0,
) -> AsyncIterator[SimulatedProvider]:
    """Run a ``SimulatedProvider`` for the duration of the block; yields it once it listens."""
    provider = SimulatedProvider(
        schedule, seed=seed, model_name=model_name, words=words, stream_options=stream_options
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(provider.serve, host=host, port=port))
        try:
            yield provider
        finally:
            nursery.cancel_scope.cancel()
