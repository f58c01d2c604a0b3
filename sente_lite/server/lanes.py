"""Where each frame a connection sends is handled: on the network thread, or on the
connection's worker lane, in arrival order whatever its framing.

:class:`Lanes` runs on the network thread for every whole message. What a frame may
involve is its :class:`~sente_lite.wire.protocol.FrameKind`, told by the connection's
packer from its first bytes (nothing decoded here). A frame that runs no application
code (below the dispatcher's ``app_code_from``) is handled right there while nothing of
its connection waits for a worker; answers to the server's requests always are (a
handler waiting in ``request()`` needs them). Anything else goes to the connection's
lane, behind what is already there, and counts as waiting input
(:mod:`sente_lite.core.inflow`) until it is handled. A ``chsk/batch`` is split here and
each frame in it takes the same way as if it came alone (by the kind of what its
session made of it). What a frame asks for is the
:class:`~sente_lite.core.dispatcher.ServerDispatcher`'s business.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, List

from .. import session as ss
from ..core.dispatcher import ServerDispatcher
from ..core.inflow import InboundGauge
from ..core.metrics import LatencyHistogram
from ..wire import protocol as p
from .ports import ConnectionPort
from .workers import WorkerPool

_ANSWER, _BATCH = p.FrameKind.ANSWER, p.FrameKind.BATCH


def _counted(inflow: InboundGauge, frames: int, size: int, task: Callable[[], None]) -> None:
    try:
        task()
    finally:
        inflow.done(frames, size)


class Lanes:
    """Sends each frame of a server's connections where it is handled (see the module)."""

    def __init__(self, dispatcher: ServerDispatcher, pool: WorkerPool,
                 latency: LatencyHistogram) -> None:
        self.dispatcher = dispatcher
        self.pool = pool
        self.latency = latency

    def on_message(self, conn: ConnectionPort, msg: Any, size: int) -> None:
        """One whole message from ``conn`` (on the network thread): handled here, or
        sent to the connection's lane (see the module)."""
        conn.frames_in += 1
        conn.bytes_in += size
        session = conn.session
        kind = conn.packer.frame_kind(msg)
        if kind is _BATCH:
            session.admit(msg, time.monotonic())  # life; its frames are rate-checked one by one
            self._dispatch_parts(conn, session.receive_parts(msg), size)
            return
        refused = session.admit(msg, time.monotonic())
        if refused is not None:  # answered in order with what is queued before it
            self._dispatch_parts(conn, [refused], 0)
            return
        if kind is _ANSWER or (kind < self.dispatcher.app_code_from and conn.lane.idle):
            conn.frames_inline += 1
            self.handle(conn, msg)
            return
        self._to_lane(conn, 1, size, functools.partial(self.handle, conn, msg))

    def _dispatch_parts(self, conn: ConnectionPort, parts: List[ss.Received], size: int) -> None:
        """Handle what each frame of one message produced, in order, each where its
        kind belongs."""
        app_code_from = self.dispatcher.app_code_from
        for part in parts:
            kind = part.kind
            if kind is _ANSWER or (kind < app_code_from and conn.lane.idle):
                conn.frames_inline += 1
                self.apply(conn, part)
            else:  # the message's bytes are held until its first part on the lane is done
                self._to_lane(conn, 1, size, functools.partial(self.apply, conn, part))
                size = 0

    def _to_lane(self, conn: ConnectionPort, frames: int, size: int, task: Callable[[], None]) -> None:
        """Run ``task`` on the connection's lane; its ``frames`` and ``size`` bytes count
        as waiting input (``max_inbound_frames``/``max_inbound_bytes``) until it is done."""
        inflow = conn.inflow
        inflow.add(frames, size)
        self.pool.submit(conn.lane, functools.partial(_counted, inflow, frames, size, task))

    def handle(self, conn: ConnectionPort, msg: Any) -> None:
        """Handle one message (admitted already); never raises."""
        started = time.perf_counter()
        self._timed(self.dispatcher.receive(conn, msg), started)

    def apply(self, conn: ConnectionPort, received: ss.Received) -> None:
        """Act on what one frame produced (received already); never raises."""
        started = time.perf_counter()
        self.dispatcher.apply(conn, received)
        self._timed(received, started)

    def _timed(self, received: ss.Received, started: float) -> None:
        """Each request answered counts in the request latency histogram."""
        for ev in received.events:
            if ev.cb_id is not None:
                self.latency.observe(time.perf_counter() - started)


__all__ = ["Lanes"]
