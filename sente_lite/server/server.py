"""The threaded sente_lite server.

Threads, whatever the number of connections (all joined by :meth:`Server.stop`):

* ``sente-lite-net`` (:mod:`sente_lite.server.netloop`): one selectors loop reads every
  socket, runs websockets' sans-I/O protocol for each, accepts, enforces the
  handshake limits, sends heartbeats and closes silent peers. Built-in frames
  (``chsk/*`` answers and pings, and ``sente-lite/*`` subscribe/publish when the
  connection has nothing waiting for a worker and no ``authorize`` hook is set) are
  handled right there; application code never runs on this thread.
  What a frame means is decided by the connection's sans-I/O session
  (:mod:`sente_lite.session`); :mod:`sente_lite.server.handler` acts on it, the HTTP side
  is :mod:`sente_lite.core.front`, and :mod:`sente_lite.core.hub` holds the registries and
  channel fan-out.
* ``sente-lite-worker-N`` (:mod:`sente_lite.server.workers`): a bounded pool that runs
  application handlers and hooks; one connection's events run one at a time, in
  arrival order, so a slow handler delays only its own connection.

Any thread may send: a frame goes straight to the socket with a non-blocking
write when nothing is queued for that connection; otherwise it waits in the
connection's bounded outbox (:mod:`sente_lite.core.outbox`), which the network thread
drains, so a slow or stalled peer never blocks a publisher or any other peer.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import ssl
import threading
import time
import uuid
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from websockets.http11 import Request, Response

from ..brokers import local as ch
from ..wire import compression as compression_mod
from .. import discovery
from ..wire import tracing as tracing_mod
from ..wire import packers
from ..brokers import publish_ids
from .. import limits as lim
from ..wire import protocol as p
from . import workers
from ..wire.channels import Published
from .handler import ServerCore
from ..counters import Counter, Counters
from ..errors import Disconnected, LimitExceeded, RequestTimeout
from ..wire.framing import OP_BINARY, OP_TEXT, encode_frame, text_frame as _text_frame
from .api_front import ApiFront
from ..core.front import MAX_CLIENT_ID_CHARS, HttpFront, Identity  # noqa: F401 (MAX_CLIENT_ID_CHARS: public)
from ..brokers.base import Broker
from ..core.hub import Hub
from ..core.dispatcher import ServerDispatcher
from ..core.namespaces import NamespaceSpec
from ..core.inflow import InboundGauge
from ..core.metrics import LatencyHistogram, MetricsExporter
from .netloop import Link, NetLoop, raise_descriptor_limit
from ..core.outbox import Overflow
from ..core.jwt_tokens import JWT
from ..core.security import Authenticate, Authorize, report
from .ports import ConnectHook, DisconnectHook, Handler
from ..core.messaging import MessagingMixin, check_event_id
from ..core.presence import PresenceCalls
from ..core.server_subs import ServerSubsCalls
from ..core.settings import (MAX_WRITE_DELAY_MS,  # noqa: F401 (public, as before)
                       DEFAULT_ACCEPT_BACKLOG, DEFAULT_CLOSE_TIMEOUT_S, DEFAULT_HANDSHAKE_TIMEOUT_S,
                       DEFAULT_HEARTBEAT_MS, DEFAULT_MAX_BAD_FRAMES_IN_ROW,
                       DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MAX_PENDING_HANDSHAKES_PER_ADDRESS,
                       DEFAULT_MAX_QUEUED_BYTES_PER_CONN, DEFAULT_MAX_REMEMBERED_CLIENTS,
                       DEFAULT_REQUEST_LINE_TIMEOUT_S, ServerSettings)
from .stats import PER_CONN_TOTALS, InspectionMixin
from ..session import ServerSession, resolve
from .workers import Lane

log = logging.getLogger("sente_lite.server")


class Connection:
    """One live connection, as handlers and hooks see it.

    Public attributes: ``conn_id``, ``client_id``, ``uid``, ``authenticated``, ``remote_address``,
    ``first`` (first connection of this client-id to this server process),
    ``connected_at`` (``time.time()``), and with ``Server(jwt=...)`` ``info`` and
    ``token_exp`` (its token's ``info`` claim and ``exp``). It is also the server dispatcher's port
    (:class:`sente_lite.core.ports.ConnectionPort`): ``session``, ``send_frame``,
    ``deliver``, ``ping``, ``close``, ``settle``, ``closing``, ``input_paused``.
    """

    def __init__(self, server: "Server", link: Link, conn_id: str,
                 ident: Identity, first: bool) -> None:
        self.conn_id = conn_id
        self.client_id = ident.client_id
        self.uid = ident.uid
        #: the ``authenticate`` hook named ``uid`` (a namespace's "authenticated" policy)
        self.authenticated = ident.authenticated
        self.remote_address = ident.remote
        self.first = first
        self.connected_at = time.time()
        self._server = server
        self._link = link
        self._lanes = server._core.lanes
        #: this connection's handler lane: its events and hooks run one at a time, in order
        self.lane = Lane(conn_id)
        self._close_code: Optional[int] = None
        self._close_reason = ""
        self._closed = threading.Event()
        self._close_lock = threading.Lock()
        self.packer = packers.get(ident.packer, native_bytes=ident.bytes)
        #: window bits of a negotiated permessage-deflate (0: frames go uncompressed)
        self.deflate_bits = compression_mod.negotiated_window_bits(link.protocol.extensions)
        self._min_compress = server.compression_min_bytes
        self.wire_bytes_out = 0
        #: frames for this peer while its socket is backed up go in one chsk/batch frame
        #: (negotiated with batch=1; not with permessage-deflate)
        self.batching = ident.batch and not self.deflate_bits
        self._batch: List[bytes] = []  # payloads gathered; under the link's lock
        self._batch_bytes = 0
        self.batches_out = 0
        #: the protocol state of this connection (its sans-I/O session)
        self.session: ServerSession = server._dispatcher.new_session(conn_id, time.monotonic(),
                                                                     self.packer)
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
        self._lanes.on_message(self, message, size)

    def on_life(self) -> None:
        self.session.last_seen = time.monotonic()

    @property
    def awaiting_replies(self) -> int:
        """Requests to this peer waiting for its reply."""
        return self.session.outstanding

    @property
    def info(self) -> Optional[Dict[str, Any]]:
        """The ``info`` claim of its JWT connection token (the last refreshed), else None."""
        return self.session.token_info

    @property
    def token_exp(self) -> Optional[float]:
        """Its JWT connection token's ``exp`` (seconds since the epoch), else None."""
        return self.session.token_exp

    @property
    def last_seen(self) -> float:
        """``time.monotonic()`` when the peer was last heard from."""
        return self.session.last_seen

    @property
    def inflow(self) -> InboundGauge:
        """This connection's input read and not handled yet (:mod:`sente_lite.core.inflow`)."""
        return self._link.inflow

    @property
    def input_paused(self) -> bool:
        """Its socket is not being read (its handlers are behind)."""
        return self._link.inflow.paused

    @property
    def closing(self) -> bool:
        """A close was asked (by the server or the application)."""
        return self._close_code is not None

    @property
    def close_code(self) -> Optional[int]:
        """The code of the close the server asked for (None: none asked)."""
        return self._close_code

    @property
    def close_reason(self) -> str:
        return self._close_reason

    # -- sending ----------------------------------------------------------------
    def send(self, event: str, data: Any = None) -> bool:
        """Queue event ``event`` with ``data`` for this peer. False when it is closing."""
        check_event_id(event)
        return self.send_frame(self.packer.encode(event, data))

    def send_frame(self, frame: bytes) -> bool:
        """Send one encoded frame (in this connection's packer) without blocking.

        False when the connection is closing or its outbound queue overflowed.
        """
        if self.deflate_bits and len(frame) >= self._min_compress:
            packed = compression_mod.deflate(frame, self.deflate_bits)
            if len(packed) < len(frame):
                return self._enqueue_wire(_ws_frame(packed, self.packer.binary, True), len(frame))
        return self._enqueue_wire(_ws_frame(frame, self.packer.binary), len(frame))

    def deliver(self, wire: bytes, size: int) -> bool:
        """Send one whole built frame (a channel message) without blocking."""
        return self._enqueue_wire(wire, size)

    def ping(self) -> None:
        """Send a heartbeat ping (``chsk/ws-ping``) without blocking."""
        if self.packer.binary:  # a msgpack connection: every frame is binary, pings too
            self._enqueue_wire(_PING_WIRE_MSGPACK, len(_PING_MSGPACK))
        else:
            self._enqueue_wire(_PING_WIRE, len(_PING))

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
                if self.batching and (link.outbox or self._batch):
                    self._gather_locked(wire, size)
                    return True
                link._push_locked(wire)
                self.frames_out += 1
                self.bytes_out += size
                self.wire_bytes_out += len(wire)
            return True
        except Overflow:
            pass
        self._overflowed()
        return False

    def _overflowed(self) -> None:
        if self._request_close(p.CLOSE_SLOW_CONSUMER, "slow consumer: outbound queue full", False):
            self._server.counters.add(Counter.SLOW_CONSUMER_CLOSES)
            report(log, "closed", "slow-consumer", conn_id=self.conn_id, uid=self.uid,
                   remote=self.remote_address, code=p.CLOSE_SLOW_CONSUMER,
                   message=f"outbound queue over {self._server.max_queued_bytes_per_conn} bytes "
                           "(max_queued_bytes_per_conn)")

    def _gather_locked(self, wire: bytes, size: int) -> None:
        """The socket is backed up: keep this frame's payload for the next batch frame
        (caller holds the link's lock). Counts against ``max_queued_bytes_per_conn``."""
        link = self._link
        if link.outbox.queued_bytes + self._batch_bytes + size > link.outbox.limit:
            raise Overflow(f"{link.outbox.queued_bytes + self._batch_bytes + size} bytes queued")
        if not self._batch:
            link.loop.call_soon(self._flush_batch)
        self._batch.append(wire[-size:])
        self._batch_bytes += size
        self.frames_out += 1
        self.bytes_out += size

    def _flush_batch(self) -> None:
        """Send the gathered payloads as one ``chsk/batch`` frame (on the network thread)."""
        link = self._link
        with link.lock:
            payloads, self._batch, self._batch_bytes = self._batch, [], 0
            if not payloads or not link.writable:
                return
            if len(payloads) == 1:
                frame = payloads[0]
            else:
                frame = self.packer.batch(payloads)
                self.batches_out += 1
            wire = _ws_frame(frame, self.packer.binary)
            self.wire_bytes_out += len(wire)
            try:
                link._push_locked(wire)
                return
            except Overflow:
                pass
        self._overflowed()

    def _request_close(self, code: int, reason: str, flush: bool) -> bool:
        """Close with ``code`` unless a close was already asked; True when this one was."""
        with self._close_lock:
            if self._close_code is not None:
                first = False
            else:
                self._close_code = code
                self._close_reason = reason
                first = True
        if flush and self._batch:  # frames gathered for a backed-up socket go before the close
            self._flush_batch()
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
        check_event_id(event)
        if self._server._on_network_thread():
            raise RuntimeError("request() from the network thread would stop every "
                               "connection's reading: call it from a handler or another thread")
        fut: "concurrent.futures.Future[Any]" = concurrent.futures.Future()
        session = self.session
        try:
            cb_id, frame = session.request(event, data, fut, time.monotonic(), timeout)
        except LimitExceeded:
            report(log, "refused-request", "max-outstanding-requests", conn_id=self.conn_id,
                   uid=self.uid, remote=self.remote_address, event=event,
                   outstanding=session.outstanding)
            raise LimitExceeded(f"{session.outstanding} requests to {self.conn_id} already await "
                                f"a reply (max_outstanding_requests="
                                f"{self._server.max_outstanding_requests})") from None
        try:
            if not self.send_frame(frame):
                raise Disconnected(f"connection {self.conn_id} is closing")
            with self._server._pool.blocking():
                try:
                    return fut.result(timeout)
                except concurrent.futures.TimeoutError:
                    raise RequestTimeout(f"no reply to {event} from {self.conn_id} "
                                         f"within {timeout}s") from None
        finally:
            session.forget(cb_id)

    @staticmethod
    def settle(waiter: Any, result: Any, error: Optional[BaseException]) -> None:
        """Hand the outcome of one of the server's requests to the future waiting for it."""
        resolve(waiter, result, error)


class Server(InspectionMixin, MessagingMixin, PresenceCalls, ServerSubsCalls):
    """A sente_lite server. Use as ``with Server(...) as srv:`` or call start()/stop().

    Every keyword is a setting, checked at construction and kept in ``srv.settings``
    (:class:`~sente_lite.core.settings.ServerSettings`, which tells what each one
    bounds or turns on). The limits: message and queue sizes, heartbeats, timeouts,
    handshake and connection caps, rates, history and replay bounds, the inbound marks;
    admission: ``authenticate`` or ``jwt`` (:class:`sente_lite.JWT`: signed connection
    tokens, refreshed over the open socket), ``authorize``, ``allowed_hosts``, ``allowed_origins``,
    ``csrf``; channel namespaces (``namespaces={"chat": Namespace(publish="subscribers")}``:
    who may subscribe and publish per namespace, :class:`sente_lite.Namespace`); where channels live: ``broker`` (this process by default, or
    ``"redis://host:port/db"``); and ``write_delay_ms``, ``compression``, ``tracing``,
    the HTTP server API (``api_keys``). Every numeric keyword must be a finite number in
    its range (:data:`sente_lite.limits.SERVER_BOUNDS`); any other value raises
    :class:`~sente_lite.limits.InvalidSetting` (a ValueError and a TypeError) naming it.

    ``console`` (default off): a :class:`sente_lite.Console` serves a remote Python console
    (nREPL) with this server bound as ``srv`` once started (:mod:`sente_lite.console`).
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, path: str = "/chsk",
        port_file: Optional[str] = None, heartbeat_ms: int = DEFAULT_HEARTBEAT_MS,
        heartbeat_timeout_ms: Optional[int] = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_queued_bytes_per_conn: int = DEFAULT_MAX_QUEUED_BYTES_PER_CONN,
        max_bad_frames_in_row: int = DEFAULT_MAX_BAD_FRAMES_IN_ROW,
        max_channel_id_chars: int = p.MAX_CHANNEL_ID_CHARS, max_idle_channels: int = 10_000,
        max_remembered_clients: int = DEFAULT_MAX_REMEMBERED_CLIENTS,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT_S,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT_S,
        authenticate: Optional[Authenticate] = None, authorize: Optional[Authorize] = None,
        namespaces: Optional[Mapping[str, NamespaceSpec]] = None,
        jwt: Optional[JWT] = None, allowed_origins: Optional[Sequence[str]] = None,
        allowed_hosts: Optional[Sequence[str]] = None,
        csrf: bool = False, csrf_secret: Union[bytes, str, None] = None,
        max_connections: int = lim.DEFAULT_MAX_CONNECTIONS,
        max_pending_handshakes: int = lim.DEFAULT_MAX_PENDING_HANDSHAKES,
        max_subscriptions_per_conn: int = lim.DEFAULT_MAX_SUBSCRIPTIONS_PER_CONN,
        rate_limit: Optional[float] = lim.DEFAULT_RATE_LIMIT, rate_burst: Optional[int] = None,
        max_rate_limited: int = lim.DEFAULT_MAX_RATE_LIMITED,
        max_outstanding_requests: int = lim.DEFAULT_MAX_OUTSTANDING_REQUESTS,
        expose_metrics: bool = True, write_delay_ms: float = 0.0,
        ssl_context: Optional[ssl.SSLContext] = None,
        accept_backlog: int = DEFAULT_ACCEPT_BACKLOG,
        request_line_timeout: float = DEFAULT_REQUEST_LINE_TIMEOUT_S,
        max_pending_handshakes_per_address: int = DEFAULT_MAX_PENDING_HANDSHAKES_PER_ADDRESS,
        min_handler_threads: int = workers.DEFAULT_MIN_THREADS,
        max_handler_threads: int = workers.DEFAULT_MAX_THREADS, raise_fd_limit: bool = True,
        history_size: int = ch.DEFAULT_HISTORY_SIZE,
        history_ttl_s: float = ch.DEFAULT_HISTORY_TTL_S, publish_dedup_s: Optional[float] = None,
        publish_ids_per_publisher: int = publish_ids.DEFAULT_PUBLISH_IDS_PER_PUBLISHER,
        publish_ids_max: int = publish_ids.DEFAULT_PUBLISH_IDS_MAX,
        history_max_bytes_per_channel: int = ch.DEFAULT_HISTORY_MAX_BYTES_PER_CHANNEL,
        history_max_bytes_total: int = ch.DEFAULT_HISTORY_MAX_BYTES_TOTAL,
        max_replay_per_subscribe: int = ch.DEFAULT_MAX_REPLAY_PER_SUBSCRIBE,
        broker: Union[Broker, str, None] = None, tracing: bool = False,
        compression: Optional[str] = None,
        compression_min_bytes: int = compression_mod.DEFAULT_COMPRESSION_MIN_BYTES,
        demo: bool = False, max_pending_auth: int = lim.DEFAULT_MAX_PENDING_AUTH,
        max_fragments: int = lim.DEFAULT_MAX_FRAGMENTS, fragment_timeout: Optional[float] = None,
        max_inbound_frames: int = lim.DEFAULT_MAX_INBOUND_FRAMES,
        max_inbound_bytes: int = lim.DEFAULT_MAX_INBOUND_BYTES,
        api_keys: Optional[Sequence[str]] = None, api_insecure_ok: bool = False,
        api_max_body_bytes: int = lim.DEFAULT_API_MAX_BODY_BYTES,
        api_rate_limit: Optional[float] = lim.DEFAULT_API_RATE_LIMIT, console: Any = None,
        max_history_page: int = lim.DEFAULT_MAX_HISTORY_PAGE,
        max_history_reads_per_conn: int = lim.DEFAULT_MAX_HISTORY_READS_PER_CONN,
    ) -> None:
        settings = self.settings = ServerSettings.from_keywords(locals())
        # each setting is also an attribute (srv.heartbeat_ms): the server's parts read them there
        vars(self).update(settings.attributes())
        self.server_id = uuid.uuid4().hex[:16]
        self.counters = Counters()
        self.channels: Broker = self._wire_broker(broker, settings)
        #: a remote console (:class:`sente_lite.Console`) to serve once started: ``self.console``
        self.console_settings, self.console = attachable(console), None
        self._assemble(settings)

    def _assemble(self, settings: ServerSettings) -> None:
        """Build the server's parts from its settings (none runs before :meth:`start`)."""
        self._pool = workers.WorkerPool(settings.min_handler_threads, settings.max_handler_threads)
        self._loop: Optional[NetLoop] = None
        self._gate = settings.gate()
        self._latency = LatencyHistogram()
        self._metrics = MetricsExporter(self.stats, self._latency)
        self._spans = tracing_mod.Spans(settings.tracing)
        self._hub = Hub(self.channels, self.counters, settings.max_remembered_clients, _ws_frame,
                        self._spans, settings.compression_min_bytes,
                        close_user=self._disconnect_user_here)
        self._rules = settings.session_rules(
            self.console_settings.handshake_features() if self.console_settings else ())
        self._handlers: Dict[str, Handler] = {}
        self._dispatcher = ServerDispatcher(
            self._hub, self._rules, self._handlers,
            settings.channel_gate(self.channels, self.counters),
            self._spans, settings.jwt)
        # a history read on Redis waits on it: on a worker, on a lane of its own (the
        # connection's next frames do not wait behind it; its reply carries its cb-id, and
        # max_history_reads_per_conn bounds how many one connection runs at once)
        self._dispatcher.history_reads.offload = (
            lambda conn, task: self._pool.submit(Lane(f"{conn.conn_id}-history"), task))
        self._core = ServerCore(self, self._dispatcher)
        self._front = HttpFront(self)
        self._api = ApiFront(self)
        self._on_connect: List[ConnectHook] = []
        self._on_disconnect: List[DisconnectHook] = []
        self._conn_seq = itertools.count(1)
        self._closed_totals: Dict[str, int] = dict.fromkeys(PER_CONN_TOTALS, 0)
        self._closes_by_code: Dict[int, int] = {}
        self._count_lock = threading.Lock()
        self._stopping = False
        self._started_at = 0.0
        self.port = 0

    def _wire_broker(self, broker: Union[Broker, str, None], settings: ServerSettings) -> Broker:
        """The broker of ``broker`` (a Broker; a Redis URL; None: this process's)."""
        return settings.make_broker(self.server_id, self.counters)

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
            self._core, self.host, self.requested_port, ssl_context=self.ssl_context,
            accept_backlog=self.accept_backlog, max_message_bytes=self.max_message_bytes,
            max_queued_bytes=self.max_queued_bytes_per_conn, write_delay_ns=self.settings.write_delay_ns,
            close_timeout=self.close_timeout, handshake_timeout=self.handshake_timeout,
            request_line_timeout=self.request_line_timeout,
            max_pending_handshakes=self.max_pending_handshakes,
            max_pending_handshakes_per_address=self.max_pending_handshakes_per_address,
            tick_s=min(1.0, self.heartbeat_ms / 4000.0),
            extensions=compression_mod.server_extensions(self.compression), inbound=self.inbound)
        self._loop.api = self._api
        self._pool.start()
        # replays (and the deliveries a broker receives from other nodes) run on the
        # network thread, which writes what they queue once per connection per pass
        self.channels.start(self._hub, self._loop.call_soon)
        try:
            self._loop.start()
        except BaseException:
            self._pool.stop()
            self._stop_broker()
            self._loop = None
            raise
        self.port = self._loop.port
        self._started_at = time.monotonic()
        if self.console_settings is not None:
            try:
                self.console = self.console_settings.attach({"srv": self}, server=self)
            except BaseException:
                self.stop()
                raise
        if self.port_file:
            discovery.write_port_file(self.port_file, self.host, self.port, self.url, self.server_id)
        log.info("serving %s (server-id %s)", self.url, self.server_id)
        return self

    def stop(self) -> None:
        """Close every connection with 1001, join every thread, free the port."""
        if self._loop is None or self._stopping:
            return
        self._stopping = True
        if self.console is not None:
            self.console.stop()
        for conn in self._snapshot():
            conn.close(p.CLOSE_GOING_AWAY, "server shutting down")
        deadline = time.monotonic() + self.close_timeout + 1.0
        for conn in self._snapshot():
            conn._closed.wait(max(0.0, deadline - time.monotonic()))
        self._loop.stop(self.close_timeout + 5.0)  # drops whatever is left
        self._pool.stop(self.close_timeout + 5.0)  # runs the disconnect hooks still queued
        self._stop_broker()
        if self.port_file:
            discovery.remove(self.port_file)
        log.info("stopped %s", self.url)

    def _stop_broker(self) -> None:
        self.channels.stop()

    # -- registration -----------------------------------------------------------
    def on(self, event: str, fn: Optional[Handler] = None) -> Any:
        """Register ``fn(conn, data)`` for ``event``; usable as a decorator.

        For a request, the return value is the reply; an exception becomes a
        ``handler-error`` reply. Handlers run on a worker thread (never the network
        thread), one event of a connection at a time in arrival order, batched or
        not, so a slow handler delays only that connection.
        """
        check_event_id(event)
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
        """Call ``fn(conn)`` after each handshake (on a worker, before that connection's events)."""
        self._on_connect.append(fn)
        return fn

    def on_disconnect(self, fn: DisconnectHook) -> DisconnectHook:
        """Call ``fn(conn, close_code, reason)`` once when a connection ends."""
        self._on_disconnect.append(fn)
        return fn

    def csrf_token(self, client_id: str) -> Optional[str]:
        """The CSRF token of ``client_id`` (to embed in a page); None when ``csrf`` is off."""
        return self._gate.csrf_token_for(client_id)

    # -- inspection -------------------------------------------------------------

    def _pending_handshakes(self) -> int:
        """Sockets whose upgrade request is still arriving (``/health``)."""
        loop = self._loop
        return loop.pending_count() if loop is not None else 0

    def _on_network_thread(self) -> bool:
        loop = self._loop
        return loop is not None and loop.on_loop()

    def _admit(self, link: Link, request: Request, client_id: str,
               client_id_given: bool) -> Optional[Response]:
        """Origin and CSRF checks (see :mod:`sente_lite.core.security`): a Response refuses."""
        return self._gate.admit(link, request, client_id, client_id_given)

    def _new_connection(self, link: Link, conn_id: str, identity: Identity, first: bool) -> Connection:
        """The :class:`Connection` of an upgrade whose 101 just went out (``ServerCore.on_open``)."""
        return Connection(self, link, conn_id, identity, first)

    def _identify(self, link: Link, request: Request, client_id: str) -> Union[str, Response]:
        """The uid of this upgrade: the ``authenticate`` hook's answer, else the client-id."""
        return self._gate.identify(link, request, client_id)


def attachable(console: Any) -> Any:
    """``console`` when it is None or can be attached (a :class:`sente_lite.Console`)."""
    if console is not None and not callable(getattr(console, "attach", None)):
        raise TypeError(f"console must be a sente_lite.Console(...) or None, got {type(console).__name__}")
    return console


_PING = p.encode_bytes(p.EV_PING)


def _ws_frame(payload: bytes, binary: bool, compressed: bool = False) -> bytes:
    """``payload`` as one unmasked, final text (or binary) WebSocket frame
    (``compressed``: a permessage-deflate message, RSV1 set)."""
    if not binary and not compressed:
        return _text_frame(payload)
    return encode_frame(payload, OP_BINARY if binary else OP_TEXT, rsv=4 if compressed else 0)


_PING_WIRE = _text_frame(_PING)
#: ``["chsk/ws-ping"]`` in MessagePack (a fixarray of one fixstr), written by hand so the
#: module needs no msgpack package.
_PING_MSGPACK = bytes((0x91, 0xA0 | len(p.EV_PING))) + p.EV_PING.encode("ascii")
_PING_WIRE_MSGPACK = _ws_frame(_PING_MSGPACK, True)
#: Descriptors a server keeps for itself (listener, wake-up pair, reserve, logs, files).
DESCRIPTORS_RESERVED = 32

__all__ = ["Server", "Connection", "Published"]
