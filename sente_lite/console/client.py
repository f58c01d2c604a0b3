"""The operator's end of the console: a transport (TCP or WebSocket) and an nREPL session.

:class:`TcpTransport` speaks bencode to ``host:port``; :class:`WsClientTransport`
sends the ``sente-lite-console/nrepl`` event over a sente_lite connection. Both give
``send(msg)`` and a ``messages`` queue. :class:`ConsoleClient` clones a session and
evaluates code, handing streamed ``out``/``err`` to callbacks as they arrive.
"""

from __future__ import annotations

import itertools
import queue
import socket
import threading
import time
from typing import Any, Callable, Dict, List, Optional

from .. import Client
from ..wire import protocol as p
from .bencode import BencodeError, Decoder, encode
from .settings import WS_EVENT

Sink = Callable[[str], None]


class ConsoleError(Exception):
    """The console answered with an error status, did not answer in time, or is not there."""


class TcpTransport:
    """bencode over TCP to an nREPL server; a reader thread fills ``messages``."""

    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.messages: "queue.Queue[Dict[str, Any]]" = queue.Queue()
        self.error: Optional[str] = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, name="sente-lite-console-reader", daemon=True)
        self._thread.start()

    def send(self, msg: Dict[str, Any]) -> None:
        """Send one nREPL request."""
        with self._lock:
            self.sock.sendall(encode(msg))

    def _read(self) -> None:
        decoder = Decoder(max_message_bytes=64 << 20)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                for msg in decoder.feed(chunk):
                    if isinstance(msg, dict):
                        self.messages.put(msg)
        except (OSError, BencodeError) as exc:
            self.error = str(exc)
        self.messages.put({"status": ["done", "error", "disconnected"], "id": None})

    def close(self) -> None:
        """Close the socket and join the reader."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._thread.join(5.0)


class WsClientTransport:
    """An operator's end over a sente_lite :class:`~sente_lite.Client`: ``send`` and a queue of answers."""

    def __init__(self, url: str, token: Optional[str] = None, timeout: float = 5.0) -> None:
        self.messages: "queue.Queue[Dict[str, Any]]" = queue.Queue()
        # an operator's answers come as events, a few per request: read each at once (read
        # coalescing batches a stream's reads, and would hold every answer after the first)
        self.client = Client(url, token=token, auto_reconnect=False, start=False,
                             read_coalesce_ms=0)
        self.client.on(WS_EVENT, lambda data: self.messages.put(data) if isinstance(data, dict) else None)
        self.client.start()
        if not self.client.wait_connected(timeout):
            self.client.close()
            raise ConnectionError(f"could not connect to {url} within {timeout}s")
        features = (self.client.handshake or {}).get(p.K_FEATURES) or ()
        if p.FEATURE_CONSOLE not in features:
            self.client.close()
            raise ConsoleError(f"{url} serves no console over the WebSocket (its handshake's features "
                               f"{list(features)} lack {p.FEATURE_CONSOLE!r}): start it with a console "
                               "and console_users, or use its TCP console (--nrepl)")

    def send(self, msg: Dict[str, Any]) -> None:
        """Send one nREPL request."""
        self.client.send(WS_EVENT, msg)

    def close(self) -> None:
        """Close the connection and its threads."""
        self.client.close()


class ConsoleClient:
    """One nREPL session on ``transport``; :meth:`eval` runs code and returns its answers."""

    def __init__(self, transport: Any, timeout: float = 10.0) -> None:
        self.transport = transport
        self.timeout = timeout
        self._ids = itertools.count(1)
        self.session: Optional[str] = None
        answers = self.call({"op": "clone"})
        self.session = next((a["new-session"] for a in answers if "new-session" in a), None)
        if self.session is None:
            raise ConsoleError(_explain(answers))
        self.current: Optional[str] = None

    def call(self, msg: Dict[str, Any], out: Optional[Sink] = None, err: Optional[Sink] = None,
             timeout: Optional[float] = None) -> List[Dict[str, Any]]:
        """Send ``msg`` (an id and the session added) and return its answers up to ``done``.

        Ctrl-C (KeyboardInterrupt) while an eval runs sends ``interrupt`` and keeps waiting.
        """
        msg = dict(msg, id=str(next(self._ids)))
        if self.session is not None and "session" not in msg:
            msg["session"] = self.session
        self.current = msg["id"]
        self.transport.send(msg)
        answers: List[Dict[str, Any]] = []
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while True:
            try:
                answer = self.transport.messages.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise ConsoleError(f"no answer to {msg['op']} within the timeout") from None
            except KeyboardInterrupt:  # Ctrl-C: ask the console to stop this eval, keep waiting
                if msg["op"] != "eval":
                    raise
                self.interrupt()
                continue
            if answer.get("id") not in (msg["id"], None):
                continue
            answers.append(answer)
            if out is not None and "out" in answer:
                out(answer["out"])
            if err is not None and "err" in answer:
                err(answer["err"])
            if "done" in answer.get("status", []):
                self.current = None
                return answers

    def eval(self, code: str, out: Optional[Sink] = None, err: Optional[Sink] = None,
             timeout: Optional[float] = None) -> List[Dict[str, Any]]:
        """Evaluate ``code`` in this session; its answers (values, ``ex``, status)."""
        return self.call({"op": "eval", "code": code}, out, err, timeout)

    def interrupt(self) -> None:
        """Ask to interrupt the running eval (its answer comes with the eval's)."""
        self.transport.send({"op": "interrupt", "session": self.session, "id": f"i{next(self._ids)}",
                             **({"interrupt-id": self.current} if self.current else {})})


def status_of(answers: List[Dict[str, Any]]) -> List[str]:
    """Every status word in ``answers``."""
    return [s for a in answers for s in a.get("status", [])]


def _explain(answers: List[Dict[str, Any]]) -> str:
    words = status_of(answers)
    text = "".join(a.get("err", "") for a in answers).strip()
    return f"console refused ({', '.join(w for w in words if w != 'done')})" + (f": {text}" if text else "")
