"""Issue 16's "done when": a tool loop through Baton survives a reset inside a tool call.

The official ``openai`` SDK (sync and async, streamed and not) runs a two-step tool loop
against Baton's HTTP API on 127.0.0.1: the model calls ``get_weather``, the client returns the
tool's result, the model answers. Both providers are the simulated HTTP servers, reached
through Baton's real adapters; the primary (OpenAI's API) resets the connection halfway through
the tool call's arguments. The SDK must receive exactly one complete tool call (the backup's)
and then the final answer, with an OpenAI-kind backup and with an Anthropic-kind one.
Also here: a vision request and a ``json_schema`` request through both kinds, and a JSON
answer cut mid-document that still parses at the client.
"""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from typing import Any

import pytest

from actors import config_from_dict, parse_messages
from scenarios import Behaviour, FaultSchedule, open_simulated_provider, plan_attempt
from transport.providers import AnthropicProvider, OpenAIProvider

from .test_http import running
from .test_openai_sdk import FLAVOURS, call, stream

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city now.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
            "required": ["city", "unit"],
        },
    },
}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


def _tool_args_midpoint(kind: str) -> int:
    """After how many pieces the primary's answer is halfway through the call's arguments."""
    plan = plan_attempt(
        Behaviour(), parse_messages(QUESTION), kind=kind, params={"tools": [WEATHER]}
    )
    args = plan.piece_indexes("tool_args")
    assert len(args) >= 4, "the call's arguments must come in several pieces to be cut inside"
    return args[len(args) // 2]


class Upstreams:
    """The two simulated providers and Baton's config over them."""

    def __init__(self, primary: Any, backup: Any, backup_kind: str) -> None:
        self.primary = primary
        self.backup = backup
        self.config = {
            "providers": {
                "primary": {"kind": "openai", "base_url": base_url(primary, "openai")},
                "backup": {"kind": backup_kind, "base_url": base_url(backup, backup_kind)},
            },
            "routes": {
                "default": {
                    "targets": [
                        {"provider": "primary", "model": "sim-gpt"},
                        {"provider": "backup", "model": "sim-backup"},
                    ]
                }
            },
        }


def base_url(sim: Any, kind: str) -> str:
    """Where an adapter of ``kind`` finds the simulator: OpenAI's base URL has the version."""
    root = f"http://{sim.host}:{sim.port}"
    return f"{root}/v1" if kind == "openai" else root


async def _serve(
    stack: AsyncExitStack,
    primary_schedule: FaultSchedule,
    backup_kind: str,
    *,
    backup_seed: int = 7,
    backup_prefill: bool | None = None,
):
    primary = await stack.enter_async_context(open_simulated_provider(primary_schedule))
    backup = await stack.enter_async_context(open_simulated_provider(seed=backup_seed))
    upstreams = Upstreams(primary, backup, backup_kind)
    if backup_prefill is not None:
        upstreams.config["providers"]["backup"]["prefill"] = backup_prefill
    cfg = config_from_dict(upstreams.config)
    adapters = {
        name: (AnthropicProvider if pc.kind == "anthropic" else OpenAIProvider)(pc)
        for name, pc in cfg.providers.items()
    }
    for adapter in adapters.values():
        stack.push_async_callback(adapter.aclose)
    server = await stack.enter_async_context(running(upstreams.config, adapters))
    return server, upstreams


async def _ask(server: Any, flavour: str, streamed: bool, messages: list[Any]) -> dict[str, Any]:
    """One step of the loop as the SDK user sees it: text, tool calls, finish reason."""
    kwargs: dict[str, Any] = {"model": "default", "messages": messages, "tools": [WEATHER]}
    if streamed:
        chunks, error = await stream(server, flavour, **kwargs)
        assert error is None, error
        calls: dict[int, dict[str, str]] = {}
        text, finish = "", None
        for chunk in chunks:
            if not chunk.choices:
                continue
            choice = chunk.choices[0]
            text += choice.delta.content or ""
            for part in choice.delta.tool_calls or ():
                entry = calls.setdefault(part.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] += part.id or ""
                entry["name"] += (part.function.name or "") if part.function else ""
                entry["arguments"] += (part.function.arguments or "") if part.function else ""
            finish = choice.finish_reason or finish
        return {"text": text, "calls": [calls[i] for i in sorted(calls)], "finish": finish}
    completion = await call(
        server, flavour,
        lambda c: c.chat.completions.create(**kwargs),
        lambda c: c.chat.completions.create(**kwargs),
    )  # fmt: skip
    message = completion.choices[0].message
    calls_out = [
        {"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
        for c in message.tool_calls or ()
    ]
    return {
        "text": message.content or "",
        "calls": calls_out,
        "finish": completion.choices[0].finish_reason,
    }


@FLAVOURS
@pytest.mark.parametrize("streamed", [True, False], ids=["stream", "whole"])
@pytest.mark.parametrize("backup_kind", ["openai", "anthropic"])
async def test_a_tool_loop_survives_a_reset_inside_the_tool_call(flavour, streamed, backup_kind):
    cut = _tool_args_midpoint("openai")
    schedule = FaultSchedule.first(1, Behaviour("reset", at_token=cut))
    async with AsyncExitStack() as stack:
        server, upstreams = await _serve(stack, schedule, backup_kind)
        first = await _ask(server, flavour, streamed, QUESTION)

        # The primary really broke inside the arguments: it sent the call's opening and part
        # of its arguments, and no finish.
        broken = upstreams.primary.log[0]
        assert broken.outcome == "reset"
        kinds = [p.kind for p in broken.pieces_sent]
        assert "tool_call" in kinds and kinds[-1] == "tool_args"
        assert len(upstreams.backup.log) == 1

        assert first["finish"] == "tool_calls"
        assert len(first["calls"]) == 1, first["calls"]
        (tool_call,) = first["calls"]
        assert tool_call["name"] == "get_weather"
        arguments = json.loads(tool_call["arguments"])
        assert set(arguments) == {"city", "unit"} and arguments["unit"] in ("C", "F")
        backup_call = upstreams.backup.log[0]
        backup_ids = [p.call_id for p in backup_call.pieces_sent if p.kind == "tool_call"]
        assert tool_call["id"] == backup_ids[0]  # the backup's call, not a mix

        follow_up = [
            *QUESTION,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": tool_call["id"],
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": tool_call["arguments"]},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": tool_call["id"], "content": "18 degrees and sunny"},
        ]
        second = await _ask(server, flavour, streamed, follow_up)
    assert second["calls"] == [] and second["finish"] == "stop"
    assert second["text"].startswith("Result: 18 degrees and sunny")
    # The healed primary answered the second step, with the tool result it was sent.
    answered = upstreams.primary.log[-1].request.messages
    assert [m.role for m in answered][-2:] == ["assistant", "tool"]


IMAGE_DATA = (  # a 1x1 PNG
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAE"
    "hQGAhKmMIQAAAABJRU5ErkJggg=="
)


def one_target_config(sim: Any, kind: str) -> dict[str, Any]:
    return {
        "providers": {"p": {"kind": kind, "base_url": base_url(sim, kind)}},
        "routes": {"default": {"targets": [{"provider": "p", "model": "sim-model"}]}},
    }


async def _serve_one(stack: AsyncExitStack, kind: str, schedule: FaultSchedule | None = None):
    sim = await stack.enter_async_context(open_simulated_provider(schedule))
    config = one_target_config(sim, kind)
    cfg = config_from_dict(config)
    adapter = (AnthropicProvider if kind == "anthropic" else OpenAIProvider)(cfg.providers["p"])
    stack.push_async_callback(adapter.aclose)
    server = await stack.enter_async_context(running(config, {"p": adapter}))
    return server, sim


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_a_vision_request_reaches_either_kind(kind):
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in these pictures?"},
                {"type": "image_url", "image_url": {"url": IMAGE_DATA, "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            ],
        }
    ]
    async with AsyncExitStack() as stack:
        server, sim = await _serve_one(stack, kind)
        completion = await call(
            server, "async",
            lambda c: c.chat.completions.create(model="default", messages=messages),
            lambda c: c.chat.completions.create(model="default", messages=messages),
        )  # fmt: skip
    assert completion.choices[0].message.content.startswith("I see 2 images.")
    # The provider received both images in its own API's shape.
    parts = sim.log[0].request.messages[-1].content
    assert [p["type"] for p in parts if p["type"] != "text"] == ["image_url", "image_url"]


SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "celsius": {"type": "integer"}},
    "required": ["city", "celsius"],
    "additionalProperties": False,
}
JSON_SCHEMA = {
    "type": "json_schema",
    "json_schema": {"name": "weather", "schema": SCHEMA, "strict": True},
}


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_a_json_schema_request_gets_a_document_of_the_schema_from_either_kind(kind):
    async with AsyncExitStack() as stack:
        server, _sim = await _serve_one(stack, kind)
        chunks, error = await stream(
            server, "sync", model="default", messages=QUESTION, response_format=JSON_SCHEMA
        )
    assert error is None
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    document = json.loads(text)
    assert set(document) == {"city", "celsius"} and isinstance(document["celsius"], int)


@pytest.mark.parametrize("backup_kind", ["openai", "anthropic"])
async def test_a_json_answer_cut_mid_document_still_parses_at_the_client(backup_kind):
    """The backup continues the document by prefill (Anthropic always can; the OpenAI-kind one
    is a server that honours it, as vLLM does, ``prefill = true``). A simulator can only
    continue its own answer, so the backup has the primary's seed: it plays a model that goes
    on with the document it was given."""
    messages = parse_messages(QUESTION)
    params = {"response_format": JSON_SCHEMA}
    plan = plan_attempt(Behaviour(), messages, kind="openai", params=params)
    text_pieces = plan.piece_indexes("text")
    cut = text_pieces[len(text_pieces) // 2]
    schedule = FaultSchedule.first(1, Behaviour("reset", at_token=cut))
    async with AsyncExitStack() as stack:
        server, upstreams = await _serve(
            stack, schedule, backup_kind, backup_seed=0, backup_prefill=True
        )
        chunks, error = await stream(
            server, "async", model="default", messages=QUESTION, response_format=JSON_SCHEMA
        )
    assert error is None, error
    assert upstreams.primary.log[0].outcome == "reset"
    continued = upstreams.backup.log[0]
    assert continued.request.prefill or continued.request.messages[-1].role == "assistant"
    assert continued.mode != "fresh"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    document = json.loads(text)
    assert set(document) == {"city", "celsius"}
