"""A regression guard on Baton's speed: a tiny run of the benchmark (``scenarios.bench``).

It starts the mock provider, Baton and the bare pass-through proxy in their own processes, as
``baton bench`` does, runs a few latency streams and a short throughput round through Baton's
HTTP and WebSocket APIs, through the pass-through and straight to the mock, and asserts bounds
generous enough for a loaded CI machine but not for an accidental per-token sleep or an O(n^2)
in the hot path: with a blocking 1 ms sleep per token Baton cannot pass 1,000 tokens/s, a
fiftieth of what the direct client reaches. Against the pass-through (measured in the same run,
so the machine's speed cancels out), Baton must deliver more tokens per second at less CPU per
token: it merges tokens into fewer sends, where the pass-through sends every upstream read on.
Linux only (it reads ``/proc``). Takes about 15 seconds.
"""

from __future__ import annotations

import sys

import pytest

from scenarios.bench import (
    BenchSettings,
    against_passthrough,
    proc_available,
    run_bench,
    summarize,
)

GUARD = BenchSettings(
    latency_rounds=1, latency_samples=6, throughput_rounds=1, throughput_seconds=1.5,
    throughput_streams=20, warmup_streams=20, workloads=("latency", "throughput"),
    stream_timeout=20.0,
)  # fmt: skip
# Healthy values on a 2-core machine: ratio 0.2-0.3 (the direct client reads 200 tokens in one
# or two reads), added TTFT 3-7 ms, 0.025-0.05 CPU-s per 1k tokens. A 1 ms sleep per token gives
# a ratio under 0.015; an O(n^2) or a busy loop in the hot path, several times the CPU.
MIN_THROUGHPUT_RATIO = 0.03  # Baton's tokens/s over the direct client's
MAX_ADDED_TTFT_MS = 50.0  # Baton's p50 time to first token minus direct's
MAX_CPU_PER_1K_TOKENS = 0.3  # Baton's CPU seconds per 1,000 tokens


@pytest.mark.slow
@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not proc_available(), reason="reads /proc"
)
async def test_baton_keeps_up_with_a_direct_client() -> None:
    run = await run_bench(GUARD, say=lambda line: None)
    rows = {(row.workload, row.target): row for row in summarize(run.measurements)}
    report = "\n".join(
        f"{w}/{t}: {r.streams} streams, {r.errors} errors {r.first_errors}, "
        f"TTFT p50 {r.ttft_ms[0]:.2f} ms, {r.tokens_per_s:,.0f} tok/s, CPU/1k {r.proxy_cpu_per_1k}"
        for (w, t), r in rows.items()
    )
    assert all(row.errors == 0 for row in rows.values()), report
    latency_direct = rows["latency", "direct"].ttft_ms[0]
    throughput_direct = rows["throughput", "direct"].tokens_per_s
    for side in ("http", "ws"):
        added = rows["latency", side].ttft_ms[0] - latency_direct
        assert added < MAX_ADDED_TTFT_MS, f"{side} adds {added:.1f} ms to TTFT\n{report}"
        throughput = rows["throughput", side]
        ratio = throughput.tokens_per_s / throughput_direct
        assert ratio >= MIN_THROUGHPUT_RATIO, (
            f"{side} reaches {ratio:.2f} x direct's tok/s\n{report}"
        )
        cpu = throughput.proxy_cpu_per_1k
        assert cpu is not None and cpu <= MAX_CPU_PER_1K_TOKENS, (
            f"{side}: {cpu} CPU-s per 1k tokens\n{report}"
        )
    # Healthy: Baton 4-6 x the pass-through's tok/s, at a quarter of its CPU per token.
    versus = {
        (measure, side): better
        for measure, side, _, _, better in against_passthrough(rows.values())
    }
    for side in ("http", "ws"):
        assert versus["throughput, tok/s", side], (
            f"{side} is slower than the pass-through\n{report}"
        )
        assert versus["CPU-s per 1k tokens", side], (
            f"{side} costs more CPU than the pass-through\n{report}"
        )
    assert not run.proxy_final_status.get("active_streams"), "streams leaked after the workloads"
