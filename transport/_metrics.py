"""Baton's metrics in Prometheus' text format, for ``GET /metrics``.

``MetricsEndpoint`` owns an OpenTelemetry SDK ``MeterProvider`` whose only reader is a
``PrometheusMetricReader`` writing into the endpoint's own ``CollectorRegistry`` (not the
process-wide default, so two Batons in one process, as in tests, never collide). Give its
``meter_provider`` to ``open_baton(..., meter_provider=...)`` and serve ``render()``.
"""

from __future__ import annotations

import prometheus_client
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider


class MetricsEndpoint:
    """A meter provider and the Prometheus exposition of what is recorded into it."""

    content_type = prometheus_client.CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        # No target_info and no otel_scope_* labels: the series carry only Baton's labels.
        self._reader = PrometheusMetricReader(
            disable_target_info=True, scope_info_enabled=False, registry=self.registry
        )
        self.meter_provider = MeterProvider(metric_readers=[self._reader], shutdown_on_exit=False)

    def __repr__(self) -> str:
        return f"<MetricsEndpoint registry={id(self.registry):#x}>"

    def render(self) -> bytes:
        """Collect every instrument now (gauges call back into the actors) and format them.

        Synchronous and quick: it runs in the event loop, as the gauges' callbacks read actor
        statistics that are only safe to read from there.
        """
        return prometheus_client.generate_latest(self.registry)

    def close(self) -> None:
        """Stop the meter provider; later recordings are dropped."""
        self.meter_provider.shutdown()
