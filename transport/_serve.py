"""Running Baton as a process: read the config file, build the providers, serve, log.

``load_config`` turns a TOML file into a ``BatonConfig`` (one clear message naming the file and
key on any mistake); ``run_baton`` runs the actor system with the WebSocket and HTTP servers
in one nursery. The ``baton`` command itself lives in ``scenarios.cli`` (the top of the
dependency chain), because with no config it serves against simulated providers.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import sys
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path

import trio
from hypercorn.config import Config as HypercornConfig

from actors import (
    Baton,
    BatonConfig,
    ConfigError,
    DrainStatistics,
    Provider,
    config_from_dict,
    open_baton,
)

from ._accept import serve_asgi, server_ssl_context
from ._admin import admin_key, operator_app
from ._auth import ClientAuth, client_auth
from ._faults import FaultInjector
from ._http import LISTEN_BACKLOG, build_app, serve_http
from ._limits import server_connection_limiter
from ._metrics import MetricsEndpoint
from ._ws import serve_ws
from .providers import install_merging_chunked_reader, make_provider

log = logging.getLogger(__name__)

# Seconds the servers get, once a drain has ended every stream, to send each stream's last
# events and close their connections: a client that stops reading cannot hold the exit longer.
FLUSH_TIMEOUT = 3.0


def load_config(path: str | os.PathLike[str]) -> BatonConfig:
    """Read and validate a TOML config file; raises ``ConfigError`` naming the file and key."""
    where = str(path)
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(where, f"cannot read the file ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(where, "is not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(where, f"is not valid TOML: {exc}") from None
    config = config_from_dict(data, source=where)
    server_ssl_context(config.server, where=where)  # TLS files: unreadable or bad stops here
    return config


def build_providers(
    config: BatonConfig, *, environ: Mapping[str, str] = os.environ
) -> dict[str, Provider]:
    """One httpx-backed adapter per configured provider (keys read from their env vars).

    Each gets the model of the first route target it serves as its probe model: what a ``chat``
    probe asks for, including the one a provider without a models endpoint falls back to.
    """
    providers: dict[str, Provider] = {}
    for name, provider_config in config.providers.items():
        probe_model = next(
            (t.model for r in config.routes.values() for t in r.targets if t.provider == name), None
        )
        providers[name] = make_provider(provider_config, environ=environ, probe_model=probe_model)
    return providers


async def run_baton(
    config: BatonConfig,
    providers: Mapping[str, Provider],
    *,
    handle_signals: bool = False,
    faults: FaultInjector | None = None,
    task_status: trio.TaskStatus[tuple[int, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``config`` until cancelled; reports ``(ws_port, http_port)`` once listening.

    With ``handle_signals`` (the ``baton`` process), SIGINT or SIGTERM drains and returns:
    new streams are refused and ``/readyz`` says ``draining``; running streams get
    ``[server] drain_timeout`` seconds to finish, then the rest end with ``shutting_down``;
    the servers send every stream's last events (for up to ``FLUSH_TIMEOUT`` seconds), close
    their connections and stop. A second signal ends the running streams at once.

    It installs the merging chunked reader into h11 first (process-wide; see
    ``install_merging_chunked_reader``): every upstream token is its own HTTP chunk.

    ``faults``: Baton's own simulated providers' fault injector; the HTTP port then answers
    the page's fault buttons (``/sim/faults``).
    """
    # A bad TLS file or a missing operator key stops start-up here, with one ConfigError.
    server_ssl_context(config.server)
    admin_key(config.server)
    install_merging_chunked_reader()
    metrics = MetricsEndpoint()
    # Listen for signals before the servers start, so a signal sent while they start drains
    # instead of surfacing as a KeyboardInterrupt inside the servers' nursery.
    signals_listener: contextlib.AbstractContextManager[AsyncIterator[int] | None] = (
        trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM)
        if handle_signals
        else contextlib.nullcontext()
    )
    try:
        with signals_listener as signals:
            await _serve_until_signal(config, providers, metrics, signals, task_status, faults)
    finally:
        with trio.move_on_after(5, shield=True):
            for provider in providers.values():
                aclose = getattr(provider, "aclose", None)
                if aclose is not None:
                    await aclose()
        metrics.close()


async def _serve_until_signal(
    config: BatonConfig,
    providers: Mapping[str, Provider],
    metrics: MetricsEndpoint,
    signals: AsyncIterator[int] | None,
    task_status: trio.TaskStatus[tuple[int, int]],
    faults: FaultInjector | None = None,
) -> None:
    """Run the actor system and both servers; with ``signals``, drain at the first signal."""
    server = config.server
    auth = client_auth(config)  # one for both servers: limits and tokens span them
    # The servers stop only after the drain has ended every stream, and then they finish
    # sending: cancelling them instead would cut the streams' last events off.
    stop_serving = trio.Event()
    drained: DrainStatistics | None = None
    began = trio.current_time()
    async with (
        open_baton(config, providers, meter_provider=metrics.meter_provider) as baton,
        trio.open_nursery() as nursery,
    ):
        ws_port = await nursery.start(
            functools.partial(
                serve_ws, baton, host=server.host, port=server.ws_port, auth=auth,
                shutdown_trigger=stop_serving.wait, graceful_timeout=FLUSH_TIMEOUT,
            )
        )  # fmt: skip
        http_port = await nursery.start(
            functools.partial(
                serve_http, baton, host=server.host, port=server.http_port,
                metrics=metrics, max_request_bytes=server.max_request_bytes, auth=auth,
                faults=faults, shutdown_trigger=stop_serving.wait, graceful_timeout=FLUSH_TIMEOUT,
            )
        )  # fmt: skip
        if server.admin_port is not None:
            await nursery.start(
                functools.partial(
                    serve_operator, baton, metrics, auth=auth, shutdown_trigger=stop_serving.wait
                )
            )
        ws, http = ("wss", "https") if server.tls_cert is not None else ("ws", "http")
        log.info(
            "Baton listening: %s://%s:%d/v1/stream and %s://%s:%d/v1 (routes: %s)",
            ws, server.host, ws_port, http, server.host, http_port, ", ".join(config.routes),
        )  # fmt: skip
        task_status.started((ws_port, http_port))
        if signals is None:
            await trio.sleep_forever()  # until cancelled
        else:
            began = await _wait_for_signal(baton, signals, server.drain_timeout)
            drained = await _drain(baton, signals, server.drain_timeout)
            stop_serving.set()  # the servers return once their connections have closed
    if drained is not None:
        _log_drained(drained, trio.current_time() - began)


async def serve_operator(
    baton: Baton,
    metrics: MetricsEndpoint,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    auth: ClientAuth | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/status``, ``/metrics``, ``/healthz`` and ``/readyz`` on ``[server] admin_port``.

    On ``admin_host`` (default: ``host``), with the servers' TLS and the operator key; stops
    as ``serve_http`` does when ``shutdown_trigger`` returns. Raises ``OSError`` if the address
    cannot be bound.
    """
    server = baton.config.server
    host = server.admin_host or server.host
    app = build_app(baton, metrics=metrics, auth=auth)  # auth: /status shows its clients
    config = HypercornConfig()
    config.bind = [
        f"[{host}]:{server.admin_port}" if ":" in host else f"{host}:{server.admin_port}"
    ]
    config.accesslog = None
    config.backlog = LISTEN_BACKLOG
    config.graceful_timeout = FLUSH_TIMEOUT
    config.errorlog = logging.getLogger("hypercorn.error")
    config.keep_alive_timeout = server.keep_alive_timeout
    limiter = server_connection_limiter(baton.config, name="operator")
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            functools.partial(
                serve_asgi, operator_app(app), operator_app(app.refuse), config, limiter,
                server=server, shutdown_trigger=shutdown_trigger,
            )
        )  # fmt: skip
        log.info("operator endpoints (/status, /metrics) listening on %s", ", ".join(binds))
        task_status.started()


async def _wait_for_signal(baton: Baton, signals: AsyncIterator[int], timeout: float) -> float:
    """Wait for the first SIGINT or SIGTERM and say that the drain begins; returns the time."""
    async for signum in signals:
        log.info(
            "received %s: draining; %d stream(s) running get up to %g s to finish; new streams "
            "are refused and /readyz says draining",
            signal.Signals(signum).name, baton.statistics().active_streams, timeout,
        )  # fmt: skip
        break
    return trio.current_time()


async def _drain(baton: Baton, signals: AsyncIterator[int], timeout: float) -> DrainStatistics:
    """``baton.drain(timeout)``, cut short by a second signal."""
    async with trio.open_nursery() as nursery:

        async def end_streams_at_second_signal() -> None:
            async for signum in signals:
                ended = baton.end_streams()
                log.warning(
                    "received %s again: ending the %d running stream(s) now",
                    signal.Signals(signum).name, ended,
                )  # fmt: skip
                return

        nursery.start_soon(end_streams_at_second_signal)
        drained = await baton.drain(timeout)
        nursery.cancel_scope.cancel()
    return drained


def _log_drained(drained: DrainStatistics, duration: float) -> None:
    """The drain's one closing line: how the streams that were running ended."""
    level = logging.INFO if drained.ended == drained.left == 0 else logging.WARNING
    log.log(
        level,
        "drained in %.1f s: of %d running stream(s), %d finished, %d ended with shutting_down, "
        "%d still running at exit",
        duration, drained.running, drained.finished, drained.ended, drained.left,
    )  # fmt: skip


class JSONFormatter(logging.Formatter):
    """One JSON object per log line, for log collectors."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure_logging(*, log_format: str = "text", level: str = "INFO") -> None:
    """Send logs to stderr as text or JSON lines (only the process does this, never libraries)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx logs every request line at INFO; Baton's own lines say what matters.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("hypercorn.access").setLevel(logging.WARNING)
