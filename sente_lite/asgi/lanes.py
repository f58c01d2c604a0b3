"""Where each frame of an ASGI connection is handled, in arrival order: at once on the
event loop, or on the connection's lane (a task of its own), as the threaded face's
:mod:`sente_lite.server.lanes` decides it.

A frame that runs no application code (below the dispatcher's ``app_code_from``) is
handled as it is read while nothing of its connection waits on the lane; answers to the
server's requests always are (a handler awaiting ``conn.request()`` needs them). Anything
else goes to the lane, behind what is there: an ``async def`` handler is awaited there,
a plain ``def`` handler (and an ``authorize`` hook) runs on a worker thread, one event
of a connection at a time. A ``chsk/batch`` is split and each frame in it goes its own
way. What a frame asks for is the :class:`~sente_lite.core.dispatcher.ServerDispatcher`'s.
Frames waiting on the lane count against ``max_inbound_frames``/``max_inbound_bytes``
(:mod:`sente_lite.core.inflow`): at either mark the connection is not read until they
are under half (twice the marks while the server awaits a reply on it).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextvars
import functools
import logging
import time
from typing import Any, Callable, Deque, Mapping, Optional, Set, Tuple, Union

from .. import session as ss
from ..core.dispatcher import ServerDispatcher
from ..core.metrics import LatencyHistogram
from ..core.security import report
from ..counters import Counter
from ..wire import protocol as p
from ..wire import tracing
from .connection import AsgiConnection
from .http import Receive

log = logging.getLogger("sente_lite.server")

_ANSWER, _BATCH = p.FrameKind.ANSWER, p.FrameKind.BATCH
#: An item of a lane: a message still to decode, or what one frame of a batch produced.
Item = Tuple[Union[str, bytes, ss.Received], int]


class Lane:
    """The handler lane of one connection: its items, run one at a time, in order."""

    __slots__ = ("items", "running", "wake", "task")

    def __init__(self) -> None:
        self.items: Deque[Item] = collections.deque()
        self.running = False
        self.wake = asyncio.Event()
        self.task: Optional["asyncio.Task[None]"] = None

    @property
    def idle(self) -> bool:
        return not self.running and not self.items


class Lanes:
    """Reads the connections of one :class:`~sente_lite.asgi.App` and runs their lanes."""

    def __init__(self, dispatcher: ServerDispatcher, async_handlers: Set[Any],
                 executor: concurrent.futures.Executor, latency: LatencyHistogram,
                 max_message_bytes: int) -> None:
        self.dispatcher = dispatcher
        self.counters = dispatcher.counters
        self.handlers: Mapping[str, Any] = dispatcher.handlers
        self.async_handlers = async_handlers
        self.executor = executor
        self.latency = latency
        self.max_message_bytes = max_message_bytes

    # -- reading ---------------------------------------------------------------------------
    async def read(self, conn: AsgiConnection, lane: Lane, receive: Receive) -> int:
        """Read ``conn`` until the peer leaves (returns the close code the ASGI server
        reports); each message goes where it is handled."""
        while True:
            msg = await receive()
            kind = msg["type"]
            if kind == "websocket.disconnect":
                return int(msg.get("code") or 1005)
            if kind != "websocket.receive" or conn.closing:
                continue
            data = msg.get("text")
            if data is None:
                data = msg.get("bytes")
                if data is None:
                    continue
            size = len(data)
            if type(data) is str and size * 4 > self.max_message_bytes:
                size = len(data.encode("utf-8", "surrogatepass"))
            if size > self.max_message_bytes:
                self._too_big(conn, size)
                continue
            conn.frames_in += 1
            conn.bytes_in += size
            self.on_message(conn, lane, data, size)
            inflow = conn.inflow
            if inflow.room(2 if conn.session.outstanding else 1) is None:
                await self._paused(conn)

    def _too_big(self, conn: AsgiConnection, size: int) -> None:
        self.counters.add(Counter.TOO_LARGE_CLOSES)
        report(log, "closed", "max-message-bytes", conn_id=conn.conn_id, uid=conn.uid,
               remote=conn.remote_address, code=p.CLOSE_TOO_BIG,
               message=f"a message of {size} bytes (max_message_bytes={self.max_message_bytes})")
        conn.close(p.CLOSE_TOO_BIG, "message too big")

    async def _paused(self, conn: AsgiConnection) -> None:
        """Stop reading ``conn`` until its lane is under half the marks."""
        inflow = conn.inflow
        inflow.pause()
        resumed = conn._resumed
        resumed.clear()
        self.counters.add(Counter.INBOUND_PAUSES)
        while not inflow.low() and not conn.closing:
            await resumed.wait()
            resumed.clear()
        inflow.resume()

    def on_message(self, conn: AsgiConnection, lane: Lane, msg: Union[str, bytes], size: int) -> None:
        """One whole message of ``conn``: handled now, or queued on its lane."""
        session = conn.session
        kind = conn.packer.frame_kind(msg)
        now = time.monotonic()
        if kind is _BATCH:
            session.admit(msg, now)  # life; its frames are rate-checked one by one
            self._parts(conn, lane, session.receive_parts(msg), size)
            return
        refused = session.admit(msg, now)
        if refused is not None:
            self._parts(conn, lane, [refused], 0)
            return
        if kind is _ANSWER or (kind < self.dispatcher.app_code_from and lane.idle):
            self._timed(self.dispatcher.receive(conn, msg), time.perf_counter())
            return
        self._queue(conn, lane, msg, size)

    def _parts(self, conn: AsgiConnection, lane: Lane, parts: list, size: int) -> None:
        app_code_from = self.dispatcher.app_code_from
        for part in parts:
            kind = part.kind
            if kind is _ANSWER or (kind < app_code_from and lane.idle):
                started = time.perf_counter()
                self.dispatcher.apply(conn, part)
                self._timed(part, started)
            else:
                self._queue(conn, lane, part, size)
                size = 0

    def _queue(self, conn: AsgiConnection, lane: Lane, item: Any, size: int) -> None:
        conn.inflow.add(1, size)
        lane.items.append((item, size))
        lane.wake.set()

    # -- the lane ---------------------------------------------------------------------------
    async def run(self, conn: AsgiConnection, lane: Lane) -> None:
        """Run ``conn``'s lane until cancelled (its connection ended)."""
        items = lane.items
        while True:
            await lane.wake.wait()
            lane.wake.clear()
            while items:
                item, size = items.popleft()
                if item is None:  # the connection ended: what it held is done
                    return
                lane.running = True
                try:
                    started = time.perf_counter()
                    received = (item if isinstance(item, ss.Received)
                                else self.dispatcher.decode(conn, item))
                    await self.apply(conn, received)
                    self._timed(received, started)
                finally:
                    lane.running = False
                    conn.inflow.done(1, size)

    async def apply(self, conn: AsgiConnection, received: ss.Received) -> None:
        """Act on what one frame produced, awaiting application code. Never raises."""
        for frame in received.frames:
            conn.send_frame(frame)
        dispatcher = self.dispatcher
        for ev in received.events:
            if type(ev) is ss.AppEvent and ev.event in self.handlers:
                with tracing.active(ev.traceparent):
                    await self._app_event(conn, ev)
            elif ev.kind >= dispatcher.app_code_from:  # a channel operation and its hook
                await self.in_thread(dispatcher.act, conn, ev)
            else:
                dispatcher.act(conn, ev)

    async def _app_event(self, conn: AsgiConnection, ev: ss.AppEvent) -> None:
        handler = self.handlers[ev.event]
        dispatcher = self.dispatcher
        try:
            with dispatcher.handler_span(conn, ev):
                if handler in self.async_handlers:
                    result = await handler(conn, ev.data)
                else:
                    result = await self.in_thread(handler, conn, ev.data)
        except Exception as exc:
            dispatcher.handled(conn, ev, None, exc)
            return
        dispatcher.handled(conn, ev, result, None)

    async def in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on a worker thread, in this task's context (trace, span)."""
        ctx = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(
            self.executor, functools.partial(ctx.run, fn, *args))

    def _timed(self, received: ss.Received, started: float) -> None:
        """Each request answered counts in the request latency histogram."""
        for ev in received.events:
            if ev.cb_id is not None:
                self.latency.observe(time.perf_counter() - started)


__all__ = ["Lanes", "Lane"]
