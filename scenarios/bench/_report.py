"""The benchmark's report: rounds folded into one row per workload and target, then tables.

``summarize`` folds a ``BenchRun``'s measurements into ``Row``s; ``format_report`` prints the
three workload tables, Baton's targets with a verdict each, and notes on what bounded the
numbers (a load generator using a whole core is a ceiling on what any target can show).
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Sequence
from typing import Any

import attrs

from ._clients import percentile
from ._run import BenchRun, Measurement
from ._settings import BATON_TARGETS, TARGETS, WORKLOADS, BenchSettings

# Baton's targets (issue 7), checked for both the HTTP/SSE and the WebSocket side.
TARGET_ADDED_TTFT_MS = 1.5
TARGET_TOKENS_PER_S = 40_000
TARGET_CPU_PER_1K = 0.025
TARGET_CAPACITY_P95_S = 0.3
TARGET_CAPACITY_RSS_MB = 120
_SATURATED = 0.85  # share of one core above which a single-threaded process is the bottleneck


@attrs.frozen(kw_only=True)
class Row:
    """One workload against one target, all rounds together."""

    workload: str
    target: str
    streams: int
    errors: int
    first_errors: tuple[str, ...]
    ttft_ms: tuple[float, float, float]  # p50, p95, p99 of the complete streams
    elapsed: float
    tokens_per_s: float
    streams_per_s: float
    proxy_cpu_per_1k: float | None  # the proxy's CPU seconds per 1,000 tokens; None for direct
    proxy_cores: float
    mock_cores: float
    client_cores: float
    other_cores: float  # other load on the machine meanwhile
    listen_overflows: int
    connections_per_stream: float  # new TCP connections the mock saw per stream
    events_per_stream: float  # text events a client received per stream (merging shows here)
    longest_gap_ms: float  # p95 over streams of each one's longest wait between text events
    peak_rss_mb: float | None


def summarize(measurements: Sequence[Measurement]) -> list[Row]:
    """One ``Row`` per workload and target, in the order workloads and targets were run."""
    rows = []
    for workload in WORKLOADS:
        for target in TARGETS:
            mine = [m for m in measurements if m.workload == workload and m.target == target]
            if mine:
                rows.append(_row(workload, target, mine))
    return rows


def _row(workload: str, target: str, mine: list[Measurement]) -> Row:
    results = [r for m in mine for r in m.results]
    ok = [r for r in results if r.ok]
    ttfts = [1000 * r.ttft for r in ok if r.ttft is not None]
    elapsed = sum(m.elapsed for m in mine)
    tokens = sum(m.tokens for m in mine)
    proxy_cpu = sum(m.proxy_cpu for m in mine)
    round_tokens = sum(m.round_tokens for m in mine)
    round_cpu = sum(m.round_proxy_cpu for m in mine)
    errors = [r.error for r in results if r.error is not None]
    peaks = [m.proxy_peak_rss for m in mine if m.proxy_peak_rss is not None]
    return Row(
        workload=workload,
        target=target,
        streams=len(results),
        errors=len(errors),
        first_errors=tuple(dict.fromkeys(errors))[:3],
        ttft_ms=(percentile(ttfts, 0.5), percentile(ttfts, 0.95), percentile(ttfts, 0.99)),
        elapsed=elapsed,
        tokens_per_s=tokens / elapsed if elapsed else 0.0,
        streams_per_s=sum(m.streams_done for m in mine) / elapsed if elapsed else 0.0,
        proxy_cpu_per_1k=None
        if target == "direct" or not round_tokens
        else 1000 * round_cpu / round_tokens,
        proxy_cores=proxy_cpu / elapsed if elapsed else 0.0,
        mock_cores=sum(m.mock_cpu for m in mine) / elapsed if elapsed else 0.0,
        client_cores=sum(m.client_cpu for m in mine) / elapsed if elapsed else 0.0,
        other_cores=sum(m.other_cpu for m in mine) / elapsed if elapsed else 0.0,
        listen_overflows=sum(m.listen_overflows for m in mine),
        connections_per_stream=sum(m.mock_connections for m in mine) / len(results)
        if results
        else 0.0,
        events_per_stream=sum(r.events for r in ok) / len(ok) if ok else 0.0,
        longest_gap_ms=percentile([1000 * r.longest_gap for r in ok], 0.95),
        peak_rss_mb=None if target == "direct" or not peaks else max(peaks) / 2**20,
    )


def _find(rows: Sequence[Row], workload: str, target: str) -> Row | None:
    return next((r for r in rows if r.workload == workload and r.target == target), None)


def _ms(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.2f}"


def _opt(value: float | None, spec: str) -> str:
    return "—" if value is None or math.isnan(value) else format(value, spec)


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *body, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        )

    return [line(header), line(["-" * w for w in widths]), *(line(cells) for cells in body)]


def format_report(run: BenchRun, *, command: str = "") -> str:
    """The whole report as text."""
    s = run.settings
    rows = summarize(run.measurements)
    out = [
        (
            f"Baton benchmark — {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}, loopback only"
            + (f" — {command}" if command else "")
        ),
        (
            "direct = the same HTTP client straight to the mock (baseline); passthrough = a "
            "bare pass-through proxy on Baton's libraries (trio, hypercorn, httpx: the stack's "
            "own cost); http = Baton's OpenAI SSE API; ws = Baton's WebSocket API. TTFT in ms "
            "from sending the request. CPU, cores and RSS of a target are its proxy's: the "
            "pass-through's or Baton's."
        ),
    ]
    out += _latency(rows, s) + _throughput(rows, s) + _capacity(rows, s, run)
    out += _verdicts(rows, s)
    out += _against_passthrough(rows)
    out += _notes(rows, run)
    return "\n".join(out)


def _latency(rows: Sequence[Row], s: BenchSettings) -> list[str]:
    base = _find(rows, "latency", "direct")
    body = []
    for row in (r for r in rows if r.workload == "latency"):
        added = (
            "—"
            if base is None or row.target == "direct"
            else f"{row.ttft_ms[0] - base.ttft_ms[0]:+.2f}"
        )
        added95 = (
            "—"
            if base is None or row.target == "direct"
            else f"{row.ttft_ms[1] - base.ttft_ms[1]:+.2f}"
        )
        body.append(
            [row.target, str(row.streams), str(row.errors), *map(_ms, row.ttft_ms), added, added95]
        )
    if not body:
        return []
    title = (
        f"\nlatency: 1 stream at a time, {s.latency_tokens} tokens {s.latency_delay * 1000:g} ms "
        f"apart, {s.latency_rounds} rounds x {s.latency_samples} streams per target"
    )
    return [
        title,
        *_table(
            ["target", "streams", "errors", "TTFT p50", "p95", "p99", "added p50", "added p95"],
            body,
        ),
    ]


def _throughput(rows: Sequence[Row], s: BenchSettings) -> list[str]:
    base = _find(rows, "throughput", "direct")
    body = []
    for row in (r for r in rows if r.workload == "throughput"):
        ratio = (
            "—"
            if base is None or not base.tokens_per_s
            else f"{row.tokens_per_s / base.tokens_per_s:.2f}"
        )
        body.append(
            [
                row.target,
                str(row.streams),
                str(row.errors),
                f"{row.tokens_per_s:,.0f}",
                f"{row.streams_per_s:,.1f}",
                ratio,
                _opt(row.proxy_cpu_per_1k, ".4f"),
                f"{row.proxy_cores:.2f}",
                f"{row.mock_cores:.2f}",
                f"{row.client_cores:.2f}",
                f"{row.other_cores:.2f}",
                f"{row.events_per_stream:.0f}",
            ]
        )
    if not body:
        return []
    title = (
        f"\nthroughput: {s.throughput_streams} concurrent streams of {s.throughput_tokens} "
        f"tokens, no delay, {s.throughput_rounds} rounds x {s.throughput_seconds:g} s per target"
    )
    header = [
        "target",
        "streams",
        "errors",
        "tok/s",
        "streams/s",
        "x direct",
        "CPU-s/1k tok",
        "proxy cores",
        "mock cores",
        "client cores",
        "other cores",
        "events/stream",
    ]
    return [title, *_table(header, body)]


def _capacity(rows: Sequence[Row], s: BenchSettings, run: BenchRun) -> list[str]:
    body = []
    for row in (r for r in rows if r.workload == "capacity"):
        body.append(
            [
                row.target,
                str(row.streams),
                str(row.errors),
                *map(_ms, row.ttft_ms),
                _opt(row.peak_rss_mb, ".0f"),
                _opt(row.proxy_cpu_per_1k, ".4f"),
                "—" if row.target == "direct" else f"{row.proxy_cores:.2f}",
                f"{row.mock_cores:.2f}",
                f"{row.client_cores:.2f}",
                f"{row.other_cores:.2f}",
                f"{row.elapsed:.1f}",
                f"{row.events_per_stream:.0f}",
                _ms(row.longest_gap_ms),
            ]
        )
    if not body:
        return []
    title = (
        f"\ncapacity: {s.capacity_streams} streams at {s.capacity_rate:g} tok/s "
        f"({s.capacity_tokens} tokens each), started evenly over {s.capacity_ramp:g} s; "
        f"Baton idle RSS {run.proxy_idle_rss / 2**20:.0f} MB"
    )
    header = [
        "target",
        "streams",
        "errors",
        "TTFT p50",
        "p95",
        "p99",
        "peak RSS MB",
        "CPU-s/1k tok",
        "proxy cores",
        "mock cores",
        "client cores",
        "other cores",
        "seconds",
        "events/stream",
        "longest gap p95 ms",
    ]
    return [title, *_table(header, body)]


def verdicts(rows: Sequence[Row]) -> list[tuple[str, str, str, bool | None]]:
    """``(target, side, measured, met)`` for each of Baton's targets; ``met`` None: not measured."""
    out: list[tuple[str, str, str, bool | None]] = []
    base = _find(rows, "latency", "direct")
    for side in BATON_TARGETS:
        lat, thr, cap = (_find(rows, w, side) for w in WORKLOADS)
        if lat is not None and base is not None:
            added = lat.ttft_ms[0] - base.ttft_ms[0]
            out.append(
                (
                    f"added TTFT p50 <= {TARGET_ADDED_TTFT_MS} ms",
                    side,
                    f"{added:+.2f} ms",
                    added <= TARGET_ADDED_TTFT_MS,
                )
            )
        if thr is not None:
            out.append(
                (
                    f">= {TARGET_TOKENS_PER_S:,} tok/s at 50 streams",
                    side,
                    f"{thr.tokens_per_s:,.0f} tok/s",
                    thr.tokens_per_s >= TARGET_TOKENS_PER_S,
                )
            )
            cpu = thr.proxy_cpu_per_1k
            out.append(
                (
                    f"<= {TARGET_CPU_PER_1K} CPU-s per 1k tokens",
                    side,
                    _opt(cpu, ".4f"),
                    None if cpu is None else cpu <= TARGET_CPU_PER_1K,
                )
            )
        if cap is not None:
            p95 = cap.ttft_ms[1] / 1000
            out.append(
                (
                    f"slow streams p95 TTFT < {TARGET_CAPACITY_P95_S} s",
                    side,
                    f"{p95:.3f} s",
                    None if math.isnan(p95) else p95 < TARGET_CAPACITY_P95_S,
                )
            )
            rss = cap.peak_rss_mb
            out.append(
                (
                    f"slow streams peak RSS < {TARGET_CAPACITY_RSS_MB} MB",
                    side,
                    _opt(rss, ".0f") + " MB",
                    None if rss is None else rss < TARGET_CAPACITY_RSS_MB,
                )
            )
    return out


def _verdicts(rows: Sequence[Row], s: BenchSettings) -> list[str]:
    body = [
        [goal, side, measured, {True: "met", False: "MISSED", None: "—"}[met]]
        for goal, side, measured, met in verdicts(rows)
    ]
    if not body:
        return []
    sized = (s.throughput_streams, s.capacity_streams, s.capacity_rate) == (50, 500, 20.0)
    title = "\nBaton's targets" + (
        "" if sized else " (NOTE: this run's sizes differ from the targets')"
    )
    return [title, *_table(["target", "side", "measured", "verdict"], body)]


def against_passthrough(rows: Sequence[Row]) -> list[tuple[str, str, float, float, bool]]:
    """``(measure, side, Baton's value, the pass-through's, Baton better)`` where both ran.

    The pass-through is the issue's "40-line pass-through proxy on trio + httpx" row, measured
    in the same run: the part of Baton's cost that its libraries set.
    """
    lat_base = _find(rows, "latency", "direct")
    out: list[tuple[str, str, float, float, bool]] = []
    for side in BATON_TARGETS:
        pairs = {w: (_find(rows, w, side), _find(rows, w, "passthrough")) for w in WORKLOADS}
        lat, thr, cap = (pairs[w] for w in WORKLOADS)
        if lat_base is not None and lat[0] is not None and lat[1] is not None:
            base = lat_base.ttft_ms[0]
            baton, bare = lat[0].ttft_ms[0] - base, lat[1].ttft_ms[0] - base
            out.append(("added TTFT p50, ms", side, baton, bare, baton <= bare))
        if thr[0] is not None and thr[1] is not None:
            out.append(
                (
                    "throughput, tok/s",
                    side,
                    thr[0].tokens_per_s,
                    thr[1].tokens_per_s,
                    thr[0].tokens_per_s >= thr[1].tokens_per_s,
                )
            )
            cpu, bare_cpu = thr[0].proxy_cpu_per_1k, thr[1].proxy_cpu_per_1k
            if cpu is not None and bare_cpu is not None:
                out.append(("CPU-s per 1k tokens", side, cpu, bare_cpu, cpu <= bare_cpu))
        if cap[0] is not None and cap[1] is not None:
            p95, bare_p95 = cap[0].ttft_ms[1] / 1000, cap[1].ttft_ms[1] / 1000
            out.append(("slow streams p95 TTFT, s", side, p95, bare_p95, p95 <= bare_p95))
            rss, bare_rss = cap[0].peak_rss_mb, cap[1].peak_rss_mb
            if rss is not None and bare_rss is not None:
                out.append(("slow streams peak RSS, MB", side, rss, bare_rss, rss <= bare_rss))
    return out


_COMPARED = {  # how each measure of ``against_passthrough`` is shown
    "added TTFT p50, ms": "+.2f",
    "throughput, tok/s": ",.0f",
    "CPU-s per 1k tokens": ".4f",
    "slow streams p95 TTFT, s": ".3f",
    "slow streams peak RSS, MB": ".0f",
}


def _against_passthrough(rows: Sequence[Row]) -> list[str]:
    body = [
        [
            measure,
            side,
            format(baton, _COMPARED[measure]),
            format(bare, _COMPARED[measure]),
            "yes" if better else "no",
        ]
        for measure, side, baton, bare, better in against_passthrough(rows)
    ]
    if not body:
        return []
    title = (
        "\nBaton against the bare stack (the pass-through proxy on the same libraries, same run)"
    )
    return [title, *_table(["measure", "side", "Baton", "pass-through", "Baton better"], body)]


def _proxy(target: str) -> str:
    return "the pass-through" if target == "passthrough" else "Baton"


def _notes(rows: Sequence[Row], run: BenchRun) -> list[str]:
    notes = []
    for row in rows:
        where = f"{row.workload}/{row.target}"
        if row.workload == "throughput" and row.client_cores >= _SATURATED:
            notes.append(
                f"{where}: the load generator used {row.client_cores:.2f} of a core: this target's "
                "tok/s is bounded by the Python client, not by what it measures"
            )
        if (
            row.workload == "throughput"
            and row.target != "direct"
            and row.proxy_cores >= _SATURATED
        ):
            notes.append(
                f"{where}: {_proxy(row.target)} used {row.proxy_cores:.2f} of a core: "
                "it is the bottleneck"
            )
        if row.listen_overflows and row.target != "direct":
            notes.append(
                f"{where}: the kernel counted {row.listen_overflows} accept-queue overflows "
                "(a server accepting more slowly than connections came; each costs its client a "
                "retransmitted handshake, 1 s or more)"
            )
        if row.errors:
            notes.append(
                f"{where}: {row.errors} of {row.streams} streams failed: "
                + "; ".join(row.first_errors)
            )
    reconnecting = [
        f"{r.workload}/{r.target} {r.connections_per_stream:.2f}"
        for r in rows
        if r.target != "direct" and r.connections_per_stream >= 0.5
    ]
    if reconnecting:
        direct = [
            f"{r.workload} {r.connections_per_stream:.2f}" for r in rows if r.target == "direct"
        ]
        notes.append(
            "a proxy opened a new upstream connection for (nearly) every stream (new connections "
            f"per stream at the mock: {', '.join(reconnecting)}; the same client straight to the "
            f"mock: {', '.join(direct) or '—'}, more only where it needs more connections at "
            "once): each stream pays a TCP handshake (TLS too, with a real provider)"
        )
    busy = [r.other_cores for r in rows]
    if busy and max(busy) >= 0.2:
        notes.append(
            f"other processes used {min(busy):.2f}-{max(busy):.2f} cores during the workloads "
            "(column 'other cores'): this machine is shared, and the numbers are noisier for it"
        )
    status = run.proxy_final_status
    active = status.get("active_streams")
    if active:
        notes.append(f"after the workloads Baton still reports {active} active streams (a leak?)")
    for name, provider in (status.get("providers") or {}).items():
        pool = provider.get("pool", {})
        if pool.get("in_use") or pool.get("waiting"):
            notes.append(
                f"after the workloads provider {name} still has {pool.get('in_use')} slots in use, "
                f"{pool.get('waiting')} waiting (a leak?)"
            )
        if provider.get("state") not in ("healthy", "unknown"):
            notes.append(f"after the workloads provider {name} is {provider.get('state')}")
    if run.proxy_log_problem_count:
        notes.append(
            "the children (Baton, the mock, the pass-through) logged "
            f"{run.proxy_log_problem_count} warning/error lines; the first:"
        )
        notes += [f"    {line}" for line in run.proxy_log_problems[:5]]
    if not run.peak_reset_works:
        notes.append(
            "peak RSS could not be reset per round (/proc/PID/clear_refs): "
            "it is sampled every 50 ms"
        )
    out = ["\nnotes"]
    out += [f"- {note}" for note in notes] or [
        "- no errors, no leaked streams or pool slots, no warnings logged"
    ]
    out.append(
        "- CPU and memory are read from /proc (Linux only). CPU-s/1k tok: the proxy's user+system "
        "CPU over whole rounds divided by the tokens of the streams that completed correctly. "
        "tok/s, streams/s and cores of throughput cover the steady part of each round (every "
        "stream running; a stream counts with the share of its lifetime inside). 'other cores': "
        "the rest of the machine's busy CPU."
    )
    return out


def to_json(run: BenchRun) -> dict[str, Any]:
    """The run as plain data (``--json``)."""
    return {
        "settings": attrs.asdict(run.settings),
        "rows": [attrs.asdict(row) for row in summarize(run.measurements)],
        "verdicts": [
            {"target": goal, "side": side, "measured": measured, "met": met}
            for goal, side, measured, met in verdicts(summarize(run.measurements))
        ],
        "against_passthrough": [
            {
                "measure": measure,
                "side": side,
                "baton": baton,
                "passthrough": bare,
                "baton_better": better,
            }
            for measure, side, baton, bare, better in against_passthrough(
                summarize(run.measurements)
            )
        ],
        "proxy_idle_rss": run.proxy_idle_rss,
        "proxy_log_problems": list(run.proxy_log_problems),
        "proxy_final_status": run.proxy_final_status,
    }
