"""Writing to links and closing them, for the network loop (:mod:`sente_lite.server.netloop`).

:class:`Writer` moves what a link's protocol has to send into its outbox and writes the
outbox, watching the socket for writability while bytes wait; after a closing handshake
it ends the stream. :class:`Closer` starts closing handshakes, keeps the deadline by
which a closing link is dropped, and finishes links: socket closed, handler told, once.
Both run on the loop thread only.
"""

from __future__ import annotations

import gc
import socket
import time
import weakref
from typing import Optional

from websockets.protocol import State

from ..core.outbox import Overflow
from .link import Link, LoopPort
from .link_state import CLOSED, CLOSING, DRAINING, FLUSHING, OPEN


#: Unparsed input a dropped connection may leave before the loop collects garbage at its
#: next tick: websockets' protocol objects live in reference cycles, so a buffered partial
#: message would otherwise wait for the next full collection.
GC_AFTER_DROPPED_BYTES = 64 * 1024
#: Links ended since the last collection after which the loop collects garbage at its
#: next tick (or after as many as there are open links, when more): each ended link
#: leaves its websockets protocol (a few KB) in a reference cycle that Python's own
#: collector may keep for a long time on a large heap. The cost of a collection grows
#: with the heap, hence with the open links: so it stays constant per ended link.
GC_AFTER_ENDED_LINKS = 512
#: A tick in which no link ended collects the cycles of those ended before, once at
#: least this many (or an eighth of the open links) wait: churn that stops leaves nothing.
GC_QUIET_MIN_ENDED = 32
#: Ticks after a collection at which one more runs when no link ended meanwhile: links
#: whose last references (a close hook waiting on a busy worker, a timer) went after the
#: collection are freed then, not left to Python's own collector.
GC_FOLLOW_UP_TICKS = (1, 4, 16)

# websockets' protocol states (the link's own are LinkState)
_WS_OPEN = State.OPEN
_WS_CLOSED = State.CLOSED


class Writer:
    """Protocol output -> outbox -> socket, for every link of one loop."""

    def __init__(self, loop: LoopPort) -> None:
        self.loop = loop
        self.close_timeout = loop.close_timeout

    def flush_protocol(self, link: Link) -> None:
        """Queue what the protocol has to send, then write it if there is anything (a link
        closed meanwhile, by what its events led to, gets nothing more)."""
        if link.state is CLOSED:
            return
        with link.lock:
            self.flush_protocol_locked(link)
        if link.state is FLUSHING or link.broken or link.outbox:
            self.flush(link)

    def flush_protocol_locked(self, link: Link) -> None:
        """Queue what the protocol has to send (the caller holds the link's lock). Its
        end of the stream (an empty chunk) makes the link ``FLUSHING``."""
        proto = link.protocol
        if link.state is OPEN and proto.state is not _WS_OPEN:
            link.to(CLOSING)  # websockets closed or failed it itself (a bad frame, EOF)
        for data in proto.data_to_send():
            if data:
                try:
                    link._push_locked(data)
                except Overflow:
                    link.outbox.drop_unsent()
                    link._push_locked(data)  # a close frame or pong: room after the drop
            elif link.state is not FLUSHING:
                link.to(FLUSHING)

    def flush(self, link: Link) -> None:
        """Write what is queued; watch for writability while bytes wait."""
        if link.state is CLOSED:
            return
        with link.lock:
            link.flush_asked = False
            outbox = link.outbox
            if outbox.due_ns and time.monotonic_ns() < outbox.due_ns:
                due = outbox.due_ns
                done = False
                self.loop.call_at(due / 1e9, lambda: self.flush(link))
            else:
                done = outbox.flush(time.monotonic_ns() if outbox.delay_ns else 0)
                due = 0
        if link.broken:
            self.loop.closer.finish(link)
            return
        if done and link.state is FLUSHING:
            with link.lock:
                link.to(DRAINING)
            try:
                link.sock.shutdown(socket.SHUT_WR)
            except OSError:
                self.loop.closer.finish(link)
                return
            # wait for the peer to close its side, at most close_timeout
            self.loop.closer.set_deadline(link, time.monotonic() + self.close_timeout)
        want = not done and not due
        if want != link.watching_write:
            link.watching_write = want
            self.loop.watch(link)


class Closer:
    """Closing handshakes, their deadline, and the end of every link."""

    def __init__(self, loop: LoopPort) -> None:
        self.loop = loop
        self.counts = loop.counts
        self.close_timeout = loop.close_timeout
        self._collect_garbage = False
        self.ended_since_gc = 0     # links ended since the last collection
        self._ended_at_tick = 0     # the same, at the last tick
        self._ticks_since_gc = GC_FOLLOW_UP_TICKS[-1]  # no follow-up before a first collection

    def send_close(self, link: Link, code: int, reason: str) -> None:
        """Start the closing handshake (a link not open yet is dropped)."""
        if link.state is CLOSED:
            return
        # Link.close() asks for this only of an OPEN link, which it made CLOSING
        proto = link.protocol
        if proto.state is _WS_OPEN:
            proto.send_close(code, reason)
            self.loop.writer.flush_protocol(link)
        self.set_deadline(link, time.monotonic() + self.close_timeout)

    def set_deadline(self, link: Link, when: float) -> None:
        """Drop ``link`` at ``when`` unless it ends before (an earlier deadline stays)."""
        if link.deadline and link.deadline <= when:
            return
        link.deadline = when
        ref = weakref.ref(link)  # a timer keeps no ended link (and its protocol) alive
        self.loop.call_at(when, lambda: self._deadline(ref(), when))

    def _deadline(self, link: Optional[Link], when: float) -> None:
        if link is not None and link.state is not CLOSED and link.deadline == when:
            self.counts["close_timeouts"] += 1
            self.finish(link)

    def finish(self, link: Link) -> None:
        """Close the socket and tell the handler. Idempotent."""
        if link.state is CLOSED:
            return
        with link.lock:
            link.to(CLOSED)
        loop = self.loop
        loop.handshakes.leave(link)
        loop.links.pop(link.fd, None)
        try:
            loop.selector.unregister(link.sock)
        except (KeyError, ValueError):
            pass
        try:
            link.sock.close()
        except OSError:
            pass
        if link.protocol.state is not _WS_CLOSED:
            try:
                link.protocol.receive_eof()
            except Exception:  # EOF already seen: the state is final anyway
                pass
        for exc in (link.protocol.parser_exc, link.protocol.handshake_exc):
            if exc is not None:  # its traceback reaches this thread's frames, and so the link
                exc.__traceback__ = None
        loop.guarded(lambda: loop.handler.on_link_closed(link))
        if link.unparsed + link.fragments_bytes >= GC_AFTER_DROPPED_BYTES:
            self._collect_garbage = True
        self.ended_since_gc += 1
        link.fragments = None
        link.inbox = b""
        loop.reader.partial.discard(link)
        link.owner = None  # no cycle through the application's Connection
        with link.lock:
            link.outbox.close()  # nor through the outbox's write function: freed at once
        link.inflow.close()  # nor through the inbound gauge's wake function

    def finish_all(self) -> None:
        for link in list(self.loop.links.values()):
            self.finish(link)

    def collect_garbage(self) -> None:
        """At a tick: collect the reference cycles of ended links (their websockets
        protocols) when one held much input, when ``GC_AFTER_ENDED_LINKS`` (or as many
        as are open) ended since the last collection, or when none ended since the last
        tick and ``GC_QUIET_MIN_ENDED`` (or an eighth of those open) wait; then again
        ``GC_FOLLOW_UP_TICKS`` ticks after each of those."""
        ended = self.ended_since_gc
        open_links = len(self.loop.links)
        quiet = ended == self._ended_at_tick and ended >= max(GC_QUIET_MIN_ENDED, open_links // 8)
        self._ended_at_tick = ended
        self._ticks_since_gc += 1
        follow_up = self._ticks_since_gc in GC_FOLLOW_UP_TICKS
        if (self._collect_garbage or quiet or follow_up
                or ended >= max(GC_AFTER_ENDED_LINKS, open_links)):
            self._collect_garbage = False
            self.ended_since_gc = self._ended_at_tick = 0
            if not follow_up:
                self._ticks_since_gc = 0
            self.counts["garbage_collections"] += 1
            gc.collect()


__all__ = ["Writer", "Closer", "GC_AFTER_DROPPED_BYTES", "GC_AFTER_ENDED_LINKS",
           "GC_QUIET_MIN_ENDED", "GC_FOLLOW_UP_TICKS"]
