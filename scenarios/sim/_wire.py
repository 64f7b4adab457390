"""OpenAI's and Anthropic's wire formats, as the simulated provider speaks them.

Reading a chat request body into a conversation, and rendering the streamed events, the
non-streaming bodies, the model lists and the error bodies in each provider's exact shape.
Per-token rendering is one ``orjson.dumps`` of the token text between pre-rendered bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import attrs
import orjson

from actors import Failure, FunctionCall, Message, RequestError, parse_messages

from .._answers import Piece

# How Baton's Anthropic adapter asks for a JSON answer (``transport.providers._anthropic``):
# a forced tool of this name (a suffix of "_" when a client tool has it), or, continuing a
# JSON answer, a system prompt paragraph that begins with this sentence.
JSON_TOOL = "baton_json_answer"
JSON_INSTRUCTION = "Answer with JSON only"
JSON_SCHEMA_MARKER = "; it must match this JSON schema: "
_MARK = "\x00baton-text\x00"  # stands for the token text in pre-rendered chunk templates
SSE_HEADERS = [("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache")]
_OPENAI_ERROR_TYPES = {429: "requests"}
_ANTHROPIC_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
# A fixed, opaque stand-in for the signature Anthropic sends at the end of a thinking block.
THINKING_SIGNATURE = "c2ltdWxhdGVkLXNpZ25hdHVyZQ=="


class BadRequest(Exception):
    """The client's request body is invalid (answered with a 400)."""


@attrs.frozen(kw_only=True)
class ChatRequest:
    """The parts of a chat request body the simulated provider acts on."""

    model: str
    messages: tuple[Message, ...]
    params: dict[str, Any]
    plan_params: dict[str, Any]
    stream: bool
    include_usage: bool
    has_stream_options: bool
    max_tokens: int | None


def parse_chat(raw: bytes, api: str) -> ChatRequest:
    """Read an OpenAI chat-completions or Anthropic messages body; raises ``BadRequest``.

    ``plan_params`` are the fields the answer depends on in OpenAI's names: an Anthropic
    request's tools (``input_schema``), ``tool_choice`` (``any``, ``tool``, ``none``,
    ``disable_parallel_tool_use``) and ``thinking`` are translated.
    """
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
    if api == "anthropic":
        messages = tuple(_anthropic_messages(body.get("system"), raw_messages))
    else:
        for item in raw_messages:
            role = item.get("role") if isinstance(item, dict) else None
            if role is not None and role not in _OPENAI_ROLES:
                raise BadRequest(f"messages: unknown role {role!r}")
        try:
            messages = parse_messages(raw_messages)
        except RequestError as exc:
            raise BadRequest(exc.message) from None
    skip = ("model", "messages", "stream", "stream_options", "system")
    params = {k: v for k, v in body.items() if k not in skip}
    return ChatRequest(
        model=body["model"],
        messages=tuple(messages),
        params=params,
        plan_params=_anthropic_params(params, body.get("system")) if api == "anthropic" else params,
        stream=bool(body.get("stream")),
        include_usage=bool((body.get("stream_options") or {}).get("include_usage")),
        has_stream_options="stream_options" in body,
        max_tokens=body.get("max_tokens", body.get("max_completion_tokens")),
    )


_OPENAI_ROLES = ("system", "developer", "user", "assistant", "tool")


def _anthropic_messages(system: Any, raw_messages: list[Any]) -> list[Message]:
    """Anthropic messages as ``Message``s: ``tool_result`` blocks become ``tool`` messages
    (before the rest of their user turn), ``tool_use`` blocks an assistant's ``tool_calls``,
    ``image`` blocks ``image_url`` parts; ``thinking`` blocks are dropped."""
    messages = []
    if system:
        text, _ = _json_instruction(_text_of(system))
        if text:
            messages.append(Message(role="system", content=text))
    for item in raw_messages:
        if not isinstance(item, dict) or "role" not in item:
            raise BadRequest("each message needs a role and content")
        role = item["role"]
        if role not in ("user", "assistant"):
            raise BadRequest(f"messages: unknown role {role!r}")
        content = item.get("content")
        if isinstance(content, str):
            messages.append(Message(role=role, content=content))
            continue
        if not isinstance(content, list):
            raise BadRequest("message content must be a string or a list of content blocks")
        parts: list[dict[str, Any]] = []
        calls = []
        for block in content:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                parts.append({"type": "text", "text": str(block.get("text", ""))})
            elif kind == "image" and role == "user":
                parts.append({"type": "image_url", "image_url": {"url": _image_url(block)}})
            elif kind == "tool_use" and role == "assistant":
                arguments = orjson.dumps(block.get("input") or {}).decode()
                call = FunctionCall(
                    id=str(block["id"]), name=str(block["name"]), arguments=arguments
                )
                calls.append(call)
            elif kind == "tool_result" and role == "user":
                result = _text_of(block.get("content"))
                messages.append(
                    Message(role="tool", content=result, tool_call_id=str(block["tool_use_id"]))
                )
            elif kind in ("thinking", "redacted_thinking"):
                continue
            else:
                raise BadRequest(f"messages: content block type {kind!r} is not allowed here")
        if parts or calls or not any(m.role == "tool" for m in messages[-1:]):
            messages.append(Message(role=role, content=tuple(parts), tool_calls=tuple(calls)))
    return messages


def _image_url(block: dict[str, Any]) -> str:
    source = block.get("source") or {}
    if source.get("type") == "url":
        return str(source.get("url", ""))
    return f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"


def _anthropic_params(params: dict[str, Any], system: Any = None) -> dict[str, Any]:
    """The answer-deciding fields of an Anthropic request in OpenAI's names.

    Baton's ways of asking Anthropic for JSON are read back as ``response_format``: the forced
    ``JSON_TOOL`` (``_json_answer_tool``) and, when it continues a JSON answer, the system
    prompt's "Answer with JSON only" paragraph (``_json_instruction``).
    """
    out: dict[str, Any] = {}
    if system:
        _, response_format = _json_instruction(_text_of(system))
        if response_format is not None:
            out["response_format"] = response_format
    tools = [
        {
            "type": "function",
            "function": {"name": t.get("name"), "parameters": t.get("input_schema") or {}},
        }
        for t in params.get("tools") or ()
        if isinstance(t, dict) and "name" in t
    ]
    if tools:
        out["tools"] = tools
    choice = params.get("tool_choice")
    if isinstance(choice, dict):
        match choice.get("type"):
            case "tool":
                out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
            case "any":
                out["tool_choice"] = "required"
            case "none":
                out["tool_choice"] = "none"
        if choice.get("disable_parallel_tool_use"):
            out["parallel_tool_calls"] = False
    thinking = params.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        out["reasoning_effort"] = "medium"
    _json_answer_tool(out)
    return out


def _json_answer_tool(out: dict[str, Any]) -> None:
    """Read a forced tool named ``JSON_TOOL`` (Baton's way to ask Anthropic for a JSON answer)
    as the request for a JSON answer it is: ``response_format`` from its input schema, and
    ``json_tool`` naming the tool the answer's JSON goes through as tool input."""
    choice = out.get("tool_choice")
    forced = choice["function"]["name"] if isinstance(choice, dict) else None
    tools = out.get("tools") or []
    named = [t for t in tools if str(t["function"]["name"]).startswith(JSON_TOOL)]
    if not named or (forced is not None and forced != named[0]["function"]["name"]):
        return
    tool = named[0]["function"]
    out["tools"] = [t for t in tools if t["function"] is not tool]
    if not out["tools"]:
        del out["tools"]
    if forced is not None or choice == "required":
        out.pop("tool_choice", None)
    out["json_tool"] = tool["name"]
    out["response_format"] = _format_for(tool.get("parameters") or {})


def _format_for(schema: Any) -> dict[str, Any]:
    """``response_format`` for a JSON schema: ``json_object`` when it says no more than that."""
    if not isinstance(schema, dict) or set(schema) <= {"type"}:
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


def _json_instruction(system: str) -> tuple[str, dict[str, Any] | None]:
    """Split Baton's "answer with JSON only" paragraph (sent to continue a JSON answer) off
    an Anthropic system prompt: the rest of the prompt, and the ``response_format`` it asks."""
    head, sep, tail = system.rpartition(JSON_INSTRUCTION)
    if not sep:
        return system, None
    _, marker, schema_text = tail.partition(JSON_SCHEMA_MARKER)
    schema: Any = {"type": "object"}
    if marker:
        try:
            schema = orjson.loads(schema_text.rstrip().removesuffix("."))
        except orjson.JSONDecodeError:
            pass
    return head.rstrip(), _format_for(schema)


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

    def preamble(self, first: Piece | None = None) -> bytes:
        return sse(self._chunk({"role": "assistant", "content": ""}, None))

    def token(self, text: str) -> bytes:
        return b"data: " + self._prefix + orjson.dumps(text) + self._suffix + b"\n\n"

    def piece(self, piece: Piece) -> bytes:
        """One planned piece as a chunk: ``delta.reasoning_content``, ``delta.content`` or a
        ``delta.tool_calls`` fragment (the first of a call carries id, type and name)."""
        if piece.kind == "text":
            return self.token(piece.text)
        if piece.kind == "reasoning":
            return sse(self._chunk({"reasoning_content": piece.text}, None))
        fragment: dict[str, Any] = {"index": piece.index}
        if piece.kind == "tool_call":
            fragment["id"] = piece.call_id
            fragment["type"] = "function"
            fragment["function"] = {"name": piece.name, "arguments": ""}
        else:
            fragment["function"] = {"arguments": piece.text}
        return sse(self._chunk({"tool_calls": [fragment]}, None))

    def malformed(self) -> bytes:
        return b"data: " + self._prefix + b"\n\n"

    def keepalive(self) -> bytes:
        return b": keep-alive\n\n"

    def error(self, failure: Failure) -> bytes:
        return sse(error_body("openai", failure))

    def finish(
        self,
        reason: str,
        prompt_tokens: int,
        completion_tokens: int,
        done: bool,
        reasoning_tokens: int = 0,
    ) -> bytes:
        out = sse(self._chunk({}, reason))
        if self._include_usage:
            usage = _openai_usage(prompt_tokens, completion_tokens, reasoning_tokens)
            self.usage_sent = usage
            out += sse({**self._base, "choices": [], "usage": usage})
        return out + b"data: [DONE]\n\n" if done else out

    def completion(
        self,
        pieces: Sequence[Piece],
        reason: str,
        prompt_tokens: int,
        completion_tokens: int,
        reasoning_tokens: int = 0,
    ) -> dict[str, Any]:
        text = "".join(p.text for p in pieces if p.kind == "text")
        calls = _calls_of(pieces)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": text if text or not calls else None,
            "refusal": None,
        }
        reasoning = "".join(p.text for p in pieces if p.kind == "reasoning")
        if reasoning:
            message["reasoning_content"] = reasoning
        if calls:
            message["tool_calls"] = [
                {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
                for i, n, a in calls
            ]
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": reason}
        usage = _openai_usage(prompt_tokens, completion_tokens, reasoning_tokens)
        self.usage_sent = usage
        return {
            **self._base,
            "object": "chat.completion",
            "choices": [choice],
            "usage": self.usage_sent,
        }


def _openai_usage(
    prompt_tokens: int, completion_tokens: int, reasoning_tokens: int = 0
) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if reasoning_tokens:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
    return usage


def _calls_of(pieces: Sequence[Piece]) -> list[tuple[str, str, str]]:
    """``(id, name, arguments)`` of each tool call among ``pieces`` (arguments as sent)."""
    calls: dict[int, list[str]] = {}
    for p in pieces:
        if p.kind == "tool_call":
            calls[p.index or 0] = [p.call_id or "", p.name or "", ""]
        elif p.kind == "tool_args" and (p.index or 0) in calls:
            calls[p.index or 0][2] += p.text
    return [(c[0], c[1], c[2]) for _, c in sorted(calls.items())]


class AnthropicWire:
    """Renders one Anthropic message: the Messages event stream or the whole body.

    Content blocks open and close as the pieces change kind: a ``thinking`` block (its
    ``thinking_delta``s, then a ``signature_delta`` before it stops), a ``text`` block, and a
    ``tool_use`` block per call (``input_json_delta`` pieces of its input).
    """

    _BLOCKS: ClassVar[dict[str, str]] = {
        "reasoning": "thinking",
        "text": "text",
        "tool_args": "tool_use",
    }

    def __init__(self, ident: str, model: str, prompt_tokens: int) -> None:
        self._ident, self._model, self._prompt_tokens = ident, model, prompt_tokens
        self._index = -1  # the index of the last block opened
        self._open: str | None = None  # the type of the open block, if any
        self._prefix, self._suffix = b"", b""
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

    def preamble(self, first: Piece | None = None) -> bytes:
        """``message_start``, the first block's start (unless it is a tool call), a ping."""
        start = sse(
            {"type": "message_start", "message": self._message([], None, 1)}, "message_start"
        )
        if first is None or first.kind != "tool_call":
            start += self._start(self._BLOCKS[first.kind] if first else "text")
        return start + sse({"type": "ping"}, "ping")

    def _start(self, block_type: str, piece: Piece | None = None) -> bytes:
        self._index += 1
        self._open = block_type
        block: dict[str, Any]
        if block_type == "tool_use":
            assert piece is not None
            block = {"type": "tool_use", "id": piece.call_id, "name": piece.name, "input": {}}
        elif block_type == "thinking":
            block = {"type": "thinking", "thinking": ""}
        else:
            block = {"type": "text", "text": ""}
            text_delta = {"type": "text_delta", "text": _MARK}
            delta = {"type": "content_block_delta", "index": self._index, "delta": text_delta}
            self._prefix, self._suffix = _template(delta)
        event = {"type": "content_block_start", "index": self._index, "content_block": block}
        return sse(event, "content_block_start")

    def _stop(self) -> bytes:
        if self._open is None:
            return b""
        out = b""
        if self._open == "thinking":
            signature = {"type": "signature_delta", "signature": THINKING_SIGNATURE}
            out = self._delta(signature)
        self._open = None
        return out + sse({"type": "content_block_stop", "index": self._index}, "content_block_stop")

    def _delta(self, delta: dict[str, Any]) -> bytes:
        event = {"type": "content_block_delta", "index": self._index, "delta": delta}
        return sse(event, "content_block_delta")

    def token(self, text: str) -> bytes:
        out = b""
        if self._open != "text":
            out = self._stop() + self._start("text")
        data = self._prefix + orjson.dumps(text) + self._suffix
        return out + b"event: content_block_delta\ndata: " + data + b"\n\n"

    def piece(self, piece: Piece) -> bytes:
        """One planned piece as its events, opening and closing blocks as the kind changes."""
        if piece.kind == "text":
            return self.token(piece.text)
        if piece.kind == "tool_call":
            return self._stop() + self._start("tool_use", piece)
        out = b""
        block_type = self._BLOCKS[piece.kind]
        if self._open != block_type:
            out = self._stop() + self._start(block_type, piece)
        if piece.kind == "reasoning":
            return out + self._delta({"type": "thinking_delta", "thinking": piece.text})
        return out + self._delta({"type": "input_json_delta", "partial_json": piece.text})

    def malformed(self) -> bytes:
        if not self._prefix:
            return b"event: content_block_delta\ndata: " + b'{"type":"content_block_delta"\n\n'
        return b"event: content_block_delta\ndata: " + self._prefix + b"\n\n"

    def keepalive(self) -> bytes:
        return sse({"type": "ping"}, "ping")

    def error(self, failure: Failure) -> bytes:
        return sse(error_body("anthropic", failure), "error")

    def finish(
        self,
        reason: str,
        prompt_tokens: int,
        completion_tokens: int,
        done: bool,
        reasoning_tokens: int = 0,
    ) -> bytes:
        """Close the open block, then ``message_delta`` (stop reason, output tokens, which
        include thinking) and, when ``done``, ``message_stop``."""
        delta = {"stop_reason": _ANTHROPIC_STOP.get(reason, reason), "stop_sequence": None}
        usage = {"output_tokens": completion_tokens}
        self.usage_sent = {"input_tokens": self._prompt_tokens, **usage}
        out = self._stop()
        out += sse({"type": "message_delta", "delta": delta, "usage": usage}, "message_delta")
        return out + sse({"type": "message_stop"}, "message_stop") if done else out

    def completion(
        self,
        pieces: Sequence[Piece],
        reason: str,
        prompt_tokens: int,
        completion_tokens: int,
        reasoning_tokens: int = 0,
    ) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        reasoning = "".join(p.text for p in pieces if p.kind == "reasoning")
        if reasoning:
            content.append(
                {"type": "thinking", "thinking": reasoning, "signature": THINKING_SIGNATURE}
            )
        text = "".join(p.text for p in pieces if p.kind == "text")
        calls = _calls_of(pieces)
        if text or not calls:
            content.append({"type": "text", "text": text})
        for call_id, name, arguments in calls:
            try:
                value = orjson.loads(arguments)
            except orjson.JSONDecodeError:
                value = {}
            content.append({"type": "tool_use", "id": call_id, "name": name, "input": value})
        self.usage_sent = {"input_tokens": self._prompt_tokens, "output_tokens": completion_tokens}
        return self._message(content, _ANTHROPIC_STOP.get(reason, reason), completion_tokens)


Wire = OpenAIWire | AnthropicWire
