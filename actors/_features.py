"""What a request asks of a target beyond plain text, and what its answer must be.

``needs`` names the capabilities a request uses (a target without one is skipped for it);
``answer_format`` says whether the answer must be JSON and ``check_json`` whether a (spliced)
answer is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import jsonschema
import orjson

from ._config import ProviderConfig, RouteConfig
from ._messages import Message
from ._vocab import Capability

# Which capability each user content part type needs.
_PART_NEEDS: Mapping[str, Capability] = {
    "image_url": "vision",
    "input_audio": "audio",
    "file": "files",
}


def needs(messages: Sequence[Message], params: Mapping[str, Any]) -> frozenset[Capability]:
    """The capabilities serving ``messages`` with ``params`` takes."""
    found: set[Capability] = set()
    if params.get("tools") or params.get("tool_choice") not in (None, "none", "auto"):
        found.add("tools")
    if params.get("logprobs"):
        found.add("logprobs")
    if params.get("reasoning_effort") is not None:
        found.add("reasoning")
    if answer_format(params) != "text":
        found.add("json_schema")
    for message in messages:
        if message.tool_calls or message.role == "tool":
            found.add("tools")
        if isinstance(message.content, tuple):
            for part in message.content:
                need = _PART_NEEDS.get(part.get("type", ""))
                if need is not None:
                    found.add(need)
    return frozenset(found)


def answer_format(params: Mapping[str, Any]) -> Literal["text", "json_object", "json_schema"]:
    """What the answer's text must be, by ``response_format``."""
    response_format = params.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, Mapping) else None
    if kind == "json_object":
        return "json_object"
    if kind == "json_schema":
        return "json_schema"
    return "text"


def check_json(text: str, params: Mapping[str, Any]) -> str | None:
    """Why ``text`` is not the answer ``response_format`` asks for; None when it is.

    The text must parse as JSON, and match the schema when ``json_schema`` is ``strict``.
    """
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return f"the answer is not valid JSON ({exc})"
    if answer_format(params) != "json_schema":
        return None if isinstance(value, dict) else "the answer is not a JSON object"
    spec = params["response_format"]["json_schema"]
    if not spec.get("strict"):
        return None
    try:
        jsonschema.validate(value, spec.get("schema", {}))
    except jsonschema.ValidationError as exc:
        return f"the answer does not match the schema ({exc.message})"
    except jsonschema.SchemaError as exc:
        return f"the request's schema is not a valid JSON schema ({exc.message})"
    return None


def lacking(
    route: RouteConfig, providers: Mapping[str, ProviderConfig], wanted: frozenset[Capability]
) -> dict[int, frozenset[Capability]]:
    """The targets of ``route`` (by index) that cannot serve ``wanted``, with what they lack."""
    missing = {}
    for index, target in enumerate(route.targets):
        lacks = wanted - providers[target.provider].capabilities
        if lacks:
            missing[index] = lacks
    return missing
