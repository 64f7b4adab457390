"""OpenAI's and Anthropic's wire formats, as the simulated provider speaks them.

Reading a chat request body into a conversation, and rendering the streamed events, the
non-streaming bodies, the model lists and the error bodies in each provider's exact shape.
Per-token rendering is one ``orjson.dumps`` of the token text between pre-rendered bytes.
"""

from __future__ import annotations

from typing import Any

import attrs
import orjson

from actors import Failure, Message

_MARK = "\x00baton-text\x00"  # stands for the token text in pre-rendered chunk templates
SSE_HEADERS = [("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache")]
_OPENAI_ERROR_TYPES = {429: "requests"}
_ANTHROPIC_STOP = {"stop": "end_turn", "length": "max_tokens"}


class BadRequest(Exception):
    """The client's request body is invalid (answered with a 400)."""


@attrs.frozen(kw_only=True)
class ChatRequest:
    """The parts of a chat request body the simulated provider acts on."""

    model: str
    messages: tuple[Message, ...]
    params: dict[str, Any]
    stream: bool
    include_usage: bool
    has_stream_options: bool
    max_tokens: int | None


def parse_chat(raw: bytes, api: str) -> ChatRequest:
    """Read an OpenAI chat-completions or Anthropic messages body; raises ``BadRequest``."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("The request body is not valid JSON.") from None
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        raise BadRequest("model: a string is required")
    if api == "anthropic" and not isinstance(body.get("max_tokens"), int):
        raise BadRequest("max_tokens: Field required")
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise BadRequest("messages: a non-empty list is required")
    messages = []
    if api == "anthropic" and body.get("system"):
        messages.append(Message(role="system", content=_text_of(body["system"])))
    for item in raw_messages:
        if not isinstance(item, dict) or "role" not in item:
            raise BadRequest("each message needs a role and content")
        content = _text_of(item.get("content"))
        match item["role"]:
            case "system" | "developer":  # "developer" is OpenAI's newer name for it
                messages.append(Message(role="system", content=content))
            case "user" | "assistant" as role:
                messages.append(Message(role=role, content=content))
            case role:
                raise BadRequest(f"messages: unknown role {role!r}")
    skip = ("model", "messages", "stream", "stream_options", "system")
    return ChatRequest(
        model=body["model"],
        messages=tuple(messages),
        params={k: v for k, v in body.items() if k not in skip},
        stream=bool(body.get("stream")),
        include_usage=bool((body.get("stream_options") or {}).get("include_usage")),
        has_stream_options="stream_options" in body,
        max_tokens=body.get("max_tokens", body.get("max_completion_tokens")),
    )


def _text_of(content: Any) -> str:
    """The text of a message's content: a string, or a list of text blocks/parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    raise BadRequest("message content must be a string or a list of content blocks")


def sse(data: Any, event: str | None = None) -> bytes:
    """One server-sent event carrying ``data`` as JSON."""
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


def _template(chunk: dict[str, Any]) -> tuple[bytes, bytes]:
    """Split a rendered chunk around ``_MARK`` so a token costs one ``orjson.dumps(text)``."""
    prefix, suffix = orjson.dumps(chunk).split(orjson.dumps(_MARK))
    return prefix, suffix


def error_body(api: str, failure: Failure) -> dict[str, Any]:
    """The JSON error body a provider of ``api`` sends with an HTTP error status."""
    if api == "anthropic":
        return {"type": "error", "error": {"type": failure.code, "message": failure.message}}
    status = failure.status or 500
    default = "invalid_request_error" if status < 500 else "server_error"
    kind = _OPENAI_ERROR_TYPES.get(status, default)
    return {
        "error": {"message": failure.message, "type": kind, "param": None, "code": failure.code}
    }


def retry_after_header(seconds: float) -> str:
    return str(int(seconds)) if seconds == int(seconds) else repr(seconds)


def models_body(api: str, model: str, created: int) -> dict[str, Any]:
    """The model list a provider of ``api`` answers ``GET /v1/models`` with."""
    entry: dict[str, Any]
    if api == "anthropic":
        entry = {
            "type": "model",
            "id": model,
            "display_name": model,
            "created_at": "2025-01-01T00:00:00Z",
        }
        return {"data": [entry], "has_more": False, "first_id": model, "last_id": model}
    entry = {"id": model, "object": "model", "created": created, "owned_by": "baton"}
    return {"object": "list", "data": [entry]}


class OpenAIWire:
    """Renders one OpenAI chat completion: ``chat.completion.chunk`` events or the whole body."""

    def __init__(self, ident: str, model: str, created: int, include_usage: bool) -> None:
        self._base = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": None,
        }
        self._include_usage = include_usage
        self._prefix, self._suffix = _template(self._chunk({"content": _MARK}, None))
        self.headers = [*SSE_HEADERS, ("x-request-id", ident)]
        self.usage_sent: dict[str, int] | None = None  # the usage object, once rendered

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        chunk = {**self._base, "choices": [choice]}
        if self._include_usage:
            chunk["usage"] = None  # OpenAI adds a null usage to every chunk when asked for usage
        return chunk

    def preamble(self) -> bytes:
        return sse(self._chunk({"role": "assistant", "content": ""}, None))

    def token(self, text: str) -> bytes:
        return b"data: " + self._prefix + orjson.dumps(text) + self._suffix + b"\n\n"

    def malformed(self) -> bytes:
        return b"data: " + self._prefix + b"\n\n"

    def keepalive(self) -> bytes:
        return b": keep-alive\n\n"

    def error(self, failure: Failure) -> bytes:
        return sse(error_body("openai", failure))

    def finish(self, reason: str, prompt_tokens: int, completion_tokens: int, done: bool) -> bytes:
        out = sse(self._chunk({}, reason))
        if self._include_usage:
            usage = self.usage_sent = _openai_usage(prompt_tokens, completion_tokens)
            out += sse({**self._base, "choices": [], "usage": usage})
        return out + b"data: [DONE]\n\n" if done else out

    def completion(
        self, text: str, reason: str, prompt_tokens: int, completion_tokens: int
    ) -> dict[str, Any]:
        message = {"role": "assistant", "content": text, "refusal": None}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": reason}
        self.usage_sent = _openai_usage(prompt_tokens, completion_tokens)
        return {
            **self._base,
            "object": "chat.completion",
            "choices": [choice],
            "usage": self.usage_sent,
        }


def _openai_usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class AnthropicWire:
    """Renders one Anthropic message: the Messages event stream or the whole body."""

    def __init__(self, ident: str, model: str, prompt_tokens: int) -> None:
        self._ident, self._model, self._prompt_tokens = ident, model, prompt_tokens
        text_delta = {"type": "text_delta", "text": _MARK}
        delta = {"type": "content_block_delta", "index": 0, "delta": text_delta}
        self._prefix, self._suffix = _template(delta)
        self.headers = [*SSE_HEADERS, ("request-id", ident)]
        self.usage_sent: dict[str, int] | None = None  # input and final output tokens, once sent

    def _message(
        self, content: list[Any], stop_reason: str | None, output_tokens: int
    ) -> dict[str, Any]:
        return {
            "id": self._ident,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": {"input_tokens": self._prompt_tokens, "output_tokens": output_tokens},
        }

    def preamble(self) -> bytes:
        start = {"type": "message_start", "message": self._message([], None, 1)}
        block = {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "text", "text": ""},
        }
        return (
            sse(start, "message_start")
            + sse(block, "content_block_start")
            + sse({"type": "ping"}, "ping")
        )

    def token(self, text: str) -> bytes:
        data = self._prefix + orjson.dumps(text) + self._suffix
        return b"event: content_block_delta\ndata: " + data + b"\n\n"

    def malformed(self) -> bytes:
        return b"event: content_block_delta\ndata: " + self._prefix + b"\n\n"

    def keepalive(self) -> bytes:
        return sse({"type": "ping"}, "ping")

    def error(self, failure: Failure) -> bytes:
        return sse(error_body("anthropic", failure), "error")

    def finish(self, reason: str, prompt_tokens: int, completion_tokens: int, done: bool) -> bytes:
        delta = {"stop_reason": _ANTHROPIC_STOP.get(reason, reason), "stop_sequence": None}
        usage = {"output_tokens": completion_tokens}
        self.usage_sent = {"input_tokens": self._prompt_tokens, **usage}
        out = sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
        out += sse({"type": "message_delta", "delta": delta, "usage": usage}, "message_delta")
        return out + sse({"type": "message_stop"}, "message_stop") if done else out

    def completion(
        self, text: str, reason: str, prompt_tokens: int, completion_tokens: int
    ) -> dict[str, Any]:
        content = [{"type": "text", "text": text}]
        self.usage_sent = {"input_tokens": self._prompt_tokens, "output_tokens": completion_tokens}
        return self._message(content, _ANTHROPIC_STOP.get(reason, reason), completion_tokens)


Wire = OpenAIWire | AnthropicWire
