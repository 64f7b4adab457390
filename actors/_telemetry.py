"""Baton's metrics, instrumented with the OpenTelemetry API.

Libraries use only the API: without a configured ``MeterProvider`` every instrument is a
no-op. ``baton serve`` configures the SDK with a Prometheus reader. Tests pass their own
``MeterProvider`` to ``open_baton``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

# Seconds-based buckets from sub-millisecond proxy overhead up to long generations.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)
# The advisory buckets of OpenTelemetry's GenAI semantic conventions.
TOKEN_BUCKETS = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
OPERATION_BUCKETS = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip


class Telemetry:
    """The instruments Baton records into; one per running actor system."""

    def __init__(self, meter_provider: metrics.MeterProvider | None = None) -> None:
        provider = meter_provider or metrics.get_meter_provider()
        meter = provider.get_meter("baton")
        self.requests = meter.create_counter(
            "proxy_requests",
            unit="1",
            description="Streams finished, by route, provider and outcome",
        )
        self.request_duration = meter.create_histogram(
            "proxy_request_duration", unit="s", description="Whole stream duration",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
        )  # fmt: skip
        self.ttft = meter.create_histogram(
            "proxy_time_to_first_token", unit="s", description="Time from request to first text",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
        )  # fmt: skip
        self.failovers = meter.create_counter(
            "proxy_failovers", unit="1", description="Moves of a stream to another target"
        )
        self.pool_wait = meter.create_histogram(
            "proxy_pool_wait", unit="s", description="Time spent waiting for an upstream slot",
            explicit_bucket_boundaries_advisory=WAIT_BUCKETS,
        )  # fmt: skip
        self.active_streams = meter.create_up_down_counter(
            "proxy_active_streams", unit="1", description="Streams in progress, by transport"
        )
        self.health_transitions = meter.create_counter(
            "proxy_health_transitions", unit="1", description="Circuit breaker state changes"
        )
        self.malformed_events = meter.create_counter(
            "proxy_malformed_events",
            unit="1",
            description="Upstream events that could not be decoded",
        )
        self.retry_budget_exhausted = meter.create_counter(
            "proxy_retry_budget_exhausted", unit="1",
            description="Retries and failovers a route's retry budget refused",
        )  # fmt: skip
        self.stream_resumes = meter.create_counter(
            "proxy_stream_resumes", unit="1",
            description="Streams handed to a new reader after their client's connection dropped",
        )  # fmt: skip
        self.detached_streams = meter.create_up_down_counter(
            "proxy_detached_streams", unit="1",
            description="Streams kept for a resume with no reader now (running or ended)",
        )  # fmt: skip
        # GenAI semantic conventions: one recording per upstream attempt (see ``Attempt``).
        self.token_usage = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}",
            description="Tokens each upstream request used, as its provider reported them",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )  # fmt: skip
        self.operation_duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s",
            description="Duration of each upstream request, failed ones with error.type",
            explicit_bucket_boundaries_advisory=OPERATION_BUCKETS,
        )  # fmt: skip
        self._meter = meter

    def start_counters(self, *, routes: Iterable[str], providers: Iterable[str]) -> None:
        """Record zero on the counters alerts watch, so each series exists from start-up."""
        for route in routes:
            self.failovers.add(0, {"route": route})
            self.retry_budget_exhausted.add(0, {"route": route})
        for provider in providers:
            self.health_transitions.add(0, {"provider": provider})
        self.stream_resumes.add(0)
        self.detached_streams.add(0)

    def observe(
        self,
        healthy: Callable[[], Iterable[tuple[str, int]]],
        pool_in_use: Callable[[], Iterable[tuple[str, int]]],
        load: Callable[[], tuple[float, float]],
    ) -> None:
        """Register the gauges read at collection time from the running actors."""

        def healthy_cb(_: CallbackOptions) -> Iterable[Observation]:
            return [Observation(value, {"provider": name}) for name, value in healthy()]

        def pool_cb(_: CallbackOptions) -> Iterable[Observation]:
            return [Observation(value, {"provider": name}) for name, value in pool_in_use()]

        self._meter.create_observable_gauge(
            "proxy_provider_healthy", [healthy_cb], unit="1",
            description="1 when the router may send the provider a request now (all or a trial)",
        )  # fmt: skip
        self._meter.create_observable_gauge(
            "proxy_pool_in_use", [pool_cb], unit="1", description="Upstream slots in use"
        )

        def lag_cb(_: CallbackOptions) -> Iterable[Observation]:
            return [Observation(load()[0])]

        def delay_cb(_: CallbackOptions) -> Iterable[Observation]:
            return [Observation(load()[1])]

        self._meter.create_observable_gauge(
            "proxy_event_loop_lag", [lag_cb], unit="s",
            description="How late the event loop runs ready tasks (smoothed)",
        )  # fmt: skip
        self._meter.create_observable_gauge(
            "proxy_read_delay", [delay_cb], unit="s",
            description="Pause between a stream's upstream reads while the event loop lags",
        )  # fmt: skip

    def observe_states(
        self, states: Callable[[], Iterable[tuple[str, str]]], all_states: Sequence[str]
    ) -> None:
        """Register ``proxy_provider_state``: per provider, 1 for its breaker state, 0 for others.

        ``states`` yields (provider, state) at collection time; every state in ``all_states``
        gets a series, so an alert can match ``state="unhealthy"`` before it ever happened.
        """

        def state_cb(_: CallbackOptions) -> Iterable[Observation]:
            return [
                Observation(int(state == current), {"provider": name, "state": state})
                for name, current in states()
                for state in all_states
            ]

        self._meter.create_observable_gauge(
            "proxy_provider_state", [state_cb], unit="1",
            description="1 for the provider's circuit breaker state, 0 for the other states",
        )  # fmt: skip
