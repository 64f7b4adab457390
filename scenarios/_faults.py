"""The fault model: what one upstream request does, and which request does what.

A ``Behaviour`` describes one attempt (healthy, refused, an error status, a reset after K
tokens, a stall, ...). A ``FaultSchedule`` maps each request a provider receives (by its
0-based index at that provider and the time it arrived, in seconds since the provider's epoch)
to a behaviour through an ordered tuple of ``Rule``s. Schedules serialise to a compact blob so
that a failing run can be replayed from a command line.

``plan_attempt`` turns a behaviour and a request into what the fake providers do: the refusal,
or the tokens to send and how to finish. Both the in-memory and the HTTP fake use it, so they
fail in the same way.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import attrs
import orjson

from actors import Failure, FailureKind, Message, UpstreamRequest

from ._answers import (
    Piece,
    PlannedCall,
    json_answer_call,
    plan_calls,
    reasoning_tokens,
    split_arguments,
    text_answer,
    wants_json,
    wants_reasoning,
)
from ._textgen import ContinuationMode, Words, continuation

BehaviourKind = Literal[
    "healthy",
    "refuse",
    "status",
    "reset",
    "stall",
    "drip",
    "malformed",
    "no_done",
    "no_finish",
    "stream_error",
    "keepalive_stall",
    "endless",
]
PrefillMode = Literal["continue", "restart", "reject"]

BEHAVIOUR_KINDS: tuple[str, ...] = BehaviourKind.__args__  # type: ignore[attr-defined]
PREFILL_MODES: tuple[str, ...] = PrefillMode.__args__  # type: ignore[attr-defined]

PREFILL_REJECTED_MESSAGE = (
    "This model does not support assistant message prefill: "
    "the final message must be a user message."
)


def _short_repr(obj: Any, positional: Sequence[str]) -> str:
    """``Name(pos, field=value)`` listing only fields that differ from their defaults."""
    parts = []
    for field in attrs.fields(type(obj)):
        value = getattr(obj, field.name)
        if field.name in positional:
            parts.append(repr(value))
        elif value != field.default:
            parts.append(f"{field.name}={value!r}")
    return f"{type(obj).__name__}({', '.join(parts)})"


def _check_behaviour(b: Behaviour) -> None:
    if b.kind not in BEHAVIOUR_KINDS:
        raise ValueError(f"unknown behaviour kind {b.kind!r}; expected one of {BEHAVIOUR_KINDS}")
    if b.prefill not in PREFILL_MODES:
        raise ValueError(f"unknown prefill mode {b.prefill!r}; expected one of {PREFILL_MODES}")
    if b.kind == "status" and b.status is None:
        raise ValueError("a 'status' behaviour needs status=<HTTP status>")
    if b.kind == "drip" and b.token_delay <= 0:
        raise ValueError("a 'drip' behaviour needs token_delay > 0")
    if b.at_token < 0 or b.stall < 0 or b.token_delay < 0:
        raise ValueError("at_token, stall and token_delay must not be negative")


@attrs.frozen(repr=False)
class Behaviour:
    """What one upstream request does.

    ``kind`` is the fault; ``at_token`` is after how many tokens it strikes (``reset``,
    ``stall``, ``malformed``, ``stream_error``, ``keepalive_stall``; 0 = before the first);
    ``stall`` is how long a stall lasts, after which the answer continues; ``token_delay`` is
    slept before every token. ``status``/``retry_after``/``code``/``message`` describe an HTTP
    error (``status``) or override the in-stream error (``stream_error``). ``prefill`` is what
    the provider does with a trailing assistant message: ``continue`` it, ``restart`` the answer
    from the beginning, or ``reject`` the request with HTTP 400. ``endless`` never finishes: it
    sends its answer's tokens again and again (after ``token_delay`` each) until the client
    leaves, as a provider stuck in a loop does.
    """

    kind: str = "healthy"
    at_token: int = attrs.field(default=0, kw_only=True)
    stall: float = attrs.field(default=0.0, kw_only=True)
    token_delay: float = attrs.field(default=0.0, kw_only=True)
    status: int | None = attrs.field(default=None, kw_only=True)
    retry_after: float | None = attrs.field(default=None, kw_only=True)
    code: str | None = attrs.field(default=None, kw_only=True)
    message: str | None = attrs.field(default=None, kw_only=True)
    prefill: str = attrs.field(default="continue", kw_only=True)

    def __attrs_post_init__(self) -> None:
        _check_behaviour(self)

    def __repr__(self) -> str:
        return _short_repr(self, ("kind",))

    def to_dict(self) -> dict[str, Any]:
        """The fields that differ from their defaults (``kind`` always)."""
        out: dict[str, Any] = {"kind": self.kind}
        for field in attrs.fields(Behaviour)[1:]:
            value = getattr(self, field.name)
            if value != field.default:
                out[field.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Behaviour:
        return cls(**data)


HEALTHY = Behaviour()


@attrs.frozen(repr=False)
class Rule:
    """Apply ``behaviour`` to requests in an index range that arrive in a time window.

    Requests ``first_request`` to ``last_request`` inclusive (``None`` = no end), arriving at
    ``start <= t < end`` seconds after the provider's epoch (``None`` = no end).
    """

    behaviour: Behaviour
    first_request: int = 0
    last_request: int | None = None
    start: float = 0.0
    end: float | None = None

    def __repr__(self) -> str:
        return _short_repr(self, ("behaviour",))

    def matches(self, request_index: int, now: float) -> bool:
        if request_index < self.first_request:
            return False
        if self.last_request is not None and request_index > self.last_request:
            return False
        return self.start <= now and (self.end is None or now < self.end)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"behaviour": self.behaviour.to_dict()}
        for field in attrs.fields(Rule)[1:]:
            value = getattr(self, field.name)
            if value != field.default:
                out[field.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rule:
        fields = dict(data)
        fields["behaviour"] = Behaviour.from_dict(fields["behaviour"])
        return cls(**fields)


def _as_rules(rules: Sequence[Rule]) -> tuple[Rule, ...]:
    return tuple(rules)


@attrs.frozen(repr=False)
class FaultSchedule:
    """Which behaviour each request to one provider gets: the first matching rule, else default."""

    rules: tuple[Rule, ...] = attrs.field(default=(), converter=_as_rules)
    default: Behaviour = HEALTHY

    def __repr__(self) -> str:
        if self.default == HEALTHY:
            return f"FaultSchedule({self.rules!r})"
        return f"FaultSchedule({self.rules!r}, default={self.default!r})"

    def behaviour_for(self, request_index: int, now: float) -> Behaviour:
        """The behaviour for request ``request_index`` arriving ``now`` seconds after the epoch."""
        for rule in self.rules:
            if rule.matches(request_index, now):
                return rule.behaviour
        return self.default

    @classmethod
    def healthy(cls) -> FaultSchedule:
        """Every request succeeds."""
        return cls()

    @classmethod
    def always(cls, behaviour: Behaviour) -> FaultSchedule:
        """Every request behaves the same way."""
        return cls(default=behaviour)

    @classmethod
    def first(cls, n: int, behaviour: Behaviour) -> FaultSchedule:
        """The first ``n`` requests get ``behaviour``; later ones succeed."""
        return cls((Rule(behaviour, last_request=n - 1),))

    @classmethod
    def flapping(
        cls,
        down_for: float,
        behaviour: Behaviour,
        *,
        up_for: float | None = None,
        cycles: int = 3,
    ) -> FaultSchedule:
        """Down (``behaviour``) for ``down_for`` s, up for ``up_for`` s (default: equal), repeated.

        After ``cycles`` down periods the provider stays up.
        """
        up = down_for if up_for is None else up_for
        period = down_for + up
        return cls(
            tuple(
                Rule(behaviour, start=k * period, end=k * period + down_for) for k in range(cycles)
            )
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rules": [rule.to_dict() for rule in self.rules]}
        if self.default != HEALTHY:
            out["default"] = self.default.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaultSchedule:
        rules = tuple(Rule.from_dict(r) for r in data.get("rules", ()))
        default = Behaviour.from_dict(data["default"]) if "default" in data else HEALTHY
        return cls(rules, default)

    def to_blob(self) -> str:
        """A compact, URL- and shell-safe string (base64 of compact JSON)."""
        return base64.urlsafe_b64encode(orjson.dumps(self.to_dict())).decode().rstrip("=")

    @classmethod
    def from_blob(cls, blob: str) -> FaultSchedule:
        """Read a schedule written by ``to_blob``."""
        padded = blob.strip() + "=" * (-len(blob.strip()) % 4)
        return cls.from_dict(orjson.loads(base64.urlsafe_b64decode(padded)))


# --- how a behaviour plays out ----------------------------------------------------------------

_DEFAULT_CODES = {
    "openai": {
        400: "invalid_request_error",
        401: "invalid_api_key",
        403: "permission_denied",
        404: "model_not_found",
        429: "rate_limit_exceeded",
    },
    "anthropic": {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
        500: "api_error",
        529: "overloaded_error",
    },
}
_DEFAULT_MESSAGES = {
    400: "The request is invalid.",
    401: "Invalid API key.",
    403: "You do not have access to this resource.",
    404: "The model does not exist.",
    429: "Rate limit reached; please retry later.",
    500: "The server had an error while processing your request.",
    502: "Bad gateway.",
    503: "The server is overloaded or not ready yet.",
    529: "Overloaded",
}
STREAM_ERROR_CODE = "overloaded_error"
STREAM_ERROR_STATUS = 529


def default_error_code(kind: str, status: int) -> str:
    """The machine code a provider of ``kind`` uses for an HTTP ``status`` by default."""
    table = _DEFAULT_CODES.get(kind, _DEFAULT_CODES["openai"])
    if status in table:
        return table[status]
    if status < 500:
        return "invalid_request_error"
    return "api_error" if kind == "anthropic" else "server_error"


def status_failure(b: Behaviour, kind: str) -> Failure:
    """The ``STATUS`` failure a ``status`` behaviour produces at a provider of ``kind``."""
    assert b.status is not None
    return Failure(
        kind=FailureKind.STATUS,
        status=b.status,
        code=b.code or default_error_code(kind, b.status),
        message=b.message or _DEFAULT_MESSAGES.get(b.status, f"HTTP {b.status}"),
        retry_after=b.retry_after,
    )


def stream_error_failure(b: Behaviour) -> Failure:
    """The ``STREAM_ERROR`` failure a ``stream_error`` behaviour produces."""
    return Failure(
        kind=FailureKind.STREAM_ERROR,
        status=b.status or STREAM_ERROR_STATUS,
        code=b.code or STREAM_ERROR_CODE,
        message=b.message or "Overloaded",
    )


def prefill_rejection() -> Failure:
    """The 400 a provider that does not support assistant prefill answers with."""
    return Failure(
        kind=FailureKind.STATUS,
        status=400,
        code="invalid_request_error",
        message=PREFILL_REJECTED_MESSAGE,
    )


@attrs.frozen(kw_only=True)
class AttemptPlan:
    """What a fake provider does for one request.

    Either ``rejection`` (refused, an error status, prefill rejected) or: send ``pieces`` in
    order, then finish with ``finish_reason``. ``pieces`` are the reasoning pieces, the text
    tokens (``answer[start:]``) and the tool calls (a ``tool_call`` piece opening each, then
    its ``tool_args`` pieces), cut at ``max_tokens`` (which ``tool_call`` openers do not
    count towards). A fault's ``at_token`` counts pieces of every kind, so a test can aim one
    with ``piece_indexes``. ``tokens`` are the text pieces alone; ``calls`` the complete tool
    calls the answer makes when it is not cut short.
    """

    rejection: Failure | None
    answer: tuple[str, ...]
    start: int
    mode: ContinuationMode
    tokens: tuple[str, ...]
    finish_reason: str
    prompt_tokens: int
    pieces: tuple[Piece, ...] = ()
    calls: tuple[PlannedCall, ...] = ()

    def piece_indexes(self, kind: str) -> list[int]:
        """Where the pieces of ``kind`` are in ``pieces`` (an ``at_token`` strikes before one)."""
        return [i for i, piece in enumerate(self.pieces) if piece.kind == kind]


def plan_attempt(
    behaviour: Behaviour,
    messages: Sequence[Message],
    *,
    kind: str = "openai",
    seed: int = 0,
    words: Words = "plain",
    max_tokens: int | None = None,
    params: Mapping[str, Any] | None = None,
) -> AttemptPlan:
    """Decide what a provider of ``kind`` does with ``messages`` under ``behaviour``.

    ``params`` are the request's other fields in OpenAI's names (tools, tool_choice,
    parallel_tool_calls, response_format, reasoning_effort); see ``scenarios._answers``. A
    simulator's own ``json_tool`` there names the tool a JSON answer is the input of (how
    Baton asks Anthropic for JSON): the answer is then that one tool call, its arguments the
    JSON text in the same pieces a text answer would have.
    """
    params = params or {}
    calls = plan_calls(messages, params, kind=kind, seed=seed, words=words)
    answer: tuple[str, ...] = ()
    json_call: PlannedCall | None = None
    if not calls:
        answer = tuple(text_answer(messages, params, seed=seed, words=words))
    if not calls and wants_json(params) and params.get("json_tool"):
        # The JSON answer goes out as the input of the tool Baton forced for it (Anthropic).
        json_call = json_answer_call(messages, params, answer, kind=kind, seed=seed)
        answer = ()
    prompt_tokens = sum(len(m.text.split()) + 3 for m in messages)
    rejection: Failure | None = None
    trailing_assistant = bool(messages) and messages[-1].role == "assistant"
    if behaviour.kind == "refuse":
        rejection = Failure(kind=FailureKind.CONNECT, message="connection refused")
    elif behaviour.kind == "status":
        rejection = status_failure(behaviour, kind)
    elif trailing_assistant and behaviour.prefill == "reject":
        rejection = prefill_rejection()
    mode: ContinuationMode
    if trailing_assistant and behaviour.prefill == "restart":
        start, mode = 0, "restart"
    else:
        start, mode = continuation(messages, answer)
    pieces: list[Piece] = []
    if wants_reasoning(params) and start == 0:
        reasoning = reasoning_tokens(messages, seed=seed, words=words)
        pieces += [Piece("reasoning", text) for text in reasoning]
    pieces += [Piece("text", text) for text in answer[start:]]
    for i, call in enumerate(calls):
        pieces.append(Piece("tool_call", "", index=i, call_id=call.id, name=call.name))
        pieces += [Piece("tool_args", text, index=i) for text in split_arguments(call.arguments)]
    if json_call is not None:
        calls = (json_call,)
        pieces.append(Piece("tool_call", "", index=0, call_id=json_call.id, name=json_call.name))
        # In the JSON text's own pieces, so a failover between kinds splits it alike.
        json_pieces = text_answer(messages, params, seed=seed, words=words)
        pieces += [Piece("tool_args", text, index=0, answer_text=True) for text in json_pieces]
    finish_reason = "tool_calls" if calls else "stop"
    if max_tokens is not None:
        counted = 0
        for cut, piece in enumerate(pieces):
            if piece.kind != "tool_call":
                counted += 1
            if counted > max_tokens:
                pieces = pieces[:cut]
                finish_reason = "length"
                break
    tokens = tuple(piece.text for piece in pieces if piece.kind == "text")
    return AttemptPlan(
        rejection=rejection,
        answer=answer,
        start=start,
        mode=mode,
        tokens=tokens,
        finish_reason=finish_reason,
        prompt_tokens=prompt_tokens,
        pieces=tuple(pieces),
        calls=calls,
    )


@attrs.define(kw_only=True)
class AttemptRecord:
    """What happened to one request at a fake provider (mutable while the attempt runs).

    ``outcome`` is ``streaming`` while it runs, then one of ``refused``, ``status``,
    ``finished`` (a finish reason was sent), ``eof`` (ended without one), ``reset``,
    ``stream_error`` or ``abandoned`` (the client left first, including by cancellation).
    ``start``/``mode`` say where in the answer this attempt began and why. ``pieces_sent``
    is every piece sent in order (reasoning, text, tool calls); ``tokens_sent`` the ones a
    client sees as the answer's text (text, and a JSON answer sent as a tool's input).
    """

    index: int
    request: UpstreamRequest
    behaviour: Behaviour
    opened_at: float
    api: str = "openai"
    closed_at: float | None = None
    tokens_sent: list[str] = attrs.field(factory=list)
    pieces_sent: list[Piece] = attrs.field(factory=list)
    outcome: str = "streaming"
    start: int = 0
    mode: str = "fresh"

    @property
    def text_sent(self) -> str:
        return "".join(self.tokens_sent)

    @property
    def reasoning_sent(self) -> str:
        return "".join(p.text for p in self.pieces_sent if p.kind == "reasoning")

    @property
    def completion_pieces(self) -> int:
        """Pieces sent that count as completion tokens (all but the ``tool_call`` openers)."""
        return sum(1 for p in self.pieces_sent if p.kind != "tool_call")

    def record(self, piece: Piece) -> None:
        """Note that ``piece`` was sent."""
        self.pieces_sent.append(piece)
        if piece.kind == "text" or piece.answer_text:
            self.tokens_sent.append(piece.text)


@attrs.frozen(kw_only=True)
class ProbeRecord:
    """One health probe a fake provider answered."""

    kind: str
    at: float
    behaviour: Behaviour
    ok: bool


def probe_failure(behaviour: Behaviour, kind: str) -> Failure | None:
    """How a probe fails under ``behaviour``: only refusals and error statuses fail it."""
    if behaviour.kind == "refuse":
        return Failure(kind=FailureKind.CONNECT, message="connection refused")
    if behaviour.kind == "status":
        return status_failure(behaviour, kind)
    return None
