"""StreamSession: one client stream, from the first pick to exactly one terminal event.

The session runs the failover loop: it asks the router for a target, the target's health for
admission, runs an ``Attempt`` (which takes a pool slot and streams from the provider through
the splice guard into the stream's numbered log) and, on a failure, decides (``policy``)
whether to retry the target, fail over, or give up. A route that hedges races the first
attempt against a second target (``_hedge``). The session is temporary: it ends with its
stream, and whatever ends it (the answer, an error, the client cancelling, shutdown, a bug) the
log gets exactly one terminal event.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import attrs
import trio

from ._attempt import Attempt, AttemptOutcome, AttemptStatistics
from ._config import RouteConfig, Target
from ._context import SessionContext
from ._errors import Failure, FailureKind
from ._hedge import Claim, HedgeRace, hedge_delay, pick_hedge, wants_hedge
from ._messages import (
    Done,
    Message,
    Started,
    StreamError,
)
from ._output import StreamOutput
from ._router import Picked, PickResult, Unavailable
from ._streamlog import StreamLog, short_id
from ._vocab import Capability, StreamEnd
from .policy._failover import FailOver, Reject, Retry, decide, explain
from .policy._fair import ANONYMOUS, ClientTag
from .policy._health_view import HealthSnapshot
from .policy._report import report_for
from .policy._route import candidates

log = logging.getLogger(__name__)

# Admissions a stream's first attempt may be refused in a row, with no wait for recovery in
# between, before it leaves the target (see ``StreamSession._wait_again``).
MAX_REFUSED_IN_A_ROW = 3


@attrs.frozen(kw_only=True)
class StreamStatistics:
    stream: str
    route: str
    attempts: tuple[AttemptStatistics, ...]
    failovers: int
    outcome: StreamEnd | None  # None while the stream runs


@attrs.define
class _Tries:
    """What the failover loop remembers of one stream's attempts."""

    count: int = 0
    excluded: set[int] = attrs.field(factory=set)  # targets out for the rest of the request
    failures: list[str] = attrs.field(factory=list)  # one line per failure, for the final error
    starts: dict[int, list[float]] = attrs.field(factory=dict)  # per target: when attempts began
    prefill_rejected: set[int] = attrs.field(factory=set)  # targets to ask in instruct form
    unable: frozenset[int] = frozenset()  # targets that cannot serve what the request needs
    refused_in_a_row: int = 0  # admissions refused since the stream last waited for recovery

    def start(self, index: int, now: float) -> None:
        self.count += 1
        self.starts.setdefault(index, []).append(now)


class StreamSession:
    """Runs one stream; ``run`` returns when the stream's terminal event is in its log."""

    def __init__(
        self,
        *,
        stream_log: StreamLog,
        route: RouteConfig,
        messages: Sequence[Message],
        params: Mapping[str, Any],
        ref: str | None,
        can_reset: bool,
        transport: str,
        context: SessionContext,
        client: ClientTag = ANONYMOUS,
        unable: Mapping[int, frozenset[Capability]] | None = None,
    ) -> None:
        self.log = stream_log
        self.id = stream_log.stream_id
        self._route = route
        self._messages = tuple(messages)
        self._params = dict(params)
        self._ref = ref
        self._transport = transport
        self._ctx = context
        self._client = client  # whose stream: its turn in the pool's fair admission
        self.cancel_scope = trio.CancelScope()
        self._shutting_down = False
        self.out = StreamOutput(
            stream_log, route=route.name, params=self._params, can_reset=can_reset,
            telemetry=context.telemetry,
        )  # fmt: skip
        self._attempts: list[AttemptStatistics] = []
        self._retrying = False  # a retry attempt holds a place in the route's retry budget
        # Targets that cannot serve this request (tools to a server without them, ...), as
        # ``Baton.start_stream`` found them: out from the start, and named if the stream ends
        # without an answer.
        self._unable = dict(unable or {})

    def __repr__(self) -> str:
        return f"<StreamSession {self.id} route={self._route.name}>"

    def shut_down(self) -> None:
        """End the stream because Baton is stopping (``shutting_down``, retryable)."""
        self._shutting_down = True
        self.cancel_scope.cancel()

    def statistics(self) -> StreamStatistics:
        terminal = self.log.terminal
        outcome: StreamEnd | None = None
        if isinstance(terminal, Done):
            outcome = "done"
        elif isinstance(terminal, StreamError):
            outcome = terminal.code
        return StreamStatistics(
            stream=self.id, route=self._route.name, attempts=tuple(self._attempts),
            failovers=self.out.failovers, outcome=outcome,
        )  # fmt: skip

    # --- the stream's life -------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the stream. Cancelling ``cancel_scope`` is the client cancelling it."""
        self.out.started_at = trio.current_time()
        telemetry = self._ctx.telemetry
        telemetry.active_streams.add(1, {"transport": self._transport})
        self._ctx.router.start_request_nowait(self._route.name)
        try:
            with self.cancel_scope:
                await self._serve()
            if self.cancel_scope.cancelled_caught and self._shutting_down:
                self.out.error(
                    "shutting_down", "Baton is shutting down; please retry.", retryable=True
                )
            elif self.cancel_scope.cancelled_caught:
                self.out.error("cancelled", "The client cancelled the stream.", retryable=False)
        except Exception:
            log.exception("stream %s crashed", short_id(self.id))
            self.out.error(
                "internal_error",
                "Baton failed while serving this stream; please retry.",
                retryable=True,
            )
        finally:
            # Shutdown cancels us from outside: the client still gets its one terminal event.
            self.out.error("shutting_down", "Baton is shutting down; please retry.", retryable=True)
            self._end_retry()
            self._ctx.router.end_request_nowait(self._route.name)
            telemetry.active_streams.add(-1, {"transport": self._transport})
            self._record_end()

    async def _serve(self) -> None:
        """The failover loop: pick, admit, attempt, settle; then retry the target or fail over.

        Every attempt after the stream's first is a retry: it holds a place in the route's
        retry budget while it runs (``_start_retry``, ``_end_retry``).
        """
        route = self._route
        tries = _Tries(excluded=set(self._unable), unable=frozenset(self._unable))
        for index, lacks in self._unable.items():
            target = route.targets[index]
            tries.failures.append(
                f"{target.provider} ({target.model}): cannot serve {', '.join(sorted(lacks))}"
            )
        while True:
            if tries.count >= route.max_attempts:
                return self._exhausted(tries.failures, f"gave up after {tries.count} attempts")
            picked = await self._pick(tries)
            if picked is None:
                return
            if tries.count > 0 and not self._start_retry(tries):
                return
            try:
                if not await self._serve_target(picked, tries):
                    return
            finally:
                self._end_retry()

    async def _serve_target(self, picked: Picked, tries: _Tries) -> bool:
        """Attempts on one picked target until it answers or is left; False: the stream ended."""
        route = self._route
        index, target = picked.index, picked.target
        admitted, trial = await self._admit(target)
        if not admitted:
            if self._wait_again(tries):
                return True
            tries.excluded.add(index)
            tries.failures.append(f"{target.provider} ({target.model}): not taking traffic now")
            return True
        self._begin(target)
        hedge = None
        if wants_hedge(route, attempts=tries.count, delivered=bool(self.out.delivered)):
            hedge = await pick_hedge(self._ctx, route, index)
        while True:
            tries.start(index, trio.current_time())
            if hedge is not None:
                outcome = await self._race(picked, hedge, tries)
                hedge = None
                if outcome is None:
                    return False
            else:
                prefill_rejected = index in tries.prefill_rejected
                outcome = await self._attempt(target, prefill_rejected=prefill_rejected)
            self._end_retry()
            match outcome.kind:
                case "done" | "diverged" | "client_too_slow":
                    return False
                case "lost":
                    # The hedge won and then failed after its first text: the primary is out.
                    tries.excluded.add(index)
                    return True
                case "pool_full":
                    tries.excluded.add(index)
                    busy = f"{target.provider} ({target.model}): all upstream slots busy"
                    tries.failures.append(busy)
                    self.out.pending = self.out.pending or ("pool_full", self.out.phase())
                    return True
            decision = self._settle(picked, outcome, tries, trial=trial)
            if decision is None:
                return False
            if isinstance(decision, Retry) and tries.count < route.max_attempts:
                if decision.instruct:
                    tries.prefill_rejected.add(index)
                await trio.sleep(decision.delay)
                if not self._start_retry(tries):
                    return False
                continue
            tries.excluded.add(index)
            return True

    def _wait_again(self, tries: _Tries) -> bool:
        """Whether a stream refused admission picks again instead of leaving the target.

        The router offered a probing target's trial place, and another request or a probe
        took it first: when a provider recovers, every stream waiting out its outage wakes and
        wants the one place. A stream's first attempt, before any output, picks again: a target
        with no place free now sends it back to the outage queue (``_pick``), to wait for the
        trial's verdict like the rest. A stream refused ``MAX_REFUSED_IN_A_ROW`` times without
        waiting in between leaves the target, so a health view that lags cannot spin it.
        """
        if tries.count > 0 or self.out.shown:
            return False
        tries.refused_in_a_row += 1
        return tries.refused_in_a_row <= MAX_REFUSED_IN_A_ROW

    async def _admit(self, target: Target) -> tuple[bool, bool]:
        """Whether the target's health admits an attempt now, and whether as a half-open trial.

        A trial is an attempt admitted while the breaker is not closed (probing); its failure
        is the breaker's verdict, so it is never retried on the same target.
        """
        board = self._ctx.board
        before = board.get(target.provider)
        if not await self._ctx.health[target.provider].admit():
            return False, False
        return True, not (_closed(before) and _closed(board.get(target.provider)))

    def _start_retry(self, tries: _Tries) -> bool:
        """Take a place in the route's retry budget for the next attempt; False: refused.

        A refusal ends the stream (``all_providers_unavailable``, the budget's numbers in the
        message) and counts in ``proxy_retry_budget_exhausted``. A continuation of text the
        client holds is never refused.
        """
        route = self._route.name
        refused = self._ctx.router.start_retry_nowait(route, continuation=bool(self.out.delivered))
        if refused is not None:
            self._ctx.telemetry.retry_budget_exhausted.add(1, {"route": route})
            self._exhausted(tries.failures, _unavailable_sentence(refused), refused.snapshots)
            return False
        self._retrying = True
        return True

    def _end_retry(self) -> None:
        """Give back the retry budget's place, if a retry attempt holds one (idempotent)."""
        if self._retrying:
            self._retrying = False
            self._ctx.router.end_retry_nowait(self._route.name)

    async def _pick(self, tries: _Tries) -> Picked | None:
        """The target of the next attempt; a stream's first waits out an outage (bounded).

        None: the stream ended (nothing usable, the outage queue full or waited out).
        """
        route = self._route
        picked: PickResult | None = await self._ctx.router.pick(
            route.name, exclude=frozenset(tries.excluded)
        )
        if (
            isinstance(picked, Unavailable)
            and picked.reason == "none_usable"
            and tries.count == 0
            and tries.excluded == tries.unable
        ):
            tries.refused_in_a_row = 0
            picked = await self._queue_for_recovery(picked)
            if picked is None:
                return None
        if isinstance(picked, Unavailable):
            self._exhausted(tries.failures, _unavailable_sentence(picked), picked.snapshots)
            return None
        return picked

    def _begin(self, target: Target) -> None:
        """Tell the client which target starts the stream (once, with the first admitted one)."""
        if self.out.serving is None:
            self.out.serving = target
            self.log.append(
                Started, ref=self._ref, route=self._route.name, provider=target.provider,
                model=target.model,
            )  # fmt: skip

    async def _race(self, primary: Picked, hedge: Picked, tries: _Tries) -> AttemptOutcome | None:
        """Race the first attempt against a hedge; the primary's outcome, None: the stream ended.

        A hedge that answered ends the stream; one that failed is settled here and is out for
        the rest of the request.
        """
        ctx = self._ctx
        provider = primary.target.provider
        delay = hedge_delay(self._route, ctx.provider_configs[provider], ctx.board.get(provider))
        race = HedgeRace(delay, on_hedge_wins=self._hedge_won)
        outcome, rival = await race.run(
            partial(self._attempt, primary.target), partial(self._attempt, hedge.target)
        )
        if rival.started:
            tries.start(hedge.index, trio.current_time())
        else:
            # Never needed: give back its admission (it may hold a half-open trial place).
            ctx.health[hedge.target.provider].report_nowait(report_for("lost"))
        if rival.kind in ("done", "diverged", "client_too_slow"):
            return None
        if rival.kind == "failed":
            # The hedge failed (before or after winning): it is out for this request.
            tries.excluded.add(hedge.index)
            if self._settle(hedge, rival, tries) is None:
                return None
        return outcome

    def _hedge_won(self) -> None:
        self.out.pending = ("hedge", "prestream")

    def _settle(
        self, picked: Picked, outcome: AttemptOutcome, tries: _Tries, *, trial: bool = False
    ) -> Retry | FailOver | None:
        """Decide what follows a failed attempt; None: the stream ended (the request is wrong).

        ``trial``: the attempt was admitted as a half-open trial of its target's breaker.
        """
        ctx = self._ctx
        target, failure = picked.target, outcome.failure
        assert failure is not None
        snapshots = ctx.board.all()
        others = candidates(self._route, snapshots, frozenset(tries.excluded | {picked.index}))
        decision = decide(
            failure, produced_text=outcome.produced_text, midstream=bool(self.out.delivered),
            was_prefill=outcome.form == "prefill",
            previous_starts=tuple(tries.starts[picked.index]),
            config=ctx.provider_configs[target.provider], now=trio.current_time(),
            jitter=ctx.random.random(), trial=trial, alternatives=bool(others),
            breaker_closed=_closed(snapshots.get(target.provider)),
        )  # fmt: skip
        tries.failures.append(f"{target.provider} ({target.model}): {failure.describe()}")
        next_step = explain(decision, alternatives=bool(others))
        log.warning(
            "stream %s: attempt on %s failed (%s); %s",
            short_id(self.id), target.provider, failure.describe(), next_step,
        )  # fmt: skip
        if isinstance(decision, Reject):
            self._reject(target, failure)
            return None
        if self.out.pending is None:
            self.out.pending = (decision.reason, self.out.phase())
        why = self._cannot_continue(target, failure)
        if why is not None:
            # The next target answers afresh, if the client can drop what it holds.
            if not self.out.can_reset:
                self.out.error("stream_diverged", why, retryable=True)
                return None
            self.out.drop_answer()
        return decision

    def _cannot_continue(self, target: Target, failure: Failure) -> str | None:
        """Why what the client holds of the answer cannot be continued; None: it can."""
        if failure.kind is FailureKind.ANSWER_TOO_LARGE and self.out.delivered:
            # The continuation request would carry all of it.
            return (
                f"{target.provider}'s answer grew past its limit ({failure.message}) and "
                "was ended; an answer that long cannot be continued, so the partial "
                "answer is incomplete. Retry the request."
            )
        if failure.kind is FailureKind.INVALID_JSON:
            return (
                f"The answer broke off, and joined to {target.provider}'s continuation it is "
                f"not the JSON the request asks for ({failure.message}); the partial answer "
                "is incomplete. Retry the request."
            )
        if self.out.tool_parts_sent:
            return (
                f"{target.provider} broke off inside a tool call that was streaming live "
                '(the route has tool_streaming = "live"), which cannot be continued; the '
                "partial tool call is incomplete. Retry the request."
            )
        return None

    async def _queue_for_recovery(self, picked: PickResult) -> PickResult | None:
        """Wait (bounded) for a target of the route to recover; None: the stream ended."""
        route = self._route
        queue = self._ctx.queues[route.name]
        client = self._client
        refusal = queue.enter_nowait(client)
        if refusal == "queue_full":
            self.out.error(
                "overloaded",
                f"Route {route.name!r} has no usable provider and {queue.size} "
                "requests are already waiting for one; retry later.",
                retryable=True,
            )
            return None
        if refusal == "share_full":
            self.out.error(
                "overloaded",
                f"Route {route.name!r} has no usable provider and client {client.name!r} "
                f"already has its share of the outage queue waiting for one "
                f"({queue.share(client)} of its {queue.size} places, by priority); "
                "retry later.",
                retryable=True,
            )
            return None
        try:
            with trio.move_on_after(route.queue_timeout):
                while isinstance(picked, Unavailable) and picked.reason == "none_usable":
                    await self._ctx.board.wait_changed()
                    picked = await self._ctx.router.pick(route.name)
        finally:
            queue.leave(client)
        return picked

    # --- one attempt ---------------------------------------------------------------------------

    async def _attempt(
        self, target: Target, claim: Claim | None = None, *, prefill_rejected: bool = False
    ) -> AttemptOutcome:
        """Run one attempt on ``target``; it reports to health itself as it ends."""
        attempt = Attempt(
            self._ctx, target, messages=self._messages, params=self._params,
            delivered="".join(self.out.delivered), prefill_rejected=prefill_rejected,
            sink=self.out, claim=claim, client=self._client,
            tool_streaming=self._route.tool_streaming,
        )  # fmt: skip
        try:
            outcome = await attempt.run()
        finally:
            assert attempt.statistics is not None
            self._attempts.append(attempt.statistics)
        if outcome.kind == "client_too_slow":
            limit = self._ctx.provider_configs[target.provider].max_stream_duration
            self.out.error(
                "client_too_slow",
                f"The answer waited {attempt.client_wait:.0f} s of its {limit:g} s "
                f"(max_stream_duration of {target.provider}) for this client to read it; "
                "read the stream faster, or ask for a shorter answer.",
                retryable=False,
            )
        return outcome

    def _reject(self, target: Target, failure: Failure) -> None:
        self.out.error(
            "upstream_rejected",
            f"{target.provider} rejected the request ({failure.status}"
            f"{', ' + failure.code if failure.code else ''}): {failure.message}",
            retryable=False, status=failure.status, upstream_code=failure.code,
        )  # fmt: skip

    def _exhausted(
        self,
        failures: list[str],
        why: str,
        snapshots: Mapping[str, HealthSnapshot | None] | None = None,
    ) -> None:
        detail = "; ".join(failures) if failures else "no attempt could be made"
        states = ""
        if snapshots:
            now = trio.current_time()
            states = (
                " Provider states: "
                + ", ".join(_describe_state(name, snap, now) for name, snap in snapshots.items())
                + "."
            )
        self.out.error(
            "all_providers_unavailable",
            f"No provider of route {self._route.name!r} could answer ({why}): {detail}.{states}",
            retryable=True,
        )

    def _record_end(self) -> None:
        terminal = self.log.terminal
        provider = self.out.serving.provider if self.out.serving else "none"
        model = self.out.serving.model if self.out.serving else "none"
        outcome = "done" if isinstance(terminal, Done) else getattr(terminal, "code", "unknown")
        duration = trio.current_time() - self.out.started_at
        attrs_ = {"route": self._route.name, "provider": provider, "model": model}
        if self._client.name is not None:
            attrs_["client"] = self._client.name  # with client keys: whose stream, by name
        tel = self._ctx.telemetry
        tel.requests.add(1, {**attrs_, "outcome": outcome})
        tel.request_duration.record(duration, attrs_)
        ttft = (
            None
            if self.out.first_output_at is None
            else self.out.first_output_at - self.out.started_at
        )
        client = "" if self._client.name is None else f" client={self._client.name}"
        log.info(
            "stream %s finished:%s route=%s providers=%s outcome=%s ttft=%s duration=%.3f "
            "deltas=%d",
            short_id(self.id), client, self._route.name,
            ",".join(a.provider for a in self._attempts) or "-", outcome,
            "-" if ttft is None else f"{ttft:.3f}", duration, self.out.delivered_deltas,
        )  # fmt: skip


def _describe_state(name: str, snapshot: HealthSnapshot | None, now: float) -> str:
    if snapshot is None:
        return f"{name} unknown"
    text = f"{name} {snapshot.status}"
    if snapshot.next_try_at is not None:
        text += f" (next try in {max(0.0, snapshot.next_try_at - now):.1f} s)"
    return text


def _closed(snapshot: HealthSnapshot | None) -> bool:
    """Whether a provider's breaker is closed (it takes all traffic), as far as is known."""
    return snapshot is None or snapshot.traffic == "all"


def _unavailable_sentence(result: Unavailable) -> str:
    sentence = {
        "exhausted": "every target was tried",
        "none_usable": "no target is taking traffic",
        "retry_budget": "the route's retry budget is spent",
    }.get(result.reason, result.reason)
    return f"{sentence}: {result.detail}" if result.detail else sentence
