"""Threaded sente_lite server on ``websockets.sync.server``.

Threads, and who stops them (all joined by :meth:`Server.stop`):

* ``sente-lite-serve``: websockets' accept loop.
* one reader per connection (websockets' handler thread): reads frames and runs
  the application's handlers for that connection, in arrival order;
* one writer per connection: drains that connection's bounded outbound queue,
  so a slow or stalled peer never blocks a publisher or any other peer;
* ``sente-lite-heartbeat``: sends ``chsk/ws-ping`` every ``heartbeat_ms``, closes
  silent connections with 4000, and unsticks closes that take too long.
"""

from __future__ import annotations

import collections
import concurrent.futures
import http
import itertools
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Set
from urllib.parse import parse_qs, urlsplit

from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.server import ServerConnection, serve

from . import discovery
from . import protocol as p
from .channels import ChannelRegistry, Published
from .errors import Disconnected, RemoteError, RequestTimeout

log = logging.getLogger("sente_lite.server")

Handler = Callable[["Connection", Any], Any]
ConnectHook = Callable[["Connection"], None]
DisconnectHook = Callable[["Connection", int, str], None]

#: Defaults of every limit; each is a constructor argument of :class:`Server`.
DEFAULT_HEARTBEAT_MS = 5000
DEFAULT_MAX_MESSAGE_BYTES = 1 << 20
DEFAULT_MAX_QUEUED_BYTES_PER_CONN = 4 << 20
DEFAULT_MAX_BAD_FRAMES_IN_ROW = 100
DEFAULT_CLOSE_TIMEOUT_S = 2.0
DEFAULT_HANDSHAKE_TIMEOUT_S = 10.0
DEFAULT_MAX_REMEMBERED_CLIENTS = 100_000
MAX_CLIENT_ID_CHARS = 128


@dataclass
class _Identity:
    client_id: str
    uid: str
    remote: str


class Connection:
    """One live connection, as handlers and hooks see it.

    Public attributes: ``conn_id``, ``client_id``, ``uid``, ``remote_address``,
    ``first`` (first connection of this client-id to this server process) and
    ``connected_at`` (``time.time()``).
    """

    def __init__(self, server: "Server", ws: ServerConnection, conn_id: str,
                 ident: _Identity, first: bool) -> None:
        self.conn_id = conn_id
        self.client_id = ident.client_id
        self.uid = ident.uid
        self.remote_address = ident.remote
        self.first = first
        self.connected_at = time.time()
        self._server = server
        self._ws = ws
        self._cond = threading.Condition(threading.Lock())
        self._queue: Deque[bytes] = collections.deque()
        self._queued_bytes = 0
        self._close_code: Optional[int] = None
        self._close_reason = ""
        self._close_requested_at: Optional[float] = None
        self._closed = threading.Event()
        self.last_seen = time.monotonic()
        self._bad_in_row = 0
        self._pending: Dict[str, "concurrent.futures.Future[Any]"] = {}
        self._pending_lock = threading.Lock()
        self._cb_ids = itertools.count(1)
        self._reader_ident = threading.get_ident()
        # per-connection counters, each written by one thread only
        self.frames_in = 0
        self.bytes_in = 0
        self.frames_out = 0
        self.bytes_out = 0
        self._writer = threading.Thread(target=self._write_loop, daemon=True,
                                        name=f"sente-lite-writer-{conn_id}")

    def __repr__(self) -> str:
        return f"<Connection {self.conn_id} uid={self.uid!r} {self.remote_address}>"

    # -- sending ----------------------------------------------------------------
    def send(self, event: str, data: Any = None) -> bool:
        """Queue event ``event`` with ``data`` for this peer. False when it is closing."""
        _check_event_id(event)
        return self._enqueue(p.encode_bytes(event, data))

    def _enqueue(self, frame: bytes) -> bool:
        size = len(frame)
        with self._cond:
            if self._close_code is not None:
                return False
            if self._queue and self._queued_bytes + size > self._server.max_queued_bytes_per_conn:
                self._queue.clear()
                self._queued_bytes = 0
                self._request_close_locked(p.CLOSE_SLOW_CONSUMER, "slow consumer: outbound queue full")
                overflow = True
            else:
                self._queue.append(frame)
                self._queued_bytes += size
                self._cond.notify()
                return True
        if overflow:
            self._server._count("slow_consumer_closes")
            log.warning("closing %s (uid=%s, remote=%s) with %d: outbound queue over %d bytes",
                        self.conn_id, self.uid, self.remote_address, p.CLOSE_SLOW_CONSUMER,
                        self._server.max_queued_bytes_per_conn)
        return False

    def _request_close_locked(self, code: int, reason: str) -> None:
        if self._close_code is None:
            self._close_code = code
            self._close_reason = reason
            self._close_requested_at = time.monotonic()
            self._cond.notify()

    def close(self, code: int = p.CLOSE_NORMAL, reason: str = "", flush: bool = True) -> None:
        """Close this connection with ``code``; ``flush`` sends what is queued first."""
        with self._cond:
            if not flush:
                self._queue.clear()
                self._queued_bytes = 0
            self._request_close_locked(code, reason)

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting in this connection's outbound queue."""
        return self._queued_bytes

    def _write_loop(self) -> None:
        ws = self._ws
        try:
            while True:
                with self._cond:
                    while not self._queue and self._close_code is None:
                        self._cond.wait()
                    batch = self._queue
                    self._queue = collections.deque()
                    self._queued_bytes = 0
                    code = self._close_code
                for frame in batch:
                    ws.send(frame, text=True)
                    self.frames_out += 1
                    self.bytes_out += len(frame)
                if code is not None:
                    with self._cond:
                        if self._queue:  # more was queued while flushing (flush mode)
                            continue
                    ws.close(code, self._close_reason)
                    return
        except ConnectionClosed:
            pass
        except OSError as exc:
            log.debug("writer of %s stopped: %s", self.conn_id, exc)
        except Exception:  # pragma: no cover - a bug; the connection must still end
            log.exception("writer of %s failed", self.conn_id)
            self._abort()

    def _abort(self) -> None:
        """Shut the socket down so blocked reads and writes return at once."""
        try:
            self._ws.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- server -> client requests ----------------------------------------------
    def request(self, event: str, data: Any = None, timeout: float = 5.0) -> Any:
        """Send a request to this peer and wait for its reply (see :meth:`Server.request`)."""
        _check_event_id(event)
        if threading.get_ident() == self._reader_ident:
            raise RuntimeError("request() to a connection from its own handler would deadlock: "
                               "its reply is read by the thread running the handler")
        cb_id = f"s{next(self._cb_ids)}"
        fut: "concurrent.futures.Future[Any]" = concurrent.futures.Future()
        with self._pending_lock:
            self._pending[cb_id] = fut
        try:
            if not self._enqueue(p.encode_bytes(event, data, cb_id)):
                raise Disconnected(f"connection {self.conn_id} is closing")
            try:
                return fut.result(timeout)
            except concurrent.futures.TimeoutError:
                raise RequestTimeout(f"no reply to {event} from {self.conn_id} within {timeout}s") from None
        finally:
            with self._pending_lock:
                self._pending.pop(cb_id, None)

    def _resolve(self, cb_id: Optional[str], result: Any = None,
                 error: Optional[BaseException] = None) -> bool:
        if cb_id is None:
            return False
        with self._pending_lock:
            fut = self._pending.pop(cb_id, None)
        if fut is None:
            return False
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)
        return True

    def _fail_pending(self) -> None:
        with self._pending_lock:
            pending, self._pending = self._pending, {}
        for fut in pending.values():
            fut.set_exception(Disconnected(f"connection {self.conn_id} closed"))


def _check_event_id(event: str) -> None:
    if not p.is_valid_event_id(event):
        raise ValueError(f"invalid event-id {event!r}: use 'namespace/name' with "
                         "[A-Za-z0-9_.-], 1-64 chars per part")


class Server:
    """A sente_lite server. Use as ``with Server(...) as srv:`` or call start()/stop().

    Every limit is an argument: ``max_message_bytes`` (larger frames close the
    connection with 1009), ``max_queued_bytes_per_conn`` (outbound queue; overflow
    closes that connection with 4001), ``max_bad_frames_in_row`` (then 1008),
    ``heartbeat_ms`` / ``heartbeat_timeout_ms`` (silence closes with 4000),
    ``close_timeout`` (seconds a closing handshake may take before the socket is
    shut), ``handshake_timeout`` (seconds for the HTTP upgrade),
    ``max_idle_channels`` and ``max_remembered_clients`` (bounded memory).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        path: str = "/chsk",
        port_file: Optional[str] = None,
        heartbeat_ms: int = DEFAULT_HEARTBEAT_MS,
        heartbeat_timeout_ms: Optional[int] = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_queued_bytes_per_conn: int = DEFAULT_MAX_QUEUED_BYTES_PER_CONN,
        max_bad_frames_in_row: int = DEFAULT_MAX_BAD_FRAMES_IN_ROW,
        max_channel_id_chars: int = p.MAX_CHANNEL_ID_CHARS,
        max_idle_channels: int = 10_000,
        max_remembered_clients: int = DEFAULT_MAX_REMEMBERED_CLIENTS,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT_S,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT_S,
    ) -> None:
        if heartbeat_ms <= 0:
            raise ValueError("heartbeat_ms must be > 0")
        self.host = host
        self.requested_port = port
        self.path = path
        self.port_file = port_file
        self.heartbeat_ms = heartbeat_ms
        self.heartbeat_timeout_ms = heartbeat_timeout_ms or 3 * heartbeat_ms
        self.max_message_bytes = max_message_bytes
        self.max_queued_bytes_per_conn = max_queued_bytes_per_conn
        self.max_bad_frames_in_row = max_bad_frames_in_row
        self.max_channel_id_chars = max_channel_id_chars
        self.max_remembered_clients = max_remembered_clients
        self.close_timeout = close_timeout
        self.handshake_timeout = handshake_timeout

        self.server_id = uuid.uuid4().hex[:16]
        self.channels = ChannelRegistry(self.server_id, max_idle_channels)
        self._handlers: Dict[str, Handler] = {}
        self._on_connect: List[ConnectHook] = []
        self._on_disconnect: List[DisconnectHook] = []
        self._lock = threading.Lock()
        self._conns: Dict[str, Connection] = {}
        self._by_uid: Dict[str, Set[str]] = {}
        self._seen_clients: "collections.OrderedDict[str, None]" = collections.OrderedDict()
        self._conn_seq = itertools.count(1)
        self._counts: Dict[str, int] = collections.defaultdict(int)
        self._closes_by_code: Dict[int, int] = collections.defaultdict(int)
        self._count_lock = threading.Lock()
        self._ws_server: Any = None
        self._serve_thread: Optional[threading.Thread] = None
        self._hb_thread: Optional[threading.Thread] = None
        self._stop_event = threading.Event()
        self._stopping = False
        self._started_at = 0.0
        self.port = 0

    # -- lifecycle --------------------------------------------------------------
    def __enter__(self) -> "Server":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The WebSocket URL clients connect to, e.g. ``ws://127.0.0.1:8765/chsk``."""
        return f"ws://{self.host}:{self.port}{self.path}"

    def start(self) -> "Server":
        """Bind, start serving, then (if configured) write the port file."""
        if self._ws_server is not None:
            raise RuntimeError("server already started")
        self._ws_server = serve(
            self._handle,
            self.host,
            self.requested_port,
            process_request=self._process_request,
            max_size=self.max_message_bytes,
            ping_interval=None,  # the protocol's own heartbeat is used instead
            close_timeout=self.close_timeout,
            open_timeout=self.handshake_timeout,
            compression=None,
            server_header="sente-lite",
        )
        self.port = self._ws_server.socket.getsockname()[1]
        self._started_at = time.monotonic()
        self._serve_thread = threading.Thread(target=self._ws_server.serve_forever,
                                              name="sente-lite-serve", daemon=True)
        self._serve_thread.start()
        self._hb_thread = threading.Thread(target=self._heartbeat_loop,
                                           name="sente-lite-heartbeat", daemon=True)
        self._hb_thread.start()
        if self.port_file:
            discovery.write_port_file(self.port_file, self.host, self.port, self.url, self.server_id)
        log.info("serving %s (server-id %s)", self.url, self.server_id)
        return self

    def stop(self) -> None:
        """Close every connection with 1001, join every thread, free the port."""
        if self._ws_server is None or self._stopping:
            return
        self._stopping = True
        for conn in self._snapshot():
            conn.close(p.CLOSE_GOING_AWAY, "server shutting down")
        deadline = time.monotonic() + self.close_timeout + 1.0
        for conn in self._snapshot():
            if not conn._closed.wait(max(0.0, deadline - time.monotonic())):
                conn._abort()
        self._ws_server.shutdown()
        self._stop_event.set()
        for t in (self._serve_thread, self._hb_thread):
            if t is not None:
                t.join(self.close_timeout + 5.0)
        if self.port_file:
            discovery.remove(self.port_file)
        log.info("stopped %s", self.url)

    # -- registration -----------------------------------------------------------
    def on(self, event: str, fn: Optional[Handler] = None) -> Any:
        """Register ``fn(conn, data)`` for ``event``; usable as a decorator.

        For a request, the return value is the reply; an exception becomes a
        ``handler-error`` reply. Handlers run on the connection's reader thread,
        so one connection's events are handled in order, and a slow handler
        delays only that connection.
        """
        _check_event_id(event)
        if p.is_reserved(event):
            raise ValueError(f"{event!r} is in a reserved namespace ({', '.join(sorted(p.RESERVED_NAMESPACES))})")

        def register(f: Handler) -> Handler:
            self._handlers[event] = f
            return f

        return register(fn) if fn is not None else register

    def off(self, event: str) -> None:
        """Remove the handler for ``event``."""
        self._handlers.pop(event, None)

    def on_connect(self, fn: ConnectHook) -> ConnectHook:
        """Call ``fn(conn)`` after each handshake (on that connection's reader thread)."""
        self._on_connect.append(fn)
        return fn

    def on_disconnect(self, fn: DisconnectHook) -> DisconnectHook:
        """Call ``fn(conn, close_code, reason)`` once when a connection ends."""
        self._on_disconnect.append(fn)
        return fn

    # -- sending ----------------------------------------------------------------
    def send(self, conn_id: str, event: str, data: Any = None) -> bool:
        """Queue an event to one connection. False when it is unknown or closing."""
        conn = self._conns.get(conn_id)
        return conn.send(event, data) if conn is not None else False

    def send_to_user(self, uid: str, event: str, data: Any = None) -> int:
        """Queue an event to every live connection of ``uid``; returns how many took it."""
        _check_event_id(event)
        frame = p.encode_bytes(event, data)
        with self._lock:
            conns = [self._conns[c] for c in self._by_uid.get(uid, ()) if c in self._conns]
        return sum(1 for c in conns if c._enqueue(frame))

    def broadcast(self, event: str, data: Any = None) -> int:
        """Queue an event to every live connection; returns how many took it."""
        _check_event_id(event)
        frame = p.encode_bytes(event, data)
        return sum(1 for c in self._snapshot() if c._enqueue(frame))

    def publish(self, channel_id: str, data: Any = None) -> Published:
        """Publish on a channel as the server (``from`` is null). Same path as clients'."""
        problem = p.channel_id_problem(channel_id, self.max_channel_id_chars)
        if problem:
            raise ValueError(problem)
        return self._publish(channel_id, p.dumps(data), None, None)

    def request(self, conn_id: str, event: str, data: Any = None, timeout: float = 5.0) -> Any:
        """Ask a client: send a request and wait for its reply.

        Raises :class:`RemoteError` (the client's error code), :class:`RequestTimeout`
        or :class:`Disconnected`.
        """
        conn = self._conns.get(conn_id)
        if conn is None:
            raise Disconnected(f"no live connection {conn_id}")
        return conn.request(event, data, timeout)

    def disconnect(self, conn_id: str, code: int = p.CLOSE_NORMAL, reason: str = "") -> bool:
        """Close one connection. False when it is not live."""
        conn = self._conns.get(conn_id)
        if conn is None:
            return False
        conn.close(code, reason)
        return True

    # -- inspection -------------------------------------------------------------
    def connections(self) -> List[dict]:
        """One dict per live connection: ids, remote, channels, queue, counters."""
        now = time.time()
        return [{
            "conn-id": c.conn_id, "uid": c.uid, "client-id": c.client_id,
            "remote": c.remote_address, "channels": self.channels.channels_of(c.conn_id),
            "queued-bytes": c.queued_bytes, "connected-s": round(now - c.connected_at, 3),
            "frames-in": c.frames_in, "frames-out": c.frames_out,
        } for c in self._snapshot()]

    def stats(self) -> dict:
        """Counters since start: connections, frames, errors, closes by code, channels."""
        with self._count_lock:
            out: Dict[str, Any] = dict(self._counts)
            out["closes_by_code"] = dict(self._closes_by_code)
        live = self._snapshot()
        out["connections"] = len(live)
        out["frames_in"] = out.get("frames_in_closed", 0) + sum(c.frames_in for c in live)
        out["frames_out"] = out.get("frames_out_closed", 0) + sum(c.frames_out for c in live)
        out["bytes_in"] = out.get("bytes_in_closed", 0) + sum(c.bytes_in for c in live)
        out["bytes_out"] = out.get("bytes_out_closed", 0) + sum(c.bytes_out for c in live)
        out["queued_bytes"] = sum(c.queued_bytes for c in live)
        out.update(self.channels.stats())
        out["uptime_s"] = round(time.monotonic() - self._started_at, 3) if self._started_at else 0.0
        out["server_id"] = self.server_id
        return out

    def _snapshot(self) -> List[Connection]:
        with self._lock:
            return list(self._conns.values())

    def _count(self, key: str, n: int = 1) -> None:
        with self._count_lock:
            self._counts[key] += n

    # -- HTTP side --------------------------------------------------------------
    def _process_request(self, ws: ServerConnection, request: Request) -> Optional[Response]:
        parts = urlsplit(request.path)
        if self._stopping:
            return _respond(ws, http.HTTPStatus.SERVICE_UNAVAILABLE, "server shutting down\n")
        if parts.path == "/health" and "Upgrade" not in request.headers:
            body = p.dumps({"status": "ok", "server-id": self.server_id,
                            "uptime-s": round(time.monotonic() - self._started_at, 3),
                            "connections": len(self._conns),
                            "channels": self.channels.stats()["active_channels"]})
            return _respond(ws, http.HTTPStatus.OK, body + "\n", "application/json")
        if parts.path != self.path:
            return _respond(ws, http.HTTPStatus.NOT_FOUND, f"no endpoint at {parts.path}\n")
        query = parse_qs(parts.query, keep_blank_values=True)
        client_id = (query.get("client-id") or [""])[0]
        if client_id and (len(client_id) > MAX_CLIENT_ID_CHARS or not client_id.isprintable()):
            return _respond(ws, http.HTTPStatus.BAD_REQUEST,
                            f"client-id must be 1-{MAX_CLIENT_ID_CHARS} printable characters\n")
        client_id = client_id or uuid.uuid4().hex
        remote = ws.remote_address
        remote_s = f"{remote[0]}:{remote[1]}" if isinstance(remote, tuple) else str(remote)
        refusal = self._admit(ws, request, client_id)
        if refusal is not None:
            return refusal
        ws.sente_identity = _Identity(client_id, self._identify(request, client_id), remote_s)  # type: ignore[attr-defined]
        return None

    def _admit(self, ws: ServerConnection, request: Request, client_id: str) -> Optional[Response]:
        """Seam for origin, CSRF and connection-limit checks: a Response refuses."""
        return None

    def _identify(self, request: Request, client_id: str) -> str:
        """Seam for authentication: the uid of this upgrade (the client-id for now)."""
        return client_id

    def _authorize(self, conn: Connection, action: str, channel_id: str) -> bool:
        """Seam for per-channel authorization of ``subscribe`` and ``publish``."""
        return True

    # -- connection lifecycle -----------------------------------------------------
    def _handle(self, ws: ServerConnection) -> None:
        ident: _Identity = ws.sente_identity  # type: ignore[attr-defined]
        conn_id = f"{self.server_id}-{next(self._conn_seq)}"
        with self._lock:
            first = ident.client_id not in self._seen_clients
            self._seen_clients[ident.client_id] = None
            self._seen_clients.move_to_end(ident.client_id)
            while len(self._seen_clients) > self.max_remembered_clients:
                self._seen_clients.popitem(last=False)
        conn = Connection(self, ws, conn_id, ident, first)
        conn._enqueue(p.encode_bytes(p.EV_HANDSHAKE, [
            ident.uid, None,
            {"conn-id": conn_id, "client-id": ident.client_id, "server-id": self.server_id,
             "protocol": p.PROTOCOL_VERSION, "heartbeat-ms": self.heartbeat_ms,
             "max-message-bytes": self.max_message_bytes},
            first]))
        conn._writer.start()
        with self._lock:
            self._conns[conn_id] = conn
            self._by_uid.setdefault(conn.uid, set()).add(conn_id)
        self._count("connections_opened")
        log.debug("open %s uid=%s remote=%s first=%s", conn_id, conn.uid, conn.remote_address, first)
        try:
            for hook in self._on_connect:
                self._call_hook(hook, conn)
            self._read_loop(ws, conn)
        finally:
            self._drop(conn)

    def _read_loop(self, ws: ServerConnection, conn: Connection) -> None:
        while True:
            try:
                msg = ws.recv()
            except ConnectionClosed:
                return
            conn.last_seen = time.monotonic()
            conn.frames_in += 1
            conn.bytes_in += len(msg)
            self._on_message(conn, msg)

    def _drop(self, conn: Connection) -> None:
        with self._lock:
            self._conns.pop(conn.conn_id, None)
            ids = self._by_uid.get(conn.uid)
            if ids is not None:
                ids.discard(conn.conn_id)
                if not ids:
                    del self._by_uid[conn.uid]
        self.channels.remove_member(conn.conn_id)
        conn._fail_pending()
        initiated = conn._close_code
        conn.close(p.CLOSE_NORMAL, flush=False)  # wakes the writer if it is idle
        conn._writer.join(self.close_timeout + 1.0)
        if conn._writer.is_alive():
            conn._abort()
            conn._writer.join(self.close_timeout)
        ws = conn._ws
        code = initiated if initiated is not None else (ws.close_code or 1006)
        reason = ws.close_reason or ""
        with self._count_lock:
            self._counts["connections_closed"] += 1
            self._closes_by_code[code] += 1
            self._counts["frames_in_closed"] += conn.frames_in
            self._counts["frames_out_closed"] += conn.frames_out
            self._counts["bytes_in_closed"] += conn.bytes_in
            self._counts["bytes_out_closed"] += conn.bytes_out
        conn._closed.set()
        log.debug("closed %s code=%s reason=%r", conn.conn_id, code, reason)
        for hook in self._on_disconnect:
            self._call_hook(hook, conn, code, reason)

    def _call_hook(self, hook: Callable[..., None], *args: Any) -> None:
        try:
            hook(*args)
        except Exception:
            self._count("hook_errors")
            log.exception("hook %r raised", hook)

    def _heartbeat_loop(self) -> None:
        hb = self.heartbeat_ms / 1000.0
        timeout = self.heartbeat_timeout_ms / 1000.0
        tick = min(0.25, hb / 4)
        ping = p.encode_bytes(p.EV_PING)
        next_ping = time.monotonic() + hb
        while not self._stop_event.wait(tick):
            now = time.monotonic()
            send_pings = now >= next_ping
            if send_pings:
                next_ping = now + hb
            for conn in self._snapshot():
                asked = conn._close_requested_at
                if asked is not None:
                    if now - asked > self.close_timeout + 0.5 and not conn._closed.is_set():
                        conn._abort()  # the closing handshake is stuck: shut the socket
                    continue
                if now - conn.last_seen > timeout:
                    self._count("heartbeat_timeouts")
                    log.info("closing %s (uid=%s, remote=%s) with %d: silent for %.1fs",
                             conn.conn_id, conn.uid, conn.remote_address,
                             p.CLOSE_HEARTBEAT_TIMEOUT, now - conn.last_seen)
                    self.channels.remove_member(conn.conn_id)
                    conn.close(p.CLOSE_HEARTBEAT_TIMEOUT, "heartbeat timeout", flush=False)
                elif send_pings:
                    conn._enqueue(ping)

    # -- inbound frames -----------------------------------------------------------
    def _on_message(self, conn: Connection, msg: Any) -> None:
        if not isinstance(msg, str):
            self._bad_frame(conn, "binary frames are not part of protocol v1; send JSON text", None)
            return
        try:
            frame = p.decode(msg)
        except p.FrameError as exc:
            self._bad_frame(conn, exc.message, exc.cb_id)
            return
        conn._bad_in_row = 0
        event, data, cb_id = frame
        builtin = self._builtins.get(event)
        if builtin is not None:
            builtin(self, conn, data, cb_id)
            return
        if p.is_reserved(event):
            self._count("unknown_events")
            self._error(conn, p.ERR_UNKNOWN_EVENT, f"unknown reserved event {event}", cb_id, event)
            return
        handler = self._handlers.get(event)
        if handler is None:
            if cb_id is not None:
                self._error(conn, p.ERR_NO_HANDLER, f"no handler for {event}", cb_id)
            else:
                self._count("unhandled_events")
            return
        try:
            result = handler(conn, data)
        except Exception as exc:
            self._count("handler_errors")
            log.exception("handler for %s raised (conn %s)", event, conn.conn_id)
            if cb_id is not None:
                self._error(conn, p.ERR_HANDLER_ERROR,
                            f"handler for {event} raised {type(exc).__name__}", cb_id)
            return
        if cb_id is not None:
            self._reply(conn, cb_id, result, event)

    def _bad_frame(self, conn: Connection, message: str, cb_id: Optional[str]) -> None:
        self._count("bad_frames")
        conn._bad_in_row += 1
        self._error(conn, p.ERR_BAD_FRAME, message, cb_id)
        if conn._bad_in_row > self.max_bad_frames_in_row:
            self._count("bad_frame_closes")
            log.warning("closing %s (uid=%s, remote=%s) with %d: %d bad frames in a row",
                        conn.conn_id, conn.uid, conn.remote_address, p.CLOSE_POLICY, conn._bad_in_row)
            conn.close(p.CLOSE_POLICY, "too many bad frames")

    def _error(self, conn: Connection, code: str, message: str, cb_id: Optional[str],
               event: Optional[str] = None) -> None:
        conn._enqueue(p.encode_error(code, message, cb_id, event).encode("utf-8"))

    def _reply(self, conn: Connection, cb_id: str, result: Any, event: str) -> None:
        try:
            frame = p.encode_bytes(p.EV_REPLY, result, cb_id)
        except p.EncodeError as exc:
            self._count("handler_errors")
            log.error("reply of handler for %s is not JSON-encodable: %s", event, exc)
            self._error(conn, p.ERR_HANDLER_ERROR, f"reply of {event} is not JSON-encodable", cb_id)
            return
        conn._enqueue(frame)

    # built-in (reserved) events ---------------------------------------------------
    def _ev_ping(self, conn: Connection, data: Any, cb_id: Optional[str]) -> None:
        if cb_id is not None:
            self._reply(conn, cb_id, None, p.EV_PING)
        else:
            conn._enqueue(_PONG)

    def _ev_pong(self, conn: Connection, data: Any, cb_id: Optional[str]) -> None:
        pass  # life was already recorded when the frame arrived

    def _ev_reply(self, conn: Connection, data: Any, cb_id: Optional[str]) -> None:
        if not conn._resolve(cb_id, result=data):
            self._count("stray_replies")

    def _ev_error(self, conn: Connection, data: Any, cb_id: Optional[str]) -> None:
        code = data.get(p.K_CODE) if isinstance(data, dict) else None
        msg = data.get(p.K_MESSAGE) if isinstance(data, dict) else None
        err = RemoteError(str(code or "unknown"), str(msg or ""))
        if not conn._resolve(cb_id, error=err):
            self._count("errors_from_clients")
            log.info("error from %s: %s", conn.conn_id, err)

    def _channel_arg(self, conn: Connection, data: Any, cb_id: Optional[str],
                     event: str) -> Optional[str]:
        channel = data.get(p.K_CHANNEL) if isinstance(data, dict) else None
        problem = p.channel_id_problem(channel, self.max_channel_id_chars) if isinstance(data, dict) \
            else f"{event} data must be an object with {p.K_CHANNEL}"
        if problem:
            self._count("invalid_channel")
            self._error(conn, p.ERR_INVALID_CHANNEL, problem, cb_id, event)
            return None
        assert isinstance(channel, str)
        if not self._authorize(conn, event.split("/", 1)[1], channel):
            self._count("forbidden")
            self._error(conn, p.ERR_FORBIDDEN, f"{event} to {channel!r} not allowed", cb_id, event)
            return None
        return channel

    def _ev_subscribe(self, conn: Connection, data: Any, cb_id: Optional[str]) -> None:
        channel = self._channel_arg(conn, data, cb_id, p.EV_SUBSCRIBE)
        if channel is None:
            return

        def announce(offset: int, epoch: str) -> None:
            body = {p.K_CHANNEL: channel, p.K_OFFSET: offset, p.K_EPOCH: epoch}
            conn._enqueue(p.encode_bytes(p.EV_REPLY, body, cb_id) if cb_id is not None
                          else p.encode_bytes(p.EV_SUBSCRIBED, body))

        self.channels.subscribe(conn.conn_id, channel, announce)

    def _ev_unsubscribe(self, conn: Connection, data: Any, cb_id: Optional[str]) -> None:
        channel = self._channel_arg(conn, data, cb_id, p.EV_UNSUBSCRIBE)
        if channel is None:
            return
        self.channels.unsubscribe(conn.conn_id, channel)
        body = {p.K_CHANNEL: channel}
        if cb_id is not None:
            self._reply(conn, cb_id, body, p.EV_UNSUBSCRIBE)
        else:
            conn._enqueue(p.encode_bytes(p.EV_UNSUBSCRIBED, body))

    def _ev_publish(self, conn: Connection, data: Any, cb_id: Optional[str]) -> None:
        channel = self._channel_arg(conn, data, cb_id, p.EV_PUBLISH)
        if channel is None:
            return
        exclude = conn.conn_id if data.get(p.K_EXCLUDE_SENDER) is True else None
        result = self._publish(channel, p.dumps(data.get(p.K_DATA)), conn.uid, exclude)
        if cb_id is not None:
            self._reply(conn, cb_id, {p.K_CHANNEL: channel, p.K_OFFSET: result.offset,
                                      p.K_DELIVERED: result.delivered}, p.EV_PUBLISH)

    _builtins: Dict[str, Callable[["Server", Connection, Any, Optional[str]], None]] = {
        p.EV_PING: _ev_ping,
        p.EV_PONG: _ev_pong,
        p.EV_REPLY: _ev_reply,
        p.EV_ERROR: _ev_error,
        p.EV_SUBSCRIBE: _ev_subscribe,
        p.EV_UNSUBSCRIBE: _ev_unsubscribe,
        p.EV_PUBLISH: _ev_publish,
    }

    def _publish(self, channel: str, data_json: str, from_uid: Optional[str],
                 exclude: Optional[str]) -> Published:
        head = (f'["{p.EV_CHANNEL_MSG}",{{"{p.K_CHANNEL}":{p.dumps(channel)},'
                f'"{p.K_DATA}":{data_json},"{p.K_FROM}":{p.dumps(from_uid)},"{p.K_OFFSET}":')

        def make_frame(offset: int, epoch: str) -> bytes:
            return f'{head}{offset},"{p.K_EPOCH}":{p.dumps(epoch)}}}]'.encode("utf-8")

        conns = self._conns

        def deliver(member: Any, frame: bytes) -> bool:
            conn = conns.get(member)
            return conn is not None and conn._enqueue(frame)

        result = self.channels.publish(channel, make_frame, deliver, exclude)
        with self._count_lock:
            self._counts["publishes"] += 1
            self._counts["deliveries"] += result.delivered
        return result


_PONG = p.encode_bytes(p.EV_PONG)


def _respond(ws: ServerConnection, status: http.HTTPStatus, body: str,
             content_type: str = "text/plain; charset=utf-8") -> Response:
    response = ws.respond(status, body)
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = content_type
    return response


__all__ = ["Server", "Connection", "Published"]
