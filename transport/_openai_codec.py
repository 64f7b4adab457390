"""OpenAI's Chat Completions wire format: requests in, chunks, completions and errors out.

``parse_chat_request`` checks a request body and turns it into what ``Baton.start_stream``
takes; ``ChunkEncoder`` writes a stream's events as ``chat.completion.chunk`` SSE events with
the constant parts of each chunk encoded once per stream (text, reasoning, tool calls, log
probabilities); ``Answer`` puts a stream together for ``completion_body``, and ``error_body``
builds error answers. Everything here is pure: the ASGI app (``transport._http``) does the
I/O, and ``transport._sse_resume`` keeps a streamed answer's chunks resumable.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs
import orjson

from actors import (
    BatonError,
    Message,
    RequestError,
    StreamError,
    StreamErrorCode,
    ToolCall,
    ToolCallPart,
    Usage,
    clip,
    parse_messages,
    parse_params,
)

# Fields Baton answers itself; every other field goes upstream (``actors.parse_params``
# checks those it knows and forwards the rest for an OpenAI-kind provider to judge).
_OWN_FIELDS = frozenset({"model", "messages", "stream", "n", "stream_options"})
# OpenAI's deprecated function calling, with what replaced it.
_LEGACY = {"functions": "tools", "function_call": "tool_choice"}
# An unknown field is forwarded only if it could be a real API's field name; anything else
# (a 4 MB key, a key with spaces) is refused here rather than sent to a provider.
_FIELD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


class APIError(BatonError):
    """A request the HTTP API answers with an OpenAI-shaped error; ``param`` names the field.

    ``code`` is in OpenAI's vocabulary (``invalid_value``, ``model_not_found``, ...), which the
    OpenAI SDKs know, not in Baton's own (``actors.RequestErrorCode``).
    """

    def __init__(self, status: int, code: str, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param


@attrs.frozen(kw_only=True)
class ChatRequest:
    """A checked chat completion request: which route, what to send, how to answer."""

    route: str
    messages: tuple[Message, ...]
    params: Mapping[str, Any]
    stream: bool
    include_usage: bool


def _type_error(field: str, expected: str) -> APIError:
    return APIError(400, "invalid_type", f"'{field}' must be {expected}.", param=field)


def parse_chat_request(body: bytes) -> ChatRequest:
    """Check a ``POST /v1/chat/completions`` body; raises ``APIError`` naming what is wrong.

    Every field beside ``model``, ``messages``, ``stream``, ``n`` and ``stream_options`` goes
    upstream: fields Baton knows are checked first, unknown ones are forwarded as they are
    (an OpenAI-kind provider judges them; others report which they drop). An explicit null
    is absent, as OpenAI treats it. ``n`` above 1 and the legacy ``functions`` /
    ``function_call`` are refused with a 400 that says what to send instead.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise APIError(
            400, "invalid_json", f"The request body is not valid JSON ({exc})."
        ) from None
    if not isinstance(data, dict):
        raise APIError(400, "invalid_type", "The request body must be a JSON object.")
    route = data.get("model")
    if route is None:
        raise APIError(
            400, "missing_required_parameter", "You must provide a model parameter.", param="model"
        )
    if not isinstance(route, str) or not route:
        raise _type_error("model", "a non-empty string")
    raw_messages = data.get("messages")
    if raw_messages is None:
        raise APIError(
            400,
            "missing_required_parameter",
            "Missing required parameter: 'messages'.",
            param="messages",
        )
    if not isinstance(raw_messages, list):
        raise _type_error("messages", "a list of {role, content} objects")
    try:
        messages = parse_messages([_developer_as_system(m) for m in raw_messages])
    except RequestError as exc:
        raise APIError(400, "invalid_value", exc.message, param="messages") from None
    stream = data.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _type_error("stream", "true or false")
    n = data.get("n")
    if n is not None:
        if not isinstance(n, int) or isinstance(n, bool):
            raise _type_error("n", "an integer")
        if n != 1:
            raise APIError(
                400,
                "unsupported_value",
                "Baton streams one choice per request; 'n' must be 1.",
                param="n",
            )
    for field, instead in _LEGACY.items():
        if data.get(field) is not None:
            raise APIError(
                400, "unsupported_parameter",
                f"'{field}' is OpenAI's deprecated function calling, which Baton does not "
                f"translate; send '{instead}' instead.", param=field,
            )  # fmt: skip
    params = _params(data)
    include_usage = False
    options = data.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise _type_error("stream_options", "an object")
        flag = options.get("include_usage")
        if flag is not None and not isinstance(flag, bool):
            raise _type_error("stream_options.include_usage", "true or false")
        include_usage = bool(flag)
    return ChatRequest(
        route=route,
        messages=messages,
        params=params,
        stream=bool(stream),
        include_usage=include_usage,
    )


def _params(data: Mapping[str, Any]) -> dict[str, Any]:
    """The fields that go upstream, checked by ``actors.parse_params``."""
    raw = {k: v for k, v in data.items() if k not in _OWN_FIELDS and v is not None}
    for field in raw:
        if not _FIELD_NAME.fullmatch(field):
            short = len(field) <= 64
            raise APIError(
                400, "unknown_parameter",
                # OpenAI's words; a name too long to quote whole is cut (and not echoed).
                f"Unrecognized request argument supplied: {field if short else clip(field)}; "
                "a field name is a letter then up to 63 letters, digits or underscores.",
                param=field if short else None,
            )  # fmt: skip
    try:
        return parse_params(raw, forward_unknown=True)
    except RequestError as exc:
        param = exc.param if exc.param in raw else None
        raise APIError(400, "invalid_value", exc.message, param=param) from None


def _developer_as_system(message: Any) -> Any:
    # OpenAI's newer models call the system prompt "developer"; every provider knows "system".
    if isinstance(message, dict) and message.get("role") == "developer":
        return {**message, "role": "system"}
    return message


# Baton's request error codes as the HTTP API names them (OpenAI's where it has one).
REQUEST_ERROR_CODES = {"bad_request": "invalid_value", "unsupported": "unsupported_capability"}


# --- errors ------------------------------------------------------------------------------------

# The HTTP status a stream's error answers with when no text was sent yet.
_STREAM_ERROR_STATUS: Mapping[StreamErrorCode, int] = {
    "all_providers_unavailable": 503,
    "overloaded": 429,
    "shutting_down": 503,
    "internal_error": 500,
}


def error_type(status: int) -> str:
    """OpenAI's error ``type`` for an HTTP status."""
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def error_body(status: int, code: str, message: str, param: str | None = None) -> bytes:
    """The JSON of an OpenAI-shaped error answer."""
    return orjson.dumps(
        {"error": {"message": message, "type": error_type(status), "param": param, "code": code}}
    )


def stream_error_status(error: StreamError) -> int:
    """The HTTP status that answers a stream that failed before any text.

    A provider's rejection keeps the provider's status, so the client sees the 400 or 404 it
    would have had without Baton in between.
    """
    if error.code == "upstream_rejected":
        status = error.status
        return status if status is not None and 400 <= status < 600 else 502
    return _STREAM_ERROR_STATUS.get(error.code, 502)


def stream_error_code(error: StreamError) -> str:
    """The ``code`` a client sees: the provider's own for a rejection, else Baton's."""
    if error.code == "upstream_rejected" and error.upstream_code:
        return error.upstream_code
    return error.code


def stream_error_body(error: StreamError) -> bytes:
    """The JSON error answer for a stream that failed before any text."""
    return error_body(stream_error_status(error), stream_error_code(error), error.message)


# --- answers -----------------------------------------------------------------------------------


def usage_object(usage: Usage) -> dict[str, Any]:
    """OpenAI's ``usage``, with the details the provider reported (and only those).

    Cache reads and reasoning tokens go where OpenAI puts them; an Anthropic provider's cache
    writes, which OpenAI has no field for, go where Anthropic's API puts them.
    """
    document: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }
    if usage.cached_tokens is not None:
        document["prompt_tokens_details"] = {"cached_tokens": usage.cached_tokens}
    if usage.reasoning_tokens is not None:
        document["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning_tokens}
    if usage.cache_creation_tokens is not None:
        document["cache_creation_input_tokens"] = usage.cache_creation_tokens
    return document


def tool_call_object(index: int | None, call_id: str, name: str, arguments: str) -> dict[str, Any]:
    """One complete call as OpenAI writes it (``index`` only in a streamed delta)."""
    call: dict[str, Any] = {} if index is None else {"index": index}
    call.update(id=call_id, type="function", function={"name": name, "arguments": arguments})
    return call


class LiveCalls:
    """Numbers live tool call fragments (``ToolCallPart``) as the client sees them.

    A provider that numbers every call 0 and tells them apart by id gets its calls numbered in
    order, as ``actors`` does for atomic calls; a call without an id gets ``call_<index>``.
    """

    def __init__(self) -> None:
        self._calls: dict[int, tuple[int, str]] = {}  # provider's index -> (client's, id)
        self.count = 0  # calls begun

    def number(self, part: ToolCallPart) -> tuple[int, str, bool]:
        """The client's index and id of ``part``'s call, and whether ``part`` begins it."""
        known = self._calls.get(part.index)
        if known is not None and not (part.id and part.id != known[1]):
            return known[0], known[1], False
        index = self.count
        self.count += 1
        call_id = part.id or f"call_{index}"
        self._calls[part.index] = (index, call_id)
        return index, call_id, True


class ChunkEncoder:
    """Writes one stream's ``chat.completion.chunk`` SSE events.

    The bytes before and after a delta's text depend only on the stream (id, created, model),
    so they are encoded once, and again only when a failover changes the model: a delta costs
    one ``orjson.dumps`` of its text and a concatenation.
    """

    def __init__(
        self, *, completion_id: str, created: int, model: str, include_usage: bool
    ) -> None:
        self._head = (
            b'data: {"id":' + orjson.dumps(completion_id)
            + b',"object":"chat.completion.chunk","created":' + str(created).encode() + b',"model":'
        )  # fmt: skip
        self._end = (b',"usage":null' if include_usage else b"") + b"}\n\n"
        self._delta_tail = b'},"logprobs":null,"finish_reason":null}]' + self._end
        self.model = ""
        self.set_model(model)
        self._parts = LiveCalls()

    @property
    def live_calls(self) -> int:
        """How many live tool calls (``tool_call_part``) the chunks have begun."""
        return self._parts.count

    def set_model(self, model: str) -> None:
        """Name ``model`` in the chunks from now on."""
        if model == self.model:
            return
        self.model = model
        self._choice = (
            self._head
            + orjson.dumps(model)
            + b',"system_fingerprint":null,"choices":[{"index":0,"delta":'
        )
        self._content = self._choice + b'{"content":'

    def role(self, *, content: bool = True) -> bytes:
        """The first chunk: the assistant's role and empty content (null, as OpenAI sends it,
        when the answer begins with a tool call: ``content=False``)."""
        empty = b'""' if content else b"null"
        return self._choice + b'{"role":"assistant","content":' + empty + self._delta_tail

    def delta(self, text: str, logprobs: tuple[Any, ...] | None = None) -> bytes:
        """A chunk of answer text, with its tokens' ``logprobs.content`` when there are any."""
        if logprobs is None:  # the fast path: one dumps of the text
            return self._content + orjson.dumps(text) + self._delta_tail
        return self._chunk({"content": text}, {"content": list(logprobs), "refusal": None})

    def reasoning(self, text: str) -> bytes:
        """A chunk of reasoning, as ``delta.reasoning_content`` (vLLM's and DeepSeek's name)."""
        return self._chunk({"reasoning_content": text})

    def tool_call(self, call: ToolCall) -> bytes:
        """One chunk that carries a whole tool call (``tool_streaming = "atomic"``)."""
        entry = tool_call_object(call.index, call.id, call.name, call.arguments)
        return self._chunk({"tool_calls": [entry]})

    def tool_call_part(self, part: ToolCallPart) -> bytes:
        """A live tool call fragment as OpenAI streams one: the first of a call carries
        ``id``, ``type`` and the function's name; the rest only argument pieces."""
        index, call_id, first = self._parts.number(part)
        if first:
            entry = tool_call_object(index, call_id, part.name or "", part.arguments)
        else:
            entry = {"index": index, "function": {"arguments": part.arguments}}
        return self._chunk({"tool_calls": [entry]})

    def _chunk(self, delta: dict[str, Any], logprobs: dict[str, Any] | None = None) -> bytes:
        return (
            self._choice + orjson.dumps(delta) + b',"logprobs":' + orjson.dumps(logprobs)
            + b',"finish_reason":null}]' + self._end
        )  # fmt: skip

    def finish(self, reason: str) -> bytes:
        """The chunk with an empty delta and the finish reason."""
        return (
            self._choice
            + b'{},"logprobs":null,"finish_reason":'
            + orjson.dumps(reason)
            + b"}]"
            + self._end
        )

    def usage(self, usage: Usage | None) -> bytes:
        """The final chunk of ``stream_options.include_usage``: no choices, the usage.

        Nothing when the provider reported no usage: like a server that does not count, Baton
        leaves the chunk out rather than invent numbers (every other chunk says ``null``).
        """
        if usage is None:
            return b""
        usage_json = orjson.dumps(usage_object(usage))
        return (
            self._head + orjson.dumps(self.model)
            + b',"system_fingerprint":null,"choices":[],"usage":' + usage_json + b"}\n\n"
        )  # fmt: skip

    @staticmethod
    def error(error: StreamError) -> bytes:
        """The event that ends a broken stream; OpenAI's SDKs raise on it."""
        body = {
            "message": error.message,
            "type": error_type(stream_error_status(error)),
            "code": stream_error_code(error),
        }
        return b"data: " + orjson.dumps({"error": body}) + b"\n\n"


class Answer:
    """A whole answer put together from its stream, for a ``stream: false`` request."""

    def __init__(self) -> None:
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._logprobs: list[Any] = []
        self._calls: dict[int, tuple[str, str, list[str]]] = {}  # index -> id, name, pieces
        self._parts = LiveCalls()

    def text(self, text: str, logprobs: tuple[Any, ...] | None) -> None:
        self._text.append(text)
        if logprobs:
            self._logprobs.extend(logprobs)

    def reasoning(self, text: str) -> None:
        self._reasoning.append(text)

    def tool_call(self, call: ToolCall) -> None:
        self._calls[call.index] = (call.id, call.name, [call.arguments])

    def tool_call_part(self, part: ToolCallPart) -> None:
        index, call_id, first = self._parts.number(part)  # as the streamed chunks number it
        if first:
            self._calls[index] = (call_id, part.name or "", [])
        self._calls[index][2].append(part.arguments)

    def message(self) -> dict[str, Any]:
        """The answer's ``message``: ``content`` null when it only calls tools."""
        text = "".join(self._text)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None if self._calls and not text else text,
            "refusal": None,
        }
        if self._calls:
            message["tool_calls"] = [
                tool_call_object(None, call_id, name, "".join(pieces))
                for call_id, name, pieces in (self._calls[i] for i in sorted(self._calls))
            ]
        if self._reasoning:
            message["reasoning_content"] = "".join(self._reasoning)
        return message

    def logprobs(self) -> dict[str, Any] | None:
        return {"content": self._logprobs, "refusal": None} if self._logprobs else None


def completion_body(
    *,
    completion_id: str,
    created: int,
    model: str,
    answer: Answer,
    finish_reason: str,
    usage: Usage | None,
) -> bytes:
    """The JSON of a whole (``stream: false``) ``chat.completion``.

    ``usage`` is ``null`` when the provider reported none (the SDKs type it as optional).
    """
    return orjson.dumps(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": answer.message(),
                    "logprobs": answer.logprobs(),
                    "finish_reason": finish_reason,
                }
            ],
            "usage": None if usage is None else usage_object(usage),
            "system_fingerprint": None,
        }
    )
