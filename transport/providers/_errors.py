"""Translate httpx exceptions and provider error bodies into ``Failure`` objects.

Both adapters share these rules, so that the failover policy sees the same facts whatever the
provider:

================================================  ==========================================
what happened                                     ``FailureKind``
================================================  ==========================================
refused / connect timeout / reset before headers  ``CONNECT``
HTTP status >= 400 (body and Retry-After parsed)  ``STATUS``
read error, broken or truncated body mid-stream   ``RESET``
other httpx timeouts (pool, write)                ``TIMEOUT``
an error event inside the stream                  ``STREAM_ERROR``
anything else the provider should not have sent   ``PROTOCOL``
================================================  ==========================================

A ``Failure``'s message reaches clients (in ``upstream_rejected`` and
``all_providers_unavailable`` errors), so it holds only what is safe to show: the provider's own
``error.message`` when it sent a structured error (bounded to ``CLIENT_MESSAGE_CHARS``), else a
sentence of Baton's (``HTTP 500 Internal Server Error``, ``could not connect to provider a``).
Whatever else the provider said (an HTML page, a stack trace, a database URL) and the
exception's text (which names hosts and ports) go to the log only. Everything passes through
``redact`` with the provider's key (some providers echo it back in a 401 body) and with the
credentials of any ``scheme://user:password@`` URL removed: neither may reach a log or a client.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import orjson

from actors import Failure, FailureKind

#: Log lines quoting a provider are cut here; a provider's prose is for people, not the policy.
MAX_MESSAGE_CHARS = 500
#: The longest provider message a client is shown.
CLIENT_MESSAGE_CHARS = 300

logger = logging.getLogger(__name__)

#: The HTTP status an error type implies, for errors that arrive inside a 200 stream.
#: Keys are OpenAI codes and types, Anthropic types, and a few OpenAI-compatible servers' names.
STATUS_BY_ERROR_TYPE: Mapping[str, int] = {
    "invalid_request_error": 400,
    "context_length_exceeded": 400,
    "authentication_error": 401,
    "invalid_api_key": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "rate_limit_exceeded": 429,
    "insufficient_quota": 429,
    "api_error": 500,
    "server_error": 500,
    "internal_error": 500,
    "service_unavailable": 503,
    "timeout_error": 504,
    "overloaded": 529,
    "overloaded_error": 529,
}

_REDACTED = "[redacted]"
_SPACES = re.compile(r"\s+")
# The user information of a URL (``postgres://admin:hunter2@db``): a password, a token.
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/?#@]+@")


def redact(text: str, secret: str | None, *, limit: int = MAX_MESSAGE_CHARS) -> str:
    """Return ``text`` without ``secret`` and URL credentials, cut to ``limit`` characters."""
    if secret and secret in text:
        text = text.replace(secret, _REDACTED)
    text = _URL_CREDENTIALS.sub(r"\1" + _REDACTED + "@", text)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def _describe_exception(exc: BaseException) -> str:
    """A short sentence for an httpx exception (whose text is often empty)."""
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def failure_from_exception(
    exc: httpx.HTTPError, *, started: bool, secret: str | None = None, provider: str = "?"
) -> Failure:
    """Classify an httpx exception; ``started`` is true once the response head arrived.

    The message names the provider and the exception's type; its text (which names the
    upstream host and port) is logged, redacted, not put in the message.
    """
    logger.info("provider %s: %s", provider, redact(_describe_exception(exc), secret))
    name = type(exc).__name__
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        kind = FailureKind.CONNECT
    elif isinstance(exc, httpx.TimeoutException):
        # Pool and write timeouts; read timeouts are off (the session times reads with trio).
        kind = FailureKind.TIMEOUT
    elif isinstance(exc, (httpx.NetworkError, httpx.RemoteProtocolError)):
        # A RemoteProtocolError is how httpx reports "server disconnected without a response"
        # and "peer closed connection without sending complete message body".
        kind = FailureKind.RESET if started else FailureKind.CONNECT
    else:
        kind = FailureKind.PROTOCOL
    message = {
        FailureKind.CONNECT: f"could not connect to provider {provider} ({name})",
        FailureKind.TIMEOUT: f"provider {provider} timed out ({name})",
        FailureKind.RESET: f"the connection to provider {provider} broke ({name})",
    }.get(kind, f"the request to provider {provider} failed ({name})")
    return Failure(kind=kind, message=message)


def parse_retry_after(headers: httpx.Headers, *, now: datetime | None = None) -> float | None:
    """Return the delay in seconds that ``retry-after-ms`` or ``Retry-After`` asks for.

    ``retry-after-ms`` (OpenAI, more precise) wins. ``Retry-After`` is delta-seconds or an
    HTTP-date; a date is turned into a delay against the wall clock (``now``, default the
    current UTC time), the one place Baton reads it: the date *is* wall-clock time. Unparsable
    or non-finite values give ``None``; past dates give 0.
    """
    millis = headers.get("retry-after-ms")
    if millis is not None:
        seconds = _finite_float(millis)
        if seconds is not None:
            return max(seconds / 1000.0, 0.0)
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _finite_float(value)
    if seconds is not None:
        return max(seconds, 0.0)
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" means UTC with no claim about the local zone
        when = when.replace(tzinfo=UTC)
    now = now if now is not None else datetime.now(UTC)
    return max((when - now).total_seconds(), 0.0)


def _finite_float(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_error_object(payload: Any) -> tuple[str | None, str | None, int | None] | None:
    """Find an error in an OpenAI- or Anthropic-shaped payload: ``(code, message, status)``.

    Shapes: ``{"error": {"message", "type", "code"}}`` (OpenAI; vLLM puts an HTTP status in
    ``code``), ``{"type": "error", "error": {"type", "message"}}`` (Anthropic), and the flat
    ``{"object": "error", "message", "type", "code"}`` of older vLLM. ``code`` prefers the
    specific code (``context_length_exceeded``) to the broad type (``invalid_request_error``).
    Returns ``None`` when the payload holds no error.
    """
    if not isinstance(payload, dict):
        return None
    error = payload.get("error")
    if isinstance(error, str):  # some servers send {"error": "text"}
        return None, error, None
    if not isinstance(error, dict):
        if payload.get("object") != "error":
            return None
        error = payload
    raw_code = error.get("code")
    raw_type = error.get("type")
    status = raw_code if isinstance(raw_code, int) and 400 <= raw_code <= 599 else None
    code = raw_code if isinstance(raw_code, str) and raw_code else None
    if code is None and isinstance(raw_type, str) and raw_type:
        code = raw_type
    message = error.get("message")
    if not isinstance(message, str):
        message = None
    if status is None:
        for key in (code, raw_type):
            if isinstance(key, str) and key in STATUS_BY_ERROR_TYPE:
                status = STATUS_BY_ERROR_TYPE[key]
                break
    return code, message, status


def failure_from_stream_error(payload: Any, *, secret: str | None = None) -> Failure | None:
    """Turn an error payload that arrived inside a stream into a ``STREAM_ERROR`` failure."""
    found = parse_error_object(payload)
    if found is None:
        return None
    code, message, status = found
    return Failure(
        kind=FailureKind.STREAM_ERROR,
        message=redact(
            message or "the provider reported an error in the stream",
            secret,
            limit=CLIENT_MESSAGE_CHARS,
        ),
        status=status,
        code=code,
    )


def failure_from_status(
    status: int,
    reason: str,
    headers: httpx.Headers,
    body: bytes,
    *,
    secret: str | None = None,
    now: datetime | None = None,
    provider: str = "?",
) -> Failure:
    """Turn an HTTP error response (status, head and the first bytes of body) into a failure.

    The message is the provider's ``error.message`` if the body is a structured error object,
    else ``HTTP <status> <reason>``; the start of any other body is logged, redacted.
    """
    code = message = None
    try:
        payload = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        payload = None
    found = parse_error_object(payload)
    if found is not None:
        code, message, _ = found
        if not isinstance(payload, dict) or not isinstance(payload.get("error", payload), dict):
            message = None  # {"error": "text"}: whatever text a server put there
    head = f"HTTP {status} {reason[:40]}".strip()
    if message is None:
        # Not a structured error (an HTML page from a proxy, a stack trace): for the log only.
        text = _SPACES.sub(" ", body[:MAX_MESSAGE_CHARS].decode("utf-8", "replace")).strip()
        if text:
            logger.info("provider %s: %s: %s", provider, head, redact(text, secret))
            message = f"{head} (the provider's answer was not a structured error; see Baton's log)"
        else:
            message = head
    return Failure(
        kind=FailureKind.STATUS,
        message=redact(message, secret, limit=CLIENT_MESSAGE_CHARS),
        status=status,
        code=code,
        retry_after=parse_retry_after(headers, now=now),
    )
