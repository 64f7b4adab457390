"""What ``GET /status`` says: providers' health and pools, routes, load, active streams.

Pure functions of ``Baton.statistics()`` and the current time; ``transport._http`` serves them.
"""

from __future__ import annotations

import math
from typing import Any

import trio

from actors import Baton, ProviderStatistics


def status_document(baton: Baton) -> dict[str, Any]:
    """``GET /status``: every provider's health and pool, the routes, the active streams.

    Times are seconds from now (``next_try_in``) or ago (``state_for``), so the document reads
    the same whatever clock the process runs on. A provider's ``usable`` and ``traffic`` are
    the router's own answer (``HealthSnapshot``), as are ``ready`` and ``/readyz``.
    """
    stats = baton.statistics()
    now = trio.current_time()
    providers = {name: _provider_status(p, now) for name, p in stats.providers.items()}
    routes = {
        name: {
            "targets": [
                {"provider": t.provider, "model": t.model, "weight": t.weight} for t in targets
            ]
        }
        for name, targets in stats.routes.items()
    }
    ready, reason = baton.ready()
    return {
        "ready": ready,
        "reason": reason,
        "active_streams": stats.active_streams,
        # Streams kept for a resume with no client reading them now (running or ended).
        "detached_streams": stats.detached_streams,
        "restarts": stats.restarts,
        # Seconds: how late the event loop runs tasks, and the pause it puts between the
        # upstream reads of each stream because of that (0 when Baton keeps up).
        "load": {
            "event_loop_lag": _seconds(stats.load.event_loop_lag),
            "read_delay": _seconds(stats.load.read_delay),
        },
        "providers": providers,
        "routes": routes,
    }


def _provider_status(provider: ProviderStatistics, now: float) -> dict[str, Any]:
    health, pool = provider.health, provider.pool
    document: dict[str, Any] = {
        "kind": provider.kind,
        # No snapshot yet: the health actor has not started; the router treats it as usable.
        "state": "unknown", "usable": True, "traffic": "all", "consecutive_failures": 0,
        "next_try_in": None, "state_for": None, "ttft_ewma": None, "probe": None,
        "last_probe": None,
    }  # fmt: skip
    if health is not None:
        next_try = None if health.next_try_at is None else _seconds(health.next_try_at - now)
        document.update(
            state=health.status, usable=health.usable, traffic=health.traffic,
            consecutive_failures=health.consecutive_failures, next_try_in=next_try,
            state_for=_seconds(now - health.since), ttft_ewma=health.ttft_ewma,
            probe=health.probe, last_probe=health.last_probe,
        )  # fmt: skip
    document["pool"] = {
        "in_use": pool.in_use, "waiting": pool.waiting, "max": pool.max_connections,
        "total_acquired": pool.total_acquired, "total_timeouts": pool.total_timeouts,
    }  # fmt: skip
    return document


def _seconds(value: float) -> float | None:
    return round(max(0.0, value), 3) if math.isfinite(value) else None
