"""The runner and ``baton scenarios``: a planted bug is found, shrunk and replayed; the CLI works.

The planted bug is a splice guard that, once the client holds 60 characters or more, repeats
the delivered text's last word before the continuation; it is swapped in for the real one
where attempts look it up. The ``midstream`` suite must find it and shrink it to one client and
one provider that breaks exactly at the first token where the bug shows; the replay blob must
reproduce it, and pass once the real guard is back.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import actors._attempt
from actors.policy._splice import Forward, SpliceGuard
from scenarios._faults import HEALTHY, Behaviour, FaultSchedule
from scenarios._invariants import check
from scenarios._play import play
from scenarios._reliability import ReliabilitySettings, run_reliability
from scenarios._runner import replay, run_suite
from scenarios._scenario import ClientSpec, ProviderSpec, Scenario
from scenarios.cli import main

BUG_FROM = 60  # characters the client must hold before the planted bug shows


class RepeatingGuard(SpliceGuard):
    """A buggy splice guard: after a long enough text, it repeats the text's last word."""

    def __init__(self, delivered: str, *, replay: bool = False) -> None:
        super().__init__(delivered, replay=replay)
        self._repeat = " " + delivered.split()[-1] if len(delivered) >= BUG_FROM else ""

    def _once(self, step):  # type: ignore[no-untyped-def]
        if isinstance(step, Forward) and step.text and self._repeat:
            step, self._repeat = Forward(self._repeat + step.text), ""
        return step

    def feed(self, text: str):  # type: ignore[no-untyped-def]
        return self._once(super().feed(text))

    def finish(self):  # type: ignore[no-untyped-def]
        return self._once(super().finish())


@pytest.fixture
def planted_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(actors._attempt, "SpliceGuard", RepeatingGuard)


@pytest.fixture
def restore_logging():
    """The CLI configures the root logger as a process would; give the test process its own back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def faulty_behaviours(scenario: Scenario) -> list[Behaviour]:
    return [
        b for p in scenario.providers
        for b in [r.behaviour for r in p.schedule.rules] + [p.schedule.default]
        if b != HEALTHY
    ]  # fmt: skip


def test_a_planted_splice_bug_is_found_shrunk_and_replayed(
    planted_bug: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = run_suite("midstream", examples=50, seed=3)
    failure = report.failure
    assert failure is not None, "the midstream suite missed a guard that repeats a word"
    assert {v.invariant for v in failure.violations} & {"text", "splice"}
    assert report.shrink_runs > 0
    # Shrunk: one client, one provider that breaks once, exactly where the bug starts to show.
    scenario = failure.scenario
    assert len(scenario.clients) == 1
    [fault] = faulty_behaviours(scenario)
    assert fault.kind == "reset", scenario
    answer = scenario.answer(0)
    assert (
        len("".join(answer[: fault.at_token]))
        >= BUG_FROM
        > len("".join(answer[: fault.at_token - 1]))
    )
    assert failure.command().startswith("baton scenarios run midstream --replay ")
    _, _, violations = replay(failure.blob)
    assert [v.invariant for v in violations] == [v.invariant for v in failure.violations]
    monkeypatch.setattr(actors._attempt, "SpliceGuard", SpliceGuard)
    assert replay(failure.blob)[2] == []


def test_a_scenario_survives_its_blob() -> None:
    scenario = Scenario(
        suite="health",
        providers=[
            ProviderSpec(
                name="primary",
                kind="anthropic",
                schedule=FaultSchedule.flapping(10.0, Behaviour("refuse")),
            ),
            ProviderSpec(name="backup"),
        ],
        clients=[
            ClientSpec(start_at=3.5, cancel_at_token=4, read_delay=0.05, can_reset=False),
            ClientSpec(),
        ],
        provider_settings={"health": {"failure_threshold": 2}},
        seed=12,
        words="exotic",
    )
    assert Scenario.from_blob(scenario.to_blob()) == scenario
    assert "start_at=3.5" in repr(scenario) and "Behaviour('refuse')" in repr(scenario)
    with pytest.raises(ValueError):
        Scenario.from_blob("not-a-blob")


def test_a_slow_reader_and_a_client_that_leaves_keep_the_invariants() -> None:
    scenario = Scenario(
        suite="midstream",
        providers=[
            ProviderSpec(
                name="primary", schedule=FaultSchedule.always(Behaviour("reset", at_token=5))
            ),
            ProviderSpec(name="backup"),
        ],
        clients=[
            ClientSpec(read_delay=1.5),
            ClientSpec(cancel_at_token=3),
            ClientSpec(cancel_at_token=0),
        ],
    )
    history = play(scenario)
    assert check(history) == []
    slow, leaver, instant = history.clients
    assert slow.text == "".join(scenario.answer(0))
    assert len(slow.events) < len(scenario.answer(0))  # its deltas were merged while it slept
    assert leaver.events[-1].code == "cancelled" and instant.events[-1].code == "cancelled"  # type: ignore[union-attr]


# --- the command ----------------------------------------------------------------------------------


def test_list_names_every_suite(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scenarios", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("midstream", "prestream", "health", "overload", "chaos"):
        assert f"  {name} " in out
    assert "no_hang" in out and "healthy_target" in out


def test_run_prints_a_table_per_suite(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    assert (
        main(["scenarios", "run", "midstream", "prestream", "--examples", "3", "--seed", "2"]) == 0
    )
    out = capsys.readouterr().out
    for name in ("midstream", "prestream"):
        table = out.split(f"== {name}:")[1]
        for row in ("providers", "examples   3", "streams", "failovers", "violations 0"):
            assert f"\n  {row}" in table
    assert out.strip().splitlines()[-1].startswith("scenarios: 2 suites, 6 examples")
    assert out.strip().endswith("no violations")


def test_run_rejects_an_unknown_suite(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    assert main(["scenarios", "run", "nosuch"]) == 2
    assert "unknown suite nosuch" in capsys.readouterr().err


def test_replay_plays_a_blob(capsys: pytest.CaptureFixture[str], restore_logging: None) -> None:
    scenario = Scenario(
        suite="prestream",
        providers=[
            ProviderSpec(
                name="primary", schedule=FaultSchedule.first(1, Behaviour("status", status=503))
            ),
            ProviderSpec(name="backup"),
        ],
        clients=[ClientSpec()],
    )
    assert main(["scenarios", "run", "prestream", "--replay", scenario.to_blob()]) == 0
    out = capsys.readouterr().out
    assert "Behaviour('status', status=503)" in out and "client 0: started(primary)" in out
    assert "no violation" in out
    assert main(["scenarios", "run", "--replay", "garbage!"]) == 2
    assert "cannot replay" in capsys.readouterr().err


def test_replay_exits_1_when_the_blob_still_breaks_an_invariant(
    planted_bug: None, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    scenario = Scenario(
        suite="midstream",
        providers=[
            ProviderSpec(
                name="primary", schedule=FaultSchedule.always(Behaviour("reset", at_token=20))
            ),
            ProviderSpec(name="backup"),
        ],
        clients=[ClientSpec()],
    )
    assert main(["scenarios", "run", "--replay", scenario.to_blob()]) == 1
    assert "[text] client 0" in capsys.readouterr().out


CONFIG = """\
[providers.alpha]
kind = "openai"
base_url = "https://alpha.invalid/v1"
api_key_env = "BATON_TEST_UNSET_KEY"
first_token_timeout = 3.0
idle_timeout = 2.0

[providers.beta]
kind = "anthropic"
base_url = "https://beta.invalid"

[routes.chat]
targets = [ { provider = "alpha", model = "a1" }, { provider = "beta", model = "b1" } ]
max_attempts = 3
"""


def test_run_honours_a_users_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    path = tmp_path / "baton.toml"
    path.write_text(CONFIG)
    assert main(["scenarios", "run", "midstream", "--examples", "4", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "providers  alpha (openai), beta (anthropic)" in out
    scenario = Scenario(
        suite="midstream",
        providers=[
            ProviderSpec(
                name="alpha", schedule=FaultSchedule.always(Behaviour("reset", at_token=3))
            ),
            ProviderSpec(name="beta", kind="anthropic"),
        ],
        clients=[ClientSpec(route="chat")],
        user_config=True,
    )
    assert main(["scenarios", "run", "--replay", scenario.to_blob(), "--config", str(path)]) == 0
    assert "failover(alpha→beta reset continue midstream)" in capsys.readouterr().out
    assert main(["scenarios", "run", "--replay", scenario.to_blob()]) == 2
    assert "pass the same file" in capsys.readouterr().err


def test_reliability_through_baton_loses_less_and_never_mangles_text() -> None:
    settings = ReliabilitySettings(
        streams=20,
        fail_rate=0.15,
        backup_fail_rate=0.0,
        token_delay=0.002,
        timeout=0.5,
        seed=4,
        budget=40.0,
    )
    report = run_reliability(settings)
    direct, baton = report.direct, report.baton
    assert direct.faults > 0 and direct.failed > 0  # the comparison means something
    assert baton.failure_rate <= direct.failure_rate
    assert baton.wrong_text == 0 and direct.wrong_text == 0
    assert baton.failovers is not None and baton.failovers > 0


def test_reliability_prints_both_sides(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    args = [
        "scenarios",
        "reliability",
        "--quick",
        "--token-delay",
        "0.001",
        "--timeout",
        "0.5",
        "--fail-rate",
        "0.1",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "direct" in out and "through Baton" in out
    for row in (
        "stream failure rate",
        "p50 time to first token",
        "p95 total latency",
        "failovers",
        "duplicated/lost text",
    ):
        assert row in out
    assert "baton scenarios reliability --streams 20 --fail-rate 0.1" in out
