"""Reading a link, for the network loop (:mod:`sente_lite.netloop`).

:class:`Reader` turns what a socket delivers into events for its link: bytes are
decrypted (TLS) and fed to the link's websockets protocol (``receive_data`` ->
``events_received``); a request goes to the :class:`~sente_lite.handshake.Upgrader`,
frames become whole messages for the link's owner (fragments assembled within
``max_message_bytes``, 1009 past it; text checked as UTF-8, 1007 when it is not).
Runs on the loop thread only.
"""

from __future__ import annotations

import logging
import ssl
from typing import TYPE_CHECKING, Any, Optional

from websockets.frames import Frame, Opcode
from websockets.http11 import Request

from .link import RECV_BYTES, Link
from .outbox import Overflow

if TYPE_CHECKING:
    from .netloop import NetLoop

log = logging.getLogger("sente_lite.net")

_TEXT = Opcode.TEXT
_BINARY = Opcode.BINARY
_CONT = Opcode.CONT
_CLOSE = Opcode.CLOSE


class Reader:
    """Bytes from a socket -> the protocol -> requests and messages."""

    def __init__(self, loop: "NetLoop") -> None:
        self.loop = loop
        self.counts = loop.counts
        self.max_message_bytes = loop.max_message_bytes

    def read(self, link: Link) -> None:
        """The socket of ``link`` is readable."""
        try:
            data = link.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        loop = self.loop
        if link.tls is not None:
            failure: Optional[Exception] = None
            with link.lock:
                try:
                    plain = link.tls.receive(data)
                    answer = link.tls.outgoing.read()
                    if answer:
                        link.outbox.push(answer)
                except (ssl.SSLError, Overflow) as exc:
                    failure = exc
            if failure is not None:
                self.counts["tls_errors"] += 1
                log.info("TLS failed with %s: %s", link.remote, type(failure).__name__)
                loop.closer.finish(link)
                return
            if data and not plain:
                if link.outbox:
                    loop.writer.flush(link)
                return
            if data:
                data = plain
        if loop.api is not None and link.request is None:
            data = loop.api.sniff(link, data)  # None: a server API socket took it
            if data is None:
                return
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
            if link.closed:
                return
            if type(event) is Frame:
                self._frame(link, event)
            elif isinstance(event, Request):
                loop.upgrader.request(link, event)
        if link.request is None and proto.handshake_exc is not None and not link.answered:
            loop.upgrader.malformed(link, proto.handshake_exc)
        loop.writer.flush_protocol(link)
        if not data and not link.closed:
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
            link.fragments = [frame.data]
            link.fragments_bytes = len(frame.data)
            link.fragments_text = opcode is _TEXT
            owner.on_life()
        elif opcode is _CONT:
            parts = link.fragments
            if parts is None:  # websockets refuses this itself; stay safe
                return
            parts.append(frame.data)
            link.fragments_bytes += len(frame.data)
            if link.fragments_bytes > self.max_message_bytes:  # websockets checks too; be sure
                link.fragments = None
                link.protocol.fail(1009, f"message over {self.max_message_bytes} bytes")
                with link.lock:
                    link.writable = False
                return
            if frame.fin:
                link.fragments = None
                link.fragments_bytes = 0
                self._message(link, b"".join(parts), link.fragments_text)
            else:
                owner.on_life()
        elif opcode is _CLOSE:
            with link.lock:
                link.writable = False
            owner.on_life()
        else:  # ping (websockets answers it) or pong
            owner.on_life()

    def _message(self, link: Link, data: bytes, text: bool) -> None:
        if text:
            try:
                message: Any = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                link.protocol.fail(1007, f"invalid UTF-8 at position {exc.start}")
                with link.lock:
                    link.writable = False
                return
        else:
            message = data
        link.owner.on_message(message, len(data))


__all__ = ["Reader"]
