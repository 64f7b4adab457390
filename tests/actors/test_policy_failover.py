"""The failover decision, driven directly: each fault class before and after the first token."""

import pytest

from actors import Failure, FailureKind, ProviderConfig
from actors._messages import Message, UpstreamRequest
from actors.policy._continuation import continuation_form, continuation_request
from actors.policy._failover import (
    TIGHT_LOOP_WINDOW,
    FailOver,
    Reject,
    Retry,
    decide,
    health_verdict,
    is_prefill_rejection,
)  # fmt: skip

CFG = ProviderConfig(name="p", kind="openai", base_url="http://p")


def status(
    code: int, *, error_code: str | None = None, message: str = "", retry_after: float | None = None
) -> Failure:
    return Failure(
        kind=FailureKind.STATUS,
        status=code,
        code=error_code,
        message=message,
        retry_after=retry_after,
    )


def run(
    failure, *, starts=(0.0,), produced=False, midstream=False, prefill=False, now=0.0, config=CFG,
    trial=False, alternatives=True, breaker_closed=True,
):  # fmt: skip
    return decide(
        failure, produced_text=produced, midstream=midstream, was_prefill=prefill,
        previous_starts=tuple(starts), config=config, now=now, jitter=0.5, trial=trial,
        alternatives=alternatives, breaker_closed=breaker_closed,
    )  # fmt: skip


@pytest.mark.parametrize("kind", [FailureKind.CONNECT, FailureKind.TIMEOUT])
def test_connect_errors_and_silence_fail_over_at_once(kind):
    decision = run(Failure(kind=kind, message="x"))
    assert isinstance(decision, FailOver)


@pytest.mark.parametrize("code", [500, 502, 503, 504, 529])
def test_transient_statuses_retry_once_with_jittered_backoff_then_fail_over(code):
    first = run(status(code))
    assert isinstance(first, Retry) and 0.1 <= first.delay <= 0.25
    second = run(status(code), starts=(0.0, first.delay))
    assert isinstance(second, FailOver)
    assert second.reason == f"upstream_{code}"


def test_in_stream_error_before_text_is_transient():
    assert isinstance(run(Failure(kind=FailureKind.STREAM_ERROR, message="overloaded")), Retry)


def test_retries_setting_bounds_attempts_per_target():
    config = ProviderConfig(name="p", kind="openai", base_url="http://p", retries=3)
    starts = [0.0]
    for _ in range(3):
        decision = run(status(503), starts=starts, now=starts[-1], config=config)
        assert isinstance(decision, Retry)
        starts.append(starts[-1] + decision.delay)
    assert isinstance(run(status(503), starts=starts, config=config), FailOver)


def test_no_more_than_two_attempts_on_a_target_within_the_tight_loop_window():
    config = ProviderConfig(name="p", kind="openai", base_url="http://p", retries=5)
    starts = [0.0]
    for _ in range(5):
        now = starts[-1]
        decision = run(status(503), starts=starts, now=now, config=config)
        assert isinstance(decision, Retry)
        starts.append(now + decision.delay)
    for i in range(2, len(starts)):
        assert starts[i] - starts[i - 2] >= TIGHT_LOOP_WINDOW - 1e-9


def test_rate_limit_with_short_retry_after_waits_then_retries_same_target():
    decision = run(status(429, retry_after=2.0))
    assert isinstance(decision, Retry) and decision.delay == 2.0


def test_rate_limit_with_long_or_missing_retry_after_fails_over_and_rate_limits():
    assert isinstance(run(status(429, retry_after=60.0)), FailOver)
    assert isinstance(run(status(429)), FailOver)
    assert health_verdict(status(429, retry_after=60.0)).rate_limited_for == 60.0
    assert not health_verdict(status(429, retry_after=60.0)).counts


def test_context_length_exceeded_fails_over_without_counting_against_the_provider():
    failure = status(400, error_code="context_length_exceeded", message="too long")
    assert isinstance(run(failure), FailOver)
    assert not health_verdict(failure).counts


@pytest.mark.parametrize("code", [400, 404, 422])
def test_other_client_errors_are_passed_to_the_client(code):
    failure = status(code, error_code="invalid_request_error", message="nope")
    assert isinstance(run(failure), Reject)
    assert not health_verdict(failure).counts


@pytest.mark.parametrize("code", [401, 403])
def test_broken_credentials_fail_over_and_trip_the_breaker(code):
    assert isinstance(run(status(code)), FailOver)
    verdict = health_verdict(status(code))
    assert verdict.counts and verdict.trip


def test_a_rejected_prefill_is_retried_on_the_same_target_in_instruct_form():
    failure = status(
        400,
        error_code="invalid_request_error",
        message="final assistant message prefill is not supported",
    )
    assert is_prefill_rejection(failure)
    decision = run(failure, prefill=True)
    assert isinstance(decision, Retry) and decision.instruct and decision.delay == 0
    # The same 400 for a request that was not a prefill is just a rejection.
    assert isinstance(run(failure, prefill=False), Reject)


@pytest.mark.parametrize(
    "kind",
    [
        FailureKind.RESET,
        FailureKind.EOF,
        FailureKind.STREAM_ERROR,
        FailureKind.TIMEOUT,
        FailureKind.MALFORMED,
    ],
)
def test_any_failure_after_text_fails_over(kind):
    decision = run(Failure(kind=kind, message="x"), produced=True, midstream=True)
    assert isinstance(decision, FailOver)


def test_midstream_silence_is_named_idle_timeout():
    decision = run(Failure(kind=FailureKind.TIMEOUT, message="x"), produced=True, midstream=True)
    assert decision.reason == "idle_timeout"


# --- a failed half-open trial ----------------------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [
        status(503),
        status(429, retry_after=0.5),
        Failure(kind=FailureKind.STREAM_ERROR, message="overloaded"),
        status(400, message="assistant message prefill is not supported"),
    ],
    ids=["503", "429-short-wait", "stream-error", "prefill-rejected"],
)
def test_a_failed_half_open_trial_fails_over_instead_of_retrying_its_target(failure):
    assert isinstance(run(failure, prefill=True), Retry)  # the same failure outside a trial
    decision = run(failure, prefill=True, trial=True)
    assert isinstance(decision, FailOver)
    assert decision.reason == run(failure, prefill=True).reason


def test_a_trial_that_the_request_itself_failed_is_still_rejected():
    assert isinstance(run(status(422, message="bad temperature"), trial=True), Reject)


# --- continuing on the same target when no other is left ------------------------------------

TRANSIENT_MIDSTREAM = [
    Failure(kind=FailureKind.RESET, message="x"),
    Failure(kind=FailureKind.EOF, message="x"),
    Failure(kind=FailureKind.TIMEOUT, message="x"),
    Failure(kind=FailureKind.STREAM_ERROR, status=529, code="overloaded_error", message="x"),
    status(503),
]


@pytest.mark.parametrize("failure", TRANSIENT_MIDSTREAM, ids=lambda f: f.kind.value)
def test_a_break_mid_answer_continues_on_the_same_target_when_no_other_is_left(failure):
    decision = run(failure, produced=True, midstream=True, alternatives=False)
    assert isinstance(decision, Retry) and not decision.instruct
    assert 0.1 <= decision.delay <= 0.25
    assert decision.reason == run(failure, produced=True, midstream=True).reason


def test_a_continuation_that_fails_before_its_text_is_also_continued_on_the_same_target():
    reset = Failure(kind=FailureKind.RESET, message="x")
    assert isinstance(run(reset, midstream=True), FailOver)
    assert isinstance(run(reset, midstream=True, alternatives=False), Retry)


@pytest.mark.parametrize(
    ("why", "kw"),
    [
        ("another target is left", {"alternatives": True}),
        ("its breaker is not closed", {"breaker_closed": False}),
        ("it was a half-open trial", {"trial": True}),
        ("its retries are used up", {"starts": (0.0, 2.0)}),
        ("the client holds no text", {"produced": False, "midstream": False}),
    ],
)
def test_a_break_mid_answer_fails_over_when(why, kw):
    args = {"produced": True, "midstream": True, "alternatives": False, **kw}
    assert isinstance(run(Failure(kind=FailureKind.RESET, message="x"), **args), FailOver), why


@pytest.mark.parametrize(
    "failure",
    [
        Failure(kind=FailureKind.MALFORMED, message="x"),
        Failure(kind=FailureKind.PROTOCOL, message="x"),
        Failure(kind=FailureKind.STREAM_ERROR, status=400, code="invalid_request", message="x"),
    ],
    ids=["malformed", "protocol", "in-stream-400"],
)
def test_a_break_that_is_not_transient_is_never_continued_on_the_same_target(failure):
    decision = run(failure, produced=True, midstream=True, alternatives=False)
    assert isinstance(decision, FailOver)


def test_the_same_target_continues_as_often_as_its_retries_allow_and_no_tighter():
    cfg = ProviderConfig(name="p", kind="openai", base_url="http://p", retries=3)
    reset = Failure(kind=FailureKind.RESET, message="x")
    second = run(reset, produced=True, midstream=True, alternatives=False, config=cfg,
                 starts=(0.0, 0.2), now=0.5)  # fmt: skip
    assert isinstance(second, Retry) and second.delay == pytest.approx(TIGHT_LOOP_WINDOW - 0.5)
    fourth = run(reset, produced=True, midstream=True, alternatives=False, config=cfg,
                 starts=(0.0, 5.0, 10.0, 15.0), now=16.0)  # fmt: skip
    assert isinstance(fourth, FailOver)


# --- continuation ------------------------------------------------------------------------------

ORIGINAL = UpstreamRequest(
    model="m", messages=(Message(role="user", content="hi"),), params={"max_tokens": 5}
)


def provider(**kw):
    return ProviderConfig(name="p", base_url="http://p", **{"kind": "openai", **kw})


def test_auto_prefers_prefill_only_where_the_provider_honours_it():
    assert (
        continuation_form(provider(kind="anthropic"), delivered="ab", prefill_rejected=False)
        == "prefill"
    )
    assert continuation_form(provider(), delivered="ab", prefill_rejected=False) == "instruct"
    assert (
        continuation_form(provider(prefill=True), delivered="ab", prefill_rejected=False)
        == "prefill"
    )
    assert (
        continuation_form(provider(kind="anthropic"), delivered="ab", prefill_rejected=True)
        == "instruct"
    )
    assert continuation_form(provider(), delivered="", prefill_rejected=False) == "fresh"
    assert (
        continuation_form(provider(continuation="replay"), delivered="ab", prefill_rejected=False)
        == "replay"
    )


def test_continuation_requests_carry_exactly_the_delivered_text():
    prefill = continuation_request(
        ORIGINAL, delivered="Hello wor", form="prefill", instruct_prompt="go on"
    )
    assert prefill.prefill
    assert prefill.messages[-1] == Message(role="assistant", content="Hello wor")
    assert prefill.params == ORIGINAL.params
    instruct = continuation_request(
        ORIGINAL, delivered="Hello wor", form="instruct", instruct_prompt="go on"
    )
    assert [m.role for m in instruct.messages] == ["user", "assistant", "user"]
    assert instruct.messages[1].content == "Hello wor" and instruct.messages[2].content == "go on"
    assert not instruct.prefill
    assert (
        continuation_request(ORIGINAL, delivered="Hello", form="replay", instruct_prompt="x")
        == ORIGINAL
    )
