"""The fault model: behaviours, rules, schedules and their serialised form."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors import FailureKind, Message
from scenarios import Behaviour, FaultSchedule, Rule, answer_tokens, plan_attempt
from scenarios._faults import BEHAVIOUR_KINDS, PREFILL_MODES

REFUSE = Behaviour("refuse")
USER = (Message(role="user", content="hello"),)


def test_reprs_are_short_and_evaluable() -> None:
    b = Behaviour("status", status=429, retry_after=2.0)
    assert repr(b) == "Behaviour('status', status=429, retry_after=2.0)"
    assert repr(Behaviour()) == "Behaviour('healthy')"
    schedule = FaultSchedule(
        (Rule(REFUSE, last_request=1),), default=Behaviour("reset", at_token=3)
    )
    text = repr(schedule)
    assert text == (
        "FaultSchedule((Rule(Behaviour('refuse'), last_request=1),), "
        "default=Behaviour('reset', at_token=3))"
    )
    assert eval(text) == schedule


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "explode"},
        {"kind": "status"},
        {"kind": "drip"},
        {"kind": "healthy", "prefill": "ignore"},
        {"kind": "reset", "at_token": -1},
    ],
)
def test_invalid_behaviours_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Behaviour(**kwargs)


def test_first_matching_rule_wins_by_index() -> None:
    schedule = FaultSchedule(
        (
            Rule(REFUSE, last_request=1),
            Rule(Behaviour("reset", at_token=2), first_request=1, last_request=3),
        )
    )
    kinds = [schedule.behaviour_for(i, 0.0).kind for i in range(6)]
    assert kinds == ["refuse", "refuse", "reset", "reset", "healthy", "healthy"]


def test_rules_match_a_half_open_time_window() -> None:
    schedule = FaultSchedule((Rule(REFUSE, start=10.0, end=20.0),))
    assert [schedule.behaviour_for(0, t).kind for t in (9.9, 10.0, 19.9, 20.0)] == [
        "healthy",
        "refuse",
        "refuse",
        "healthy",
    ]


def test_helpers() -> None:
    assert FaultSchedule.healthy().behaviour_for(5, 100.0) == Behaviour()
    assert FaultSchedule.always(REFUSE).behaviour_for(99, 1e6) == REFUSE
    first = FaultSchedule.first(2, REFUSE)
    assert [first.behaviour_for(i, 0).kind for i in range(3)] == ["refuse", "refuse", "healthy"]
    flap = FaultSchedule.flapping(5.0, REFUSE, up_for=10.0, cycles=2)
    down = [t for t in range(40) if flap.behaviour_for(0, float(t)) == REFUSE]
    assert down == [0, 1, 2, 3, 4, 15, 16, 17, 18, 19]


behaviours = st.builds(
    Behaviour,
    kind=st.sampled_from([k for k in BEHAVIOUR_KINDS if k not in ("status", "drip")]),
    at_token=st.integers(0, 50),
    stall=st.floats(0, 100),
    token_delay=st.floats(0.01, 1),
    prefill=st.sampled_from(PREFILL_MODES),
    code=st.none() | st.text(max_size=10),
) | st.builds(
    Behaviour,
    kind=st.just("status"),
    status=st.sampled_from([400, 429, 500, 529]),
    retry_after=st.none() | st.floats(0, 60),
    message=st.none() | st.text(max_size=20),
)
rules = st.builds(
    Rule,
    behaviours,
    first_request=st.integers(0, 5),
    last_request=st.none() | st.integers(0, 10),
    start=st.floats(0, 100),
    end=st.none() | st.floats(0, 200),
)
schedules = st.builds(FaultSchedule, st.lists(rules, max_size=4).map(tuple), behaviours)


@given(schedules)
def test_schedules_round_trip_through_a_blob(schedule: FaultSchedule) -> None:
    blob = schedule.to_blob()
    assert blob.replace("-", "").replace("_", "").isalnum()
    assert FaultSchedule.from_blob(blob) == schedule
    assert FaultSchedule.from_dict(schedule.to_dict()) == schedule


def test_plan_cuts_at_max_tokens() -> None:
    plan = plan_attempt(Behaviour(), USER, max_tokens=5)
    assert plan.tokens == tuple(answer_tokens(USER)[:5])
    assert plan.finish_reason == "length"
    assert plan_attempt(Behaviour(), USER).finish_reason == "stop"


def test_plan_prefill_modes() -> None:
    answer = answer_tokens(USER)
    convo = (*USER, Message(role="assistant", content="".join(answer[:3])))
    assert plan_attempt(Behaviour(), convo).start == 3
    restart = plan_attempt(Behaviour(prefill="restart"), convo)
    assert (restart.start, restart.mode, restart.rejection) == (0, "restart", None)
    rejection = plan_attempt(Behaviour(prefill="reject"), convo).rejection
    assert rejection is not None and (rejection.status, rejection.code) == (
        400,
        "invalid_request_error",
    )
    assert plan_attempt(Behaviour(prefill="reject"), USER).rejection is None


def test_plan_error_codes_follow_the_provider_kind() -> None:
    b = Behaviour("status", status=529)
    failure = plan_attempt(b, USER, kind="anthropic").rejection
    assert failure is not None and failure.kind is FailureKind.STATUS
    assert failure.code == "overloaded_error"
    assert (
        plan_attempt(Behaviour("status", status=429), USER).rejection.code == "rate_limit_exceeded"
    )  # type: ignore[union-attr]
    custom = Behaviour("status", status=400, code="context_length_exceeded", message="too long")
    assert plan_attempt(custom, USER).rejection.code == "context_length_exceeded"  # type: ignore[union-attr]
