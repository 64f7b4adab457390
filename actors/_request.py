"""Validation of what a client asks for, shared by every transport.

Messages and fields are in OpenAI's Chat Completions shapes, whichever API the client speaks;
``parse_messages`` builds ``Message`` objects, ``parse_params`` checks the fields beside them
(generation parameters, tools, structured output, reasoning, log probabilities). What a request
needs of a target beyond text is ``actors._features.needs``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, cast

from ._errors import RequestError, clip
from ._messages import ContentPart, FunctionCall, Message, Role

ROLES = ("system", "developer", "user", "assistant", "tool")
MAX_MESSAGES = 10_000
MAX_TOOLS = 128  # OpenAI's own limit

# Generation parameters passed upstream, with a check of each value.
_NUMBER_RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}
_INTEGERS = ("max_tokens", "max_completion_tokens", "seed")
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")
TOOL_CHOICES = ("auto", "none", "required")
# Every field ``parse_params`` knows; the HTTP API forwards others to OpenAI-kind targets.
KNOWN_PARAMS = frozenset({
    *_INTEGERS, *_NUMBER_RANGES, "stop", "tools", "tool_choice", "parallel_tool_calls",
    "response_format", "reasoning_effort", "logprobs", "top_logprobs",
})  # fmt: skip
_IMAGE_DETAILS = ("auto", "low", "high")


def _bad(message: str, param: str | None = None) -> RequestError:
    return RequestError("bad_request", message, param=param)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_messages(raw: Any) -> tuple[Message, ...]:
    """Check a client's ``messages`` list and build ``Message`` objects.

    ``developer`` (OpenAI's newer name for the system prompt) becomes ``system``, which every
    provider knows. Raises ``RequestError("bad_request", ...)`` naming the first thing wrong.
    """
    if not isinstance(raw, list) or not raw:
        raise _bad("'messages' must be a non-empty list of {role, content} objects.")
    if len(raw) > MAX_MESSAGES:
        raise _bad(f"'messages' has more than {MAX_MESSAGES} entries.")
    return tuple(_message(i, item) for i, item in enumerate(raw))


def _message(i: int, item: Any) -> Message:
    where = f"messages[{i}]"
    if not isinstance(item, Mapping):
        raise _bad(f"{where} must be an object with 'role' and 'content'.")
    role = item.get("role")
    if role not in ROLES:
        raise _bad(f"{where}.role must be one of {', '.join(ROLES)}; got {clip(role)}.")
    if role == "developer":
        role = "system"
    name = item.get("name")
    if name is not None and not isinstance(name, str):
        raise _bad(f"{where}.name must be a string.")
    content = item.get("content")
    tool_calls: tuple[FunctionCall, ...] = ()
    tool_call_id = None
    if role == "assistant":
        tool_calls = _tool_calls(where, item.get("tool_calls"))
        if content is None and not tool_calls:
            raise _bad(f"{where}.content may be null only when the message has tool_calls.")
    elif role == "tool":
        tool_call_id = item.get("tool_call_id")
        if not isinstance(tool_call_id, str) or not tool_call_id:
            raise _bad(f"{where} is a tool result: its 'tool_call_id' must name the call.")
    if content is None and role != "assistant":
        raise _bad(f"{where}.content must be a string or a list of content parts.")
    if isinstance(content, list):
        content = tuple(_part(f"{where}.content[{j}]", role, p) for j, p in enumerate(content))
    elif content is not None and not isinstance(content, str):
        raise _bad(f"{where}.content must be a string or a list of content parts.")
    return Message(
        role=cast(Role, role), content=content, tool_calls=tool_calls,
        tool_call_id=tool_call_id, name=name,
    )  # fmt: skip


# The content part types each role may send (OpenAI's rules: media only from the user).
_PART_TYPES: Mapping[str, tuple[str, ...]] = {
    "user": ("text", "image_url", "input_audio", "file"),
    "assistant": ("text", "refusal"),
    "system": ("text",),
    "tool": ("text",),
}


def _part(where: str, role: str, part: Any) -> ContentPart:
    kinds = _PART_TYPES[role]
    kind = part.get("type") if isinstance(part, Mapping) else None
    if kind not in kinds:
        raise _bad(
            f"{where} must be a content part of type {', '.join(kinds)} "
            f"(in a {role} message); got {clip(kind)}."
        )
    assert isinstance(part, Mapping)
    if kind in ("text", "refusal"):
        if not isinstance(part.get(kind), str):
            raise _bad(f'{where}.{kind} must be a string ({{"type": "{kind}", "{kind}": ...}}).')
    elif kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, Mapping) else None
        if not isinstance(url, str) or not url.startswith(("https://", "http://", "data:image/")):
            raise _bad(
                f"{where}.image_url.url must be an https:// URL or a data:image/... URL "
                '({"type": "image_url", "image_url": {"url": ...}}).'
            )
        assert isinstance(image, Mapping)
        if image.get("detail") not in (None, *_IMAGE_DETAILS):
            raise _bad(f"{where}.image_url.detail must be one of {', '.join(_IMAGE_DETAILS)}.")
    elif kind == "input_audio":
        audio = part.get("input_audio")
        if not (
            isinstance(audio, Mapping)
            and isinstance(audio.get("data"), str)
            and isinstance(audio.get("format"), str)
        ):
            raise _bad(f"{where}.input_audio must be {{data: <base64>, format: 'wav' | 'mp3'}}.")
    else:  # file
        file = part.get("file")
        if not isinstance(file, Mapping) or not any(
            isinstance(file.get(k), str) for k in ("file_data", "file_id")
        ):
            raise _bad(f"{where}.file must have file_data (a data: URL or base64) or file_id.")
    return dict(part)


def _tool_calls(where: str, raw: Any) -> tuple[FunctionCall, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _bad(f"{where}.tool_calls must be a list of tool calls.")
    calls = []
    for j, call in enumerate(raw):
        function = call.get("function") if isinstance(call, Mapping) else None
        if (
            not isinstance(call, Mapping)
            or call.get("type", "function") != "function"
            or not isinstance(call.get("id"), str)
            or not isinstance(function, Mapping)
            or not isinstance(function.get("name"), str)
            or not isinstance(function.get("arguments"), str)
        ):
            raise _bad(
                f"{where}.tool_calls[{j}] must be "
                '{"id": ..., "type": "function", "function": {"name": ..., "arguments": "<JSON>"}}.'
            )
        calls.append(
            FunctionCall(id=call["id"], name=function["name"], arguments=function["arguments"])
        )
    return tuple(calls)


def parse_params(raw: Any, *, forward_unknown: bool = False) -> dict[str, Any]:
    """Check the fields beside ``messages``; return them as they go upstream.

    Unknown fields are refused so that typos do not pass silently, unless ``forward_unknown``
    (the OpenAI-compatible API: a provider of OpenAI's kind judges fields Baton does not know
    yet, and the others are told which they could not take).
    """
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise _bad("'params' must be an object.")
    params: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            params[key] = _checked(key, value, forward_unknown=forward_unknown)
        except RequestError as exc:
            exc.param = key
            raise
    if "top_logprobs" in params and params.get("logprobs") is not True:
        raise _bad("'top_logprobs' needs 'logprobs': true.", "top_logprobs")
    choice = params.get("tool_choice")
    if isinstance(choice, Mapping):
        named = choice["function"]["name"]
        names = {t["function"]["name"] for t in params.get("tools") or ()}
        if named not in names:
            raise _bad(
                f"'tool_choice' names function {clip(named)}, which 'tools' does not have.",
                "tool_choice",
            )
    elif choice == "required" and not params.get("tools"):
        raise _bad("'tool_choice': 'required' needs at least one tool in 'tools'.", "tool_choice")
    return params


def _checked(key: str, value: Any, *, forward_unknown: bool) -> Any:
    """One field's value as it goes upstream; ``RequestError`` when it is wrong."""
    if key in _INTEGERS:
        if not _is_int(value) or value < (0 if key == "seed" else 1):
            raise _bad(f"'{key}' must be a positive integer.")
    elif key in _NUMBER_RANGES:
        low, high = _NUMBER_RANGES[key]
        if (
            not isinstance(value, (int, float))
            or isinstance(value, bool)
            or not math.isfinite(value)
            or not low <= value <= high
        ):
            raise _bad(f"'{key}' must be a number from {low:g} to {high:g}.")
    elif key == "stop":
        if isinstance(value, str):
            value = [value]
        if (
            not isinstance(value, list)
            or not all(isinstance(s, str) for s in value)
            or len(value) > 4
        ):
            raise _bad("'stop' must be a string or a list of up to 4 strings.")
    elif key in _CHECKS:
        _CHECKS[key](value)
    elif not forward_unknown:
        supported = ", ".join(sorted(KNOWN_PARAMS))
        raise _bad(f"unknown parameter {clip(key)}; supported: {supported}.")
    return value


def _check_tools(value: Any) -> None:
    if not isinstance(value, list) or len(value) > MAX_TOOLS:
        raise _bad(f"'tools' must be a list of up to {MAX_TOOLS} function tools.")
    names = set()
    for i, tool in enumerate(value):
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if (
            not isinstance(tool, Mapping)
            or tool.get("type") != "function"
            or not isinstance(function, Mapping)
            or not isinstance(function.get("name"), str)
            or not function["name"]
        ):
            raise _bad(
                f"tools[{i}] must be "
                '{"type": "function", "function": {"name": ..., "parameters": {...}}}.'
            )
        if not isinstance(function.get("parameters", {}), Mapping):
            raise _bad(f"tools[{i}].function.parameters must be a JSON schema object.")
        if function["name"] in names:
            raise _bad(f"tools[{i}].function.name {clip(function['name'])} is used twice.")
        names.add(function["name"])


def _check_tool_choice(value: Any) -> None:
    if value in TOOL_CHOICES:
        return
    function = value.get("function") if isinstance(value, Mapping) else None
    if (
        not isinstance(value, Mapping)
        or value.get("type") != "function"
        or not isinstance(function, Mapping)
        or not isinstance(function.get("name"), str)
    ):
        raise _bad(
            "'tool_choice' must be 'auto', 'none', 'required' or "
            '{"type": "function", "function": {"name": ...}}.'
        )


def _check_response_format(value: Any) -> None:
    kind = value.get("type") if isinstance(value, Mapping) else None
    if kind in ("text", "json_object"):
        return
    if kind == "json_schema":
        spec = value.get("json_schema")
        if (
            isinstance(spec, Mapping)
            and isinstance(spec.get("name"), str)
            and isinstance(spec.get("schema", {}), Mapping)
            and isinstance(spec.get("strict", False), (bool, type(None)))
        ):
            return
        raise _bad(
            "'response_format' json_schema must be "
            '{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}, "strict": ...}}.'
        )
    raise _bad('\'response_format\' must be {"type": "text" | "json_object" | "json_schema"}.')


def _check_flag(key: str) -> Any:
    def check(value: Any) -> None:
        if not isinstance(value, bool):
            raise _bad(f"'{key}' must be true or false.")

    return check


def _check_effort(value: Any) -> None:
    if value not in REASONING_EFFORTS:
        raise _bad(f"'reasoning_effort' must be one of {', '.join(REASONING_EFFORTS)}.")


def _check_top_logprobs(value: Any) -> None:
    if not _is_int(value) or not 0 <= value <= 20:
        raise _bad("'top_logprobs' must be an integer from 0 to 20.")


_CHECKS = {
    "tools": _check_tools,
    "tool_choice": _check_tool_choice,
    "parallel_tool_calls": _check_flag("parallel_tool_calls"),
    "response_format": _check_response_format,
    "reasoning_effort": _check_effort,
    "logprobs": _check_flag("logprobs"),
    "top_logprobs": _check_top_logprobs,
}
