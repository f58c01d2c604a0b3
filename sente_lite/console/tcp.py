"""The nREPL TCP transport: bencode over a socket, loopback unless TLS says otherwise.

One accept thread (``sente-lite-console-tcp``) and one reader thread per connection
(``sente-lite-console-conn-N``, at most ``max_connections``). Replies are written by
whichever thread answers, under the connection's lock. A connection that sends bytes
that are not bencode, or a message over ``max_message_bytes`` / ``max_depth``, is
closed (logged, counted in ``closed_bad_input``); nothing else is affected. The port
is written to ``port_file`` (``.nrepl-port``, as editors expect) once listening and
the file removed on :meth:`TcpTransport.stop`.
"""

from __future__ import annotations

import itertools
import logging
import os
import selectors
import socket
import ssl
import threading
from typing import Any, Dict, Optional

from .bencode import BencodeError, Decoder, encode
from .nrepl import Nrepl
from .settings import ConsoleSettings

log = logging.getLogger("sente_lite.console")
#: Seconds a write to a console peer may block before the connection is dropped.
SEND_TIMEOUT_S = 10.0
_conn_seq = itertools.count(1)


class _Conn:
    def __init__(self, sock: socket.socket, peer: str) -> None:
        self.sock, self.peer = sock, peer
        self.owner = f"tcp-{next(_conn_seq)}"
        self.lock = threading.Lock()
        self.thread: Optional[threading.Thread] = None

    def send(self, msg: Dict[str, Any]) -> None:
        try:
            data = encode({k: v for k, v in msg.items() if v is not None})
        except BencodeError as exc:  # an answer bencode cannot carry: say so instead
            log.error("console: answer to %s not sent: %s", self.peer, exc)
            data = encode({"id": msg.get("id") or "", "status": ["done", "error", "bad-answer"],
                           "err": f"the answer could not be encoded: {exc}\n"})
        with self.lock:
            try:
                self.sock.sendall(data)
            except OSError:
                pass  # the reader sees the socket die and cleans up

    def shutdown(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class TcpTransport:
    """Serve ``nrepl`` over bencode/TCP on ``settings.host``/``settings.port``."""

    def __init__(self, nrepl: Nrepl, settings: ConsoleSettings) -> None:
        self.nrepl = nrepl
        self.settings = settings
        self.port = 0
        self.port_file: Optional[str] = None
        self.closed_bad_input = 0
        self.refused_connections = 0
        self._conns: Dict[str, _Conn] = {}
        self._lock = threading.Lock()
        self._stopping = False
        self._listener: Optional[socket.socket] = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(target=self._accept_loop, name="sente-lite-console-tcp", daemon=True)

    def start(self) -> "TcpTransport":
        """Listen, write the port file, start accepting."""
        family = socket.AF_INET6 if ":" in self.settings.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((self.settings.host, self.settings.port))
            listener.listen(16)
        except OSError:
            listener.close()
            raise
        listener.setblocking(False)
        self._listener = listener
        self.port = listener.getsockname()[1]
        if self.settings.port_file:
            self.port_file = os.path.abspath(self.settings.port_file)
            with open(self.port_file, "w", encoding="ascii") as fh:
                fh.write(str(self.port))
        self._thread.start()
        log.info("console: nREPL on %s:%d%s", self.settings.host, self.port,
                 " (TLS)" if self.settings.tls else "")
        return self

    def stop(self) -> None:
        """Close the listener and every connection, join every thread, remove the port file."""
        self._stopping = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self._thread.is_alive():
            self._thread.join(5.0)
        with self._lock:
            conns = list(self._conns.values())
        for conn in conns:
            conn.shutdown()
        for conn in conns:
            if conn.thread is not None:
                conn.thread.join(5.0)
        self._wake_r.close()
        self._wake_w.close()
        if self.port_file:
            self._remove_port_file()

    def _remove_port_file(self) -> None:
        try:
            with open(str(self.port_file), encoding="ascii") as fh:
                mine = fh.read().strip() == str(self.port)
            if mine:
                os.remove(str(self.port_file))
        except OSError:
            pass

    def _accept_loop(self) -> None:
        assert self._listener is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self._listener, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping:
                for key, _ in sel.select():
                    if key.fileobj is self._listener and not self._stopping:
                        self._accept()
        self._listener.close()

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            sock, addr = self._listener.accept()
        except OSError:
            return
        sock.setblocking(True)
        peer = f"{addr[0]}:{addr[1]}"
        with self._lock:
            full = len(self._conns) >= self.settings.max_connections
            if not full:
                conn = _Conn(sock, peer)
                self._conns[conn.owner] = conn
        if full:
            self.refused_connections += 1
            log.warning("console: refused TCP connection from %s: %d connections open (max_connections)",
                        peer, self.settings.max_connections)
            sock.close()
            return
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.thread = threading.Thread(target=self._serve, args=(conn,), daemon=True,
                                       name=f"sente-lite-console-conn-{conn.owner[4:]}")
        conn.thread.start()

    def _serve(self, conn: _Conn) -> None:
        try:
            if self.settings.tls is not None:
                conn.sock.settimeout(SEND_TIMEOUT_S)
                conn.sock = self.settings.tls.wrap_socket(conn.sock, server_side=True)
            conn.sock.settimeout(None)
            self._read(conn)
        except (OSError, ssl.SSLError) as exc:
            if not self._stopping:
                log.info("console: TCP connection %s ended: %s", conn.peer, exc)
        finally:
            with self._lock:
                self._conns.pop(conn.owner, None)
            self.nrepl.close_owner(conn.owner)
            conn.sock.close()

    def _read(self, conn: _Conn) -> None:
        decoder = Decoder(max_message_bytes=self.settings.max_message_bytes,
                          max_depth=self.settings.max_depth)
        while not self._stopping:
            chunk = conn.sock.recv(65536)
            if not chunk:
                return
            try:
                messages = decoder.feed(chunk)
            except BencodeError as exc:
                self.closed_bad_input += 1
                log.warning("console: closing TCP connection %s: bad nREPL input: %s", conn.peer, exc)
                return
            for msg in messages:
                self.nrepl.handle(msg, conn.send, conn.owner, f"tcp:{conn.peer}", "tcp")
