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
    TextDelta,
    UpstreamError,
    UpstreamEvent,
    UpstreamRequest,
    Usage,
)

from ._base import HTTPProvider
from ._errors import failure_from_stream_error
from ._http import MALFORMED_RAW_CHARS
from ._sse import SSEEvent

logger = logging.getLogger(__name__)

#: Anthropic requires ``max_tokens``; OpenAI clients often omit it and expect no cap, so the
#: default is the largest value every current Claude model accepts.
DEFAULT_MAX_TOKENS = 4096

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


def messages_body(request: UpstreamRequest) -> dict[str, Any]:
    """Build the JSON body of a streaming Messages API call for ``request``.

    System messages move to the top-level ``system`` (several are joined by a blank line);
    consecutive messages of one role are merged the same way, since Anthropic wants turns to
    alternate. A trailing assistant message is a prefill, which Anthropic always continues; it
    rejects one that ends in whitespace, so trailing whitespace is stripped (and an empty
    prefill dropped). The model then writes that whitespace itself or not at all, and the
    session's splice guard copes with either at the boundary. OpenAI-named ``params`` are
    translated; those Anthropic does not know are dropped, because it rejects unknown fields.
    """
    system: list[str] = []
    turns: list[tuple[str, list[str]]] = []
    for message in request.messages:
        if message.role == "system":
            system.append(message.content)
        elif turns and turns[-1][0] == message.role:
            turns[-1][1].append(message.content)
        else:
            turns.append((message.role, [message.content]))
    messages = [
        {"role": role, "content": "\n\n".join(p for p in parts if p)} for role, parts in turns
    ]
    if messages and messages[-1]["role"] == "assistant":
        prefill = messages[-1]["content"].rstrip()
        if prefill:
            messages[-1]["content"] = prefill
        else:
            messages.pop()
    body: dict[str, Any] = {"model": request.model, "messages": messages, "stream": True}
    joined_system = "\n\n".join(s for s in system if s)
    if joined_system:
        body["system"] = joined_system
    body.update(_translate_params(request.params))
    return body


def _translate_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Translate OpenAI generation parameters into Anthropic's."""
    out: dict[str, Any] = {}
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
    return out


class AnthropicEventParser:
    """Turns one attempt's Messages API events into upstream events.

    ``content_block_delta`` with a ``text_delta`` gives ``TextDelta`` (thinking and tool-input
    deltas are not answer text); ``message_delta`` with a ``stop_reason`` gives ``Finish`` with
    usage (prompt tokens from ``message_start``, completion tokens from ``message_delta``; no
    usage unless both were reported);
    ``message_stop`` ends the stream; ``error`` raises ``UpstreamError`` (``STREAM_ERROR``).
    ``ping``, block start/stop and event types added later are ignored, as Anthropic's
    versioning policy asks.
    """

    def __init__(self, *, secret: str | None = None) -> None:
        self._secret = secret
        self._model: str | None = None
        self._prompt_tokens: int | None = None
        self._finished = False

    def __repr__(self) -> str:
        return f"<AnthropicEventParser model={self._model!r} finished={self._finished}>"

    def feed(self, events: list[SSEEvent], out: deque[UpstreamEvent]) -> bool:
        """Append the upstream events for ``events`` to ``out``; return true at ``message_stop``."""
        for event in events:
            data = event.data
            try:
                payload = orjson.loads(data)
            except orjson.JSONDecodeError:
                out.append(Malformed(raw=data[:MALFORMED_RAW_CHARS]))
                continue
            if type(payload) is not dict:
                out.append(Malformed(raw=data[:MALFORMED_RAW_CHARS]))
                continue
            kind = payload.get("type") or event.event
            if kind == "content_block_delta":
                delta = payload.get("delta")
                if isinstance(delta, dict) and delta.get("type") == "text_delta":
                    text = delta.get("text")
                    if not isinstance(text, str):
                        out.append(Malformed(raw=data[:MALFORMED_RAW_CHARS]))
                    elif text:
                        out.append(TextDelta(text))
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

    def _message_start(self, message: object) -> None:
        if not isinstance(message, dict):
            return
        model = message.get("model")
        if isinstance(model, str) and model:
            self._model = model
        usage = message.get("usage")
        if isinstance(usage, dict):
            self._prompt_tokens = _prompt_tokens(usage, self._prompt_tokens)

    def _message_delta(self, payload: dict[str, Any], out: deque[UpstreamEvent]) -> None:
        usage = payload.get("usage")
        completion: int | None = None
        if isinstance(usage, dict):
            # Newer API versions repeat the (cumulative) input counts here; they win if present.
            self._prompt_tokens = _prompt_tokens(usage, self._prompt_tokens)
            output = usage.get("output_tokens")
            completion = output if type(output) is int else None
        delta = payload.get("delta")
        reason = delta.get("stop_reason") if isinstance(delta, dict) else None
        if isinstance(reason, str) and reason and not self._finished:
            self._finished = True
            prompt = self._prompt_tokens
            counts = None
            if prompt is not None and completion is not None:
                counts = Usage(prompt_tokens=prompt, completion_tokens=completion)
            reason = STOP_REASONS.get(reason, reason)
            out.append(Finish(reason=reason, usage=counts, model=self._model))


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
        parser = AnthropicEventParser(secret=self._api_key)
        async with self._open_stream(messages_body(request), parser, read_delay) as events:
            yield events

    def _probe_body(self, model: str) -> dict[str, Any]:
        return {"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": "ping"}]}
