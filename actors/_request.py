"""Validation of what a client asks for, shared by every transport."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ._errors import RequestError, clip
from ._messages import Message

ROLES = ("system", "user", "assistant")
MAX_MESSAGES = 10_000

# Generation parameters passed upstream, with a check of each value.
_NUMBER_RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}
_INTEGERS = ("max_tokens", "max_completion_tokens", "seed")


def parse_messages(raw: Any) -> tuple[Message, ...]:
    """Check a client's ``messages`` list and build ``Message`` objects.

    Raises ``RequestError("bad_request", ...)`` naming the first thing wrong.
    """
    if not isinstance(raw, list) or not raw:
        raise RequestError(
            "bad_request", "'messages' must be a non-empty list of {role, content} objects."
        )
    if len(raw) > MAX_MESSAGES:
        raise RequestError("bad_request", f"'messages' has more than {MAX_MESSAGES} entries.")
    messages = []
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping):
            raise RequestError(
                "bad_request", f"messages[{i}] must be an object with 'role' and 'content'."
            )
        role = item.get("role")
        if role not in ROLES:
            raise RequestError(
                "bad_request",
                f"messages[{i}].role must be one of {', '.join(ROLES)}; got {clip(role)}.",
            )
        content = item.get("content")
        if isinstance(content, list):
            # OpenAI's content parts: only text parts can be proxied to every provider.
            texts = []
            for j, part in enumerate(content):
                if (
                    not isinstance(part, Mapping)
                    or part.get("type") != "text"
                    or not isinstance(part.get("text"), str)
                ):
                    part_shape = '{"type": "text", "text": ...}'
                    raise RequestError(
                        "bad_request",
                        f"messages[{i}].content[{j}] must be a text part ({part_shape}).",
                    )
                texts.append(part["text"])
            content = "".join(texts)
        if not isinstance(content, str):
            raise RequestError("bad_request", f"messages[{i}].content must be a string.")
        messages.append(Message(role=role, content=content))
    return tuple(messages)


def parse_params(raw: Any) -> dict[str, Any]:
    """Check generation parameters; unknown ones are refused so typos do not pass silently."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise RequestError("bad_request", "'params' must be an object.")
    params: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _INTEGERS:
            if (
                not isinstance(value, int)
                or isinstance(value, bool)
                or value < (0 if key == "seed" else 1)
            ):
                raise RequestError("bad_request", f"'{key}' must be a positive integer.")
        elif key in _NUMBER_RANGES:
            low, high = _NUMBER_RANGES[key]
            if (
                not isinstance(value, (int, float))
                or isinstance(value, bool)
                or not math.isfinite(value)
                or not low <= value <= high
            ):
                raise RequestError(
                    "bad_request", f"'{key}' must be a number from {low:g} to {high:g}."
                )
        elif key == "stop":
            if isinstance(value, str):
                value = [value]
            if (
                not isinstance(value, list)
                or not all(isinstance(s, str) for s in value)
                or len(value) > 4
            ):
                raise RequestError(
                    "bad_request", "'stop' must be a string or a list of up to 4 strings."
                )
        else:
            supported = ", ".join(sorted([*_INTEGERS, *_NUMBER_RANGES, "stop"]))
            raise RequestError(
                "bad_request", f"unknown parameter {clip(key)}; supported: {supported}."
            )
        params[key] = value
    return params
