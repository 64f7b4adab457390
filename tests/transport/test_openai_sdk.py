"""The official ``openai`` SDK, sync and async, against Baton's HTTP API on a real socket.

Both clients run in a worker thread (the async one under ``asyncio.run``, as its users run it)
while Baton serves from the test's trio loop. What is checked is what an SDK user sees: the
text, the chunks' ``model``, finish reasons, usage, and which exception is raised when.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from typing import Any

import attrs
import openai
import pytest
import trio

from scenarios import Behaviour, FakeProvider, FaultSchedule

from .test_http import (
    ANSWER,
    BREAK_AT,
    PROMPT,
    TOKENS,
    Server,
    breaking_a,
    diverging_seed,
    healthy_pair,
    models_serving,
    one_target,
    running,
    two_targets,
)

FLAVOURS = pytest.mark.parametrize("flavour", ["sync", "async"])
Chunks = list[Any]


def _options(server: Server) -> dict[str, Any]:
    # No retries: a test must see the first answer, and a retried 503 would only slow it down.
    return {"base_url": f"{server.url}/v1", "api_key": "x", "max_retries": 0, "timeout": 10}


def _sync_stream(server: Server, kwargs: dict[str, Any]) -> tuple[Chunks, openai.APIError | None]:
    chunks: Chunks = []
    with openai.OpenAI(**_options(server)) as client:
        try:
            for chunk in client.chat.completions.create(stream=True, **kwargs):
                chunks.append(chunk)
        except openai.APIError as exc:
            return chunks, exc
    return chunks, None


async def _async_stream(
    server: Server, kwargs: dict[str, Any]
) -> tuple[Chunks, openai.APIError | None]:
    chunks: Chunks = []
    async with openai.AsyncOpenAI(**_options(server)) as client:
        try:
            stream = await client.chat.completions.create(stream=True, **kwargs)
            async for chunk in stream:
                chunks.append(chunk)
        except openai.APIError as exc:
            return chunks, exc
    return chunks, None


def _sync_call(server: Server, action: Callable[[openai.OpenAI], Any]) -> Any:
    with openai.OpenAI(**_options(server)) as client:
        return action(client)


async def _async_call(server: Server, action: Callable[[openai.AsyncOpenAI], Any]) -> Any:
    async with openai.AsyncOpenAI(**_options(server)) as client:
        return await action(client)


async def in_thread(work: Callable[[], Any]) -> Any:
    """Run blocking SDK code in a thread, giving up (and failing) after 30 s."""
    with trio.fail_after(30):
        return await trio.to_thread.run_sync(work, abandon_on_cancel=True)


async def stream(
    server: Server, flavour: str, **kwargs: Any
) -> tuple[Chunks, openai.APIError | None]:
    """Stream a chat completion; return the chunks received and the error raised, if any."""
    if flavour == "sync":
        return await in_thread(partial(_sync_stream, server, kwargs))
    return await in_thread(lambda: asyncio.run(_async_stream(server, kwargs)))


async def call(
    server: Server,
    flavour: str,
    sync: Callable[[openai.OpenAI], Any],
    aio: Callable[[openai.AsyncOpenAI], Any],
) -> Any:
    """Run ``sync(client)`` or ``await aio(client)`` with a fresh client of the flavour."""
    if flavour == "sync":
        return await in_thread(partial(_sync_call, server, sync))
    return await in_thread(lambda: asyncio.run(_async_call(server, aio)))


async def create(server: Server, flavour: str, **kwargs: Any) -> Any:
    """A non-streaming chat completion."""
    return await call(
        server, flavour,
        lambda c: c.chat.completions.create(**kwargs),
        lambda c: c.chat.completions.create(**kwargs),
    )  # fmt: skip


def text_of(chunks: Chunks) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def finish_reasons(chunks: Chunks) -> list[str]:
    return [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]


@FLAVOURS
@pytest.mark.parametrize("include_usage", [False, True])
async def test_streaming_answer(flavour: str, include_usage: bool) -> None:
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    async with running(two_targets(), healthy_pair()) as server:
        chunks, error = await stream(server, flavour, model="r", messages=PROMPT, **options)
    assert error is None
    assert text_of(chunks) == ANSWER
    assert chunks[0].choices[0].delta.role == "assistant"
    assert finish_reasons(chunks) == ["stop"]
    assert {c.model for c in chunks} == {"ma"}
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    if include_usage:
        last = chunks[-1]
        assert last.choices == []
        # Exactly the provider's numbers.
        sent = server.providers["a"].usage_sent[0]
        assert (
            last.usage.prompt_tokens,
            last.usage.completion_tokens,
            last.usage.total_tokens,
        ) == (sent.prompt_tokens, sent.completion_tokens, sent.total_tokens)
        assert sent.completion_tokens == len(TOKENS)
        assert all(c.usage is None for c in chunks[:-1])
    else:
        assert all(c.usage is None and c.choices for c in chunks)


@FLAVOURS
async def test_non_streaming_answer(flavour: str) -> None:
    async with running(two_targets(), healthy_pair()) as server:
        completion = await create(server, flavour, model="r", messages=PROMPT)
        short = await create(
            server, flavour, model="r", messages=PROMPT, max_tokens=3, temperature=0.2
        )
    assert completion.object == "chat.completion"
    assert completion.model == "ma"
    choice = completion.choices[0]
    assert (choice.message.role, choice.message.content, choice.finish_reason) == (
        "assistant",
        ANSWER,
        "stop",
    )
    sent = server.providers["a"].usage_sent[0]
    usage = completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
        sent.prompt_tokens, len(TOKENS), sent.total_tokens,
    )  # fmt: skip
    assert (short.choices[0].message.content, short.choices[0].finish_reason) == (
        "".join(TOKENS[:3]),
        "length",
    )


@FLAVOURS
async def test_no_usage_from_the_provider_is_none_on_every_answer(flavour: str) -> None:
    providers = {"a": FakeProvider("a", reports_usage=False), "b": FakeProvider("b")}
    async with running(two_targets(), providers) as server:
        chunks, error = await stream(
            server, flavour, model="r", messages=PROMPT, stream_options={"include_usage": True}
        )
        completion = await create(server, flavour, model="r", messages=PROMPT)
    assert error is None and text_of(chunks) == ANSWER
    # No usage chunk: every chunk carries its choice, none carries numbers.
    assert all(c.choices and c.usage is None for c in chunks)
    assert completion.choices[0].message.content == ANSWER and completion.usage is None


@FLAVOURS
async def test_midstream_failover_gives_the_whole_answer(flavour: str) -> None:
    providers = {"a": breaking_a(), "b": FakeProvider("b")}
    async with running(two_targets(), providers) as server:
        healthy, error = await stream(server, flavour, model="solo", messages=PROMPT)
        assert error is None and finish_reasons(healthy) == ["stop"]
        chunks, error = await stream(server, flavour, model="r", messages=PROMPT)
        a_attempts = [r.outcome for r in server.providers["a"].log]
    assert a_attempts == ["reset"]  # the failover really happened
    assert error is None
    assert text_of(chunks) == text_of(healthy) == ANSWER
    assert finish_reasons(chunks) == ["stop"]
    texts = [c.choices[0].delta.content or "" for c in chunks]
    assert [c.model for c in chunks] == models_serving(texts)


@FLAVOURS
@pytest.mark.parametrize("case", ["diverged", "exhausted"])
async def test_stream_broken_after_text_raises_while_iterating(flavour: str, case: str) -> None:
    if case == "diverged":
        config, providers = (
            two_targets(),
            {"a": breaking_a(), "b": FakeProvider("b", seed=diverging_seed())},
        )
        code = "stream_diverged"
    else:
        # a breaks mid-answer, then refuses: its own continuation (the route's only target)
        # cannot start either, so the attempts run out.
        gone = attrs.evolve(breaking_a().schedule, default=Behaviour("refuse"))
        config, providers = one_target(), {"a": FakeProvider("a", gone)}
        code = "all_providers_unavailable"
    async with running(config, providers) as server:
        chunks, error = await stream(server, flavour, model="r", messages=PROMPT)
    assert isinstance(error, openai.APIError) and not isinstance(error, openai.APIStatusError)
    assert error.code == code
    assert text_of(chunks) == "".join(TOKENS[:BREAK_AT])
    assert finish_reasons(chunks) == []


@FLAVOURS
@pytest.mark.parametrize("streaming", [True, False])
async def test_unknown_model_raises_not_found(flavour: str, streaming: bool) -> None:
    async with running(two_targets(), healthy_pair()) as server:
        if streaming:
            chunks, error = await stream(server, flavour, model="gpt-nope", messages=PROMPT)
            assert chunks == []
        else:
            with pytest.raises(openai.NotFoundError) as caught:
                await create(server, flavour, model="gpt-nope", messages=PROMPT)
            error = caught.value
    assert isinstance(error, openai.NotFoundError)
    assert error.code == "model_not_found"


@FLAVOURS
@pytest.mark.parametrize("streaming", [True, False])
async def test_all_providers_refusing_raises_a_503(flavour: str, streaming: bool) -> None:
    refuse = FaultSchedule.always(Behaviour("refuse"))
    async with running(
        two_targets(), {"a": FakeProvider("a", refuse), "b": FakeProvider("b", refuse)}
    ) as server:
        if streaming:
            chunks, error = await stream(server, flavour, model="r", messages=PROMPT)
            assert chunks == []
        else:
            with pytest.raises(openai.APIStatusError) as caught:
                await create(server, flavour, model="r", messages=PROMPT)
            error = caught.value
    assert isinstance(error, openai.InternalServerError)
    assert error.status_code == 503
    assert error.code == "all_providers_unavailable"


@FLAVOURS
async def test_provider_rejection_and_unsupported_requests_raise_bad_request(flavour: str) -> None:
    reject = FaultSchedule.always(
        Behaviour("status", status=400, code="context_too_spicy", message="No.")
    )
    config = two_targets()
    config["providers"]["b"]["supports"] = {"tools": False}  # route solo cannot call tools
    async with running(config, {"a": FakeProvider("a", reject), "b": FakeProvider("b")}) as server:
        chunks, error = await stream(server, flavour, model="r", messages=PROMPT)
        assert chunks == []
        assert isinstance(error, openai.BadRequestError) and error.code == "context_too_spicy"
        tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
        with pytest.raises(openai.BadRequestError) as caught:
            await create(server, flavour, model="solo", messages=PROMPT, tools=[tool])
        assert caught.value.code == "unsupported_capability"
        assert "b lacks tools" in caught.value.message
        with pytest.raises(openai.BadRequestError) as caught:
            await create(server, flavour, model="solo", messages=PROMPT, functions=[tool])
        assert (caught.value.code, caught.value.param) == ("unsupported_parameter", "functions")
        with pytest.raises(openai.BadRequestError) as caught:
            await create(server, flavour, model="solo", messages=PROMPT, n=2)
        assert caught.value.param == "n"
        assert server.providers["b"].log == []


@FLAVOURS
async def test_models_list_names_the_routes(flavour: str) -> None:
    async with running(two_targets(), healthy_pair()) as server:

        async def listed(client: openai.AsyncOpenAI) -> list[str]:
            return [m.id async for m in client.models.list()]

        names = await call(server, flavour, lambda c: [m.id for m in c.models.list()], listed)
        model = await call(
            server,
            flavour,
            lambda c: c.models.retrieve("solo"),
            lambda c: c.models.retrieve("solo"),
        )
    assert names == ["r", "solo"]
    assert (model.id, model.owned_by) == ("solo", "baton")
