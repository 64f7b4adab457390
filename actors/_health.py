"""HealthActor: one per provider, the owner of its circuit breaker.

Live traffic reports each attempt's outcome; a ticker probes the provider actively; the actor
applies both to the pure breaker (``policy.breaker``) and publishes every new state to the
``HealthBoard``, which the router reads. Each state change is logged once and told to the
``on_transition`` hook as a ``HealthTransition`` (the system counts them in a metric).

Which probe it sends is the ``ProbePlan`` (``policy.probe``): a provider whose models endpoint
does not exist is probed with a one-token chat completion from then on, logged once at
WARNING. A failed probe is logged at WARNING once per run of failures within a state (the
first after a good probe or a change of state), later ones of the run at DEBUG.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Mapping

import attrs
import trio

from ._config import HealthConfig
from ._errors import Failure, FailureKind, UpstreamError
from ._provider import ProbeKind, Provider
from ._vocab import ProbeVerdict, Traffic
from .policy import _breaker as breaker
from .policy import _probe as probes
from .policy._breaker import BreakerState, Status
from .policy._health_view import HealthSnapshot, HealthTransition
from .policy._report import Report

log = logging.getLogger(__name__)

TTFT_SAMPLES = 200  # recent times to first token kept for the p95 that "auto" hedging uses
TTFT_MIN_SAMPLES = 20  # fewer samples than this give no p95


class HealthBoard:
    """The latest health snapshot of every provider: written by health actors, read by others.

    Like an OTP named table: each provider's actor is the only writer of its entry; readers get
    immutable snapshots. ``changed`` wakes those waiting for any provider to change.
    """

    def __init__(self) -> None:
        self._snapshots: dict[str, HealthSnapshot] = {}
        self._changed = trio.Event()

    def publish(self, snapshot: HealthSnapshot) -> None:
        self._snapshots[snapshot.provider] = snapshot
        self._changed.set()
        self._changed = trio.Event()

    def get(self, provider: str) -> HealthSnapshot | None:
        return self._snapshots.get(provider)

    def all(self) -> Mapping[str, HealthSnapshot]:
        return dict(self._snapshots)

    async def wait_changed(self) -> None:
        """Wait until any provider publishes a new state."""
        await self._changed.wait()


@attrs.frozen(kw_only=True)
class Admit:
    reply: trio.MemorySendChannel[bool]


@attrs.frozen(kw_only=True)
class ProbeDone:
    """An active probe of ``kind`` finished; ``failure`` is None when it passed."""

    kind: ProbeKind
    failure: Failure | None = None


HealthMsg = Report | Admit | ProbeDone
TransitionHook = Callable[[HealthTransition], None]


class HealthActor:
    """Owns one provider's breaker; talk to it with ``report_nowait`` and ``admit``."""

    def __init__(
        self,
        provider: Provider,
        config: HealthConfig,
        board: HealthBoard,
        *,
        on_transition: TransitionHook | None = None,
    ) -> None:
        self.provider = provider
        self.name = provider.name
        self._config = config
        self._board = board
        self._on_transition = on_transition
        self._state = breaker.initial(config, 0.0)
        # Reports are tells from sessions that must never block on a busy actor.
        self._send, self._receive = trio.open_memory_channel[HealthMsg](math.inf)
        self._ttfts: deque[float] = deque(maxlen=TTFT_SAMPLES)
        self._ttft_at: float | None = None
        self._state_dirty = False
        self._plan = probes.ProbePlan(kind=config.probe_kind)
        self._last_probe: ProbeVerdict | None = None
        self._published_traffic: Traffic | None = None
        # The state (status, since) in which a failed probe was last logged at WARNING.
        self._probe_warned_in: tuple[Status, float] | None = None
        # A credential rejection the next change of state owes its cause to (see _set).
        self._credentials_rejected = False
        self._status_changed = trio.Event()

    def __repr__(self) -> str:
        return f"<HealthActor {self.name} {self._state.status}>"

    @property
    def state(self) -> BreakerState:
        return self._state

    @property
    def probe_kind(self) -> ProbeKind:
        """The kind of active probe the provider gets now (``chat`` after a fallback)."""
        return self._plan.kind

    def report_nowait(self, report: Report) -> None:
        """Tell the actor an attempt's outcome (never blocks)."""
        try:
            self._send.send_nowait(report)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.debug("health of %s is shut down; report dropped", self.name)

    async def admit(self) -> bool:
        """Ask whether one live request may go to the provider now.

        A closed breaker (healthy or degraded) admits everything without changing its state.
        When the actor is parked on an empty mailbox (no report queued, none handed to it yet),
        that is the answer it would give, so it is given here without the round trip (two task
        switches on every stream's way to its first token). Otherwise the actor decides, after
        the reports sent before this question.
        """
        mailbox = self._receive.statistics()
        if (
            self._state.status in ("healthy", "degraded")
            and mailbox.current_buffer_used == 0
            and mailbox.tasks_waiting_receive == 1
        ):
            await trio.lowlevel.checkpoint_if_cancelled()
            return True
        reply_send, reply_receive = trio.open_memory_channel[bool](1)
        try:
            self._send.send_nowait(Admit(reply=reply_send))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        with reply_receive:
            try:
                return await reply_receive.receive()
            except trio.EndOfChannel:
                return False

    def close(self) -> None:
        """End the actor in order: its loop sees the end of its mailbox."""
        self._send.close()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Apply reports and probe results until the mailbox closes; probe on a ticker."""
        now = trio.current_time()
        self._state = breaker.initial(self._config, now)
        self._publish(breaker.traffic(self._state, self._config, now))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._probe_loop)
            task_status.started()
            while True:
                wake_at = self._next_timer()
                with trio.move_on_at(wake_at):
                    try:
                        msg = await self._receive.receive()
                    except (trio.EndOfChannel, trio.ClosedResourceError):
                        break
                    self._apply(msg)
                self._set(breaker.advance(self._state, self._config, trio.current_time()))
            nursery.cancel_scope.cancel()

    def _next_timer(self) -> float:
        """When time alone will next change the breaker or its traffic (a rest period ending)."""
        state = self._state
        times = []
        if state.status == "unhealthy" and state.reopen_at is not None:
            times.append(state.reopen_at)
        if (
            state.status == "probing"
            and state.next_trial_at is not None
            and state.next_trial_at > trio.current_time()
        ):
            times.append(state.next_trial_at)
        if state.status == "rate_limited" and state.rate_limited_until is not None:
            times.append(state.rate_limited_until)
        if (
            state.status == "healthy"
            and state.cooldown != self._config.cooldown
            and state.healthy_since is not None
        ):
            times.append(state.healthy_since + self._config.stable_period)
        return min(times, default=math.inf)

    def _apply(self, msg: HealthMsg) -> None:
        now = trio.current_time()
        cfg = self._config
        state = self._state
        match msg:
            case Admit(reply=reply):
                with reply:  # closed even on a crash: the asker then hears "no"
                    state, ok = breaker.admit(state, cfg, now)
                    try:
                        reply.send_nowait(ok)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        if ok:
                            state = breaker.on_trial_abandoned(state, cfg, now)
            case Report(outcome="success", ttft=ttft):
                if ttft is not None:
                    self._ttfts.append(ttft)
                    self._ttft_at = now
                state = breaker.on_success(state, cfg, now, ttft=ttft)
                self._state_dirty = ttft is not None  # latency figures changed: publish
            case Report(outcome="failure", trip=trip):
                if trip:
                    log.error(
                        "provider %s rejected Baton's credentials; marked unhealthy until it "
                        "answers again (check its API key)", self.name,
                    )  # fmt: skip
                    self._credentials_rejected = True
                state = breaker.on_failure(state, cfg, now, trip=trip)
            case Report(outcome="rate_limited", retry_after=retry_after):
                state = breaker.on_rate_limited(state, cfg, now, retry_after=retry_after)
            case Report(outcome="abandoned" | "neutral", admitted=True):
                state = breaker.on_trial_abandoned(state, cfg, now)
            case Report():
                pass
            case ProbeDone(kind=kind, failure=failure):
                state = self._probed(state, kind, failure, now)
        self._set(state)

    def _probed(
        self, state: BreakerState, kind: ProbeKind, failure: Failure | None, now: float
    ) -> BreakerState:
        """Apply one probe's outcome: judge it, log what is news, and tell the breaker."""
        cfg = self._config
        judgement = probes.judge(self._plan, failure)  # one probe at a time: kind is the plan's
        self._plan = judgement.plan
        self._last_probe = judgement.verdict
        self._state_dirty = True
        if judgement.change == "to_chat":
            log.warning(
                "provider %s answered its models probe with HTTP %s (no such endpoint), which "
                "says nothing about its health; probing it with a one-token chat completion "
                "from now on", self.name, judgement.plan.missing_status,
            )  # fmt: skip
        elif judgement.change == "inconclusive":
            log.warning(
                "provider %s answered its chat probe with HTTP %s as well (no such endpoint or "
                "model, or no model to probe with); its probes cannot judge its health, so "
                "only live traffic does", self.name, failure.status if failure else None,
            )  # fmt: skip
        match judgement.verdict:
            case "ok":
                self._probe_warned_in = None  # a later failure starts a new run: warn again
                return breaker.on_probe(state, cfg, now, ok=True, kind=kind)
            case "inconclusive":
                return breaker.on_probe_inconclusive(state, cfg, now)
            case "failed":
                assert failure is not None
                after = breaker.on_probe(state, cfg, now, ok=False, kind=kind)
                self._log_probe_failure(state, after, kind, failure)
                return after

    def _log_probe_failure(
        self, before: BreakerState, after: BreakerState, kind: ProbeKind, failure: Failure
    ) -> None:
        """WARNING for the first failed probe in a state (after a good one); DEBUG for repeats."""
        if after.consecutive_failures > before.consecutive_failures:
            effect = f"{after.consecutive_failures} consecutive failures"
        elif after.status == "probing":
            effect = "still probing"
        else:
            effect = "not counted: live requests succeeded since the previous probe"
        where = (after.status, after.last_change)
        level = logging.DEBUG if where == self._probe_warned_in else logging.WARNING
        if level == logging.WARNING:
            self._probe_warned_in = where
        log.log(
            level, "provider %s failed its %s probe (%s): %s",
            self.name, kind, effect, failure.describe(),
        )  # fmt: skip

    def _set(self, state: BreakerState) -> None:
        old = self._state
        self._state = state
        if state.status != old.status:
            self._status_changed.set()
            log.warning(
                "provider %s is now %s (was %s; %d consecutive failures)",
                self.name, state.status, old.status, state.consecutive_failures,
            )  # fmt: skip
            # A rejection opens the breaker at once, or when a rate limit it came in ends.
            rejected, self._credentials_rejected = self._credentials_rejected, False
            if self._on_transition is not None:
                self._on_transition(
                    HealthTransition(
                        provider=self.name, old=old.status, new=state.status,
                        consecutive_failures=state.consecutive_failures,
                        at=trio.current_time(),
                        credentials_rejected=rejected and state.status == "unhealthy",
                    )
                )  # fmt: skip
        dirty, self._state_dirty = self._state_dirty, False
        traffic = breaker.traffic(state, self._config, trio.current_time())
        if (
            dirty
            or traffic != self._published_traffic
            or state.status != old.status
            or state.consecutive_failures != old.consecutive_failures
            or state.ttft_ewma != old.ttft_ewma
            or state.reopen_at != old.reopen_at
        ):
            self._publish(traffic)

    def _ttft_p95(self) -> float | None:
        if len(self._ttfts) < TTFT_MIN_SAMPLES:
            return None
        ordered = sorted(self._ttfts)
        return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]

    def _publish(self, traffic: Traffic) -> None:
        s = self._state
        self._published_traffic = traffic
        self._board.publish(
            HealthSnapshot(
                provider=self.name,
                status=s.status,
                consecutive_failures=s.consecutive_failures,
                next_try_at=s.next_try_at(),
                ttft_ewma=s.ttft_ewma,
                ttft_p95=self._ttft_p95(),
                ttft_at=self._ttft_at,
                since=s.last_change,
                traffic=traffic,
                probe=self._plan.kind,
                last_probe=self._last_probe,
            )
        )

    async def _probe_loop(self) -> None:
        cfg = self._config
        while True:
            unwell = self._state.status in ("unhealthy", "probing")
            self._status_changed = trio.Event()
            with trio.move_on_after(cfg.probe_interval_unhealthy if unwell else cfg.probe_interval):
                # A change of state restarts the ticker at the new state's interval, so a
                # provider that starts probing is probed within probe_interval_unhealthy.
                await self._status_changed.wait()
                continue
            # An open breaker rests for its cooldown (probes would only hammer it); a probing
            # one is probed unless a live trial is already testing it.
            if breaker.wants_probe(self._state, cfg, trio.current_time()):
                await self._probe_once()

    async def _probe_once(self) -> None:
        """Send one probe of the planned kind; its outcome goes to the mailbox as ``ProbeDone``.

        Marking the probe as out happens here, on the actor's own state: this task is part of
        the actor, and no other task runs between the check in ``_probe_loop`` and this mark.
        """
        kind = self._plan.kind
        failure: Failure | None = None
        self._set(breaker.on_probe_sent(self._state, self._config, trio.current_time()))
        with trio.move_on_after(self._config.probe_timeout) as scope:
            try:
                await self.provider.probe(kind)
            except UpstreamError as exc:
                failure = exc.failure
        if scope.cancelled_caught:
            timeout = self._config.probe_timeout
            failure = Failure(kind=FailureKind.TIMEOUT, message=f"no answer within {timeout:g} s")
        try:
            self._send.send_nowait(ProbeDone(kind=kind, failure=failure))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
