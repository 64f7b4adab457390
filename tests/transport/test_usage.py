"""Token usage end to end: the provider's own numbers reach the client exactly, or none do.

Baton runs over the simulated providers (real HTTP on 127.0.0.1, through the httpx adapters);
the application is the official ``openai`` SDK against the HTTP API. ``/metrics`` shows the
OpenTelemetry GenAI histograms, parsed as Prometheus reads them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from actors import Message, config_from_dict
from scenarios import Behaviour, FaultSchedule, SimulatedProvider, answer_tokens
from scenarios import open_simulated_provider as simulated
from transport.providers import AnthropicProvider, OpenAIProvider

from .test_http import Server, get, running
from .test_openai_sdk import create, stream, text_of

PROMPT = [{"role": "user", "content": "Tell me about the harbour."}]
ANSWER = "".join(answer_tokens([Message(role="user", content=PROMPT[0]["content"])]))
WITH_USAGE = {"stream_options": {"include_usage": True}}
RESET = FaultSchedule.always(Behaviour("reset", at_token=6))


def url_of(sim: SimulatedProvider, kind: str) -> str:
    return sim.base_url_anthropic if kind == "anthropic" else sim.base_url_openai


@asynccontextmanager
async def baton_over(*targets: tuple[str, SimulatedProvider]) -> AsyncIterator[Server]:
    """Route ``r`` over the simulators in order: provider ``a`` (model ``ma``), ``b`` (``mb``)."""
    names = "ab"[: len(targets)]
    config: dict[str, Any] = {
        "providers": {
            name: {"kind": kind, "base_url": url_of(sim, kind)}
            for name, (kind, sim) in zip(names, targets, strict=True)
        },
        "routes": {"r": {"targets": [{"provider": n, "model": f"m{n}"} for n in names]}},
    }
    adapters = {
        name: (AnthropicProvider if pc.kind == "anthropic" else OpenAIProvider)(pc)
        for name, pc in config_from_dict(config).providers.items()
    }
    try:
        async with running(config, adapters) as server:  # type: ignore[arg-type]
            yield server
    finally:
        for adapter in adapters.values():
            await adapter.aclose()


def as_openai(sent: Mapping[str, int]) -> dict[str, int]:
    """A simulator's usage object in OpenAI's names, as a client of Baton should receive it."""
    if "input_tokens" in sent:  # Anthropic's
        prompt, completion = sent["input_tokens"], sent["output_tokens"]
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
    return dict(sent)


def usage_of(obj: Any) -> dict[str, int] | None:
    usage = obj.usage
    if usage is None:
        return None
    return {k: getattr(usage, k) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def metrics(server: Server) -> Samples:
    """Every sample of ``/metrics``, by name and labels.

    The exporter gives every series of a family the same label names, an absent one as ``""``
    (``error_type=""`` on a request that succeeded); Prometheus reads ``""`` as absent, so do we.
    """
    text = (await get(server, "/metrics")).text
    return {
        (sample.name, frozenset((k, v) for k, v in sample.labels.items() if v)): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def labels(**values: str) -> frozenset[tuple[str, str]]:
    return frozenset(values.items())


def buckets(seen: Samples, name: str, at: frozenset[tuple[str, str]]) -> list[str]:
    """The upper bounds of a histogram series' buckets, as rendered."""
    found = []
    for sample, key in seen:  # in the order rendered
        bound = dict(key).get("le")
        if sample == name and bound is not None and key == at | {("le", bound)}:
            found.append(bound)
    return found


# The GenAI semantic conventions' advisory bucket boundaries.
TOKEN_BUCKETS = [str(4**i) for i in range(14)] + ["+Inf"]
DURATION_BUCKETS = [
    "0.01", "0.02", "0.04", "0.08", "0.16", "0.32", "0.64", "1.28", "2.56", "5.12", "10.24",
    "20.48", "40.96", "81.92", "+Inf",
]  # fmt: skip


def chat_labels(
    kind: str, provider: str, model: str, *, answered: bool = True, **more: str
) -> dict[str, str]:
    """The GenAI attributes of one upstream request, as the Prometheus exporter renders them.

    The response model is known only from an answer (the simulators echo the asked model).
    """
    found = {
        "gen_ai_operation_name": "chat", "gen_ai_provider_name": kind,
        "gen_ai_request_model": model, "provider": provider, **more,
    }  # fmt: skip
    if answered:
        found["gen_ai_response_model"] = model
    return found


# --- a provider that reports usage: exactly its numbers ------------------------------------------


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_streaming_usage_is_the_providers_own_and_counted_in_metrics(kind: str) -> None:
    async with simulated() as sim, baton_over((kind, sim)) as server:
        chunks, error = await stream(server, "sync", model="r", messages=PROMPT, **WITH_USAGE)
        seen = await metrics(server)
    assert error is None and text_of(chunks) == ANSWER
    *content, last = chunks
    assert last.choices == [] and all(c.usage is None for c in content)
    # The OpenAI simulator sends usage only when asked: Baton asked for it upstream.
    [sent] = sim.usage_sent.values()
    assert usage_of(last) == as_openai(sent)
    # gen_ai.client.token.usage: one input and one output recording for the attempt.
    expected = as_openai(sent)
    for token_type, count in (
        ("input", expected["prompt_tokens"]),
        ("output", expected["completion_tokens"]),
    ):
        at = labels(**chat_labels(kind, "a", "ma", gen_ai_token_type=token_type))
        assert seen["gen_ai_client_token_usage_count", at] == 1
        assert seen["gen_ai_client_token_usage_sum", at] == count
    assert buckets(seen, "gen_ai_client_token_usage_bucket", at) == TOKEN_BUCKETS
    duration = labels(**chat_labels(kind, "a", "ma"))
    assert seen["gen_ai_client_operation_duration_seconds_count", duration] == 1
    assert buckets(seen, "gen_ai_client_operation_duration_seconds_bucket", duration) == (
        DURATION_BUCKETS
    )
    # The per-provider series name the model that served.
    done = labels(model="ma", outcome="done", provider="a", route="r")
    assert seen["proxy_requests_total", done] == 1


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_non_streaming_usage_is_the_providers_own(kind: str) -> None:
    async with simulated() as sim, baton_over((kind, sim)) as server:
        completion = await create(server, "sync", model="r", messages=PROMPT)
    assert completion.choices[0].message.content == ANSWER
    [sent] = sim.usage_sent.values()  # Baton streamed it upstream, asking for usage
    assert usage_of(completion) == as_openai(sent)


# --- a provider that reports none: no numbers at all ---------------------------------------------


@pytest.mark.parametrize("stream_options", ["ignored", "rejected"])
async def test_no_usage_reported_means_none_is_invented(stream_options: Any) -> None:
    async with (
        simulated(stream_options=stream_options) as sim,
        baton_over(("openai", sim)) as server,
    ):
        chunks, error = await stream(server, "sync", model="r", messages=PROMPT, **WITH_USAGE)
        completion = await create(server, "sync", model="r", messages=PROMPT)
        seen = await metrics(server)
    assert error is None and text_of(chunks) == ANSWER
    # No usage chunk at all (every chunk has its choice), and no chunk carries numbers.
    assert all(c.choices and c.usage is None for c in chunks)
    assert completion.choices[0].message.content == ANSWER and completion.usage is None
    assert sim.usage_sent == {}
    # A strict server refused stream_options once; Baton asked again and never sent it since.
    refused = ["Unrecognized request argument supplied: stream_options"]
    assert sim.invalid_requests == (refused if stream_options == "rejected" else [])
    assert len(sim.log) == 2
    assert not [name for name, _ in seen if name.startswith("gen_ai_client_token_usage")]
    duration = labels(**chat_labels("openai", "a", "ma"))
    assert seen["gen_ai_client_operation_duration_seconds_count", duration] == 2


# --- after a failover: the finishing attempt's own usage -----------------------------------------


@pytest.mark.parametrize("kind_b", ["openai", "anthropic"])
async def test_after_a_failover_the_usage_is_the_finishing_attempts(kind_b: str) -> None:
    async with (
        simulated(RESET) as a,
        simulated() as b,
        baton_over(("openai", a), (kind_b, b)) as server,
    ):
        chunks, error = await stream(server, "sync", model="r", messages=PROMPT, **WITH_USAGE)
        seen = await metrics(server)
    assert error is None and text_of(chunks) == ANSWER
    assert [r.outcome for r in a.log] == ["reset"] and a.usage_sent == {}
    [sent] = b.usage_sent.values()
    assert usage_of(chunks[-1]) == as_openai(sent)
    # b's prompt held the text a had delivered, which b was asked to continue.
    delivered = "".join(a.log[0].tokens_sent)
    assert any(delivered in m.content for m in b.log[0].request.messages)
    # Every attempt is in the metrics: a's failed request, b's request and its tokens.
    failed = labels(**chat_labels("openai", "a", "ma", answered=False, error_type="reset"))
    assert seen["gen_ai_client_operation_duration_seconds_count", failed] == 1
    finished = labels(**chat_labels(kind_b, "b", "mb", gen_ai_token_type="input"))
    assert seen["gen_ai_client_token_usage_sum", finished] == as_openai(sent)["prompt_tokens"]
    failover = labels(route="r", to="b", phase="midstream", reason="reset", **{"from": "a"})
    assert seen["proxy_failovers_total", failover] == 1


# --- counters that exist from start-up -----------------------------------------------------------


async def test_alerting_counters_exist_at_zero_on_a_fresh_server() -> None:
    async with (
        simulated() as a,
        simulated() as b,
        baton_over(("openai", a), ("anthropic", b)) as server,
    ):
        seen = await metrics(server)
    assert seen["proxy_failovers_total", labels(route="r")] == 0
    assert seen["proxy_health_transitions_total", labels(provider="a")] == 0
    assert seen["proxy_health_transitions_total", labels(provider="b")] == 0
