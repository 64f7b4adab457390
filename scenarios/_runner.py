"""Run suites as hypothesis searches, shrink what fails, and report it.

``run_suite`` draws ``examples`` scenarios from a suite (deterministically for a seed), plays
each one under ``MockClock`` and checks its invariants. On a violation hypothesis shrinks the
scenario to a minimal one that still fails; the report keeps that minimal scenario, its
violations and its replay blob. ``replay`` plays one scenario from a blob. ``format_suite``
prints a suite's table.

The same seed draws the same scenarios for the same code: hypothesis also mines constants
from the loaded local modules, so other code (or other imports) may draw other scenarios. A
replay blob holds the whole scenario and plays the same way anywhere (``play`` also seeds
trio's scheduler).
"""

from __future__ import annotations

import shlex
from collections import Counter
from collections.abc import Callable, Sequence

import attrs
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.errors import FlakyFailure, HypothesisException

from actors import BatonConfig, Done, Failover

from ._invariants import Violation, check, describe
from ._play import History, play
from ._scenario import Scenario
from ._suites import SUITES

Progress = Callable[[str, int, int], None]  # (suite, runs so far, examples asked for)


class ScenarioFailed(Exception):
    """A scenario broke an invariant (raised inside the hypothesis search)."""

    def __init__(self, scenario: Scenario, violations: Sequence[Violation]) -> None:
        super().__init__("; ".join(str(v) for v in violations[:3]))
        self.scenario = scenario
        self.violations = tuple(violations)


@attrs.frozen(kw_only=True)
class Failure:
    """The minimal failing scenario of a suite, what it broke, and how to replay it."""

    scenario: Scenario
    violations: tuple[Violation, ...]
    history: History = attrs.field(repr=False)
    flaky: bool = False

    @property
    def blob(self) -> str:
        return self.scenario.to_blob()

    def command(self, *, config_path: str | None = None, real_sockets: bool = False) -> str:
        """The one-line command that replays this scenario."""
        parts = ["baton", "scenarios", "run", self.scenario.suite, "--replay", self.blob]
        if config_path:
            parts += ["--config", config_path]
        if real_sockets:
            parts.append("--real-sockets")
        return shlex.join(parts)


@attrs.define
class SuiteReport:
    """What one suite's search found."""

    suite: str
    examples: int = 0  # scenarios played before the first violation, or all of them
    shrink_runs: int = 0  # scenarios played while shrinking a violation
    streams: int = 0
    failovers: int = 0
    outcomes: Counter[str] = attrs.field(factory=Counter)
    failing_runs: int = 0
    failure: Failure | None = None
    providers: dict[str, set[str]] = attrs.field(factory=dict)  # every provider drawn: its kinds
    resumes: Counter[str] = attrs.field(factory=Counter)  # dropped connections: how they came back

    @property
    def violations(self) -> int:
        """How many invariants the minimal failing scenario breaks (0: the suite passed)."""
        return 0 if self.failure is None else len(self.failure.violations)

    def add(self, history: History, failed: bool) -> None:
        if self.failing_runs:
            self.shrink_runs += 1
        else:
            self.examples += 1
        if failed:
            self.failing_runs += 1
        for spec in history.scenario.providers:
            self.providers.setdefault(spec.name, set()).add(spec.kind)
        for run in history.clients:
            self.streams += 1
            self.failovers += sum(isinstance(e, Failover) for e in run.events)
            terminal = run.events[-1] if run.events else None
            outcome = "done" if isinstance(terminal, Done) else getattr(terminal, "code", "no end")
            if run.gave_up is not None:
                outcome = f"gave up ({run.gave_up.code})"
            for resume in run.resumes:
                self.resumes[
                    resume.code or ("stale" if resume.after < resume.held else "resumed")
                ] += 1
            self.outcomes[outcome] += 1


def run_suite(
    name: str,
    *,
    examples: int = 100,
    seed: int = 0,
    user_config: BatonConfig | None = None,
    real_sockets: bool = False,
    progress: Progress | None = None,
) -> SuiteReport:
    """Search suite ``name`` with ``examples`` scenarios drawn from ``seed``; shrink a failure."""
    suite = SUITES[name]
    report = SuiteReport(suite=name)
    last: list[tuple[Scenario, tuple[Violation, ...], History]] = []

    @settings(
        max_examples=examples, database=None, deadline=None, derandomize=False,
        suppress_health_check=list(HealthCheck), phases=(Phase.generate, Phase.shrink),
        report_multiple_bugs=False, verbosity=Verbosity.quiet, print_blob=False,
    )  # fmt: skip
    @given(suite.strategy(user_config))
    def search(scenario: Scenario) -> None:
        history = play(scenario, user_config=user_config, real_sockets=real_sockets)
        violations = check(history)
        report.add(history, bool(violations))
        if progress is not None:
            progress(name, report.examples + report.shrink_runs, examples)
        if violations:
            last.append((scenario, tuple(violations), history))
            del last[:-1]
            raise ScenarioFailed(scenario, violations)

    try:
        hypothesis_seed(seed)(search)()
    except ScenarioFailed as exc:
        history = (
            last[-1][2]
            if last and last[-1][0] == exc.scenario
            else play(exc.scenario, user_config=user_config, real_sockets=real_sockets)
        )
        report.failure = Failure(scenario=exc.scenario, violations=exc.violations, history=history)
    except (FlakyFailure, HypothesisException):
        if not last:
            raise
        scenario, violations, history = last[-1]
        report.failure = Failure(
            scenario=scenario, violations=violations, history=history, flaky=True
        )
    return report


def replay(
    blob: str, *, user_config: BatonConfig | None = None, real_sockets: bool = False
) -> tuple[Scenario, History, list[Violation]]:
    """Play the scenario in ``blob`` once; returns it, its history and its violations.

    Raises ``ValueError`` for a blob that is not a scenario or does not fit ``user_config``.
    """
    scenario = Scenario.from_blob(blob)
    history = play(scenario, user_config=user_config, real_sockets=real_sockets)
    return scenario, history, check(history)


# --- reports ------------------------------------------------------------------------------------


def format_suite(
    report: SuiteReport, *, config_path: str | None = None, real_sockets: bool = False
) -> str:
    """A suite's table, then its minimal failing scenario and the command that replays it."""
    outcomes = ", ".join(f"{code} {count}" for code, count in report.outcomes.most_common())
    providers = ", ".join(
        f"{name} ({'/'.join(sorted(kinds))})" for name, kinds in sorted(report.providers.items())
    )
    rows = [
        ("providers", providers or "-"),
        (
            "examples",
            f"{report.examples}"
            + (f"  (+{report.shrink_runs} while shrinking)" if report.shrink_runs else ""),
        ),
        ("streams", f"{report.streams}" + (f"  ({outcomes})" if outcomes else "")),
        ("failovers", f"{report.failovers}"),
        *(
            [("resumes", ", ".join(f"{kind} {n}" for kind, n in report.resumes.most_common()))]
            if report.resumes
            else []
        ),
        (
            "violations",
            f"{report.violations}"
            + (f"  ({report.failing_runs} failing runs)" if report.failing_runs else ""),
        ),
    ]
    lines = [f"== {report.suite}: {SUITES[report.suite].summary} =="]
    lines += [f"  {label:<11}{value}" for label, value in rows]
    if report.failure is not None:
        lines += [
            "",
            *format_failure(report.failure, config_path=config_path, real_sockets=real_sockets),
        ]
    return "\n".join(lines)


def format_failure(
    failure: Failure, *, config_path: str | None = None, real_sockets: bool = False
) -> list[str]:
    """The violations of a failing scenario, the scenario, what its clients saw, the replay."""
    head = (
        "  VIOLATION (minimal scenario after shrinking)"
        if not failure.flaky
        else "  VIOLATION (flaky: did not always reproduce)"
    )
    lines = [head + ":"]
    lines += [f"    {v}" for v in failure.violations]
    lines += ["  scenario:", *(f"    {line}" for line in format_scenario(failure.scenario))]
    lines.append("  what the clients saw:")
    for run in failure.history.clients:
        lines.append(f"    client {run.index}: {describe(run)}")
        for r in run.resumes:
            came_back = f"refused: {r.error}" if r.error else f"{r.replayed} events replayed"
            lines.append(
                f"      dropped holding seq {r.held}, back {r.resumed_at - r.detached_at:g} s "
                f"later after seq {r.after}: {came_back}"
            )
    lines += [
        "  replay:",
        f"    {failure.command(config_path=config_path, real_sockets=real_sockets)}",
    ]
    return lines


def format_scenario(scenario: Scenario) -> list[str]:
    """The scenario as readable lines: one per provider and one per client."""
    lines = []
    for p in scenario.providers:
        lines.append(f"{p.name} ({p.kind}): {p.schedule!r}")
    for i, c in enumerate(scenario.clients):
        lines.append(f"client {i}: {c!r}")
    extra = {
        "provider_settings": dict(scenario.provider_settings),
        "route_settings": dict(scenario.route_settings),
        "seed": scenario.seed, "words": scenario.words,
    }  # fmt: skip
    lines.append(
        ", ".join(f"{k}={v!r}" for k, v in extra.items() if v not in ({}, 0, "plain"))
        or "default settings"
    )
    return lines
