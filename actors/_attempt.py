"""One upstream attempt of a stream: a pool slot, the provider's events, deadlines, the guard.

``Attempt.run`` streams from one target until it finishes or fails and returns an
``AttemptOutcome``; text reaches the client through the ``StreamSink`` (the session), after the
splice guard when the client already holds text. The attempt always leaves its pool slot and
closes its upstream request, whatever ends it, and tells health what it was: once, as it
ends, through ``policy.report_for``. As it ends it also records the OpenTelemetry GenAI
metrics of its upstream request: its duration, and the tokens its provider reported.

Three bounds keep a provider or a client from taking Baton's memory: the answer may not pass
the provider's ``max_answer_bytes`` nor the attempt its ``max_stream_duration`` (both end the
attempt as the provider's fault), and while the client's unread backlog is full the attempt
reads nothing more from its provider (``StreamLog.wait_for_room``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn, Protocol

import attrs
import trio

from ._config import Target
from ._context import SessionContext
from ._errors import Failure, FailureKind, UpstreamError
from ._features import answer_format
from ._messages import (
    Finish,
    FunctionCall,
    Malformed,
    Message,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    UpstreamRequest,
    Usage,
    UsageReport,
)
from ._pool import PoolTimeout
from ._streamlog import StreamLog
from ._tools import ToolCallBuffer
from ._vocab import AttemptEnd, ContinuationForm, ToolStreaming
from .policy._continuation import continuation_form, continuation_request
from .policy._failover import reason_code
from .policy._fair import ANONYMOUS, ClientTag
from .policy._report import report_for
from .policy._splice import Diverged, Forward, Hold, SpliceGuard

MAX_MALFORMED = 3  # more undecodable events than this in one attempt fail it
FINISH_GRACE = 1.0  # seconds to wait after a finish reason for the usage that may follow


@attrs.frozen(kw_only=True)
class AttemptStatistics:
    """One upstream attempt of a stream, as it ended."""

    provider: str
    model: str
    form: ContinuationForm
    outcome: AttemptEnd
    reason: str | None
    ttft: float | None
    deltas: int
    malformed: int
    usage: Usage | None


@attrs.frozen(kw_only=True)
class AttemptOutcome:
    """How an attempt ended, for the session's next decision.

    ``done``: the answer is complete; ``diverged``: the stream ended here (the continuation
    could not be joined and the client cannot reset); ``failed``: ``failure`` says why;
    ``pool_full``: no slot freed in time; ``lost``: a hedge race was won by the other attempt
    (or the hedge never had to start). A cancelled attempt returns nothing: it raises.
    """

    kind: AttemptEnd
    failure: Failure | None = None
    produced_text: bool = False
    form: ContinuationForm = "fresh"
    started: bool = True  # false for a hedge that was never needed


class StreamSink(Protocol):
    """Where an attempt's text goes: the session that owns the stream.

    ``log`` is the stream's log, whose backlog the attempt waits on (never writes to).
    """

    log: StreamLog

    def deliver(
        self, target: Target, text: str, logprobs: tuple[Any, ...] | None = None
    ) -> None: ...

    def reason(self, target: Target, text: str) -> None: ...

    def tool_part(self, target: Target, part: ToolCallDelta) -> None: ...

    def tool_calls(self, target: Target, calls: Sequence[tuple[int, FunctionCall]]) -> None: ...

    def diverged(self, target: Target, text: str) -> bool: ...

    def answer_problem(self) -> str | None: ...

    def done(self, target: Target, finish: Finish, usage: Usage | None) -> None: ...


class ClientTooSlow(Exception):
    """The attempt outlived ``max_stream_duration`` mostly waiting for its client to read."""

    def __init__(self, waited: float) -> None:
        super().__init__(f"waited {waited:.1f} s for the client to read")
        self.waited = waited


def _too_large(limit: int) -> UpstreamError:
    message = f"the answer passed {limit} bytes (max_answer_bytes)"
    return UpstreamError(Failure(kind=FailureKind.ANSWER_TOO_LARGE, message=message))


class Attempt:
    """One attempt on one target; ``run`` it once."""

    def __init__(
        self,
        ctx: SessionContext,
        target: Target,
        *,
        messages: Sequence[Message],
        params: Mapping[str, Any],
        delivered: str,
        prefill_rejected: bool,
        sink: StreamSink,
        claim: Callable[[], bool] | None = None,
        client: ClientTag = ANONYMOUS,
        tool_streaming: ToolStreaming = "atomic",
    ) -> None:
        self._ctx = ctx
        self._client = client
        self._target = target
        self._cfg = ctx.provider_configs[target.provider]
        self._health = ctx.health[target.provider]
        self._sink = sink
        self._claim = claim
        self.form = continuation_form(
            self._cfg, delivered=delivered, prefill_rejected=prefill_rejected,
            json_answer=answer_format(params) != "text",
        )  # fmt: skip
        # Atomic tool calls are held here until the response finishes; live ones pass on.
        self._tools = ToolCallBuffer() if tool_streaming == "atomic" else None
        original = UpstreamRequest(model=target.model, messages=tuple(messages), params=params)
        self._request = continuation_request(
            original, delivered=delivered, form=self.form, instruct_prompt=self._cfg.instruct_prompt
        )
        self._guard = SpliceGuard(delivered, replay=self.form == "replay") if delivered else None
        # The answer's UTF-8 bytes before this attempt's own: the text it continues.
        self._continued_bytes = len(delivered.encode())
        self.produced = False
        self.ttft: float | None = None
        self.deltas = 0
        self.malformed = 0
        self.usage: Usage | None = None
        self.response_model: str | None = None
        self.statistics: AttemptStatistics | None = None
        self._began: float | None = None  # when the upstream request was made
        self._last_progress: float | None = None
        self._finished_at: float | None = None
        self._waiting_since: float | None = None  # while it waits for the client to read
        self.client_wait = 0.0  # seconds it waited for the client to read (finished waits)
        self._resumed = trio.Event()

    def _end(self, outcome: AttemptEnd, reason: str | None, failure: Failure | None = None) -> None:
        """Record how the attempt ended and tell its provider's health (once)."""
        self.statistics = AttemptStatistics(
            provider=self._target.provider, model=self._target.model, form=self.form,
            outcome=outcome, reason=reason, ttft=self.ttft, deltas=self.deltas,
            malformed=self.malformed, usage=self.usage,
        )  # fmt: skip
        self._health.report_nowait(report_for(outcome, failure, ttft=self.ttft))
        self._record_operation(outcome, reason)

    def _record_operation(self, outcome: AttemptEnd, reason: str | None) -> None:
        """Record the GenAI semantic conventions' metrics of the upstream request, if made."""
        if self._began is None:
            return  # no pool slot, or cancelled before: the provider was never asked
        target = self._target
        labels: dict[str, str] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": self._cfg.kind,
            "gen_ai.request.model": target.model,
            "provider": target.provider,
        }
        if self.response_model is not None:
            labels["gen_ai.response.model"] = self.response_model
        telemetry = self._ctx.telemetry
        duration = trio.current_time() - self._began
        if outcome == "done":
            telemetry.operation_duration.record(duration, labels)
        else:
            telemetry.operation_duration.record(
                duration, {**labels, "error.type": reason or outcome}
            )
        usage = self.usage
        if usage is not None:
            telemetry.token_usage.record(
                usage.prompt_tokens, {**labels, "gen_ai.token.type": "input"}
            )
            telemetry.token_usage.record(
                usage.completion_tokens, {**labels, "gen_ai.token.type": "output"}
            )

    async def run(self) -> AttemptOutcome:
        """Stream the attempt to its end; never raises for upstream failures."""
        target, cfg, ctx = self._target, self._cfg, self._ctx
        try:
            slot = ctx.pool.slot(target.provider, timeout=cfg.pool_timeout, client=self._client)
            async with slot as waited:
                ctx.telemetry.pool_wait.record(waited, {"provider": target.provider})
                outcome = await self._stream()
        except PoolTimeout:
            self._end("pool_full", "pool_full")
            return AttemptOutcome(kind="pool_full")
        except UpstreamError as exc:
            reason = reason_code(exc.failure, midstream=self.produced)
            self._end("failed", reason, exc.failure)
            return AttemptOutcome(
                kind="failed", failure=exc.failure, produced_text=self.produced, form=self.form
            )
        except ClientTooSlow:
            self._end("client_too_slow", "client_too_slow")
            return AttemptOutcome(
                kind="client_too_slow", produced_text=self.produced, form=self.form
            )
        finally:
            if self.statistics is None:
                # Cancelled (the client left, or shutdown): not the provider's fault.
                self._end("cancelled", "cancelled")
        return outcome

    async def _stream(self) -> AttemptOutcome:
        cfg = self._cfg
        began = self._began = trio.current_time()
        finish: Finish | None = None
        broke: UpstreamError | None = None
        backlog = self._sink.log
        # Bytes the answer may still grow by: a local, counted down per text, is cheapest.
        room = cfg.max_answer_bytes - self._continued_bytes
        with (
            trio.CancelScope(deadline=began + cfg.max_stream_duration) as bounded,
            trio.CancelScope() as timer,
        ):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watchdog, timer, began)
                try:
                    provider = self._ctx.providers[self._target.provider]
                    async with provider.stream(
                        self._request, read_delay=self._ctx.load.read_delay
                    ) as events:
                        async for event in events:
                            kind = type(event)
                            if kind is TextDelta:
                                now = trio.current_time()
                                self._last_progress = now
                                if not self.produced and not self._first_output(now, began):
                                    return AttemptOutcome(kind="lost")
                                self.deltas += 1
                                text: str = event.text  # type: ignore[union-attr]
                                # isascii() is O(1): encoding is only for the rare other text.
                                room -= len(text) if text.isascii() else len(text.encode())
                                if room < 0:
                                    raise _too_large(cfg.max_answer_bytes)
                                if not self._take(text, event.logprobs):  # type: ignore[union-attr]
                                    return AttemptOutcome(kind="diverged")
                                if backlog.full:
                                    await self._wait_for_client(backlog)
                            elif kind is ReasoningDelta or kind is ToolCallDelta:
                                assert isinstance(event, (ReasoningDelta, ToolCallDelta))
                                now = trio.current_time()
                                self._last_progress = now
                                if not self.produced and not self._first_output(now, began):
                                    return AttemptOutcome(kind="lost")
                                piece = event.text if kind is ReasoningDelta else event.arguments  # type: ignore[union-attr]
                                room -= len(piece.encode())
                                if room < 0:
                                    raise _too_large(cfg.max_answer_bytes)
                                self._other_output(event)
                                if backlog.full:
                                    await self._wait_for_client(backlog)
                            elif kind is Finish:
                                assert isinstance(event, Finish)
                                finish = event
                                self.response_model = event.model
                                self.usage = event.usage or self.usage
                                if self.usage is not None:
                                    break
                                self._finished_at = trio.current_time()
                            elif kind is UsageReport:
                                assert isinstance(event, UsageReport)
                                self.usage = event.usage
                                if finish is not None:
                                    break
                            elif kind is Malformed:
                                self._count_malformed()
                except UpstreamError as exc:
                    broke = exc  # raised below, outside the nursery, so it stays a plain error
                finally:
                    nursery.cancel_scope.cancel()
        if broke is not None:
            raise broke
        if finish is None:
            if bounded.cancelled_caught:
                self._too_long()
            if timer.cancelled_caught:
                limit = cfg.idle_timeout if self.produced else cfg.first_token_timeout
                what = "no text for" if self.produced else "no first token within"
                raise UpstreamError(
                    Failure(kind=FailureKind.TIMEOUT, message=f"{what} {limit:g} s")
                )
            raise UpstreamError(
                Failure(kind=FailureKind.EOF, message="the stream ended without a finish reason")
            )
        if self._guard is not None and not self._apply(self._guard.finish()):
            return AttemptOutcome(kind="diverged")
        calls = self._tools.complete() if self._tools is not None else ()
        if self._continued_bytes:
            problem = self._sink.answer_problem()
            if problem is not None:
                raise UpstreamError(Failure(kind=FailureKind.INVALID_JSON, message=problem))
        if calls:
            self._sink.tool_calls(self._target, calls)
        self._end("done", None)
        self._sink.done(self._target, finish, self.usage)
        return AttemptOutcome(kind="done")

    def _first_output(self, now: float, began: float) -> bool:
        """Mark the attempt's first output (text, reasoning or a tool call); False: it lost
        its hedge race and must end."""
        if self._claim is not None and not self._claim():
            self._end("lost", "hedge")
            return False
        self.produced = True
        self.ttft = now - began
        return True

    def _other_output(self, event: ReasoningDelta | ToolCallDelta) -> None:
        """Reasoning goes to the client at once; a tool call fragment is held (atomic) or
        passed on (live)."""
        if isinstance(event, ReasoningDelta):
            if event.text:
                self._sink.reason(self._target, event.text)
        elif self._tools is not None:
            self._tools.add(event)
        else:
            self._sink.tool_part(self._target, event)

    async def _wait_for_client(self, backlog: StreamLog) -> None:
        """Read nothing more from the provider until the client has taken its backlog.

        The idle watch pauses meanwhile, and its clock starts again when reading resumes: the
        provider is not silent, Baton is not asking. ``max_stream_duration`` still applies.
        """
        since = self._waiting_since = trio.current_time()
        self._resumed = trio.Event()
        try:
            await backlog.wait_for_room()
        finally:
            now = trio.current_time()
            self.client_wait += now - since
            self._waiting_since = None
            self._last_progress = now
            self._resumed.set()

    def _too_long(self) -> NoReturn:
        """Raise for an attempt that outlived ``max_stream_duration``: whose fault was it?

        The provider's (``UpstreamError``, ``stream_too_long``) unless the attempt spent more
        than half of that time waiting for the client to read (``ClientTooSlow``).
        """
        limit = self._cfg.max_stream_duration
        if self.client_wait * 2 > limit:
            raise ClientTooSlow(self.client_wait)
        message = f"the answer took longer than {limit:g} s (max_stream_duration)"
        raise UpstreamError(Failure(kind=FailureKind.STREAM_TOO_LONG, message=message))

    async def _watchdog(self, timer: trio.CancelScope, began: float) -> None:
        """Cancel the attempt when it stays silent too long.

        One task per attempt instead of moving a deadline per token: the hot path only stamps
        the time of its last text. Silence is measured from the start until the first token
        (``first_token_timeout``), then between texts (``idle_timeout``; keep-alives never reach
        here), and after a finish reason only for ``FINISH_GRACE``. It is not measured while the
        attempt waits for the client to read.
        """
        cfg = self._cfg
        while True:
            if self._waiting_since is not None:
                await self._resumed.wait()
                continue
            if self._finished_at is not None:
                expires = self._finished_at + min(cfg.idle_timeout, FINISH_GRACE)
            elif self._last_progress is None:
                expires = began + cfg.first_token_timeout
            else:
                expires = self._last_progress + cfg.idle_timeout
            if trio.current_time() >= expires:
                timer.cancel()
                return
            await trio.sleep_until(expires)

    def _take(self, text: str, logprobs: tuple[Any, ...] | None = None) -> bool:
        """Pass text through the splice guard to the client; False: the stream ended.

        The log probabilities of text the guard held back are not kept: the guard may trim it.
        """
        guard = self._guard
        if guard is None:
            self._sink.deliver(self._target, text, logprobs)
            return True
        step = guard.feed(text)
        if type(step) is Hold:
            return True
        self._guard = None  # decided: the rest passes straight through
        return self._apply(step)

    def _apply(self, step: Hold | Forward | Diverged) -> bool:
        if isinstance(step, Diverged):
            if not self._sink.diverged(self._target, step.text):
                self._end("diverged", "stream_diverged")
                return False
        elif isinstance(step, Forward) and step.text:
            self._sink.deliver(self._target, step.text)
        return True

    def _count_malformed(self) -> None:
        self.malformed += 1
        self._ctx.telemetry.malformed_events.add(1, {"provider": self._target.provider})
        if self.malformed > MAX_MALFORMED:
            message = f"{self.malformed} undecodable events"
            raise UpstreamError(Failure(kind=FailureKind.MALFORMED, message=message))
