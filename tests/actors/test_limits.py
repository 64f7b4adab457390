"""What a provider or a client can take of Baton's memory: answer and time limits, backpressure.

An endless upstream is ended at ``max_answer_bytes`` or ``max_stream_duration`` as the
provider's fault. Everything runs under trio's MockClock.
"""

from __future__ import annotations

from typing import Any

import pytest

from actors import (
    ClientEvent,
    ConfigError,
    Delta,
    Done,
    Failover,
    StreamError,
    config_from_dict,
    open_baton,
)
from scenarios import Behaviour, FakeProvider, FaultSchedule

from .conftest import PROMPT, healthy_answer, run_stream

HEALTHY = FaultSchedule.healthy()
ENDLESS = FaultSchedule.always(Behaviour("endless"))
ANSWER = healthy_answer()


def config(
    names: tuple[str, ...] = ("a", "b"),
    *,
    server: dict[str, Any] | None = None,
    route: dict[str, Any] | None = None,
    **tables: dict[str, Any],
):
    providers = {
        name: {"kind": "openai", "base_url": f"http://{name}.invalid/v1", **tables.get(name, {})}
        for name in names
    }
    targets = [{"provider": name, "model": f"model-{name}"} for name in names]
    return config_from_dict({
        "server": server or {},
        "providers": providers,
        "routes": {"default": {"targets": targets, **(route or {})}},
    })  # fmt: skip


def fakes(**schedules: FaultSchedule) -> dict[str, FakeProvider]:
    return {name: FakeProvider(name, schedule) for name, schedule in schedules.items()}


def text_before_failover(events: list[ClientEvent]) -> str:
    text = ""
    for event in events:
        if isinstance(event, Failover):
            break
        if isinstance(event, Delta):
            text += event.text
    return text


# --- max_answer_bytes --------------------------------------------------------------------------


async def test_an_endless_answer_is_ended_at_max_answer_bytes_and_answered_afresh_by_the_backup(
    autojump_clock,
):
    providers = fakes(a=ENDLESS, b=HEALTHY)
    async with open_baton(config(a={"max_answer_bytes": 2000}), providers) as baton:
        run = await run_stream(baton, can_reset=True)
        health = baton.statistics().providers["a"].health
    # The client's answer is b's whole answer: a's babble was dropped with a reset, once.
    assert isinstance(run.terminal, Done) and run.terminal.provider == "b"
    assert run.text == ANSWER
    [failover] = run.of(Failover)
    assert (failover.from_provider, failover.to_provider) == ("a", "b")
    assert (failover.reason, failover.mode, failover.phase) == (
        "answer_too_large", "reset", "midstream",
    )  # fmt: skip
    babble = text_before_failover(run.events)
    assert 1900 < len(babble.encode()) <= 2000
    # b was asked the question afresh, not to continue 2000 bytes of a loop.
    assert providers["b"].log[0].request.messages == PROMPT
    assert [(s.provider, s.outcome, s.reason) for s in run.statistics.attempts] == [
        ("a", "failed", "answer_too_large"), ("b", "done", None),
    ]  # fmt: skip
    # A provider that babbles is at fault; its one endless request was closed.
    assert health is not None and health.consecutive_failures == 1
    assert len(providers["a"].log) == 1 and providers["a"].open_attempts == []


async def test_an_endless_answer_ends_a_client_that_cannot_reset_with_one_clear_error(
    autojump_clock,
):
    providers = fakes(a=ENDLESS, b=HEALTHY)
    async with open_baton(config(a={"max_answer_bytes": 2000}), providers) as baton:
        run = await run_stream(baton, can_reset=False)
    error = run.terminal
    assert isinstance(error, StreamError) and error.code == "stream_diverged" and error.retryable
    assert "max_answer_bytes" in error.message and len(error.message) < 300
    assert run.of(Failover) == []
    assert len(run.text.encode()) <= 2000
    assert providers["b"].log == []  # nothing b says could be joined to a's text
    assert providers["a"].open_attempts == []


async def test_a_continuation_counts_the_text_it_continues_towards_max_answer_bytes(
    autojump_clock,
):
    # a breaks after 60 tokens (about 330 bytes); b may give an answer of 200 bytes at most, so
    # it is ended as soon as it is asked to continue, and the stream cannot go on.
    providers = fakes(a=FaultSchedule.always(Behaviour("reset", at_token=60)), b=HEALTHY)
    async with open_baton(config(b={"max_answer_bytes": 200}), providers) as baton:
        run = await run_stream(baton, can_reset=False)
    assert isinstance(run.terminal, StreamError) and run.terminal.code == "stream_diverged"
    assert [s.reason for s in run.statistics.attempts] == ["reset", "answer_too_large"]
    assert run.text == providers["a"].log[0].text_sent


async def test_an_answer_too_large_on_the_only_target_is_not_continued_there(autojump_clock):
    providers = fakes(a=ENDLESS)
    async with open_baton(config(("a",), a={"max_answer_bytes": 500}), providers) as baton:
        run = await run_stream(baton)
    error = run.terminal
    assert isinstance(error, StreamError) and error.code == "all_providers_unavailable"
    assert "answer_too_large" in error.message
    assert len(providers["a"].log) == 1


# --- max_stream_duration -----------------------------------------------------------------------


async def test_a_dripping_endless_answer_is_ended_at_max_stream_duration_and_continued(
    autojump_clock,
):
    drip = FaultSchedule.always(Behaviour("endless", token_delay=1.0))
    providers = fakes(a=drip, b=HEALTHY)
    async with open_baton(config(a={"max_stream_duration": 30.0}), providers) as baton:
        run = await run_stream(baton)
        health = baton.statistics().providers["a"].health
    record = providers["a"].log[0]
    assert record.closed_at - record.opened_at == pytest.approx(30.0)
    # 30 tokens of the answer in 30 s, then b continues exactly where the client's text stops.
    [failover] = run.of(Failover)
    assert (failover.reason, failover.mode, failover.phase) == (
        "stream_too_long", "continue", "midstream",
    )  # fmt: skip
    assert isinstance(run.terminal, Done) and run.text == ANSWER
    assert health is not None and health.consecutive_failures == 1


async def test_a_stream_too_long_is_never_continued_on_the_same_target(autojump_clock):
    drip = FaultSchedule.always(Behaviour("endless", token_delay=1.0))
    providers = fakes(a=drip)
    cfg = config(("a",), a={"max_stream_duration": 20.0, "retries": 3})
    async with open_baton(cfg, providers) as baton:
        run = await run_stream(baton)
    error = run.terminal
    assert isinstance(error, StreamError) and error.code == "all_providers_unavailable"
    assert "stream_too_long" in error.message
    assert len(providers["a"].log) == 1


# --- configuration -------------------------------------------------------------------------------


def test_the_limits_have_generous_defaults():
    cfg = config()
    assert cfg.providers["a"].max_answer_bytes == 8 * 1024 * 1024
    assert cfg.providers["a"].max_stream_duration == 900.0


@pytest.mark.parametrize(
    ("section", "key", "value", "says"),
    [
        ("a", "max_answer_bytes", 0, "must be at least 1"),
        ("a", "max_answer_bytes", 1.5, "must be an integer"),
        ("a", "max_stream_duration", 0, "must be greater than 0"),
    ],
)
def test_a_wrong_limit_names_its_key(section, key, value, says):
    with pytest.raises(ConfigError) as caught:
        if section == "server":
            config(server={key: value})
        else:
            config(**{section: {key: value}})
    where = f"server.{key}" if section == "server" else f"providers.a.{key}"
    assert caught.value.where == where and says in caught.value.message
