"""A minimal HTTP/1.1 client for the benchmark's load generator: keep-alive, streamed bodies.

httpx costs the load generator ~50-200 µs of CPU per body read; at 500 streams x 20 tokens/s
that is a whole core, and the client, not the server it measures, sets the pace (measured:
``--http-client httpx``). ``RawHTTPClient`` does only what the benchmark needs, on raw trio
sockets: ``POST`` or ``GET`` with a ``Content-Length`` body, a response with ``Content-Length``,
``Transfer-Encoding: chunked`` or read-to-close framing, keep-alive reuse (a reused connection
that the server had closed is retried once on a fresh one, as httpx does). The body is handed
to the caller piece by piece as it arrives, so that time to first token is exact.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

_READ_SIZE = 65536
_MAX_HEAD = 64 * 1024


class RawHTTPError(Exception):
    """The connection broke or the server broke the protocol."""


class _Connection:
    __slots__ = ("buffer", "stream")

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def read(self) -> bytes:
        try:
            data = await self.stream.receive_some(_READ_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise RawHTTPError(f"connection broken: {exc.__cause__ or exc}") from None
        return data


class RawHTTPClient:
    """HTTP/1.1 to one ``host:port``, keeping up to ``max_idle`` connections alive between calls."""

    def __init__(self, host: str, port: int, *, max_idle: int = 1024) -> None:
        self.host, self.port = host, port
        self._idle: list[_Connection] = []
        self._max_idle = max_idle
        self._host_header = f"{host}:{port}".encode()

    async def aclose(self) -> None:
        """Close every idle connection."""
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.stream.aclose()

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        on_body: Callable[[bytes], None] | None = None,
    ) -> tuple[int, bytes]:
        """Send a request and read its whole response; returns ``(status, body)``.

        With ``on_body``, a 200 response's body goes to it piece by piece as it arrives (and the
        returned body is empty); any other status's body is returned (its first 64 KiB). Raises
        ``RawHTTPError``.
        """
        head = (
            f"{method} {path} HTTP/1.1\r\nhost: ".encode() + self._host_header
            + b"\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body)
        )  # fmt: skip
        for attempt in range(2):
            # A retry opens a new connection: when the server hung up on one idle connection
            # (its keep-alive timeout), it has usually hung up on the others as well.
            reused = attempt == 0 and bool(self._idle)
            connection = self._idle.pop() if reused else await self._connect()
            try:
                try:
                    await connection.stream.send_all(head + body)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    raise RawHTTPError(f"connection broken: {exc.__cause__ or exc}") from None
                status, headers = await self._read_head(
                    connection, stale_ok=reused and attempt == 0
                )
            except _Stale:
                await connection.stream.aclose()
                continue
            except BaseException:
                await _abort(connection)
                raise
            try:
                result, keep = await self._read_body(connection, status, headers, on_body)
            except BaseException:
                await _abort(connection)
                raise
            if keep and len(self._idle) < self._max_idle:
                self._idle.append(connection)
            else:
                await connection.stream.aclose()
            return status, result
        raise RawHTTPError("the server closed two connections in a row without answering")

    async def _connect(self) -> _Connection:
        try:
            return _Connection(await trio.open_tcp_stream(self.host, self.port))
        except OSError as exc:
            raise RawHTTPError(f"cannot connect: {exc}") from None

    async def _read_head(
        self, connection: _Connection, *, stale_ok: bool
    ) -> tuple[int, dict[bytes, bytes]]:
        buffer = connection.buffer
        end = buffer.find(b"\r\n\r\n")
        while end < 0:
            data = await connection.read()
            if not data:
                if stale_ok and not buffer:
                    raise _Stale
                raise RawHTTPError("the server closed the connection before answering")
            buffer += data
            if len(buffer) > _MAX_HEAD:
                raise RawHTTPError("response head too large")
            end = buffer.find(b"\r\n\r\n")
        lines = buffer[:end].split(b"\r\n")
        connection.buffer = buffer[end + 4 :]
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise RawHTTPError(f"bad status line {lines[0][:80]!r}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        return int(parts[1]), headers

    async def _read_body(
        self, connection: _Connection, status: int, headers: dict[bytes, bytes],
        on_body: Callable[[bytes], None] | None,
    ) -> tuple[bytes, bool]:  # fmt: skip
        """Read the body; returns it (unless streamed) and whether the connection can be reused."""
        collected: list[bytes] = []
        size = 0

        def deliver(piece: bytes) -> None:
            nonlocal size
            if on_body is not None and status == 200:
                on_body(piece)
            elif size < _MAX_HEAD:
                collected.append(piece)
                size += len(piece)

        keep = headers.get(b"connection", b"").lower() != b"close"
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            await _read_chunked(connection, deliver)
        elif b"content-length" in headers:
            remaining = int(headers[b"content-length"])
            buffer, connection.buffer = connection.buffer, b""
            while True:
                if buffer:
                    piece, buffer = buffer[:remaining], buffer[remaining:]
                    remaining -= len(piece)
                    deliver(piece)
                if remaining <= 0:
                    connection.buffer = buffer
                    break
                buffer = await connection.read()
                if not buffer:
                    raise RawHTTPError("the body ended early")
        else:
            keep = False
            if connection.buffer:
                deliver(connection.buffer)
            while data := await connection.read():
                deliver(data)
        return b"".join(collected), keep


async def _read_chunked(connection: _Connection, deliver: Callable[[bytes], None]) -> None:
    """Read a chunked body, handing each piece of data to ``deliver`` as soon as it arrived."""
    buffer, connection.buffer = connection.buffer, b""
    pos = 0

    async def more() -> None:
        nonlocal buffer, pos
        data = await connection.read()
        if not data:
            raise RawHTTPError("the chunked body ended early")
        buffer = buffer[pos:] + data
        pos = 0

    while True:
        line_end = buffer.find(b"\r\n", pos)
        while line_end < 0:
            await more()
            line_end = buffer.find(b"\r\n", pos)
        try:
            remaining = int(buffer[pos:line_end].split(b";", 1)[0], 16)
        except ValueError:
            raise RawHTTPError(f"bad chunk size line {buffer[pos:line_end][:40]!r}") from None
        pos = line_end + 2
        if remaining == 0:
            # Trailers (none in practice), then the blank line that ends the message.
            while True:
                line_end = buffer.find(b"\r\n", pos)
                while line_end < 0:
                    await more()
                    line_end = buffer.find(b"\r\n", pos)
                empty = line_end == pos
                pos = line_end + 2
                if empty:
                    connection.buffer = buffer[pos:]
                    return
        while remaining:
            if pos == len(buffer):
                await more()
            piece = buffer[pos : pos + remaining]
            pos += len(piece)
            remaining -= len(piece)
            deliver(piece)
        while len(buffer) < pos + 2:
            await more()
        if buffer[pos : pos + 2] != b"\r\n":
            raise RawHTTPError("a chunk does not end with CRLF")
        pos += 2


class _Stale(Exception):
    """A kept-alive connection the server had closed: retry on a fresh one."""


async def _abort(connection: _Connection) -> None:
    with trio.move_on_after(1, shield=True):
        await connection.stream.aclose()
