"""Every upstream fault through the real path: httpx adapters over loopback into the actors.

First against the simulated provider on 127.0.0.1 (faults on the wire: refused connections,
error statuses, resets, stalls, malformed events), then with the same faults injected at the
httpx transport level (exceptions and truncated bodies raised inside httpx itself). Both run
under ``autojump_clock``: in-process loopback I/O completes without real waiting.
"""

from __future__ import annotations

import attrs
import httpx
import pytest
import trio

from actors import Delta, Done, Failover, Message, StreamError, config_from_dict, open_baton
from scenarios import Behaviour, FaultSchedule, answer_tokens, open_simulated_provider
from tests.actors.conftest import lag_the_loop
from transport.providers import (
    AnthropicProvider,
    OpenAIProvider,
    install_merging_chunked_reader,
)

PROMPT = (Message(role="user", content="Tell me about harbours."),)
ANSWER = "".join(answer_tokens(PROMPT))


def config(kind_a: str, url_a: str, kind_b: str, url_b: str, **a_overrides):
    return config_from_dict(
        {
            "providers": {
                "a": {
                    "kind": kind_a,
                    "base_url": url_a,
                    "first_token_timeout": 3.0,
                    "idle_timeout": 2.0,
                    **a_overrides,
                },
                "b": {"kind": kind_b, "base_url": url_b},
            },
            "routes": {
                "default": {
                    "targets": [{"provider": "a", "model": "ma"}, {"provider": "b", "model": "mb"}]
                }
            },
        }
    )


def adapters(cfg, **clients):
    out = {}
    for name, pc in cfg.providers.items():
        cls = AnthropicProvider if pc.kind == "anthropic" else OpenAIProvider
        out[name] = cls(pc, client=clients.get(name))
    return out


async def stream_once(cfg, providers):
    async with open_baton(cfg, providers) as baton:
        handle = baton.start_stream(route="default", messages=PROMPT)
        events = [e async for e in handle]
    for p in providers.values():
        await p.aclose()
    assert [e.seq for e in events] == list(range(len(events)))
    text = "".join(e.text for e in events if isinstance(e, Delta))
    return events, text


FAULTS = [
    (Behaviour("refuse"), "connect_error", "prestream"),
    (Behaviour("status", status=503), "upstream_503", "prestream"),
    (Behaviour("status", status=429, retry_after=60.0), "rate_limited", "prestream"),
    (Behaviour("status", status=401), "auth_failed", "prestream"),
    (
        Behaviour("status", status=400, code="context_length_exceeded", message="too long"),
        "context_length_exceeded",
        "prestream",
    ),
    (Behaviour("stall", at_token=0, stall=30.0), "first_token_timeout", "prestream"),
    (Behaviour("reset", at_token=6), "reset", "midstream"),
    (Behaviour("stall", at_token=6, stall=30.0), "idle_timeout", "midstream"),
    (Behaviour("keepalive_stall", at_token=6, stall=30.0), "idle_timeout", "midstream"),
    (Behaviour("stream_error", at_token=6), "stream_error", "midstream"),
    (Behaviour("no_finish"), "eof", "midstream"),
]


@pytest.mark.parametrize(
    "kinds", [("openai", "openai"), ("anthropic", "openai"), ("openai", "anthropic")]
)
@pytest.mark.parametrize(
    "fault, reason, phase", FAULTS, ids=[f[1] + "-" + f[0].kind for f in FAULTS]
)
async def test_each_fault_on_the_wire_fails_over_cleanly(
    autojump_clock, kinds, fault, reason, phase
):
    kind_a, kind_b = kinds
    async with (
        open_simulated_provider(FaultSchedule.always(fault)) as a,
        open_simulated_provider() as b,
    ):
        url = {"openai": lambda s: s.base_url_openai, "anthropic": lambda s: s.base_url_anthropic}
        cfg = config(kind_a, url[kind_a](a), kind_b, url[kind_b](b))
        events, text = await stream_once(cfg, adapters(cfg))
        with trio.fail_after(5):
            await a.wait_all_closed()
            await b.wait_all_closed()
    assert isinstance(events[-1], Done) and events[-1].provider == "b"
    assert text == ANSWER
    [failover] = [e for e in events if isinstance(e, Failover)]
    assert (failover.reason, failover.phase) == (reason, phase)
    assert a.open_attempts == [] and b.open_attempts == []


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_malformed_and_missing_done_do_not_fail_over(autojump_clock, kind):
    schedule = FaultSchedule((), default=Behaviour("malformed", at_token=4))
    async with open_simulated_provider(schedule) as a, open_simulated_provider() as b:
        url = a.base_url_anthropic if kind == "anthropic" else a.base_url_openai
        cfg = config(kind, url, "openai", b.base_url_openai)
        events, text = await stream_once(cfg, adapters(cfg))
    assert text == ANSWER and events[-1].provider == "a"
    assert not [e for e in events if isinstance(e, Failover)]


async def test_an_upstream_client_error_reaches_the_client_with_the_providers_words(autojump_clock):
    fault = Behaviour(
        "status", status=400, code="invalid_request_error", message="temperature too high"
    )
    async with (
        open_simulated_provider(FaultSchedule.always(fault)) as a,
        open_simulated_provider() as b,
    ):
        cfg = config("openai", a.base_url_openai, "openai", b.base_url_openai)
        events, _ = await stream_once(cfg, adapters(cfg))
    error = events[-1]
    assert isinstance(error, StreamError) and error.code == "upstream_rejected"
    assert error.status == 400 and "temperature too high" in error.message
    assert b.log == []


# --- the same faults, injected inside httpx ------------------------------------------------------


def sse_body(tokens: list[str], *, finish: bool = True) -> list[bytes]:
    import orjson

    chunks = []
    for token in tokens:
        chunk = {
            "id": "c",
            "object": "chat.completion.chunk",
            "model": "ma",
            "choices": [{"index": 0, "delta": {"content": token}, "finish_reason": None}],
        }
        chunks.append(b"data: " + orjson.dumps(chunk) + b"\n\n")
    if finish:
        end = {
            "id": "c",
            "object": "chat.completion.chunk",
            "model": "ma",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        }
        chunks.append(b"data: " + orjson.dumps(end) + b"\n\ndata: [DONE]\n\n")
    return chunks


class FaultyStream(httpx.AsyncByteStream):
    """A response body that yields some chunks, then raises what httpx raises on a broken read."""

    def __init__(self, chunks: list[bytes], error: Exception | None) -> None:
        self.chunks = chunks
        self.error = error
        self.closed = False

    async def __aiter__(self):
        for chunk in self.chunks:
            await trio.lowlevel.checkpoint()
            yield chunk
        if self.error is not None:
            raise self.error

    async def aclose(self) -> None:
        self.closed = True


INJECTED = [
    ("connect", httpx.ConnectError("All connection attempts failed"), None, "connect_error"),
    ("connect-timeout", httpx.ConnectTimeout("timed out"), None, "connect_error"),
    ("read-error", None, httpx.ReadError("connection reset by peer"), "reset"),
    (
        "protocol-error",
        None,
        httpx.RemoteProtocolError("peer closed connection without sending complete message body"),
        "reset",
    ),
]


@pytest.mark.parametrize("name, on_send, on_read, reason", INJECTED, ids=[i[0] for i in INJECTED])
async def test_faults_raised_inside_httpx_fail_over(autojump_clock, name, on_send, on_read, reason):
    tokens = answer_tokens(PROMPT)
    streams: list[FaultyStream] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if on_send is not None:
            raise on_send
        body = FaultyStream(sse_body(tokens[:5], finish=False), on_read)
        streams.append(body)
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=body)

    async with open_simulated_provider() as b:
        cfg = config("openai", "http://a.invalid/v1", "openai", b.base_url_openai)
        client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        events, text = await stream_once(cfg, adapters(cfg, a=client))
    assert text == ANSWER and isinstance(events[-1], Done) and events[-1].provider == "b"
    [failover] = [e for e in events if isinstance(e, Failover)]
    assert failover.reason == reason
    assert all(s.closed for s in streams)


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_upstream_connections_are_reused_across_streams(autojump_clock, kind):
    async with open_simulated_provider() as a, open_simulated_provider() as b:
        url = a.base_url_anthropic if kind == "anthropic" else a.base_url_openai
        cfg = config(kind, url, "openai", b.base_url_openai)
        providers = adapters(cfg)
        async with open_baton(cfg, providers) as baton:
            for _ in range(5):
                handle = baton.start_stream(route="default", messages=PROMPT)
                events = [e async for e in handle]
                assert isinstance(events[-1], Done)
        for p in providers.values():
            await p.aclose()
        assert len(a.log) == 5
        assert a.connections == 1  # keep-alive: one connection served all five streams


async def test_an_abandoned_stream_is_not_drained_but_closed(autojump_clock):
    async with (
        open_simulated_provider(FaultSchedule.always(Behaviour("drip", token_delay=1.0))) as a,
        open_simulated_provider() as b,
    ):
        cfg = config("openai", a.base_url_openai, "openai", b.base_url_openai)
        providers = adapters(cfg)
        async with open_baton(cfg, providers) as baton:
            handle = baton.start_stream(route="default", messages=PROMPT)
            seen = 0
            async for event in handle:
                if isinstance(event, Delta):
                    seen += 1
                    if seen == 3:
                        handle.cancel()
        for p in providers.values():
            await p.aclose()
        with trio.fail_after(5):
            await a.wait_all_closed()
    assert len(a.log[0].tokens_sent) <= 4


async def test_a_provider_with_many_connections_keeps_its_limit_and_reuses_them(autojump_clock):
    """Its connections are split into several httpx pools; together they act as one pool."""
    slow = FaultSchedule.always(Behaviour("drip", token_delay=0.5))
    async with open_simulated_provider(slow) as a, open_simulated_provider() as b:
        cfg = config("openai", a.base_url_openai, "openai", b.base_url_openai, max_connections=70)
        providers = adapters(cfg)

        async def collect(handle, results: list[list]) -> None:
            results.append([e async for e in handle])

        async with open_baton(cfg, providers) as baton:
            for _ in range(2):
                results: list[list] = []
                async with trio.open_nursery() as nursery:
                    for _ in range(70):
                        handle = baton.start_stream(route="default", messages=PROMPT)
                        nursery.start_soon(collect, handle, results)
                assert len(results) == 70
                for events in results:
                    assert isinstance(events[-1], Done) and events[-1].provider == "a"
                    assert "".join(e.text for e in events if isinstance(e, Delta)) == ANSWER
        for p in providers.values():
            await p.aclose()
    assert len(a.log) == 140
    assert a.connections == 70  # all 70 open at once, then every one reused for the second round


async def test_under_load_reads_are_paced_into_fewer_larger_deltas_with_the_same_text(
    autojump_clock,
):
    """A busy event loop makes reads wait, so each carries more tokens; the answer is unchanged."""
    # A read carries every token that arrived meanwhile only with the merging chunked reader,
    # which `baton serve` installs at start-up (h11's own reader yields a token per event).
    assert install_merging_chunked_reader()

    async def deltas(max_read_delay: float) -> list[str]:
        drip = FaultSchedule.always(Behaviour("drip", token_delay=0.02))
        async with open_simulated_provider(drip) as a:
            cfg = config_from_dict({
                "server": {"max_read_delay": max_read_delay},
                "providers": {
                    "a": {"kind": "openai", "base_url": a.base_url_openai, "idle_timeout": 30.0}
                },
                "routes": {"default": {"targets": [{"provider": "a", "model": "ma"}]}},
            })  # fmt: skip
            providers = adapters(cfg)
            async with open_baton(cfg, providers) as baton, trio.open_nursery() as nursery:
                nursery.start_soon(lag_the_loop, autojump_clock)
                events = [e async for e in baton.start_stream(route="default", messages=PROMPT)]
                nursery.cancel_scope.cancel()
            for p in providers.values():
                await p.aclose()
        assert isinstance(events[-1], Done)
        return [e.text for e in events if isinstance(e, Delta)]

    tokens = answer_tokens(PROMPT)
    unpaced, paced = await deltas(0.0), await deltas(0.25)
    assert "".join(unpaced) == "".join(paced) == ANSWER
    assert len(unpaced) == len(tokens)  # without pacing every token is its own read and delta
    assert len(paced) < len(tokens) / 3, (len(paced), len(tokens))
    assert paced[0] == tokens[0]  # the first text is never held back


MIDSTREAM = [f for f in FAULTS if f[2] == "midstream"]


@pytest.mark.parametrize(
    "fault, reason, phase", MIDSTREAM, ids=[f[1] + "-" + f[0].kind for f in MIDSTREAM]
)
async def test_a_paced_stream_fails_over_as_cleanly_as_an_unpaced_one(
    autojump_clock, fault, reason, phase
):
    """A fault that lands while reads are paced still fails over with the exact text."""
    slow_fault = FaultSchedule.always(attrs.evolve(fault, token_delay=0.05))
    slow = FaultSchedule.always(Behaviour("drip", token_delay=0.05))
    async with open_simulated_provider(slow_fault) as a, open_simulated_provider(slow) as b:
        cfg = config("openai", a.base_url_openai, "openai", b.base_url_openai)
        providers = adapters(cfg)
        async with open_baton(cfg, providers) as baton, trio.open_nursery() as nursery:
            nursery.start_soon(lag_the_loop, autojump_clock)
            handle = baton.start_stream(route="default", messages=PROMPT)
            events, paces = [], []
            async for event in handle:
                events.append(event)
                paces.append(baton.statistics().load.read_delay)
            nursery.cancel_scope.cancel()
        for p in providers.values():
            await p.aclose()
        with trio.fail_after(5):
            await a.wait_all_closed()
            await b.wait_all_closed()
    assert [e.seq for e in events] == list(range(len(events)))
    assert isinstance(events[-1], Done) and events[-1].provider == "b"
    assert max(paces) == 0.25  # reads were paced at the maximum while the stream ran
    assert "".join(e.text for e in events if isinstance(e, Delta)) == ANSWER
    [failover] = [e for e in events if isinstance(e, Failover)]
    assert (failover.reason, failover.phase) == (reason, phase)
