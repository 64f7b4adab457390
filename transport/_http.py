"""Baton's HTTP API: OpenAI's Chat Completions, models, health, status and metrics.

A raw ASGI application (``build_app``) served by hypercorn's trio worker (``serve_http``)::

    POST /v1/chat/completions   (also /chat/completions) OpenAI Chat Completions, streaming or not
    GET  /v1/models             the routes, as OpenAI models (also /v1/models/{id})
    GET  /healthz               200 while the process runs
    GET  /readyz                200 when every route has a usable target, else 503 with the reason
                                (``"status": "draining"`` while Baton shuts down)
    GET  /status                providers' health and pools, routes, active streams (JSON)
    GET  /metrics               Prometheus text (with a ``MetricsEndpoint``)
    GET  /v1/streams/{stream}   resume a streamed answer after a dropped connection
                                (``transport._sse_resume``)
    GET  /, /client/...         the failover page and ``baton.js`` (``transport._static``)
    GET  /sim/faults            the fault buttons' endpoint, only with a ``FaultInjector``

A streaming answer waits for the stream's first output (text, reasoning, a tool call), answer
or error before it sends headers, so that a request that fails before any output gets a plain
error status (which OpenAI's SDKs raise as ``APIStatusError``) rather than a 200 with an error
inside. A stream that breaks after output ends with an ``error`` event and no ``[DONE]``, so
SDKs raise instead of presenting a cut-off answer as complete. Failovers are invisible except
for the chunks' ``model``.

Every request field but Baton's own goes upstream (``parse_chat_request``); reasoning, tool
calls and log probabilities come back in OpenAI's shapes (``ChunkEncoder``, ``Answer``). When
the route's first target is of Anthropic's kind, ``x-baton-dropped-fields`` names the fields it
cannot honour.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import orjson
import trio
from hypercorn.config import Config as HypercornConfig

from actors import (
    Baton,
    Delta,
    Done,
    Failover,
    Reasoning,
    RequestError,
    StreamError,
    StreamHandle,
    ToolCall,
    ToolCallPart,
    clip,
    short_id,
)

from ._accept import serve_asgi
from ._admin import admin_only
from ._auth import Client, ClientAuth, Refused, TokenMeter
from ._faults import FaultInjector, fault_list, parse_fault
from ._http_response import ClientGone, Receive, Responder, Scope, Send, send_stream_error
from ._http_status import status_document
from ._limits import server_connection_limiter
from ._metrics import MetricsEndpoint
from ._openai_codec import (
    REQUEST_ERROR_CODES,
    Answer,
    APIError,
    ChatRequest,
    completion_body,
    parse_chat_request,
)
from ._origin import ORIGIN_REFUSED, OriginPolicy, preflight_headers, require_json
from ._sse_resume import STREAMS_PATH, ChunkStream, ResumableStreams
from ._static import static_file, static_headers, static_paths
from .providers._anthropic import dropped_fields

log = logging.getLogger(__name__)

# hypercorn's default listen backlog (100) overflows when hundreds of clients connect while
# the event loop is busy: the kernel then resets connections before Baton ever sees them.
LISTEN_BACKLOG = 4096

Handler = Callable[[Scope, Receive, "Responder"], Awaitable[None]]

DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024
GRACEFUL_TIMEOUT = 3.0  # seconds a stopping server gives open requests to send their last bytes
# A draining Baton refuses new streams with 503 and these: retry soon (a load balancer sends
# the retry to another instance), and OpenAI's SDKs may retry it themselves.
SHUTTING_DOWN_HEADERS = ((b"retry-after", b"1"), (b"x-should-retry", b"true"))
_CLOSE = ((b"connection", b"close"),)
_TOO_MANY = (
    "Baton holds as many connections as it may (server.max_connections, or "
    "server.max_connections_per_client from one address); retry in a moment, and reuse "
    "connections (keep-alive) rather than opening many."
)
_OK = orjson.dumps({"status": "ok"})
_INTERNAL_ERROR = "Baton failed while answering; please retry."
_INTERNAL_ERROR_EVENT = (
    b"data: "
    + orjson.dumps(
        {"error": {"message": _INTERNAL_ERROR, "type": "server_error", "code": "internal_error"}}
    )
    + b"\n\n"
)


_CLIENT_LEFT = "stream %s: the client closed its connection before the answer ended"
FAULTS_PATH = "/sim/faults"


class HTTPApp:
    """The ASGI application of Baton's HTTP API over a running ``Baton``.

    Each request is handled in its own task by the server; whatever a client sends, a failure
    is answered (500) and logged and never reaches other requests.
    """

    def __init__(
        self,
        baton: Baton,
        *,
        metrics: MetricsEndpoint | None = None,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        auth: ClientAuth | None = None,
        faults: FaultInjector | None = None,
    ) -> None:
        self.baton = baton
        self.faults = faults
        self.auth = auth or ClientAuth.from_config(baton.config)  # shared with WS: pass it
        self.metrics = metrics
        self.max_request_bytes = max_request_bytes
        self.body_timeout = baton.config.server.body_timeout
        self.origins = OriginPolicy(baton.config.server)
        self._routes: dict[str, tuple[str, Handler]] = {
            "/v1/chat/completions": ("POST", self._chat),
            "/chat/completions": ("POST", self._chat),
            "/v1/models": ("GET", self._models),
            "/models": ("GET", self._models),
            "/v1/tokens": ("POST", self._tokens),
            "/healthz": ("GET", self._healthz),
            "/readyz": ("GET", self._readyz),
            "/status": ("GET", admin_only(baton.config.server, self._status)),
            "/metrics": ("GET", admin_only(baton.config.server, self._metrics)),
        }
        for static in static_paths():
            self._routes[static] = ("GET", self._static)
        if faults is not None:
            # Operator-level: they change how providers behave (of Baton's own simulators).
            self._routes[FAULTS_PATH] = ("GET", admin_only(baton.config.server, self._faults))
        self._fault_post = admin_only(baton.config.server, self._inject)
        self._resumable = ResumableStreams(baton)  # the streamed answers a resume can continue

    def __repr__(self) -> str:
        return f"<HTTPApp routes={sorted(self.baton.config.routes)}>"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await _lifespan(receive, send)
        elif kind == "websocket":
            await send(
                {"type": "websocket.close", "code": 1008, "reason": "use Baton's WebSocket port"}
            )

    async def refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The application of a connection over the server's connection limits.

        ``GET /healthz`` is answered as usual, so a health check works at the limit; any other
        request gets 503 ``too_many_connections`` with ``Retry-After``. Either way the
        connection is closed after the answer.
        """
        if scope["type"] != "http":
            await self(scope, receive, send)
            return
        responder = Responder(send)
        if scope["path"] == "/healthz" and scope["method"] == "GET":
            await responder.whole(200, _OK, headers=_CLOSE)
        else:
            headers = (*_CLOSE, (b"retry-after", b"1"))
            await responder.error(503, "too_many_connections", _TOO_MANY, headers=headers)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        cors = self.origins.http_headers(scope)  # None: a browser origin that is not allowed
        responder = Responder(send, cors or ())
        try:
            entry = self._routes.get(path)
            if entry is None and path.startswith(("/v1/models/", "/models/")):
                entry = ("GET", self._model)
            elif entry is None and path.startswith(STREAMS_PATH):
                entry = ("GET", self._resume)
            elif entry is None and self.faults is not None and path.startswith(FAULTS_PATH + "/"):
                entry = ("POST", self._fault_post)
            if cors is None:
                await responder.error(403, "origin_not_allowed", ORIGIN_REFUSED)
            elif method == "OPTIONS" and cors:  # an allowed origin's CORS preflight
                preflight = preflight_headers(scope)
                await responder.whole(204, b"", headers=preflight, content_type=False)
            elif entry is None:
                await responder.error(
                    404, "not_found", f"Unknown path {clip(path)}; see /v1/chat/completions."
                )
            elif method != entry[0]:
                await responder.error(
                    405,
                    "method_not_allowed",
                    f"{clip(path)} only accepts {entry[0]}.",
                    headers=((b"allow", entry[0].encode()),),
                )
            else:
                scope["baton.client"] = self.auth.http_door(path, scope["headers"])
                await entry[1](scope, receive, responder)
        except ClientGone:
            log.debug("HTTP %s %s: the client left before the answer", method, clip(path))
        except Refused as exc:
            await responder.error(exc.status, exc.code, exc.message, headers=exc.headers())
        except APIError as exc:
            # A request whose body is not read whole cannot be followed by another one.
            headers = _CLOSE if exc.status == 408 else ()
            await responder.error(exc.status, exc.code, exc.message, exc.param, headers=headers)
        except Exception:
            log.exception("HTTP %s %s failed", method, clip(path))
            if not responder.started:
                await responder.error(500, "internal_error", _INTERNAL_ERROR)
            elif not responder.finished:
                # An SSE stream is open: end it with an error event, never a silent cut.
                await responder.body(_INTERNAL_ERROR_EVENT, more=False)

    # --- chat completions ----------------------------------------------------------------------

    async def _chat(self, scope: Scope, receive: Receive, send: Responder) -> None:
        require_json(scope)
        request = parse_chat_request(await self._read_body(scope, receive))
        client = self.auth.admit(scope["baton.client"], request.route)
        await self._answer(request, client, receive, send)

    async def _answer(
        self, request: ChatRequest, client: Client, receive: Receive, send: Responder
    ) -> None:
        try:
            handle = self.baton.start_stream(
                route=request.route, messages=request.messages, params=request.params,
                # A whole (non-streamed) answer has sent nothing yet, so it can start afresh.
                can_reset=not request.stream, transport="http", client=client.name,
                # Counted while the stream runs, read or detached, not while this request is.
                on_end=partial(self.auth.release, client),
            )  # fmt: skip
        except BaseException as exc:
            self.auth.release(client)  # it never started: its on_end will not be called
            if not isinstance(exc, RequestError):
                raise
            if exc.code == "shutting_down":
                await send.error(503, exc.code, exc.message, headers=SHUTTING_DOWN_HEADERS)
                return
            if exc.code == "unknown_model":
                raise APIError(404, "model_not_found", exc.message, param="model") from None
            code = REQUEST_ERROR_CODES.get(exc.code, exc.code)
            raise APIError(exc.status, code, exc.message) from None
        handle.log.wake_for_text_only = True  # Started and Failover alone send nothing here
        meter = self.auth.meter(client)
        headers: tuple[tuple[bytes, bytes], ...] = (
            (b"x-request-id", handle.id.encode()),
            *self._dropped_header(request),
        )
        if request.stream:
            chunks = ChunkStream(
                # Wall-clock seconds for the wire format's ``created``, not for any timing.
                completion_id="chatcmpl-" + handle.id, created=int(time.time()),
                model=request.route, include_usage=request.include_usage,
            )  # fmt: skip
            answer = self._resumable.keep(handle, chunks, meter)
            headers = (*headers, (b"x-baton-stream", handle.id.encode()))
            await self._read(handle, answer, receive, send, headers, stream=True)
        else:
            await self._read(handle, partial(self._complete, meter), receive, send, headers,
                             stream=False)  # fmt: skip

    async def _read(
        self,
        handle: StreamHandle,
        answer: Callable[
            [StreamHandle, Responder, tuple[tuple[bytes, bytes], ...]], Awaitable[None]
        ],
        receive: Receive,
        send: Responder,
        headers: tuple[tuple[bytes, bytes], ...],
        *,
        stream: bool,
    ) -> None:
        """Run ``answer`` over ``handle`` until it is sent or the client leaves.

        A streamed answer whose client leaves is detached (kept ``resume_window`` seconds for a
        resume); a whole one, or one that failed inside Baton, is cancelled.
        """
        finished = failed = False
        try:
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(
                        _watch_disconnect, receive, nursery.cancel_scope, handle, send
                    )
                    await answer(handle, send, headers)
                    finished = True
                    nursery.cancel_scope.cancel()
            except* ClientGone:
                log.info(_CLIENT_LEFT, short_id(handle.id))
        except Exception:
            failed = True
            raise
        finally:
            if not finished:
                # The client left, a send failed, or the server is stopping: a streamed answer
                # can be resumed (or is cancelled when resume_window is 0), else free the upstream.
                if stream and not failed:
                    self.baton.detach(handle)
                else:
                    handle.cancel()

    def _dropped_header(self, request: ChatRequest) -> tuple[tuple[bytes, bytes], ...]:
        """``x-baton-dropped-fields`` when the route's first target is of Anthropic's kind and
        cannot honour some of the request's fields (a failover may still land elsewhere)."""
        config = self.baton.config
        first = config.routes[request.route].targets[0]
        if config.providers[first.provider].kind != "anthropic":
            return ()
        dropped = dropped_fields(request.params, messages=request.messages)
        return ((b"x-baton-dropped-fields", ", ".join(dropped).encode()),) if dropped else ()

    async def _complete(
        self,
        meter: TokenMeter,
        handle: StreamHandle,
        send: Responder,
        headers: tuple[tuple[bytes, bytes], ...],
    ) -> None:
        """Collect the stream into one ``chat.completion`` (or an error) and send it."""
        answer = Answer()
        while True:
            try:
                batch = await handle.take()
            except trio.EndOfChannel:
                return
            meter.see(batch)  # tokens_per_minute
            for event in batch:
                match event:
                    case Delta(text=text, logprobs=logprobs):
                        answer.text(text, logprobs)
                    case Reasoning(text=text):
                        answer.reasoning(text)
                    case ToolCall():
                        answer.tool_call(event)
                    case ToolCallPart():
                        answer.tool_call_part(event)
                    case Failover(mode="reset"):
                        answer = Answer()  # what came so far is discarded: a new answer follows
                    case Done():
                        handle.release()  # sent whole: nothing to keep for a resume
                        body = completion_body(
                            completion_id="chatcmpl-" + handle.id, created=int(time.time()),
                            model=event.model, answer=answer,
                            finish_reason=event.finish_reason, usage=event.usage,
                        )  # fmt: skip
                        await send.whole(200, body, headers=headers)
                        return
                    case StreamError():
                        handle.release()
                        await send_stream_error(send, handle, event)
                        return

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        """The whole request body; ``APIError`` 413 as soon as it passes ``max_request_bytes``.

        ``APIError`` 408 if it has not all arrived ``body_timeout`` seconds after the request
        head: a client that sends nothing, or a byte at a time, cannot hold a connection.
        """
        limit = self.max_request_bytes
        too_large = APIError(
            413, "request_too_large", f"The request body is larger than {limit} bytes."
        )
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                raise too_large
        chunks: list[bytes] = []
        size = 0
        with trio.move_on_after(self.body_timeout):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientGone
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise too_large
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
        raise APIError(
            408, "request_timeout",
            f"The request body did not arrive within {self.body_timeout:g} s "
            f"({size} bytes came); send the whole request at once.",
        )  # fmt: skip

    # --- resume --------------------------------------------------------------------------------

    async def _resume(self, scope: Scope, receive: Receive, send: Responder) -> None:
        """``GET /v1/streams/{stream}``: the rest of a streamed answer after the client's event."""
        handle, answer, headers = self._resumable.resume(scope)
        await self._read(handle, answer, receive, send, headers, stream=True)

    # --- the page and the fault buttons --------------------------------------------------------

    async def _static(self, scope: Scope, receive: Receive, send: Responder) -> None:
        found = static_file(scope["path"], ws_port=self.baton.config.server.ws_port)
        assert found is not None  # only static_paths() are routed here
        body, content_type = found
        await send.whole(200, body, headers=static_headers(content_type), content_type=False)

    async def _faults(self, scope: Scope, receive: Receive, send: Responder) -> None:
        assert self.faults is not None  # routed only with an injector
        await send.whole(200, fault_list(self.faults))

    async def _inject(self, scope: Scope, receive: Receive, send: Responder) -> None:
        assert self.faults is not None
        require_json(scope)  # a cross-site form cannot send JSON without a CORS preflight
        provider = scope["path"][len(FAULTS_PATH) + 1 :]
        fault, seconds = parse_fault(await self._read_body(scope, receive))
        if provider not in self.faults.providers():
            raise APIError(
                404, "unknown_provider",
                f"No simulated provider {clip(provider)}; GET {FAULTS_PATH} lists them.",
            )  # fmt: skip
        try:
            self.faults.inject(provider, fault, seconds)
        except ValueError as exc:
            raise APIError(400, "invalid_value", str(exc)) from None
        log.info("fault %s injected into %s for %g s", fault, provider, seconds)
        await send.whole(204, b"", content_type=False)

    # --- models, health, status, metrics -------------------------------------------------------

    async def _models(self, scope: Scope, receive: Receive, send: Responder) -> None:
        routes = self.auth.routes(scope["baton.client"], self.baton.config.routes)
        data = [_model_object(name) for name in routes]
        await send.whole(200, orjson.dumps({"object": "list", "data": data}))

    async def _model(self, scope: Scope, receive: Receive, send: Responder) -> None:
        name = scope["path"].split("/models/", 1)[1]
        if name not in self.auth.routes(scope["baton.client"], self.baton.config.routes):
            raise APIError(
                404, "model_not_found", f"The model {clip(name)} does not exist.", param="model"
            )
        await send.whole(200, orjson.dumps(_model_object(name)))

    async def _tokens(self, scope: Scope, receive: Receive, send: Responder) -> None:
        await send.whole(200, self.auth.issue_token(scope["baton.client"]))

    async def _healthz(self, scope: Scope, receive: Receive, send: Responder) -> None:
        await send.whole(200, _OK)

    async def _readyz(self, scope: Scope, receive: Receive, send: Responder) -> None:
        ready, reason = self.baton.ready()
        if self.baton.closing:
            # Load balancers take the instance out of rotation while its streams finish.
            await send.whole(503, orjson.dumps({"status": "draining", "reason": reason}))
        elif ready:
            await send.whole(200, orjson.dumps({"status": "ready"}))
        else:
            await send.whole(503, orjson.dumps({"status": "not_ready", "reason": reason}))

    async def _status(self, scope: Scope, receive: Receive, send: Responder) -> None:
        document = status_document(self.baton)
        if self.auth.enabled:
            document["clients"] = self.auth.status()
        await send.whole(200, orjson.dumps(document))

    async def _metrics(self, scope: Scope, receive: Receive, send: Responder) -> None:
        if self.metrics is None:
            raise APIError(404, "not_found", "Metrics are not enabled on this server.")
        headers = ((b"content-type", self.metrics.content_type.encode()),)
        await send.whole(200, self.metrics.render(), headers=headers, content_type=False)


def _model_object(route: str) -> dict[str, Any]:
    return {"id": route, "object": "model", "created": 0, "owned_by": "baton"}


async def _watch_disconnect(
    receive: Receive, scope: trio.CancelScope, handle: StreamHandle, send: Responder
) -> None:
    """Cancel ``scope`` when the client leaves before the answer ends (the body was read).

    hypercorn also says ``http.disconnect`` when the answer is complete: inside the ``send`` of
    its last bytes it ends the request and tells the application, before it re-arms the
    keep-alive timeout or closes a ``Connection: close`` connection. Cancelling then would
    interrupt that ``send`` and leave the connection open for ever, so the end of an answer
    that was sent whole is no disconnect.
    """
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if not send.finished:
                log.info(_CLIENT_LEFT, short_id(handle.id))
                scope.cancel()
            return


async def _lifespan(receive: Receive, send: Send) -> None:
    """Acknowledge the server's startup and shutdown; Baton is started by its caller."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def build_app(
    baton: Baton,
    *,
    metrics: MetricsEndpoint | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    auth: ClientAuth | None = None,
    faults: FaultInjector | None = None,
) -> HTTPApp:
    """The ASGI application of the HTTP API over ``baton``, for any ASGI server or test."""
    return HTTPApp(
        baton, metrics=metrics, max_request_bytes=max_request_bytes, auth=auth, faults=faults
    )


async def serve_http(
    baton: Baton,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    metrics: MetricsEndpoint | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    graceful_timeout: float = GRACEFUL_TIMEOUT,
    auth: ClientAuth | None = None,
    faults: FaultInjector | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the HTTP API on ``host:port`` with hypercorn until cancelled.

    Reports the bound port through ``task_status`` (``port=0`` picks a free one). When
    ``shutdown_trigger`` returns, the server stops accepting and closes idle connections;
    open requests get ``graceful_timeout`` seconds to send the rest of their answers (end the
    streams first: ``Baton.drain``) before they are cancelled; then it returns. Raises
    ``OSError`` if the address cannot be bound. ``faults``: answer the fault buttons' endpoint.
    """
    app = build_app(
        baton, metrics=metrics, max_request_bytes=max_request_bytes, auth=auth, faults=faults
    )
    config = HypercornConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.backlog = LISTEN_BACKLOG
    config.graceful_timeout = graceful_timeout
    # A Logger (not "-") so that hypercorn does not install handlers; the CLI configures logging.
    config.errorlog = logging.getLogger("hypercorn.error")
    # hypercorn types the app with its TypedDict events; ours takes plain mappings.
    asgi: Any = app
    # An idle connection, or one whose request head has not all come, is closed after this.
    config.keep_alive_timeout = baton.config.server.keep_alive_timeout
    limiter = server_connection_limiter(baton.config, name="HTTP")
    serve = partial(
        serve_asgi, asgi, app.refuse, config, limiter, server=baton.config.server,
        shutdown_trigger=shutdown_trigger)  # fmt: skip
    started = False
    try:
        async with trio.open_nursery() as nursery:
            binds: list[str] = await nursery.start(serve)
            bound = int(binds[0].rsplit(":", 1)[1])
            log.info("HTTP API listening on %s", ", ".join(binds))
            started = True
            task_status.started(bound)
    except BaseExceptionGroup as group:
        bind_errors, rest = group.split(OSError)
        if started or bind_errors is None or rest is not None:
            raise
        # hypercorn nests its startup failure in several nurseries' groups: the caller gets the
        # one OSError (address in use, permission denied) it can act on.
        raise _first_leaf(bind_errors) from None


def _first_leaf(group: BaseExceptionGroup[OSError]) -> OSError:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
