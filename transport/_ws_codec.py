"""The frames of WebSocket protocol v1: client frames checked, stream events encoded.

Every frame is a JSON text frame; the server that carries them is ``transport._ws``.

Client -> server::

    {"type": "start", "ref": "q1", "model": "default", "messages": [...], "params": {...},
     "tools": [...], "tool_choice": "auto", "parallel_tool_calls": true,
     "response_format": {...}}
    {"type": "cancel", "stream": "st_..."}
    {"type": "resume", "stream": "st_...", "after": 41, "ref": "q1"}

A ``start`` takes what the HTTP API takes, in Chat Completions shapes: ``messages`` with content
parts, an assistant's ``tool_calls`` and ``tool`` results (``actors.parse_messages``); the
request's ``tools``, ``tool_choice``, ``parallel_tool_calls`` and ``response_format`` beside
``messages`` (a null one counts as absent); the generation parameters, ``reasoning_effort``,
``logprobs`` and ``top_logprobs`` in ``params`` (``actors.parse_params``, unknown ones refused).
A ``resume`` names a stream (of this or an earlier connection) and ``after``, the seq of the last
event the client holds (-1: none); its optional ``ref`` comes back on an ``error`` answering it.

Server -> client: ``started``, ``delta``, ``reasoning``, ``tool_call`` (atomic, the default: a
whole call, its ``arguments`` a JSON object's text), ``tool_call_part`` (a route with
``tool_streaming = "live"``: fragments; ``id`` and ``name`` only on a call's first),
``failover``, ``done`` and ``error`` (see ``encode_event``). Every event of a stream carries
``stream`` and ``seq`` (0, 1, 2, ... without gaps) and exactly one ``done`` or ``error`` ends it.
A stream's ``error`` also carries the start's ``ref`` when it had one: a stream can fail before
any ``started`` told the client its id.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import orjson

from actors import (
    ClientEvent,
    Delta,
    Done,
    Failover,
    Message,
    Reasoning,
    RequestError,
    RequestErrorCode,
    Started,
    StreamError,
    ToolCall,
    ToolCallPart,
    Usage,
    clip,
    parse_messages,
    parse_params,
)

# The request's fields a start carries beside ``messages``, rather than in ``params``.
_REQUEST_FIELDS = ("tools", "tool_choice", "parallel_tool_calls", "response_format")
_START_FIELDS = frozenset({"type", "ref", "model", "messages", "params", *_REQUEST_FIELDS})
_CANCEL_FIELDS = frozenset({"type", "stream"})
_RESUME_FIELDS = frozenset({"type", "stream", "after", "ref"})


@attrs.frozen(kw_only=True)
class StartRequest:
    """A checked ``start`` frame."""

    ref: str | None
    route: str
    messages: tuple[Message, ...]
    params: Mapping[str, Any]


@attrs.frozen(kw_only=True)
class CancelRequest:
    """A checked ``cancel`` frame."""

    stream: str


@attrs.frozen(kw_only=True)
class ResumeRequest:
    """A checked ``resume`` frame: send ``stream``'s events after seq ``after``, then the rest."""

    stream: str
    after: int  # whether the stream has it (and still holds what follows) is Baton's to say
    ref: str | None


ClientMessage = StartRequest | CancelRequest | ResumeRequest


class ClientFrameError(RequestError):
    """A client frame the server cannot act on.

    ``ref`` is the start's ref and ``stream`` the stream a cancel named, when known, so the
    error frame can say which request it answers.
    """

    def __init__(
        self, code: RequestErrorCode, message: str, *, ref: str | None = None,
        stream: str | None = None, retryable: bool = False,
    ) -> None:  # fmt: skip
        super().__init__(code, message)
        self.ref = ref
        self.stream = stream
        self.retryable = retryable


def decode_client_message(frame: str | bytes) -> ClientMessage:
    """Parse and check one client frame.

    Raises ``ClientFrameError`` (``bad_request``) naming the first thing wrong; messages and
    params are checked by ``actors.parse_messages`` / ``parse_params``. Whether the route
    exists is for ``Baton.start_stream`` to say.
    """
    if not isinstance(frame, str):
        raise ClientFrameError(
            "bad_request", "Binary frames are not part of protocol v1; send JSON text frames."
        )
    try:
        data = orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        raise ClientFrameError("bad_request", f"The frame is not valid JSON ({exc}).") from None
    if not isinstance(data, dict):
        raise ClientFrameError("bad_request", "A frame must be a JSON object with a 'type'.")
    kind = data.get("type")
    if kind == "start":
        ref = data.get("ref")
        if ref is not None and not isinstance(ref, str):
            raise ClientFrameError("bad_request", "'ref' must be a string.")
        try:
            _check_fields(data, _START_FIELDS)
            route = data.get("model")
            if not isinstance(route, str):
                raise RequestError("bad_request", "'model' must be a string naming a route.")
            messages = parse_messages(data.get("messages"))
            params = parse_params(_params_of(data))
        except RequestError as exc:
            raise ClientFrameError(exc.code, exc.message, ref=ref) from None
        return StartRequest(ref=ref, route=route, messages=messages, params=params)
    if kind == "cancel":
        _check_fields(data, _CANCEL_FIELDS)
        stream = data.get("stream")
        if not isinstance(stream, str):
            raise ClientFrameError("bad_request", "'stream' must be the id of a stream to cancel.")
        return CancelRequest(stream=stream)
    if kind == "resume":
        return _resume(data)
    raise ClientFrameError(
        "bad_request", f"Unknown frame type {clip(kind)}; expected 'start', 'cancel' or 'resume'."
    )


def _resume(data: dict[str, Any]) -> ResumeRequest:
    ref = data.get("ref")
    if ref is not None and not isinstance(ref, str):
        raise ClientFrameError("bad_request", "'ref' must be a string.")
    stream = data.get("stream")
    stream = stream if isinstance(stream, str) else None
    try:
        _check_fields(data, _RESUME_FIELDS)
    except ClientFrameError as exc:
        raise ClientFrameError(exc.code, exc.message, ref=ref, stream=stream) from None
    if stream is None:
        raise ClientFrameError(
            "bad_request", "'stream' must be the id of the stream to resume.", ref=ref
        )
    after = data.get("after")
    # JSON's 41.0 or true are not seqs: a client that sends one has lost track of its events.
    if isinstance(after, bool) or not isinstance(after, int) or after < -1:
        got = "it is missing" if "after" not in data else f"not {clip(after)}"
        raise ClientFrameError(
            "bad_request",
            f"'after' must be the seq of the last event you hold of the stream, an integer "
            f"(-1: none); {got}.",
            ref=ref, stream=stream,
        )  # fmt: skip
    return ResumeRequest(stream=stream, after=after, ref=ref)


def _check_fields(data: dict[str, Any], known: frozenset[str]) -> None:
    # Unknown fields are refused rather than ignored, so a typo does not pass silently.
    unknown = data.keys() - known
    if unknown:
        raise ClientFrameError(
            "bad_request", f"Unknown field(s) {', '.join(map(clip, sorted(unknown)[:5]))} in a "
            f"{clip(data['type'])} frame; known fields: {', '.join(sorted(known))}.",
        )  # fmt: skip


def _params_of(data: dict[str, Any]) -> Any:
    """A start's ``params`` with its request fields (``tools``, ...) joined in, for checking."""
    raw = data.get("params")
    fields = {key: data[key] for key in _REQUEST_FIELDS if data.get(key) is not None}
    if isinstance(raw, Mapping):
        # One place for each field, so that two values for one never have to be reconciled.
        for key in _REQUEST_FIELDS:
            if key in raw:
                raise RequestError(
                    "bad_request", f"'{key}' goes beside 'messages' in a start frame, not in "
                    "'params'; 'params' holds generation parameters, reasoning_effort, logprobs "
                    "and top_logprobs.",
                )  # fmt: skip
        return {**raw, **fields} if fields else raw
    return fields if raw is None and fields else raw


def encode_event(event: ClientEvent, *, ref: str | None = None) -> str:
    """Encode one stream event as the text of its frame.

    ``ref`` (the start's ref) is added to an ``error``, whose stream the client may never have
    seen started. Raises ``TypeError`` for anything that is not a client event.
    """
    data: dict[str, Any]
    match event:
        case Delta():
            data = {"type": "delta", "stream": event.stream, "seq": event.seq, "text": event.text}
            if event.logprobs is not None:
                data["logprobs"] = event.logprobs  # OpenAI's entries, one per token
        case Reasoning():
            data = {
                "type": "reasoning", "stream": event.stream, "seq": event.seq, "text": event.text
            }  # fmt: skip
        case ToolCall() | ToolCallPart():
            data = {
                "type": "tool_call" if type(event) is ToolCall else "tool_call_part",
                "stream": event.stream, "seq": event.seq, "index": event.index, "id": event.id,
                "name": event.name, "arguments": event.arguments,
            }  # fmt: skip
        case Started():
            data = {
                "type": "started", "stream": event.stream, "ref": event.ref, "seq": event.seq,
                "route": event.route, "provider": event.provider, "model": event.model,
            }  # fmt: skip
        case Failover():
            data = {
                "type": "failover", "stream": event.stream, "seq": event.seq,
                "from": event.from_provider, "to": event.to_provider, "model": event.to_model,
                "reason": event.reason, "mode": event.mode, "phase": event.phase,
            }  # fmt: skip
        case Done():
            usage = event.usage
            data = {
                "type": "done", "stream": event.stream, "seq": event.seq,
                "finish_reason": event.finish_reason, "provider": event.provider,
                "model": event.model,
                # The provider's own numbers, or null when it reported none.
                "usage": None if usage is None else _usage(usage),
            }  # fmt: skip
        case StreamError():
            data = {
                "type": "error", "stream": event.stream, "seq": event.seq, "code": event.code,
                "message": event.message, "retryable": event.retryable,
            }  # fmt: skip
            if event.status is not None:
                data["status"] = event.status
            if event.upstream_code is not None:
                data["upstream_code"] = event.upstream_code
            if ref is not None:
                data["ref"] = ref
        case _:
            raise TypeError(f"not a client event: {event!r}")
    return orjson.dumps(data).decode()


def _usage(usage: Usage) -> dict[str, int]:
    data = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    # The details only where the provider reported them: absent is "not known", never 0.
    for key in ("cached_tokens", "cache_creation_tokens", "reasoning_tokens"):
        value = getattr(usage, key)
        if value is not None:
            data[key] = value
    return data


def encode_protocol_error(error: ClientFrameError) -> str:
    """Encode the ``error`` frame answering a frame the server could not act on."""
    data: dict[str, Any] = {
        "type": "error", "stream": error.stream, "seq": None, "code": error.code,
        "message": error.message, "retryable": error.retryable,
    }  # fmt: skip
    if error.ref is not None:
        data["ref"] = error.ref
    return orjson.dumps(data).decode()
