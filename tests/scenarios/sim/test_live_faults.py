"""Faults injected into a running simulator (the page's fault buttons), seen on the wire.

Trio's ``MockClock`` (rate 0) holds the simulator's time still, so a stall or a 503 window lasts
exactly until the test jumps the clock; the sockets are real loopback ones, and "nothing more
arrives" is checked after every task has been blocked for a short real cushion.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from actors import Delta, Done, Failover, open_baton
from scenarios import Behaviour, FaultSchedule, open_simulated_provider
from scenarios.cli._serve import default_config
from scenarios.sim import SimulatedProvider, SimulatorFaults
from transport import build_providers

from .test_simulated_provider import (
    ANSWER,
    ANTHROPIC_BODY,
    OPENAI_BODY,
    USER,
    Sse,
    anthropic_text,
    openai_text,
    sse,
)

QUIET = 0.05  # real seconds every task must have been blocked for "nothing more arrives"


def client() -> httpx.AsyncClient:
    # No client timeouts: a jump of the mock clock must not fire httpx's own.
    return httpx.AsyncClient(verify=False, timeout=None)


def text_events(events: list[Sse]) -> int:
    return sum(
        1
        for e in events
        if e.data and e.data != "[DONE]" and e.json()["choices"][0]["delta"].get("content")
    )


class Reader:
    """Reads one OpenAI stream in the background: its events, and how it ended."""

    def __init__(self) -> None:
        self.events: list[Sse] = []
        self.error: BaseException | None = None
        self.done = trio.Event()

    async def run(self, http: httpx.AsyncClient, sim: SimulatedProvider) -> None:
        url = f"{sim.base_url_openai}/chat/completions"
        try:
            async with http.stream("POST", url, json=OPENAI_BODY) as response:
                assert response.status_code == 200
                async for event in sse(response):
                    self.events.append(event)
        except httpx.TransportError as exc:
            self.error = exc
        finally:
            self.done.set()


@pytest.fixture
async def slow_sim(mock_clock: trio.testing.MockClock) -> AsyncIterator[SimulatedProvider]:
    """A simulator that waits one (mock) second before each token."""
    async with open_simulated_provider(FaultSchedule(default=Behaviour(token_delay=1.0))) as sim:
        yield sim


async def tokens_after_jumps(clock: trio.testing.MockClock, reader: Reader, wanted: int) -> None:
    """Jump the clock a second at a time until ``reader`` holds ``wanted`` tokens."""
    for _ in range(wanted):
        await trio.testing.wait_all_tasks_blocked(QUIET)
        clock.jump(1.0)
    await trio.testing.wait_all_tasks_blocked(QUIET)
    assert text_events(reader.events) == wanted


async def test_reset_breaks_a_stream_mid_answer_with_a_connection_reset(
    mock_clock: trio.testing.MockClock, slow_sim: SimulatedProvider
) -> None:
    reader = Reader()
    async with client() as http, trio.open_nursery() as nursery:
        nursery.start_soon(reader.run, http, slow_sim)
        await tokens_after_jumps(mock_clock, reader, 3)
        slow_sim.inject("reset", 20)
        await trio.testing.wait_all_tasks_blocked(QUIET)
        assert reader.done.is_set()  # at once, with no clock jump
    assert isinstance(reader.error, httpx.ReadError)  # ECONNRESET, mid-body
    assert "[DONE]" not in [e.data for e in reader.events]
    assert openai_text(reader.events) == "".join(ANSWER[:3])
    [record] = slow_sim.log
    assert record.outcome == "reset" and record.closed_at is not None
    assert record.tokens_sent == list(ANSWER[:3])


async def test_reset_leaves_new_streams_alone(mock_clock: trio.testing.MockClock) -> None:
    async with open_simulated_provider() as sim, client() as http:
        sim.inject("reset", 20)  # nothing is streaming: nothing to break
        reader = Reader()
        await reader.run(http, sim)
    assert reader.error is None and openai_text(reader.events) == "".join(ANSWER)


async def test_stall_holds_the_tokens_of_an_open_stream_then_it_carries_on(
    mock_clock: trio.testing.MockClock, slow_sim: SimulatedProvider
) -> None:
    reader = Reader()
    async with client() as http, trio.open_nursery() as nursery:
        nursery.start_soon(reader.run, http, slow_sim)
        await tokens_after_jumps(mock_clock, reader, 2)
        slow_sim.inject("stall", 30)
        mock_clock.jump(29.0)  # 29 s into the 30 s stall: not one more token
        await trio.testing.wait_all_tasks_blocked(QUIET)
        assert text_events(reader.events) == 2
        mock_clock.jump(1.0)  # the stall is over; the answer carries on a token a second
        for _ in range(len(ANSWER)):
            await trio.testing.wait_all_tasks_blocked(QUIET)
            mock_clock.jump(1.0)
        await trio.testing.wait_all_tasks_blocked(QUIET)
        assert reader.done.is_set()
    assert reader.error is None and reader.events[-1].data == "[DONE]"
    assert openai_text(reader.events) == "".join(ANSWER)


async def test_stall_holds_a_new_stream_after_its_head(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with open_simulated_provider() as sim, client() as http:
        sim.inject("stall", 10)
        events: list[Sse] = []
        url = f"{sim.base_url_anthropic}/v1/messages"
        async with http.stream("POST", url, json=ANTHROPIC_BODY) as response:
            assert response.status_code == 200  # the head goes out, as a stuck model's does
            stream = sse(response)
            async with trio.open_nursery() as nursery:

                async def read() -> None:
                    async for event in stream:
                        events.append(event)

                nursery.start_soon(read)
                await trio.testing.wait_all_tasks_blocked(QUIET)
                assert [e.event for e in events] == ["message_start", "content_block_start", "ping"]
                mock_clock.jump(9.9)
                await trio.testing.wait_all_tasks_blocked(QUIET)
                assert len(events) == 3
                mock_clock.jump(0.1)
                await trio.testing.wait_all_tasks_blocked(QUIET)
                nursery.cancel_scope.cancel()  # a hang shows as the asserts below, not forever
        assert events[-1].event == "message_stop"
        assert anthropic_text(events) == "".join(ANSWER)


@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_status503_answers_every_new_request_503_for_its_seconds(
    mock_clock: trio.testing.MockClock, api: str
) -> None:
    async with open_simulated_provider() as sim, client() as http:
        if api == "openai":
            chat, body = f"{sim.base_url_openai}/chat/completions", OPENAI_BODY
            models, headers = f"{sim.base_url_openai}/models", {}
        else:
            chat, body = f"{sim.base_url_anthropic}/v1/messages", ANTHROPIC_BODY
            models = f"{sim.base_url_anthropic}/v1/models"
            headers = {"anthropic-version": "2023-06-01"}
        sim.inject("status503", 20)
        refused = await http.post(chat, json=body, headers=headers)
        probe = await http.get(models, headers=headers)
        assert (refused.status_code, probe.status_code) == (503, 503)
        error = refused.json()["error"] if api == "openai" else refused.json()
        if api == "openai":
            assert "injected" in error["message"]
        else:
            assert error["type"] == "error" and "injected" in error["error"]["message"]
        mock_clock.jump(19.9)
        assert (await http.post(chat, json=body, headers=headers)).status_code == 503
        mock_clock.jump(0.1)  # the 20 s are over: answered again
        assert (await http.get(models, headers=headers)).status_code == 200
        healed = await http.post(chat, json=body, headers=headers)
        assert healed.status_code == 200
    assert [r.outcome for r in sim.log] == ["status", "status", "finished"]
    assert [p.ok for p in sim.probes] == [False, True]


async def test_faults_extend_and_bad_ones_are_refused(mock_clock: trio.testing.MockClock) -> None:
    async with open_simulated_provider() as sim, client() as http:
        sim.inject("status503", 20)
        mock_clock.jump(10)
        sim.inject("status503", 5)  # a shorter second press does not cut the first short
        mock_clock.jump(9)
        assert (await http.get(f"{sim.base_url_openai}/models")).status_code == 503
        with pytest.raises(ValueError, match="unknown fault 'melt'"):
            sim.inject("melt", 5)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="more than 0 seconds"):
            sim.inject("stall", 0)


async def test_simulator_faults_names_its_simulators_only(
    mock_clock: trio.testing.MockClock,
) -> None:
    async with open_simulated_provider() as a, open_simulated_provider() as b:
        faults = SimulatorFaults({"sim-openai": a, "sim-anthropic": b})
        assert faults.providers() == ["sim-openai", "sim-anthropic"]
        with pytest.raises(ValueError, match="'openai' is not one of Baton's simulated"):
            faults.inject("openai", "reset", 1)
        with pytest.raises(ValueError, match="unknown fault 'melt'"):
            faults.inject("sim-openai", "melt", 1)
        faults.inject("sim-anthropic", "status503", 5)
        async with client() as http:
            assert (await http.get(f"{a.base_url_openai}/models")).status_code == 200
            assert (await http.get(f"{b.base_url_openai}/models")).status_code == 503


# --- through Baton: the embedded default's route over its two simulators ---------------------


@asynccontextmanager
async def embedded_default(token_delay: float = 0.0) -> AsyncIterator[tuple[Any, SimulatorFaults]]:
    """Baton in process over the embedded default's config, its simulators and their faults."""
    schedule = FaultSchedule(default=Behaviour(token_delay=token_delay))
    async with (
        open_simulated_provider(schedule) as openai_sim,
        open_simulated_provider(schedule) as anthropic_sim,
    ):
        config = default_config(
            openai_sim.base_url_openai, anthropic_sim.base_url_anthropic,
            host="127.0.0.1", ws_port=0, http_port=0,
        )  # fmt: skip
        faults = SimulatorFaults({"sim-openai": openai_sim, "sim-anthropic": anthropic_sim})
        providers = build_providers(config)
        try:
            async with open_baton(config, providers) as baton:
                yield baton, faults
        finally:
            for adapter in providers.values():
                await adapter.aclose()  # type: ignore[attr-defined]


async def read(handle: Any, *, until_text: int | None = None) -> tuple[list[Any], str]:
    """The stream's events (until its text is that long, or to its end) and its text."""
    events: list[Any] = []
    async for event in handle:
        events.append(event)
        text = "".join(e.text for e in events if isinstance(e, Delta))
        if until_text is not None and len(text) >= until_text:
            break
    return events, "".join(e.text for e in events if isinstance(e, Delta))


def ask(baton: Any) -> Any:
    return baton.start_stream(route="default", messages=list(USER))


async def test_through_baton_reset_now_fails_over_mid_answer_to_the_whole_answer_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with embedded_default(token_delay=0.05) as (baton, faults):
        handle = ask(baton)
        _, text = await read(handle, until_text=30)
        faults.inject("sim-openai", "reset", 20)
        after, rest = await read(handle)
    [failover] = [e for e in after if isinstance(e, Failover)]
    assert (failover.from_provider, failover.to_provider) == ("sim-openai", "sim-anthropic")
    assert failover.phase == "midstream" and failover.reason == "reset"
    assert text + rest == "".join(ANSWER)  # exactly once
    assert isinstance(after[-1], Done) and after[-1].provider == "sim-anthropic"


async def test_through_baton_a_stall_fires_the_first_token_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with embedded_default() as (baton, faults):
        faults.inject("sim-openai", "stall", 600)
        events, text = await read(ask(baton))
    [failover] = [e for e in events if isinstance(e, Failover)]
    assert failover.from_provider == "sim-openai" and failover.reason == "first_token_timeout"
    assert text == "".join(ANSWER) and events[-1].provider == "sim-anthropic"


async def test_through_baton_503s_open_the_breaker_until_they_end(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with embedded_default() as (baton, faults):
        faults.inject("sim-openai", "status503", 20)
        for _ in range(3):
            events, text = await read(ask(baton))
            assert events[-1].provider == "sim-anthropic" and text == "".join(ANSWER)
        await trio.testing.wait_all_tasks_blocked()
        assert baton.statistics().providers["sim-openai"].health.status == "unhealthy"
        await trio.sleep(60)  # the 503s are over, the breaker's cooldown too: it probes
        events, _ = await read(ask(baton))
        assert events[-1].provider == "sim-openai"  # a live trial, answered: closed again
        await trio.testing.wait_all_tasks_blocked()  # the health actor has the report
        assert baton.statistics().providers["sim-openai"].health.status == "healthy"
