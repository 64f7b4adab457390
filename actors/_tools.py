"""Tool calls held whole: the fragments of one response's calls, put together and checked.

A provider streams a tool call in fragments (the first names its id and function, the rest
add pieces of its JSON arguments). A client that got half a call, or a call twice, from two
providers would run a broken tool; so by default (``tool_streaming = "atomic"``) an attempt
holds its calls here until its response finishes, and only calls that are complete and whose
arguments parse as a JSON object reach the client. An attempt that fails holds nothing the
client saw: the next target writes its calls afresh.
"""

from __future__ import annotations

import attrs
import orjson

from ._errors import Failure, FailureKind, UpstreamError, clip
from ._messages import FunctionCall, ToolCallDelta


@attrs.define
class _Call:
    id: str | None = None
    name: str | None = None
    arguments: list[str] = attrs.field(factory=list)


class ToolCallBuffer:
    """The tool calls of one attempt's response, by index, as their fragments arrive."""

    def __init__(self) -> None:
        self._calls: dict[int, _Call] = {}

    def __bool__(self) -> bool:
        return bool(self._calls)

    def add(self, part: ToolCallDelta) -> None:
        index = part.index
        call = self._calls.get(index)
        if call is not None and part.id and call.id and part.id != call.id:
            # Some servers give every call index 0 and tell them apart by id alone.
            index = max(self._calls) + 1
            call = None
        if call is None:
            call = self._calls[index] = _Call()
        call.id = call.id or part.id
        call.name = call.name or part.name
        if part.arguments:
            call.arguments.append(part.arguments)

    def complete(self) -> tuple[tuple[int, FunctionCall], ...]:
        """Every call, numbered from 0 in the provider's order, checked whole.

        Raises ``UpstreamError`` (``MALFORMED``, the provider's fault) for a call without a
        function name or whose arguments are not a JSON object. A call without an id (some
        OpenAI-compatible servers send none) gets ``call_<n>``, unique in its response.
        """
        calls = []
        for number, index in enumerate(sorted(self._calls)):
            call = self._calls[index]
            if not call.name:
                raise _malformed(f"tool call {number} has no function name")
            arguments = "".join(call.arguments) or "{}"
            try:
                parsed = orjson.loads(arguments)
            except orjson.JSONDecodeError:
                parsed = None
            if not isinstance(parsed, dict):
                raise _malformed(
                    f"tool call {number} ({clip(call.name)}) has arguments that are not a JSON "
                    f"object: {clip(arguments)}"
                )
            call_id = call.id or f"call_{number}"
            calls.append((number, FunctionCall(id=call_id, name=call.name, arguments=arguments)))
        ids = [c.id for _, c in calls]
        if len(set(ids)) != len(ids):
            raise _malformed("two tool calls of the answer have the same id")
        return tuple(calls)


def _malformed(message: str) -> UpstreamError:
    return UpstreamError(Failure(kind=FailureKind.MALFORMED, message=message))
