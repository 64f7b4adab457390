"""The benchmark: Baton's added latency, throughput, CPU and memory against a fast local mock.

Four processes on 127.0.0.1: the mock provider (``_mock``), Baton under test
(``_proxy``, the same servers ``baton serve`` runs), a bare pass-through proxy on the same
libraries (``_passthrough``) and this one, the load generator. Four targets get the same
load: ``direct`` (the HTTP client straight to the mock: the baseline), ``passthrough`` (what
trio, hypercorn and httpx cost with nothing of Baton's on top), ``http`` (Baton's
OpenAI-compatible SSE API) and ``ws`` (Baton's WebSocket API). Three workloads, each run in
rounds that take the targets in turn (rotating who goes first), so that noise on the machine
hits all targets alike:

- ``latency``: one stream at a time, ``latency_tokens`` tokens 10 ms apart: time to first
  token (TTFT) percentiles, and Baton's added TTFT (its p50 minus direct's).
- ``throughput``: ``throughput_streams`` concurrent streams of 200 tokens with no delay, each
  worker starting its next stream as soon as one ends, for ``throughput_seconds``: tokens/s,
  streams/s, Baton's CPU seconds per 1,000 tokens.
- ``capacity``: ``capacity_streams`` slow streams (``capacity_rate`` tokens/s each), started
  evenly over ``capacity_ramp`` seconds so that all are open at once: TTFT p95 and Baton's peak
  resident memory.

The load generator is one trio process. Its HTTP client is the lean ``RawHTTPClient`` by default:
httpx costs ~50-200 µs of CPU per body read and saturated a core at 500 slow streams, which made
the client, not Baton, set the pace (``http_client="httpx"`` still measures with it). WebSocket
streams share ``ws_streams_per_connection`` per connection, as a real client multiplexes them.

``run_bench`` runs what ``BenchSettings`` (``_settings``) sizes and returns the
``Measurement`` of every round; ``_report`` turns them into tables. Every loop is bounded by a
count and a deadline; the children die with the run.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import IO, Any

import attrs
import httpx
import orjson
import trio

from ._clients import (
    StreamResult,
    WSClient,
    http_stream,
    make_http_client,
    open_ws_client,
)
from ._http import RawHTTPClient
from ._procs import (
    Child,
    ProcessMeter,
    Usage,
    listen_overflows,
    open_child,
    own_cpu,
    system_busy,
)
from ._settings import (
    BATON_TARGETS,
    TARGETS,
    BenchSettings,
    Workload,
    proxy_config,
    workloads_of,
)

_STREAM_CAP = 200_000  # streams per throughput round, whatever the duration: a bound, not a goal
_RSS_SAMPLE_INTERVAL = 0.05


@attrs.frozen(kw_only=True)
class Measurement:
    """One round of one workload against one target, with the processes' costs over it.

    Costs, tokens and ``elapsed`` cover the measurement window: the whole round, or for
    throughput the steady part of it (streams already running, none yet winding down).
    ``round_tokens`` and ``round_proxy_cpu`` always cover the whole round: their ratio, the
    proxy's CPU per token, needs no estimate of which tokens fell in a window. The proxy is the
    pass-through for the ``passthrough`` target and Baton for the others (idle for ``direct``).
    """

    workload: str
    target: str
    round: int
    results: tuple[StreamResult, ...]  # every stream of the round
    elapsed: float
    tokens: int  # tokens delivered in the window (complete streams, or text received in it)
    streams_done: int  # streams that completed correctly in the window
    proxy_cpu: float
    mock_cpu: float
    client_cpu: float
    other_cpu: float  # the rest of the machine's busy CPU: other load that competed
    listen_overflows: int  # accept queues that overflowed (machine-wide)
    mock_connections: int  # TCP connections the mock accepted over the whole round
    proxy_peak_rss: int | None  # capacity only
    round_tokens: int  # tokens of every stream that completed correctly
    round_proxy_cpu: float


@attrs.frozen(kw_only=True)
class _Snapshot:
    """The counters a measurement subtracts, read at one moment."""

    time: float
    proxy: Usage
    mock: Usage
    client: float
    system: float
    overflows: int


@attrs.frozen(kw_only=True)
class BenchRun:
    """Everything a run measured, plus facts about the setup for the report."""

    settings: BenchSettings
    measurements: tuple[Measurement, ...]
    proxy_idle_rss: int
    proxy_final_status: dict[str, Any]  # Baton's /status document, as JSON gives it
    proxy_log_problem_count: int
    proxy_log_problems: tuple[str, ...]  # the first few
    peak_reset_works: bool
    profiles: dict[str, Path]


RunStream = Callable[[Workload, int], Awaitable[StreamResult]]
HTTPClient = httpx.AsyncClient | RawHTTPClient


class _Bench:
    """The load generator's connections to the targets and the meters of the children.

    ``ports`` and ``http`` map each HTTP target (``direct``, ``passthrough``, ``http``) to its
    port and its client.
    """

    def __init__(
        self, settings: BenchSettings, mock: Child, proxy: Child, passthrough: Child | None,
        ports: dict[str, int], http: dict[str, HTTPClient], ws: list[WSClient],
        control: httpx.AsyncClient,
    ) -> None:  # fmt: skip
        self.settings = settings
        self._control = control  # for /stats and /status, apart from the load's connections
        self.proxy = ProcessMeter(proxy.pid)
        self.mock = ProcessMeter(mock.pid)
        # The proxy each target measures: Baton, or the bare pass-through for its own target.
        self._meters = dict.fromkeys(TARGETS, self.proxy)
        if passthrough is not None:
            self._meters["passthrough"] = ProcessMeter(passthrough.pid)
        self._http, self._ws = http, ws
        self._urls = {
            target: f"http://127.0.0.1:{port}/v1/chat/completions" for target, port in ports.items()
        }
        self._mock_stats_url = f"http://127.0.0.1:{mock.info['port']}/stats"
        self.status_url = f"http://127.0.0.1:{proxy.info['http_port']}/status"

    def runner(self, target: str) -> RunStream:
        """How ``target`` runs one stream of a workload; ``index`` spreads WebSocket streams."""
        timeout = self.settings.stream_timeout
        per_connection = self.settings.ws_streams_per_connection

        async def http(workload: Workload, index: int) -> StreamResult:
            # The mock knows the workload by its model; the proxies, by the route's name.
            model = workload.mock_model if target == "direct" else workload.name
            return await http_stream(
                self._http[target], self._urls[target], model,
                expected_chars=workload.expected_chars, timeout=timeout,
            )  # fmt: skip

        async def ws(workload: Workload, index: int) -> StreamResult:
            client = self._ws[(index // per_connection) % len(self._ws)]
            return await client.stream(
                workload.name, expected_chars=workload.expected_chars, timeout=timeout
            )

        return ws if target == "ws" else http

    def _snapshot(self, proxy: ProcessMeter) -> _Snapshot:
        return _Snapshot(
            time=trio.current_time(), proxy=proxy.usage(), mock=self.mock.usage(),
            client=own_cpu(), system=system_busy(), overflows=listen_overflows(),
        )  # fmt: skip

    async def measure(
        self, workload: Workload, target: str, round_: int,
        load: Callable[[RunStream], Awaitable[list[StreamResult]]],
        *, track_memory: bool = False, window: tuple[float, float] | None = None,
    ) -> Measurement:  # fmt: skip
        """Run ``load`` against ``target`` and measure the processes' costs over it.

        ``window``: measure only from ``window[0]`` to ``window[1]`` seconds after the start
        (the load runs on to its end, unmeasured). Each complete stream then counts with the
        share of its lifetime that fell in the window: a proxy works on a stream all along,
        but may deliver its text in a burst at the end, so counting text as it arrives would
        make the window's tokens depend on when bursts happen to land.
        """
        proxy = self._meters[target]
        if track_memory:
            proxy.reset_peak()
        sampled: list[int] = []
        results: list[StreamResult] = []

        async def run_load() -> None:
            results.extend(await load(self.runner(target)))

        connections_before = await self._mock_connections()
        async with trio.open_nursery() as nursery:
            first = self._snapshot(proxy)
            if track_memory:
                sampled.append(first.proxy.rss)
                nursery.start_soon(self._sample_rss, proxy, sampled)
            async with trio.open_nursery() as loading:
                loading.start_soon(run_load)
                if window is not None:
                    await trio.sleep_until(first.time + window[0])
                    start = self._snapshot(proxy)
                    await trio.sleep_until(first.time + window[1])
                    end = self._snapshot(proxy)
            nursery.cancel_scope.cancel()
        last = self._snapshot(proxy)
        if window is None:
            start, end = first, last
        connections = await self._mock_connections() - connections_before
        elapsed = end.time - start.time
        round_tokens = workload.tokens * sum(r.ok for r in results)
        if window is None:
            tokens = round_tokens
        else:
            tokens = round(
                workload.tokens * sum(_overlap(r, start.time, end.time) for r in results if r.ok)
            )
        done = sum(r.ok and start.time <= r.started_at + r.elapsed <= end.time for r in results)
        proxy_cpu, mock_cpu = end.proxy.cpu - start.proxy.cpu, end.mock.cpu - start.mock.cpu
        client_cpu = end.client - start.client
        other_cpu = end.system - start.system - proxy_cpu - mock_cpu - client_cpu
        peak = max(end.proxy.peak_rss, *sampled) if track_memory else None
        return Measurement(
            workload=workload.name, target=target, round=round_, results=tuple(results),
            elapsed=elapsed, tokens=tokens, streams_done=done, proxy_cpu=proxy_cpu,
            mock_cpu=mock_cpu, client_cpu=client_cpu, other_cpu=max(0.0, other_cpu),
            listen_overflows=end.overflows - start.overflows, mock_connections=connections,
            proxy_peak_rss=peak, round_tokens=round_tokens,
            round_proxy_cpu=last.proxy.cpu - first.proxy.cpu,
        )  # fmt: skip

    async def _mock_connections(self) -> int:
        response = await self._control.get(self._mock_stats_url)
        return int(orjson.loads(response.content)["connections"])

    async def _sample_rss(self, proxy: ProcessMeter, sampled: list[int]) -> None:
        # VmHWM catches the true peak where it can be reset; sampling covers kernels where not.
        while True:
            sampled.append(proxy.usage().rss)
            await trio.sleep(_RSS_SAMPLE_INTERVAL)

    async def status(self) -> dict[str, Any]:
        """Baton's ``/status`` document (after a workload: are streams and slots all released?)."""
        response = await self._control.get(self.status_url)
        document: dict[str, Any] = orjson.loads(response.content)
        return document


def _overlap(result: StreamResult, start: float, end: float) -> float:
    """The share of ``result``'s lifetime that fell between ``start`` and ``end``."""
    if result.elapsed <= 0:
        return float(start <= result.started_at <= end)
    inside = min(end, result.started_at + result.elapsed) - max(start, result.started_at)
    return max(0.0, inside) / result.elapsed


async def sequential(workload: Workload, samples: int, run: RunStream) -> list[StreamResult]:
    """Run ``samples`` streams one after the other."""
    return [await run(workload, 0) for _ in range(samples)]


async def concurrent_for(
    workload: Workload, streams: int, seconds: float, run: RunStream
) -> list[StreamResult]:
    """Keep ``streams`` streams running; start no new one after ``seconds``."""
    results: list[StreamResult] = []
    deadline = trio.current_time() + seconds

    async def worker(index: int) -> None:
        while trio.current_time() < deadline and len(results) < _STREAM_CAP:
            results.append(await run(workload, index))

    async with trio.open_nursery() as nursery:
        for index in range(streams):
            nursery.start_soon(worker, index)
    return results


async def ramped(
    workload: Workload, streams: int, ramp: float, run: RunStream
) -> list[StreamResult]:
    """Start ``streams`` streams evenly over ``ramp`` seconds; each runs once to its end."""
    results: list[StreamResult] = []

    async def one(index: int) -> None:
        results.append(await run(workload, index))

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for index in range(streams):
            await trio.sleep_until(start + ramp * index / streams)
            nursery.start_soon(one, index)
    return results


def _rotate(targets: Sequence[str], round_: int) -> list[str]:
    shift = round_ % len(targets)
    return [*targets[shift:], *targets[:shift]]


async def _workload_rounds(
    bench: _Bench, workload: Workload, say: Callable[[str], None]
) -> list[Measurement]:
    """Every round of one workload, the targets taken in turn."""
    s = bench.settings
    out: list[Measurement] = []
    window: tuple[float, float] | None = None
    if workload.name == "latency":
        rounds, load, memory = (
            s.latency_rounds,
            partial(sequential, workload, s.latency_samples),
            False,
        )
    elif workload.name == "throughput":
        rounds = s.throughput_rounds
        load = partial(concurrent_for, workload, s.throughput_streams, s.throughput_seconds)
        # Skip the first streams' start-up; stop before the last ones wind down.
        window, memory = (min(0.5, s.throughput_seconds / 4), s.throughput_seconds), False
    else:
        rounds, load, memory = (
            1,
            partial(ramped, workload, s.capacity_streams, s.capacity_ramp),
            True,
        )
    for round_ in range(rounds):
        for target in _rotate(s.targets, round_):
            measurement = await bench.measure(
                workload, target, round_, load, track_memory=memory, window=window
            )
            out.append(measurement)
            failed = sum(not r.ok for r in measurement.results)
            say(
                f"  {workload.name:<10} round {round_ + 1}/{rounds} {target:<6} "
                f"{len(measurement.results):>5} streams, "
                f"{measurement.tokens / measurement.elapsed:>9,.0f} tok/s"
                + (f", {failed} FAILED" if failed else "")
            )
            # Let the proxy finish closing the round's streams before the next target starts.
            await trio.sleep(0.2)
    return out


async def _warm_up(bench: _Bench, workloads: dict[str, Workload]) -> None:
    """Open every connection a workload will need and let every code path run once."""
    s = bench.settings
    streams = min(s.warmup_streams, s.throughput_streams)
    for target in s.targets:
        run = bench.runner(target)
        await sequential(workloads["latency"], 2, run)
        async with trio.open_nursery() as nursery:
            for index in range(streams):
                nursery.start_soon(run, workloads["throughput"], index)


async def run_bench(
    settings: BenchSettings,
    *,
    say: Callable[[str], None] = print,
    profile_dir: Path | None = None,
    profile_workload: str = "throughput",
    proxy_log_level: str = "INFO",
    log_file: IO[bytes] | None = None,
) -> BenchRun:
    """Start the mock and Baton, run every workload against every target, stop them.

    ``say`` gets a progress line per round. With ``profile_dir``, Baton is then profiled with
    py-spy under ``profile_workload`` (one profile per Baton target) after the measured
    rounds, so that sampling costs none of them. Raises ``RuntimeError`` if a child fails to
    start; a failing stream is recorded, not raised.
    """
    from ._profile import profile_proxy  # py-spy is optional: only ``--profile`` needs it

    workloads = workloads_of(settings)
    chosen = [workloads[name] for name in settings.workloads]
    slow = "capacity" in settings.workloads or (
        profile_dir is not None and profile_workload == "capacity"
    )
    concurrency = max(settings.throughput_streams, settings.capacity_streams if slow else 0)
    max_connections = max(64, 2 * concurrency)
    with tempfile.TemporaryDirectory(prefix="baton-bench-") as tmp:
        # A local temporary file opens at once: no thread needed. Closed in the finally below.
        logs = log_file or open(Path(tmp) / "children.log", "w+b")  # noqa: SIM115, ASYNC230
        try:
            async with AsyncExitStack() as stack:
                mock_args = ["--burst", str(settings.mock_burst)]
                mock = await stack.enter_async_context(
                    open_child("scenarios.bench._mock", mock_args, stderr=logs)
                )
                config = Path(tmp) / "baton.toml"
                config.write_text(
                    proxy_config(
                        mock.info["port"], list(workloads.values()), max_connections=max_connections
                    )
                )
                proxy_args = [str(config), "--log-level", proxy_log_level]
                proxy = await stack.enter_async_context(
                    open_child("scenarios.bench._proxy", proxy_args, stderr=logs)
                )
                passthrough = None
                if "passthrough" in settings.targets:
                    passthrough = await stack.enter_async_context(
                        open_child("scenarios.bench._passthrough", [str(config)], stderr=logs)
                    )
                say(f"mock pid {mock.pid} port {mock.info['port']}; Baton pid {proxy.pid} "
                    f"http {proxy.info['http_port']} ws {proxy.info['ws_port']}"
                    + (f"; pass-through pid {passthrough.pid}" if passthrough else ""))  # fmt: skip
                idle_rss = ProcessMeter(proxy.pid).usage().rss
                connections = max(1, math.ceil(concurrency / settings.ws_streams_per_connection))
                ports = {"direct": mock.info["port"], "http": proxy.info["http_port"]}
                if passthrough is not None:
                    ports["passthrough"] = passthrough.info["http_port"]
                control = await stack.enter_async_context(httpx.AsyncClient(timeout=30))
                http = await stack.enter_async_context(
                    _open_http_clients(settings.http_client, ports, max_connections)
                )
                ws_url = f"ws://127.0.0.1:{proxy.info['ws_port']}/v1/stream"
                ws = await stack.enter_async_context(_open_ws_clients(ws_url, connections))
                bench = _Bench(settings, mock, proxy, passthrough, ports, http, ws, control)
                peak_reset = bench.proxy.reset_peak()
                say("warming up")
                await _warm_up(bench, workloads)
                measurements: list[Measurement] = []
                for workload in chosen:
                    measurements += await _workload_rounds(bench, workload, say)
                await trio.sleep(0.5)  # streams finishing their cleanup
                status = await bench.status()
                profiles: dict[str, Path] = {}
                if profile_dir is not None:
                    for target in BATON_TARGETS:
                        say(
                            f"profiling Baton with py-spy under the {profile_workload} workload "
                            f"via {target}"
                        )
                        load, seconds = _profile_load(settings, workloads[profile_workload])
                        profiles[target] = await profile_proxy(
                            proxy.pid, bench.runner(target), load,
                            profile_dir / f"proxy-{profile_workload}-{target}", seconds=seconds,
                        )  # fmt: skip
            problem_count, problems = _log_problems(logs)
        finally:
            if log_file is None:
                logs.close()
    return BenchRun(
        settings=settings, measurements=tuple(measurements), proxy_idle_rss=idle_rss,
        proxy_final_status=status, proxy_log_problem_count=problem_count,
        proxy_log_problems=problems, peak_reset_works=peak_reset, profiles=profiles,
    )  # fmt: skip


def _profile_load(
    settings: BenchSettings, workload: Workload
) -> tuple[Callable[[RunStream], Awaitable[list[StreamResult]]], float]:
    """The load to profile Baton under, and how many seconds py-spy should record."""
    if workload.name == "capacity":
        seconds = settings.capacity_ramp + workload.tokens * workload.delay
        return partial(ramped, workload, settings.capacity_streams, settings.capacity_ramp), seconds
    if workload.name == "latency":
        samples = 50
        return partial(sequential, workload, samples), samples * (
            workload.tokens + 2
        ) * workload.delay
    seconds = max(settings.throughput_seconds, 5.0)
    return partial(concurrent_for, workload, settings.throughput_streams, seconds), seconds


@asynccontextmanager
async def _open_http_clients(
    kind: str, ports: dict[str, int], max_connections: int
) -> AsyncIterator[dict[str, HTTPClient]]:
    """The load's HTTP clients of the ``kind`` asked for, one per HTTP target (in ``ports``)."""
    if kind == "httpx":
        async with AsyncExitStack() as stack:
            yield {
                target: await stack.enter_async_context(make_http_client(max_connections))
                for target in ports
            }
        return
    clients: dict[str, HTTPClient] = {
        target: RawHTTPClient("127.0.0.1", port, max_idle=max_connections)
        for target, port in ports.items()
    }
    try:
        yield clients
    finally:
        with trio.move_on_after(5, shield=True):
            for client in clients.values():
                await client.aclose()


@asynccontextmanager
async def _open_ws_clients(url: str, count: int) -> AsyncIterator[list[WSClient]]:
    """Open ``count`` WebSocket connections to Baton for the run; close them at the end."""
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(open_ws_client(url)) for _ in range(count)]


def _log_problems(logs: IO[bytes], limit: int = 20) -> tuple[int, tuple[str, ...]]:
    """How many of the children's log lines are warnings, errors or tracebacks; the first few."""
    logs.flush()
    logs.seek(0)
    count = 0
    first: list[str] = []
    for raw in logs:
        line = raw.decode(errors="replace").rstrip()
        if any(level in line for level in (" WARNING ", " ERROR ", " CRITICAL ", "Traceback")):
            count += 1
            if len(first) < limit:
                first.append(line[:300])
    return count, tuple(first)
