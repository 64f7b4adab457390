"""The invariants on tool calls, JSON answers and reasoning catch what they are for.

Each is shown a client that received something wrong (a half tool call, a call twice, JSON
that does not parse, reasoning inside the text), built by hand, and the same client receiving
the right thing; then a planted bug in Baton (every tool call sent twice) must be found by
the ``midstream`` suite and shrunk to one client that asks for tools.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import orjson
import pytest

import actors._attempt
from actors import ClientEvent, Delta, Done, Reasoning, Started, ToolCall
from actors._tools import ToolCallBuffer
from scenarios._faults import Behaviour, FaultSchedule
from scenarios._invariants import check
from scenarios._play import ClientRun, History, play
from scenarios._runner import run_suite
from scenarios._scenario import ClientSpec, ProviderSpec, Scenario, scenario_config


def _scenario(asks: str) -> Scenario:
    return Scenario(
        suite="midstream", providers=[ProviderSpec(name="primary")], clients=[ClientSpec(asks=asks)]
    )


def _judge(asks: str, middle: Sequence[ClientEvent], reason: str = "stop") -> set[str]:
    """The invariants broken by a client (client 0) that received ``middle`` and then done.

    The history has no provider attempts, so ``splice`` (text a provider really sent) is not
    judged here: the end-to-end tests below judge it.
    """
    scenario = _scenario(asks)
    events: list[ClientEvent] = [
        Started(stream="s", seq=0, ref=None, route="default", provider="primary", model="m")
    ]
    for event in middle:
        events.append(attrs.evolve(event, seq=len(events)))
    events.append(
        Done(
            stream="s",
            seq=len(events),
            finish_reason=reason,
            provider="primary",
            model="m",
            usage=None,
        )
    )
    history = History(scenario=scenario, config=scenario_config(scenario), real_sockets=False)
    history.clients.append(ClientRun(index=0, spec=scenario.clients[0], events=events))
    return {v.invariant for v in check(history)} - {"splice"}


def _delta(text: str) -> Delta:
    return Delta(stream="s", seq=0, text=text)


def _call(index: int, call_id: str, name: str, arguments: str) -> ToolCall:
    return ToolCall(stream="s", seq=0, index=index, id=call_id, name=name, arguments=arguments)


def _expected_calls() -> list[ToolCall]:
    plan = _scenario("tools").plan(0)
    return [_call(i, c.id, c.name, c.arguments) for i, c in enumerate(plan.calls)]


def test_the_right_tool_calls_pass() -> None:
    assert _judge("tools", _expected_calls(), "tool_calls") == set()


def test_a_half_tool_call_is_caught() -> None:
    calls = _expected_calls()
    half = calls[0].arguments[: len(calls[0].arguments) // 2]
    broken = [_call(0, calls[0].id, calls[0].name, half), *calls[1:]]
    assert "tools" in _judge("tools", broken, "tool_calls")


def test_a_tool_call_twice_is_caught() -> None:
    calls = _expected_calls()
    twice = [*calls, _call(len(calls), calls[0].id, calls[0].name, calls[0].arguments)]
    assert "tools" in _judge("tools", twice, "tool_calls")


def test_tool_calls_without_their_finish_reason_are_caught() -> None:
    assert "tools" in _judge("tools", _expected_calls(), "stop")


def test_a_json_answer_must_parse() -> None:
    answer = "".join(_scenario("json").answer(0))
    assert orjson.loads(answer) and _judge("json", [_delta(answer)]) == set()
    judged = _judge("json", [_delta(answer[:-1])])
    assert "json" in judged and "text" in judged


def test_reasoning_in_the_text_is_caught() -> None:
    scenario = _scenario("reasoning")
    answer = "".join(scenario.answer(0))
    thought = " Some careful engineer answers the quiet question."
    reasoning = Reasoning(stream="s", seq=0, text=thought)
    assert _judge("reasoning", [reasoning, _delta(answer)]) == set()
    assert "reasoning" in _judge("reasoning", [reasoning, _delta(answer + thought)])
    assert "reasoning" in _judge("text", [reasoning, _delta("".join(_scenario("text").answer(0)))])


def test_a_client_asking_for_tools_gets_whole_calls_through_a_reset_mid_arguments() -> None:
    clean = _scenario("tools")
    plan = clean.plan(0)
    args = plan.piece_indexes("tool_args")
    reset = FaultSchedule.always(Behaviour("reset", at_token=args[len(args) // 2]))
    scenario = Scenario(
        suite="midstream",
        providers=[ProviderSpec(name="primary", schedule=reset), ProviderSpec(name="backup")],
        clients=[ClientSpec(asks="tools")],
    )
    history = play(scenario)
    assert check(history) == []
    run = history.clients[0]
    assert [(c.name, c.arguments) for c in run.tool_calls] == [
        (c.name, c.arguments) for c in plan.calls
    ]
    assert history.attempts["primary"][0].outcome == "reset"
    assert isinstance(run.events[-1], Done) and run.events[-1].provider == "backup"


class TwiceBuffer(ToolCallBuffer):
    """A buggy buffer: every complete call is sent twice."""

    def complete(self):  # type: ignore[no-untyped-def]
        calls = super().complete()
        return calls + tuple((number + len(calls), call) for number, call in calls)


def test_a_planted_duplicate_tool_call_bug_is_found_and_shrunk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(actors._attempt, "ToolCallBuffer", TwiceBuffer)
    report = run_suite("midstream", examples=50, seed=3)
    failure = report.failure
    assert failure is not None, "the midstream suite missed tool calls sent twice"
    assert {v.invariant for v in failure.violations} == {"tools"}
    assert [c.asks for c in failure.scenario.clients] == ["tools"]
