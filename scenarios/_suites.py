"""The named scenario suites: what each one draws, as a hypothesis strategy of ``Scenario``s.

Every suite draws against either its own configuration (providers named ``primary``,
``backup``, ``spare`` of drawn API kinds, with the suite's knobs) or the user's ``--config``
(its providers, routes and policies unchanged; faults drawn per provider name, clients spread
over its routes). The "first" provider is the first target of the first route.

- ``midstream``: the first provider breaks after some tokens (reset, stall, keep-alive stall,
  in-stream error, missing finish reason, malformed event, slow drip); the others continue
  (exactly, by restarting, by refusing prefill, or by breaking too), in every continuation form.
- ``prestream``: refusals, 5xx, 429 with and without Retry-After, 401/403, 400s, silent starts,
  for the first requests or for good, on every provider.
- ``health``: flapping providers and runs of failures against drawn breaker settings, with
  streams spread over two minutes, so breakers open, rest, probe and close.
- ``overload``: many more concurrent streams than ``max_connections``, slow answers holding the
  slots, short pool timeouts and a small outage queue.
- ``chaos``: every fault at random request indexes and random rates, flapping, drawn routing
  (strategy, hedging, attempts, retry budget and its floor), clients of every kind.
- ``resume``: clients whose network drops after some events and who resume (``Baton.detach``,
  ``Baton.resume``) a moment later, near the end of the resume window or after it, from their
  last seq or a stale one, while providers break mid-answer or answer slowly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs
from hypothesis import strategies as st

from actors import BatonConfig

from ._faults import Behaviour, FaultSchedule, Rule
from ._scenario import PROVIDER_NAMES, ProviderSpec, Scenario, scenario_config
from ._strategies import (
    HEALTHY,
    Timeouts,
    any_behaviour,
    clients,
    continuers,
    drops,
    first_then,
    flapping,
    midstream_faults,
    prestream_faults,
    rejections,
    request_table,
)

KINDS = ("openai", "anthropic")
_NO_SETTINGS: st.SearchStrategy[dict[str, Any]] = st.just({})
Draw = Callable[[st.SearchStrategy[Any]], Any]


@attrs.frozen
class Suite:
    """A named family of scenarios; ``strategy(user_config)`` draws them."""

    name: str
    summary: str
    strategy: Callable[[BatonConfig | None], st.SearchStrategy[Scenario]] = attrs.field(repr=False)


@attrs.frozen
class _Frame:
    """The providers and configuration a suite draws faults and clients against."""

    names: tuple[str, ...]
    kinds: tuple[str, ...]
    config: BatonConfig
    provider_settings: Mapping[str, Any]
    route_settings: Mapping[str, Any]
    user_config: bool

    def timeouts(self, name: str) -> Timeouts:
        return Timeouts.of(self.config.providers[name])

    def scenario(
        self, draw: Draw, suite: str, schedules: list[FaultSchedule], clients: Any
    ) -> Scenario:
        return Scenario(
            suite=suite,
            providers=[
                ProviderSpec(name=n, kind=k, schedule=s)
                for n, k, s in zip(self.names, self.kinds, schedules)
            ],
            clients=clients,
            provider_settings=self.provider_settings,
            route_settings=self.route_settings,
            user_config=self.user_config,
            seed=draw(st.integers(0, 1000)),
            words=draw(st.sampled_from(["plain", "exotic"])),
        )


def _frame(
    draw: Draw,
    user_config: BatonConfig | None,
    *,
    providers: tuple[int, int],
    provider_settings: st.SearchStrategy[dict[str, Any]] = _NO_SETTINGS,
    route_settings: Callable[[int], st.SearchStrategy[dict[str, Any]]] = lambda n: _NO_SETTINGS,
) -> _Frame:
    """Draw the providers (count, kinds) and knobs of a suite's own config, or take the user's."""
    if user_config is not None:
        ordered: list[str] = []
        for route in user_config.routes.values():
            ordered += [t.provider for t in route.targets if t.provider not in ordered]
        ordered += [name for name in user_config.providers if name not in ordered]
        kinds = tuple(user_config.providers[n].kind for n in ordered)
        return _Frame(tuple(ordered), kinds, user_config, {}, {}, True)
    n = draw(st.integers(*providers))
    names = PROVIDER_NAMES[:n]
    kinds = tuple(draw(st.sampled_from(KINDS)) for _ in names)
    ps, rs = draw(provider_settings), draw(route_settings(n))
    skeleton = Scenario(
        suite="", providers=[ProviderSpec(name=a, kind=k) for a, k in zip(names, kinds)],
        clients=(), provider_settings=ps, route_settings=rs,
    )  # fmt: skip
    return _Frame(names, kinds, scenario_config(skeleton), ps, rs, False)


def _continuation() -> st.SearchStrategy[dict[str, Any]]:
    return st.sampled_from(["auto", "prefill", "instruct", "replay"]).map(
        lambda c: {} if c == "auto" else {"continuation": c}
    )


# --- the suites ---------------------------------------------------------------------------------


def _midstream(user_config: BatonConfig | None) -> st.SearchStrategy[Scenario]:
    @st.composite
    def draw_scenario(draw: Draw) -> Scenario:
        f = _frame(draw, user_config, providers=(2, 3), provider_settings=_continuation())
        schedules = []
        for i, name in enumerate(f.names):
            t = f.timeouts(name)
            if i == 0:
                faults = midstream_faults(t)
                schedules.append(
                    draw(
                        st.one_of(
                            faults.map(FaultSchedule.always), first_then(faults, continuers(t))
                        )
                    )
                )
            else:
                schedules.append(draw(continuers(t).map(FaultSchedule.always)))
        return f.scenario(draw, "midstream", schedules, draw(clients(list(f.config.routes))))

    return draw_scenario()


def _prestream(user_config: BatonConfig | None) -> st.SearchStrategy[Scenario]:
    @st.composite
    def draw_scenario(draw: Draw) -> Scenario:
        f = _frame(draw, user_config, providers=(1, 3))
        schedules = []
        for name in f.names:
            t = f.timeouts(name)
            faults = st.one_of(prestream_faults(t), rejections())
            schedules.append(
                draw(
                    st.one_of(
                        st.just(FaultSchedule()),
                        faults.map(FaultSchedule.always),
                        first_then(faults, st.one_of(st.just(HEALTHY), faults)),
                    )
                )
            )
        return f.scenario(
            draw, "prestream", schedules, draw(clients(list(f.config.routes), max_size=4))
        )

    return draw_scenario()


def _breaker_settings() -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(
        lambda threshold, cooldown, factor, stable, probe, unhealthy, half_open, kind: {
            "health": {
                "failure_threshold": threshold, "cooldown": cooldown,
                "max_cooldown": cooldown * factor, "stable_period": stable,
                "probe_interval": probe, "probe_interval_unhealthy": unhealthy,
                "half_open_requests": half_open, "probe_kind": kind,
            }
        },
        st.integers(1, 4), st.sampled_from([2.0, 10.0, 30.0]), st.sampled_from([1, 4]),
        st.sampled_from([10.0, 60.0]), st.sampled_from([5.0, 30.0]), st.sampled_from([1.0, 5.0]),
        st.integers(1, 2), st.sampled_from(["models", "chat"]),
    )  # fmt: skip


def _health(user_config: BatonConfig | None) -> st.SearchStrategy[Scenario]:
    @st.composite
    def draw_scenario(draw: Draw) -> Scenario:
        f = _frame(draw, user_config, providers=(2, 3), provider_settings=_breaker_settings())
        schedules = []
        for name in f.names:
            t = f.timeouts(name)
            down = st.one_of(
                st.just(Behaviour("refuse")),
                st.sampled_from([500, 503, 401, 429]).map(lambda s: Behaviour("status", status=s)),
                st.just(Behaviour("stall", stall=t.long)),
                st.just(Behaviour("reset")),
            )
            runs = st.builds(
                lambda b, n: FaultSchedule((Rule(b, last_request=n - 1),)), down, st.integers(1, 8)
            )
            schedules.append(draw(st.one_of(st.just(FaultSchedule()), flapping(t), runs)))
        drawn = clients(list(f.config.routes), min_size=3, max_size=12, spread=120.0)
        return f.scenario(draw, "health", schedules, draw(drawn))

    return draw_scenario()


def _overload(user_config: BatonConfig | None) -> st.SearchStrategy[Scenario]:
    pools = st.builds(
        lambda size, timeout: {"max_connections": size, "pool_timeout": timeout},
        st.integers(1, 3), st.sampled_from([0.5, 2.0, 5.0]),
    )  # fmt: skip
    queue = st.builds(
        lambda size, timeout: {"queue_size": size, "queue_timeout": timeout},
        st.integers(1, 3), st.sampled_from([1.0, 5.0]),
    )  # fmt: skip

    @st.composite
    def draw_scenario(draw: Draw) -> Scenario:
        f = _frame(
            draw,
            user_config,
            providers=(1, 2),
            provider_settings=pools,
            route_settings=lambda n: queue,
        )
        schedules = []
        for name in f.names:
            t = f.timeouts(name)
            slow = st.sampled_from([0.05, 0.2]).map(lambda d: Behaviour("drip", token_delay=d))
            schedules.append(
                draw(
                    st.one_of(slow.map(FaultSchedule.always), first_then(prestream_faults(t), slow))
                )
            )
        drawn = clients(list(f.config.routes), min_size=4, max_size=16, spread=0.5, cancels=False)
        return f.scenario(draw, "overload", schedules, draw(drawn))

    return draw_scenario()


def _chaos(user_config: BatonConfig | None) -> st.SearchStrategy[Scenario]:
    provider_settings = st.builds(
        lambda threshold, retries, cont: {
            "retries": retries, "health": {"failure_threshold": threshold}, **cont
        },
        st.integers(1, 5), st.integers(0, 2), _continuation(),
    )  # fmt: skip

    def route_settings(n: int) -> st.SearchStrategy[dict[str, Any]]:
        return st.builds(
            lambda strategy, hedge, attempts, budget, floor: {
                "strategy": strategy, "max_attempts": attempts, "retry_budget": budget,
                "min_retry_concurrency": floor,
                **({"hedge_after": hedge} if hedge is not None else {}),
            },
            st.sampled_from(["priority", "weighted", "least_latency"]),
            st.sampled_from([None, 0.5, "auto"]), st.integers(1, 2 * n + 1),
            st.sampled_from([0.0, 0.2, 1.0]), st.sampled_from([3, 1, 0]),
        )  # fmt: skip

    @st.composite
    def draw_scenario(draw: Draw) -> Scenario:
        f = _frame(
            draw,
            user_config,
            providers=(1, 3),
            provider_settings=provider_settings,
            route_settings=route_settings,
        )
        schedules = []
        for name in f.names:
            t = f.timeouts(name)
            table = request_table(any_behaviour(t), max_index=24, max_rules=8)
            default = st.one_of(st.just(HEALTHY), any_behaviour(t))
            mixed = st.builds(lambda s, d: FaultSchedule(s.rules, default=d), table, default)
            schedules.append(draw(st.one_of(mixed, flapping(t))))
        drawn = clients(list(f.config.routes), max_size=8, spread=30.0)
        return f.scenario(draw, "chaos", schedules, draw(drawn))

    return draw_scenario()


def _resume(user_config: BatonConfig | None) -> st.SearchStrategy[Scenario]:
    @st.composite
    def draw_scenario(draw: Draw) -> Scenario:
        f = _frame(draw, user_config, providers=(1, 3), provider_settings=_continuation())
        slow = st.sampled_from([0.5, 1.5]).map(lambda d: Behaviour("drip", token_delay=d))
        schedules = []
        for i, name in enumerate(f.names):
            t = f.timeouts(name)
            faults = midstream_faults(t) if i == 0 else continuers(t)
            schedules.append(
                draw(
                    st.one_of(
                        st.just(FaultSchedule()),
                        slow.map(FaultSchedule.always),
                        faults.map(FaultSchedule.always),
                        first_then(faults, st.one_of(st.just(HEALTHY), slow)),
                    )
                )
            )
        window = f.config.server.resume_window
        drawn = draw(clients(list(f.config.routes), max_size=4, spread=5.0))
        resuming = tuple(
            attrs.evolve(c, **draw(st.one_of(st.just({}), drops(window)))) for c in drawn
        )
        return f.scenario(draw, "resume", schedules, resuming)

    return draw_scenario()


SUITES: Mapping[str, Suite] = {
    suite.name: suite
    for suite in (
        Suite("midstream", "a provider breaks mid-answer; the next one continues it", _midstream),
        Suite(
            "prestream",
            "refusals, error statuses and silent starts before the first token",
            _prestream,
        ),
        Suite(
            "health", "flapping providers: breakers open, rest, probe and close on time", _health
        ),
        Suite(
            "overload",
            "more streams than upstream slots: pools, pool timeouts, the outage queue",
            _overload,
        ),
        Suite("chaos", "every fault at random rates, with drawn routing and clients", _chaos),
        Suite(
            "resume",
            "clients drop their connection and resume, inside the window or too late",
            _resume,
        ),
    )
}
