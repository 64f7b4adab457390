"""The small interface through which the actors reach an upstream provider.

``transport.providers`` implements it over httpx; ``scenarios`` implements it in memory. The
actors never learn which.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Literal, Protocol

from ._messages import UpstreamEvent, UpstreamRequest

ProbeKind = Literal["models", "chat"]


class Provider(Protocol):
    """One upstream LLM provider.

    ``stream(request)`` returns an async context manager. Entering it sends the request and
    waits for the response head; it raises ``UpstreamError`` when the provider refuses (connect
    error, HTTP error status). The value it yields is an async iterator of upstream events
    (``TextDelta``, ``Finish``, ``UsageReport``, ``Malformed``); iteration raises
    ``UpstreamError`` when the stream breaks (reset, in-stream error event) and stops after
    ``Finish`` or at end of stream. Leaving the context closes the upstream request at once,
    whether or not the stream was consumed. Neither step applies timeouts of trio's clock on its
    own beyond connecting: the session puts deadlines around them.

    ``read_delay``, when given, says how many seconds to wait before each network read once the
    stream has produced text (the actor system's read pacing under load, usually 0). An
    implementation without network reads may ignore it.

    ``probe(kind)`` checks the provider cheaply (``models``: list models; ``chat``: a one-token
    completion) and raises ``UpstreamError`` when it is not well.
    """

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...

    def stream(
        self, request: UpstreamRequest, *, read_delay: Callable[[], float] | None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[UpstreamEvent]]: ...

    async def probe(self, kind: ProbeKind) -> None: ...
