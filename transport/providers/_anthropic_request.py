"""The request half of the Anthropic adapter: a Chat Completions request in Messages API terms.

``translate`` builds the body of one attempt and says which of the client's fields it had to
leave out (``dropped_fields``, for the HTTP API's ``x-baton-dropped-fields``) and whether a JSON
answer is asked through the synthetic tool ``JSON_TOOL``, whose input the response parser
(``_anthropic``) turns back into answer text.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import orjson

from actors import Failure, FailureKind, Message, UpstreamError, UpstreamRequest

# Its DEBUG lines (the dropped fields) are the adapter's, under the adapter's logger name.
logger = logging.getLogger("transport.providers._anthropic")

#: Anthropic requires ``max_tokens``; OpenAI clients often omit it and expect no cap, so the
#: default is the largest value every current Claude model accepts.
DEFAULT_MAX_TOKENS = 4096

#: The thinking budget for each OpenAI ``reasoning_effort`` ("none" asks for no thinking).
THINKING_BUDGETS: Mapping[str, int] = {
    "minimal": 1024,  # Anthropic's smallest budget
    "low": 1024,
    "medium": 4096,
    "high": 16384,
    "xhigh": 32000,
}
#: The synthetic tool a JSON answer is asked through (renamed if a client tool has the name).
JSON_TOOL = "baton_json_answer"
#: The OpenAI fields this adapter translates; ``stream_options`` needs nothing (Anthropic always
#: streams usage). Every other field is dropped, because Anthropic rejects fields it does not know.
_TRANSLATED = frozenset({
    "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "stop", "user",
    "tools", "tool_choice", "parallel_tool_calls", "response_format", "reasoning_effort",
    "stream_options",
})  # fmt: skip
_IMAGE_MEDIA = "data:image/"
UNSENDABLE = "unsupported_content"


@attrs.frozen(kw_only=True)
class Translation:
    """One request in the Messages API's terms.

    ``dropped``: the client's fields this body leaves out (sorted names); ``json_tool``: the
    synthetic tool whose input is the JSON answer, when one was added.
    """

    body: dict[str, Any]
    dropped: tuple[str, ...]
    json_tool: str | None


def messages_body(request: UpstreamRequest) -> dict[str, Any]:
    """The JSON body of a streaming Messages API call for ``request`` (see ``translate``)."""
    return translate(request).body


def dropped_fields(
    params: Mapping[str, Any], *, messages: Sequence[Message] = (), prefill: bool = False
) -> tuple[str, ...]:
    """The names (sorted) of the client's fields an Anthropic target does not honour.

    Fields without an Anthropic equivalent (``logprobs``, ``seed``, penalties, unknown fields
    ...), and those the translation must give up for another: ``temperature``/``top_k`` (and
    ``top_p`` below 0.95) beside thinking, and ``reasoning_effort`` when thinking cannot be on
    (a tool choice that forces a tool, a prefill, or a tool loop: see ``translate``). Fields
    that ask for nothing (None, false) are not named. Pass ``messages`` to see the tool loop
    and a trailing assistant message (a prefill, as ``translate`` takes it).
    """
    rest = [m for m in messages if m.role != "system"]
    prefill = prefill or bool(rest and rest[-1].role == "assistant")
    return _params(params, prefill=prefill, tool_loop=_in_tool_loop(messages)).dropped


def translate(request: UpstreamRequest) -> Translation:
    """Build the Messages API body for ``request``; raise ``UpstreamError`` if it cannot be.

    Messages: system messages move to the top-level ``system`` (several joined by a blank
    line); consecutive turns of one role merge (Anthropic wants turns to alternate): text-only
    turns as one string joined by blank lines, others as their content blocks in order. Tool
    results become ``tool_result`` blocks of a user turn, placed before any text of that turn as
    Anthropic requires. A trailing assistant message is a prefill, which Anthropic always
    continues; it rejects one that ends in whitespace, so trailing whitespace is stripped (and
    an empty prefill dropped). The model then writes that whitespace itself or not at all, and
    the session's splice guard copes with either at the boundary.

    Media Anthropic cannot take (``input_audio``, OpenAI ``file_id``s, files other than PDF)
    raise ``UpstreamError`` with status 400 and code ``unsupported_content`` before anything is
    sent: capabilities keep such requests away, so one arriving here is a misconfigured
    ``supports``, and failing plainly beats answering a question about media never shown.
    """
    system, turns = _turns(request.messages)
    prefill = request.prefill or bool(turns and turns[-1][0] == "assistant")
    params = _params(request.params, prefill=prefill, tool_loop=_in_tool_loop(request.messages))
    messages = [_turn(role, blocks) for role, blocks in turns]
    if prefill and messages and messages[-1]["role"] == "assistant":
        _strip_prefill(messages)
    body: dict[str, Any] = {"model": request.model, "messages": messages, "stream": True}
    joined_system = "\n\n".join(s for s in [*system, params.system] if s)
    if joined_system:
        body["system"] = joined_system
    body.update(params.fields)
    return Translation(body=body, dropped=params.dropped, json_tool=params.json_tool)


# --- messages ---------------------------------------------------------------------------------

# A turn: its role and, per merged message, that message's content blocks.
_Turn = tuple[str, list[list[dict[str, Any]]]]


def _turns(messages: Sequence[Message]) -> tuple[list[str], list[_Turn]]:
    system: list[str] = []
    turns: list[_Turn] = []
    for i, message in enumerate(messages):
        if message.role == "system":
            system.append(message.text)
            continue
        role = "assistant" if message.role == "assistant" else "user"
        blocks = _blocks(i, message)
        if turns and turns[-1][0] == role:
            turns[-1][1].append(blocks)
        else:
            turns.append((role, [blocks]))
    return system, turns


def _blocks(i: int, message: Message) -> list[dict[str, Any]]:
    if message.role == "tool":
        return [
            {"type": "tool_result", "tool_use_id": message.tool_call_id, "content": message.text}
        ]
    content = message.content
    parts: tuple[Any, ...] = (
        () if content is None else (content,) if isinstance(content, str) else content
    )
    blocks = [_part(f"messages[{i}].content[{j}]", part) for j, part in enumerate(parts)]
    for j, call in enumerate(message.tool_calls):
        try:
            arguments = orjson.loads(call.arguments or "{}")
        except orjson.JSONDecodeError:
            arguments = None
        if not isinstance(arguments, dict):
            raise _unsendable(
                f"messages[{i}].tool_calls[{j}].function.arguments is not a JSON object, and "
                "Anthropic takes a tool call's input only as one; send the arguments as an object."
            )
        blocks.append({"type": "tool_use", "id": call.id, "name": call.name, "input": arguments})
    return blocks


def _part(where: str, part: Any) -> dict[str, Any]:
    if isinstance(part, str):
        return {"type": "text", "text": part}
    kind = part.get("type")
    if kind in ("text", "refusal"):
        return {"type": "text", "text": part[kind]}
    if kind == "image_url":
        url = part["image_url"]["url"]
        if not url.startswith(_IMAGE_MEDIA):
            return {"type": "image", "source": {"type": "url", "url": url}}
        media, data = _data_url(url)
        if media is None:
            raise _unsendable(f"{where}.image_url.url must be a base64 data: URL for Anthropic.")
        return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
    if kind == "file":
        return _document(where, part["file"])
    raise _unsendable(
        f"{where} is {kind!s:.20} content, which Anthropic's Messages API cannot take; route "
        "such requests to a target that can (check this provider's 'supports')."
    )


def _document(where: str, file: Mapping[str, Any]) -> dict[str, Any]:
    data = file.get("file_data")
    filename = file.get("filename")
    media: str | None = None
    if isinstance(data, str) and data.startswith("data:"):
        media, data = _data_url(data)
    elif isinstance(data, str) and isinstance(filename, str) and filename.lower().endswith(".pdf"):
        media = "application/pdf"
    if media != "application/pdf":
        raise _unsendable(
            f"{where}.file must be a PDF sent inline (file_data as a data:application/pdf;base64 "
            "URL, or base64 with a .pdf filename) for Anthropic; file_id and other file types "
            "cannot be sent."
        )
    block: dict[str, Any] = {
        "type": "document",
        "source": {"type": "base64", "media_type": media, "data": data},
    }
    if isinstance(filename, str) and filename:
        block["title"] = filename
    return block


def _data_url(url: str) -> tuple[str | None, str]:
    """The media type and base64 data of a ``data:<type>;base64,<data>`` URL (type None if it
    is not base64)."""
    head, _, data = url.partition(",")
    media, _, encoding = head[len("data:") :].partition(";")
    return (media if encoding == "base64" and media else None), data


def _turn(role: str, messages: list[list[dict[str, Any]]]) -> dict[str, Any]:
    blocks = [b for blocks in messages for b in blocks]
    if all(b["type"] == "text" for b in blocks):
        texts = ("".join(b["text"] for b in blocks) for blocks in messages)
        return {"role": role, "content": "\n\n".join(t for t in texts if t)}
    # Anthropic refuses empty text blocks, and text before a turn's tool results.
    blocks = [b for b in blocks if b["type"] != "text" or b["text"]]
    blocks.sort(key=lambda b: b["type"] != "tool_result")
    return {"role": role, "content": blocks}


def _strip_prefill(messages: list[dict[str, Any]]) -> None:
    last = messages[-1]
    content = last["content"]
    if isinstance(content, str):
        last["content"] = content.rstrip()
    elif content and content[-1]["type"] == "text":
        content[-1] = {**content[-1], "text": content[-1]["text"].rstrip()}
        if not content[-1]["text"]:
            content.pop()
    if not last["content"]:
        messages.pop()


def _in_tool_loop(messages: Sequence[Message]) -> bool:
    """Whether the conversation ends inside a tool loop: its last user turn returns tool
    results (a user message right after them joins that turn)."""
    rest = [m for m in messages if m.role != "system"]
    while rest and rest[-1].role == "assistant":
        rest.pop()
    while rest and rest[-1].role == "user":
        rest.pop()
    return bool(rest) and rest[-1].role == "tool"


def _unsendable(message: str) -> UpstreamError:
    return UpstreamError(
        Failure(kind=FailureKind.STATUS, status=400, code=UNSENDABLE, message=message)
    )


# --- parameters -------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class _Params:
    fields: dict[str, Any]
    dropped: tuple[str, ...]
    json_tool: str | None = None
    system: str = ""


def _params(params: Mapping[str, Any], *, prefill: bool, tool_loop: bool) -> _Params:
    """Translate OpenAI's fields into Anthropic's (see ``dropped_fields`` for what is lost).

    Structured output: asked afresh, the answer is forced through a synthetic tool whose input
    schema is the response schema (``disable_parallel_tool_use``, so there is one answer);
    ``tool_choice: none`` hides the client's tools, a named choice wins over the JSON answer.
    Continuing a JSON answer (a prefill) adds no tool: the system prompt asks for JSON only.
    Thinking gives way to a forced tool, a prefill and a tool loop (Anthropic refuses thinking
    with the first two, and the third needs the signed thinking of the previous turn, which
    OpenAI's format cannot carry back); beside thinking, ``temperature`` and ``top_k`` are
    dropped and ``top_p`` kept only from 0.95, as Anthropic requires.
    """
    out: dict[str, Any] = {}
    dropped = {k for k, v in params.items() if k not in _TRANSLATED and v not in (None, False)}
    max_tokens = params.get("max_tokens") or params.get("max_completion_tokens")
    out["max_tokens"] = max_tokens if isinstance(max_tokens, int) else DEFAULT_MAX_TOKENS
    temperature = params.get("temperature")
    if isinstance(temperature, (int, float)):
        # OpenAI allows 0..2, Anthropic 0..1: clamp rather than fail a request that failed over.
        out["temperature"] = min(max(float(temperature), 0.0), 1.0)
    for key in ("top_p", "top_k"):
        if params.get(key) is not None:
            out[key] = params[key]
    stop = params.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif isinstance(stop, (list, tuple)) and stop:
        out["stop_sequences"] = list(stop)
    if isinstance(params.get("user"), str):
        out["metadata"] = {"user_id": params["user"]}
    json_tool, system = _tools(params, prefill, out)
    budget = THINKING_BUDGETS.get(params.get("reasoning_effort") or "none")
    forced = out.get("tool_choice", {}).get("type") in ("any", "tool")
    if budget is not None and (forced or prefill or tool_loop):
        dropped.add("reasoning_effort")
    elif budget is not None:
        out["thinking"] = {"type": "enabled", "budget_tokens": budget}
        if out["max_tokens"] <= budget:
            out["max_tokens"] += budget  # the answer keeps the room the client gave it
        for key in ("temperature", "top_k"):
            if out.pop(key, None) is not None:
                dropped.add(key)
        if out.get("top_p", 1.0) < 0.95:
            del out["top_p"]
            dropped.add("top_p")
    return _Params(fields=out, dropped=tuple(sorted(dropped)), json_tool=json_tool, system=system)


def _tools(params: Mapping[str, Any], prefill: bool, out: dict[str, Any]) -> tuple[str | None, str]:
    """Put ``tools`` and ``tool_choice`` into ``out``; return the JSON tool's name (if one was
    added) and a sentence for the system prompt (if one is needed)."""
    tools = [
        {
            "name": f["name"],
            "description": f.get("description") or "",
            "input_schema": f.get("parameters") or {"type": "object"},
        }
        for f in (t["function"] for t in params.get("tools") or ())
    ]
    for tool in tools:
        if not tool["description"]:
            del tool["description"]
    choice = params.get("tool_choice")
    response_format = params.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, Mapping) else None
    schema: Any = {"type": "object"}
    if kind == "json_schema":
        schema = response_format["json_schema"].get("schema") or schema  # type: ignore[index]
    json_tool = None
    system = ""
    anthropic_choice: dict[str, Any] | None = None
    if kind in ("json_object", "json_schema") and prefill:
        system = "Answer with JSON only, continuing the JSON text exactly where it stops"
        if kind == "json_schema":
            system += "; it must match this JSON schema: " + orjson.dumps(schema).decode()
        system += "."
    elif kind in ("json_object", "json_schema") and not isinstance(choice, Mapping):
        if choice == "none":
            tools = []
        json_tool = JSON_TOOL
        while any(t["name"] == json_tool for t in tools):
            json_tool += "_"
        tools.append({
            "name": json_tool,
            "description": "Give your answer as this tool's input: a JSON object"
            + (" matching the schema." if kind == "json_schema" else "."),
            "input_schema": schema,
        })  # fmt: skip
        anthropic_choice = {"type": "tool", "name": json_tool}
        if len(tools) > 1:
            anthropic_choice = {"type": "any"}
        anthropic_choice["disable_parallel_tool_use"] = True
    elif isinstance(choice, Mapping):
        anthropic_choice = {"type": "tool", "name": choice["function"]["name"]}
    elif choice is not None:
        anthropic_choice = {"type": {"auto": "auto", "required": "any"}.get(choice, "none")}
    if anthropic_choice is None and tools and params.get("parallel_tool_calls") is False:
        anthropic_choice = {"type": "auto"}
    if (
        anthropic_choice is not None
        and anthropic_choice["type"] != "none"
        and params.get("parallel_tool_calls") is False
    ):
        anthropic_choice["disable_parallel_tool_use"] = True
    if tools:  # Anthropic takes a tool_choice only beside tools
        out["tools"] = tools
        if anthropic_choice is not None:
            out["tool_choice"] = anthropic_choice
    return json_tool, system
