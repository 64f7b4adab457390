"""Property tests: any fault schedule over 1-4 targets keeps the client's promise.

Hypothesis draws, per target, a behaviour for its first requests and one for the rest (any
fault at any token position, answers with multi-byte UTF-8 and odd whitespace) and runs one
stream through the whole actor system under MockClock. On the client's event history and the
fake providers' records it checks: gapless seqs and one terminal event; a finished answer is
exactly the answer (the delivered prefix plus the continuation, nothing lost or repeated); an
error leaves an untouched prefix; every upstream attempt was closed; attempts are bounded; no
hang; and whenever some target stays healthy the stream ends in ``done``.
"""

from __future__ import annotations

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors import Done, Message, StreamError, open_baton
from scenarios import FakeProvider, FaultSchedule, answer_tokens
from scenarios._strategies import (
    Timeouts,
    any_behaviour,
    continuers,
    first_then,
    midstream_faults,
    stays_healthy,
)

from .conftest import make_config, run_stream

PROMPTS = [
    (Message(role="user", content="Explain failover."),),
    (Message(role="system", content="Be brief."), Message(role="user", content="Café ☕ — naïve?")),
]
FIRST_TOKEN_TIMEOUT = 5.0
IDLE_TIMEOUT = 4.0

# The fault families and "stays healthy" are shared with the scenario suites (scenarios/).
TIMEOUTS = Timeouts(first_token=FIRST_TOKEN_TIMEOUT, idle=IDLE_TIMEOUT)
behaviours = any_behaviour(TIMEOUTS, rejecting=False)
midstream = midstream_faults(TIMEOUTS)


def schedules():
    """A behaviour for a target's first 1-3 requests and one for the rest."""
    return first_then(behaviours, behaviours)


SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(
    st.lists(schedules(), min_size=1, max_size=4),
    st.sampled_from(PROMPTS),
    st.booleans(),
    st.sampled_from(["plain", "exotic"]),
    st.booleans(),
)
def test_any_fault_schedule_keeps_the_promise(plan, prompt, can_reset, words, prefill):
    check_promise(plan, prompt, can_reset, words, prefill)


@SETTINGS
@given(
    midstream,
    st.lists(continuers(TIMEOUTS).map(FaultSchedule.always), min_size=1, max_size=3),
    st.sampled_from(PROMPTS),
    st.booleans(),
    st.sampled_from(["plain", "exotic"]),
    st.booleans(),
)
def test_a_break_mid_answer_is_continued_exactly(first, rest, prompt, can_reset, words, prefill):
    check_promise([FaultSchedule.always(first), *rest], prompt, can_reset, words, prefill)


def check_promise(plan, prompt, can_reset, words, prefill):
    names = [f"p{i}" for i in range(len(plan))]
    overrides = {
        name: {
            "first_token_timeout": FIRST_TOKEN_TIMEOUT,
            "idle_timeout": IDLE_TIMEOUT,
            "prefill": prefill,
        }
        for name in names
    }
    config = make_config(tuple(names), route={"max_attempts": 2 * len(plan)}, **overrides)
    answer = "".join(answer_tokens(prompt, words=words))

    async def main():
        providers = {
            name: FakeProvider(name, schedule, words=words) for name, schedule in zip(names, plan)
        }
        # A bound on the whole request: each attempt's timeouts plus retry waits.
        bound = len(plan) * 2 * (FIRST_TOKEN_TIMEOUT + 60 * IDLE_TIMEOUT + 5.0)
        async with open_baton(config, providers, seed=7) as baton:
            with trio.fail_after(bound):
                run = await run_stream(baton, messages=prompt, can_reset=can_reset)
        return run, providers

    run, providers = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    records = [r for p in providers.values() for r in p.log]
    assert all(r.closed_at is not None for r in records), "an upstream attempt was left open"
    assert len(records) <= 2 * len(plan)
    terminal = run.terminal
    if isinstance(terminal, Done):
        assert run.text == answer
    else:
        assert isinstance(terminal, StreamError)
        assert terminal.code in (
            "all_providers_unavailable",
            "upstream_rejected",
            "stream_diverged",
        )
        assert answer.startswith(run.text)
    if any(stays_healthy(s, config.providers[name]) for name, s in zip(names, plan)):
        assert isinstance(terminal, Done), terminal
