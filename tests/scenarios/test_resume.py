"""Clients whose network drops and who resume: the ``resume`` suite, its invariants, a planted bug.

A dropping client calls ``Baton.detach`` and later ``Baton.resume`` as a transport does for it,
and holds events by seq. Played in memory under ``MockClock``: a resume window of a minute
costs nothing.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest

import actors._system
from actors._detached import StreamKeeper
from scenarios._faults import Behaviour, FaultSchedule
from scenarios._invariants import check
from scenarios._play import play
from scenarios._runner import format_suite, replay, run_suite
from scenarios._scenario import ClientSpec, ProviderSpec, Scenario

WINDOW = 60.0  # [server] resume_window's default, which the suites run with
REAL_RESUME = actors._system.Baton.resume


def scenario(*clients: ClientSpec, token_delay: float = 0.5) -> Scenario:
    """A primary that answers a token every ``token_delay`` seconds, and a healthy backup."""
    slow = FaultSchedule.always(Behaviour("drip", token_delay=token_delay))
    return Scenario(
        suite="resume",
        providers=[ProviderSpec(name="primary", schedule=slow), ProviderSpec(name="backup")],
        clients=list(clients),
    )


def test_a_client_that_resumes_inside_the_window_holds_the_whole_answer_once() -> None:
    history = play(scenario(ClientSpec(drop_at_event=5, away=2.0, stale=3, drops=3)))
    assert check(history) == []
    [run] = history.clients
    assert [(r.held - r.after, r.error) for r in run.resumes] == [(3, None)] * 3
    assert run.duplicates == 9 and run.mismatches == []  # three stale events per resume, dropped
    assert [e.seq for e in run.events] == list(range(len(run.events)))
    assert run.text == "".join(history.scenario.answer(0))
    assert run.statistics is not None and run.statistics.outcome == "done"


def test_a_client_back_after_the_window_gets_unknown_stream_and_its_upstream_was_closed() -> None:
    # 90 tokens at 2 s each: the answer is still running when the window ends.
    history = play(scenario(ClientSpec(drop_at_event=5, away=WINDOW + 10), token_delay=2.0))
    assert check(history) == []  # excused
    [run] = history.clients
    gave_up = run.gave_up
    assert gave_up is not None and gave_up.code == "unknown_stream"
    [(_, attempt)] = history.attempts_of(0)
    assert attempt.outcome == "abandoned"
    assert attempt.closed_at == pytest.approx(gave_up.detached_at + WINDOW)
    assert history.statistics is not None and history.statistics.active_streams == 0


def test_a_client_back_just_inside_the_window_still_gets_its_stream() -> None:
    history = play(scenario(ClientSpec(drop_at_event=5, away=WINDOW - 1), token_delay=2.0))
    assert check(history) == []
    [run] = history.clients
    assert run.gave_up is None and run.text == "".join(history.scenario.answer(0))


def planted(monkeypatch: pytest.MonkeyPatch, bug: Any) -> None:
    def resume(self: Any, stream_id: str, after: int, *, client: str | None) -> Any:
        handle, events = REAL_RESUME(self, stream_id, after, client=client)
        return bug(self, handle, events)

    monkeypatch.setattr(actors._system.Baton, "resume", resume)


def test_the_invariants_catch_a_replay_that_changes_a_held_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def changes(baton: Any, handle: Any, events: list[Any]) -> Any:
        return handle, [attrs.evolve(events[0], text="?"), *events[1:]]

    planted(monkeypatch, changes)
    history = play(scenario(ClientSpec(drop_at_event=5, away=1.0, stale=2)))
    [violation] = check(history)
    assert violation.invariant == "resume" and "differs from the one the client held" in str(
        violation
    )


def test_the_invariants_catch_a_resume_refused_inside_the_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def forgets(baton: Any, handle: Any, events: list[Any]) -> Any:
        raise actors.RequestError("unknown_stream", "forgotten early", status=404)

    planted(monkeypatch, forgets)
    history = play(scenario(ClientSpec(drop_at_event=5, away=1.0)))
    assert [v.invariant for v in check(history)] == ["resume"]


def test_the_invariants_catch_a_stream_left_running_after_its_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The keeper forgets the stream at the window's end but never cancels it: its upstream
    # request runs on to the end of the answer, long after nobody can read it.
    monkeypatch.setattr(StreamKeeper, "_expire", lambda self, kept: self._forget(kept))
    history = play(scenario(ClientSpec(drop_at_event=5, away=WINDOW + 10), token_delay=2.0))
    assert "resume" in {v.invariant for v in check(history)}


def test_a_planted_resume_that_skips_one_event_is_found_shrunk_and_replayed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    planted(monkeypatch, lambda baton, handle, events: (handle, events[1:]))
    report = run_suite("resume", examples=100, seed=2)
    failure = report.failure
    assert failure is not None, "the resume suite missed a resume that skips an event"
    assert {v.invariant for v in failure.violations} & {"shape", "text"}
    shrunk = failure.scenario
    [client] = shrunk.clients
    assert client.drop_at_event is not None and client.stale == 0 and client.drops == 1
    assert failure.command().startswith("baton scenarios run resume --replay ")
    assert "resumes" in format_suite(report)
    assert [v.invariant for v in replay(failure.blob)[2]] == [
        v.invariant for v in failure.violations
    ]
    monkeypatch.setattr(actors._system.Baton, "resume", REAL_RESUME)
    assert replay(failure.blob)[2] == []


def test_a_seq_repeated_outside_a_replay_is_a_violation(monkeypatch: pytest.MonkeyPatch) -> None:
    real_take = actors._system.StreamHandle.take
    taken: list[Any] = []

    async def take(self: Any) -> list[Any]:
        batch = await real_take(self)
        taken.extend(batch)
        return [taken[0], *batch] if len(taken) > len(batch) else batch  # seq 0 again

    monkeypatch.setattr(actors._system.StreamHandle, "take", take)
    history = play(scenario(ClientSpec()))
    violations = check(history)
    assert [v.invariant for v in violations] == ["shape"]
    assert "a live read repeated seqs [0" in str(violations[0])
