"""Where each frame a connection sends is handled: on the network thread, or on the
connection's worker lane, in arrival order whatever its framing.

:class:`Dispatcher` runs on the network thread for every whole message. A frame that
runs no application code (a built-in, with no ``authorize`` hook for channel ones) is
handled right there while nothing of its connection waits for a worker (its
:class:`~sente_lite.wire.protocol.FrameKind`, told by the connection's packer from its
first bytes); answers to the server's requests always are (a handler waiting in ``request()`` needs them). Anything
else goes to the connection's lane, behind what is already there, and counts as waiting
input (:mod:`sente_lite.core.inflow`) until it is handled. A ``chsk/batch`` is split here and
each frame in it takes the same way as if it came alone. What a frame asks for is
:class:`~sente_lite.server.handler.ServerCore`'s business.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any, Callable, List, Optional, Protocol

from ..wire import protocol as p
from .. import session as ss
from ..wire import tracing
from ..counters import Counter, Counters
from ..core.inflow import InboundGauge

from .ports import ConnectionPort, ServerPort


class Acting(Protocol):
    """What the dispatcher hands a connection's received frames to
    (:class:`sente_lite.server.handler.ServerCore`)."""

    server: ServerPort
    counters: Counters

    def _apply(self, conn: ConnectionPort, received: ss.Received, msg: Any) -> None: ...

log = logging.getLogger("sente_lite.server")

_ANSWER, _BUILTIN, _CHANNEL, _BATCH = (p.FrameKind.ANSWER, p.FrameKind.BUILTIN,
                                      p.FrameKind.CHANNEL, p.FrameKind.BATCH)


def _counted(inflow: InboundGauge, frames: int, size: int, task: Callable[[], None]) -> None:
    try:
        task()
    finally:
        inflow.done(frames, size)


class Dispatcher:
    """Sends each frame of a server's connections where it is handled (see the module)."""

    def __init__(self, core: Acting) -> None:
        self.core = core
        self.server = core.server
        self.counters = core.counters

    def on_message(self, conn: ConnectionPort, msg: Any, size: int) -> None:
        """One whole message from ``conn`` (on the network thread). Built-in frames are
        handled here when nothing of the connection waits for a worker and no
        application code would run (answers always: a handler waiting in request()
        needs its reply); the rest goes to the connection's lane, in order.
        A ``chsk/batch`` is split here and each frame in it goes the same way."""
        conn.frames_in += 1
        conn.bytes_in += size
        session = conn._session
        kind = conn.packer.frame_kind(msg)
        if kind is _BATCH:
            session.admit(msg, time.monotonic())  # life; its frames are rate-checked one by one
            self._dispatch_parts(conn, session.receive_parts(msg), size)
            return
        refused = session.admit(msg, time.monotonic())
        if refused is not None:  # answered in order with what is queued before it
            self._dispatch_parts(conn, [refused], 0)
            return
        if kind is _ANSWER or (kind is _BUILTIN and conn._lane.idle) or (
                kind is _CHANNEL and self._may_inline(conn)):
            conn.frames_inline += 1
            self.handle(conn, msg)
            return
        self._to_lane(conn, 1, size, functools.partial(self.handle, conn, msg))

    def _to_lane(self, conn: ConnectionPort, frames: int, size: int, task: Callable[[], None]) -> None:
        """Run ``task`` on the connection's lane; its ``frames`` and ``size`` bytes count
        as waiting input (``max_inbound_frames``/``max_inbound_bytes``) until it is done."""
        inflow = conn._link.inflow
        inflow.add(frames, size)
        self.server._pool.submit(conn._lane, functools.partial(_counted, inflow, frames, size, task))

    def _may_inline(self, conn: ConnectionPort) -> bool:
        """A ``sente-lite/*`` frame may be handled on the network thread: nothing of the
        connection waits for a worker and no ``authorize`` hook (application code) is set."""
        return conn._lane.idle and self.server.authorize is None

    def _dispatch_parts(self, conn: ConnectionPort, parts: List[ss.Received], size: int) -> None:
        """Handle what each frame of one message produced, in order: here when it runs
        no application code and nothing of the connection waits for a worker (answers
        to the server's requests always), else on the connection's lane."""
        for part in parts:
            kinds = {type(ev) for ev in part.events}
            if (not part.frames and kinds <= {ss.ReplyArrived}) or (
                    ss.AppEvent not in kinds and self._may_inline(conn)):
                conn.frames_inline += 1
                self.apply(conn, part)
            else:  # the message's bytes are held until its first part on the lane is done
                self._to_lane(conn, 1, size, functools.partial(self.apply, conn, part))
                size = 0

    def handle(self, conn: ConnectionPort, msg: Any) -> None:
        """Handle one message; never raises: a bug costs one answer, not the connection."""
        self._handle(conn, msg, None)

    def apply(self, conn: ConnectionPort, received: ss.Received) -> None:
        """Act on what one frame produced (already received); never raises."""
        self._handle(conn, None, received)

    def _handle(self, conn: ConnectionPort, msg: Any, received: Optional[ss.Received]) -> None:
        started = time.perf_counter()
        try:
            if received is None:
                received = conn._session.receive(msg)
            traced = getattr(received.events[0], "traceparent", None) if received.events else None
            if traced is None:
                self.core._apply(conn, received, msg)
            else:
                with tracing.active(traced):
                    self.core._apply(conn, received, msg)
            for ev in received.events:
                if type(ev) is not ss.ReplyArrived and getattr(ev, "cb_id", None) is not None:
                    self.server._latency.observe(time.perf_counter() - started)
        except Exception:  # handlers and built-ins answer their own errors: this is a bug
            self.counters.add(Counter.INTERNAL_ERRORS)
            log.exception("internal error handling a frame (conn %s)", conn.conn_id)
            self._internal_error(conn, msg, received)

    def _internal_error(self, conn: ConnectionPort, msg: Any, received: Optional[ss.Received]) -> None:
        """Answer the frame whose handling failed with ``handler-error``."""
        cb_id: Optional[str] = None
        event: Optional[str] = None
        try:
            if msg is not None:
                event, _, cb_id = conn._session.packer.decode(msg)
            elif received is not None:
                first = next((ev for ev in received.events if getattr(ev, "cb_id", None)), None)
                cb_id = getattr(first, "cb_id", None)
                event = getattr(first, "event", None)
        except p.FrameError as exc:
            cb_id = exc.cb_id
        try:
            conn._enqueue(conn._session.error(p.ERR_HANDLER_ERROR,
                                              f"internal error handling {event or 'a frame'}",
                                              cb_id, event))
        except Exception:
            log.exception("could not answer the internal error (conn %s)", conn.conn_id)


__all__ = ["Dispatcher"]
