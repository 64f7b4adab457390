"""Streams a client may resume: whose they are, whether a reader holds them, when they go.

A stream outlives its client's connection for ``[server] resume_window`` seconds. The
transport tells ``Baton.detach`` when a connection that read a stream went away; the stream
keeps running and logging meanwhile (its log never holds the upstream back without a reader).
``Baton.resume`` hands it to a new reader with the events the client missed. The keeper
decides when a stream is forgotten:

- a detached stream that is still running: ``resume_window`` seconds after the detach it is
  cancelled (its upstream request closed) and forgotten;
- a stream that ended: ``resume_window`` seconds after its end (or after the last detach or
  resume, whichever is later), so a client that missed the terminal event can still get it;
  at once when its current reader took past the terminal event (the transport sent it) or
  released it (``StreamHandle.release``: a reader that resuming cannot serve);
- ``resume_window = 0``: a detach cancels the stream at once, and an ended stream is
  forgotten at once (today's cancel-on-disconnect).

Every timer runs on trio's clock, one task per stream that has one.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import attrs
import trio

from ._errors import RequestError
from ._messages import ClientEvent
from ._session import StreamSession
from ._streamlog import ResumeUnavailable, short_id
from ._telemetry import Telemetry

log = logging.getLogger(__name__)

Spawn = Callable[[Callable[[], Awaitable[None]]], None]


@attrs.define(eq=False)
class _Kept:
    """One stream the keeper holds."""

    session: StreamSession
    client: str | None  # who started it: only the same client may resume it
    detached: bool = False
    ended: bool = False
    released: bool = False  # its reader needs nothing kept after the end
    timer: trio.CancelScope | None = None  # runs out when the stream is to be forgotten


class StreamKeeper:
    """The streams that can be resumed, by id. Synchronous: every method returns at once."""

    def __init__(self, window: float, spawn: Spawn, telemetry: Telemetry) -> None:
        self.window = window
        self._spawn = spawn  # starts a timer task (in the sessions' nursery)
        self._telemetry = telemetry
        self._kept: dict[str, _Kept] = {}
        self.detached = 0  # streams held with no reader now

    def add(self, session: StreamSession, client: str | None) -> None:
        self._kept[session.id] = _Kept(session=session, client=client)

    def ended(self, stream_id: str) -> None:
        """The stream's session ended: keep it ``window`` seconds more (none: forget it)."""
        kept = self._kept.get(stream_id)
        if kept is None:
            return
        kept.ended = True
        if self.window <= 0 or (kept.released and not kept.detached):
            self._forget(kept)
        else:
            self._arm(kept)

    def detach(self, stream_id: str, reader: int | None) -> None:
        """The reader of the stream went away; see ``Baton.detach``."""
        kept = self._kept.get(stream_id)
        if kept is None or kept.detached:
            return
        stream_log = kept.session.log
        if reader is not None and reader != stream_log.reader:
            return  # a displaced reader's connection: the stream has a newer reader
        if self.window <= 0:
            self._forget(kept)
            if not stream_log.closed:
                log.info("stream %s: its client left; cancelling it", short_id(stream_id))
                kept.session.cancel_scope.cancel()
            return
        stream_log.detach()
        kept.detached = True
        self.detached += 1
        self._telemetry.detached_streams.add(1)
        self._arm(kept)
        log.info(
            "stream %s: its client left; kept %g s for a resume (%s)",
            short_id(stream_id), self.window, "ended" if kept.ended else "running",
        )  # fmt: skip

    def resume(
        self, stream_id: str, after: int, client: str | None
    ) -> tuple[StreamSession, int, list[ClientEvent]]:
        """Hand the stream to a new reader; its session, reader number and replay.

        Raises ``RequestError`` (see ``Baton.resume``).
        """
        kept = self._kept.get(stream_id)
        if kept is None or kept.client != client:
            # One message whatever the reason, so a guess cannot learn that a stream exists.
            raise RequestError(
                "unknown_stream",
                f"No stream {short_id(stream_id)} can be resumed here: it never existed, "
                f"its resume window ({self.window:g} s without a reader) is over, or another "
                "client started it. Start the request again.",
                status=404,
            )
        stream_log = kept.session.log
        if isinstance(after, bool) or not isinstance(after, int) or after < -1:
            raise RequestError(
                "bad_request",
                f"'after' must be the seq of the last event you hold, an integer (-1: none), "
                f"not {after!r}.",
            )
        if after > stream_log.last_seq:
            raise RequestError(
                "bad_request",
                f"Stream {short_id(stream_id)} has sent events up to seq {stream_log.last_seq} "
                f"only; 'after' ({after}) must be the seq of the last event you hold.",
            )
        displaced = not kept.detached
        try:
            reader, replay = stream_log.reattach(after)
        except ResumeUnavailable as exc:
            raise RequestError(
                "resume_unavailable",
                f"Stream {short_id(stream_id)} no longer holds the events after seq {after}: "
                f"the oldest seq it still holds is {exc.oldest} (server.event_log_cap). "
                "Start the request again.",
                status=410,
            ) from None
        if kept.detached:
            kept.detached = False
            self.detached -= 1
            self._telemetry.detached_streams.add(-1)
        kept.released = False
        if kept.ended:
            self._arm(kept)
        else:
            self._disarm(kept)
        self._telemetry.stream_resumes.add(1)
        log.info(
            "stream %s: resumed after seq %d (%d events replayed%s)",
            short_id(stream_id), after, len(replay),
            "; its previous reader is displaced" if displaced else "",
        )  # fmt: skip
        return kept.session, reader, replay

    def read_to_end(self, stream_id: str, reader: int) -> None:
        """The stream's current reader took past its terminal event: nothing is left to resume."""
        kept = self._kept.get(stream_id)
        if kept is not None and kept.ended and kept.session.log.reader == reader:
            self._forget(kept)

    def release(self, stream_id: str, reader: int) -> None:
        """The stream's current reader needs nothing kept after the end; see ``StreamHandle``."""
        kept = self._kept.get(stream_id)
        if kept is None or kept.session.log.reader != reader:
            return
        kept.released = True
        if kept.ended:
            self._forget(kept)

    def _arm(self, kept: _Kept) -> None:
        """Forget the stream (cancelling it if it runs) ``window`` seconds from now."""
        self._disarm(kept)
        timer = kept.timer = trio.CancelScope(deadline=trio.current_time() + self.window)

        async def expire() -> None:
            with timer:
                await trio.sleep_forever()
            if kept.timer is timer:  # not disarmed: the deadline passed
                self._expire(kept)

        self._spawn(expire)

    def _disarm(self, kept: _Kept) -> None:
        timer, kept.timer = kept.timer, None
        if timer is not None:
            timer.cancel()

    def _expire(self, kept: _Kept) -> None:
        self._forget(kept)
        if not kept.session.log.closed:
            log.info(
                "stream %s: no reader for %g s; cancelling it", short_id(kept.session.id),
                self.window,
            )  # fmt: skip
            kept.session.cancel_scope.cancel()

    def _forget(self, kept: _Kept) -> None:
        self._disarm(kept)
        if self._kept.get(kept.session.id) is kept:
            del self._kept[kept.session.id]
        if kept.detached:
            kept.detached = False
            self.detached -= 1
            self._telemetry.detached_streams.add(-1)
