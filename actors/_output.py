"""What the client of one stream sees: the answer so far and how it got there.

``StreamOutput`` is the stream's side of its log. Attempts hand it their output (it is their
``StreamSink``): text, reasoning, tool calls, a divergence, the finish. It announces a failover
once, before the new target's first output; it remembers the text the client holds (what a
continuation must join) and whether the client holds anything at all (the failover's phase).
The session (``actors._session``) runs the failover loop and tells it what was decided.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import trio

from ._config import Target
from ._features import answer_format, check_json
from ._messages import (
    Done,
    Failover,
    Finish,
    FunctionCall,
    Reasoning,
    StreamError,
    ToolCall,
    ToolCallDelta,
    ToolCallPart,
    Usage,
)
from ._streamlog import StreamLog, short_id
from ._telemetry import Telemetry
from ._vocab import StreamErrorCode

log = logging.getLogger("actors._session")  # its lines read as the session's, as they did

Phase = Literal["prestream", "midstream"]


class StreamOutput:
    """The client's view of one stream, written through its ``log``."""

    def __init__(
        self,
        stream_log: StreamLog,
        *,
        route: str,
        params: Mapping[str, Any],
        can_reset: bool,
        telemetry: Telemetry,
    ) -> None:
        self.log = stream_log
        self._route = route
        self._params = params
        self._telemetry = telemetry
        self.can_reset = can_reset  # the client can take a failover with mode reset
        self.answer_format = answer_format(params)
        self.delivered: list[str] = []  # the answer's text the client holds
        self.delivered_deltas = 0
        self.serving: Target | None = None
        self.pending: tuple[str, Phase] | None = None  # the failover to announce: reason, phase
        self.restarting = False  # the client's text is dropped: the next text comes as a reset
        self.failovers = 0
        self.tool_parts_sent = False  # live tool call fragments the client holds
        self.shown = False  # the client holds output of this answer (text, reasoning, calls)
        self.started_at = 0.0
        self.first_output_at: float | None = None  # text, reasoning or a tool call

    def phase(self) -> Phase:
        return "midstream" if self.delivered or self.shown else "prestream"

    def drop_answer(self) -> None:
        """The answer starts afresh: what the client holds goes with the next output's reset."""
        self.restarting = True
        self.delivered.clear()
        self.delivered_deltas = 0
        self.tool_parts_sent = False
        self.shown = False

    def error(self, code: StreamErrorCode, message: str, *, retryable: bool, **extra: Any) -> None:
        self.log.append(StreamError, code=code, message=message, retryable=retryable, **extra)

    def announce(self, target: Target, mode: Literal["continue", "reset"]) -> None:
        """Emit the pending failover event, once, before the new target's first text."""
        pending = self.pending
        self.pending = None
        serving = self.serving
        if pending is None or serving is None:
            return
        reason, phase = pending
        if target == serving and phase == "prestream" and mode == "continue":
            return  # a retry of the same target before any text: invisible to the client
        self.failovers += 1
        self.log.append(
            Failover, from_provider=serving.provider, to_provider=target.provider,
            to_model=target.model, reason=reason, mode=mode, phase=phase,
        )  # fmt: skip
        self._telemetry.failovers.add(
            1, {"route": self._route, "from": serving.provider, "to": target.provider,
                "phase": phase, "reason": reason},
        )  # fmt: skip
        log.warning(
            "stream %s: failover %s -> %s (%s, %s, %s)",
            short_id(self.log.stream_id), serving.provider, target.provider, reason, phase, mode,
        )  # fmt: skip
        self.serving = target

    def _show(self, target: Target, *, output: bool = True) -> None:
        """Output of ``target`` for the client: after a failover, announce it first.

        The stream's first output (text, reasoning or a tool call; not the bare end) is its
        time to first token: a tool-only answer has one too.
        """
        if self.pending is not None:
            self.announce(target, "reset" if self.restarting else "continue")
            self.restarting = False
        if not output:
            return
        self.shown = True
        if self.first_output_at is None:
            self.first_output_at = trio.current_time()
            self._telemetry.ttft.record(
                self.first_output_at - self.started_at,
                {"route": self._route, "provider": target.provider, "model": target.model},
            )

    def deliver(self, target: Target, text: str, logprobs: tuple[Any, ...] | None = None) -> None:
        if self.pending is not None or not self.shown:  # per token: call only when it acts
            self._show(target)
        self.delivered.append(text)
        self.delivered_deltas += 1
        self.log.append_text(text, logprobs)

    def reason(self, target: Target, text: str) -> None:
        self._show(target)
        self.log.append(Reasoning, text=text)

    def tool_part(self, target: Target, part: ToolCallDelta) -> None:
        self._show(target)
        self.tool_parts_sent = True
        self.log.append(
            ToolCallPart, index=part.index, id=part.id, name=part.name, arguments=part.arguments
        )

    def tool_calls(self, target: Target, calls: Sequence[tuple[int, FunctionCall]]) -> None:
        self._show(target)
        for index, call in calls:
            self.log.append(
                ToolCall, index=index, id=call.id, name=call.name, arguments=call.arguments
            )

    def answer_problem(self) -> str | None:
        """Why the answer's text, continued after a failover, is not the JSON asked for."""
        if self.answer_format == "text":
            return None
        return check_json("".join(self.delivered), self._params)

    def diverged(self, target: Target, text: str) -> bool:
        """The continuation cannot be joined; reset the client's text if it can take that."""
        if not self.can_reset:
            self.error(
                "stream_diverged",
                f"The answer broke off and {target.provider} could not continue it exactly; "
                "the partial answer is incomplete. Retry the request.",
                retryable=True,
            )
            return False
        if self.pending is None:
            self.pending = ("stream_diverged", "midstream")
        self.announce(target, "reset")
        self.delivered.clear()
        self.delivered_deltas = 0
        if text:
            self.delivered.append(text)
            self.delivered_deltas += 1
            self.log.append_text(text)
        return True

    def done(self, target: Target, finish: Finish, usage: Usage | None) -> None:
        self._show(target, output=False)
        # The finishing attempt's usage as its provider reported it, or None: never a count
        # of our own. After a failover its prompt includes the delivered text it continued;
        # every attempt's own usage is in the stream's statistics and the token metrics.
        self.log.append(
            Done, finish_reason=finish.reason, provider=target.provider,
            model=finish.model or target.model, usage=usage,
        )  # fmt: skip
