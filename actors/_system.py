"""The running actor system and its embedding API: ``open_baton(config, providers)``.

::

    async with open_baton(config, providers) as baton:
        stream = baton.start_stream(route="default", messages=[...])
        async for event in stream:
            ...

Resuming (for the transports): when a client's connection goes away, the transport calls
``baton.detach(handle)`` for each stream it was reading instead of cancelling it; the stream
runs on without a reader for ``[server] resume_window`` seconds. A client that reconnects sends
the stream id and the seq of the last event it holds, and the transport calls
``baton.resume(stream_id, after, client=...)``: it gets a new ``StreamHandle`` and the events
the client missed (send them first, then read the handle as usual). A handle whose stream was
handed to another reader ends with ``StreamDisplaced`` (an ``EndOfChannel``) and cannot cancel
the stream. See ``_detached`` for when a kept stream is forgotten.
"""

from __future__ import annotations

import logging
import random
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
from opentelemetry import metrics

from ._config import BatonConfig, Target
from ._context import SessionContext
from ._detached import StreamKeeper
from ._errors import ConfigError, RequestError, clip
from ._features import lacking, needs
from ._health import HealthActor, HealthBoard
from ._load import LoadMonitor, LoadStatistics
from ._messages import ClientEvent, Message
from ._outage import OutageQueue, OutageQueueStatistics
from ._pool import PoolActor, ProviderPoolStatistics
from ._provider import Provider
from ._router import RouterActor, RouterStatistics
from ._session import StreamSession, StreamStatistics
from ._streamlog import StreamDisplaced, StreamLog, short_id
from ._supervisor import Supervisor
from ._telemetry import Telemetry
from ._vocab import StreamEnd
from .policy._breaker import STATUSES
from .policy._fair import ANONYMOUS, ClientTag
from .policy._health_view import HealthSnapshot, HealthTransition

log = logging.getLogger(__name__)

# Seconds the streams a drain ends get to close their upstream requests (each close is bounded
# by its adapter too) and so to write their terminal event.
END_TIMEOUT = 5.0


@attrs.frozen(kw_only=True)
class ProviderStatistics:
    name: str
    kind: str
    health: HealthSnapshot | None
    pool: ProviderPoolStatistics


@attrs.frozen(kw_only=True)
class BatonStatistics:
    providers: Mapping[str, ProviderStatistics]
    routes: Mapping[str, tuple[Target, ...]]
    active_streams: int
    finished: Mapping[StreamEnd, int]  # streams that have ended, counted by outcome
    failovers: int  # failovers of the streams that have ended, summed
    router: RouterStatistics
    restarts: int
    outage_queues: Mapping[str, OutageQueueStatistics]  # per route
    load: LoadStatistics
    detached_streams: int  # streams kept for a resume with no reader now (running or ended)


@attrs.frozen(kw_only=True)
class DrainStatistics:
    """What one ``Baton.drain`` did with the streams that were running when it began."""

    running: int  # streams running when the drain began
    finished: int  # of those, the ones that ended by themselves (done, an error, a cancel)
    ended: int  # the ones the drain ended with ``shutting_down``
    left: int  # still running when the drain stopped waiting (a session stuck in its cleanup)
    duration: float  # seconds from the drain's start to its return


class StreamHandle:
    """A reader's view of one stream: its events, and the power to cancel it.

    Iterating yields every event in seq order and stops after the terminal one. ``take``
    returns the events not yet taken in one batch (deltas merged while the reader was behind).
    One handle reads a stream at a time: ``Baton.resume`` makes a new one and displaces this.
    """

    def __init__(self, session: StreamSession, keeper: StreamKeeper, reader: int = 0) -> None:
        self._session = session
        self._keeper = keeper
        self._reader = reader
        self.id = session.id
        self.log = session.log

    def __repr__(self) -> str:
        return f"<StreamHandle {short_id(self.id)} reader={self._reader}>"

    @property
    def reading(self) -> bool:
        """Whether this handle is the stream's reader (not detached, not displaced)."""
        return self.log.reader == self._reader

    async def take(self) -> list[ClientEvent]:
        """Wait for new events; raises ``trio.EndOfChannel`` after the terminal one was taken.

        Raises ``StreamDisplaced`` (an ``EndOfChannel``) once the stream was detached from this
        handle or handed to another reader, also while waiting.
        """
        try:
            return await self.log.take(self._reader)
        except StreamDisplaced:
            raise
        except trio.EndOfChannel:
            self._keeper.read_to_end(self.id, self._reader)
            raise

    def release(self) -> None:
        """Keep nothing of the stream for a resume once it ends; never blocks.

        For a reader a resume cannot serve (a non-streaming HTTP answer, sent whole): without
        it an ended stream whose reader did not take past its terminal event is kept
        ``resume_window`` seconds, in case its client missed that event. A resume of the
        stream (before it ended) makes the new reader keep it again.
        """
        self._keeper.release(self.id, self._reader)

    def cancel(self) -> None:
        """Cancel the stream: its upstream request is closed; it ends with ``cancelled``.

        Does nothing once the stream has ended (its last upstream request may still be closing),
        nor from a handle that is no longer the stream's reader.
        """
        if not self.log.closed and self.reading:
            self._session.cancel_scope.cancel()

    def statistics(self) -> StreamStatistics:
        return self._session.statistics()

    def __aiter__(self) -> AsyncIterator[ClientEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[ClientEvent]:
        while True:
            try:
                batch = await self.take()
            except trio.EndOfChannel:
                return
            for event in batch:
                yield event


class Baton:
    """The running system. Made by ``open_baton``; start streams with ``start_stream``."""

    def __init__(
        self,
        config: BatonConfig,
        supervisor: Supervisor,
        context: SessionContext,
        board: HealthBoard,
    ) -> None:
        self.config = config
        self._supervisor = supervisor
        self._ctx = context
        self._board = board
        self._streams: dict[str, StreamSession] = {}
        self._all_ended = trio.Event()
        self.closing = False
        self._finished: Counter[StreamEnd] = Counter()
        self._failovers = 0
        self._keeper = StreamKeeper(
            config.server.resume_window, supervisor.start_temporary, context.telemetry
        )

    def start_stream(
        self,
        *,
        route: str,
        messages: Sequence[Message],
        params: Mapping[str, Any] | None = None,
        ref: str | None = None,
        can_reset: bool = True,
        transport: str = "embedded",
        client: str | None = None,
        priority: int | None = None,
        on_end: Callable[[], None] | None = None,
    ) -> StreamHandle:
        """Start a stream on ``route`` and return its handle; never blocks.

        Raises ``RequestError`` (``unknown_model``, ``bad_request``) for a request that cannot
        start. ``can_reset``: the client can take a ``failover`` with ``mode: reset``; without
        it a continuation that cannot be joined ends the stream with ``stream_diverged``.
        ``client``: whose stream (a ``[clients]`` name; None: anonymous) for fair admission to
        upstream slots; ``priority`` is its weight there (None: the client's configured
        ``priority``, else 1).

        ``on_end`` is called exactly once, when the stream's task ends (its terminal event is
        in the log and its upstream request closed: done, an error, a cancel, the end of its
        resume window, shutdown), whoever reads it or none; never if this raises. It must not
        block; an exception it raises is logged, not raised. A transport counts a client's
        running streams with it (``max_streams``), detached ones included.
        """
        route_config = self.config.routes.get(route)
        if route_config is None:
            known = ", ".join(sorted(self.config.routes))
            raise RequestError(
                "unknown_model",
                f"Unknown model {clip(route)}; this Baton serves: {known}.",
                status=404,
            )
        if not messages:
            raise RequestError("bad_request", "'messages' must not be empty.")
        wanted = needs(messages, params or {})
        unable = lacking(route_config, self.config.providers, wanted)
        if wanted and len(unable) == len(route_config.targets):
            lacks = "; ".join(
                f"{route_config.targets[i].provider} lacks {', '.join(sorted(c))}"
                for i, c in unable.items()
            )
            raise RequestError(
                "unsupported",
                f"No target of route {route!r} can serve this request ({lacks}); use a route "
                "with a provider that can, or set [providers.NAME] supports if one can.",
                status=400,
            )
        if self.closing:
            raise RequestError("shutting_down", "Baton is shutting down; please retry.", status=503)
        stream_id = "st_" + secrets.token_urlsafe(16)
        server = self.config.server
        stream_log = StreamLog(
            stream_id, cap=server.event_log_cap, max_unread=server.max_client_backlog
        )
        session = StreamSession(
            stream_log=stream_log, route=route_config, messages=messages, params=params or {},
            ref=ref, can_reset=can_reset, transport=transport, context=self._ctx,
            client=self._client_tag(client, priority), unable=unable,
        )  # fmt: skip
        self._streams[stream_id] = session
        self._keeper.add(session, client)
        self._ctx.load.stream_started()

        async def run() -> None:
            try:
                await session.run()
            finally:
                try:
                    self._ctx.load.stream_ended()
                    del self._streams[stream_id]
                    if not self._streams:
                        self._all_ended.set()
                    ended = session.statistics()
                    if ended.outcome is not None:
                        self._finished[ended.outcome] += 1
                    self._failovers += ended.failovers
                    self._keeper.ended(stream_id)
                finally:
                    if on_end is not None:
                        _call_on_end(on_end, stream_id)

        self._supervisor.start_temporary(run)
        log.debug("stream %s started on route %s", stream_id, route)
        return StreamHandle(session, self._keeper)

    def detach(self, stream: StreamHandle | str) -> None:
        """The stream's reader (its client's connection) went away; never blocks.

        Call it instead of ``cancel`` when a connection drops. With ``[server] resume_window``
        0 the stream is cancelled (unless it ended). Otherwise it runs on and keeps logging
        without a reader, its upstream never held back for one, until ``resume`` hands it to a
        new reader; after ``resume_window`` seconds with none it is cancelled (its upstream
        request closed) and forgotten. Given a handle, it acts only if that handle is still the
        stream's reader (a displaced connection that notices late changes nothing); given an
        id, it detaches whichever reader the stream has. An unknown id does nothing.
        """
        if isinstance(stream, StreamHandle):
            self._keeper.detach(stream.id, stream._reader)
        else:
            self._keeper.detach(stream, None)

    def resume(
        self, stream_id: str, after: int, *, client: str | None
    ) -> tuple[StreamHandle, list[ClientEvent]]:
        """Hand a stream to a new reader: its handle, and the events with ``seq > after``.

        ``after`` is the seq of the last event the client holds (-1: none). The replay has the
        same seqs and payloads as first sent, the terminal event too if the stream ended; the
        handle's ``take`` returns what follows, with no gap and no repeat. Resuming again (after
        another drop) works the same. A reader still attached is displaced: its ``take`` raises
        ``StreamDisplaced``. ``client`` must be the one that started the stream (None, without
        client keys: the random stream id is the capability). Never blocks.

        Raises ``RequestError``: ``unknown_stream`` (404: never existed, forgotten, or another
        client's; one message for all three), ``resume_unavailable`` (410: events after
        ``after`` were dropped from the capped log; the message names the oldest seq held),
        ``bad_request`` (``after`` is not an integer >= -1, or beyond the stream's last seq: the
        client cannot hold an event that was never sent). An ``after`` older than the client's
        real position is served from there on: the events it repeats are identical to the ones
        the client holds, so it drops them by seq.
        """
        session, reader, replay = self._keeper.resume(stream_id, after, client)
        return StreamHandle(session, self._keeper, reader), replay

    def _client_tag(self, client: str | None, priority: int | None) -> ClientTag:
        if priority is None:
            configured = self.config.clients.get(client) if client is not None else None
            priority = configured.priority if configured is not None else 1
        if client is None and priority == 1:
            return ANONYMOUS
        return ClientTag(name=client, priority=priority)

    async def drain(self, timeout: float) -> DrainStatistics:
        """Stop taking streams, let the running ones finish, end the rest with ``shutting_down``.

        New streams are refused (``RequestError`` ``shutting_down``) from the call on. Running
        streams get ``timeout`` seconds to end by themselves; then each one left ends with
        ``shutting_down``, and the drain waits up to ``END_TIMEOUT`` seconds for their sessions
        to close their upstream requests. ``end_streams`` from another task (a second signal)
        cuts the first wait short. The transports must keep running until it returns, and then
        send every stream's events up to its terminal one before they stop.
        """
        self.closing = True
        began = trio.current_time()
        before = self._finished.copy()
        running = len(self._streams)
        with trio.move_on_after(timeout):
            await self._all_streams_ended()
        self.end_streams()
        with trio.move_on_after(END_TIMEOUT):
            await self._all_streams_ended()
        ended_since = self._finished - before
        ended = ended_since["shutting_down"]
        return DrainStatistics(
            running=running, finished=sum(ended_since.values()) - ended, ended=ended,
            left=len(self._streams), duration=trio.current_time() - began,
        )  # fmt: skip

    def end_streams(self) -> int:
        """End every running stream with ``shutting_down`` and refuse new ones; never blocks.

        Returns how many streams it ended. A stream that already has its terminal event is left
        to close its upstream request undisturbed.
        """
        self.closing = True
        ending = [s for s in self._streams.values() if not s.log.closed]
        for session in ending:
            session.shut_down()
        return len(ending)

    async def _all_streams_ended(self) -> None:
        while self._streams:
            self._all_ended = trio.Event()
            await self._all_ended.wait()

    def ready(self) -> tuple[bool, str]:
        """Whether every route has a usable target, and if not, which route lacks one.

        Usable is the router's own test (``HealthSnapshot.usable``: the provider takes all
        traffic or a trial now), so a ready route is one the router can pick a target of now.
        A draining Baton is not ready: it takes no new streams.
        """
        if self.closing:
            return False, "draining: Baton is shutting down and takes no new streams"
        for name, route in self.config.routes.items():
            if not any(self._usable(t.provider) for t in route.targets):
                now = trio.current_time()
                states = ", ".join(self._describe(t.provider, now) for t in route.targets)
                return False, f"route {name!r} has no usable target ({states})"
        return True, "ok"

    def _describe(self, provider: str, now: float) -> str:
        """``a unhealthy, next try in 4.2 s``: why a provider takes no traffic now."""
        snapshot = self._board.get(provider)
        if snapshot is None:
            return f"{provider} unknown"
        text = f"{provider} {snapshot.status}"
        if snapshot.status == "probing":
            text += ", its trial is taken (by a probe or a live request) or not due yet"
        if snapshot.next_try_at is not None:
            text += f", next try in {max(0.0, snapshot.next_try_at - now):.1f} s"
        return text

    def _usable(self, provider: str) -> bool:
        snapshot = self._board.get(provider)
        return snapshot is None or snapshot.usable

    def statistics(self) -> BatonStatistics:
        pool = self._ctx.pool.statistics()
        return BatonStatistics(
            providers={
                name: ProviderStatistics(
                    name=name,
                    kind=self._ctx.providers[name].kind,
                    health=self._board.get(name),
                    pool=pool.providers[name],
                )
                for name in self.config.providers
            },
            routes={name: route.targets for name, route in self.config.routes.items()},
            active_streams=len(self._streams),
            finished=dict(self._finished),
            outage_queues={name: q.statistics() for name, q in self._ctx.queues.items()},
            failovers=self._failovers,
            router=self._ctx.router.statistics(),
            restarts=self._supervisor.statistics().restarts,
            load=self._ctx.load.statistics(),
            detached_streams=self._keeper.detached,
        )


def _call_on_end(on_end: Callable[[], None], stream_id: str) -> None:
    """Run a stream's ``on_end`` from its task's cleanup, which must not fail because of it."""
    try:
        on_end()
    except Exception:
        log.exception("stream %s: its on_end callback failed", short_id(stream_id))


@asynccontextmanager
async def open_baton(
    config: BatonConfig,
    providers: Mapping[str, Provider],
    *,
    meter_provider: metrics.MeterProvider | None = None,
    seed: int | None = None,
    on_transition: Callable[[HealthTransition], None] | None = None,
) -> AsyncIterator[Baton]:
    """Start the actor system for ``config`` over ``providers``; stop it on exit.

    ``providers`` maps each configured provider name to its implementation. On exit every
    running stream is cancelled (each still gets its terminal event) before the actors stop.
    ``on_transition`` is called with every change of a provider's health state, from the
    health actor's task as it happens; it must not block.
    """
    missing = sorted(set(config.providers) - set(providers))
    if missing:
        raise ConfigError("providers", f"no implementation given for {', '.join(missing)}")
    board = HealthBoard()
    telemetry = Telemetry(meter_provider)
    telemetry.start_counters(routes=config.routes, providers=config.providers)

    def transitioned(change: HealthTransition) -> None:
        labels = {"provider": change.provider, "from": change.old, "to": change.new}
        telemetry.health_transitions.add(1, labels)
        if on_transition is not None:
            on_transition(change)

    pool = PoolActor({name: cfg.max_connections for name, cfg in config.providers.items()})
    health = {
        name: HealthActor(providers[name], cfg.health, board, on_transition=transitioned)
        for name, cfg in config.providers.items()
    }
    router = RouterActor(config.routes, board, seed=seed)
    load = LoadMonitor(config.server.max_read_delay)
    queues = {
        name: OutageQueue(
            r.queue_size,
            {
                c.name: c.priority
                for c in config.clients.values()
                if c.routes is None or name in c.routes
            },
        )
        for name, r in config.routes.items()
    }
    context = SessionContext(
        router=router, pool=pool, health=health, providers=providers,
        provider_configs=config.providers, telemetry=telemetry, random=random.Random(seed),
        board=board, queues=queues, load=load,
    )  # fmt: skip

    def healthy() -> list[tuple[str, int]]:
        return [(name, int(snapshot.usable)) for name, snapshot in board.all().items()]

    def states() -> list[tuple[str, str]]:
        return [(name, snapshot.status) for name, snapshot in board.all().items()]

    def pool_in_use() -> list[tuple[str, int]]:
        return [(name, p.in_use) for name, p in pool.statistics().providers.items()]

    def load_now() -> tuple[float, float]:
        stats = load.statistics()
        return stats.event_loop_lag, stats.read_delay

    telemetry.observe(healthy, pool_in_use, load_now)
    telemetry.observe_states(states, STATUSES)
    async with trio.open_nursery() as actors:
        try:
            async with trio.open_nursery() as sessions:
                supervisor = Supervisor(actors, sessions)
                await supervisor.start_permanent("pool", pool.run)
                for name, actor in health.items():
                    await supervisor.start_permanent(f"health:{name}", actor.run)
                await supervisor.start_permanent("router", router.run)
                await supervisor.start_permanent("load", load.run)
                baton = Baton(config, supervisor, context, board)
                try:
                    yield baton
                finally:
                    baton.closing = True
                    sessions.cancel_scope.cancel()
        finally:
            pool.close()
            router.close()
            load.close()
            for actor in health.values():
                actor.close()
