"""What a benchmark run measures: its targets and workloads, their sizes, and Baton's config.

``BenchSettings`` sizes a run (``DEFAULT``, the full run; ``QUICK``, a smoke run); a
``Workload`` is one stream shape, a route at Baton and a model at the mock; ``proxy_config``
writes the ``baton.toml`` that Baton and the pass-through read. ``_run`` runs them.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from ._answers import answer_text, model_name

TARGETS = ("direct", "passthrough", "http", "ws")
BATON_TARGETS = ("http", "ws")
WORKLOADS = ("latency", "throughput", "capacity")


@attrs.frozen(kw_only=True)
class BenchSettings:
    """The sizes of a benchmark run."""

    latency_rounds: int = 4
    latency_samples: int = 10  # per target and round
    latency_tokens: int = 10
    latency_delay: float = 0.01
    throughput_rounds: int = 3
    throughput_seconds: float = 3.0  # per target and round
    throughput_streams: int = 50
    throughput_tokens: int = 200
    capacity_streams: int = 500
    capacity_tokens: int = 200
    capacity_rate: float = 20.0  # tokens per second per stream
    capacity_ramp: float = 2.0  # seconds over which the streams start
    ws_streams_per_connection: int = 25
    warmup_streams: int = 50
    stream_timeout: float = 60.0
    mock_burst: int = 1  # token events per send at the mock when there is no delay
    http_client: str = "raw"  # the load generator's HTTP client: "raw" (lean) or "httpx"
    workloads: tuple[str, ...] = WORKLOADS
    targets: tuple[str, ...] = TARGETS


DEFAULT = BenchSettings()
QUICK = BenchSettings(
    latency_rounds=2, latency_samples=6, throughput_rounds=1, throughput_seconds=1.5,
    capacity_streams=100, capacity_tokens=20, capacity_ramp=0.5, warmup_streams=20,
)  # fmt: skip


@attrs.frozen(kw_only=True)
class Workload:
    """One workload's stream shape: the route name at Baton and the model at the mock."""

    name: str
    tokens: int
    delay: float

    @property
    def mock_model(self) -> str:
        return model_name(self.tokens, self.delay)

    @property
    def expected_chars(self) -> int:
        return len(answer_text(self.tokens))


def workloads_of(settings: BenchSettings) -> dict[str, Workload]:
    """The three workloads sized by ``settings``."""
    return {
        "latency": Workload(
            name="latency", tokens=settings.latency_tokens, delay=settings.latency_delay
        ),
        "throughput": Workload(name="throughput", tokens=settings.throughput_tokens, delay=0.0),
        "capacity": Workload(
            name="capacity", tokens=settings.capacity_tokens, delay=1.0 / settings.capacity_rate
        ),
    }


def proxy_config(mock_port: int, workloads: Sequence[Workload], *, max_connections: int) -> str:
    """Baton's config for the run (TOML): every feature on, each workload a route to the mock.

    Each route has a second target (the same mock under another provider name) so that the
    router really chooses, and both providers are probed, as in production.
    """
    base_url = f"http://127.0.0.1:{mock_port}/v1"
    lines = ["[server]", 'host = "127.0.0.1"', "ws_port = 0", "http_port = 0", ""]
    for provider in ("mock", "mock-backup"):
        lines += [
            f"[providers.{provider}]", 'kind = "openai"', f'base_url = "{base_url}"',
            f"max_connections = {max_connections}", "pool_timeout = 30.0",
            "first_token_timeout = 30.0", "idle_timeout = 30.0", "",
            f"[providers.{provider}.health]", "probe_interval = 5.0", "",
        ]  # fmt: skip
    for workload in workloads:
        model = workload.mock_model
        targets = ", ".join(
            f'{{ provider = "{provider}", model = "{model}" }}'
            for provider in ("mock", "mock-backup")
        )
        lines += [
            f"[routes.{workload.name}]",
            f"targets = [{targets}]",
            f"queue_size = {max_connections}",
            "",
        ]
    return "\n".join(lines)
