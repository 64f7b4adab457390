"""``baton scenarios reliability``: the same failing providers, straight and through Baton.

Two runs over real sockets on 127.0.0.1 and the real clock (latency here is measured, not
simulated). Each provider is a ``SimulatedProvider`` whose schedule breaks each request with
probability ``fail_rate`` (refused, 5xx, 429, reset mid-answer, stalled, no finish reason,
in-stream error), written as a seeded per-request table (``fault_table``), so both runs meet
the same faults at the same request indexes.

- ``direct``: a plain httpx SSE client streams from the OpenAI simulator. A stream that breaks
  is a failed stream; one that ends without a finish reason is failed too (the client cannot
  know it holds the whole answer).
- ``baton``: the same client streams from Baton's OpenAI-compatible HTTP API, in front of the
  OpenAI simulator and an Anthropic simulator as its backup (faulty at ``backup_fail_rate``).

Every client's text is compared with its deterministic answer. ``run_reliability`` returns a
``ReliabilityReport``; ``format_reliability`` prints the two runs side by side.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import httpx
import orjson
import trio

from actors import config_from_dict, open_baton

from ._faults import Behaviour, FaultSchedule
from ._scenario import client_prompt
from ._strategies import fault_table
from ._textgen import answer_tokens
from .sim import open_simulated_provider

CLIENT_TIMEOUT_FACTOR = 2.0  # the clients' read timeout, in multiples of Baton's upstream timeout
STREAM_DEADLINE = 30.0  # seconds any one stream may take, whatever it meets
_TABLE_PER_STREAM = 5  # request indexes per stream the fault tables cover (Baton retries)


@attrs.frozen(kw_only=True)
class ReliabilitySettings:
    """The size and fault rates of a reliability run."""

    streams: int = 200
    fail_rate: float = 0.08
    backup_fail_rate: float | None = None  # None: the same as fail_rate
    token_delay: float = 0.005
    timeout: float = 2.0  # Baton's first-token and idle timeouts upstream
    concurrency: int = 8  # streams at once: simulators, Baton and clients share one process
    seed: int = 1
    budget: float = 60.0  # seconds for the whole run; streams not ended by then count as failed

    @property
    def backup_rate(self) -> float:
        return self.fail_rate if self.backup_fail_rate is None else self.backup_fail_rate


@attrs.frozen(kw_only=True)
class StreamResult:
    """What one client saw: times from sending the request, the text, how it ended."""

    ttft: float | None
    elapsed: float
    text: str
    finished: bool  # a finish reason arrived
    error: str | None


@attrs.frozen(kw_only=True)
class SideResult:
    """One run (direct or through Baton), judged against the answers."""

    name: str
    results: tuple[StreamResult, ...]
    answers: tuple[str, ...] = attrs.field(repr=False)
    failovers: int | None
    faults: int  # requests the providers failed on purpose
    requests: int  # requests the providers received

    def ok(self, i: int) -> bool:
        r = self.results[i]
        return r.error is None and r.finished and r.text == self.answers[i]

    @property
    def failed(self) -> int:
        return sum(not self.ok(i) for i in range(len(self.results)))

    @property
    def failure_rate(self) -> float:
        return self.failed / max(1, len(self.results))

    @property
    def cut_off(self) -> int:
        """Streams that broke after showing some text: the user read part of an answer."""
        return sum(not self.ok(i) and bool(r.text) for i, r in enumerate(self.results))

    @property
    def wrong_text(self) -> int:
        """Duplicated or lost text: text that is not a prefix of the answer, or an answer that
        ended like a complete one (a finish reason, no error) without all of its text."""
        count = 0
        for i, r in enumerate(self.results):
            answer = self.answers[i]
            if not answer.startswith(r.text) or (
                r.finished and r.error is None and r.text != answer
            ):
                count += 1
        return count

    def ttft(self, q: float) -> float | None:
        return _quantile([r.ttft for r in self.results if r.ttft is not None], q)

    def total(self, q: float) -> float | None:
        return _quantile([r.elapsed for i, r in enumerate(self.results) if self.ok(i)], q)


@attrs.frozen(kw_only=True)
class ReliabilityReport:
    settings: ReliabilitySettings
    direct: SideResult
    baton: SideResult


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _pick_fault(token_delay: float, stall: float) -> Callable[[random.Random], Behaviour]:
    """Realistic breakage: refusals, overload statuses, resets mid-answer, stalls, lost ends."""

    def pick(rng: random.Random) -> Behaviour:
        at = rng.randint(1, 30)
        options = [
            (3, Behaviour("refuse")),
            (3, Behaviour("status", status=503)),
            (1, Behaviour("status", status=500)),
            (1, Behaviour("status", status=429)),
            (4, Behaviour("reset", at_token=at)),
            (1, Behaviour("stall", stall=stall)),
            (1, Behaviour("stall", at_token=at, stall=stall)),
            (1, Behaviour("no_finish")),
            (1, Behaviour("stream_error", at_token=at)),
        ]
        behaviour = rng.choices([b for _, b in options], [w for w, _ in options])[0]
        return attrs.evolve(behaviour, token_delay=token_delay)

    return pick


def schedules(settings: ReliabilitySettings) -> tuple[FaultSchedule, FaultSchedule]:
    """The primary's and the backup's fault tables (the direct run meets the primary's)."""
    size = settings.streams * _TABLE_PER_STREAM + 50
    pick = _pick_fault(settings.token_delay, stall=settings.timeout * 5)
    default = Behaviour("healthy", token_delay=settings.token_delay)
    primary = fault_table(settings.fail_rate, size, pick, seed=settings.seed, default=default)
    backup = fault_table(
        settings.backup_rate, size, pick, seed=settings.seed + 7919, default=default
    )
    return primary, backup


async def sse_stream(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> StreamResult:
    """Stream one chat completion as a plain OpenAI SSE client would, and record what came."""
    start = trio.current_time()
    text, ttft, finished, error = "", None, False, None
    try:
        with trio.fail_after(STREAM_DEADLINE):
            headers = {"content-type": "application/json"}
            async with client.stream(
                "POST", url, content=orjson.dumps(body), headers=headers
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    error = f"HTTP {response.status_code}"
                else:
                    async for line in response.aiter_lines():
                        if not line.startswith("data:"):
                            continue
                        data = line[5:].strip()
                        if data == "[DONE]":
                            break
                        chunk = orjson.loads(data)
                        if "error" in chunk:
                            what = chunk["error"]
                            error = f"error event: {what.get('code') or what.get('type')}"
                            break
                        for choice in chunk.get("choices") or ():
                            content = (choice.get("delta") or {}).get("content")
                            if content:
                                ttft = trio.current_time() - start if ttft is None else ttft
                                text += content
                            finished = finished or bool(choice.get("finish_reason"))
                    if error is None and not finished:
                        error = "ended without a finish reason"
    except httpx.HTTPError as exc:
        error = type(exc).__name__
    except trio.TooSlowError:
        error = f"no end within {STREAM_DEADLINE:g} s"
    except orjson.JSONDecodeError:
        error = "undecodable event"
    return StreamResult(
        ttft=ttft, elapsed=trio.current_time() - start, text=text, finished=finished, error=error
    )


async def _drive(
    settings: ReliabilitySettings, one: Callable[[int], Awaitable[StreamResult]]
) -> tuple[StreamResult, ...]:
    """Run ``settings.streams`` streams, ``concurrency`` at a time, within the run's budget."""
    results: list[StreamResult | None] = [None] * settings.streams
    limiter = trio.CapacityLimiter(settings.concurrency)

    async def run(i: int) -> None:
        async with limiter:
            results[i] = await one(i)

    with trio.move_on_after(settings.budget / 2):
        async with trio.open_nursery() as nursery:
            for i in range(settings.streams):
                nursery.start_soon(run, i)
    unfinished = StreamResult(
        ttft=None, elapsed=settings.budget / 2, text="", finished=False, error="not run in time"
    )
    return tuple(r if r is not None else unfinished for r in results)


def _body(i: int, model: str) -> dict[str, Any]:
    messages = [{"role": m.role, "content": m.text} for m in client_prompt(i)]
    return {"model": model, "messages": messages, "stream": True}


def _client(settings: ReliabilitySettings) -> httpx.AsyncClient:
    # Both clients give up after twice Baton's upstream timeout of silence: Baton needs that
    # long to notice a stall and fail over; a direct client waits as long for nothing.
    read = CLIENT_TIMEOUT_FACTOR * settings.timeout
    timeout = httpx.Timeout(connect=settings.timeout, read=read, write=5.0, pool=None)
    limits = httpx.Limits(
        max_connections=settings.concurrency, max_keepalive_connections=settings.concurrency
    )
    return httpx.AsyncClient(timeout=timeout, limits=limits)


async def _direct(
    settings: ReliabilitySettings, schedule: FaultSchedule, answers: tuple[str, ...]
) -> SideResult:
    async with open_simulated_provider(schedule) as sim, _client(settings) as client:
        url = sim.base_url_openai + "/chat/completions"
        results = await _drive(settings, lambda i: sse_stream(client, url, _body(i, "sim-gpt")))
        faults = sum(r.behaviour.kind != "healthy" for r in sim.log)
        return SideResult(
            name="direct",
            results=results,
            answers=answers,
            failovers=None,
            faults=faults,
            requests=len(sim.log),
        )


async def _through_baton(
    settings: ReliabilitySettings,
    primary: FaultSchedule,
    backup: FaultSchedule,
    answers: tuple[str, ...],
) -> SideResult:
    from transport import build_providers, serve_http

    async with open_simulated_provider(primary) as a, open_simulated_provider(backup) as b:
        common = {
            "first_token_timeout": settings.timeout, "idle_timeout": settings.timeout,
            "connect_timeout": settings.timeout, "max_connections": 2 * settings.concurrency,
        }  # fmt: skip
        config = config_from_dict(
            {
                "providers": {
                    "primary": {"kind": "openai", "base_url": a.base_url_openai, **common},
                    "backup": {"kind": "anthropic", "base_url": b.base_url_anthropic, **common},
                },
                "routes": {
                    "default": {
                        "targets": [
                            {"provider": n, "model": f"sim-{n}"} for n in ("primary", "backup")
                        ]
                    }
                },
            },
            source="reliability",
        )
        adapters = build_providers(config, environ={})
        try:
            async with (
                open_baton(config, adapters, seed=settings.seed) as baton,
                _client(settings) as client,
            ):
                async with trio.open_nursery() as nursery:
                    port = await nursery.start(
                        functools.partial(serve_http, baton, host="127.0.0.1", port=0)
                    )
                    url = f"http://127.0.0.1:{port}/v1/chat/completions"
                    results = await _drive(
                        settings, lambda i: sse_stream(client, url, _body(i, "default"))
                    )
                    nursery.cancel_scope.cancel()
                failovers = baton.statistics().failovers
        finally:
            with trio.move_on_after(5, shield=True):
                for adapter in adapters.values():
                    await adapter.aclose()  # type: ignore[attr-defined]
        faults = sum(r.behaviour.kind != "healthy" for sim in (a, b) for r in sim.log)
        requests = len(a.log) + len(b.log)
        return SideResult(
            name="baton",
            results=results,
            answers=answers,
            failovers=failovers,
            faults=faults,
            requests=requests,
        )


def run_reliability(settings: ReliabilitySettings) -> ReliabilityReport:
    """Run both sides on the real clock (blocks for up to ``settings.budget`` seconds)."""
    primary, backup = schedules(settings)
    answers = tuple("".join(answer_tokens(client_prompt(i))) for i in range(settings.streams))

    async def main() -> ReliabilityReport:
        direct = await _direct(settings, primary, answers)
        through = await _through_baton(settings, primary, backup, answers)
        return ReliabilityReport(settings=settings, direct=direct, baton=through)

    return trio.run(main)


def format_reliability(report: ReliabilityReport, *, command: str | None = None) -> str:
    """The two runs side by side, as a table."""
    s, d, b = report.settings, report.direct, report.baton

    def ms(value: float | None) -> str:
        return (
            "-" if value is None else f"{value * 1000:.0f} ms" if value < 10 else f"{value:.1f} s"
        )

    rows = [
        ("stream failure rate", f"{d.failure_rate:.1%}", f"{b.failure_rate:.1%}"),
        ("  failed streams", f"{d.failed}", f"{b.failed}"),
        ("  cut off mid-answer", f"{d.cut_off}", f"{b.cut_off}"),
        ("duplicated/lost text", f"{d.wrong_text}", f"{b.wrong_text}"),
        ("p50 time to first token", ms(d.ttft(0.5)), ms(b.ttft(0.5))),
        ("p95 time to first token", ms(d.ttft(0.95)), ms(b.ttft(0.95))),
        ("p95 total latency", ms(d.total(0.95)), ms(b.total(0.95))),
        ("failovers", "-", f"{b.failovers}"),
        ("upstream requests (faulty)", f"{d.requests} ({d.faults})", f"{b.requests} ({b.faults})"),
    ]
    head = (
        f"Reliability: {s.streams} streams, {s.fail_rate:.0%} of requests broken at the primary"
        f" ({s.backup_rate:.0%} at Baton's backup), {s.token_delay * 1000:g} ms per token,"
        f" seed {s.seed}; Baton times out upstream after {s.timeout:g} s, clients after"
        f" {s.timeout * CLIENT_TIMEOUT_FACTOR:g} s; {s.concurrency} streams at once,"
        " all in one process"
    )
    width = max(len(r[0]) for r in rows) + 2
    lines = [head, "", f"{'':<{width}}{'direct':>14}{'through Baton':>16}"]
    lines += [f"{label:<{width}}{left:>14}{right:>16}" for label, left, right in rows]
    if command:
        lines += ["", f"command: {command}"]
    return "\n".join(lines)
