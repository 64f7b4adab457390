"""The adapter for OpenAI's chat completions API and the servers that copy it (vLLM, DeepSeek...).

``OpenAIProvider.stream`` posts ``{base_url}/chat/completions`` with ``stream: true`` and asks for
the final usage chunk (``stream_options.include_usage``; a server that refuses the field is asked
again without it, and from then on never with it); ``OpenAIChunkParser`` turns the
``data: {chunk}`` events into upstream events. ``base_url`` includes the version path, as
OpenAI's SDK has it (``https://api.openai.com/v1``).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Literal

import httpx
import orjson

from actors import (
    Failure,
    FailureKind,
    Finish,
    Malformed,
    Message,
    ProviderConfig,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    UpstreamError,
    UpstreamEvent,
    UpstreamRequest,
    Usage,
    UsageReport,
)

from ._base import HTTPProvider
from ._errors import failure_from_stream_error, redact
from ._http import MALFORMED_RAW_CHARS
from ._sse import SSEEvent

logger = logging.getLogger(__name__)

#: Finish reasons some OpenAI-compatible servers spell their own way, in OpenAI's words.
FINISH_REASON_ALIASES: Mapping[str, str] = {
    "eos": "stop",
    "eos_token": "stop",
    "stop_sequence": "stop",
    "end_turn": "stop",
    "max_tokens": "length",
}


def chat_body(
    request: UpstreamRequest, *, honours_prefill: bool, include_usage: bool = True
) -> dict[str, Any]:
    """Build the JSON body of a streaming chat completion for ``request``.

    The client's ``params`` go first so that they can never turn streaming off or the usage
    report on a streamed answer (``include_usage``) off; without ``include_usage`` (a server
    that rejects ``stream_options``) the body carries no ``stream_options`` at all. A prefill
    request sends its trailing assistant message as it is. Only when the provider is configured
    to honour prefill (``config.prefill = true``: the user vouches for the server) do we add the
    flags that make a server continue that message instead of answering it: vLLM's
    ``continue_final_message`` / ``add_generation_prompt`` and DeepSeek's and Mistral's
    per-message ``prefix``. Strict servers reject fields they do not know, so a plain
    OpenAI-compatible provider never sees them.
    """
    messages = [wire_message(m) for m in request.messages]
    body: dict[str, Any] = dict(request.params)
    stream_options = body.pop("stream_options", None)
    if include_usage:
        body["stream_options"] = {
            **(stream_options if isinstance(stream_options, Mapping) else {}),
            "include_usage": True,
        }
    body["model"] = request.model
    body["messages"] = messages
    body["stream"] = True
    if request.prefill and honours_prefill and messages and messages[-1]["role"] == "assistant":
        messages[-1]["prefix"] = True
        body["continue_final_message"] = True
        body["add_generation_prompt"] = False
    return body


def wire_message(message: Message) -> dict[str, Any]:
    """``message`` as OpenAI takes it: content (text, parts or null), tool calls, call id, name.

    Fields a message does not use are left out rather than sent as null, since some
    OpenAI-compatible servers refuse ``tool_calls: []`` or ``tool_call_id: null``.
    """
    content = message.content
    wire: dict[str, Any] = {
        "role": message.role,
        "content": list(content) if isinstance(content, tuple) else content,
    }
    if message.tool_calls:
        wire["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        wire["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        wire["name"] = message.name
    return wire


def _count(details: object, key: str) -> int | None:
    value = details.get(key) if isinstance(details, dict) else None
    return value if type(value) is int else None


def _usage(value: object) -> Usage | None:
    """Read an OpenAI ``usage`` object; ``None`` when absent (``"usage": null``) or unusable.

    The details (``prompt_tokens_details.cached_tokens``,
    ``completion_tokens_details.reasoning_tokens``) are kept when the server sent them.
    """
    if not isinstance(value, dict):
        return None
    prompt = value.get("prompt_tokens")
    completion = value.get("completion_tokens")
    if type(prompt) is not int or type(completion) is not int:
        return None
    details: dict[str, Any] = {
        "cached_tokens": _count(value.get("prompt_tokens_details"), "cached_tokens"),
        "reasoning_tokens": _count(value.get("completion_tokens_details"), "reasoning_tokens"),
    }
    total = value.get("total_tokens")
    if type(total) is int:
        details["total_tokens"] = total
    return Usage(prompt_tokens=prompt, completion_tokens=completion, **details)


def rejects_stream_options(failure: Failure) -> bool:
    """Whether a refusal is a strict server's complaint about the ``stream_options`` field."""
    return (
        failure.kind is FailureKind.STATUS
        and failure.status in (400, 422)
        and "stream_options" in failure.message
    )


class OpenAIChunkParser:
    """Turns one attempt's ``chat.completion.chunk`` events into upstream events.

    ``choices[0].delta.content`` gives ``TextDelta`` (with the chunk's ``logprobs.content``;
    empty and role-only deltas give nothing), ``delta.reasoning_content`` (or ``reasoning``)
    ``ReasoningDelta``, each ``delta.tool_calls`` entry a ``ToolCallDelta``,
    the first ``finish_reason`` gives ``Finish`` (with usage when the same chunk carries it),
    a later usage-only chunk (``choices: []``) gives ``UsageReport``, ``[DONE]`` ends the
    stream, undecodable JSON gives ``Malformed``. An ``{"error": ...}`` payload raises
    ``UpstreamError`` (``STREAM_ERROR``). Reading goes on after ``Finish`` so that the usage
    chunk that follows it is not lost; a session that cannot wait simply stops reading.
    """

    def __init__(self, *, secret: str | None = None) -> None:
        self._secret = secret
        self._model: str | None = None
        self._finished = False

    def __repr__(self) -> str:
        return f"<OpenAIChunkParser model={self._model!r} finished={self._finished}>"

    def feed(self, events: list[SSEEvent], out: deque[UpstreamEvent]) -> bool:
        """Append the upstream events for ``events`` to ``out``; return true at ``[DONE]``."""
        for event in events:
            data = event.data
            if data[:1] != "{" and data.strip() == "[DONE]":
                return True
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError:
                if event.event == "error":  # a server's plain-text error event: log it only
                    logger.info("upstream plain-text error event: %s", redact(data, self._secret))
                    message = "the provider sent an error event that was not a structured error"
                    raise UpstreamError(
                        Failure(kind=FailureKind.STREAM_ERROR, message=message)
                    ) from None
                out.append(Malformed(raw=data[:MALFORMED_RAW_CHARS]))
                continue
            if type(chunk) is not dict:
                out.append(Malformed(raw=data[:MALFORMED_RAW_CHARS]))
                continue
            if "error" in chunk or chunk.get("object") == "error" or event.event == "error":
                failure = failure_from_stream_error(chunk, secret=self._secret)
                if failure is not None:
                    raise UpstreamError(failure)
            self._chunk(chunk, data, out)
        return False

    def _chunk(self, chunk: dict[str, Any], data: str, out: deque[UpstreamEvent]) -> None:
        model = chunk.get("model")
        if isinstance(model, str) and model:
            self._model = model
        choices = chunk.get("choices")
        if choices is None:
            choices = []
        elif not isinstance(choices, list):
            out.append(Malformed(raw=data[:MALFORMED_RAW_CHARS]))
            return
        reason: str | None = None
        for choice in choices:
            # With n > 1 every choice streams; Baton serves the first.
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict) and not self._delta(delta, choice, out):
                out.append(Malformed(raw=data[:MALFORMED_RAW_CHARS]))
            finish_reason = choice.get("finish_reason")
            if isinstance(finish_reason, str) and finish_reason:
                reason = FINISH_REASON_ALIASES.get(finish_reason, finish_reason)
        usage = chunk.get("usage")
        if usage is not None:
            usage = _usage(usage)
        if reason is not None and not self._finished:
            self._finished = True
            out.append(Finish(reason=reason, usage=usage, model=self._model))
        elif usage is not None and (self._finished or not choices):
            # Usage on every chunk (vLLM's continuous usage stats) is only reported once the
            # answer finished; OpenAI's usage-only chunk (choices: []) always.
            out.append(UsageReport(usage=usage))

    def _delta(
        self, delta: dict[str, Any], choice: dict[str, Any], out: deque[UpstreamEvent]
    ) -> bool:
        """Append the events of one ``delta``; false when part of it cannot be read."""
        ok = True
        # vLLM and DeepSeek say ``reasoning_content``; Ollama and OpenRouter say ``reasoning``.
        for key in ("reasoning_content", "reasoning"):
            reasoning = delta.get(key)
            if isinstance(reasoning, str):
                if reasoning:
                    out.append(ReasoningDelta(reasoning))
                break
        content = delta.get("content")
        if isinstance(content, str):
            if content:
                out.append(TextDelta(content, _logprobs(choice.get("logprobs"))))
        elif content is not None:
            ok = False
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for position, call in enumerate(calls):
                fragment = _tool_call_delta(call, position)
                if fragment is None:
                    ok = False
                else:
                    out.append(fragment)
        elif calls is not None:
            ok = False
        return ok


def _logprobs(value: object) -> tuple[Any, ...] | None:
    """The token entries of a choice's ``logprobs`` (``{"content": [...]}``), if any."""
    content = value.get("content") if isinstance(value, dict) else None
    return tuple(content) if isinstance(content, list) and content else None


def _tool_call_delta(call: object, position: int) -> ToolCallDelta | None:
    """One ``delta.tool_calls`` entry as a fragment; None when it is not one.

    Servers differ: OpenAI sends ``id`` and ``name`` once, then argument pieces; some send a
    whole call in one entry, repeat ``id``/``name`` on every piece, or leave out ``index``
    when they send one call per chunk (the entry's position stands in for it).
    """
    if not isinstance(call, dict):
        return None
    index = call.get("index", position)
    function = call.get("function") or {}
    if type(index) is not int or index < 0 or not isinstance(function, dict):
        return None
    call_id, name = call.get("id"), function.get("name")
    arguments = function.get("arguments") or ""
    if not (
        isinstance(call_id, (str, type(None)))
        and isinstance(name, (str, type(None)))
        and isinstance(arguments, str)
    ):
        return None
    return ToolCallDelta(index=index, id=call_id or None, name=name or None, arguments=arguments)


class OpenAIProvider(HTTPProvider):
    """One OpenAI-compatible provider over one ``httpx.AsyncClient``.

    ``api_key`` is sent as ``Authorization: Bearer`` and never logged. See ``HTTPProvider`` for
    ``client`` and ``probe_model``.
    """

    def __init__(
        self,
        config: ProviderConfig,
        *,
        client: httpx.AsyncClient | None = None,
        api_key: str | None = None,
        probe_model: str | None = None,
    ) -> None:
        headers = {"content-type": "application/json"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        base = config.base_url.rstrip("/")
        super().__init__(
            config,
            client=client,
            api_key=api_key,
            probe_model=probe_model,
            headers=headers,
            stream_url=f"{base}/chat/completions",
            models_url=f"{base}/models",
        )
        # Cleared for good by a server that refuses ``stream_options``.
        self._asks_usage = True

    @property
    def kind(self) -> Literal["openai"]:
        """The API this adapter speaks."""
        return "openai"

    @asynccontextmanager
    async def stream(
        self, request: UpstreamRequest, *, read_delay: Callable[[], float] | None = None
    ) -> AsyncIterator[AsyncIterator[UpstreamEvent]]:
        """Open a streaming chat completion and yield its upstream events.

        Entering waits for the response head and raises ``UpstreamError`` when the provider
        refuses; iterating raises it when the stream breaks; leaving closes the response at
        once. See ``actors._provider.Provider``. A refusal that names ``stream_options`` is
        asked again at once without it (the answer then reports no usage).
        """
        prefill = self._config.prefill is True
        async with AsyncExitStack() as stack:
            asked = self._asks_usage
            body = chat_body(request, honours_prefill=prefill, include_usage=asked)
            parser = OpenAIChunkParser(secret=self._api_key)
            try:
                events = await stack.enter_async_context(
                    self._open_stream(body, parser, read_delay)
                )
            except UpstreamError as exc:
                if not (asked and rejects_stream_options(exc.failure)):
                    raise
                self._asks_usage = False
                logger.warning(
                    "provider %s: refuses stream_options (%s); asking without it, so its "
                    "answers report no usage",
                    self.name, exc.failure.describe(),
                )  # fmt: skip
                body = chat_body(request, honours_prefill=prefill, include_usage=False)
                parser = OpenAIChunkParser(secret=self._api_key)
                events = await stack.enter_async_context(
                    self._open_stream(body, parser, read_delay)
                )
            yield events

    def _probe_body(self, model: str) -> dict[str, Any]:
        return {
            "model": model,
            "messages": [{"role": "user", "content": "ping"}],
            "max_tokens": 1,
            "stream": False,
        }
