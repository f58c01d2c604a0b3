"""One WebSocket connection of the ASGI face: the dispatcher's
:class:`~sente_lite.core.ports.ConnectionPort`, its bounded outbound queue and the task
that writes it.

Any thread may send (the hub fans a publish out from whatever thread published it, a
plain ``def`` handler runs on a worker thread): a frame goes into the connection's queue
under a lock, and the queue's writer task, on the event loop, hands it to the ASGI
server's ``send``. More than ``max_queued_bytes_per_conn`` waiting closes the connection
with 4001 (slow consumer), as the threaded face does, dropping what was queued.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from typing import Any, Deque, Dict, Optional

from ..core.front import Identity
from ..core.inflow import InboundGauge, InboundLimits
from ..core.messaging import check_event_id
from ..core.security import report
from ..counters import Counter, Counters
from ..errors import Disconnected, LimitExceeded, RequestTimeout
from ..session import ServerSession, resolve
from ..wire import packers
from ..wire import protocol as p
from .http import Send

log = logging.getLogger("sente_lite.server")


class AsgiConnection:
    """One live connection, as handlers and hooks see it.

    Public attributes, as on the threaded face's :class:`~sente_lite.server.Connection`:
    ``conn_id``, ``client_id``, ``uid``, ``remote_address``, ``first``, ``connected_at``.
    ``await conn.request(event, data, timeout=)`` asks the client (``conn.request_sync``
    from a plain ``def`` handler); ``conn.send(event,
    data)`` and ``conn.close(code, reason)`` work from any thread.
    """

    def __init__(self, conn_id: str, ident: Identity, first: bool, session_of: Any,
                 loop: asyncio.AbstractEventLoop, counters: Counters, max_queued_bytes: int,
                 inbound: InboundLimits, close_timeout: float) -> None:
        self.conn_id = conn_id
        self.client_id = ident.client_id
        self.uid = ident.uid
        self.authenticated = ident.authenticated
        self.remote_address = ident.remote
        self.first = first
        self.connected_at = time.time()
        self.packer = packers.get(ident.packer, native_bytes=ident.bytes)
        #: permessage-deflate is the ASGI server's business: the hub builds plain frames
        self.deflate_bits = 0
        self.session: ServerSession = session_of(conn_id, time.monotonic(), self.packer)
        self._loop = loop
        self._loop_thread = threading.get_ident()  # made on the loop's thread
        self._counters = counters
        self._limit = max_queued_bytes
        self._close_timeout = close_timeout
        self._lock = threading.Lock()
        self._queue: Deque[bytes] = collections.deque()
        self._queued_bytes = 0
        self._wake = asyncio.Event()
        self._wake_asked = False
        self._close_code: Optional[int] = None
        self._close_reason = ""
        self._drop = False  # a close that drops what is queued (4001)
        self._resumed = asyncio.Event()
        #: frames read and waiting for this connection's handler lane
        self.inflow = InboundGauge(inbound, self._resumed.set)
        #: the tasks reading and writing this connection (cancelled past ``close_timeout``)
        self.tasks: list = []
        self.frames_in = self.bytes_in = self.frames_out = self.bytes_out = 0

    def __repr__(self) -> str:
        return f"<AsgiConnection {self.conn_id} uid={self.uid!r} {self.remote_address}>"

    # -- the port's state ---------------------------------------------------------------
    @property
    def closing(self) -> bool:
        return self._close_code is not None

    @property
    def close_code(self) -> Optional[int]:
        """The code of the close the server asked for (None: none asked)."""
        return self._close_code

    @property
    def close_reason(self) -> str:
        return self._close_reason

    @property
    def input_paused(self) -> bool:
        return self.inflow.paused

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    @property
    def last_seen(self) -> float:
        return self.session.last_seen

    @property
    def info(self) -> Optional[Dict[str, Any]]:
        """The ``info`` claim of its JWT connection token (the last refreshed), else None."""
        return self.session.token_info

    @property
    def token_exp(self) -> Optional[float]:
        """Its JWT connection token's ``exp`` (seconds since the epoch), else None."""
        return self.session.token_exp

    # -- sending (any thread) --------------------------------------------------------------
    def send(self, event: str, data: Any = None) -> bool:
        """Queue ``event`` with ``data`` for this peer. False when it is closing."""
        check_event_id(event)
        return self.send_frame(self.packer.encode(event, data))

    def send_frame(self, frame: bytes) -> bool:
        """Queue one encoded frame; False when closing or the queue overflowed."""
        return self._push(frame)

    def deliver(self, wire: bytes, size: int) -> bool:
        """Queue one channel message built by the hub (its payload: this face's hub
        builds payloads, not WebSocket frames)."""
        return self._push(wire)

    def ping(self) -> None:
        self._push(self.packer.encode(p.EV_PING))

    def _push(self, payload: bytes) -> bool:
        with self._lock:
            if self._close_code is not None:
                return False
            if self._queued_bytes + len(payload) > self._limit:
                overflow = True
            else:
                overflow = False
                self._queue.append(payload)
                self._queued_bytes += len(payload)
                self.frames_out += 1
                self.bytes_out += len(payload)
                poke = not self._wake_asked
                self._wake_asked = True
        if overflow:
            self._overflowed()
            return False
        if poke:
            self._poke()
        return True

    def _poke(self) -> None:
        if threading.get_ident() == self._loop_thread:
            self._wake.set()
        else:
            try:
                self._loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:  # the loop is closed: the connection is gone
                pass

    def _overflowed(self) -> None:
        if self._request_close(p.CLOSE_SLOW_CONSUMER, "slow consumer: outbound queue full", False):
            self._counters.add(Counter.SLOW_CONSUMER_CLOSES)
            report(log, "closed", "slow-consumer", conn_id=self.conn_id, uid=self.uid,
                   remote=self.remote_address, code=p.CLOSE_SLOW_CONSUMER,
                   message=f"outbound queue over {self._limit} bytes (max_queued_bytes_per_conn)")

    # -- closing ---------------------------------------------------------------------
    def close(self, code: int = p.CLOSE_NORMAL, reason: str = "", flush: bool = True) -> None:
        """Close with ``code`` after what is queued (``flush=False``: drop it)."""
        self._request_close(code, reason, flush)

    def _request_close(self, code: int, reason: str, flush: bool) -> bool:
        with self._lock:
            if self._close_code is not None:
                return False
            self._close_code, self._close_reason = code, reason
            if not flush:
                self._queue.clear()
                self._queued_bytes = 0
                self._drop = True
        if threading.get_ident() == self._loop_thread:
            self._closing_now()
        else:
            try:
                self._loop.call_soon_threadsafe(self._closing_now)
            except RuntimeError:
                pass
        return True

    def _closing_now(self) -> None:
        """On the loop: wake the writer (it sends the close last) and, should the peer
        not read, end the connection after ``close_timeout``."""
        self._wake.set()
        self._resumed.set()
        self._loop.call_later(self._close_timeout, self.abort)

    def abort(self) -> None:
        """End the connection's tasks now (its socket is the ASGI server's to drop)."""
        for task in self.tasks:
            task.cancel()

    # -- the writer task (on the loop) --------------------------------------------------
    async def write(self, send: Send) -> None:
        """Hand queued frames to the ASGI server in order; the close frame last."""
        text = not self.packer.binary
        wake = self._wake
        while True:
            await wake.wait()
            wake.clear()
            with self._lock:
                self._wake_asked = False
                batch, self._queue = self._queue, collections.deque()
            for payload in batch:
                if self._drop:
                    break
                if text:
                    await send({"type": "websocket.send", "text": payload.decode("utf-8")})
                else:
                    await send({"type": "websocket.send", "bytes": payload})
                with self._lock:
                    self._queued_bytes = max(0, self._queued_bytes - len(payload))
            if self._close_code is not None and not self._queue:
                await send({"type": "websocket.close", "code": self._close_code,
                            "reason": self._close_reason})
                return

    # -- the server's requests to this peer --------------------------------------------
    async def request(self, event: str, data: Any = None, timeout: float = 5.0) -> Any:
        """Send a request to this peer and wait for its reply (on the event loop).

        Raises :class:`~sente_lite.errors.RemoteError` (the client's error code),
        :class:`~sente_lite.errors.RequestTimeout`, :class:`~sente_lite.errors.Disconnected`
        or :class:`~sente_lite.errors.LimitExceeded` (``max_outstanding_requests``)."""
        check_event_id(event)
        fut: "asyncio.Future[Any]" = self._loop.create_future()
        session = self.session
        try:
            cb_id, frame = session.request(event, data, fut, time.monotonic(), timeout)
        except LimitExceeded:
            raise LimitExceeded(f"{session.outstanding} requests to {self.conn_id} already await "
                                "a reply (max_outstanding_requests)") from None
        try:
            if not self.send_frame(frame):
                raise Disconnected(f"connection {self.conn_id} is closing")
            try:
                return await asyncio.wait_for(fut, timeout)
            except asyncio.TimeoutError:
                raise RequestTimeout(f"no reply to {event} from {self.conn_id} "
                                     f"within {timeout}s") from None
        finally:
            session.forget(cb_id)

    def request_sync(self, event: str, data: Any = None, timeout: float = 5.0) -> Any:
        """:meth:`request` from a plain ``def`` handler (a worker thread): waits for the reply
        there. RuntimeError on the event loop's own thread (``await conn.request()`` there)."""
        if threading.get_ident() == self._loop_thread:
            raise RuntimeError("request_sync() on the event loop would stop it: await request()")
        return asyncio.run_coroutine_threadsafe(self.request(event, data, timeout),
                                                self._loop).result()

    def settle(self, waiter: Any, result: Any, error: Optional[BaseException]) -> None:
        """Hand the outcome of one of the server's requests to its future (on the loop)."""
        if threading.get_ident() == self._loop_thread:
            resolve(waiter, result, error)
        else:
            self._loop.call_soon_threadsafe(resolve, waiter, result, error)


__all__ = ["AsgiConnection"]
