"""SessionContext: what every stream session of one actor system shares.

``open_baton`` builds one; each session and each of its attempts reads the actors and settings
through it. It sits below the session and the attempt, so both can name its type.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

import attrs

from ._config import ProviderConfig
from ._health import HealthActor, HealthBoard
from ._load import LoadMonitor
from ._outage import OutageQueue
from ._pool import PoolActor
from ._provider import Provider
from ._router import RouterActor
from ._telemetry import Telemetry


@attrs.frozen(kw_only=True)
class SessionContext:
    """The actors, providers and settings every session of one actor system uses."""

    router: RouterActor
    pool: PoolActor
    health: Mapping[str, HealthActor]
    providers: Mapping[str, Provider]
    provider_configs: Mapping[str, ProviderConfig]
    telemetry: Telemetry
    random: random.Random
    board: HealthBoard
    queues: Mapping[str, OutageQueue]  # per route: requests waiting out an outage
    load: LoadMonitor
