"""The adapter for Anthropic's Messages API.

``AnthropicProvider.stream`` posts ``/v1/messages`` with ``stream: true``;
``AnthropicEventParser`` turns the named events (``message_start`` ... ``message_stop``) into
upstream events. ``base_url`` is the API's root as Anthropic's SDK has it
(``https://api.anthropic.com``); a ``base_url`` that already ends in ``/v1`` is used as is, so
both spellings work and neither doubles the version.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Literal

import httpx
import orjson

from actors import (
    Failure,
    FailureKind,
    Finish,
    Malformed,
    ProviderConfig,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    UpstreamError,
    UpstreamEvent,
    UpstreamRequest,
    Usage,
)

from ._anthropic_request import dropped_fields, messages_body, translate
from ._base import HTTPProvider
from ._errors import failure_from_stream_error
from ._http import MALFORMED_RAW_CHARS
from ._sse import SSEEvent

# The request half lives in ``_anthropic_request``; its entry points are reached from here too.
__all__ = [
    "STOP_REASONS", "AnthropicEventParser", "AnthropicProvider", "dropped_fields",
    "messages_body", "translate",
]  # fmt: skip

logger = logging.getLogger(__name__)

#: Anthropic's stop reasons in OpenAI's words; unknown reasons pass through unchanged.
STOP_REASONS: Mapping[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


class AnthropicEventParser:
    """Turns one attempt's Messages API events into upstream events.

    Content blocks are told apart by the SSE ``index``: a ``text`` block's ``text_delta`` gives
    ``TextDelta``; a ``tool_use`` block opens ``ToolCallDelta(index=n)`` (its n-th tool use,
    from 0, with id and name) and its ``input_json_delta`` pieces add ``arguments``; a
    ``thinking`` block's ``thinking_delta`` gives ``ReasoningDelta``. The synthetic JSON tool
    (``json_tool``, see ``translate``) is no tool call: its input pieces are the answer's text,
    and its ``tool_use`` stop is finish ``stop``.

    Lost on the way: ``signature_delta`` and ``redacted_thinking`` blocks give nothing, since
    OpenAI's format has no place for them; so a tool loop with thinking cannot hand the signed
    thinking back, and ``translate`` turns thinking off inside one.

    ``message_delta`` with a ``stop_reason`` gives ``Finish`` with usage (prompt tokens from
    ``message_start``, completion tokens from ``message_delta``; no usage unless both were
    reported; cache reads and writes as reported); ``message_stop`` ends the stream; ``error``
    raises ``UpstreamError`` (``STREAM_ERROR``). ``ping`` and event and delta types added later
    are ignored, as Anthropic's versioning policy asks.
    """

    def __init__(self, *, secret: str | None = None, json_tool: str | None = None) -> None:
        self._secret = secret
        self._json_tool = json_tool
        self._model: str | None = None
        self._usage: dict[str, int] = {}
        self._prompt_tokens: int | None = None
        self._finished = False
        # SSE block index -> "text", "thinking", "json", or the tool call's index.
        self._blocks: dict[int, str | int] = {}
        self._tool_calls = 0

    def __repr__(self) -> str:
        return (
            f"<AnthropicEventParser model={self._model!r} blocks={self._blocks!r} "
            f"finished={self._finished}>"
        )

    def feed(self, events: list[SSEEvent], out: deque[UpstreamEvent]) -> bool:
        """Append the upstream events for ``events`` to ``out``; return true at ``message_stop``."""
        for event in events:
            data = event.data
            try:
                payload = orjson.loads(data)
            except orjson.JSONDecodeError:
                payload = None
            if type(payload) is not dict:
                out.append(Malformed(raw=data[:MALFORMED_RAW_CHARS]))
                continue
            kind = payload.get("type") or event.event
            if kind == "content_block_delta":
                if not self._delta(payload, out):
                    out.append(Malformed(raw=data[:MALFORMED_RAW_CHARS]))
            elif kind == "content_block_start":
                if not self._block_start(payload, out):
                    out.append(Malformed(raw=data[:MALFORMED_RAW_CHARS]))
            elif kind == "message_start":
                self._message_start(payload.get("message"))
            elif kind == "message_delta":
                self._message_delta(payload, out)
            elif kind == "message_stop":
                return True
            elif kind == "error":
                failure = failure_from_stream_error(payload, secret=self._secret)
                raise UpstreamError(
                    failure
                    or Failure(
                        kind=FailureKind.STREAM_ERROR, message="the provider sent an error event"
                    )
                )
        return False

    def _block_start(self, payload: dict[str, Any], out: deque[UpstreamEvent]) -> bool:
        """Note what block ``index`` holds; false for a start that makes no sense."""
        index = payload.get("index")
        block = payload.get("content_block")
        if type(index) is not int or not isinstance(block, dict):
            return False
        kind = block.get("type")
        if kind == "tool_use":
            call_id, name = block.get("id"), block.get("name")
            if not isinstance(call_id, str) or not isinstance(name, str):
                return False
            if name == self._json_tool:
                self._blocks[index] = "json"
                return True
            self._blocks[index] = self._tool_calls
            out.append(ToolCallDelta(index=self._tool_calls, id=call_id, name=name))
            self._tool_calls += 1
        elif kind in ("text", "thinking"):
            self._blocks[index] = kind
            initial = block.get(kind)  # normally "", but a start may carry text already
            if isinstance(initial, str) and initial:
                out.append(TextDelta(initial) if kind == "text" else ReasoningDelta(initial))
        return True

    def _delta(self, payload: dict[str, Any], out: deque[UpstreamEvent]) -> bool:
        """Translate one ``content_block_delta``; false for one that does not decode."""
        delta = payload.get("delta")
        if not isinstance(delta, dict):
            return False
        kind = delta.get("type")
        field = {"text_delta": "text", "thinking_delta": "thinking"}.get(kind or "")
        if kind == "input_json_delta":
            field = "partial_json"
        elif field is None:
            return True  # signature_delta, citations_delta, types added later
        piece = delta.get(field)
        if not isinstance(piece, str):
            return False
        if kind == "thinking_delta":
            if piece:
                out.append(ReasoningDelta(piece))
            return True
        if kind == "text_delta":
            if piece:
                out.append(TextDelta(piece))
            return True
        block = self._blocks.get(payload.get("index"))  # type: ignore[arg-type]
        if block == "json":
            if piece:
                out.append(TextDelta(piece))
        elif isinstance(block, int):
            if piece:
                out.append(ToolCallDelta(index=block, arguments=piece))
        else:
            return False  # tool input for a block that was never opened as a tool use
        return True

    def _message_start(self, message: object) -> None:
        if not isinstance(message, dict):
            return
        model = message.get("model")
        if isinstance(model, str) and model:
            self._model = model
        self._note_usage(message.get("usage"))

    def _note_usage(self, usage: object) -> None:
        if not isinstance(usage, dict):
            return
        # Newer API versions repeat the (cumulative) input counts in message_delta; they win.
        self._prompt_tokens = _prompt_tokens(usage, self._prompt_tokens)
        for key, value in usage.items():
            if type(value) is int:
                self._usage[key] = value

    def _message_delta(self, payload: dict[str, Any], out: deque[UpstreamEvent]) -> None:
        usage = payload.get("usage")
        completion: int | None = None
        if isinstance(usage, dict):
            self._note_usage(usage)
            output = usage.get("output_tokens")
            completion = output if type(output) is int else None
        delta = payload.get("delta")
        reason = delta.get("stop_reason") if isinstance(delta, dict) else None
        if isinstance(reason, str) and reason and not self._finished:
            self._finished = True
            prompt = self._prompt_tokens
            counts = None
            if prompt is not None and completion is not None:
                counts = Usage(
                    prompt_tokens=prompt,
                    completion_tokens=completion,
                    cached_tokens=self._usage.get("cache_read_input_tokens"),
                    cache_creation_tokens=self._usage.get("cache_creation_input_tokens"),
                )
            if reason == "tool_use" and self._tool_calls == 0 and "json" in self._blocks.values():
                reason = "end_turn"  # the JSON answer is text to the client
            out.append(
                Finish(reason=STOP_REASONS.get(reason, reason), usage=counts, model=self._model)
            )


def _prompt_tokens(usage: dict[str, Any], default: int | None) -> int | None:
    """Prompt tokens as OpenAI counts them: Anthropic's ``input_tokens`` leaves out the tokens
    read from or written to the prompt cache, OpenAI's ``prompt_tokens`` includes them."""
    counts = [
        usage.get(k)
        for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    ]
    if type(counts[0]) is not int:
        return default
    return sum(c for c in counts if isinstance(c, int))


class AnthropicProvider(HTTPProvider):
    """One Anthropic Messages API provider over one ``httpx.AsyncClient``.

    ``api_key`` is sent as ``x-api-key`` and never logged. See ``HTTPProvider`` for ``client``
    and ``probe_model``.
    """

    def __init__(
        self,
        config: ProviderConfig,
        *,
        client: httpx.AsyncClient | None = None,
        api_key: str | None = None,
        probe_model: str | None = None,
    ) -> None:
        headers = {
            "content-type": "application/json",
            "anthropic-version": config.anthropic_version,
        }
        if api_key:
            headers["x-api-key"] = api_key
        base = config.base_url.rstrip("/")
        root = base if base.endswith("/v1") else f"{base}/v1"
        super().__init__(
            config,
            client=client,
            api_key=api_key,
            probe_model=probe_model,
            headers=headers,
            stream_url=f"{root}/messages",
            models_url=f"{root}/models",
        )

    @property
    def kind(self) -> Literal["anthropic"]:
        """The API this adapter speaks."""
        return "anthropic"

    @asynccontextmanager
    async def stream(
        self, request: UpstreamRequest, *, read_delay: Callable[[], float] | None = None
    ) -> AsyncIterator[AsyncIterator[UpstreamEvent]]:
        """Open a streaming Messages API call and yield its upstream events.

        Entering waits for the response head and raises ``UpstreamError`` when the provider
        refuses; iterating raises it when the stream breaks; leaving closes the response at
        once. See ``actors._provider.Provider``.
        """
        translation = translate(request)
        if translation.dropped:
            logger.debug(
                "provider %s: dropped fields Anthropic has no equivalent for: %s",
                self.name,
                ", ".join(translation.dropped),
            )
        parser = AnthropicEventParser(secret=self._api_key, json_tool=translation.json_tool)
        async with self._open_stream(translation.body, parser, read_delay) as events:
            yield events

    def _probe_body(self, model: str) -> dict[str, Any]:
        return {"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": "ping"}]}
