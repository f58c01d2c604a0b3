"""The threaded sente_lite server.

Threads, whatever the number of connections (all joined by :meth:`Server.stop`):

* ``sente-lite-net`` (:mod:`sente_lite.netloop`): one selectors loop reads every
  socket, runs websockets' sans-I/O protocol for each, accepts, enforces the
  handshake limits, sends heartbeats and closes silent peers. Built-in frames
  (``chsk/*`` answers and pings, and ``sente-lite/*`` subscribe/publish when the
  connection has nothing waiting for a worker) are handled right there.
* ``sente-lite-worker-N`` (:mod:`sente_lite.workers`): a bounded pool that runs
  application handlers and hooks; one connection's events run one at a time, in
  arrival order, so a slow handler delays only its own connection.

Any thread may send: a frame goes straight to the socket with a non-blocking
write when nothing is queued for that connection; otherwise it waits in the
connection's bounded outbox (:mod:`sente_lite.outbox`), which the network thread
drains, so a slow or stalled peer never blocks a publisher or any other peer.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import http
import itertools
import logging
import ssl
import struct
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, Union
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from . import discovery
from . import limits as lim
from . import protocol as p
from . import security
from . import workers
from . import static
from .channels import ChannelRegistry, Published
from .errors import Disconnected, LimitExceeded, RequestTimeout
from .metrics import LatencyHistogram, MetricsExporter
from .netloop import DEFER, Admit, Link, NetLoop, raise_descriptor_limit
from .outbox import Overflow
from .logsafe import safe
from .security import Authenticate, Authorize, report
from .workers import Lane

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
#: The largest ``write_delay_ms`` accepted (it is added latency for busy connections).
MAX_WRITE_DELAY_MS = 50.0
DEFAULT_HANDSHAKE_TIMEOUT_S = 10.0
#: Seconds a new socket has to send its request line (a line end) before it is dropped.
DEFAULT_REQUEST_LINE_TIMEOUT_S = 2.0
#: Upgrades in progress from one address; one more drops that address's oldest.
DEFAULT_MAX_PENDING_HANDSHAKES_PER_ADDRESS = 32
#: The listening socket's accept queue (the kernel caps it at net.core.somaxconn).
DEFAULT_ACCEPT_BACKLOG = 4096
DEFAULT_MAX_REMEMBERED_CLIENTS = 100_000
MAX_CLIENT_ID_CHARS = 128


@dataclass
class _Identity:
    client_id: str
    uid: str
    remote: str
    csrf_token: Optional[str] = None


class Connection:
    """One live connection, as handlers and hooks see it.

    Public attributes: ``conn_id``, ``client_id``, ``uid``, ``remote_address``,
    ``first`` (first connection of this client-id to this server process) and
    ``connected_at`` (``time.time()``).
    """

    def __init__(self, server: "Server", link: Link, conn_id: str,
                 ident: _Identity, first: bool) -> None:
        self.conn_id = conn_id
        self.client_id = ident.client_id
        self.uid = ident.uid
        self.remote_address = ident.remote
        self.first = first
        self.connected_at = time.time()
        self._server = server
        self._link = link
        self._lane = Lane(conn_id)
        self._close_code: Optional[int] = None
        self._close_reason = ""
        self._closed = threading.Event()
        self.last_seen = time.monotonic()
        self._bad_in_row = 0
        self._pending: Dict[str, "concurrent.futures.Future[Any]"] = {}
        self._pending_lock = threading.Lock()
        self._cb_ids = itertools.count(1)
        self._rate_guard: Optional[lim.RateGuard] = None  # set by Server.on_open (rate_limit)
        # inbound counters, written by the network thread only
        self.frames_in = 0
        self.bytes_in = 0
        self.frames_inline = 0
        # outbound counters, written under the link's lock
        self.frames_out = 0
        self.bytes_out = 0

    def __repr__(self) -> str:
        return f"<Connection {self.conn_id} uid={self.uid!r} {self.remote_address}>"

    # -- called by the network loop -------------------------------------------------
    def on_message(self, message: Any, size: int) -> None:
        self._server.on_message(self, message, size)

    def on_life(self) -> None:
        self.last_seen = time.monotonic()

    # -- sending ----------------------------------------------------------------
    def send(self, event: str, data: Any = None) -> bool:
        """Queue event ``event`` with ``data`` for this peer. False when it is closing."""
        _check_event_id(event)
        return self._enqueue(p.encode_bytes(event, data))

    def _enqueue(self, frame: bytes) -> bool:
        """Send one encoded frame (UTF-8 JSON text) to this peer without blocking.

        False when the connection is closing or its outbound queue overflowed.
        """
        return self._enqueue_wire(_text_frame(frame), len(frame))

    def _enqueue_wire(self, wire: bytes, size: int) -> bool:
        """Send ``wire`` (a whole WebSocket frame; ``size`` is its payload's length).

        The calling thread writes it at once with a non-blocking send when nothing is
        queued; the rest waits in the link's bounded outbox, which the network thread
        drains, so a slow peer never blocks the caller. Overflow past
        ``max_queued_bytes_per_conn`` closes the connection with 4001.
        """
        link = self._link
        try:
            with link.lock:
                if not link.writable:
                    return False
                link._push_locked(wire)
                self.frames_out += 1
                self.bytes_out += size
            return True
        except Overflow:
            pass
        if self._request_close(p.CLOSE_SLOW_CONSUMER, "slow consumer: outbound queue full", False):
            self._server._count("slow_consumer_closes")
            report(log, "closed", "slow-consumer", conn_id=self.conn_id, uid=self.uid,
                   remote=self.remote_address, code=p.CLOSE_SLOW_CONSUMER,
                   message=f"outbound queue over {self._server.max_queued_bytes_per_conn} bytes "
                           "(max_queued_bytes_per_conn)")
        return False

    def _request_close(self, code: int, reason: str, flush: bool) -> bool:
        """Close with ``code`` unless a close was already asked; True when this one was."""
        with self._pending_lock:
            if self._close_code is not None:
                first = False
            else:
                self._close_code = code
                self._close_reason = reason
                first = True
        self._link.close(code, reason, flush)
        return first

    def close(self, code: int = p.CLOSE_NORMAL, reason: str = "", flush: bool = True) -> None:
        """Close this connection with ``code``; ``flush`` sends what is queued first."""
        self._request_close(code, reason, flush)

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting in this connection's outbound queue."""
        return self._link.queued_bytes

    @property
    def writes_out(self) -> int:
        """Socket writes made (``frames_out / writes_out`` frames went out per write)."""
        return self._link.outbox.writes

    # -- server -> client requests ----------------------------------------------
    def request(self, event: str, data: Any = None, timeout: float = 5.0) -> Any:
        """Send a request to this peer and wait for its reply (see :meth:`Server.request`)."""
        _check_event_id(event)
        if self._server._on_network_thread():
            raise RuntimeError("request() from the network thread (authorize, or a built-in "
                               "event) would stop every connection's reading: call it from a "
                               "handler or another thread")
        cb_id = f"s{next(self._cb_ids)}"
        fut: "concurrent.futures.Future[Any]" = concurrent.futures.Future()
        with self._pending_lock:
            outstanding = len(self._pending)
            admitted = outstanding < self._server.max_outstanding_requests
            if admitted:
                self._pending[cb_id] = fut
        if not admitted:
            self._server._count("outstanding_request_limit")
            report(log, "refused-request", "max-outstanding-requests", conn_id=self.conn_id,
                   uid=self.uid, remote=self.remote_address, event=event, outstanding=outstanding)
            raise LimitExceeded(f"{outstanding} requests to {self.conn_id} already await a reply "
                                f"(max_outstanding_requests={self._server.max_outstanding_requests})")
        try:
            if not self._enqueue(p.encode_bytes(event, data, cb_id)):
                raise Disconnected(f"connection {self.conn_id} is closing")
            with self._server._pool.blocking():
                try:
                    return fut.result(timeout)
                except concurrent.futures.TimeoutError:
                    raise RequestTimeout(f"no reply to {event} from {self.conn_id} "
                                         f"within {timeout}s") from None
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

    Admission and abuse (see :mod:`sente_lite.security` and :mod:`sente_lite.limits`):
    ``authenticate(request) -> uid | None`` (None: 401), ``authorize(conn, action,
    channel_id) -> bool`` (False: ``forbidden``; keep it fast, it may run on the
    connection's network thread), ``allowed_hosts`` (None: bound to a loopback
    address, only loopback ``Host`` names, else any; that list, ``["*"]`` for any;
    others 403), ``allowed_origins`` (None: no
    Origin or the same host; else that list, ``["*"]`` for any; others 403),
    ``csrf`` / ``csrf_secret`` (per-client-id tokens, 403 without),
    ``max_connections`` and ``max_pending_handshakes`` (503), ``rate_limit`` /
    ``rate_burst`` / ``max_rate_limited`` (``rate-limited``, then 1008),
    ``max_subscriptions_per_conn`` (``limit-exceeded``), ``max_outstanding_requests``
    (server-to-client requests; :class:`LimitExceeded`), ``expose_metrics`` (``/metrics``).

    ``write_delay_ms`` (default 0: every frame is written at once) trades latency for
    CPU: a frame for a connection written to less than this long ago waits until
    this long after that write, then goes out with every other frame queued for that
    connection in one write. A frame for a connection idle that long goes at once.
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
        authenticate: Optional[Authenticate] = None,
        authorize: Optional[Authorize] = None,
        allowed_origins: Optional[Sequence[str]] = None,
        allowed_hosts: Optional[Sequence[str]] = None,
        csrf: bool = False,
        csrf_secret: Union[bytes, str, None] = None,
        max_connections: int = lim.DEFAULT_MAX_CONNECTIONS,
        max_pending_handshakes: int = lim.DEFAULT_MAX_PENDING_HANDSHAKES,
        max_subscriptions_per_conn: int = lim.DEFAULT_MAX_SUBSCRIPTIONS_PER_CONN,
        rate_limit: Optional[float] = lim.DEFAULT_RATE_LIMIT,
        rate_burst: Optional[int] = None,
        max_rate_limited: int = lim.DEFAULT_MAX_RATE_LIMITED,
        max_outstanding_requests: int = lim.DEFAULT_MAX_OUTSTANDING_REQUESTS,
        expose_metrics: bool = True,
        write_delay_ms: float = 0.0,
        ssl_context: Optional[ssl.SSLContext] = None,
        accept_backlog: int = DEFAULT_ACCEPT_BACKLOG,
        request_line_timeout: float = DEFAULT_REQUEST_LINE_TIMEOUT_S,
        max_pending_handshakes_per_address: int = DEFAULT_MAX_PENDING_HANDSHAKES_PER_ADDRESS,
        min_handler_threads: int = workers.DEFAULT_MIN_THREADS,
        max_handler_threads: int = workers.DEFAULT_MAX_THREADS,
        raise_fd_limit: bool = True,
        demo: bool = False,
    ) -> None:
        if heartbeat_ms <= 0:
            raise ValueError("heartbeat_ms must be > 0")
        self.write_delay_ms = lim.validate_milliseconds("write_delay_ms", write_delay_ms,
                                                        MAX_WRITE_DELAY_MS)
        self._write_delay_ns = int(self.write_delay_ms * 1_000_000)
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
        lim.validate_positive("rate_limit", rate_limit, allow_none=True)
        lim.validate_positive("max_subscriptions_per_conn", max_subscriptions_per_conn)
        lim.validate_positive("max_rate_limited", max_rate_limited)
        lim.validate_positive("max_outstanding_requests", max_outstanding_requests)
        lim.validate_positive("handshake_timeout", handshake_timeout)
        lim.validate_positive("request_line_timeout", request_line_timeout)
        lim.validate_positive("accept_backlog", accept_backlog)
        lim.validate_positive("max_pending_handshakes", max_pending_handshakes)
        lim.validate_positive("max_pending_handshakes_per_address", max_pending_handshakes_per_address)
        self.ssl_context = ssl_context
        self.accept_backlog = accept_backlog
        self.request_line_timeout = request_line_timeout
        self.max_pending_handshakes = max_pending_handshakes
        self.max_pending_handshakes_per_address = max_pending_handshakes_per_address
        self.raise_fd_limit = raise_fd_limit
        self._pool = workers.WorkerPool(min_handler_threads, max_handler_threads)
        self._loop: Optional[NetLoop] = None
        if authorize is not None and not callable(authorize):
            raise TypeError("authorize must be a callable (conn, action, channel_id) -> bool")
        self.authorize = authorize
        self.max_subscriptions_per_conn = max_subscriptions_per_conn
        self.rate_limit = rate_limit
        self.rate_burst = rate_burst
        self.max_rate_limited = max_rate_limited
        self.max_outstanding_requests = max_outstanding_requests
        self.expose_metrics = expose_metrics
        self.demo = demo
        self._gate = security.Gate(
            authenticate=authenticate, allowed_origins=allowed_origins, csrf=csrf,
            csrf_secret=csrf_secret, max_connections=max_connections,
            max_pending_handshakes=max_pending_handshakes, handshake_timeout=handshake_timeout,
            allowed_hosts=allowed_hosts, bind_host=host)
        self._latency = LatencyHistogram()
        self._metrics = MetricsExporter(self.stats, self._latency)

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
        self._stopping = False
        self._started_at = 0.0
        self._next_ping = 0.0
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
        scheme = "wss" if self.ssl_context is not None else "ws"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}{self.path}"

    def start(self) -> "Server":
        """Bind, start serving, then (if configured) write the port file."""
        if self._loop is not None:
            raise RuntimeError("server already started")
        if self.raise_fd_limit:
            limit = raise_descriptor_limit()
            log.info("descriptor limit %d: room for about %d connections", limit,
                     max(0, limit - DESCRIPTORS_RESERVED))
        self._loop = NetLoop(
            self, self.host, self.requested_port, ssl_context=self.ssl_context,
            accept_backlog=self.accept_backlog, max_message_bytes=self.max_message_bytes,
            max_queued_bytes=self.max_queued_bytes_per_conn, write_delay_ns=self._write_delay_ns,
            close_timeout=self.close_timeout, handshake_timeout=self.handshake_timeout,
            request_line_timeout=self.request_line_timeout,
            max_pending_handshakes=self.max_pending_handshakes,
            max_pending_handshakes_per_address=self.max_pending_handshakes_per_address,
            tick_s=min(1.0, self.heartbeat_ms / 4000.0))
        self._pool.start()
        try:
            self._loop.start()
        except BaseException:
            self._pool.stop()
            self._loop = None
            raise
        self.port = self._loop.port
        self._started_at = time.monotonic()
        if self.port_file:
            discovery.write_port_file(self.port_file, self.host, self.port, self.url, self.server_id)
        log.info("serving %s (server-id %s)", self.url, self.server_id)
        return self

    def stop(self) -> None:
        """Close every connection with 1001, join every thread, free the port."""
        if self._loop is None or self._stopping:
            return
        self._stopping = True
        for conn in self._snapshot():
            conn.close(p.CLOSE_GOING_AWAY, "server shutting down")
        deadline = time.monotonic() + self.close_timeout + 1.0
        for conn in self._snapshot():
            conn._closed.wait(max(0.0, deadline - time.monotonic()))
        self._loop.stop(self.close_timeout + 5.0)  # drops whatever is left
        self._pool.stop(self.close_timeout + 5.0)  # runs the disconnect hooks still queued
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
        result = self._publish(channel_id, p.encode_channel_data(data), None, None)
        assert result is not None  # waited for
        return result

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

    def disconnect_user(self, uid: str, code: int = p.CLOSE_NORMAL, reason: str = "") -> int:
        """Close every live connection of ``uid`` with ``code``; returns how many.

        With 1008 the reference clients stop reconnecting; with 1000 they
        reconnect and meet ``authenticate`` again.
        """
        with self._lock:
            conns = [self._conns[c] for c in self._by_uid.get(uid, ()) if c in self._conns]
        for conn in conns:
            self._count("forced_closes")
            report(log, "closed", "disconnect-user", conn_id=conn.conn_id, uid=uid,
                   remote=conn.remote_address, code=code, message=reason)
            conn.close(code, reason)
        return len(conns)

    def csrf_token(self, client_id: str) -> Optional[str]:
        """The CSRF token of ``client_id`` (to embed in a page); None when ``csrf`` is off."""
        return self._gate.csrf_token_for(client_id)

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
        out["writes_out"] = out.get("writes_out_closed", 0) + sum(c.writes_out for c in live)
        out["frames_inline"] = out.get("frames_inline_closed", 0) + sum(c.frames_inline for c in live)
        out["bytes_in"] = out.get("bytes_in_closed", 0) + sum(c.bytes_in for c in live)
        out["bytes_out"] = out.get("bytes_out_closed", 0) + sum(c.bytes_out for c in live)
        out["queued_bytes"] = sum(c.queued_bytes for c in live)
        out.update(self.channels.stats())
        out.update(self._gate.stats())
        loop = self._loop
        if loop is not None:
            for key, value in loop.counts.items():
                out[key] = out.get(key, 0) + value
            out["pending_handshakes"] = loop.pending_count()
        out["handler_threads"] = self._pool.threads
        out["handler_thread_start_failures"] = self._pool.start_failures
        out["request_latency"] = self._latency.summary()
        out["uptime_s"] = round(time.monotonic() - self._started_at, 3) if self._started_at else 0.0
        out["server_id"] = self.server_id
        return out

    def _snapshot(self) -> List[Connection]:
        with self._lock:
            return list(self._conns.values())

    def _count(self, key: str, n: int = 1) -> None:
        with self._count_lock:
            self._counts[key] += n

    # -- the network loop's questions (LinkHandler; all on the network thread) -----------
    def on_request(self, link: Link, request: Request) -> Any:
        """An HTTP request arrived: answer it, accept the upgrade, or decide on a worker
        (an ``authenticate`` hook may be slow; the network thread never waits for it)."""
        if (self._gate.authenticate is not None and not self._stopping
                and urlsplit(request.path).path == self.path):
            self._pool.submit(Lane(f"upgrade {link.remote}"),
                              lambda: self._decide_later(link, request))
            return DEFER
        return self._decide(link, request)

    def _decide(self, link: Link, request: Request) -> Any:
        decision = self._answer_http(link, request)
        if _is_probe(request, self.path):  # a browser client asking why its upgrade failed
            return _probe_answer(link, decision)
        return decision

    def _decide_later(self, link: Link, request: Request) -> None:
        try:
            decision = self._decide(link, request)
        except Exception as exc:
            decision = self._loop._internal_error(link, exc)  # type: ignore[union-attr]
        self._loop.decide(link, decision)  # type: ignore[union-attr]

    def _answer_http(self, link: Link, request: Request) -> Any:
        """Operator GETs, else the upgrade's checks in order: path, client-id, then
        :meth:`_admit` (origin, CSRF, connection slot) and :meth:`_identify` (auth).
        Returns a Response, or :class:`Admit` with the connection's identity."""
        parts = urlsplit(request.path)
        if self._stopping:
            return self._gate.refuse(link, 503, security.R_SHUTTING_DOWN, "server shutting down")
        refusal = self._gate.check_host(link, request)  # DNS rebinding: before anything is served
        if refusal is not None:
            return refusal
        if "Upgrade" not in request.headers:
            if parts.path == "/health":
                body = p.dumps({"status": "ok", "server-id": self.server_id,
                                "uptime-s": round(time.monotonic() - self._started_at, 3),
                                "connections": len(self._conns),
                                "pending-handshakes": self._loop.pending_count() if self._loop else 0,
                                "channels": self.channels.stats()["active_channels"]})
                return _respond(link, http.HTTPStatus.OK, body + "\n", "application/json")
            if parts.path == "/metrics":
                return self._metrics_response(link)
            if parts.path == security.CSRF_TOKEN_PATH:
                return self._csrf_token_response(link, request, parts.query)
            found = static.static_response(request.path, self.demo, request.headers.get("If-None-Match"))
            if found is not None:  # the browser client, its types, the demo page
                return _response(*found)
        if parts.path != self.path:
            return self._gate.refuse(link, 404, security.R_NOT_FOUND, f"no endpoint at {parts.path}")
        query = parse_qs(parts.query, keep_blank_values=True)
        given = (query.get("client-id") or [""])[0]
        if given and _client_id_problem(given):
            return self._gate.refuse(link, 400, security.R_BAD_CLIENT_ID, _client_id_problem(given))
        client_id = given or uuid.uuid4().hex
        refusal = self._admit(link, request, client_id, bool(given))
        if refusal is not None:
            return refusal
        uid = self._identify(link, request, client_id)
        if isinstance(uid, Response):
            return uid
        return Admit(_Identity(client_id, uid, link.remote, self._gate.csrf_token_for(client_id)))

    def on_refused(self, link: Link, reason: str, status: Optional[int], message: str) -> None:
        """The network loop refused an upgrade itself (malformed, too large, too slow)."""
        self._gate.count_refusal(reason)
        report(log, "refused-upgrade", reason, remote=link.remote, status=status, message=message)

    def _admit(self, ws: Link, request: Request, client_id: str,
               client_id_given: bool) -> Optional[Response]:
        """Origin, CSRF and connection-limit checks (see :mod:`sente_lite.security`): a Response refuses."""
        return self._gate.admit(ws, request, client_id, client_id_given)

    def _identify(self, ws: Link, request: Request, client_id: str) -> Union[str, Response]:
        """The uid of this upgrade: the ``authenticate`` hook's answer, else the client-id."""
        return self._gate.identify(ws, request, client_id)

    def _authorize(self, conn: Connection, action: str, channel_id: str) -> Optional[Tuple[str, str]]:
        """Checks of one subscribe/unsubscribe/publish: None allows, (error code, message) refuses.

        ``max_subscriptions_per_conn`` (``limit-exceeded``), then the ``authorize``
        hook for ``subscribe`` and ``publish`` (``forbidden``; a hook that raises forbids).
        """
        if action == "subscribe":
            held = self.channels.channels_of(conn.conn_id)
            if len(held) >= self.max_subscriptions_per_conn and channel_id not in held:
                self._count("subscription_limit")
                report(log, "refused-subscribe", "max-subscriptions", conn_id=conn.conn_id,
                       uid=conn.uid, remote=conn.remote_address, channel_id=channel_id)
                return p.ERR_LIMIT_EXCEEDED, (f"{len(held)} subscriptions already "
                                              f"(max_subscriptions_per_conn={self.max_subscriptions_per_conn})")
        if self.authorize is None or action not in ("subscribe", "publish"):
            return None
        try:
            allowed = bool(self.authorize(conn, action, channel_id))
        except Exception:
            self._count("hook_errors")
            log.exception("authorize hook raised for %s %r (conn %s): forbidden",
                          action, channel_id, conn.conn_id)
            allowed = False
        if allowed:
            return None
        self._count("forbidden")
        report(log, f"refused-{action}", "forbidden", conn_id=conn.conn_id, uid=conn.uid,
               remote=conn.remote_address, channel_id=channel_id, level=logging.INFO)
        return p.ERR_FORBIDDEN, f"{action} to {channel_id!r} not allowed"

    def _metrics_response(self, ws: Link) -> Response:
        if not self.expose_metrics:
            return _respond(ws, http.HTTPStatus.NOT_FOUND, "metrics are off (expose_metrics=False)\n")
        status, content_type, body = self._metrics.render()
        return _respond(ws, http.HTTPStatus(status), body.decode("utf-8"), content_type)

    def _csrf_token_response(self, ws: Link, request: Request, query_s: str) -> Response:
        """``GET /csrf-token?client-id=X`` -> ``{"client-id", "csrf-token"}`` (same-origin only)."""
        if self._gate.csrf is None:
            return _respond(ws, http.HTTPStatus.NOT_FOUND, "CSRF protection is off: no token needed\n")
        refusal = self._gate.check_origin(ws, request)
        if refusal is not None:
            return refusal
        client_id = (parse_qs(query_s, keep_blank_values=True).get("client-id") or [""])[0]
        problem = _client_id_problem(client_id) if client_id else "client-id query parameter required"
        if problem:
            return self._gate.refuse(ws, 400, security.R_BAD_CLIENT_ID, problem)
        body = p.dumps({"client-id": client_id, "csrf-token": self._gate.csrf_token_for(client_id)})
        response = _respond(ws, http.HTTPStatus.OK, body + "\n", "application/json")
        response.headers["Cache-Control"] = "no-store"
        return response

    # -- connection lifecycle -----------------------------------------------------
    def on_open(self, link: Link, ident: _Identity) -> None:
        """The 101 went out: register the connection, greet it, then run on_connect hooks
        on its lane (before any of its events)."""
        conn_id = f"{self.server_id}-{next(self._conn_seq)}"
        with self._lock:
            first = ident.client_id not in self._seen_clients
            self._seen_clients[ident.client_id] = None
            self._seen_clients.move_to_end(ident.client_id)
            while len(self._seen_clients) > self.max_remembered_clients:
                self._seen_clients.popitem(last=False)
        conn = Connection(self, link, conn_id, ident, first)
        if self.rate_limit is not None:
            conn._rate_guard = lim.RateGuard(self.rate_limit, self.rate_burst, self.max_rate_limited)
        link.owner = conn
        with self._lock:  # registered before the handshake goes out: a client holding it is known
            self._conns[conn_id] = conn
            self._by_uid.setdefault(conn.uid, set()).add(conn_id)
        conn._enqueue(p.encode_bytes(p.EV_HANDSHAKE, [
            ident.uid, ident.csrf_token,
            {"conn-id": conn_id, "client-id": ident.client_id, "server-id": self.server_id,
             "protocol": p.PROTOCOL_VERSION, "heartbeat-ms": self.heartbeat_ms,
             "max-message-bytes": self.max_message_bytes},
            first]))
        self._count("connections_opened")
        log.debug("open %s uid=%s remote=%s first=%s", conn_id, safe(conn.uid), conn.remote_address,
                  first)
        for hook in self._on_connect:
            self._pool.submit(conn._lane, functools.partial(self._call_hook, hook, conn))

    def on_message(self, conn: Connection, msg: Any, size: int) -> None:
        """One whole message from ``conn`` (on the network thread). Built-in frames are
        handled here when nothing of the connection waits for a worker (answers and
        pings always: a handler waiting in request() needs its reply); the rest goes to
        the connection's lane, in order."""
        conn.last_seen = time.monotonic()
        conn.frames_in += 1
        conn.bytes_in += size
        guard = conn._rate_guard
        if guard is not None:
            verdict = guard.check()
            if verdict is not lim.RateGuard.OK:
                self._rate_limited(conn, msg, verdict is lim.RateGuard.CLOSE)
                return
        if type(msg) is str:
            head = msg[:_PREFIX_LEN]
            if head.startswith(_CHSK_PREFIX) or (head == _SENTE_PREFIX and conn._lane.idle):
                conn.frames_inline += 1
                self._handle(conn, msg)
                return
        self._pool.submit(conn._lane, functools.partial(self._handle, conn, msg))

    def _handle(self, conn: Connection, msg: Any) -> None:
        """Handle one message; never raises: a bug costs one answer, not the connection."""
        try:
            self._on_message(conn, msg)
        except Exception:  # handlers and built-ins answer their own errors: this is a bug
            self._count("internal_errors")
            log.exception("internal error handling a frame (conn %s)", conn.conn_id)
            cb_id: Optional[str] = None
            event: Optional[str] = None
            try:
                event, _, cb_id = p.decode(msg)
            except p.FrameError as exc:
                cb_id = exc.cb_id
            try:
                self._error(conn, p.ERR_HANDLER_ERROR, f"internal error handling {event or 'a frame'}",
                            cb_id, event)
            except Exception:
                log.exception("could not answer the internal error (conn %s)", conn.conn_id)

    def on_link_closed(self, link: Link) -> None:
        """The socket is closed: forget the connection at once; its disconnect hooks run
        on its lane, after its last events."""
        self._gate.release_slot(link)
        conn = link.owner
        if conn is None:
            return
        with self._lock:
            self._conns.pop(conn.conn_id, None)
            ids = self._by_uid.get(conn.uid)
            if ids is not None:
                ids.discard(conn.conn_id)
                if not ids:
                    del self._by_uid[conn.uid]
        self.channels.remove_member(conn.conn_id)
        conn._fail_pending()
        code, reason = self._close_outcome(conn, link)
        with self._count_lock:
            self._counts["connections_closed"] += 1
            self._closes_by_code[code] += 1
            self._counts["frames_in_closed"] += conn.frames_in
            self._counts["frames_inline_closed"] += conn.frames_inline
            self._counts["frames_out_closed"] += conn.frames_out
            self._counts["writes_out_closed"] += conn.writes_out
            self._counts["bytes_in_closed"] += conn.bytes_in
            self._counts["bytes_out_closed"] += conn.bytes_out
        log.debug("closed %s code=%s reason=%s", conn.conn_id, code, safe(reason))

        def farewell() -> None:
            for hook in self._on_disconnect:
                self._call_hook(hook, conn, code, reason)
            conn._closed.set()

        self._pool.submit(conn._lane, farewell)

    def _close_outcome(self, conn: Connection, link: Link) -> Tuple[int, str]:
        """The close code and reason of a finished connection: the server's own close,
        a close websockets made itself (1009 too big, 1002/1007 protocol: counted and
        logged here), or the peer's."""
        try:
            exc = link.protocol.close_exc
        except Exception:  # not closed in websockets' eyes (socket dropped): abnormal
            exc = None
        sent = getattr(exc, "sent", None)
        rcvd = getattr(exc, "rcvd", None)
        if conn._close_code is not None:
            return conn._close_code, conn._close_reason
        if sent is not None and (rcvd is None or not exc.rcvd_then_sent):  # type: ignore[union-attr]
            code = int(sent.code)
            if code == p.CLOSE_TOO_BIG:
                key, why = "too_large_closes", "max-message-bytes"
            elif code in (1002, 1003, 1007):
                key, why = "protocol_error_closes", "protocol-error"
            else:
                key = why = ""
            if key:
                self._count(key)
                report(log, "closed", why, conn_id=conn.conn_id, uid=conn.uid,
                       remote=conn.remote_address, code=code, message=sent.reason)
            return code, sent.reason
        if rcvd is not None:
            return int(rcvd.code), rcvd.reason
        return 1006, ""

    def on_tick(self, now: float, stalled_s: float) -> None:
        """Heartbeat (on the network thread): ping every ``heartbeat_ms``, close silent
        connections with 4000. A stretch in which this thread itself was stalled is not
        held against any peer: their frames may be waiting unread in the socket."""
        timeout = self.heartbeat_timeout_ms / 1000.0
        send_pings = now >= self._next_ping
        if send_pings:
            self._next_ping = now + self.heartbeat_ms / 1000.0
        for conn in self._snapshot():
            if stalled_s:
                conn.last_seen = min(now, conn.last_seen + stalled_s)
            if conn._close_code is not None:
                continue
            silent = now - conn.last_seen
            if silent > timeout:
                self._count("heartbeat_timeouts")
                report(log, "closed", "heartbeat-timeout", conn_id=conn.conn_id, uid=conn.uid,
                       remote=conn.remote_address, code=p.CLOSE_HEARTBEAT_TIMEOUT,
                       message=f"silent for {silent:.1f}s", level=logging.INFO)
                self.channels.remove_member(conn.conn_id)
                conn.close(p.CLOSE_HEARTBEAT_TIMEOUT, "heartbeat timeout", flush=False)
            elif send_pings:
                conn._enqueue_wire(_PING_WIRE, len(_PING))

    def _on_network_thread(self) -> bool:
        loop = self._loop
        return loop is not None and loop.on_loop()

    def _rate_limited(self, conn: Connection, msg: Any, close: bool) -> None:
        """A frame over ``rate_limit``: answer ``rate-limited``, or close 1008 when it persists."""
        self._count("rate_limited")
        if close:
            if conn._close_code is None:
                self._count("rate_limit_closes")
                report(log, "closed", "rate-limit", conn_id=conn.conn_id, uid=conn.uid,
                       remote=conn.remote_address, code=p.CLOSE_POLICY,
                       message=f"kept sending over {self.rate_limit:g} frames/s (max_rate_limited="
                               f"{self.max_rate_limited} refused frames per "
                               f"{lim.RATE_PATIENCE_WINDOW_S:g}s)")
                conn.close(p.CLOSE_POLICY, "rate limit exceeded", flush=False)
            return
        cb_id: Optional[str] = None
        event: Optional[str] = None
        try:
            frame = p.decode(msg)
            cb_id, event = frame.cb_id, frame.event
        except p.FrameError as exc:
            cb_id = exc.cb_id
        report(log, "rate-limited", "rate-limit", conn_id=conn.conn_id, uid=conn.uid,
               remote=conn.remote_address, event=event, level=logging.INFO)
        if event in (p.EV_REPLY, p.EV_ERROR):
            return  # never answer an answer
        self._error(conn, p.ERR_RATE_LIMITED,
                    f"over {self.rate_limit:g} frames/s (rate_limit): frame dropped", cb_id, event)

    def _call_hook(self, hook: Callable[..., None], *args: Any) -> None:
        try:
            hook(*args)
        except Exception:
            self._count("hook_errors")
            log.exception("hook %r raised", hook)

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
        if frame.cb_id is None or frame.event in (p.EV_REPLY, p.EV_ERROR):
            self._dispatch(conn, frame)
            return
        started = time.perf_counter()
        self._dispatch(conn, frame)
        self._latency.observe(time.perf_counter() - started)

    def _dispatch(self, conn: Connection, frame: p.Frame) -> None:
        event, data, cb_id = frame
        builtin = self._builtins.get(event)
        if builtin is not None:
            try:
                builtin(self, conn, data, cb_id)
            except Exception:  # a bug here must cost one answer, never the connection
                self._count("internal_errors")
                log.exception("internal error handling %s (conn %s)", event, conn.conn_id)
                self._error(conn, p.ERR_HANDLER_ERROR, f"internal error handling {event}",
                            cb_id, event)
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
            if conn._close_code is None:
                self._count("bad_frame_closes")
                report(log, "closed", "bad-frames", conn_id=conn.conn_id, uid=conn.uid,
                       remote=conn.remote_address, code=p.CLOSE_POLICY,
                       message=f"{conn._bad_in_row} bad frames in a row "
                               f"(max_bad_frames_in_row={self.max_bad_frames_in_row})")
            conn.close(p.CLOSE_POLICY, "too many bad frames")

    def _error(self, conn: Connection, code: str, message: str, cb_id: Optional[str],
               event: Optional[str] = None) -> None:
        conn._enqueue(p.encode_error(code, message, cb_id, event).encode("utf-8"))

    def _reply(self, conn: Connection, cb_id: str, result: Any, event: str) -> None:
        frame, ok = p.encode_reply(event, result, cb_id)
        if not ok:
            self._count("handler_errors")
            log.error("reply of handler for %s is not JSON-encodable", event)
        conn._enqueue(frame.encode("utf-8"))

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
        err = p.remote_error(data)
        if not conn._resolve(cb_id, error=err):
            self._count("errors_from_clients")
            log.info("error from %s: %s", conn.conn_id, safe(err))

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
        refusal = self._authorize(conn, event.split("/", 1)[1], channel)
        if refusal is not None:
            self._error(conn, refusal[0], refusal[1], cb_id, event)
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

        def answer(result: Any) -> None:  # on the thread that ran the publish, in channel order
            if isinstance(result, BaseException):
                self._count("internal_errors")
                log.error("internal error publishing on %r (conn %s)", channel, conn.conn_id,
                          exc_info=result)
                self._error(conn, p.ERR_HANDLER_ERROR, f"internal error handling {p.EV_PUBLISH}",
                            cb_id, p.EV_PUBLISH)
            elif cb_id is not None:
                self._reply(conn, cb_id, {p.K_CHANNEL: channel, p.K_OFFSET: result.offset,
                                          p.K_DELIVERED: result.delivered}, p.EV_PUBLISH)

        # Never waits for a busy channel: its holder publishes this too, and answers.
        self._publish(channel, p.encode_channel_data(data.get(p.K_DATA)), conn.uid, exclude, answer)

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
                 exclude: Optional[str],
                 answer: Optional[Callable[[Any], None]] = None) -> Optional[Published]:
        """Publish on ``channel``. With ``answer`` never wait: ``answer(result)`` is
        called (a Published, or an exception) and None may be returned; without,
        wait and return the Published."""
        head = (f'["{p.EV_CHANNEL_MSG}",{{"{p.K_CHANNEL}":{_json_string(channel)},'
                f'"{p.K_DATA}":{data_json},"{p.K_FROM}":{_json_string(from_uid)},"{p.K_OFFSET}":')

        def make_frame(offset: int, epoch: str) -> Any:
            # Encoded once per publish, as a whole WebSocket frame, for every subscriber.
            frame = f'{head}{offset},"{p.K_EPOCH}":{_json_string(epoch)}}}]'.encode("utf-8")
            return _text_frame(frame), len(frame)

        conns = self._conns

        def deliver(member: Any, built: Any) -> bool:
            conn = conns.get(member)
            if conn is None:
                return False
            wire, size = built
            return conn._enqueue_wire(wire, size)

        def done(result: Any) -> None:
            if isinstance(result, Published):
                with self._count_lock:
                    self._counts["publishes"] += 1
                    self._counts["deliveries"] += result.delivered
            if answer is not None:
                answer(result)

        return self.channels.publish(channel, make_frame, deliver, exclude, done,
                                     wait=answer is None)


_PONG = p.encode_bytes(p.EV_PONG)
_PING = p.encode_bytes(p.EV_PING)
_HEAD_16 = struct.Struct("!BBH")
_HEAD_64 = struct.Struct("!BBQ")
#: JSON text of recently published channel ids, uids and epochs (bounded; cleared when full).
_JSON_STRINGS: Dict[str, str] = {}
MAX_CACHED_JSON_STRINGS = 4096


def _json_string(value: Optional[str]) -> str:
    """``p.dumps(value)`` for a str or None, remembered: every publish names the same few."""
    if value is None:
        return "null"
    text = _JSON_STRINGS.get(value)
    if text is None:
        text = p.dumps(value)
        if len(_JSON_STRINGS) >= MAX_CACHED_JSON_STRINGS:
            _JSON_STRINGS.clear()
        _JSON_STRINGS[value] = text
    return text


def _text_frame(payload: bytes) -> bytes:
    """``payload`` as one unmasked, final WebSocket text frame (RFC 6455 5.2): the bytes
    websockets' ``send_text`` writes for a server without extensions."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return _HEAD_16.pack(0x81, 126, n) + payload
    return _HEAD_64.pack(0x81, 127, n) + payload


_PING_WIRE = _text_frame(_PING)
_SENTE_PREFIX = f'["{p.NS_SENTE}/'
_CHSK_PREFIX = f'["{p.NS_CHSK}/'
_PREFIX_LEN = len(_SENTE_PREFIX)
#: Descriptors a server keeps for itself (listener, wake-up pair, reserve, logs, files).
DESCRIPTORS_RESERVED = 32


def _client_id_problem(client_id: str) -> Optional[str]:
    if len(client_id) > MAX_CLIENT_ID_CHARS or not client_id.isprintable():
        return f"client-id must be 1-{MAX_CLIENT_ID_CHARS} printable characters"
    return None


def _is_probe(request: Request, path: str) -> bool:
    """A plain GET of the WebSocket path (no upgrade headers at all)."""
    return ("Upgrade" not in request.headers and "Sec-WebSocket-Key" not in request.headers
            and urlsplit(request.path).path == path)


def _probe_answer(link: Link, decision: Any) -> Response:
    """Answer a plain GET of the WebSocket path: the verdict the same upgrade would get.

    A browser cannot see the HTTP status of a refused upgrade; the browser client
    asks this way after a socket that never opened (docs/browser.md). Readable
    from any origin: an origin that is not allowed only ever learns its 403.
    """
    response = decision if isinstance(decision, Response) else _respond(
        link, http.HTTPStatus.OK, "an upgrade with these parameters would be admitted\n")
    response.headers["Access-Control-Allow-Origin"] = "*"
    response.headers["Cache-Control"] = "no-store"
    return response


def _response(status: int, headers: List[Tuple[str, str]], body: bytes) -> Response:
    """A response of ``status`` with ``headers`` and a bytes ``body``, then the connection closes."""
    out = Headers(headers)
    if status != 304:
        out["Content-Length"] = str(len(body))
    out["Connection"] = "close"
    out["Server"] = "sente-lite"
    return Response(status, http.HTTPStatus(status).phrase, out, body)


def _respond(link: Link, status: http.HTTPStatus, body: str,
             content_type: str = "text/plain; charset=utf-8") -> Response:
    response = link.respond(status, body)
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = content_type
    return response


__all__ = ["Server", "Connection", "Published"]
