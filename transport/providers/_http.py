"""The httpx plumbing both adapters share: client settings, opening a response, event iteration.

An adapter supplies two things: how to build its HTTP request, and a parser that turns decoded
SSE events into upstream events. Everything about sockets, closing and error translation lives
here once.
"""

from __future__ import annotations

import logging
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from http.cookiejar import CookieJar
from typing import Protocol

import httpx
import orjson
import trio

from actors import (
    Failure,
    FailureKind,
    Finish,
    ProviderConfig,
    TextDelta,
    UpstreamError,
    UpstreamEvent,
)

from ._errors import (
    failure_from_exception,
    failure_from_status,
    failure_from_stream_error,
)
from ._sse import SSEDecoder, SSEError, SSEEvent

logger = logging.getLogger(__name__)

# After a complete answer, read at most this much of what follows, for this long, so the
# connection can be reused (it is only the usage chunk, [DONE] and the chunked-body end).
DRAIN_BYTES = 64 * 1024
DRAIN_TIME = 0.5

#: How much of an error body we read: enough for any JSON error, not a runaway HTML page.
MAX_ERROR_BODY = 64 * 1024
#: Longest raw text a ``Malformed`` event keeps: enough to diagnose, not a copy of a huge payload.
MALFORMED_RAW_CHARS = 1000
#: Longest a shielded close of an upstream response may take during cleanup. Closing an
#: unfinished HTTP/1.1 response drops the connection, which is quick; this only bounds a stuck
#: socket.
CLOSE_GRACE = 2.0
#: Longest the request body may take to send. Bodies reach megabytes (long conversations); the
#: connect timeout is too short for that and no timeout at all could hang an attempt for ever.
WRITE_TIMEOUT = 30.0


def client_timeout(config: ProviderConfig) -> httpx.Timeout:
    """The httpx timeouts for one provider: connect, write and pool, never read.

    Reads have no httpx timeout because the session times first token and silence with trio's
    clock (httpx's default of 5 s between reads would cut a model that thinks before it speaks).
    """
    return httpx.Timeout(
        connect=config.connect_timeout, read=None, write=WRITE_TIMEOUT, pool=config.pool_timeout
    )


def make_client(
    config: ProviderConfig, max_connections: int, tls: ssl.SSLContext, cookies: CookieJar
) -> httpx.AsyncClient:
    """Build an ``httpx.AsyncClient`` for a provider with ``max_connections`` connections."""
    return httpx.AsyncClient(
        cookies=cookies,
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
        timeout=client_timeout(config),
        follow_redirects=False,
        verify=tls,
    )


#: The most connections one httpx pool holds. httpcore's pool looks at each of its connections
#: whenever a request starts or a response closes, and for every idle one it counts them all
#: again, so one pool of hundreds of connections costs milliseconds per request (20-37% of
#: Baton's CPU with 500 streams open, in the capacity benchmark). A provider's
#: ``max_connections`` are split into pools of at most this many.
SHARD_CONNECTIONS = 32


class Clients:
    """A provider's httpx clients: its connections, split into pools of bounded size.

    ``lease()`` lends the client with the most free connections for the time of one request
    and its response, so no pool is asked for more than its share while the total stays
    within ``max_connections`` (which the PoolActor enforces). A quiet provider keeps using the
    first pool, whose connections stay warm.
    """

    def __init__(self, clients: list[httpx.AsyncClient], limits: list[int]) -> None:
        self._clients = clients
        self._free = list(limits)

    @classmethod
    def for_provider(cls, config: ProviderConfig) -> Clients:
        """Pools of at most ``SHARD_CONNECTIONS`` adding up to ``config.max_connections``.

        They share one TLS context: each would otherwise load its own copy of the CA bundle
        (about 1.5 MB apiece). They share one cookie jar, so that they act as the one client
        they replace (a provider's load balancer may set a cookie on any of them).
        """
        total = config.max_connections
        count = -(-total // SHARD_CONNECTIONS)
        limits = [total // count + (1 if i < total % count else 0) for i in range(count)]
        tls, jar = httpx.create_ssl_context(), CookieJar()
        return cls([make_client(config, limit, tls, jar) for limit in limits], limits)

    def __repr__(self) -> str:
        return f"<Clients pools={len(self._clients)} free={self._free}>"

    @property
    def first(self) -> httpx.AsyncClient:
        """The client that builds requests (all pools share the same settings)."""
        return self._clients[0]

    @contextmanager
    def lease(self) -> Iterator[httpx.AsyncClient]:
        """Lend the client with the most free connections until the block ends."""
        free = self._free
        index = free.index(max(free))
        free[index] -= 1
        try:
            yield self._clients[index]
        finally:
            free[index] += 1

    async def aclose(self) -> None:
        """Close every pool's connections."""
        for client in self._clients:
            await client.aclose()


async def _close_iterator(iterator: AsyncIterator[bytes]) -> None:
    """Close a body iterator early (httpx types it as an iterator; it is an async generator)."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


async def read_bounded(response: httpx.Response, limit: int = MAX_ERROR_BODY) -> bytes:
    """Read at most ``limit`` bytes of a streamed response body (the rest is left unread).

    A transport error while reading ends the read early; what arrived is returned.
    """
    body = bytearray()
    chunks = response.aiter_bytes()
    try:
        async for chunk in chunks:
            body += chunk
            if len(body) >= limit:
                break
    except httpx.HTTPError:
        pass  # the status already says what failed; a broken body only loses its detail
    finally:
        await _close_iterator(chunks)
    return bytes(body[:limit])


class EventParser(Protocol):
    """Turns one attempt's SSE events into upstream events (one parser per attempt)."""

    def feed(self, events: list[SSEEvent], out: deque[UpstreamEvent]) -> bool:
        """Append the upstream events for ``events`` to ``out``; return true at the end marker.

        Raises ``UpstreamError`` for an error the provider sent inside the stream; events it
        appended before raising are still delivered first.
        """
        ...


async def open_response(
    client: httpx.AsyncClient,
    request: httpx.Request,
    *,
    provider: str,
    secret: str | None,
    expect_event_stream: bool,
) -> httpx.Response:
    """Send ``request`` and return the response once its head arrived with a 2xx status.

    Raises ``UpstreamError``: ``CONNECT``/``TIMEOUT`` when no response came, ``STATUS`` for an
    HTTP error (the first 64 KiB of the body are read for the provider's code and message),
    ``PROTOCOL`` for a redirect or a compressed body (the request asks for ``identity``), and,
    when ``expect_event_stream``, ``STREAM_ERROR`` or ``PROTOCOL`` for a JSON body where an
    event stream belongs.
    """
    # Compressed answers are refused, not decoded: a body that expands 1,000x would otherwise
    # be inflated whole, a network read at a time, into Baton's memory.
    request.headers["accept-encoding"] = "identity"
    try:
        response = await client.send(request, stream=True)
    except httpx.HTTPError as exc:
        failure = failure_from_exception(exc, started=False, secret=secret, provider=provider)
        logger.info("provider %s: no response: %s", provider, failure.describe())
        raise UpstreamError(failure) from exc
    try:
        status = response.status_code
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("identity", ""):
            failure = Failure(
                kind=FailureKind.PROTOCOL,
                message=f"answered HTTP {status} with Content-Encoding {encoding[:40]!r} "
                "although Baton asked for identity; its body was not read",
                status=status,
            )
        elif status >= 400:
            body = await read_bounded(response)
            failure = failure_from_status(
                status, response.reason_phrase, response.headers, body, secret=secret,
                provider=provider,
            )  # fmt: skip
        elif status >= 300 or status < 200:
            failure = Failure(
                kind=FailureKind.PROTOCOL,
                message=f"unexpected HTTP {status} {response.reason_phrase}".strip(),
                status=status,
            )
        elif expect_event_stream and _is_json(response):
            failure = _failure_from_json_body(await read_bounded(response), secret)
        else:
            return response
        logger.info("provider %s: refused: %s", provider, failure.describe())
        raise UpstreamError(failure)
    except BaseException:
        with trio.move_on_after(CLOSE_GRACE, shield=True):
            await response.aclose()
        raise


def _is_json(response: httpx.Response) -> bool:
    content_type: str = response.headers.get("content-type", "")
    return content_type.lower().startswith("application/json")


def _failure_from_json_body(body: bytes, secret: str | None) -> Failure:
    """Classify a 2xx JSON body where events belong.

    It is an error some servers send with status 200, or a server that ignored ``stream: true``.
    """
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        payload = None
    failure = failure_from_stream_error(payload, secret=secret)
    if failure is not None:
        return failure
    return Failure(
        kind=FailureKind.PROTOCOL,
        message="expected an event stream, the provider answered with a JSON document",
    )


class UpstreamEvents:
    """The async iterator of upstream events decoded from one streaming response.

    ``__anext__`` blocks until the provider sends enough bytes for an event. Cancelling it
    closes the body (httpx cannot resume a cancelled read), so a later ``__anext__`` raises
    ``UpstreamError`` (``RESET``) instead of pretending the stream ended. It raises
    ``UpstreamError`` (``RESET`` when the body breaks, ``STREAM_ERROR`` for an in-stream error,
    ``PROTOCOL`` for an undecodable stream) after first delivering every event that arrived
    before the fault. It stops at the provider's end marker or at a clean end of
    the body, finish reason or not: the session decides that a missing finish is an ``EOF``.

    Once text arrived and until the finish, each read first waits ``read_delay()`` seconds
    when that is above 0: under load more of the answer then arrives per read (see
    ``actors.policy._pace``). The first text and everything after the finish are never paced.
    """

    def __init__(
        self,
        response: httpx.Response,
        parser: EventParser,
        *,
        provider: str,
        secret: str | None,
        read_delay: Callable[[], float] | None = None,
    ) -> None:
        self._response = response
        self._chunks = response.aiter_bytes()
        self._decoder = SSEDecoder()
        self._parser = parser
        self._provider = provider
        self._secret = secret
        self._pending: deque[UpstreamEvent] = deque()
        self._error: UpstreamError | None = None
        self._finished = False
        self._complete = False  # the answer's finish reason or end marker arrived intact
        self._read_delay = read_delay
        self._paced = False  # text arrived and the answer is not complete: reads may wait

    def __repr__(self) -> str:
        return f"<UpstreamEvents provider={self._provider!r} finished={self._finished}>"

    def __aiter__(self) -> UpstreamEvents:
        return self

    async def __anext__(self) -> UpstreamEvent:
        pending = self._pending
        while not pending:
            if self._error is not None:
                error, self._error = self._error, None
                raise error
            if self._finished:
                raise StopAsyncIteration
            await self._read_more()
        return pending.popleft()

    async def _read_more(self) -> None:
        """Read one chunk and parse the events it completes into ``_pending``."""
        if self._paced and self._read_delay is not None:
            delay = self._read_delay()
            if delay > 0:
                await trio.sleep(delay)
        try:
            chunk = await self._chunks.__anext__()
        except StopAsyncIteration:
            self._finished = True
            self._parse(self._decoder.close())
            logger.debug("provider %s: stream ended", self._provider)
            return
        except httpx.HTTPError as exc:
            self._finished = True
            failure = failure_from_exception(
                exc, started=True, secret=self._secret, provider=self._provider
            )
            logger.info("provider %s: stream broke: %s", self._provider, failure.describe())
            raise UpstreamError(failure) from exc
        except BaseException:
            # Cancelled mid-read: the exception went through httpx's generators, which closed
            # the body. A later read must not mistake that for a clean end of the stream.
            self._finished = True
            self._error = UpstreamError(
                Failure(
                    kind=FailureKind.RESET, message="the stream closed when a read was cancelled"
                )
            )
            raise
        try:
            events = self._decoder.feed(chunk)
        except SSEError as exc:
            self._finished = True
            failure = Failure(kind=FailureKind.PROTOCOL, message=str(exc))
            logger.info("provider %s: %s", self._provider, failure.describe())
            raise UpstreamError(failure) from exc
        self._parse(events)

    def _parse(self, events: list[SSEEvent]) -> None:
        if not events:
            return
        try:
            pending = self._pending
            if self._parser.feed(events, pending):
                self._finished = True
                self._complete = True
            elif not self._complete and any(type(e) is Finish for e in pending):
                self._complete = True
            self._paced = not self._complete and (
                self._paced or any(type(e) is TextDelta for e in pending)
            )
        except UpstreamError as exc:
            self._finished = True
            self._error = exc
            logger.info("provider %s: error in stream: %s", self._provider, exc.failure.describe())

    async def aclose(self) -> None:
        """Stop reading and close the response.

        When the answer arrived complete, the few bytes left (the usage chunk, ``[DONE]``, the
        body's last chunk) are read first, bounded, so that httpx returns the connection to its
        pool for the next stream instead of dropping it. An unfinished body is never drained:
        that would pay for tokens nobody reads.
        """
        was_complete = self._complete and self._error is None
        self._finished = True
        self._pending.clear()
        try:
            if was_complete:
                await self._drain()
            await _close_iterator(self._chunks)
        finally:
            await self._response.aclose()

    async def _drain(self) -> None:
        drained = 0
        with trio.move_on_after(DRAIN_TIME):
            try:
                async for chunk in self._chunks:
                    drained += len(chunk)
                    if drained > DRAIN_BYTES:
                        return
            except httpx.HTTPError:
                return


@asynccontextmanager
async def open_event_stream(
    client: httpx.AsyncClient,
    request: httpx.Request,
    parser: EventParser,
    *,
    provider: str,
    secret: str | None,
    read_delay: Callable[[], float] | None = None,
) -> AsyncIterator[UpstreamEvents]:
    """Send a streaming request and yield its events; leaving closes the response at once.

    Entering raises ``UpstreamError`` as ``open_response`` does. The close on exit is shielded
    and bounded by ``CLOSE_GRACE`` so that it runs even when the attempt was cancelled.
    ``read_delay`` paces the reads once text arrived (see ``UpstreamEvents``).
    """
    response = await open_response(
        client, request, provider=provider, secret=secret, expect_event_stream=True
    )
    events = UpstreamEvents(
        response, parser, provider=provider, secret=secret, read_delay=read_delay
    )
    try:
        yield events
    finally:
        with trio.move_on_after(CLOSE_GRACE, shield=True):
            await events.aclose()


async def check(
    client: httpx.AsyncClient, request: httpx.Request, *, provider: str, secret: str | None
) -> None:
    """Send a probe request; return if it got a 2xx answer, else raise ``UpstreamError``."""
    response = await open_response(
        client, request, provider=provider, secret=secret, expect_event_stream=False
    )
    try:
        await read_bounded(response)
    finally:
        with trio.move_on_after(CLOSE_GRACE, shield=True):
            await response.aclose()
