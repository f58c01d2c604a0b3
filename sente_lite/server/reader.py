"""Reading a link, for the network loop (:mod:`sente_lite.server.netloop`).

:class:`Reader` turns what a socket delivers into events for its link: bytes are
decrypted (TLS) and fed to the link's websockets protocol (``receive_data`` ->
``events_received``); a request goes to the :class:`~sente_lite.server.handshake.Upgrader`,
frames become whole messages for the link's owner (fragments assembled within
``max_message_bytes``, 1009 past it; text checked as UTF-8, 1007 when it is not).
Runs on the loop thread only.
"""

from __future__ import annotations

import logging
import ssl
import time
from typing import Any, Optional, Set

from websockets.frames import Frame, Opcode
from websockets.http11 import Request

from ..core.outbox import Overflow
from ..wire.framing import frames_span
from .link import RECV_BYTES, Link, LoopPort
from .link_state import CLOSED, CLOSING, FAILING, OPEN, UPGRADING


log = logging.getLogger("sente_lite.net")

_TEXT = Opcode.TEXT
_BINARY = Opcode.BINARY
_CONT = Opcode.CONT
_CLOSE = Opcode.CLOSE
#: RFC 6455 policy violation: a limit on what a connection's input may hold.
CLOSE_POLICY = 1008


class Reader:
    """Bytes from a socket -> the protocol -> requests and messages."""

    def __init__(self, loop: LoopPort) -> None:
        self.loop = loop
        self.counts = loop.counts
        self.max_message_bytes = loop.max_message_bytes
        self.max_fragments = loop.inbound.max_fragments
        self.fragment_timeout = loop.inbound.fragment_timeout
        #: links holding an unfinished fragmented message (checked at every tick)
        self.partial: Set[Link] = set()

    def read(self, link: Link) -> None:
        """The socket of ``link`` is readable."""
        try:
            data = link.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if link.tls is not None:
            plain = self._decrypt(link, data)
            if plain is None:
                return
            data = plain
        if self.loop.api is not None and link.request is None and link.owner is None:
            data = self.loop.api.sniff(link, data)  # None: a server API socket took it
            if data is None:
                return
        if link.owner is not None:
            if data:
                self.feed(link, data)
            else:
                self._parse(link, data)
            return
        if data and link.request is not None:  # frames sent before the 101 wait for it
            self._early(link, data)
            return
        if data:
            data = self._request_head(link, data)
        self._parse(link, data)
        if link.owner is not None and link.inbox:
            self.feed(link, b"")

    def _request_head(self, link: Link, data: bytes) -> bytes:
        """The part of ``data`` up to the end of the request's head; what follows (frames
        sent before the 101) waits in ``link.inbox``, so frames are counted from their start."""
        probe = link.head_tail + data
        end = probe.find(b"\r\n\r\n")
        if end < 0:
            link.head_tail = probe[-3:]
            return data
        cut = end + 4 - len(link.head_tail)
        link.inbox = data[cut:]
        return data[:cut]

    def _early(self, link: Link, data: bytes) -> None:
        """Frames arriving while the upgrade is decided wait; a peer that sends more than
        ``RECV_BYTES`` of them before its answer is dropped."""
        link.inbox += data
        if len(link.inbox) > RECV_BYTES:
            self.counts["early_data_drops"] += 1
            log.info("%s sent over %d bytes before its upgrade was answered: dropped",
                     link.remote, RECV_BYTES)
            self.loop.closer.finish(link)

    def _decrypt(self, link: Link, data: bytes) -> Optional[bytes]:
        """The plain text in ``data`` (``b""`` at EOF); None when there is none yet or
        TLS failed (then the link is finished)."""
        failure: Optional[Exception] = None
        with link.lock:
            try:
                plain = link.tls.receive(data)  # type: ignore[union-attr]
                answer = link.tls.outgoing.read()  # type: ignore[union-attr]
                if answer:
                    link.outbox.push(answer)
            except (ssl.SSLError, Overflow) as exc:
                failure = exc
        if failure is not None:
            self.counts["tls_errors"] += 1
            log.info("TLS failed with %s: %s", link.remote, type(failure).__name__)
            self.loop.closer.finish(link)
            return None
        if data and not plain:
            if link.outbox:
                self.loop.writer.flush(link)
            return None
        return plain if data else b""

    def feed(self, link: Link, data: bytes) -> None:
        """Give an open connection's bytes to its protocol a few frames at a time, so
        that what waits for its handler stays within ``max_inbound_frames`` and
        ``max_inbound_bytes``: at either mark the rest is kept and the socket is not
        read until the handler catches up (:meth:`resume`)."""
        if link.inbox:
            data, link.inbox = link.inbox + data, b""
        pos, n = 0, len(data)
        if link.frame_left and n:  # the rest of a frame begun in an earlier read
            pos = min(n, link.frame_left)
            link.frame_left -= pos
            self._parse(link, data[:pos])
        inflow = link.inflow
        while pos < n and (link.state is OPEN or link.state is CLOSING):
            room = inflow.room(2 if link.owner.awaiting_replies else 1)
            if room is None:
                link.inbox = data[pos:]
                self.pause(link)
                return
            end, left = frames_span(data, pos, room[0], room[1])
            if end == pos:  # not even a frame's header yet
                link.inbox = data[pos:]
                break
            link.frame_left = left
            self._parse(link, data[pos:end])
            pos = end
        if link.state is not CLOSED and inflow.room(2 if link.owner.awaiting_replies else 1) is None:
            self.pause(link)

    def pause(self, link: Link) -> None:
        """Stop reading ``link``: its frames waiting for a handler reached a mark."""
        inflow = link.inflow
        if inflow.paused:
            return
        inflow.pause()
        if inflow.low():  # its handler caught up meanwhile
            inflow.resume()
            return
        self.loop.handler.on_input_paused(link)
        self.loop.watch(link)

    def resume(self, link: Link) -> None:
        """Read ``link`` again (its handler caught up): what was kept first."""
        inflow = link.inflow
        if link.state is CLOSED or not inflow.paused or not inflow.low():
            return
        inflow.resume()
        self.loop.watch(link)
        if link.inbox:
            self.feed(link, b"")

    def _parse(self, link: Link, data: bytes) -> None:
        """Give ``data`` (``b""``: the peer's EOF) to the protocol and act on its events."""
        loop = self.loop
        proto = link.protocol
        if data:
            link.unparsed += len(data)
            if link.request is None:
                link.got_bytes = True
                if not link.got_line:
                    end = data.find(b"\n")
                    link.got_line = end >= 0
                    link.line_bytes += end + 1 if end >= 0 else len(data)
            proto.receive_data(data)
        else:
            link.peer_eof = True
            proto.receive_eof()
        events = proto.events_received()
        if events:
            link.unparsed = 0
        for event in events:
            state = link.state
            if state is CLOSED:
                return
            if state is FAILING:
                break  # failed for its input: the rest of it is not read
            if type(event) is Frame:
                self._frame(link, event)
            elif isinstance(event, Request):
                loop.upgrader.request(link, event)
        if link.request is None and proto.handshake_exc is not None and link.state is UPGRADING:
            loop.upgrader.malformed(link, proto.handshake_exc)
        loop.writer.flush_protocol(link)
        if not data and link.state is not CLOSED:
            loop.closer.finish(link)  # the peer is gone: nothing more to read or write

    def _frame(self, link: Link, frame: Frame) -> None:
        owner = link.owner
        if owner is None:
            return  # frames before the 101: the protocol closes such a peer
        opcode = frame.opcode
        if opcode is _TEXT or opcode is _BINARY:
            if frame.fin:
                self._message(link, frame.data, opcode is _TEXT)
                return
            link.fragments = bytearray(frame.data)
            link.fragments_bytes = len(frame.data)
            link.fragments_text = opcode is _TEXT
            link.fragment_count = 1
            link.fragments_since = time.monotonic()
            self.partial.add(link)
            owner.on_life()
        elif opcode is _CONT:
            self._continuation(link, frame)
        elif opcode is _CLOSE:
            link.stop_sending()  # the peer started the closing handshake
            owner.on_life()
        else:  # ping (websockets answers it) or pong
            owner.on_life()

    def _continuation(self, link: Link, frame: Frame) -> None:
        parts = link.fragments
        if parts is None:  # websockets refuses this itself; stay safe
            return
        link.fragment_count += 1
        if link.fragment_count > self.max_fragments:
            self.fail(link, "fragment_limit_closes",
                      f"message in over {self.max_fragments} fragments (max_fragments)")
            return
        parts += frame.data
        link.fragments_bytes += len(frame.data)
        if link.fragments_bytes > self.max_message_bytes:  # websockets checks too; be sure
            self._drop_fragments(link)
            link.stop_sending(FAILING)
            link.protocol.fail(1009, f"message over {self.max_message_bytes} bytes")
            return
        if frame.fin:
            self._drop_fragments(link)
            self._message(link, bytes(parts), link.fragments_text)
        else:
            link.owner.on_life()

    def _drop_fragments(self, link: Link) -> None:
        link.fragments = None
        link.fragments_bytes = 0
        link.fragment_count = 0
        self.partial.discard(link)

    def fail(self, link: Link, counter: str, reason: str) -> None:
        """Close ``link`` with 1008 for its input: counted and logged by the handler; its
        unread input is ignored from now on."""
        self._drop_fragments(link)
        link.stop_sending(FAILING)
        link.protocol.fail(CLOSE_POLICY, reason)
        self.loop.guarded(lambda: self.loop.handler.on_input_limit(link, counter, CLOSE_POLICY,
                                                                   reason))

    def sweep(self, now: float) -> None:
        """At a tick: close links whose fragmented message is older than ``fragment_timeout``."""
        for link in [x for x in self.partial if now - x.fragments_since > self.fragment_timeout]:
            if link.state is CLOSED or link.fragments is None:
                self.partial.discard(link)
                continue
            self.fail(link, "fragment_timeout_closes",
                      f"fragmented message unfinished after {self.fragment_timeout:g}s "
                      "(fragment_timeout)")
            self.loop.writer.flush_protocol(link)

    def _message(self, link: Link, data: bytes, text: bool) -> None:
        if text:
            try:
                message: Any = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                link.stop_sending(FAILING)
                link.protocol.fail(1007, f"invalid UTF-8 at position {exc.start}")
                return
        else:
            message = data
        link.owner.on_message(message, len(data))


__all__ = ["Reader"]
