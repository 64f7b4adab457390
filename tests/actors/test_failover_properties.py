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
from scenarios._fake import FakeProvider
from scenarios._faults import Behaviour, FaultSchedule, Rule
from scenarios._textgen import answer_tokens

from .conftest import make_config, run_stream

PROMPTS = [
    (Message(role="user", content="Explain failover."),),
    (Message(role="system", content="Be brief."), Message(role="user", content="Café ☕ — naïve?")),
]
FIRST_TOKEN_TIMEOUT = 5.0
IDLE_TIMEOUT = 4.0

positions = st.integers(0, 60)
behaviours = st.one_of(
    st.just(Behaviour("healthy")),
    st.just(Behaviour("refuse")),
    st.builds(lambda s: Behaviour("status", status=s), st.sampled_from([500, 502, 503, 504, 529, 401, 403])),
    st.builds(lambda r: Behaviour("status", status=429, retry_after=r), st.sampled_from([None, 0.5, 3.0, 120.0])),
    st.just(Behaviour("status", status=400, code="context_length_exceeded", message="too long")),
    st.builds(lambda k: Behaviour("reset", at_token=k), positions),
    st.builds(lambda k, s: Behaviour("stall", at_token=k, stall=s), positions, st.sampled_from([0.5, 30.0])),
    st.builds(lambda k: Behaviour("keepalive_stall", at_token=k, stall=30.0), positions),
    st.builds(lambda k: Behaviour("malformed", at_token=k), positions),
    st.builds(lambda k: Behaviour("stream_error", at_token=k), positions),
    st.just(Behaviour("no_done")),
    st.just(Behaviour("no_finish")),
    st.builds(lambda: Behaviour("healthy", prefill="restart")),
    st.builds(lambda: Behaviour("healthy", prefill="reject")),
)


@st.composite
def schedules(draw):
    first = draw(behaviours)
    rest = draw(behaviours)
    n = draw(st.integers(1, 3))
    return FaultSchedule((Rule(first, last_request=n - 1),), default=rest)


def finishes(schedule: FaultSchedule) -> bool:
    """Whether a target with this schedule answers every request it gets in full."""
    ok = {"healthy", "no_done", "malformed"}
    fine = lambda b: b.kind in ok and b.prefill != "reject" or (b.kind == "stall" and b.stall < IDLE_TIMEOUT)  # noqa: E731
    return all(fine(b) for b in [r.behaviour for r in schedule.rules] + [schedule.default])


midstream_faults = st.one_of(
    st.builds(lambda k: Behaviour("reset", at_token=k), st.integers(1, 40)),
    st.builds(lambda k: Behaviour("stall", at_token=k, stall=60.0), st.integers(1, 40)),
    st.builds(lambda k: Behaviour("stream_error", at_token=k), st.integers(1, 40)),
    st.just(Behaviour("no_finish")),
)
continuers = st.one_of(
    st.just(Behaviour("healthy", prefill="restart")),
    st.just(Behaviour("healthy", prefill="reject")),
    st.just(Behaviour("healthy")),
    midstream_faults,
)
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
    midstream_faults,
    st.lists(continuers.map(FaultSchedule.always), min_size=1, max_size=3),
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
        name: {"first_token_timeout": FIRST_TOKEN_TIMEOUT, "idle_timeout": IDLE_TIMEOUT, "prefill": prefill}
        for name in names
    }
    config = make_config(tuple(names), route={"max_attempts": 2 * len(plan)}, **overrides)
    answer = "".join(answer_tokens(prompt, words=words))

    async def main():
        providers = {name: FakeProvider(name, schedule, words=words) for name, schedule in zip(names, plan)}
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
        assert terminal.code in ("all_providers_unavailable", "upstream_rejected", "stream_diverged")
        assert answer.startswith(run.text)
    if any(finishes(s) for s in plan):
        assert isinstance(terminal, Done), terminal
