"""An in-memory provider that follows a fault schedule and records every attempt.

``FakeProvider`` implements ``actors.Provider`` without sockets: all of its waiting goes through
trio's clock, so under ``MockClock`` a minute-long stall costs nothing. Its ``log`` holds one
``AttemptRecord`` per ``stream()`` call, which is what history invariants are checked against.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from actors import (
    Failure,
    FailureKind,
    Finish,
    Malformed,
    ProbeKind,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    UpstreamError,
    UpstreamEvent,
    UpstreamRequest,
    Usage,
)

from .._answers import Piece
from .._faults import (
    AttemptPlan,
    AttemptRecord,
    Behaviour,
    FaultSchedule,
    ProbeRecord,
    plan_attempt,
    probe_failure,
    stream_error_failure,
)
from .._textgen import Words

logger = logging.getLogger(__name__)

# What an adapter would have failed to decode: a chunk cut off in the middle.
MALFORMED_RAW = '{"id":"chatcmpl-fake","choices":[{"index":0,"delta":{"content":'


# What an endless answer repeats when the answer has no text (tool calls only).
ENDLESS_FALLBACK = (" and", " so", " on")


def _event(piece: Piece) -> UpstreamEvent:
    """The upstream event an adapter would yield for ``piece``."""
    if piece.kind == "reasoning":
        return ReasoningDelta(piece.text)
    if piece.kind == "tool_call":
        return ToolCallDelta(index=piece.index or 0, id=piece.call_id, name=piece.name)
    if piece.kind == "tool_args":
        return ToolCallDelta(index=piece.index or 0, arguments=piece.text)
    return TextDelta(piece.text)


def _now_or_none() -> float | None:
    try:
        return trio.current_time()
    except RuntimeError:  # constructed outside trio.run
        return None


class FakeProvider:
    """A provider that lives in memory, answers deterministically and fails on schedule.

    ``schedule`` picks a ``Behaviour`` per request by its index at this provider and its
    arrival time in seconds after ``epoch`` (by default the trio time at construction, or at
    first use when constructed outside ``trio.run``). ``seed`` and ``words`` choose the answer
    text (see ``answer_tokens``); ``model_name`` overrides the model reported in ``Finish``.
    ``reports_usage=False`` plays a provider that reports no token usage; ``usage_sent`` maps
    a request's index to the usage it reported.
    """

    def __init__(
        self,
        name: str,
        schedule: FaultSchedule | None = None,
        *,
        kind: str = "openai",
        seed: int = 0,
        model_name: str | None = None,
        words: Words = "plain",
        epoch: float | None = None,
        reports_usage: bool = True,
    ) -> None:
        self._name = name
        self._kind = kind
        self.schedule = schedule if schedule is not None else FaultSchedule.healthy()
        self.seed = seed
        self.model_name = model_name
        self.words: Words = words
        self.epoch = epoch if epoch is not None else _now_or_none()
        self.reports_usage = reports_usage
        self.usage_sent: dict[int, Usage] = {}
        self.log: list[AttemptRecord] = []
        self.probes: list[ProbeRecord] = []

    def __repr__(self) -> str:
        return f"FakeProvider({self._name!r}, {self.schedule!r}, kind={self._kind!r})"

    @property
    def name(self) -> str:
        return self._name

    @property
    def kind(self) -> str:
        return self._kind

    @property
    def open_attempts(self) -> list[AttemptRecord]:
        """Attempts whose stream context has not been left yet."""
        return [record for record in self.log if record.closed_at is None]

    def _since_epoch(self) -> tuple[float, float]:
        now = trio.current_time()
        if self.epoch is None:
            self.epoch = now
        return now, now - self.epoch

    @asynccontextmanager
    async def stream(
        self, request: UpstreamRequest, *, read_delay: Callable[[], float] | None = None
    ) -> AsyncIterator[AsyncIterator[UpstreamEvent]]:
        """Open one attempt; see ``actors.Provider`` (in memory, so there are no reads to pace).

        Entering raises ``UpstreamError`` for ``refuse``, ``status`` and a rejected prefill.
        The iterator plays the behaviour's tokens and fault. Leaving closes the attempt and
        stamps ``closed_at``, also when cancelled.
        """
        now, elapsed = self._since_epoch()
        behaviour = self.schedule.behaviour_for(len(self.log), elapsed)
        record = AttemptRecord(
            index=len(self.log),
            request=request,
            behaviour=behaviour,
            opened_at=now,
            api=self._kind,
        )
        self.log.append(record)
        logger.debug("%s: attempt %d gets %r", self._name, record.index, behaviour)
        try:
            # Sending a request is a cancellation point, as it is over a real socket.
            await trio.lowlevel.checkpoint()
            max_tokens = request.params.get(
                "max_tokens", request.params.get("max_completion_tokens")
            )
            plan = plan_attempt(
                behaviour,
                request.messages,
                kind=self._kind,
                seed=self.seed,
                words=self.words,
                max_tokens=max_tokens,
                params=request.params,
            )
            record.start, record.mode = plan.start, plan.mode
            if plan.rejection is not None:
                connect = plan.rejection.kind is FailureKind.CONNECT
                record.outcome = "refused" if connect else "status"
                raise UpstreamError(plan.rejection)
            events = self._events(record, plan, behaviour, self.model_name or request.model)
            try:
                yield events
            finally:
                await events.aclose()
        finally:
            if record.outcome == "streaming":
                record.outcome = "abandoned"
            record.closed_at = trio.current_time()

    async def _events(
        self, record: AttemptRecord, plan: AttemptPlan, b: Behaviour, model: str
    ) -> AsyncGenerator[UpstreamEvent, None]:
        if b.kind == "endless":
            for token in itertools.cycle(plan.tokens or plan.answer or ENDLESS_FALLBACK):
                if b.token_delay > 0:
                    await trio.sleep(b.token_delay)
                else:
                    await trio.lowlevel.checkpoint()
                record.tokens_sent.append(token)
                yield TextDelta(token)
        # A fault set past the end of the answer strikes after the last piece.
        pieces = plan.pieces
        strike_at = min(b.at_token, len(pieces))
        for i in range(len(pieces) + 1):
            if i == strike_at:
                if b.kind in ("stall", "keepalive_stall"):
                    # Keep-alive comments are invisible once parsed: both are silence here.
                    await trio.sleep(b.stall)
                elif b.kind == "malformed":
                    yield Malformed(raw=MALFORMED_RAW)
                elif b.kind == "reset":
                    record.outcome = "reset"
                    reset = f"connection reset after {i} tokens"
                    raise UpstreamError(Failure(kind=FailureKind.RESET, message=reset))
                elif b.kind == "stream_error":
                    record.outcome = "stream_error"
                    raise UpstreamError(stream_error_failure(b))
            if i == len(pieces):
                break
            if b.token_delay > 0:
                await trio.sleep(b.token_delay)
            else:
                await trio.lowlevel.checkpoint()
            piece = pieces[i]
            record.record(piece)
            yield _event(piece)
        if b.kind == "no_finish":
            record.outcome = "eof"
            return
        # ``no_done`` differs from healthy only on the wire (no [DONE] after the finish).
        record.outcome = "finished"
        usage = None
        if self.reports_usage:
            reasoning = sum(1 for p in record.pieces_sent if p.kind == "reasoning")
            usage = Usage(
                prompt_tokens=plan.prompt_tokens,
                completion_tokens=record.completion_pieces,
                reasoning_tokens=reasoning or None,
            )
            self.usage_sent[record.index] = usage
        yield Finish(reason=plan.finish_reason, usage=usage, model=model)

    async def probe(self, kind: ProbeKind) -> None:
        """Check the provider: fails when the next request would be refused or get a status.

        A probe does not use up a request index; it asks what request ``len(log)`` would get.
        """
        await trio.lowlevel.checkpoint()
        now, elapsed = self._since_epoch()
        behaviour = self.schedule.behaviour_for(len(self.log), elapsed)
        failure = probe_failure(behaviour, self._kind)
        self.probes.append(ProbeRecord(kind=kind, at=now, behaviour=behaviour, ok=failure is None))
        if failure is not None:
            raise UpstreamError(failure)
