"""OpenAI's Chat Completions wire format: requests in, chunks, completions and errors out.

``parse_chat_request`` checks a request body and turns it into what ``Baton.start_stream``
takes; ``ChunkEncoder`` writes a stream's events as ``chat.completion.chunk`` SSE events with
the constant parts of each chunk encoded once per stream; ``completion_body`` and
``error_body`` build the one-shot JSON answers. Everything here is pure: the ASGI app
(``transport._http``) does the I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import orjson

from actors import (
    BatonError,
    Message,
    RequestError,
    StreamError,
    StreamErrorCode,
    Usage,
    clip,
    parse_messages,
    parse_params,
)

# Generation parameters passed upstream (checked by ``actors.parse_params``).
PASSED_PARAMS = (
    "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "seed",
    "presence_penalty", "frequency_penalty",
)  # fmt: skip
# Standard OpenAI fields that do not change a text answer Baton can give; accepted and dropped.
IGNORED_FIELDS = frozenset({
    "user", "metadata", "store", "service_tier", "parallel_tool_calls", "logit_bias",
    "top_logprobs", "reasoning_effort", "prompt_cache_key", "safety_identifier", "verbosity",
    "prediction", "web_search_options", "stream_options",
})  # fmt: skip
# Fields that ask for something other than one streamed text answer, each with the value(s)
# that mean "not asked for" and so are harmless.
_UNSUPPORTED: Mapping[str, tuple[object, ...]] = {
    "tools": (None, []),
    "functions": (None, []),
    "tool_choice": (None, "none"),
    "function_call": (None, "none"),
    "logprobs": (None, False),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "response_format": (None, {"type": "text"}),
}
_KNOWN = frozenset(
    {"model", "messages", "stream", "n", *PASSED_PARAMS, *IGNORED_FIELDS, *_UNSUPPORTED}
)


_SHORT = 64  # a client's field name up to this long is quoted whole (as ``actors.clip`` does)


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

    Standard fields that cannot change a text answer are ignored; fields asking for tools,
    several choices, log probabilities or non-text output are refused, and so are fields
    OpenAI does not know, so that a typo never passes silently.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise APIError(
            400, "invalid_json", f"The request body is not valid JSON ({exc})."
        ) from None
    if not isinstance(data, dict):
        raise APIError(400, "invalid_type", "The request body must be a JSON object.")
    for field in data:
        if field not in _KNOWN:
            short = len(field) <= _SHORT
            raise APIError(
                400,
                "unknown_parameter",
                # OpenAI's words; a name too long to quote whole is cut (and not echoed).
                f"Unrecognized request argument supplied: {field if short else clip(field)}.",
                param=field if short else None,
            )
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
    for field, harmless in _UNSUPPORTED.items():
        value = data.get(field)
        if not any(value == h and type(value) is type(h) for h in harmless):
            raise APIError(
                400, "unsupported_parameter",
                f"'{field}' is not supported: Baton proxies plain text answers only.", param=field,
            )  # fmt: skip
    params: dict[str, Any] = {}
    for field in PASSED_PARAMS:
        value = data.get(field)
        if value is None:
            continue  # OpenAI treats an explicit null as absent
        try:
            params.update(parse_params({field: value}))
        except RequestError as exc:
            raise APIError(400, "invalid_value", exc.message, param=field) from None
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


def _developer_as_system(message: Any) -> Any:
    # OpenAI's newer models call the system prompt "developer"; every provider knows "system".
    if isinstance(message, dict) and message.get("role") == "developer":
        return {**message, "role": "system"}
    return message


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

DONE_EVENT = b"data: [DONE]\n\n"
SSE_HEADERS: Sequence[tuple[bytes, bytes]] = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx would otherwise hold the stream back
)


def usage_object(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


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

    def role(self) -> bytes:
        """The first chunk: the assistant's role and empty content."""
        return self._choice + b'{"role":"assistant","content":""' + self._delta_tail

    def delta(self, text: str) -> bytes:
        return self._content + orjson.dumps(text) + self._delta_tail

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


def completion_body(
    *,
    completion_id: str,
    created: int,
    model: str,
    text: str,
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
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": None if usage is None else usage_object(usage),
            "system_fingerprint": None,
        }
    )
