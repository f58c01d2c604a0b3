"""Accepting sockets, for the network loop (:mod:`sente_lite.server.netloop`).

:class:`Acceptor` owns the listening socket: it accepts a bounded number of sockets per
wake-up, makes each a :class:`~sente_lite.server.link.Link` registered with the loop and in
the :class:`~sente_lite.server.handshake.HandshakeGuard`, and handles running out of file
descriptors or memory: a reserve descriptor, freed for a moment, lets it answer one
peer 503, then accepting pauses briefly instead of spinning on a listener that stays
readable. Runs on the loop thread, except :meth:`Acceptor.open` and
:meth:`Acceptor.close` (before the loop starts and after it ended).
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import selectors
import socket
import time
from typing import Any, Optional

from .handshake import raw_response
from .link import Link, Tls, LoopPort


log = logging.getLogger("sente_lite.net")

#: Sockets accepted per wake-up of the listener before the loop serves the others.
ACCEPTS_PER_WAKE = 64
#: How long accepting pauses after the process ran out of descriptors or memory.
ACCEPT_PAUSE_S = 0.1
#: Seconds between two ERROR lines about the same accept failure.
ACCEPT_ERROR_LOG_EVERY_S = 1.0

_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class Acceptor:
    """The listening socket of one loop and the reserve descriptor beside it."""

    def __init__(self, loop: LoopPort) -> None:
        self.loop = loop
        self.counts = loop.counts
        self.listener: Optional[socket.socket] = None
        self._reserve_fd: Optional[int] = None
        self._paused = False
        self._last_error_log = 0.0

    def open(self) -> int:
        """Bind and listen (the loop's ``host``, port and backlog); returns the port."""
        loop = self.loop
        family = socket.AF_INET6 if ":" in loop.host else socket.AF_INET
        self.listener = socket.create_server((loop.host, loop.requested_port), family=family,
                                             backlog=loop.accept_backlog)
        self.listener.setblocking(False)
        port: int = self.listener.getsockname()[1]
        self._reserve_fd = _open_reserve()
        loop.selector.register(self.listener, selectors.EVENT_READ, None)
        return port

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
        if self._reserve_fd is not None:
            os.close(self._reserve_fd)
            self._reserve_fd = None

    def accept(self) -> None:
        """The listener is readable: adopt what is waiting, up to ACCEPTS_PER_WAKE."""
        listener = self.listener
        assert listener is not None
        for _ in range(ACCEPTS_PER_WAKE):
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRNOS:
                    self._out_of_resources(exc)
                    return
                continue  # ECONNABORTED and the like: that peer is gone already
            try:
                self._adopt(sock, addr)
            except OSError as exc:  # the peer left at once, or no memory for the socket
                sock.close()
                if exc.errno in _RESOURCE_ERRNOS:
                    self._out_of_resources(exc)
                    return

    def _adopt(self, sock: socket.socket, addr: Any) -> None:
        loop = self.loop
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        address = str(addr[0]) if isinstance(addr, tuple) else str(addr)
        remote = f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)
        tls = Tls(loop.ssl_context) if loop.ssl_context is not None else None
        link = Link(loop, sock, address, remote, tls)
        loop.selector.register(sock, selectors.EVENT_READ, link)
        loop.links[link.fd] = link
        self.counts["accepted"] += 1
        loop.handshakes.add(link)

    def _out_of_resources(self, exc: OSError) -> None:
        """accept() failed for want of descriptors or memory: answer that one peer 503
        through the reserve descriptor, count it, log at most once a second, and pause
        accepting briefly instead of spinning on a listener that stays readable."""
        loop = self.loop
        name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        self.counts[f"accept_errors_{name}"] += 1
        now = time.monotonic()
        if now - self._last_error_log >= ACCEPT_ERROR_LOG_EVERY_S:
            self._last_error_log = now
            log.error("cannot accept connections: %s (%s); answering 503 and serving the %d "
                      "open connections (raise the descriptor limit: ulimit -n)",
                      name, os.strerror(exc.errno or 0), len(loop.links))
        if self._reserve_fd is not None:
            os.close(self._reserve_fd)
            self._reserve_fd = None
            try:
                sock, _ = self.listener.accept()  # type: ignore[union-attr]
            except OSError:
                pass
            else:
                self.counts["refused_out_of_resources"] += 1
                _send_raw(sock, 503, "server out of resources (file descriptors): try again later")
                sock.close()
            self._reserve_fd = _open_reserve()
        if not self._paused and self.listener is not None:
            self._paused = True
            loop.selector.unregister(self.listener)
            loop.call_at(now + ACCEPT_PAUSE_S, self._resume)

    def _resume(self) -> None:
        if self._paused and self.loop.running and self.listener is not None:
            self._paused = False
            self.loop.selector.register(self.listener, selectors.EVENT_READ, None)
            if self._reserve_fd is None:
                self._reserve_fd = _open_reserve()


def _send_raw(sock: socket.socket, status: int, message: str) -> None:
    """Best effort, never blocking: the socket is closed right after."""
    try:
        sock.setblocking(False)
        sock.send(raw_response(status, message))
    except OSError:
        pass


def _open_reserve() -> Optional[int]:
    try:
        return os.open(os.devnull, os.O_RDONLY)
    except OSError:
        return None


def raise_descriptor_limit() -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit; returns the soft
    limit in force afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("could not raise the descriptor limit from %d to %d: %s", soft, hard, exc)
    return soft


__all__ = ["Acceptor", "raise_descriptor_limit", "ACCEPTS_PER_WAKE", "ACCEPT_PAUSE_S",
           "ACCEPT_ERROR_LOG_EVERY_S"]
