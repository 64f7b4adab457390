"""How many client connections a server holds, so that no client can take every file descriptor.

A ``ConnectionLimiter`` counts one server's open connections, in total and per client address,
and gives each new connection a verdict when it is accepted:

- ``admitted``: under both limits; served as usual.
- ``refused``: over ``max_connections`` or ``max_connections_per_client``. The connection is
  still read up to its request head, so that it can be told why: HTTP answers 503 with
  ``Retry-After`` and the code ``too_many_connections`` (``/healthz`` is answered as usual,
  so a health check works at the limit), WebSocket refuses the handshake with 503. Then it is
  closed. At most ``max_refusing`` connections are being refused at once.
- ``dropped``: over even that headroom (a flood): closed at once, unanswered.

So one server never holds more than ``max_connections + max_refusing`` client connections,
and ``connection_limits`` keeps that, for both servers together, below the file descriptors
the process may open (``RLIMIT_NOFILE``), with room for the upstream connections.
"""

from __future__ import annotations

import contextlib
import logging
import resource
from collections import Counter
from collections.abc import Iterator
from typing import Literal

import attrs
import trio

from actors import BatonConfig

log = logging.getLogger(__name__)

ConnectionVerdict = Literal["admitted", "refused", "dropped"]

# Descriptors kept for everything but client and upstream connections: listeners, the event
# loop's own, log files, an upstream connection being replaced while the old one closes, ...
FD_RESERVE = 256
# Refusals at once, as a share of max_connections (at least MIN_REFUSING): a refused connection
# lives until its request head arrives (at most keep_alive_timeout) and its 503 is written.
REFUSING_SHARE = 16
MIN_REFUSING = 16
LOG_EVERY = 10.0  # seconds: at most one line about refused connections per server this often


@attrs.frozen(kw_only=True)
class ConnectionLimits:
    """How many client connections one server holds (see the module docstring)."""

    max_connections: int
    max_connections_per_client: int
    max_refusing: int


@attrs.frozen(kw_only=True)
class ConnectionStatistics:
    """A snapshot of one server's client connections."""

    open: int  # admitted connections open now
    refusing: int  # refused connections being answered now
    clients: int  # client addresses with an admitted connection open
    limits: ConnectionLimits
    total_admitted: int
    total_refused: int
    total_dropped: int


def connection_limits(
    config: BatonConfig, *, descriptors: int, servers: int = 2
) -> tuple[ConnectionLimits, str | None]:
    """The limits of each of ``servers`` servers, and a warning if they had to be lowered.

    ``descriptors`` is the process's limit on open files (``RLIMIT_NOFILE``'s soft limit; any
    negative value means none). Each server's ``max_connections`` plus its refusal headroom,
    times ``servers``, plus every provider's ``max_connections`` and ``FD_RESERVE``, must fit
    in it; when they do not, ``max_connections`` is lowered to what fits (at least 1).
    """
    server = config.server
    wanted = server.max_connections
    refusing = max(MIN_REFUSING, wanted // REFUSING_SHARE)
    upstream = sum(p.max_connections for p in config.providers.values())
    needed = servers * (wanted + refusing) + upstream + FD_RESERVE
    if descriptors < 0 or needed <= descriptors:
        limits = ConnectionLimits(
            max_connections=wanted,
            max_connections_per_client=server.max_connections_per_client,
            max_refusing=refusing,
        )
        return limits, None
    share = max(2, (descriptors - upstream - FD_RESERVE) // servers)
    refusing = max(1, min(refusing, share // (REFUSING_SHARE + 1)))
    allowed = max(1, share - refusing)
    limits = ConnectionLimits(
        max_connections=allowed,
        max_connections_per_client=min(server.max_connections_per_client, allowed),
        max_refusing=refusing,
    )
    warning = (
        f"the process may open {descriptors} files (ulimit -n), fewer than "
        f"server.max_connections = {wanted} needs ({needed} with the upstream connections and "
        f"headroom); each server now holds at most {allowed} client connections. Raise the "
        f"limit (ulimit -n {needed}) or lower server.max_connections."
    )
    return limits, warning


def open_files_limit() -> int:
    """The soft limit on this process's open files, or -1 when there is none."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return -1 if soft == resource.RLIM_INFINITY else soft


def server_connection_limiter(config: BatonConfig, *, name: str) -> ConnectionLimiter:
    """A limiter for the server ``name`` (``HTTP``, ``WebSocket``) from ``config.server``.

    Checks the limits against the process's limit on open files and logs a warning, naming
    the setting to change, when they had to be lowered to fit.
    """
    limits, warning = connection_limits(config, descriptors=open_files_limit())
    if warning is not None:
        log.warning("%s server: %s", name, warning)
    return ConnectionLimiter(limits, name=name)


class ConnectionLimiter:
    """Counts one server's client connections and gives each new one its verdict.

    Synchronous and not thread-safe: the server's accept loop and its connections' tasks
    (one trio thread) call it. Time, for its rate-limited log line, is trio's clock.
    """

    def __init__(self, limits: ConnectionLimits, *, name: str = "HTTP") -> None:
        self.limits = limits
        self.name = name
        self._per_client: Counter[str] = Counter()
        self._open = 0
        self._refusing = 0
        self._total_admitted = 0
        self._total_refused = 0
        self._total_dropped = 0
        self._unlogged = 0
        self._next_log = -float("inf")

    def __repr__(self) -> str:
        return (
            f"<ConnectionLimiter {self.name} open={self._open}/{self.limits.max_connections} "
            f"refusing={self._refusing}/{self.limits.max_refusing}>"
        )

    @contextlib.contextmanager
    def hold(self, client: str) -> Iterator[ConnectionVerdict]:
        """Count a connection from ``client`` (an address) while the block runs; its verdict."""
        verdict = self._admit(client)
        try:
            yield verdict
        finally:
            self._release(client, verdict)

    def statistics(self) -> ConnectionStatistics:
        return ConnectionStatistics(
            open=self._open,
            refusing=self._refusing,
            clients=len(self._per_client),
            limits=self.limits,
            total_admitted=self._total_admitted,
            total_refused=self._total_refused,
            total_dropped=self._total_dropped,
        )

    def _admit(self, client: str) -> ConnectionVerdict:
        limits = self.limits
        if (
            self._open < limits.max_connections
            and self._per_client[client] < limits.max_connections_per_client
        ):
            self._open += 1
            self._per_client[client] += 1
            self._total_admitted += 1
            return "admitted"
        verdict: ConnectionVerdict
        if self._refusing < limits.max_refusing:
            self._refusing += 1
            self._total_refused += 1
            verdict = "refused"
        else:
            self._total_dropped += 1
            verdict = "dropped"
        self._log_refusal(client)
        return verdict

    def _release(self, client: str, verdict: ConnectionVerdict) -> None:
        if verdict == "admitted":
            self._open -= 1
            self._per_client[client] -= 1
            if not self._per_client[client]:
                del self._per_client[client]
        elif verdict == "refused":
            self._refusing -= 1

    def _log_refusal(self, client: str) -> None:
        self._unlogged += 1
        now = trio.current_time()
        if now < self._next_log:
            return
        log.warning(
            "%s server: refused %d connection(s) over its limits (open: %d of "
            "server.max_connections = %d; from %s, the latest: %d of "
            "server.max_connections_per_client = %d); raise them if these clients are expected",
            self.name, self._unlogged, self._open, self.limits.max_connections, client,
            self._per_client[client], self.limits.max_connections_per_client,
        )  # fmt: skip
        self._unlogged = 0
        self._next_log = now + LOG_EVERY
