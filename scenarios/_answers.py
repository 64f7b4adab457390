"""What a simulated model answers beyond plain text: tool calls, JSON, reasoning, image notes.

Real models answer a request with tools by calling one, a request for JSON with a JSON
document, a request for reasoning with reasoning first; the fakes must too, or Baton's handling
of those answers is never exercised. Everything here is a pure function of the conversation,
the request's parameters (in OpenAI's names) and the seed, so two fakes with the same seed
give the same answer and a failover can be checked piece by piece.

The rules (``answer_shape``):

- tools present, ``tool_choice`` not ``"none"``, and no tool result after the last user
  message: the answer is tool calls and no text. A forced choice (OpenAI
  ``{"type": "function", "function": {"name": X}}``) calls X; otherwise, when there are 2+
  tools and ``parallel_tool_calls`` is not false, one call per tool for the first
  ``MAX_PARALLEL_CALLS`` tools in order; else one call to the first tool.
- a tool result after the last user message: text that begins ``Result: <first words of the
  last tool result>.`` and goes on with the seeded answer.
- ``response_format`` ``json_object``/``json_schema``: the text is a JSON document (from the
  schema when one is given), in small pieces, whitespace leading a piece.
- image parts: the text begins ``I see N image(s).``.
- ``reasoning_effort`` set: reasoning text comes first (not on a continued answer).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import attrs
import orjson

from actors import Message

from ._textgen import Words, _Draws, _word, answer_basis, answer_tokens

MAX_PARALLEL_CALLS = 3
MAX_SCHEMA_DEPTH = 4
PieceKind = Literal["reasoning", "text", "tool_call", "tool_args"]

# JSON text cut into pieces of one to four characters, whitespace joining the next piece, so
# no prefix of the document ends in whitespace (Anthropic strips that from a prefill).
_JSON_PIECE = re.compile(r"\s*[^\s]{1,4}", re.DOTALL)
_GENERIC_JSON_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "count": {"type": "integer"},
        "done": {"type": "boolean"},
        "items": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["title", "count", "done", "items"],
}


@attrs.frozen
class Piece:
    """One unit of a planned answer, in the order it is sent.

    ``reasoning``/``text``: ``text`` is a piece of reasoning or answer text. ``tool_call``
    opens call ``index`` (``call_id``, ``name``; ``text`` is empty); ``tool_args`` is a piece
    of that call's JSON arguments (``answer_text`` when the call is how a JSON answer is sent,
    so a client sees those pieces as text). A fault ``at_token=K`` strikes after K pieces.
    """

    kind: PieceKind
    text: str
    index: int | None = None
    call_id: str | None = None
    name: str | None = None
    answer_text: bool = False  # tool_args that are the answer's text (a JSON answer as tool input)


@attrs.frozen
class PlannedCall:
    """A complete tool call the answer makes."""

    id: str
    name: str
    arguments: str


def _draws(*key: Any) -> _Draws:
    return _Draws(hashlib.sha256(orjson.dumps(list(key))).digest())


def _basis_key(messages: Sequence[Message]) -> list[list[str]]:
    return [[m.role, m.text] for m in answer_basis(messages)]


def tools_of(params: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """The ``(name, parameters schema)`` of each function tool in ``params["tools"]``."""
    out = []
    for tool in params.get("tools") or ():
        function = tool.get("function") if isinstance(tool, Mapping) else None
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            schema = function.get("parameters")
            out.append((function["name"], schema if isinstance(schema, Mapping) else {}))
    return out


def _after_tool_result(messages: Sequence[Message]) -> Message | None:
    """The last tool result when one comes after the last user message (prefill ignored)."""
    msgs = list(messages)
    if msgs and msgs[-1].role == "assistant" and not msgs[-1].tool_calls:
        msgs.pop()
    for message in reversed(msgs):
        if message.role == "tool":
            return message
        if message.role == "user":
            return None
    return None


def calls_wanted(messages: Sequence[Message], params: Mapping[str, Any]) -> list[str]:
    """The names of the tools the answer calls, in order; empty for a text answer."""
    tools = tools_of(params)
    choice = params.get("tool_choice")
    if not tools or choice == "none" or _after_tool_result(messages) is not None:
        return []
    names = [name for name, _ in tools]
    if isinstance(choice, Mapping):
        function = choice.get("function")
        forced = function.get("name") if isinstance(function, Mapping) else None
        return [forced] if forced in names else names[:1]
    if len(names) >= 2 and params.get("parallel_tool_calls") is not False:
        return names[:MAX_PARALLEL_CALLS]
    return names[:1]


def plan_calls(
    messages: Sequence[Message],
    params: Mapping[str, Any],
    *,
    kind: str = "openai",
    seed: int = 0,
    words: Words = "plain",
) -> tuple[PlannedCall, ...]:
    """The tool calls the answer makes, with ids (``call_...``, ``toolu_...`` for Anthropic)."""
    schemas = dict(tools_of(params))
    calls = []
    for i, name in enumerate(calls_wanted(messages, params)):
        draws = _draws("tool", seed, words, _basis_key(messages), i, name)
        arguments = value_for(schemas.get(name, {}), draws, words)
        if not isinstance(arguments, dict):
            arguments = {"value": arguments}
        suffix = hashlib.sha256(orjson.dumps([seed, _basis_key(messages), i])).hexdigest()[:24]
        call_id = ("toolu_" if kind == "anthropic" else "call_") + suffix
        calls.append(PlannedCall(id=call_id, name=name, arguments=orjson.dumps(arguments).decode()))
    return tuple(calls)


def json_answer_call(
    messages: Sequence[Message],
    params: Mapping[str, Any],
    text: Sequence[str],
    *,
    kind: str = "openai",
    seed: int = 0,
) -> PlannedCall:
    """The tool call a JSON answer ``text`` is sent as, to the tool ``params["json_tool"]``."""
    suffix = hashlib.sha256(orjson.dumps([seed, _basis_key(messages), "json"])).hexdigest()[:24]
    call_id = ("toolu_" if kind == "anthropic" else "call_") + suffix
    return PlannedCall(id=call_id, name=str(params["json_tool"]), arguments="".join(text))


def value_for(schema: Mapping[str, Any], draws: _Draws, words: Words, depth: int = 0) -> Any:
    """A value that satisfies the (simple) JSON schema ``schema``.

    Handles ``enum``, ``const``, ``anyOf``/``oneOf`` (the first), type lists (the first that
    is not null), objects (required properties always, others by the draw; nested up to
    ``MAX_SCHEMA_DEPTH``), arrays (1-3 items), strings from the word generator, integers,
    numbers, booleans and null. Anything else gets a string.
    """
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][draws.below(len(schema["enum"]))]
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return value_for(schema[key][0], draws, words, depth)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None and "properties" in schema:
        kind = "object"
    if kind == "object":
        if depth >= MAX_SCHEMA_DEPTH:
            return {}
        properties = schema.get("properties") or {}
        required = set(schema.get("required") or ())
        out = {}
        for name, sub in properties.items():
            if name in required or draws.chance(60):
                out[name] = value_for(
                    sub if isinstance(sub, Mapping) else {}, draws, words, depth + 1
                )
        return out
    if kind == "array":
        items = schema.get("items")
        sub = items if isinstance(items, Mapping) else {}
        count = max(int(schema.get("minItems", 1)), 1 + draws.below(3))
        return [value_for(sub, draws, words, depth + 1) for _ in range(count)]
    if kind == "integer":
        low = int(schema.get("minimum", 0))
        high = int(schema.get("maximum", low + 100))
        return low + draws.below(max(high - low, 0) + 1)
    if kind == "number":
        return draws.below(10000) / 100
    if kind == "boolean":
        return draws.chance(50)
    if kind == "null":
        return None
    phrase = [_word(draws, slot, words == "exotic") for slot in "AN"]
    return " ".join(phrase)


def json_tokens(
    messages: Sequence[Message], params: Mapping[str, Any], *, seed: int = 0, words: Words = "plain"
) -> list[str]:
    """The JSON document answering a ``response_format`` request, in small pieces."""
    response_format = params.get("response_format") or {}
    schema: Mapping[str, Any] = _GENERIC_JSON_SCHEMA
    if response_format.get("type") == "json_schema":
        spec = response_format.get("json_schema") or {}
        given = spec.get("schema") if isinstance(spec, Mapping) else None
        if isinstance(given, Mapping) and given:
            schema = given
    draws = _draws("json", seed, words, _basis_key(messages), schema)
    value = value_for(schema, draws, words)
    if not isinstance(value, dict) and response_format.get("type") == "json_object":
        value = {"value": value}
    text = orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
    return _JSON_PIECE.findall(text)


def split_arguments(arguments: str) -> list[str]:
    """A call's arguments in pieces of a few characters, as providers stream them."""
    return [arguments[i : i + 5] for i in range(0, len(arguments), 5)] or ["{}"]


def wants_json(params: Mapping[str, Any]) -> bool:
    response_format = params.get("response_format")
    return isinstance(response_format, Mapping) and response_format.get("type") in (
        "json_object",
        "json_schema",
    )


def wants_reasoning(params: Mapping[str, Any]) -> bool:
    return params.get("reasoning_effort") not in (None, "none", "minimal")


def count_images(messages: Sequence[Message]) -> int:
    """The image parts of the conversation's user messages."""
    return sum(
        1
        for m in messages
        if m.role == "user" and isinstance(m.content, tuple)
        for part in m.content
        if part.get("type") == "image_url"
    )


def text_answer(
    messages: Sequence[Message], params: Mapping[str, Any], *, seed: int = 0, words: Words = "plain"
) -> list[str]:
    """The answer text's tokens (see the module docstring for the prefixes)."""
    if wants_json(params):
        return json_tokens(messages, params, seed=seed, words=words)
    tokens = answer_tokens(messages, seed=seed, words=words)
    prefix: list[str] = []
    images = count_images(messages)
    if images:
        prefix += ["I", " see", f" {images}", " image." if images == 1 else " images."]
    result = _after_tool_result(messages)
    if result is not None:
        head = result.text.split()[:4] or ["nothing"]
        prefix = [*prefix, *(["Result:"] if not prefix else [" Result:"])]
        prefix += [" " + word for word in head]
        prefix[-1] += "."
    if prefix and tokens:
        tokens[0] = " " + tokens[0].lstrip()
    return prefix + tokens


def reasoning_tokens(
    messages: Sequence[Message], *, seed: int = 0, words: Words = "plain"
) -> list[str]:
    """The reasoning that comes before the answer: a shorter text of its own."""
    return answer_tokens(messages, seed=seed ^ 0x5EA5, words=words, length=12 + seed % 5)
