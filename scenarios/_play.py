"""Play one scenario through the whole actor system and record its history.

``play(scenario)`` runs under trio's ``MockClock`` (a minute-long outage costs milliseconds):
it starts Baton over in-memory ``FakeProvider``s (or, with ``real_sockets``, over the httpx
adapters pointed at ``SimulatedProvider``s on 127.0.0.1), starts each client at its offset,
reads every stream the way its client model says, and returns a ``History``: what each client
saw, what each provider saw (``AttemptRecord``s, probes), every health transition, and the
proxy's statistics once the streams were over. The invariants are checked on that history
(``_invariants``), never during the run, so a run never stops half way.

A client whose network drops (``ClientSpec.drop_at_event``) does what a transport does for it:
``Baton.detach`` when the connection goes, ``Baton.resume`` when it comes back, and it holds
events as a client must, by seq: a replayed event it already holds is dropped (and recorded if
it differs from the one held), so ``ClientRun.events`` is what the client finally holds.

Health transitions are recorded through ``open_baton``'s ``on_transition`` hook: the health
actor reports each state change once, with the provider, the old and new state, the
consecutive-failure count, the time, and whether rejected credentials opened the breaker (a
credential trip, which need not wait for the failure threshold).
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from typing import Any

import attrs
import trio
import trio.testing

from actors import (
    BatonConfig,
    BatonStatistics,
    ClientEvent,
    Delta,
    Failover,
    HealthTransition,
    Reasoning,
    RequestError,
    RouteConfig,
    StreamStatistics,
    ToolCall,
    is_terminal,
    open_baton,
)

from ._faults import AttemptRecord, ProbeRecord
from ._scenario import ClientSpec, Scenario, client_of, client_prompt, scenario_config
from .sim import FakeProvider, SimulatedProvider

# Slack in a stream's bound for the waits the session adds between reading tokens: the grace
# after a finish reason for the usage that may follow (1 s), and the retry backoff and
# tight-loop spacing (under 1.5 s plus the doubling backoff of 0.25 s per retry).
FINISH_SLACK = 1.0
SPACING_SLACK = 1.5
SETTLE_STEP = 0.01  # seconds (mock time) between looks at whether the sessions have ended
SHUTDOWN_GRACE = 60.0  # seconds (mock time) the system may take to stop after the last stream
CLOSE_GRACE = 30.0  # seconds the simulators may take to see every attempt closed


def client_tool_calls(events: Sequence[ClientEvent]) -> list[ToolCall]:
    """The complete tool calls a client holds after ``events`` (a ``reset`` discards them)."""
    calls: list[ToolCall] = []
    for event in events:
        if isinstance(event, Failover) and event.mode == "reset":
            calls = []
        elif isinstance(event, ToolCall):
            calls.append(event)
    return calls


def client_reasoning(events: Sequence[ClientEvent]) -> str:
    """All the reasoning text a client was shown, in order."""
    return "".join(event.text for event in events if isinstance(event, Reasoning))


def client_text(events: Sequence[ClientEvent]) -> str:
    """The answer a client holds after ``events``: a ``reset`` failover discards what preceded."""
    text = ""
    for event in events:
        if isinstance(event, Failover) and event.mode == "reset":
            text = ""
        elif isinstance(event, Delta):
            text += event.text
    return text


@attrs.frozen(kw_only=True)
class Resume:
    """One drop of a client's connection and its resume; times are trio times.

    ``held``: the last seq the client held when its connection dropped; ``after``: the seq it
    resumed after; ``error``: ``code: message`` when the proxy refused the resume.
    """

    detached_at: float
    resumed_at: float
    held: int
    after: int
    replayed: int = 0
    error: str | None = None
    code: str | None = None


@attrs.define
class ClientRun:
    """What one client saw of its stream; times are trio times."""

    index: int
    spec: ClientSpec
    events: list[ClientEvent] = attrs.field(factory=list)
    statistics: StreamStatistics | None = None
    start_error: str | None = None  # start_stream refused the request
    started_at: float | None = None
    ended_at: float | None = None  # when the client took the terminal event
    cancelled_at: float | None = None  # when the client disconnected
    hung: bool = False  # no terminal event within the bound
    resumes: list[Resume] = attrs.field(factory=list)
    duplicates: int = 0  # replayed events dropped because the client held their seq
    mismatches: list[str] = attrs.field(factory=list)  # replayed events unlike the ones held
    repeated: list[int] = attrs.field(factory=list)  # seqs a live read (not a replay) repeated

    @property
    def gave_up(self) -> Resume | None:
        """The resume the proxy refused (the client then gave up on its stream), if any."""
        return next((r for r in self.resumes if r.error is not None), None)

    @property
    def text(self) -> str:
        """The answer as the client holds it (see ``client_text``)."""
        return client_text(self.events)

    @property
    def tool_calls(self) -> list[ToolCall]:
        """The tool calls the client holds (see ``client_tool_calls``)."""
        return client_tool_calls(self.events)

    @property
    def reasoning(self) -> str:
        """The reasoning the client was shown."""
        return client_reasoning(self.events)


@attrs.frozen(kw_only=True)
class Transition:
    """One health state change of a provider, as the health actor reported it."""

    provider: str
    old: str
    new: str
    failures: int
    at: float


@attrs.define
class History:
    """Everything a run left behind, for the invariants to judge."""

    scenario: Scenario
    config: BatonConfig
    real_sockets: bool
    clients: list[ClientRun] = attrs.field(factory=list)
    attempts: dict[str, list[AttemptRecord]] = attrs.field(factory=dict)
    probes: dict[str, list[ProbeRecord]] = attrs.field(factory=dict)
    transitions: list[Transition] = attrs.field(factory=list)
    trips: list[tuple[str, float]] = attrs.field(factory=list)  # (provider, when)
    statistics: BatonStatistics | None = None  # after the last stream ended
    started_at: float = 0.0
    ended_at: float = 0.0  # when the last stream ended
    hung: bool = False  # the run as a whole did not finish within its bound
    crash: str | None = None  # an exception escaped the actor system
    unclosed: dict[str, int] = attrs.field(factory=dict)  # simulators: attempts never closed

    def attempts_of(self, client: int) -> list[tuple[str, AttemptRecord]]:
        """Every upstream attempt made for client ``client``, as (provider, record)."""
        return [
            (name, record)
            for name, records in self.attempts.items()
            for record in records
            if client_of(record.request.messages) == client
        ]


def stream_bound(
    route: RouteConfig, config: BatonConfig, answer_tokens: int, read_delay: float
) -> float:
    """The longest a stream may take before it must have ended, from the route's timeouts.

    Each attempt: a pool wait, the first token, every later token within the idle timeout, the
    finish grace, and the longest wait before the next attempt; plus the outage queue.
    """
    worst = 0.0
    for target in route.targets:
        p = config.providers[target.provider]
        wait = max(p.max_retry_wait, SPACING_SLACK + 0.25 * 2**p.retries)
        attempt = p.pool_timeout + p.first_token_timeout + (answer_tokens + 2) * p.idle_timeout
        worst = max(worst, attempt + FINISH_SLACK + wait)
    return (
        route.queue_timeout + route.max_attempts * worst + (answer_tokens + 10) * read_delay + 1.0
    )


def _record_transition(history: History, change: HealthTransition) -> None:
    """``on_transition``: keep a health state change (and a credential trip) in the history."""
    transition = Transition(
        provider=change.provider,
        old=change.old,
        new=change.new,
        failures=change.consecutive_failures,
        at=change.at,
    )
    history.transitions.append(transition)
    if change.credentials_rejected:
        history.trips.append((change.provider, change.at))


def _seed_scheduler(seed: int) -> None:
    """Make trio's task scheduling repeat exactly for this seed (it shuffles runnable tasks).

    Hypothesis's trio plugin seeds the same generator inside ``@given``; seeding it here too
    makes a replay outside hypothesis interleave the tasks exactly as the failing run did.
    """
    import trio._core._run as trio_run  # private, but the only handle on the scheduler's order

    generator = getattr(trio_run, "_r", None)
    if generator is not None:
        generator.seed(seed)


def play(
    scenario: Scenario, *, user_config: BatonConfig | None = None, real_sockets: bool = False
) -> History:
    """Run ``scenario`` once under ``MockClock`` and return its history; never raises for faults.

    Raises ``ValueError`` when the scenario does not fit ``user_config``.
    """
    config = scenario_config(scenario, user_config)
    history = History(scenario=scenario, config=config, real_sockets=real_sockets)
    _seed_scheduler(scenario.seed)
    try:
        trio.run(_play, history, clock=trio.testing.MockClock(autojump_threshold=0))
    except Exception as exc:  # noqa: BLE001 - a crash is a finding, judged with the rest
        history.crash = _first_error(exc)
    return history


def _time_away(spec: ClientSpec) -> float:
    """How long a client may spend with its connection down, at most."""
    return spec.drops * spec.away if spec.drop_at_event is not None else 0.0


def _first_error(exc: BaseException) -> str:
    """The innermost first exception of a (nested) group, as one line."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return "".join(traceback.format_exception_only(exc)).strip()


async def _play(history: History) -> None:
    scenario, config = history.scenario, history.config
    history.started_at = t0 = trio.current_time()
    pieces = [len(scenario.plan(i).pieces) for i in range(len(scenario.clients))]
    bounds = [
        spec.start_at
        + stream_bound(config.routes[spec.route], config, pieces[i], spec.read_delay)
        + _time_away(spec)
        if spec.route in config.routes else 0.0
        for i, spec in enumerate(scenario.clients)
    ]  # fmt: skip
    whole = max(bounds, default=0.0) + SHUTDOWN_GRACE
    with trio.move_on_after(whole) as scope:
        async with AsyncExitStack() as stack:
            providers = await _providers(stack, history)
            record = functools.partial(_record_transition, history)
            baton = await stack.enter_async_context(
                open_baton(config, providers, seed=scenario.seed, on_transition=record)
            )
            async with trio.open_nursery() as nursery:
                for i, spec in enumerate(scenario.clients):
                    run = ClientRun(index=i, spec=spec)
                    history.clients.append(run)
                    nursery.start_soon(_client, baton, run, scenario, t0, bounds[i] - spec.start_at)
            history.ended_at = trio.current_time()
            # A session gives back its pool slot just after its client has the terminal event:
            # judge the pools once every session has ended and every actor is idle.
            with trio.move_on_after(SHUTDOWN_GRACE):
                while baton.statistics().active_streams:
                    await trio.sleep(SETTLE_STEP)
            await trio.testing.wait_all_tasks_blocked()
            history.statistics = baton.statistics()
    history.hung = scope.cancelled_caught


async def _providers(stack: AsyncExitStack, history: History) -> Mapping[str, Any]:
    """Fakes for every configured provider, each following its schedule from the scenario."""
    scenario, config = history.scenario, history.config
    if not history.real_sockets:
        fakes = {
            name: FakeProvider(
                name,
                scenario.schedule(name),
                kind=cfg.kind,
                seed=scenario.seed,
                words=scenario.words,  # type: ignore[arg-type]
            )
            for name, cfg in config.providers.items()
        }
        for name, fake in fakes.items():
            history.attempts[name] = fake.log
            history.probes[name] = fake.probes
        return fakes
    from transport import build_providers

    nursery = await stack.enter_async_context(trio.open_nursery())
    stack.callback(nursery.cancel_scope.cancel)
    sims: dict[str, SimulatedProvider] = {}
    providers = {}
    for name, cfg in config.providers.items():
        sim = SimulatedProvider(scenario.schedule(name), seed=scenario.seed, words=scenario.words)  # type: ignore[arg-type]
        await nursery.start(sim.serve)
        sims[name] = sim
        history.attempts[name] = sim.log
        history.probes[name] = sim.probes
        url = sim.base_url_anthropic if cfg.kind == "anthropic" else sim.base_url_openai
        providers[name] = attrs.evolve(cfg, base_url=url, api_key_env=None)
    real_config = attrs.evolve(config, providers=providers)
    adapters = build_providers(real_config, environ={})

    async def close() -> None:
        with trio.move_on_after(CLOSE_GRACE, shield=True):
            for name, sim in sims.items():
                with trio.move_on_after(CLOSE_GRACE / max(1, len(sims))):
                    await sim.wait_all_closed()
                history.unclosed[name] = len(sim.open_attempts)
            for adapter in adapters.values():
                await adapter.aclose()  # type: ignore[attr-defined]

    # Runs after open_baton exits (the exit stack unwinds in reverse) and before the servers stop.
    stack.push_async_callback(close)
    return adapters


class _Holder:
    """What a client holds of its stream, by seq: new events kept, repeats checked and dropped."""

    def __init__(self, run: ClientRun, cancel_at: int | None) -> None:
        self.run = run
        self.cancel_at = cancel_at
        self.text_length = 0
        self.by_seq: dict[int, ClientEvent] = {}

    @property
    def last_seq(self) -> int:
        return max(self.by_seq, default=-1)

    def hold(self, events: Sequence[ClientEvent], now: float, *, replay: bool = False) -> None:
        """Keep the events the client does not hold yet; only a replay may repeat a seq."""
        run = self.run
        for event in events:
            held = self.by_seq.get(event.seq)
            if held is not None and not replay:
                run.repeated.append(event.seq)
                continue
            if held is not None:
                run.duplicates += 1
                if held != event:
                    run.mismatches.append(f"seq {event.seq}: held {held!r}, replayed {event!r}")
                continue
            self.by_seq[event.seq] = event
            run.events.append(event)
            if isinstance(event, Failover) and event.mode == "reset":
                self.text_length = 0
            elif isinstance(event, Delta):
                self.text_length += len(event.text)
            if is_terminal(event):
                run.ended_at = now

    def wants_cancel(self) -> bool:
        run = self.run
        return (
            self.cancel_at is not None
            and run.cancelled_at is None
            and run.ended_at is None
            and self.text_length >= self.cancel_at
        )


async def _client(baton: Any, run: ClientRun, scenario: Scenario, t0: float, bound: float) -> None:
    """One client: start at its offset, read (slowly, if so), drop and resume, disconnect at its
    token."""
    spec = run.spec
    await trio.sleep_until(t0 + spec.start_at)
    tokens = scenario.answer(run.index)
    cancel_at = (
        None if spec.cancel_at_token is None else len("".join(tokens[: spec.cancel_at_token]))
    )
    try:
        handle = baton.start_stream(
            route=spec.route,
            messages=client_prompt(run.index),
            params=scenario.params(run.index),
            can_reset=spec.can_reset,
        )
    except RequestError as exc:
        run.start_error = f"{exc.code}: {exc.message}"
        return
    run.started_at = trio.current_time()
    if cancel_at == 0:
        handle.cancel()
        run.cancelled_at = run.started_at
    holder = _Holder(run, cancel_at)
    drops_left = spec.drops if spec.drop_at_event is not None else 0
    next_drop = spec.drop_at_event or 0
    with trio.move_on_after(bound) as scope:
        while True:
            try:
                batch = await handle.take()
            except trio.EndOfChannel:
                break
            now = trio.current_time()
            dropping = (
                drops_left > 0
                and run.ended_at is None
                and len(run.events) + len(batch) >= next_drop
            )
            if dropping:
                batch = batch[: max(0, next_drop - len(run.events))]  # the rest is lost
            holder.hold(batch, now)
            if dropping and run.ended_at is None:
                drops_left -= 1
                resumed = await _drop_and_resume(baton, handle, holder)
                if resumed is None:
                    return  # the proxy forgot the stream: the client gives up on it
                handle = resumed
                next_drop = len(run.events) + (spec.drop_at_event or 0)
            if run.ended_at is not None:
                continue
            if holder.wants_cancel():
                handle.cancel()
                run.cancelled_at = now
            if spec.read_delay:
                await trio.sleep(spec.read_delay)
    if scope.cancelled_caught:
        run.hung = True
        handle.cancel()
    run.statistics = handle.statistics()


async def _drop_and_resume(baton: Any, handle: Any, holder: _Holder) -> Any:
    """The client's connection drops, it is away for a while, then it resumes its stream.

    Returns the new handle, with the replay held, or None when the proxy refused the resume.
    """
    run, spec = holder.run, holder.run.spec
    detached_at = trio.current_time()
    baton.detach(handle)
    await trio.sleep(spec.away)
    held = holder.last_seq
    after = max(-1, held - spec.stale)
    resumed_at = trio.current_time()
    try:
        new_handle, replay = baton.resume(handle.id, after, client=None)
    except RequestError as exc:
        run.resumes.append(
            Resume(
                detached_at=detached_at, resumed_at=resumed_at, held=held, after=after,
                error=f"{exc.code}: {exc.message}", code=exc.code,
            )
        )  # fmt: skip
        run.statistics = handle.statistics()
        return None
    run.resumes.append(
        Resume(
            detached_at=detached_at, resumed_at=resumed_at, held=held, after=after,
            replayed=len(replay),
        )
    )  # fmt: skip
    holder.hold(replay, resumed_at, replay=True)
    return new_handle
