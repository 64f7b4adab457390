"""The accept loops of Baton's two servers, each behind a ``ConnectionLimiter``.

Neither hypercorn nor trio-websocket can limit connections or say which client a connection
is from before they serve it, so Baton accepts them itself and hands each one, with its
verdict, to the library's own per-connection machinery:

- ``serve_asgi``: hypercorn's trio worker (what ``hypercorn.trio.serve`` runs), serving an
  admitted connection with the application and a refused one with the refusal application.
  It uses hypercorn's ``TCPServer`` and ``WorkerContext``, which are not public API: pinned in
  ``pyproject.toml`` and held to their behaviour by ``tests/transport/test_connections.py``.
- ``serve_websocket``: trio-websocket's ``WebSocketServer`` connection handling (a reader task,
  the opening handshake within ``handshake_timeout``, the handler, the closing handshake),
  with one fix: a frame wsproto cannot accept (a text frame that is not UTF-8, a protocol
  error) gets a close frame with wsproto's code (1007, 1002) before the connection is closed,
  where trio-websocket hangs up without one. That overrides a private method; pinned likewise.

With ``[server] tls_cert`` and ``tls_key`` both servers wrap each admitted connection in a
``trio.SSLStream`` (``server_ssl_context``): HTTPS and WSS on the same ports. The TLS handshake
counts against the server's ``handshake_timeout``; hypercorn learns the scheme (``https``) from
the stream it is given.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio
import wsproto
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import repr_socket_addr, wrap_app
from trio_websocket import (
    ConnectionClosed,
    Endpoint,
    WebSocketConnection,
    WebSocketRequest,
    WebSocketServer,
)
from wsproto.connection import ConnectionState as WSState
from wsproto.events import CloseConnection

from actors import ConfigError, ServerConfig

from ._limits import ConnectionLimiter, ConnectionVerdict

# What a text frame that is not UTF-8 is told when the connection closes (1007).
INVALID_UTF8_REASON = "Text frames must be valid UTF-8 (protocol v1 frames are JSON text)."


def server_ssl_context(server: ServerConfig, *, where: str = "") -> ssl.SSLContext | None:
    """The TLS context of ``[server] tls_cert`` and ``tls_key`` (None without them).

    Server side, TLS 1.2 or later, ALPN ``http/1.1``. Raises ``ConfigError`` naming the key
    and the file when a file cannot be read or is not a PEM certificate or private key that
    belong together; ``where`` is prefixed to the key (the config file's name).
    """
    if server.tls_cert is None or server.tls_key is None:
        return None
    prefix = f"{where}: " if where else ""
    for key, path in (("tls_cert", server.tls_cert), ("tls_key", server.tls_key)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(
                f"{prefix}server.{key}",
                f"cannot read {path!r} ({exc.strerror or exc}); give the path of a PEM file "
                "Baton's user can read",
            ) from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        # An encrypted key gets an empty password, which fails, instead of OpenSSL's prompt on
        # the terminal, which would hang a server started by a service manager.
        context.load_cert_chain(server.tls_cert, server.tls_key, password=lambda: b"")
    except ssl.SSLError as exc:
        # OpenSSL's reasons name what is wrong (no PEM start line, key values mismatch), never
        # the key's contents.
        raise ConfigError(
            f"{prefix}server.tls_cert",
            f"{server.tls_cert!r} and server.tls_key {server.tls_key!r} are not a PEM "
            f"certificate and its unencrypted private key ({exc.reason or exc})",
        ) from None
    return context


def client_address(stream: trio.SocketStream) -> str | None:
    """The address (no port) of the peer of ``stream``, or ``None`` if it is gone already."""
    try:
        peer = stream.socket.getpeername()
    except OSError:
        return None
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


async def _serve_connection(
    limiter: ConnectionLimiter,
    serve: Callable[[trio.SocketStream, ConnectionVerdict], Awaitable[None]],
    stream: trio.SocketStream,
) -> None:
    """Serve one accepted connection under its verdict; always close it, even when cancelled."""
    client = client_address(stream)
    try:
        if client is None:
            return
        with limiter.hold(client) as verdict:
            if verdict != "dropped":
                await serve(stream, verdict)
    finally:
        await trio.aclose_forcefully(stream)


async def serve_asgi(
    app: Any,
    refusal_app: Any,
    config: HypercornConfig,
    limiter: ConnectionLimiter,
    *,
    server: ServerConfig | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` over HTTP/1.1 with hypercorn, as ``hypercorn.trio.serve`` does, but limited.

    ``refusal_app`` serves the connections ``limiter`` refuses. Reports the bound addresses
    (``http://HOST:PORT``) through ``task_status``; raises ``OSError`` if one cannot be bound.
    When ``shutdown_trigger`` returns, it stops accepting, tells open connections to close after
    their current request, gives them ``config.graceful_timeout``, and returns. With
    ``server``'s TLS files, HTTPS (``https://HOST:PORT``), each handshake within its
    ``handshake_timeout``. No lifespan events: Baton is started and stopped by its caller.
    """
    tls = None if server is None else server_ssl_context(server)
    if tls is not None and server is not None:
        config.ssl_handshake_timeout = server.handshake_timeout
    scheme = "http" if tls is None else "https"
    sockets = config.create_sockets()
    listeners = []
    binds = []
    for sock in sockets.insecure_sockets:
        sock.listen(config.backlog)
        listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
        binds.append(f"{scheme}://{repr_socket_addr(sock.family, sock.getsockname())}")
    context = WorkerContext(None)
    apps = {
        "admitted": wrap_app(app, config.wsgi_max_body_size, "asgi"),
        "refused": wrap_app(refusal_app, config.wsgi_max_body_size, "asgi"),
    }

    async def serve(stream: trio.SocketStream, verdict: ConnectionVerdict) -> None:
        # A fresh, empty ASGI ``state`` per connection: there is no lifespan to fill it.
        state = ConnectionState({})
        # TCPServer is typed for an SSL stream; it tells the two apart at run time (and the
        # ASGI scheme with them), and does the TLS handshake within ssl_handshake_timeout.
        tcp: Any = stream
        if tls is not None:
            tcp = trio.SSLStream(stream, tls, server_side=True, https_compatible=True)
        await TCPServer(apps[verdict], config, context, state, tcp).run()

    handler = partial(_serve_connection, limiter, serve)
    async with trio.open_nursery() as connections:
        try:
            async with trio.open_nursery() as accepting:
                await accepting.start(
                    partial(trio.serve_listeners, handler, listeners, handler_nursery=connections)
                )
                task_status.started(binds)
                if shutdown_trigger is None:
                    await trio.sleep_forever()
                else:
                    await shutdown_trigger()
                accepting.cancel_scope.cancel()
        finally:
            # As hypercorn's worker: idle connections close now, busy ones after their request.
            await context.terminated.set()
            connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout


class _ServerConnection(WebSocketConnection):
    """trio-websocket's connection, but one that fails a bad frame with a close frame."""

    async def _handle_close_connection_event(self, event: CloseConnection) -> None:
        # wsproto reports a frame it cannot accept as a CloseConnection while its state is still
        # OPEN (the peer sent no close frame). RFC 6455 (7.1.7, 8.1) says to send one with that
        # code before closing; trio-websocket would close the TCP connection without it.
        if self._wsproto.state is WSState.OPEN:
            reason = INVALID_UTF8_REASON if event.code == 1007 else event.reason
            with contextlib.suppress(ConnectionClosed):
                await self._send(CloseConnection(code=event.code, reason=reason))
        await super()._handle_close_connection_event(event)


class _LimitedWebSocketServer(WebSocketServer):
    """trio-websocket's server, with a verdict for each connection and ``_ServerConnection``."""

    def __init__(
        self,
        handler: Callable[[WebSocketRequest], Awaitable[None]],
        refuse: Callable[[WebSocketRequest], Awaitable[None]],
        listeners: list[trio.SocketListener],
        limiter: ConnectionLimiter,
        tls: ssl.SSLContext | None,
        **options: Any,
    ) -> None:
        super().__init__(handler, listeners, **options)
        self._refuse = refuse
        self._limiter = limiter
        self._tls = tls

    @property
    def listeners(self) -> list[Endpoint | str]:
        """The listeners' endpoints; ``wss://`` URLs when this server wraps streams in TLS."""
        endpoints = super().listeners
        if self._tls is None:
            return endpoints
        return [
            Endpoint(str(e.address), e.port, True) if isinstance(e, Endpoint) else e
            for e in endpoints
        ]

    async def _handle_connection(self, stream: trio.abc.Stream) -> None:
        assert isinstance(stream, trio.SocketStream)
        await _serve_connection(self._limiter, self._serve, stream)

    async def _serve(self, stream: trio.SocketStream, verdict: ConnectionVerdict) -> None:
        # As WebSocketServer._handle_connection, with the connection class and the verdict.
        # One deadline covers the TLS handshake and the opening handshake.
        deadline = trio.current_time() + self._connect_timeout
        connected: trio.SocketStream | trio.SSLStream[trio.SocketStream] = stream
        if self._tls is not None:
            connected = trio.SSLStream(stream, self._tls, server_side=True, https_compatible=True)
            with trio.move_on_at(deadline):
                try:
                    await connected.do_handshake()
                except trio.BrokenResourceError:
                    return  # not TLS, or a handshake the client gave up
            if trio.current_time() >= deadline:
                return
        async with trio.open_nursery() as nursery:
            connection = _ServerConnection(
                connected,
                wsproto.WSConnection(wsproto.ConnectionType.SERVER),
                message_queue_size=self._message_queue_size,
                max_message_size=self._max_message_size,
                receive_buffer_size=self._receive_buffer_size,
            )
            nursery.start_soon(connection._reader_task)
            request: WebSocketRequest | None = None
            with trio.move_on_at(deadline):
                request = await connection._get_request()
            if request is None:  # no complete opening handshake in time
                nursery.cancel_scope.cancel()
                return
            try:
                await (self._handler if verdict == "admitted" else self._refuse)(request)
            finally:
                with trio.move_on_after(self._disconnect_timeout):
                    await connection.aclose()
                # After a rejected handshake aclose() leaves the reader waiting for the client
                # to hang up; a refused connection must not stay open that long.
                nursery.cancel_scope.cancel()


async def serve_websocket(
    handler: Callable[[WebSocketRequest], Awaitable[None]],
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    *,
    limiter: ConnectionLimiter,
    refuse: Callable[[WebSocketRequest], Awaitable[None]],
    handler_nursery: trio.Nursery | None = None,
    max_message_size: int,
    connect_timeout: float,
    disconnect_timeout: float,
    task_status: trio.TaskStatus[WebSocketServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """``trio_websocket.serve_websocket``, limited; WSS with an ``ssl_context``.

    ``handler`` gets each admitted connection's opening handshake and ``refuse`` each refused
    one's (it should reject it); a handshake (TLS and WebSocket together) not complete within
    ``connect_timeout`` seconds closes the connection. Reports the ``WebSocketServer`` (its
    ``listeners``) through ``task_status`` and runs until cancelled.
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    server = _LimitedWebSocketServer(
        handler, refuse, listeners, limiter, ssl_context, handler_nursery=handler_nursery,
        max_message_size=max_message_size, connect_timeout=connect_timeout,
        disconnect_timeout=disconnect_timeout,
    )  # fmt: skip
    await server.run(task_status=task_status)
