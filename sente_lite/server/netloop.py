"""The server's network thread: one ``selectors`` loop serves every socket.

Each accepted socket is a :class:`~sente_lite.server.link.Link`: its own websockets
``ServerProtocol`` (the library's public sans-I/O API: ``receive_data`` ->
``events_received`` -> ``data_to_send``), an :class:`~sente_lite.core.outbox.Outbox` for the
bytes the kernel has not taken yet, and, with TLS, an ``ssl.SSLObject`` over memory
buffers. The loop thread (``sente-lite-net``) is the only one that reads sockets and
feeds protocols; any thread may write a whole frame to a link (``Link.send``), under the
link's lock, straight to the socket when nothing is queued. So the number of threads
does not grow with the number of connections, and each connection holds one file
descriptor.

:class:`NetLoop` runs the thread: the selector, calls from other threads, timers, the
heartbeat tick, and the batching of what the loop thread itself writes (once per peer
per pass). The rest is its collaborators', each in its own module:

* :class:`~sente_lite.server.accept.Acceptor`: the listening socket, accepting, running out
  of file descriptors (a reserve descriptor lets it answer 503);
* :class:`~sente_lite.server.handshake.HandshakeGuard`: the upgrades in progress and the
  limits against slowloris (a deadline for the request line and one for the whole
  upgrade, a global and a per-address cap, the oldest evicted when a cap is reached);
* :class:`~sente_lite.server.handshake.Upgrader`: a request to the handler and its decision
  back (101 or an answer), malformed requests;
* :class:`~sente_lite.server.reader.Reader`: bytes to messages (fragments, size, UTF-8);
* :class:`~sente_lite.server.writer.Writer` and :class:`~sente_lite.server.writer.Closer`: writing,
  closing handshakes with their deadline, the end of a link.

What to do with a request, a message or a close is the :class:`LinkHandler`'s
business (the server).
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import selectors
import socket
import ssl
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from websockets.http11 import Response

from .accept import (ACCEPT_ERROR_LOG_EVERY_S, ACCEPT_PAUSE_S, ACCEPTS_PER_WAKE, Acceptor,
                     raise_descriptor_limit)
from .handshake import EVICT_MIN_AGE_S, PENDING_SWEEP_S, HandshakeGuard, Upgrader
from ..core.inflow import InboundLimits
from .link import DEFER, RECV_BYTES, Admit, Decision, Defer, Link, LinkHandler
from .link_state import CLOSED
from .reader import Reader
from .writer import GC_AFTER_DROPPED_BYTES, Closer, Writer

log = logging.getLogger("sente_lite.net")


class NetLoop:
    """The loop thread and its listening socket. See the module docstring."""

    def __init__(
        self,
        handler: LinkHandler,
        host: str,
        port: int,
        *,
        ssl_context: Optional[ssl.SSLContext] = None,
        accept_backlog: int,
        max_message_bytes: int,
        max_queued_bytes: int,
        write_delay_ns: int,
        close_timeout: float,
        handshake_timeout: float,
        request_line_timeout: float,
        max_pending_handshakes: int,
        max_pending_handshakes_per_address: int,
        tick_s: float,
        extensions: Optional[List[Any]] = None,
        inbound: InboundLimits = InboundLimits(),
    ) -> None:
        self.handler = handler
        self.inbound = inbound
        self.extensions = extensions  # websockets extension factories offered to every upgrade
        self.host = host
        self.requested_port = port
        self.ssl_context = ssl_context
        self.accept_backlog = accept_backlog
        self.max_message_bytes = max_message_bytes
        self.max_queued_bytes = max_queued_bytes
        self.write_delay_ns = write_delay_ns
        self.close_timeout = close_timeout
        self.handshake_timeout = handshake_timeout
        self.request_line_timeout = request_line_timeout
        self.max_pending = max_pending_handshakes
        self.max_pending_per_address = max_pending_handshakes_per_address
        self.tick_s = tick_s
        self.port = 0
        self.links: Dict[int, Link] = {}
        self.counts: Dict[str, int] = collections.defaultdict(int)
        self.selector = selectors.DefaultSelector()
        self.running = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._calls: Deque[Callable[[], None]] = collections.deque()
        self._wake_sent = False
        self._timers: List[Tuple[float, int, Callable[[], None]]] = []
        self._timer_seq = itertools.count()
        self._thread: Optional[threading.Thread] = None
        self._ident: Optional[int] = None
        self._dirty: List[Link] = []  # links with frames held during this pass
        self.api: Any = None  # the server API (sente_lite.server.api_front.ApiFront): POST /api/ sockets
        # the collaborators reach each other through this loop
        self.acceptor = Acceptor(self)
        self.handshakes = HandshakeGuard(self)
        self.upgrader = Upgrader(self)
        self.reader = Reader(self)
        self.writer = Writer(self)
        self.closer = Closer(self)

    # -- lifecycle (any thread) ------------------------------------------------------------
    def start(self) -> None:
        self.port = self.acceptor.open()
        self.selector.register(self._wake_r, selectors.EVENT_READ, self._wake_r)
        self.running = True
        self._thread = threading.Thread(target=self._run, name="sente-lite-net", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Drop every link still open, close the listener, join the loop thread."""
        if self._thread is None:
            return

        def halt() -> None:
            self.closer.finish_all()
            self.running = False

        self.call_soon(halt)
        self._thread.join(timeout)
        if self._thread.is_alive():  # pragma: no cover - a bug
            log.error("network thread did not stop within %.1fs", timeout)
        self._thread = None
        self.acceptor.close()
        self._wake_r.close()
        self._wake_w.close()
        self.selector.close()

    @property
    def thread_ident(self) -> Optional[int]:
        return self._thread.ident if self._thread is not None else None

    def on_loop(self) -> bool:
        """True on the loop thread."""
        return self._ident is not None and threading.get_ident() == self._ident

    def hold_for_pass(self, link: Link) -> None:
        """``link`` got frames held on this thread: written with the rest of this pass."""
        self._dirty.append(link)

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop thread (thread-safe; in call order)."""
        self._calls.append(fn)
        if not self._wake_sent:
            self._wake_sent = True
            try:
                self._wake_w.send(b"x")
            except (BlockingIOError, InterruptedError):
                pass  # a wake-up byte is already waiting
            except OSError:
                pass  # stopped

    def call_at(self, when: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop thread at ``time.monotonic()`` ``when`` (loop thread only)."""
        heapq.heappush(self._timers, (when, next(self._timer_seq), fn))

    def decide(self, link: Link, decision: Decision) -> None:
        """The handler's late answer to ``link``'s request (from any thread)."""
        def apply() -> None:
            self.upgrader.apply(link, decision)
            if link.owner is not None and link.inbox and link.state is not CLOSED:
                self.reader.feed(link, b"")  # frames sent before the 101

        self.call_soon(apply)

    def watch(self, link: Link) -> None:
        """Have the selector watch ``link`` for reading unless its reading is paused, and
        for writing while bytes wait (loop thread)."""
        events = ((0 if link.inflow.paused else selectors.EVENT_READ)
                  | (selectors.EVENT_WRITE if link.watching_write else 0))
        if events == link.events or link.state is CLOSED:
            return
        if not events:
            self.selector.unregister(link.sock)
        elif not link.events:
            self.selector.register(link.sock, events, link)
        else:
            self.selector.modify(link.sock, events, link)
        link.events = events

    def pending_count(self) -> int:
        return len(self.handshakes)

    def _internal_error(self, link: Link, exc: BaseException) -> Response:
        """Count and log ``exc``, raised deciding ``link``'s upgrade; the 500 to answer."""
        return self.upgrader.internal_error(link, exc)

    # -- the loop ------------------------------------------------------------------------
    def _run(self) -> None:
        select = self.selector.select
        accept = self.acceptor.accept
        read = self.reader.read
        flush = self.writer.flush
        pending = self.handshakes.pending
        wake_r = self._wake_r
        next_tick = time.monotonic() + self.tick_s
        next_sweep = time.monotonic() + PENDING_SWEEP_S
        self._ident = threading.get_ident()
        try:
            while self.running:
                if self._dirty:
                    self._flush_dirty()
                now = time.monotonic()
                wait = min(next_tick, next_sweep if pending else next_tick) - now
                if self._timers:
                    wait = min(wait, self._timers[0][0] - now)
                if self._calls:
                    wait = 0
                for key, mask in select(max(0.0, wait)):
                    link = key.data
                    if link is None:
                        accept()
                    elif link is wake_r:
                        self._drain_wake()
                    else:
                        try:
                            if mask & selectors.EVENT_WRITE:
                                flush(link)
                            if mask & selectors.EVENT_READ and link.state is not CLOSED:
                                read(link)
                        except Exception:
                            self.counts["internal_errors"] += 1
                            log.exception("internal error serving %s; dropping it", link.remote)
                            self.closer.finish(link)
                self._run_calls()
                now = time.monotonic()
                timers = self._timers
                while timers and timers[0][0] <= now:
                    _, _, fn = heapq.heappop(timers)
                    self.guarded(fn)
                if now >= next_sweep:
                    next_sweep = now + PENDING_SWEEP_S
                    self.handshakes.sweep(now)
                if now >= next_tick:
                    stalled = max(0.0, now - next_tick - self.tick_s)
                    next_tick = now + self.tick_s
                    self.closer.collect_garbage()
                    self.reader.sweep(now)
                    self.guarded(lambda: self.handler.on_tick(now, stalled))
        except Exception:  # pragma: no cover - a bug in the loop itself
            log.exception("network loop failed; dropping every connection")
            self.closer.finish_all()

    def _flush_dirty(self) -> None:
        """Write what this thread held for each peer during the pass: one write per peer
        however many frames it got (a publish read from several sockets at once)."""
        dirty, self._dirty = self._dirty, []
        flush = self.writer.flush
        for link in dirty:
            link.dirty = False
            if link.state is not CLOSED:
                flush(link)

    def guarded(self, fn: Callable[[], None]) -> None:
        """Run ``fn``; an exception is counted and logged, never raised."""
        try:
            fn()
        except Exception:
            self.counts["internal_errors"] += 1
            log.exception("internal error on the network thread")

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _run_calls(self) -> None:
        calls = self._calls
        self._wake_sent = False
        while calls:
            self.guarded(calls.popleft())


__all__ = ["NetLoop", "Link", "LinkHandler", "Admit", "Defer", "DEFER", "Decision",
           "raise_descriptor_limit", "RECV_BYTES", "ACCEPTS_PER_WAKE", "ACCEPT_PAUSE_S",
           "ACCEPT_ERROR_LOG_EVERY_S", "EVICT_MIN_AGE_S", "PENDING_SWEEP_S",
           "GC_AFTER_DROPPED_BYTES"]
