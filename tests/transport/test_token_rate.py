"""``tokens_per_minute``: a client's completion tokens of the last minute, counted as they stream.

The window and the meter on their own under a ``MockClock``, then on real sockets with the
fixtures of ``test_auth``: the ``openai`` SDK over HTTP, ``websockets`` over WS.
"""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
import trio
import trio.testing

from actors import ClientEvent, Delta, Done, Failover, Usage, config_from_dict
from scenarios import FaultSchedule
from transport import ClientAuth, Refused
from transport._auth import TokenWindow, estimate_tokens

from .test_auth import (
    ALICE,
    BOB,
    DRIP,
    MESSAGES,
    Servers,
    bearer,
    chat,
    config,
    in_thread,
    sdk,
    serving,
    start,
    wait_until,
    ws_conversation,
)


def delta(text: str, seq: int = 0) -> Delta:
    return Delta(stream="s", seq=seq, text=text)


def done(completion_tokens: int | None) -> Done:
    usage = (
        None
        if completion_tokens is None
        else Usage(prompt_tokens=9, completion_tokens=completion_tokens)
    )
    return Done(stream="s", seq=9, finish_reason="stop", provider="a", model="m", usage=usage)


FAILOVER = Failover(
    stream="s", seq=5, from_provider="a", to_provider="b", to_model="m", reason="reset",
    mode="continue", phase="midstream",
)  # fmt: skip


def alice_auth(**limits: Any) -> ClientAuth:
    return ClientAuth.from_config(config_from_dict(config(**limits)), environ={"ALICE_KEY": ALICE})


def recent_tokens(auth: ClientAuth, name: str = "alice") -> int:
    return auth.statistics()[name].recent_tokens


# --- the window and the meter, on a MockClock ----------------------------------------------


def test_a_delta_is_estimated_at_one_token_per_four_characters_and_at_least_one() -> None:
    assert [estimate_tokens(t) for t in ("", "a", "abcd", "abcde", "x" * 40)] == [1, 1, 1, 2, 10]


async def test_the_token_window_frees_up_as_the_minute_slides(
    autojump_clock: trio.testing.MockClock,
) -> None:
    window = TokenWindow(10)
    window.add(trio.current_time(), 6)
    assert window.wait(trio.current_time()) is None  # under the limit
    await trio.sleep(20.0)
    window.add(trio.current_time(), 4)
    assert window.count(trio.current_time()) == 10
    # At the limit: the 6 tokens of t=0 must leave, 40 s from now, to be under it again.
    assert window.wait(trio.current_time()) == pytest.approx(40.0)
    await trio.sleep(39.0)
    assert window.wait(trio.current_time()) == pytest.approx(1.0)
    await trio.sleep(1.0)
    assert window.wait(trio.current_time()) is None
    assert window.count(trio.current_time()) == 4


async def test_the_wait_is_until_enough_tokens_leave_not_all(
    autojump_clock: trio.testing.MockClock,
) -> None:
    window = TokenWindow(10)
    for _ in range(3):
        window.add(trio.current_time(), 5)  # 15 at t=0, 10, 20
        await trio.sleep(10.0)
    # At t=30, two entries (10 tokens) must leave to be under 10: the second leaves at t=70.
    assert window.wait(trio.current_time()) == pytest.approx(40.0)


async def test_the_providers_count_replaces_the_estimate_at_done(
    autojump_clock: trio.testing.MockClock,
) -> None:
    auth = alice_auth(tokens_per_minute=1000)
    meter = auth.meter(auth.identify(ALICE))
    meter.see([delta("x" * 40), delta("y" * 8, 1)])
    assert recent_tokens(auth) == 12  # the estimate while it streams
    meter.see([done(completion_tokens=30)])
    assert recent_tokens(auth) == 30


async def test_without_the_providers_count_the_estimate_stands(
    autojump_clock: trio.testing.MockClock,
) -> None:
    auth = alice_auth(tokens_per_minute=1000)
    meter = auth.meter(auth.identify(ALICE))
    meter.see([delta("x" * 40), done(completion_tokens=None)])
    assert recent_tokens(auth) == 10


async def test_after_a_failover_only_the_finishing_attempts_estimate_is_replaced(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The finishing attempt's usage counts only its own text; what came before stays estimated.
    auth = alice_auth(tokens_per_minute=1000)
    meter = auth.meter(auth.identify(ALICE))
    batches: list[list[ClientEvent]] = [
        [delta("x" * 20)],
        [FAILOVER, delta("y" * 40, 6)],
        [done(completion_tokens=3)],
    ]
    for batch in batches:
        meter.see(batch)
    assert recent_tokens(auth) == 5 + 3


async def test_the_replaced_count_leaves_the_window_with_the_text_it_counts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    auth = alice_auth(tokens_per_minute=1000)
    meter = auth.meter(auth.identify(ALICE))
    meter.see([delta("x" * 40)])  # 10 estimated at t=0
    await trio.sleep(30.0)
    meter.see([delta("x" * 40)])  # 10 estimated at t=30
    meter.see([done(completion_tokens=40)])  # 20 each
    await trio.sleep(30.0)
    assert recent_tokens(auth) == 20
    await trio.sleep(30.0)
    assert recent_tokens(auth) == 0


async def test_over_its_tokens_a_client_is_refused_until_enough_leave_and_others_are_not(
    autojump_clock: trio.testing.MockClock,
) -> None:
    auth = alice_auth(tokens_per_minute=10, requests_per_minute=100)
    alice = auth.admit(auth.identify(ALICE), "default")
    meter = auth.meter(alice)
    meter.see([delta("x" * 24)])  # 6 estimated: under the limit
    auth.release(auth.admit(alice, "default"))
    await trio.sleep(15.0)
    meter.see([delta("x" * 16, 1)])  # 4 more: at the limit, while the stream still runs
    meter.see([delta("x" * 16, 2)])  # a running stream is not cut: it counts on
    with pytest.raises(Refused) as limited:
        auth.admit(alice, "default")
    assert limited.value.status == 429 and limited.value.code == "rate_limit_exceeded"
    assert limited.value.ws_code == "rate_limit_exceeded"
    # Under 10 again when the 6 tokens of t=0 leave, 45 s from now.
    assert limited.value.retry_after == pytest.approx(45.0)
    assert ("retry-after", "45") in [(k.decode(), v.decode()) for k, v in limited.value.headers()]
    auth.release(auth.admit(auth.identify(BOB), "default"))  # bob has no token limit
    stats = auth.statistics()["alice"]
    assert stats.refused == 1 and stats.recent_requests == 2  # the refusal is no request
    await trio.sleep(45.0)
    auth.release(auth.admit(alice, "default"))
    auth.release(alice)


# --- on real sockets ------------------------------------------------------------------------


def stream_chat(servers: Servers, key: str) -> tuple[str, int]:
    """Stream an answer with the SDK: its text and the completion tokens of its usage."""
    with sdk(servers, key) as client:
        chunks = client.chat.completions.create(
            model="default", messages=MESSAGES, stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True},
        )  # fmt: skip
        text, tokens = "", -1
        for chunk in chunks:
            text += "".join(c.delta.content or "" for c in chunk.choices)
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return text, tokens


async def test_a_client_over_its_tokens_gets_429_with_retry_after_while_another_streams() -> None:
    async with serving(tokens_per_minute=5) as servers:
        text, tokens = await in_thread(lambda: stream_chat(servers, ALICE))
        assert text and tokens >= 5
        assert recent_tokens(servers.auth) == tokens  # the provider's count, not the estimate
        with pytest.raises(openai.RateLimitError) as limited:
            await in_thread(lambda: chat(servers, ALICE))
        assert limited.value.code == "rate_limit_exceeded"
        assert "tokens_per_minute" in limited.value.message
        assert 1 <= int(limited.value.response.headers["retry-after"]) <= 60
        bob_text, bob_tokens = await in_thread(lambda: stream_chat(servers, BOB))
        assert bob_text and bob_tokens >= 5  # bob is not disturbed
        _, received = await in_thread(
            lambda: ws_conversation(servers.ws, [start()], additional_headers=bearer(ALICE))
        )
        assert received[-1]["type"] == "error"
        assert received[-1]["code"] == "rate_limit_exceeded" and received[-1]["retryable"]


async def test_websocket_tokens_count_as_they_stream_and_the_running_stream_is_not_cut() -> None:
    async with serving(FaultSchedule.always(DRIP), tokens_per_minute=3) as servers:
        async with trio.open_nursery() as nursery:
            results: dict[str, Any] = {}

            async def alice_ws() -> None:
                results["ws"] = await in_thread(
                    lambda: ws_conversation(
                        servers.ws, [start(ref="first")], additional_headers=bearer(ALICE)
                    )
                )

            nursery.start_soon(alice_ws)
            # The dripping stream passes the limit long before its end: counted as it streams.
            await wait_until(lambda: recent_tokens(servers.auth) >= 3)
            assert servers.auth.statistics()["alice"].active_streams == 1
            async with httpx.AsyncClient(timeout=10) as http:
                over = await http.post(
                    f"{servers.http}/v1/chat/completions", headers=bearer(ALICE),
                    json={"model": "default", "messages": MESSAGES},
                )  # fmt: skip
            assert over.status_code == 429
            assert over.json()["error"]["code"] == "rate_limit_exceeded"
            assert 1 <= int(over.headers["retry-after"]) <= 60
        _, received = results["ws"]
        assert received[-1]["type"] == "done"  # the running stream went on to its end
        assert received[-1]["usage"]["completion_tokens"] == recent_tokens(servers.auth)
        _, again = await in_thread(
            lambda: ws_conversation(servers.ws, [start()], additional_headers=bearer(ALICE))
        )
        assert again[-1]["code"] == "rate_limit_exceeded" and again[-1]["retryable"] is True
