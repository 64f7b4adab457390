"""The data that flows through Baton: requests, upstream events and client events.

Upstream events are what a provider adapter yields for one attempt (``TextDelta``,
``Finish``, ``Malformed``). Client events are what a stream session emits, numbered by
``seq`` from 0 without gaps (``Started``, ``Delta``, ``Failover``, ``Done``,
``StreamError``); exactly one terminal event (``Done`` or ``StreamError``) ends a stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import attrs

from ._vocab import StreamErrorCode

Role = Literal["system", "user", "assistant"]


@attrs.frozen(kw_only=True)
class Message:
    """One chat message."""

    role: Role
    content: str


@attrs.frozen(kw_only=True)
class Usage:
    """Token counts as one provider reported them for one upstream request.

    ``total_tokens`` is the provider's own total when it sent one (OpenAI does), else the sum.
    Baton never makes these numbers up: where a provider reported none, there is no ``Usage``.
    """

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int = attrs.field(
        default=attrs.Factory(lambda u: u.prompt_tokens + u.completion_tokens, takes_self=True)
    )


@attrs.frozen(kw_only=True)
class UpstreamRequest:
    """What one attempt asks a provider for.

    ``prefill`` is true when the last message is an assistant message whose text the provider
    should continue (not answer again). ``params`` holds the client's generation parameters
    (``max_tokens``, ``temperature``, ...) in OpenAI's names; adapters translate them.
    """

    model: str
    messages: tuple[Message, ...]
    params: Mapping[str, Any] = attrs.field(factory=dict)
    prefill: bool = False


# --- upstream events (one attempt) ---------------------------------------------------------


@attrs.frozen
class TextDelta:
    """A piece of answer text."""

    text: str


@attrs.frozen(kw_only=True)
class Finish:
    """The provider finished the answer; ``reason`` is an OpenAI finish reason."""

    reason: str
    usage: Usage | None = None
    model: str | None = None


@attrs.frozen(kw_only=True)
class UsageReport:
    """Usage that arrived apart from the finish reason (OpenAI's final usage chunk)."""

    usage: Usage


@attrs.frozen(kw_only=True)
class Malformed:
    """An event the adapter could not decode; skipped, but counted."""

    raw: str


UpstreamEvent = TextDelta | Finish | UsageReport | Malformed


# --- client events (one stream, numbered) ----------------------------------------------------


@attrs.frozen(kw_only=True)
class Started:
    stream: str
    seq: int
    ref: str | None
    route: str
    provider: str
    model: str


@attrs.frozen(kw_only=True)
class Delta:
    stream: str
    seq: int
    text: str


@attrs.frozen(kw_only=True)
class Failover:
    """The stream moved to another target.

    ``mode`` is ``continue`` (the text so far stands; what follows continues it) or ``reset``
    (discard this stream's text so far; a new answer follows). ``phase`` is ``prestream`` or
    ``midstream``.
    """

    stream: str
    seq: int
    from_provider: str
    to_provider: str
    to_model: str
    reason: str
    mode: Literal["continue", "reset"]
    phase: Literal["prestream", "midstream"]


@attrs.frozen(kw_only=True)
class Done:
    """The answer is complete.

    ``usage`` is the finishing attempt's own usage as its provider reported it (after a
    failover its prompt includes the delivered text it was asked to continue); ``None`` when
    that provider reported none.
    """

    stream: str
    seq: int
    finish_reason: str
    provider: str
    model: str
    usage: Usage | None


@attrs.frozen(kw_only=True)
class StreamError:
    """The stream ended without an answer; ``code`` is stable, ``message`` is for people.

    ``status``/``upstream_code`` carry the provider's rejection for ``upstream_rejected``.
    """

    stream: str | None
    seq: int
    code: StreamErrorCode
    message: str
    retryable: bool
    status: int | None = None
    upstream_code: str | None = None


ClientEvent = Started | Delta | Failover | Done | StreamError


def is_terminal(event: ClientEvent) -> bool:
    """True for the one event that ends a stream."""
    return isinstance(event, (Done, StreamError))
