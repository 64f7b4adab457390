"""Baton's error tree.

Every error that Baton raises on purpose derives from ``BatonError``::

    BatonError
    ├── ConfigError          a configuration value is wrong; names the key
    ├── RequestError         a client request is wrong (``code`` is stable, e.g. ``bad_request``)
    └── UpstreamError        one upstream attempt failed; ``failure`` says how

Foreign exceptions (httpx, OS errors) are translated into ``UpstreamError`` at the transport
boundary with ``raise UpstreamError(...) from exc`` so that the actors never see them.
"""

from __future__ import annotations

import enum

import attrs

from ._vocab import RequestErrorCode


class BatonError(Exception):
    """Root of every error Baton raises on purpose."""


class ConfigError(BatonError):
    """A configuration value is invalid.

    ``where`` names the file and key (``baton.toml: providers.openai.cooldown``); the message is
    a sentence a person can act on.
    """

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}" if where else message)
        self.where = where
        self.message = message


class RequestError(BatonError):
    """A client request is invalid; ``code`` is the stable machine code sent to the client.

    ``param``: the request field at fault, when one is (OpenAI's errors name it).
    """

    def __init__(
        self, code: RequestErrorCode, message: str, *, status: int = 400, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.param = param


class FailureKind(enum.Enum):
    """How an upstream attempt failed, as far as the transport could tell."""

    CONNECT = "connect"  # refused, reset or timed out before any response
    STATUS = "status"  # an HTTP error status, with the provider's body
    RESET = "reset"  # the connection broke after the response started
    TIMEOUT = "timeout"  # no response, no first token, or silence too long
    EOF = "eof"  # the stream ended without a finish reason
    STREAM_ERROR = "stream_error"  # the provider sent an error event inside the stream
    MALFORMED = "malformed"  # too many undecodable events
    PROTOCOL = "protocol"  # something else the provider should not have sent
    ANSWER_TOO_LARGE = "answer_too_large"  # the answer passed the provider's max_answer_bytes
    STREAM_TOO_LONG = "stream_too_long"  # the attempt outlived the provider's max_stream_duration
    # A JSON answer (response_format) that a continuation spliced does not parse (or match its
    # strict schema): the joined text is unusable, so the answer starts afresh.
    INVALID_JSON = "invalid_json"


@attrs.frozen(kw_only=True)
class Failure:
    """A classified upstream failure: the facts the failover policy decides on.

    ``status`` is the HTTP status (or the status implied by an in-stream error type);
    ``code`` is the provider's machine code (``context_length_exceeded``,
    ``overloaded_error``); ``retry_after`` is a delay in seconds when the provider named one.
    """

    kind: FailureKind
    message: str
    status: int | None = None
    code: str | None = None
    retry_after: float | None = None

    def describe(self) -> str:
        """One short phrase for logs and client messages (never contains secrets)."""
        parts = [self.kind.value]
        if self.status is not None:
            parts.append(str(self.status))
        if self.code:
            parts.append(self.code)
        head = " ".join(parts)
        return f"{head}: {self.message}" if self.message else head


def clip(value: object, limit: int = 64) -> str:
    """``repr(value)``, cut to about ``limit`` characters, for a log line or an error message.

    Whatever a client sent (a model name, a path, a field) may be megabytes long: a message
    quotes its start and says how long it was, ``'gpt-4o…' (4000000 characters)``.
    """
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit]!r}… ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


class UpstreamError(BatonError):
    """One upstream attempt failed; ``failure`` carries the classification."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.describe())
        self.failure = failure
