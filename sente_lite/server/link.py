"""One accepted socket of the network loop (:mod:`sente_lite.server.netloop`), and what the
loop asks of the handler that owns it.

A :class:`Link` is a socket with its own websockets ``ServerProtocol`` (the library's
public sans-I/O API), an :class:`~sente_lite.core.outbox.Outbox` for the bytes the kernel has
not taken yet, and, with TLS, a :class:`Tls` over memory buffers. Any thread may write a
whole frame to it (:meth:`Link.send`); everything else is the loop thread's.
"""

from __future__ import annotations

import http
import logging
import selectors
import socket
import ssl
import threading
import time
from typing import Any, Callable, Dict, Optional, Protocol, Sequence, Set

from websockets.http11 import Request, Response
from websockets.server import ServerProtocol

from ..core.front import Admit  # a handler's answer: accept the upgrade (then ``on_open``)
from ..core.inflow import InboundGauge, InboundLimits
from ..core.outbox import Outbox
from ..core.security import select_subprotocol
from ..logsafe import RedactingLogger
from . import link_state
from .link_state import (CLOSING, FAILING, OPEN, TRANSITIONS, UPGRADING, IllegalTransition,
                         LinkState, illegal)

#: Bytes read from a socket at once.
RECV_BYTES = 256 * 1024


class _ProtocolLogger(RedactingLogger):
    """The logger websockets' protocols get: warnings and errors only, each one safe
    line (:class:`~sente_lite.logsafe.RedactingLogger`). Its debug and info lines
    would print every request line and one line per connection."""

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 (logging's name)
        return level >= logging.WARNING and self.logger.isEnabledFor(level)


_PROTOCOL_LOGGER = _ProtocolLogger(logging.getLogger("sente_lite.websockets"))


def _select_subprotocol(protocol: ServerProtocol, offered: Sequence[str]) -> Optional[str]:
    """``sente-lite`` when the client offers it (a browser carrying its token as
    ``bearer.<token>`` next to it), else none, whatever else is offered."""
    return select_subprotocol(offered)


class Defer:
    """A handler's answer: it will decide later, calling :meth:`NetLoop.decide`."""


DEFER = Defer()
Decision = Any  # Response | Admit | Defer


class LinkHandler:
    """What the loop asks of its owner (the server). Every call runs on the loop thread."""

    def on_request(self, link: "Link", request: Request) -> Decision:
        raise NotImplementedError

    def on_admit(self, link: "Link", identity: Any) -> Optional[Response]:
        """An :class:`Admit` is about to be answered 101: take what the connection
        needs (a slot); a Response refuses the upgrade instead."""
        raise NotImplementedError

    def on_unopened(self, link: "Link") -> None:
        """The request of ``link`` was answered without a 101 (or the answer failed):
        give back what :meth:`on_admit` took. Called on every answer that is not a 101."""
        raise NotImplementedError

    def on_open(self, link: "Link", identity: Any) -> None:
        """A 101 went out: register the connection (``link.owner``) and greet it."""
        raise NotImplementedError

    def on_refused(self, link: "Link", reason: str, status: Optional[int], message: str) -> None:
        """The loop refused or dropped an upgrade itself (limits, malformed request)."""
        raise NotImplementedError

    def on_link_closed(self, link: "Link") -> None:
        """The socket of ``link`` is closed (opened or not). Called once."""
        raise NotImplementedError

    def on_tick(self, now: float, stalled_s: float) -> None:
        """Every ``tick_s``; ``stalled_s`` is how late this tick is (the loop was stalled)."""
        raise NotImplementedError

    def on_input_limit(self, link: "Link", counter: str, code: int, reason: str) -> None:
        """The loop closes ``link`` with ``code`` for a limit on its input (``counter``
        names the count to add: a :class:`~sente_lite.counters.Counter` value)."""
        raise NotImplementedError

    def on_input_paused(self, link: "Link") -> None:
        """The loop stopped reading ``link``: its frames waiting for a handler reached a mark."""
        raise NotImplementedError


class Tls:
    """TLS over memory buffers, so the socket stays a plain non-blocking one."""

    __slots__ = ("incoming", "outgoing", "obj", "ready")

    def __init__(self, context: ssl.SSLContext) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.ready = False

    def receive(self, data: bytes) -> bytes:
        """Decrypt what arrived (``b""`` at EOF); the TLS layer's own answers wait in
        ``outgoing``. Raises ``ssl.SSLError`` on a broken or hostile peer."""
        if data:
            self.incoming.write(data)
        else:
            self.incoming.write_eof()
        if not self.ready:
            try:
                self.obj.do_handshake()
            except ssl.SSLWantReadError:
                return b""
            self.ready = True
        parts = []
        while True:
            try:
                chunk = self.obj.read(RECV_BYTES)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                break
            if not chunk:
                break
            parts.append(chunk)
        return b"".join(parts)

    def encrypt(self, data: bytes) -> bytes:
        if data:
            self.obj.write(data)
        return self.outgoing.read()


class Link:
    """One accepted socket. ``send`` may be called from any thread; the rest is the
    loop's. Public: ``remote`` ("host:port"), ``owner`` (set by the handler),
    ``state`` (a :class:`~sente_lite.server.link_state.LinkState`), ``queued_bytes``."""

    def __init__(self, loop: LoopPort, sock: socket.socket, address: str, remote: str,
                 tls: Optional[Tls]) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.address = address
        self.remote = remote
        self.protocol = ServerProtocol(max_size=loop.max_message_bytes, extensions=loop.extensions,
                                       select_subprotocol=_select_subprotocol,
                                       logger=_PROTOCOL_LOGGER)
        self.lock = threading.Lock()
        self.outbox = Outbox(self._write, loop.max_queued_bytes, loop.write_delay_ns)
        self.tls = tls
        self.owner: Any = None
        self.accepted_at = time.monotonic()
        #: where it is in its life; changed only by :meth:`to`, under ``lock``
        self.state = UPGRADING
        #: the state is OPEN: a copy kept by :meth:`to` for the send path, which reads it
        #: under the lock for every frame (a plain attribute, not a property, for speed)
        self.writable = False
        # The upgrade request as it arrives (the deadlines of HandshakeGuard read these).
        self.got_line = False      # a request line (a line end) arrived
        self.line_bytes = 0        # bytes of the request line so far, its line end included
        self.got_bytes = False
        self.request: Optional[Request] = None
        self.head_tail = b""       # the last bytes of a request head still arriving
        self.deadline = 0.0        # when the loop drops this link (0: none)
        # Input: an unfinished fragmented message and what was read but not parsed yet.
        self.fragments: Optional[bytearray] = None
        self.fragments_bytes = 0
        self.fragments_text = False
        self.fragment_count = 0
        self.fragments_since = 0.0  # when its first fragment arrived
        self.inbox = b""           # read, not given to the protocol yet (paused, or a cut header)
        self.frame_left = 0        # bytes still to come of a frame given to it in part
        self.inflow = InboundGauge(loop.inbound, self._wake_reader)  # holds the read pause
        self.unparsed = 0          # bytes read since the last whole frame
        # Facts beside its state, each possible in any state (so not states of their own):
        self.peer_eof = False      # the peer closed its side (it may still read)
        # a write failed on whichever thread wrote: only the loop ends links, at its next flush
        self.broken = False
        self.slot = False          # holds one of security.Gate's connection slots
        # The loop's bookkeeping of this socket's writes and of what its selector watches.
        self.flush_asked = False   # a flush of this link is queued for the loop
        self.dirty = False         # frames held by the network thread wait for its next flush
        self.watching_write = False
        self.events = selectors.EVENT_READ  # what the selector watches for
        self.api: Any = None       # the server API's state of this socket (sente_lite.server.api_front)

    def __repr__(self) -> str:
        return f"<Link {self.remote} fd={self.fd}>"

    @property
    def queued_bytes(self) -> int:
        return self.outbox.queued_bytes

    def to(self, new: LinkState) -> None:
        """Move to state ``new`` (the caller holds ``lock``). One the table does not allow
        is an internal error (:func:`~sente_lite.server.link_state.illegal`)."""
        old = self.state
        if new not in TRANSITIONS[old]:
            self.loop.counts["internal_errors"] += 1
            illegal(repr(self), old, new)
        elif link_state.strict and not self.lock.locked():
            raise IllegalTransition(f"{self!r}: {old.name} -> {new.name} without its lock")
        self.state = new
        self.writable = new is OPEN

    def stop_sending(self, new: LinkState = CLOSING) -> None:
        """No more frames go out: an open link starts ``CLOSING`` (a closing handshake), or
        ``FAILING`` (the server closes it for its input, which a closing link may still
        be). A link past those states stays where it is."""
        with self.lock:
            state = self.state
            if state is OPEN or (state is CLOSING and new is FAILING):
                self.to(new)

    def send(self, data: bytes) -> bool:
        """Write ``data`` (whole WebSocket frames) after what was sent before, never
        blocking. False when the link is closing. Raises
        :class:`~sente_lite.core.outbox.Overflow` when the peer does not read."""
        with self.lock:
            if not self.writable:
                return False
            self._push_locked(data)
            return True

    def respond(self, status: http.HTTPStatus, text: str) -> Response:
        """An HTTP response (``text/plain``) for this request, not sent yet."""
        return self.protocol.reject(status, text)

    def close(self, code: int, reason: str = "", flush: bool = True) -> bool:
        """Start the closing handshake with ``code``; ``flush`` sends what is queued first.
        False when the link was already closing."""
        with self.lock:
            if not flush:
                self.outbox.drop_unsent()
            if self.state is not OPEN:
                return False
            self.to(CLOSING)
        self.loop.call_soon(lambda: self.loop.closer.send_close(self, code, reason))
        return True

    def abort(self) -> None:
        """Close the socket without a closing handshake (from any thread)."""
        self.stop_sending()
        self.loop.call_soon(lambda: self.loop.closer.finish(self))

    # -- the loop's side (lock held by the caller where noted) ----------------------------
    def _push_locked(self, data: bytes) -> None:
        if self.tls is not None:
            data = self.tls.encrypt(data)
        outbox = self.outbox
        loop = self.loop
        if not outbox.delay_ns and loop.on_loop():
            # on the network thread: gathered, written with the rest of this pass
            outbox.hold(data)
            if not self.dirty:
                self.dirty = True
                loop.hold_for_pass(self)
            return
        now_ns = time.monotonic_ns() if outbox.delay_ns else 0
        if outbox.push(data, now_ns) or self.flush_asked:
            return
        self.flush_asked = True
        self.loop.call_soon(lambda: self.loop.writer.flush(self))

    def _wake_reader(self) -> None:
        """Its frames waiting for a handler went under half the marks (any thread)."""
        self.loop.call_soon(lambda: self.loop.reader.resume(self))

    def _write(self, data: bytes) -> int:
        try:
            return self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:
            self.broken = True  # the loop ends the link at its next flush
            return len(data)



# -- what the loop's parts ask of the loop (netloop.NetLoop implements it) -----------------
# Declared here, the lowest module of the network thread, so that the parts (accept,
# handshake, reader, writer, this module) import nothing above them.

class ClosingPart(Protocol):
    """Closing handshakes and the end of links (:class:`sente_lite.server.writer.Closer`)."""

    def finish(self, link: Link) -> None: ...
    def send_close(self, link: Link, code: int, reason: str) -> None: ...
    def set_deadline(self, link: Link, when: float) -> None: ...


class WritingPart(Protocol):
    """Writing to sockets (:class:`sente_lite.server.writer.Writer`)."""

    def flush(self, link: Link) -> None: ...
    def flush_protocol(self, link: Link) -> None: ...
    def flush_protocol_locked(self, link: Link) -> None: ...


class ReadingPart(Protocol):
    """Reading sockets (:class:`sente_lite.server.reader.Reader`)."""

    partial: Set[Link]

    def resume(self, link: Link) -> None: ...


class UpgradingPart(Protocol):
    """Upgrade requests (:class:`sente_lite.server.handshake.Upgrader`)."""

    def request(self, link: Link, request: Request) -> None: ...
    def malformed(self, link: Link, exc: BaseException) -> None: ...


class PendingPart(Protocol):
    """Sockets whose upgrade is not decided yet (:class:`sente_lite.server.handshake.HandshakeGuard`)."""

    def add(self, link: Link) -> None: ...
    def leave(self, link: Link) -> None: ...
    def timed_out(self, link: Link, message: str) -> None: ...


class SniffingPart(Protocol):
    """Takes sockets that are not upgrades (:class:`sente_lite.server.api_front.ApiFront`)."""

    def sniff(self, link: Link, data: bytes) -> Optional[bytes]: ...


class LoopPort(Protocol):
    """What the network thread's parts use of the loop that owns them."""

    handler: LinkHandler
    inbound: InboundLimits
    extensions: Sequence[Any]
    host: str
    requested_port: int
    ssl_context: Optional[ssl.SSLContext]
    accept_backlog: int
    max_message_bytes: int
    max_queued_bytes: int
    write_delay_ns: int
    close_timeout: float
    handshake_timeout: float
    request_line_timeout: float
    max_pending: int
    max_pending_per_address: int
    links: Dict[int, Link]
    counts: Dict[str, int]
    selector: selectors.BaseSelector
    running: bool
    api: Optional[SniffingPart]
    handshakes: PendingPart
    upgrader: UpgradingPart
    reader: ReadingPart
    writer: WritingPart
    closer: ClosingPart

    def on_loop(self) -> bool: ...
    def call_soon(self, fn: Callable[[], None]) -> None: ...
    def call_at(self, when: float, fn: Callable[[], None]) -> None: ...
    def watch(self, link: Link) -> None: ...
    def guarded(self, fn: Callable[[], None]) -> None: ...
    def hold_for_pass(self, link: Link) -> None: ...

__all__ = ["Link", "LinkState", "LinkHandler", "Admit", "Defer", "DEFER", "Decision", "Tls",
           "RECV_BYTES",
           "LoopPort", "ClosingPart", "WritingPart", "ReadingPart", "UpgradingPart", "PendingPart",
           "SniffingPart"]
