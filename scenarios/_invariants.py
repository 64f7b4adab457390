"""The invariants a scenario's history must hold, and a readable account of what a client saw.

``check(history)`` returns every ``Violation`` (an empty list is a pass). Each invariant is
checked on recorded facts only: the events each client took, the ``AttemptRecord``s and
``ProbeRecord``s of the fake providers, the logged health transitions and the proxy's
``statistics()``:

- ``no_crash``: no exception escaped the actor system;
- ``no_hang``: every stream ended within its bound (``stream_bound``), and so did the run;
- ``shape``: seqs are 0, 1, 2, ... without gaps; exactly one terminal event, and it is last;
- ``text``: a ``done`` stream's text is exactly the answer; any other stream's text is a
  prefix of it, and so was the text at every moment (a ``reset`` starts it again);
- ``splice``: each stretch of text between failovers is what the serving provider really sent
  right after the text already held (the delivered prefix, then what the continuation added);
- ``events``: failovers name the provider that was serving; ``done`` names the last one; a
  ``reset`` only for clients that can take one; the phase says whether output (text,
  reasoning, tool calls) was held;
- ``outcome``: only legitimate error codes (``cancelled`` only for a client that left, never
  ``internal_error``/``shutting_down``); ``upstream_rejected`` only after a provider really
  rejected the request with a 4xx (never for a refused prefill, which is retried);
- ``healthy_target``: if some target of the route stayed healthy (``stays_healthy``), the
  stream ends in ``done``, unless the client left, a provider rejected the request, the retry
  budget or the attempts ran out, or the pool was full;
- ``continued``: a stream whose client already holds text ends in ``done`` when some target of
  the route stayed healthy and attempts remained: a continuation is never refused by the retry
  budget (only the client leaving, a rejected request, a continuation that cannot be joined
  for a client that cannot reset, or a full pool excuse it);
- ``closed``: every upstream attempt was closed, and (in memory) before its client got the end;
- ``attempts``: no stream made more upstream attempts than its route's ``max_attempts``;
- ``statistics``: each stream's statistics agree with its events; afterwards no stream is
  active and no pool slot is held or waited for; never more upstream attempts open at once
  than ``max_connections`` (in memory, from the providers' records);
- ``health``: a provider is marked unhealthy only with ``failure_threshold`` consecutive
  failures (as logged, and as many failed attempts or probes really happened) or a credential
  trip; it rests at least its ``cooldown`` and at most ``max_cooldown`` before it is tried
  again; the last logged state is the state ``statistics()`` shows (and a provider that is not
  healthy at the end had its transitions logged: the recorder missed nothing);
- ``tools``: every tool call a client got is complete (an id and a function name) and its
  arguments parse as a JSON object; each call (by id, and by index) appears exactly once; a
  ``done`` stream holds exactly the calls the answer makes (names and arguments, in order),
  with finish reason ``tool_calls``, and a text answer holds none;
- ``json``: a ``done`` answer to a JSON-mode request parses as JSON (an object for
  ``json_object``; matching the schema when ``strict``);
- ``reasoning``: reasoning is shown only to a client that asked for it, and none of it ever
  appears in the answer's text;
- ``resume``: a client whose connection dropped holds, once it resumed, what it would have held
  had it never dropped (the invariants above judge ``ClientRun.events``, the events it holds
  by seq: nothing lost, seqs gapless, one terminal event); every replayed event it already
  held was identical to the one held; a resume inside ``[server] resume_window`` is never
  refused. One after the window may get ``unknown_stream``: that is excused, the client holds
  a gapless prefix of the answer, and every upstream attempt of its stream was closed by the
  window's end (the stream was abandoned, not left running).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import attrs
import jsonschema
import orjson

from actors import (
    Delta,
    Done,
    Failover,
    Reasoning,
    Started,
    StreamError,
    ToolCall,
    ToolCallPart,
    is_terminal,
)

from ._faults import PREFILL_REJECTED_MESSAGE, AttemptRecord
from ._play import ClientRun, History, Resume, Transition
from ._strategies import stays_healthy

INVARIANTS = (
    "no_crash", "no_hang", "shape", "text", "splice", "events", "outcome", "healthy_target",
    "continued", "closed", "attempts", "statistics", "health", "tools", "json", "reasoning",
    "resume",
)  # fmt: skip
_ALWAYS_WRONG = ("internal_error", "shutting_down")
_EPSILON = 1e-6
# A reasoning piece this long (without its spaces) found in the text is a leak, not a chance
# match of one common word.
REASONING_LEAK_MIN = 12
# Mock seconds an abandoned stream's upstream attempt may take to close after its window ends
# (in memory the close is immediate; a simulator sees it over a socket, a little later).
ABANDON_SLACK = 0.5
ABANDON_SLACK_SOCKETS = 5.0


@attrs.frozen
class Violation:
    """One invariant broken in one run; ``client`` is the stream's client index, if any."""

    invariant: str
    message: str
    client: int | None = None

    def __str__(self) -> str:
        who = f"client {self.client}: " if self.client is not None else ""
        return f"[{self.invariant}] {who}{self.message}"


def check(history: History) -> list[Violation]:
    """Every invariant ``history`` breaks (see the module docstring)."""
    out: list[Violation] = []
    if history.crash is not None:
        # The rest of the history is cut short: judging it would only add noise.
        return [Violation("no_crash", f"an exception escaped the actor system: {history.crash}")]
    if history.hung:
        out.append(Violation("no_hang", "the run did not finish within its bound"))
    for run in history.clients:
        out.extend(_client(history, run))
    out.extend(_closed(history))
    out.extend(_system(history))
    out.extend(_health(history))
    return out


# --- per client ------------------------------------------------------------------------------


def _client(history: History, run: ClientRun) -> Iterator[Violation]:
    def v(invariant: str, message: str) -> Violation:
        return Violation(invariant, message, run.index)

    if run.start_error is not None:
        yield v("outcome", f"the stream could not start: {run.start_error}")
        return
    if run.hung:
        yield v("no_hang", f"no terminal event within its bound; it saw: {describe(run)}")
        return
    yield from (v(*item) for item in _resumes(history, run))
    if run.gave_up is not None:
        yield from (v(*item) for item in _abandoned(history, run, run.gave_up))
        return
    events = run.events
    if [e.seq for e in events] != list(range(len(events))):
        yield v("shape", f"seqs are not 0..{len(events) - 1}: {[e.seq for e in events]}")
    terminals = [e for e in events if is_terminal(e)]
    if len(terminals) != 1 or not events or terminals[0] is not events[-1]:
        last = _name(events[-1]) if events else "none"
        yield v("shape", f"{len(terminals)} terminal events, the last event is {last}")
        return
    answer = "".join(history.scenario.answer(run.index))
    yield from (v(*item) for item in _text(history, run, answer))
    yield from (v(*item) for item in _tools(history, run))
    yield from (v(*item) for item in _json(history, run))
    yield from (v(*item) for item in _reasoning(history, run))
    yield from (v(*item) for item in _outcome(history, run))
    yield from (v(*item) for item in _attempts(history, run))


def _text(history: History, run: ClientRun, answer: str) -> Iterator[tuple[str, str]]:
    terminal = run.events[-1]
    text = ""
    serving = None
    shown = False  # the client holds reasoning or tool calls of the answer
    segment_prefix, segment = "", ""
    segments: list[tuple[str | None, str, str]] = []
    for event in run.events:
        if isinstance(event, Started):
            serving = event.provider
        elif isinstance(event, Failover):
            if serving is not None and event.from_provider != serving:
                yield "events", f"a failover from {event.from_provider} while {serving} was serving"
            if event.mode == "reset" and not run.spec.can_reset:
                yield "events", "a reset failover reached a client that cannot take one"
            if (event.phase == "midstream") != (bool(text) or shown):
                yield (
                    "events",
                    f"a {event.phase} failover while the client held {len(text)} characters"
                    + (" and other output (reasoning, tool calls)" if shown else ""),
                )
            segments.append((serving, segment_prefix, segment))
            serving = event.to_provider
            if event.mode == "reset":
                text, shown = "", False
            segment_prefix, segment = text, ""
        elif isinstance(event, Reasoning | ToolCall | ToolCallPart):
            shown = True
        elif isinstance(event, Delta):
            text += event.text
            segment += event.text
            if not answer.startswith(text):
                at = _diverges_at(text, answer)
                yield (
                    "text",
                    f"stopped being a prefix of the answer at char {at}: {_around(text, answer)}",
                )
                return
    segments.append((serving, segment_prefix, segment))
    if isinstance(terminal, Done):
        if text != answer:
            held = f"{len(text)} of the answer's {len(answer)} characters"
            yield "text", f"done, but the text has {held}: ...{text[-40:]!r}"
        if serving is not None and terminal.provider != serving:
            yield "events", f"done names {terminal.provider} but {serving} was serving"
    for provider, prefix, added in segments:
        if (
            added
            and provider is not None
            and not _sent_by(history, run.index, provider, prefix + added)
        ):
            yield (
                "splice",
                (
                    f"{provider} never sent {added[:60]!r} right after the {len(prefix)} "
                    f"characters the client held (...{prefix[-30:]!r})"
                ),
            )


def _resumes(history: History, run: ClientRun) -> Iterator[tuple[str, str]]:
    """Replays repeat held events exactly; a resume inside the window is never refused."""
    if run.repeated:
        yield "shape", f"a live read repeated seqs {run.repeated} (only a replay may)"
    for mismatch in run.mismatches:
        yield "resume", f"a replayed event differs from the one the client held: {mismatch}"
    window = history.config.server.resume_window
    for r in run.resumes:
        if r.error is None:
            continue
        away = r.resumed_at - r.detached_at
        if r.code != "unknown_stream":
            yield (
                "resume",
                f"the resume after seq {r.after} ({away:g} s away) was refused: {r.error}",
            )
        elif away <= window + _EPSILON:
            yield (
                "resume",
                f"unknown_stream {away:g} s after the drop, inside the {window:g} s resume window",
            )


def _abandoned(history: History, run: ClientRun, r: Resume) -> Iterator[tuple[str, str]]:
    """A client that came back too late: what it holds is sound, and its stream was closed."""
    events = run.events
    if [e.seq for e in events] != list(range(len(events))):
        yield "shape", f"seqs held are not 0..{len(events) - 1}: {[e.seq for e in events]}"
    answer = "".join(history.scenario.answer(run.index))
    if history.scenario.params(run.index).get("response_format") is None and not answer.startswith(
        run.text
    ):
        yield "text", f"the text held is not a prefix of the answer: {_around(run.text, answer)}"
    window = history.config.server.resume_window
    slack = ABANDON_SLACK_SOCKETS if history.real_sockets else ABANDON_SLACK
    deadline = r.detached_at + window + slack
    for name, record in history.attempts_of(run.index):
        if record.closed_at is None or record.closed_at > deadline:
            closed = "never" if record.closed_at is None else _t(history, record.closed_at)
            message = (
                f"attempt {record.index} at {name} was closed {closed}, not by the end of the "
                f"resume window ({_t(history, r.detached_at + window)}) its client left it in"
            )
            yield "resume", message
    limit = history.config.routes[run.spec.route].max_attempts
    if len(history.attempts_of(run.index)) > limit:
        yield "attempts", f"more upstream requests than max_attempts = {limit}"


def _tools(history: History, run: ClientRun) -> Iterator[tuple[str, str]]:
    calls = [e for e in run.events if isinstance(e, ToolCall)]
    ids = [c.id for c in calls]
    indexes = [c.index for c in calls]
    if len(set(ids)) != len(ids):
        yield "tools", f"a tool call id came more than once: {ids}"
    if len(set(indexes)) != len(indexes):
        yield "tools", f"a tool call index came more than once: {indexes}"
    for call in calls:
        if not call.id or not call.name:
            yield "tools", f"tool call {call.index} has no id or no function name: {call!r}"
        try:
            arguments = orjson.loads(call.arguments)
        except orjson.JSONDecodeError:
            arguments = None
        if not isinstance(arguments, dict):
            yield (
                "tools",
                f"tool call {call.index} ({call.name}) has arguments that are not a JSON object: "
                + repr(call.arguments[:80]),
            )
    terminal = run.events[-1]
    if not isinstance(terminal, Done):
        return
    expected = [(c.name, c.arguments) for c in history.scenario.plan(run.index).calls]
    got = [(c.name, c.arguments) for c in run.tool_calls]
    if got != expected:
        yield (
            "tools",
            f"done with tool calls {_calls(got)}, but the answer makes {_calls(expected)}",
        )
    if expected and terminal.finish_reason != "tool_calls":
        yield "tools", f"done with tool calls, but finish reason {terminal.finish_reason!r}"


def _calls(calls: list[tuple[str, str]]) -> str:
    return "[" + ", ".join(f"{name}({arguments[:40]})" for name, arguments in calls) + "]"


def _json(history: History, run: ClientRun) -> Iterator[tuple[str, str]]:
    response_format = history.scenario.params(run.index).get("response_format")
    if not isinstance(run.events[-1], Done) or not isinstance(response_format, Mapping):
        return
    problem = _json_problem(run.text, response_format)
    if problem is not None:
        yield "json", f"done, but {problem}: {run.text[:80]!r}"


def _json_problem(text: str, response_format: Mapping[str, Any]) -> str | None:
    """Why ``text`` is not the JSON ``response_format`` asks for (its schema checked always)."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return f"the answer is not valid JSON ({exc})"
    if response_format.get("type") == "json_object" and not isinstance(value, dict):
        return "the answer is not a JSON object"
    schema = (response_format.get("json_schema") or {}).get("schema")
    if response_format.get("type") == "json_schema" and schema:
        try:
            jsonschema.validate(value, schema)
        except jsonschema.ValidationError as exc:
            return f"the answer does not match the schema ({exc.message})"
    return None


def _reasoning(history: History, run: ClientRun) -> Iterator[tuple[str, str]]:
    shown = [e.text for e in run.events if isinstance(e, Reasoning)]
    if not shown:
        return
    if "reasoning_effort" not in history.scenario.params(run.index):
        yield "reasoning", "reasoning was shown to a client that did not ask for it"
    text = run.text
    for piece in shown:
        if len(piece.strip()) >= REASONING_LEAK_MIN and piece in text:
            yield "reasoning", f"reasoning {piece[:40]!r} appears in the answer's text"
            return
    whole = "".join(shown).strip()
    if whole and whole in text:
        yield "reasoning", f"the reasoning {whole[:40]!r}... appears in the answer's text"


def _sent_by(history: History, client: int, provider: str, text: str) -> bool:
    """Whether some attempt of ``client`` at ``provider`` produced ``text`` (from the start)."""
    answer = history.scenario.answer(client)
    for name, record in history.attempts_of(client):
        if name == provider and _full_text(record, answer).startswith(text):
            return True
    return False


def _full_text(record: AttemptRecord, answer: list[str]) -> str:
    """The answer text up to where the attempt started, then what it sent."""
    return "".join(answer[: record.start]) + record.text_sent


def _outcome(history: History, run: ClientRun) -> Iterator[tuple[str, str]]:
    terminal = run.events[-1]
    left = run.cancelled_at is not None
    if isinstance(terminal, StreamError):
        code = terminal.code
        if code in _ALWAYS_WRONG:
            yield "outcome", f"ended with {code}: {terminal.message}"
        if code == "cancelled" and not left:
            yield "outcome", "ended cancelled, but the client never cancelled it"
        if code == "stream_diverged" and run.spec.can_reset:
            yield "outcome", "stream_diverged reached a client that can take a reset"
        if code == "upstream_rejected" and not _really_rejected(history, run, terminal):
            yield (
                "outcome",
                f"upstream_rejected without a provider rejecting the request: {terminal.message}",
            )
    if isinstance(terminal, Done) or (
        left and isinstance(terminal, StreamError) and terminal.code == "cancelled"
    ):
        return
    healthy = _healthy_targets(history, run)
    if not healthy or not isinstance(terminal, StreamError):
        return
    ended = f"{terminal.code}: {terminal.message}"
    held_text = any(isinstance(e, Delta) for e in run.events)
    if held_text and not _excused_midstream(history, run, terminal):
        message = (
            f"the client held text, {', '.join(healthy)} stayed healthy and attempts remained, "
            f"yet the stream ended with {ended}"
        )
        yield "continued", message
    elif not _excused(history, run, terminal):
        yield (
            "healthy_target",
            f"{', '.join(healthy)} stayed healthy, yet the stream ended with {ended}",
        )


def _healthy_targets(history: History, run: ClientRun) -> list[str]:
    """The targets of the stream's route whose every scheduled behaviour answers in full."""
    route, providers = history.config.routes[run.spec.route], history.config.providers
    return [
        t.provider for t in route.targets
        if stays_healthy(history.scenario.schedule(t.provider), providers[t.provider])
    ]  # fmt: skip


def _really_rejected(history: History, run: ClientRun, error: StreamError) -> bool:
    if PREFILL_REJECTED_MESSAGE in error.message:
        return False  # a refused prefill must be retried as an instruction, never passed on
    for _, record in history.attempts_of(run.index):
        b = record.behaviour
        if record.outcome == "status" and b.kind == "status" and b.status == error.status:
            return True
    return False


def _excused(history: History, run: ClientRun, error: StreamError) -> bool:
    """Whether an error is legitimate although a target of the route stayed healthy."""
    if error.code == "upstream_rejected":
        return True  # checked on its own: a provider really rejected the request
    if error.code != "all_providers_unavailable":
        return False
    return "retry budget" in error.message or _out_of_attempts(history, run)


def _excused_midstream(history: History, run: ClientRun, error: StreamError) -> bool:
    """Whether an error after text is legitimate although a target of the route stayed healthy.

    As ``_excused``, but the retry budget is no excuse: it never refuses a continuation. A
    continuation that cannot be joined ends a client that cannot reset (``stream_diverged``).
    """
    if error.code in ("upstream_rejected", "stream_diverged"):
        return True  # each checked on its own (``outcome``, ``splice``)
    return error.code == "all_providers_unavailable" and _out_of_attempts(history, run)


def _out_of_attempts(history: History, run: ClientRun) -> bool:
    """Whether the stream used all its route's attempts, or found a healthy target's pool full."""
    stats = run.statistics
    attempts = len(stats.attempts) if stats is not None else 0
    route = history.config.routes[run.spec.route]
    pool_full = stats is not None and any(a.outcome == "pool_full" for a in stats.attempts)
    return attempts >= route.max_attempts or pool_full


def _attempts(history: History, run: ClientRun) -> Iterator[tuple[str, str]]:
    limit = history.config.routes[run.spec.route].max_attempts
    records = history.attempts_of(run.index)
    if len(records) > limit:
        yield (
            "attempts",
            f"{len(records)} upstream requests for a route with max_attempts = {limit}",
        )
    stats = run.statistics
    if stats is None:
        return
    if len(stats.attempts) > limit:
        yield "attempts", f"{len(stats.attempts)} attempts for a route with max_attempts = {limit}"
    terminal = run.events[-1]
    outcome = "done" if isinstance(terminal, Done) else getattr(terminal, "code", None)
    if stats.outcome != outcome:
        yield "statistics", f"statistics say {stats.outcome!r}, the client got {outcome!r}"
    failovers = sum(isinstance(e, Failover) for e in run.events)
    if stats.failovers != failovers:
        yield (
            "statistics",
            f"statistics count {stats.failovers} failovers, the client saw {failovers}",
        )
    if not history.real_sockets and run.ended_at is not None:
        for name, record in records:
            if record.closed_at is not None and record.closed_at > run.ended_at + _EPSILON:
                yield (
                    "closed",
                    f"attempt {record.index} at {name} closed after the stream had ended",
                )


# --- the whole run -----------------------------------------------------------------------------


def _closed(history: History) -> Iterator[Violation]:
    for name, records in history.attempts.items():
        still_open = [r.index for r in records if r.closed_at is None]
        if still_open:
            yield Violation("closed", f"{name}: upstream attempts {still_open} were never closed")
    for name, count in history.unclosed.items():
        if count:
            yield Violation("closed", f"{name}: {count} attempts still open on the simulator")


def _system(history: History) -> Iterator[Violation]:
    stats = history.statistics
    if stats is not None:
        if stats.active_streams:
            yield Violation(
                "statistics",
                f"{stats.active_streams} streams still active after every stream ended",
            )
        for name, provider in stats.providers.items():
            pool = provider.pool
            if pool.in_use or pool.waiting:
                yield Violation(
                    "statistics",
                    f"{name}: pool holds {pool.in_use} slots, {pool.waiting} waiting, "
                    "after the end",
                )
    if history.real_sockets:
        return  # the simulators' clocks see opens and closes late: no exact overlap count
    for name, records in history.attempts.items():
        limit = history.config.providers[name].max_connections
        for record in records:
            # Still open when this one arrived (request indexes are arrival order; one that
            # closed at the very instant this one opened is taken to have closed first).
            overlapping = 1 + sum(
                1 for other in records[: record.index]
                if other.closed_at is None or other.closed_at > record.opened_at
            )  # fmt: skip
            if overlapping > limit:
                yield Violation(
                    "statistics",
                    f"{name}: {overlapping} upstream attempts open at once "
                    f"(max_connections = {limit})",
                )
                break


def _health(history: History) -> Iterator[Violation]:
    by_provider: dict[str, list[Transition]] = {}
    for transition in history.transitions:
        by_provider.setdefault(transition.provider, []).append(transition)
    for name, transitions in by_provider.items():
        for message in _breaker(history, name, transitions):
            yield Violation("health", f"{name} {message}")
    stats = history.statistics
    for name, provider in stats.providers.items() if stats is not None else ():
        # Also keeps the log-based recorder honest: a change it missed shows here.
        status = provider.health.status if provider.health is not None else "healthy"
        if name not in by_provider and status != "healthy" and not history.hung:
            yield Violation("health", f"{name} is {status} but no transition was ever logged")


def _breaker(history: History, name: str, transitions: list[Transition]) -> Iterator[str]:
    """What is wrong with one provider's logged transitions, against its health settings."""
    cfg = history.config.providers[name].health
    threshold = cfg.failure_threshold
    entered: float | None = None
    for t in transitions:
        if t.new == "unhealthy":
            tripped = any(p == name and at <= t.at + _EPSILON for p, at in history.trips)
            if t.old == "probing":
                yield f"went from probing straight back to unhealthy at t={_t(history, t.at)}"
            if not tripped and t.failures < threshold:
                yield (
                    f"marked unhealthy after {t.failures} consecutive failures "
                    f"(threshold {threshold})"
                )
            if not tripped and _failed_before(history, name, t.at) < threshold:
                yield f"marked unhealthy with fewer than {threshold} failed attempts or probes"
            entered = t.at
        elif t.old == "unhealthy" and entered is not None:
            rested = t.at - entered
            if rested < cfg.cooldown - _EPSILON:
                yield (
                    f"left unhealthy after {rested:g} s, before its cooldown of {cfg.cooldown:g} s"
                )
            entered = None
    if entered is not None and history.ended_at - entered > cfg.max_cooldown + 1.0:
        stuck = history.ended_at - entered
        yield f"stayed unhealthy {stuck:g} s, past its max_cooldown of {cfg.max_cooldown:g} s"
    stats = history.statistics
    snapshot = stats.providers[name].health if stats is not None else None
    if snapshot is not None and snapshot.status != transitions[-1].new and not history.hung:
        yield f"last logged as {transitions[-1].new}, but statistics() says {snapshot.status}"


def _failed_before(history: History, provider: str, at: float) -> int:
    """How many attempts or probes at ``provider`` by ``at`` could have counted as failures."""
    attempts = sum(
        1
        for r in history.attempts.get(provider, [])
        if r.opened_at <= at + _EPSILON and r.outcome != "finished"
    )
    probes = sum(1 for p in history.probes.get(provider, []) if p.at <= at + _EPSILON and not p.ok)
    return attempts + probes


# --- reading a history ---------------------------------------------------------------------------


def describe(run: ClientRun, *, limit: int = 400) -> str:
    """What a client saw, one short token per event: ``started(primary) 'The quiet' done(...)``."""
    parts = []
    for event in run.events:
        match event:
            case Started(provider=provider):
                parts.append(f"started({provider})")
            case Delta(text=text):
                parts.append(repr(text if len(text) <= 40 else text[:18] + "…" + text[-18:]))
            case Reasoning(text=text):
                parts.append(f"reasoning({text[:18]!r})")
            case ToolCall(index=index, name=name, arguments=arguments):
                parts.append(f"tool_call({index}, {name}, {arguments[:24]!r})")
            case Failover():
                route = f"{event.from_provider}→{event.to_provider}"
                parts.append(f"failover({route} {event.reason} {event.mode} {event.phase})")
            case Done(provider=provider, finish_reason=reason):
                parts.append(f"done({provider}, {reason})")
            case StreamError(code=code):
                parts.append(f"error({code})")
    text = " ".join(parts)
    return text if len(text) <= limit else text[: limit // 2] + " … " + text[-limit // 2 :]


def _name(event: object) -> str:
    return type(event).__name__


def _t(history: History, at: float) -> str:
    return f"{at - history.started_at:g}"


def _diverges_at(text: str, answer: str) -> int:
    index = 0
    while index < min(len(text), len(answer)) and text[index] == answer[index]:
        index += 1
    return index


def _around(text: str, answer: str) -> str:
    at = _diverges_at(text, answer)
    start = max(0, at - 25)
    return f"got ...{text[start : at + 25]!r}, expected ...{answer[start : at + 25]!r}"
