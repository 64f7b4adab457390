"""One HTTP response over ASGI ``send``: whether it began or ended, and a client that left.

``transport._http`` answers every request through a ``Responder``; ``send_stream_error``
answers a stream that failed before any output with a plain error status.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from actors import StreamError, StreamHandle, short_id

from ._openai_codec import error_body, stream_error_body, stream_error_status

log = logging.getLogger("transport._http")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
JSON_HEADERS = ((b"content-type", b"application/json"),)


class ClientGone(Exception):
    """The client disconnected before the answer was sent."""


class Responder:
    """Sends one HTTP response through ASGI ``send`` and remembers whether it began.

    A send that fails because the client is gone raises ``ClientGone``.
    """

    def __init__(self, send: Send, extra: Any = ()) -> None:
        self._send = send
        self._extra = tuple(extra)  # headers every response carries (CORS)
        self.started = False
        self.finished = False

    async def start(self, status: int, headers: Any) -> None:
        self.started = True
        await self._call(
            {"type": "http.response.start", "status": status, "headers": [*headers, *self._extra]}
        )

    async def body(self, data: bytes, *, more: bool) -> None:
        self.finished = not more
        await self._call({"type": "http.response.body", "body": data, "more_body": more})

    async def whole(
        self, status: int, body: bytes, *, headers: Any = (), content_type: bool = True
    ) -> None:
        """Send a complete response; ``content_type``: add ``application/json``.

        A 204 carries no Content-Length (RFC 9110 forbids it) and must have an empty body.
        """
        length = () if status == 204 else ((b"content-length", str(len(body)).encode()),)
        all_headers = [*(JSON_HEADERS if content_type else ()), *headers, *length]
        await self.start(status, all_headers)
        await self.body(body, more=False)

    async def error(
        self, status: int, code: str, message: str, param: str | None = None, *, headers: Any = ()
    ) -> None:
        """Send an OpenAI-shaped error; nothing if a response already began."""
        if self.started:
            log.warning("cannot answer %d %s: the response already began", status, code)
            return
        await self.whole(status, error_body(status, code, message, param), headers=headers)

    async def _call(self, message: MutableMapping[str, Any]) -> None:
        try:
            await self._send(message)
        except OSError as exc:
            # ASGI 2.4: a server may raise OSError for a send to a client that left.
            raise ClientGone from exc


async def send_stream_error(send: Responder, handle: StreamHandle, error: StreamError) -> None:
    """Answer a stream that failed before any text with a plain error status."""
    status = stream_error_status(error)
    log.info(
        "stream %s failed before any text: %s (HTTP %d)", short_id(handle.id), error.code, status
    )
    # OpenAI's SDKs retry 5xx and 429 unless told otherwise; say whether a retry can help.
    headers: tuple[tuple[bytes, bytes], ...] = (
        (b"x-request-id", handle.id.encode()),
        (b"x-should-retry", b"true" if error.retryable else b"false"),
    )
    if error.code == "shutting_down":
        headers += ((b"retry-after", b"1"),)
    await send.whole(status, stream_error_body(error), headers=headers)
