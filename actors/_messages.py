"""The data that flows through Baton: requests, upstream events and client events.

Requests are in OpenAI's Chat Completions terms, whatever the provider: a ``Message`` carries
text or content parts (``text``, ``image_url``, ``input_audio``, ``file``), an assistant's
``tool_calls`` or a tool result's ``tool_call_id``; everything else the client asked for
(``tools``, ``response_format``, ``reasoning_effort``, fields Baton does not know) is in
``UpstreamRequest.params`` under OpenAI's names, for the adapters to send or translate.

Upstream events are what a provider adapter yields for one attempt (``TextDelta``,
``ReasoningDelta``, ``ToolCallDelta``, ``Finish``, ``Malformed``). Client events are what a
stream session emits, numbered by ``seq`` from 0 without gaps (``Started``, ``Delta``,
``Reasoning``, ``ToolCall``, ``ToolCallPart``, ``Failover``, ``Done``, ``StreamError``);
exactly one terminal event (``Done`` or ``StreamError``) ends a stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import attrs

from ._vocab import StreamErrorCode

Role = Literal["system", "user", "assistant", "tool"]

#: One content part in OpenAI's shape, checked by ``parse_messages``: ``{"type": "text",
#: "text": ...}``, ``{"type": "image_url", "image_url": {"url": ..., "detail": ...}}``,
#: ``{"type": "input_audio", "input_audio": {"data": ..., "format": ...}}``, ``{"type": "file",
#: "file": {...}}`` or an assistant's ``{"type": "refusal", "refusal": ...}``.
ContentPart = Mapping[str, Any]


@attrs.frozen(kw_only=True)
class FunctionCall:
    """One complete tool call: ``arguments`` is the JSON text of the arguments, as OpenAI sends
    it (an object; ``"{}"`` for none)."""

    id: str
    name: str
    arguments: str


@attrs.frozen(kw_only=True)
class Message:
    """One chat message.

    ``content`` is text, content parts, or None (an assistant message that only calls tools).
    ``tool_calls`` are an assistant's calls; ``tool_call_id`` names the call a ``tool``
    message answers.
    """

    role: Role
    content: str | tuple[ContentPart, ...] | None
    tool_calls: tuple[FunctionCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None

    @property
    def text(self) -> str:
        """The message's text: its content, or its text parts joined; "" for none."""
        content = self.content
        if content is None:
            return ""
        if isinstance(content, str):
            return content
        return "".join(p["text"] for p in content if p.get("type") == "text")


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
    # The details a provider reported, None where it reported nothing: prompt tokens read from
    # its cache (OpenAI's ``prompt_tokens_details.cached_tokens``, Anthropic's
    # ``cache_read_input_tokens``), written to it (Anthropic's ``cache_creation_input_tokens``),
    # and completion tokens spent reasoning (``completion_tokens_details.reasoning_tokens``).
    cached_tokens: int | None = None
    cache_creation_tokens: int | None = None
    reasoning_tokens: int | None = None


@attrs.frozen(kw_only=True)
class UpstreamRequest:
    """What one attempt asks a provider for.

    ``prefill`` is true when the last message is an assistant message whose text the provider
    should continue (not answer again). ``params`` holds every other field the client sent, in
    OpenAI's names: generation parameters (``max_tokens``, ``temperature``, ...), ``tools``,
    ``tool_choice``, ``response_format``, ``reasoning_effort``, ``logprobs`` and fields Baton
    does not know. An OpenAI-kind adapter sends them as they are; others translate what they
    can and drop the rest.
    """

    model: str
    messages: tuple[Message, ...]
    params: Mapping[str, Any] = attrs.field(factory=dict)
    prefill: bool = False


# --- upstream events (one attempt) ---------------------------------------------------------


@attrs.frozen
class TextDelta:
    """A piece of answer text; ``logprobs`` are its tokens' entries (OpenAI's
    ``choices[0].logprobs.content``) when the client asked for them."""

    text: str
    logprobs: tuple[Any, ...] | None = None


@attrs.frozen
class ReasoningDelta:
    """A piece of the model's reasoning (``delta.reasoning_content``, Anthropic ``thinking``):
    shown to the client beside the answer, never part of its text."""

    text: str


@attrs.frozen(kw_only=True)
class ToolCallDelta:
    """A fragment of tool call ``index`` of this response: the first names ``id`` and ``name``,
    the rest add to ``arguments`` (JSON text, arriving in pieces)."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


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


UpstreamEvent = TextDelta | ReasoningDelta | ToolCallDelta | Finish | UsageReport | Malformed


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
    logprobs: tuple[Any, ...] | None = None


@attrs.frozen(kw_only=True)
class Reasoning:
    """Reasoning text of the model (never part of the answer's text)."""

    stream: str
    seq: int
    text: str


@attrs.frozen(kw_only=True)
class ToolCall:
    """One complete tool call of the answer, sent once its response finished and its
    ``arguments`` parsed as JSON (``tool_streaming = "atomic"``, the default)."""

    stream: str
    seq: int
    index: int
    id: str
    name: str
    arguments: str


@attrs.frozen(kw_only=True)
class ToolCallPart:
    """A fragment of a tool call as the provider sent it (``tool_streaming = "live"``): the
    first of a call names ``id`` and ``name``; ``arguments`` add up to the call's JSON."""

    stream: str
    seq: int
    index: int
    id: str | None
    name: str | None
    arguments: str


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


ClientEvent = Started | Delta | Reasoning | ToolCall | ToolCallPart | Failover | Done | StreamError


def is_terminal(event: ClientEvent) -> bool:
    """True for the one event that ends a stream."""
    return isinstance(event, (Done, StreamError))
