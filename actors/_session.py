"""StreamSession: one client stream, from the first pick to exactly one terminal event.

The session asks the router for a target, takes a pool slot, streams from the provider through
the splice guard into the stream's numbered log, and on a failure decides (``policy``) whether
to retry the target, fail over, or give up. It is temporary: it ends with its stream, and
whatever ends it (the answer, an error, the client cancelling, shutdown, a bug) the log gets
exactly one terminal event.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import attrs
import trio

from ._attempt import Attempt, AttemptOutcome, AttemptStatistics
from ._config import RouteConfig, Target
from ._context import SessionContext
from ._errors import Failure
from ._health import HealthActor, Report
from ._messages import (
    Done,
    Failover,
    Finish,
    Message,
    Started,
    StreamError,
    Usage,
)  # fmt: skip
from ._router import Picked, PickResult, Unavailable
from ._streamlog import StreamLog
from ._vocab import StreamEnd, StreamErrorCode
from .policy._failover import FailOver, Reject, Retry, decide, health_verdict
from .policy._health_view import HealthSnapshot

log = logging.getLogger(__name__)


@attrs.frozen(kw_only=True)
class StreamStatistics:
    stream: str
    route: str
    attempts: tuple[AttemptStatistics, ...]
    failovers: int
    outcome: StreamEnd | None  # None while the stream runs


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
    ) -> None:
        self.log = stream_log
        self.id = stream_log.stream_id
        self._route = route
        self._messages = tuple(messages)
        self._params = dict(params)
        self._ref = ref
        self._can_reset = can_reset
        self._transport = transport
        self._ctx = context
        self.cancel_scope = trio.CancelScope()
        self._shutting_down = False
        self._delivered: list[str] = []
        self._serving: Target | None = None
        self._pending: tuple[str, Literal["prestream", "midstream"]] | None = None
        self._attempts: list[AttemptStatistics] = []
        self._failovers = 0
        self._delivered_deltas = 0
        self._started_at = 0.0
        self._first_text_at: float | None = None

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
            failovers=self._failovers, outcome=outcome,
        )  # fmt: skip

    # --- the stream's life -------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the stream. Cancelling ``cancel_scope`` is the client cancelling it."""
        self._started_at = trio.current_time()
        telemetry = self._ctx.telemetry
        telemetry.active_streams.add(1, {"transport": self._transport})
        try:
            with self.cancel_scope:
                await self._serve()
            if self.cancel_scope.cancelled_caught and self._shutting_down:
                self._error(
                    "shutting_down", "Baton is shutting down; please retry.", retryable=True
                )
            elif self.cancel_scope.cancelled_caught:
                self._error("cancelled", "The client cancelled the stream.", retryable=False)
        except Exception:
            log.exception("stream %s crashed", self.id)
            self._error(
                "internal_error",
                "Baton failed while serving this stream; please retry.",
                retryable=True,
            )
        finally:
            # Shutdown cancels us from outside: the client still gets its one terminal event.
            self._error("shutting_down", "Baton is shutting down; please retry.", retryable=True)
            telemetry.active_streams.add(-1, {"transport": self._transport})
            self._record_end()

    async def _serve(self) -> None:
        route = self._route
        exclude: set[int] = set()
        failures: list[str] = []
        starts: dict[int, list[float]] = {}
        prefill_rejected: set[int] = set()
        attempts = 0
        ctx = self._ctx
        while True:
            if attempts >= route.max_attempts:
                return self._exhausted(failures, f"gave up after {attempts} attempts")
            picked: PickResult | None
            picked = await ctx.router.pick(
                route.name, exclude=frozenset(exclude), retry=attempts > 0
            )
            if (
                isinstance(picked, Unavailable)
                and picked.reason == "none_usable"
                and attempts == 0
                and not exclude
            ):
                picked = await self._queue_for_recovery(picked)
                if picked is None:
                    return
            if isinstance(picked, Unavailable):
                return self._exhausted(failures, _unavailable_sentence(picked), picked.snapshots)
            assert isinstance(picked, Picked)
            index, target = picked.index, picked.target
            health = ctx.health[target.provider]
            if not await health.admit():
                exclude.add(index)
                failures.append(f"{target.provider} ({target.model}): not taking traffic now")
                continue
            if self._serving is None:
                self._serving = target
                self.log.append(
                    Started,
                    ref=self._ref,
                    route=route.name,
                    provider=target.provider,
                    model=target.model,
                )
            hedge = await self._hedge_target(index, attempts)
            while True:
                attempts += 1
                starts.setdefault(index, []).append(trio.current_time())
                if hedge is not None:
                    outcome, hedge_outcome = await self._hedged(
                        target, hedge.target, self._hedge_delay(target)
                    )
                    if hedge_outcome.started:
                        attempts += 1
                        starts.setdefault(hedge.index, []).append(trio.current_time())
                    else:
                        # Never needed: give back the admission (a half-open trial place).
                        ctx.health[hedge.target.provider].report_nowait(
                            Report(outcome="neutral", admitted=True)
                        )
                    if hedge_outcome.kind in ("done", "diverged"):
                        if outcome.kind == "failed":
                            assert outcome.failure is not None
                            self._report_failure(health, outcome.failure)
                        return
                    if hedge_outcome.kind == "failed":
                        # The hedge failed (before or after winning): it is out for this request.
                        exclude.add(hedge.index)
                        if (
                            self._settle(hedge.target, hedge_outcome, starts[hedge.index], failures)
                            is None
                        ):
                            return
                    hedge = None
                else:
                    outcome = await self._attempt(
                        target, prefill_rejected=index in prefill_rejected
                    )
                if outcome.kind in ("done", "diverged"):
                    return
                if outcome.kind == "lost":
                    # The hedge won and then failed after its first token; the primary is out.
                    exclude.add(index)
                    break
                if outcome.kind == "pool_full":
                    exclude.add(index)
                    failures.append(f"{target.provider} ({target.model}): all upstream slots busy")
                    self._pending = self._pending or ("pool_full", self._phase())
                    break
                decision = self._settle(target, outcome, starts[index], failures)
                if decision is None:
                    return
                if isinstance(decision, Retry) and attempts < route.max_attempts:
                    if decision.instruct:
                        prefill_rejected.add(index)
                    await trio.sleep(decision.delay)
                    continue
                exclude.add(index)
                break

    def _settle(
        self,
        target: Target,
        outcome: AttemptOutcome,
        target_starts: list[float],
        failures: list[str],
    ) -> Retry | FailOver | None:
        """Report a failed attempt to health and decide what follows; None: the stream ended."""
        ctx = self._ctx
        failure = outcome.failure
        assert failure is not None
        decision = decide(
            failure, produced_text=outcome.produced_text, midstream=bool(self._delivered),
            was_prefill=outcome.form == "prefill", previous_starts=tuple(target_starts),
            config=ctx.provider_configs[target.provider], now=trio.current_time(),
            jitter=ctx.random.random(),
        )  # fmt: skip
        self._report_failure(ctx.health[target.provider], failure)
        failures.append(f"{target.provider} ({target.model}): {failure.describe()}")
        log.warning(
            "stream %s: attempt on %s failed (%s); %s",
            self.id, target.provider, failure.describe(), type(decision).__name__,
        )  # fmt: skip
        if isinstance(decision, Reject):
            self._reject(target, failure)
            return None
        if self._pending is None:
            self._pending = (decision.reason, self._phase())
        return decision

    async def _queue_for_recovery(self, picked: PickResult) -> PickResult | None:
        """Wait (bounded) for a target of the route to recover; None: the stream ended."""
        route = self._route
        limiter = self._ctx.queues[route.name]
        try:
            limiter.acquire_on_behalf_of_nowait(self)
        except trio.WouldBlock:
            self._error(
                "overloaded",
                f"Route {route.name!r} has no usable provider and {limiter.total_tokens:g} requests "
                "are already waiting for one; retry later.",
                retryable=True,
            )
            return None
        try:
            with trio.move_on_after(route.queue_timeout):
                while isinstance(picked, Unavailable) and picked.reason == "none_usable":
                    await self._ctx.board.wait_changed()
                    picked = await self._ctx.router.pick(route.name)
        finally:
            limiter.release_on_behalf_of(self)
        return picked

    async def _hedge_target(self, index: int, attempts: int) -> Picked | None:
        """The second target to race the first one, when the route hedges the first attempt."""
        route = self._route
        if route.hedge_after is None or attempts > 0 or self._delivered or route.max_attempts < 2:
            return None  # a hedge needs an attempt of its own to spare
        picked = await self._ctx.router.pick(
            self._route.name, exclude=frozenset({index}), hedge=True
        )
        if not isinstance(picked, Picked):
            return None
        if not await self._ctx.health[picked.target.provider].admit():
            return None
        return picked

    def _hedge_delay(self, primary: Target) -> float:
        hedge_after = self._route.hedge_after
        if hedge_after == "auto":
            snapshot = self._ctx.board.get(primary.provider)
            p95 = snapshot.ttft_p95 if snapshot is not None else None
            return (
                p95
                if p95 is not None
                else self._ctx.provider_configs[primary.provider].first_token_timeout / 2
            )
        assert isinstance(hedge_after, float)
        return hedge_after

    async def _hedged(
        self, primary: Target, secondary: Target, delay: float
    ) -> tuple[AttemptOutcome, AttemptOutcome]:
        """Race ``secondary`` against ``primary`` if the primary has no first token by ``delay``.

        The first attempt to produce text wins the stream; the other is cancelled at once and
        comes back as ``lost``. A primary that fails before the delay starts the hedge at once.
        """
        results = [AttemptOutcome(kind="lost"), AttemptOutcome(kind="lost", started=False)]
        scopes = [trio.CancelScope(), trio.CancelScope()]
        winner: list[int] = []
        primary_failed = trio.Event()

        def claim(which: int) -> bool:
            if not winner:
                winner.append(which)
                scopes[1 - which].cancel()
                if which == 1:
                    self._pending = ("hedge", "prestream")
            return winner[0] == which

        async def run(which: int, target: Target) -> None:
            with scopes[which]:
                if which == 1:
                    with trio.move_on_after(delay):
                        await primary_failed.wait()
                    if winner:
                        return
                    results[1] = AttemptOutcome(kind="lost")  # started: it costs an attempt
                results[which] = await self._attempt(
                    target, prefill_rejected=False, claim=lambda: claim(which)
                )
            if which == 0 and results[0].kind != "done":
                primary_failed.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, 0, primary)
            nursery.start_soon(run, 1, secondary)
        return results[0], results[1]

    def _phase(self) -> Literal["prestream", "midstream"]:
        return "midstream" if self._delivered else "prestream"

    # --- one attempt ---------------------------------------------------------------------------

    async def _attempt(
        self, target: Target, *, prefill_rejected: bool, claim: Callable[[], bool] | None = None
    ) -> AttemptOutcome:
        attempt = Attempt(
            self._ctx, target, messages=self._messages, params=self._params,
            delivered="".join(self._delivered), prefill_rejected=prefill_rejected,
            sink=self, claim=claim,
        )  # fmt: skip
        try:
            return await attempt.run()
        finally:
            assert attempt.statistics is not None
            self._attempts.append(attempt.statistics)

    def _report_failure(self, health: HealthActor, failure: Failure) -> None:
        verdict = health_verdict(failure)
        if verdict.rate_limited:
            health.report_nowait(
                Report(outcome="rate_limited", retry_after=verdict.rate_limited_for)
            )
        elif verdict.counts:
            health.report_nowait(Report(outcome="failure", trip=verdict.trip))
        else:
            health.report_nowait(Report(outcome="neutral", admitted=True))

    # --- what the client sees ------------------------------------------------------------------

    def _announce(self, target: Target, mode: Literal["continue", "reset"]) -> None:
        """Emit the pending failover event, once, before the new target's first text."""
        pending = self._pending
        self._pending = None
        serving = self._serving
        if pending is None or serving is None:
            return
        reason, phase = pending
        if target == serving and phase == "prestream" and mode == "continue":
            return  # a retry of the same target before any text: invisible to the client
        self._failovers += 1
        self.log.append(
            Failover, from_provider=serving.provider, to_provider=target.provider,
            to_model=target.model, reason=reason, mode=mode, phase=phase,
        )  # fmt: skip
        self._ctx.telemetry.failovers.add(
            1, {"route": self._route.name, "from": serving.provider, "to": target.provider,
                "phase": phase, "reason": reason},
        )  # fmt: skip
        log.warning(
            "stream %s: failover %s -> %s (%s, %s, %s)",
            self.id, serving.provider, target.provider, reason, phase, mode,
        )  # fmt: skip
        self._serving = target

    def deliver(self, target: Target, text: str) -> None:
        if self._pending is not None:
            self._announce(target, "continue")
        if self._first_text_at is None:
            self._first_text_at = trio.current_time()
            self._ctx.telemetry.ttft.record(
                self._first_text_at - self._started_at,
                {"route": self._route.name, "provider": target.provider},
            )
        self._delivered.append(text)
        self._delivered_deltas += 1
        self.log.append_text(text)

    def diverged(self, target: Target, text: str) -> bool:
        """The continuation cannot be joined; reset the client's text if it can take that."""
        if not self._can_reset:
            self._error(
                "stream_diverged",
                f"The answer broke off and {target.provider} could not continue it exactly; "
                "the partial answer is incomplete. Retry the request.",
                retryable=True,
            )
            return False
        if self._pending is None:
            self._pending = ("stream_diverged", "midstream")
        self._announce(target, "reset")
        self._delivered.clear()
        self._delivered_deltas = 0
        if text:
            self._delivered.append(text)
            self._delivered_deltas += 1
            self.log.append_text(text)
        return True

    def done(self, target: Target, finish: Finish, usage: Usage | None) -> None:
        if self._pending is not None:
            self._announce(target, "continue")
        if self._failovers == 0 and usage is not None:
            final_usage = usage  # one target answered it all: its own count is exact
        else:
            # After a failover, completion tokens count only what reached the client (one
            # upstream delta ~ one token); prompt tokens are what the finishing target charged,
            # which includes the delivered text it was asked to continue. Every attempt's own
            # usage is in the stream's statistics.
            prompt = usage.prompt_tokens if usage is not None else 0
            final_usage = Usage(prompt_tokens=prompt, completion_tokens=self._delivered_deltas)
        self.log.append(
            Done, finish_reason=finish.reason, provider=target.provider,
            model=finish.model or target.model, usage=final_usage,
        )  # fmt: skip

    def _reject(self, target: Target, failure: Failure) -> None:
        self._error(
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
        self._error(
            "all_providers_unavailable",
            f"No provider of route {self._route.name!r} could answer ({why}): {detail}.{states}",
            retryable=True,
        )

    def _error(self, code: StreamErrorCode, message: str, *, retryable: bool, **extra: Any) -> None:
        self.log.append(StreamError, code=code, message=message, retryable=retryable, **extra)

    def _record_end(self) -> None:
        terminal = self.log.terminal
        provider = self._serving.provider if self._serving else "none"
        outcome = "done" if isinstance(terminal, Done) else getattr(terminal, "code", "unknown")
        duration = trio.current_time() - self._started_at
        attrs_ = {"route": self._route.name, "provider": provider}
        tel = self._ctx.telemetry
        tel.requests.add(1, {**attrs_, "outcome": outcome})
        tel.request_duration.record(duration, attrs_)
        ttft = None if self._first_text_at is None else self._first_text_at - self._started_at
        log.info(
            "stream %s finished: route=%s providers=%s outcome=%s ttft=%s duration=%.3f deltas=%d",
            self.id, self._route.name, ",".join(a.provider for a in self._attempts) or "-",
            outcome, "-" if ttft is None else f"{ttft:.3f}", duration, self._delivered_deltas,
        )  # fmt: skip


def _describe_state(name: str, snapshot: HealthSnapshot | None, now: float) -> str:
    if snapshot is None:
        return f"{name} unknown"
    text = f"{name} {snapshot.status}"
    if snapshot.next_try_at is not None:
        text += f" (next try in {max(0.0, snapshot.next_try_at - now):.1f} s)"
    return text


def _unavailable_sentence(result: Unavailable) -> str:
    return {
        "exhausted": "every target was tried",
        "none_usable": "no target is taking traffic",
        "retry_budget": "the route's retry budget is spent",
    }.get(result.reason, result.reason)
