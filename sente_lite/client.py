"""sente_lite client on ``websocket-client``, with its own threads.

Two threads (``sente-lite-client-1`` and ``-2``), both stopped and joined by
:meth:`Client.close` (within 1 s), share two roles:

* reading: connect, read frames, answer pings, reconnect with backoff and full
  jitter. Replies to requests and the handshake are processed here.
* running handlers (events, channel messages, server requests), one at a time in
  arrival order.

The thread that read a batch of messages runs their handlers itself when no
handler is running: one thread wake-up per read, none per message. The other
thread waits and watches the server's liveness. When a handler runs longer than
:data:`HANDLER_HANDOFF_S`, or blocks on a reply (``request``, ``subscribe``,
``unsubscribe`` from a handler), the waiting thread takes over reading, so a slow
or raising handler delays or logs, never disconnects, and never deadlocks.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import logging
import random
import socket
import ssl
import struct
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, Generator, List, Optional, Tuple, Union
from urllib.parse import urlencode, urlsplit, urlunsplit, parse_qsl

import websocket  # websocket-client

from . import protocol as p
from . import session as ss
from .channels import Since
from .logsafe import redact_target, safe
from .limits import validate_milliseconds
from .errors import (ClientClosed, ConnectRefused, Disconnected, LimitExceeded, RequestTimeout,
                     SendQueueFull)
from .session import (CLOSED, CONNECTED, CONNECTING, RECONNECTING, ChannelMessage,
                      ClientSession, Recovery)

log = logging.getLogger("sente_lite.client")

DEFAULT_BACKOFF_BASE_S = 0.25
DEFAULT_BACKOFF_MAX_S = 10.0
DEFAULT_MAX_PENDING_SENDS = 1000
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_REQUEST_TIMEOUT_S = 5.0
DEFAULT_MAX_HANDLER_QUEUE = 100_000
#: Reads closer together than this are merged: see ``Client(read_coalesce_ms=)``.
DEFAULT_READ_COALESCE_MS = 2.0
#: The largest ``read_coalesce_ms`` accepted (it is added latency at high rates).
MAX_READ_COALESCE_MS = 50.0
#: A server silent this long past 2 x heartbeat is dead (PROTOCOL 5).
DEAD_SERVER_SLACK_S = ss.DEAD_SERVER_SLACK_S
#: Publishes awaiting their ack (kept, and resent after a reconnect) before
#: ``publish`` raises :class:`SendQueueFull`.
DEFAULT_MAX_UNACKED_PUBLISHES = ss.DEFAULT_MAX_UNACKED_PUBLISHES
#: A handler that runs this long on the thread that was reading makes the other
#: thread take over reading (so pings are answered and replies arrive meanwhile).
HANDLER_HANDOFF_S = 0.05
#: How often the waiting thread checks the server's liveness.
_IDLE_TICK_S = 0.1
_READ, _RUN = "read", "run"

EventHandler = Callable[[Any], Any]
Token = Union[str, Callable[[], Optional[str]], None]


ChannelHandler = Callable[[ChannelMessage], None]
RecoveryHandler = Callable[[Recovery], None]


@dataclass
class _Sub:
    handlers: List[ChannelHandler] = field(default_factory=list)
    acked: threading.Event = field(default_factory=threading.Event)
    reply: Optional[dict] = None
    error: Optional[BaseException] = None


def backoff_delay(attempt: int, base: float, maximum: float,
                  rng: Callable[[float, float], float] = random.uniform) -> float:
    """Full-jitter backoff: random(0, min(maximum, base * 2**attempt))."""
    return rng(0.0, min(maximum, base * (2 ** min(attempt, 32))))


_OP_CONT, _OP_TEXT, _OP_BINARY = 0x0, 0x1, 0x2
_OP_CLOSE, _OP_PING, _OP_PONG = 0x8, 0x9, 0xA
#: Bytes asked of the socket per read; one read usually holds many small frames.
_READ_CHUNK = 256 * 1024


class _FrameReader:
    """Parses the server's WebSocket frames (RFC 6455 5.2) from a blocking socket.

    One ``recv`` may hold many frames: :meth:`read` returns every whole message in
    it, where websocket-client would make two ``recv`` calls per frame. Fragmented
    messages are reassembled; control frames come back as they arrive. A masked
    frame, a reserved bit (no extension is negotiated) or a bad opcode or
    fragment sequence raises ``WebSocketProtocolException``.
    """

    __slots__ = ("_sock", "_buf", "_parts", "_have", "_need", "_frag", "_frag_op",
                 "_recv_into", "_chunk", "_chunk_view")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        # ``recv(256 KiB)`` would allocate (mmap) and shrink (mremap, munmap) a fresh
        # 256 KiB object per call, about 10 us of system time each: read into one
        # reused buffer instead and copy out only the bytes that came.
        self._recv_into = getattr(sock, "recv_into", None)
        self._chunk = bytearray(_READ_CHUNK) if self._recv_into is not None else bytearray()
        self._chunk_view = memoryview(self._chunk)
        self._buf = b""
        self._parts: List[bytes] = []  # received bytes of a frame bigger than one read
        self._have = 0
        self._need = 0
        self._frag: Optional[List[bytes]] = None
        self._frag_op = 0

    def read(self) -> List[tuple]:
        """Block for one ``recv``; return the (opcode, payload) of each whole message."""
        if self._recv_into is not None:
            data = self._chunk_view[:self._recv_into(self._chunk)].tobytes()
        else:  # a socket-like object without recv_into
            data = self._sock.recv(_READ_CHUNK)
        if not data:
            raise websocket.WebSocketConnectionClosedException("connection closed by the server")
        if self._need:  # the rest of one big frame: join once, when it is all here
            self._parts.append(data)
            self._have += len(data)
            if self._have < self._need:
                return []
            data = b"".join(self._parts)
            self._parts, self._have, self._need = [], 0, 0
        elif self._buf:
            data = self._buf + data
        out: List[tuple] = []
        pos, end = 0, len(data)
        while end - pos >= 2:
            b0, b1 = data[pos], data[pos + 1]
            n = b1 & 0x7F
            head = 2
            if n == 126:
                if end - pos < 4:
                    break
                n = (data[pos + 2] << 8) | data[pos + 3]
                head = 4
            elif n == 127:
                if end - pos < 10:
                    break
                n = int.from_bytes(data[pos + 2:pos + 10], "big")
                head = 10
            if b1 & 0x80 or b0 & 0x70:
                raise websocket.WebSocketProtocolException(
                    "server frame is masked or sets a reserved bit")
            stop = pos + head + n
            if stop > end:
                if stop - pos > _READ_CHUNK:
                    self._parts, self._have, self._need = [data[pos:]], end - pos, stop - pos
                    self._buf = b""
                    return out
                break
            payload = data[pos + head:stop]
            pos = stop
            op = b0 & 0x0F
            fin = b0 & 0x80
            if op == _OP_TEXT or op == _OP_BINARY:
                if self._frag is not None:
                    raise websocket.WebSocketProtocolException("new message inside a fragmented one")
                if fin:
                    out.append((op, payload))
                else:
                    self._frag, self._frag_op = [payload], op
            elif op == _OP_CONT:
                if self._frag is None:
                    raise websocket.WebSocketProtocolException("continuation frame with no message")
                self._frag.append(payload)
                if fin:
                    out.append((self._frag_op, b"".join(self._frag)))
                    self._frag = None
            elif op in (_OP_CLOSE, _OP_PING, _OP_PONG):
                if not fin or n > 125:
                    raise websocket.WebSocketProtocolException("control frame fragmented or too long")
                out.append((op, payload))
            else:
                raise websocket.WebSocketProtocolException(f"unknown opcode {op}")
        self._buf = data[pos:] if pos < end else b""
        return out


class Client:
    """A sente_lite client. Use as ``with Client(url) as c:`` or call start()/close().

    ``client_id`` is kept across reconnects (a UUID4 when not given). ``token`` is
    a credential string, or a callable evaluated at every (re)connect, sent as
    ``Authorization: Bearer <token>`` (never in the URL).
    ``csrf_token`` (for a server with ``csrf=True``) is the first CSRF token, or a
    callable evaluated at every (re)connect; without a callable the client sends
    the token the last handshake carried. Sends made
    while disconnected wait in a queue of at most ``max_pending_sends`` frames;
    one more raises :class:`SendQueueFull`.

    ``read_coalesce_ms``: when frames arrive less than this apart, the client
    reads at most once per ``read_coalesce_ms`` and handles everything that came
    in one go, instead of waking up for every frame. Frames further apart are
    read at once. So at high rates a frame waits up to this long (ping answers
    too) and the client uses far less CPU; 0 reads every frame as it arrives.

    Channels recover (PROTOCOL 9): after every reconnect each subscription is
    renewed with the last offset and epoch seen, the server replays what was
    missed, and duplicates are dropped; when the server cannot replay,
    :meth:`on_recovery` handlers hear it. Every publish carries an id and is kept
    (at most ``max_unacked_publishes``) until the server acknowledges it, and
    sent again after a reconnect: it lands in its channel exactly once.

    One client may be shared by many threads: every method is thread-safe.
    """

    def __init__(
        self,
        url: str,
        *,
        client_id: Optional[str] = None,
        auto_reconnect: bool = True,
        token: Token = None,
        csrf_token: Token = None,
        backoff_base: float = DEFAULT_BACKOFF_BASE_S,
        backoff_max: float = DEFAULT_BACKOFF_MAX_S,
        max_pending_sends: int = DEFAULT_MAX_PENDING_SENDS,
        max_handler_queue: int = DEFAULT_MAX_HANDLER_QUEUE,
        read_coalesce_ms: float = DEFAULT_READ_COALESCE_MS,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT_S,
        headers: Optional[Dict[str, str]] = None,
        ssl_context: Optional[ssl.SSLContext] = None,
        max_unacked_publishes: int = DEFAULT_MAX_UNACKED_PUBLISHES,
        start: bool = True,
    ) -> None:
        self.url = url
        self.client_id = client_id or str(uuid.uuid4())
        self.auto_reconnect = auto_reconnect
        self.token = token
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_pending_sends = max_pending_sends
        if max_unacked_publishes < 1:
            raise ValueError(f"max_unacked_publishes must be >= 1, got {max_unacked_publishes!r}")
        self.max_unacked_publishes = max_unacked_publishes
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.headers = dict(headers or {})
        self.ssl_context = ssl_context
        self.read_coalesce_ms = validate_milliseconds("read_coalesce_ms", read_coalesce_ms,
                                                      MAX_READ_COALESCE_MS)

        self.uid: Optional[str] = None
        self.conn_id: Optional[str] = None
        self.server_id: Optional[str] = None
        self.first: Optional[bool] = None
        self.handshake: Optional[dict] = None
        self.csrf_token: Optional[str] = None if callable(csrf_token) else csrf_token
        self._csrf_source = csrf_token if callable(csrf_token) else None
        self.refusal: Optional[ConnectRefused] = None

        # Every protocol rule (status, requests, subscriptions and their offsets,
        # the publish outbox) is in the session; the rest of this class moves bytes
        # and runs handlers. The session is used under ``_send_lock``.
        self._session = ClientSession(self.client_id, max_unacked_publishes)
        self._status_cond = threading.Condition()
        self._status_hooks: List[Callable[[str], None]] = []
        self._recovery_hooks: List[RecoveryHandler] = []
        self._handlers: Dict[str, List[EventHandler]] = {}
        self._subs: Dict[str, _Sub] = {}
        self._queued: Deque[tuple] = collections.deque()  # (frame bytes, cb_id or None)
        self._send_lock = threading.RLock()
        self._ws: Optional[websocket.WebSocket] = None
        # Roles of the two threads (see the module docstring), under ``_roles``:
        # ``_reading`` while a thread advances ``_connection`` (the reading role's
        # generator); ``_running_since`` while one runs handlers, which take their
        # tasks from ``_tasks`` (one list per socket read) in order.
        self.max_handler_queue = max_handler_queue
        self._roles = threading.Condition(threading.Lock())
        self._tasks: Deque[List[tuple]] = collections.deque()
        self._tasks_in = 0
        self._tasks_out = 0
        self._reading = False
        self._running_since: Optional[float] = None
        self._runner: Optional[int] = None  # ident of the thread running handlers
        self._handoff = False  # the running handler waits for a reply: read now
        self._connection = self._connections()
        self._connection_done = False
        self._stop = threading.Event()
        self._counts: Dict[str, int] = collections.defaultdict(int)
        self._threads = tuple(threading.Thread(target=self._serve, name=f"sente-lite-client-{i}",
                                               daemon=True) for i in (1, 2))
        if start:
            self.start()

    # -- lifecycle --------------------------------------------------------------
    def __enter__(self) -> "Client":
        if not self._threads[0].is_alive() and self._status != CLOSED:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> "Client":
        """Start connecting (done by the constructor unless ``start=False``)."""
        if not self._threads[0].is_alive() and not self._stop.is_set():
            for t in self._threads:
                t.start()
        return self

    def close(self, timeout: float = 1.0) -> None:
        """Close the connection and stop both threads; fail outstanding requests."""
        if self._stop.is_set():
            return
        self._stop.set()
        ws = self._ws
        if ws is not None:
            if self._send_lock.acquire(timeout=0.2):  # a send blocked on a full socket holds it
                try:
                    ws.send_close(p.CLOSE_NORMAL)
                except Exception:
                    pass
                finally:
                    self._send_lock.release()
            ws.abort()
        with self._roles:
            self._roles.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            if t.is_alive() and t is not threading.current_thread():
                t.join(max(0.0, deadline - time.monotonic()))
        self._fail_requests(ClientClosed("client closed"))
        self._apply(ss.ON_CLOSE)

    @property
    def _status(self) -> str:
        return self._session.status

    @property
    def status(self) -> str:
        """``connecting``, ``connected``, ``reconnecting`` or ``closed``."""
        return self._session.status

    @property
    def connected(self) -> bool:
        """True between a handshake and the loss of that connection."""
        return self._session.status == CONNECTED

    def on_status(self, fn: Callable[[str], None]) -> None:
        """Call ``fn(new_status)`` on every status change (on the thread that changed it)."""
        self._status_hooks.append(fn)

    def wait_connected(self, timeout: float = DEFAULT_CONNECT_TIMEOUT_S) -> bool:
        """Wait for a handshake. False on timeout; raises ConnectRefused if refused."""
        return self.wait_status(CONNECTED, timeout)

    def wait_status(self, status: str, timeout: float) -> bool:
        """Wait until the status is ``status``. False on timeout; raises ConnectRefused
        if the server refused for good (unless waiting for ``closed``, which follows)."""
        deadline = time.monotonic() + timeout
        with self._status_cond:
            while self._status != status:
                if self.refusal is not None and status != CLOSED:
                    raise self.refusal
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self._status == CLOSED and status != CLOSED):
                    return False
                self._status_cond.wait(remaining)
            return True

    def _apply(self, on: str) -> None:
        """Feed ``on`` to the session's status machine; tell waiters and hooks."""
        with self._status_cond:
            status = self._session.transition(on)
            if status is None:
                return
            self._status_cond.notify_all()
        self._status_changed(status)

    def _status_changed(self, status: str) -> None:
        log.debug("client %s: %s", self.client_id, status)
        for hook in list(self._status_hooks):
            try:
                hook(status)
            except Exception:
                log.exception("status hook raised")

    # -- handlers ---------------------------------------------------------------
    def on(self, event: str, fn: EventHandler) -> EventHandler:
        """Call ``fn(data)`` for each ``event`` from the server (one handler at a
        time, in arrival order).

        For a server request, the first handler's return value is the reply.
        """
        if not p.is_valid_event_id(event) or p.is_reserved(event):
            raise ValueError(f"cannot handle {event!r}: need an application 'namespace/name'")
        self._handlers.setdefault(event, []).append(fn)
        return fn

    def off(self, event: str, fn: Optional[EventHandler] = None) -> None:
        """Remove ``fn`` (or every handler) for ``event``."""
        if fn is None:
            self._handlers.pop(event, None)
        elif fn in self._handlers.get(event, []):
            self._handlers[event].remove(fn)

    def on_recovery(self, fn: RecoveryHandler) -> RecoveryHandler:
        """Call ``fn(recovery)`` for the server's answer to every subscribe sent
        with ``since`` (each one after a reconnect), on the handler thread, before
        that channel's next message. ``recovery.recovered`` False means messages
        were lost for good (``recovery.reason``): reload the channel's state."""
        self._recovery_hooks.append(fn)
        return fn

    # -- sending ----------------------------------------------------------------
    def send(self, event: str, data: Any = None) -> None:
        """Send an event. While disconnected it is queued (see ``max_pending_sends``)."""
        if not p.is_valid_event_id(event):
            raise ValueError(f"invalid event-id {event!r}")
        self._send_frame(p.encode(event, data).encode("utf-8"), None)

    def request(self, event: str, data: Any = None, timeout: Optional[float] = None) -> Any:
        """Send a request and wait for its reply.

        Raises :class:`RemoteError` (with the protocol code), :class:`RequestTimeout`,
        :class:`Disconnected` or :class:`SendQueueFull`.
        """
        if not p.is_valid_event_id(event):
            raise ValueError(f"invalid event-id {event!r}")
        timeout = self.request_timeout if timeout is None else timeout
        cb_id, fut = self._start_request(event, data)
        self._hand_off_reading()
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            raise RequestTimeout(f"no reply to {event} within {timeout}s") from None
        finally:
            with self._send_lock:
                self._session.forget(cb_id)

    def _start_request(self, event: str, data: Any, timeout: Optional[float] = None) -> tuple:
        if self._stop.is_set():
            raise ClientClosed("client closed")
        fut: "concurrent.futures.Future[Any]" = concurrent.futures.Future()
        timeout = self.request_timeout if timeout is None else timeout
        with self._send_lock:
            cb_id, frame = self._session.request(event, data, fut, time.monotonic(), timeout)
            try:
                self._send_frame(frame, cb_id)
            except BaseException:
                self._session.forget(cb_id)
                raise
        return cb_id, fut

    def _send_frame(self, frame: bytes, cb_id: Optional[str]) -> None:
        if self._stop.is_set():
            raise ClientClosed("client closed")
        with self._send_lock:
            if self._status == CONNECTED and self._ws is not None:
                if self._write(frame, cb_id):
                    return
            if len(self._queued) >= self.max_pending_sends:
                self._counts["pending_overflows"] += 1
                raise SendQueueFull(f"{len(self._queued)} sends already wait for a connection "
                                    f"(max_pending_sends={self.max_pending_sends})")
            self._queued.append((frame, cb_id))

    def _write(self, frame: bytes, cb_id: Optional[str]) -> bool:
        """Write one frame (UTF-8 JSON) now. Caller holds ``_send_lock``. False if
        the socket failed."""
        ws = self._ws
        if ws is None:
            return False
        try:
            ws.send(frame, websocket.ABNF.OPCODE_TEXT)
        except (OSError, websocket.WebSocketException) as exc:
            log.debug("send failed, will resend after reconnect: %s", exc)
            ws.abort()
            return False
        self._counts["frames_out"] += 1
        if cb_id is not None:
            self._session.mark_sent(cb_id)
        return True

    # -- channels ---------------------------------------------------------------
    def subscribe(self, channel_id: str, handler: Optional[ChannelHandler] = None,
                  timeout: Optional[float] = DEFAULT_REQUEST_TIMEOUT_S, *,
                  since: Union[Since, Dict[str, Any], None] = None) -> Optional[dict]:
        """Subscribe to ``channel_id``; kept across reconnects until unsubscribe.

        ``handler(msg: ChannelMessage)`` runs for each delivery. With a ``timeout``
        this waits for the server's answer and returns it (``channel-id``,
        ``offset``, ``epoch``, and ``recovered`` when ``since`` was sent); with None
        it returns at once. ``since`` (``{"offset": N, "epoch": E}``, e.g. a stored
        :meth:`position`) asks the server to replay every message after it first;
        the answer goes to :meth:`on_recovery` handlers too.
        """
        problem = p.channel_id_problem(channel_id)
        if problem:
            raise ValueError(problem)
        start: Optional[Since] = None
        if since is not None:
            start = ss.parse_since(since)
            if start is None:
                raise ValueError(f"since must be {{'offset': int >= 0, 'epoch': str}}, got {since!r}")
        with self._send_lock:
            sub = self._subs.get(channel_id)
            new = sub is None
            if sub is None:
                sub = self._subs[channel_id] = _Sub()
                self._session.add_subscription(channel_id, start)
            if handler is not None:
                sub.handlers.append(handler)
            if new and self._status == CONNECTED:
                self._send_subscribe(channel_id, sub)
        if timeout is None:
            return None
        self._hand_off_reading()
        if not sub.acked.wait(timeout):
            raise RequestTimeout(f"subscribe to {channel_id!r} not answered within {timeout}s")
        if sub.error is not None:
            raise sub.error
        return sub.reply

    def _send_subscribe(self, channel_id: str, sub: _Sub) -> None:
        """Send the subscribe of ``channel_id`` (with ``since`` when a position is
        known). Caller holds ``_send_lock``; the answer is handled by the reader."""
        sub.acked.clear()
        sub.error = None
        cb_id, frame = self._session.subscribe_frame(channel_id, None, time.monotonic(),
                                                     self.request_timeout)
        self._send_frame(frame, cb_id)

    def position(self, channel_id: str) -> Optional[Dict[str, Any]]:
        """``{"offset", "epoch"}`` of the last message seen on ``channel_id`` (store it;
        pass it as ``since`` to resume there), or None before any."""
        with self._send_lock:
            at = self._session.position(channel_id)
        return None if at is None else {p.K_OFFSET: at.offset, p.K_EPOCH: at.epoch}

    def unsubscribe(self, channel_id: str, timeout: Optional[float] = DEFAULT_REQUEST_TIMEOUT_S) -> None:
        """Stop receiving ``channel_id``; with a ``timeout``, wait for the server's answer."""
        with self._send_lock:
            sub = self._subs.pop(channel_id, None)
            self._session.drop_subscription(channel_id)
            if sub is None or self._status != CONNECTED:
                return
            cb_id, fut = self._start_request(p.EV_UNSUBSCRIBE, {p.K_CHANNEL: channel_id})
        if timeout is not None:
            self._hand_off_reading()
            try:
                fut.result(timeout)
            except concurrent.futures.TimeoutError:
                raise RequestTimeout(f"unsubscribe from {channel_id!r} not answered") from None
            finally:
                with self._send_lock:
                    self._session.forget(cb_id)

    def subscriptions(self) -> List[str]:
        """The channels this client holds (resubscribed after every reconnect)."""
        return sorted(self._subs)

    def publish(self, channel_id: str, data: Any = None, *, ack: bool = False,
                exclude_sender: bool = False, timeout: Optional[float] = None) -> Optional[dict]:
        """Publish on ``channel_id``. With ``ack`` wait for the acknowledgement
        (``channel-id``, ``offset``, ``delivered``; ``duplicate`` when an earlier
        send of it had landed) and return it.

        Each publish carries an id (``<client-id>:<n>``) and is kept until the
        server acknowledges it, which means it is in the channel (and its history);
        if the connection drops first it is sent again, same id, after the
        reconnect, and the server delivers it once. At most
        ``max_unacked_publishes`` wait for their ack: one more raises
        :class:`SendQueueFull`. A publish the server refuses (``forbidden``, ...)
        raises :class:`RemoteError` with ``ack``; without, it is counted
        (``publish_errors``) and logged.
        """
        problem = p.channel_id_problem(channel_id)
        if problem:
            raise ValueError(problem)
        if self._stop.is_set():
            raise ClientClosed("client closed")
        fut: Optional["concurrent.futures.Future[Any]"] = concurrent.futures.Future() if ack else None
        with self._send_lock:
            try:
                cb_id, frame = self._session.publish(channel_id, data, exclude_sender, fut,
                                                     time.monotonic())
            except LimitExceeded as exc:
                raise SendQueueFull(str(exc)) from None
            if self._status == CONNECTED and self._ws is not None:
                self._write(frame, cb_id)  # on failure it is resent after the reconnect
        if fut is None:
            return None
        timeout = self.request_timeout if timeout is None else timeout
        self._hand_off_reading()
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            raise RequestTimeout(f"publish on {channel_id!r} not acknowledged within {timeout}s "
                                 "(it stays queued and is resent after a reconnect)") from None
        finally:
            with self._send_lock:
                self._session.forget(cb_id)

    # -- inspection -------------------------------------------------------------
    def stats(self) -> dict:
        """Counters: frames in/out, socket reads, reconnects, gaps, handler errors,
        queue sizes."""
        with self._send_lock:
            out = dict(self._counts)
            for key, n in self._session.counts.items():
                out[key] = out.get(key, 0) + n
            out.update(status=self._status, pending_sends=len(self._queued),
                       outstanding_requests=len(self._session._requests),
                       unacked_publishes=self._session.unacked(), subscriptions=len(self._subs),
                       handler_queue=self._tasks_in - self._tasks_out)
        return out

    # -- reader thread ------------------------------------------------------------
    def _connect_url(self) -> str:
        """The URL of one upgrade: the client-id and CSRF token in the query. The
        credential goes in a header (:meth:`_connect_headers`), never in the URL,
        which servers and proxies log; a ``?token=`` in ``url`` itself is kept only
        when no ``token`` is given."""
        parts = urlsplit(self.url)
        drop = ("client-id", "token") if self.token is not None else ("client-id",)
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                 if k not in drop]
        query.append(("client-id", self.client_id))
        csrf = self._csrf_source() if self._csrf_source is not None else self.csrf_token
        if csrf:
            query = [(k, v) for k, v in query if k != "csrf-token"] + [("csrf-token", csrf)]
        return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))

    def _connect_headers(self) -> Dict[str, str]:
        """The headers of one upgrade: ``headers``, plus ``Authorization: Bearer <token>``
        when there is a token (evaluated now when ``token`` is a callable)."""
        headers = dict(self.headers)
        token = self.token() if callable(self.token) else self.token
        if token:
            for name in [k for k in headers if k.lower() == "authorization"]:
                del headers[name]
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _connections(self) -> Generator[List[tuple], None, None]:
        """The reading role: connect, read, reconnect with backoff until stopped or
        refused. Yields each read's handler tasks. Advanced by one thread at a time."""
        attempt = 0
        try:
            while not self._stop.is_set():
                ws = self._open()
                if ws is not None:
                    attempt = yield from self._read(ws, attempt)
                if self._stop.is_set() or self.refusal is not None:
                    break
                if not self.auto_reconnect:
                    break
                self._apply(ss.ON_LOST)
                delay = backoff_delay(attempt, self.backoff_base, self.backoff_max)
                attempt += 1
                self._counts["reconnect_attempts"] += 1
                if self._stop.wait(delay):
                    break
        except Exception:  # pragma: no cover - a bug; do not leave callers hanging
            log.exception("client reader failed")
        finally:
            self._fail_requests(self.refusal or ClientClosed("client closed"))
            self._stop.set()  # ended by itself (refused, or no auto_reconnect) or by close()
            self._apply(ss.ON_GIVE_UP)

    def _open(self) -> Optional[websocket.WebSocket]:
        try:
            url = self._connect_url()
            headers = self._connect_headers()
            if any(c in v for v in headers.values() for c in "\r\n"):
                self.refusal = ConnectRefused("a header value (or the token) holds a line break: "
                                              "not sent")
                log.warning("%s", self.refusal)
                return None
            ws = websocket.create_connection(
                url, timeout=self.connect_timeout, header=headers,
                skip_utf8_validation=True, enable_multithread=True,
                sockopt=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
                sslopt={"context": self.ssl_context} if self.ssl_context is not None else None,
            )
        except websocket.WebSocketBadStatusException as exc:
            status = exc.status_code
            body = (exc.resp_body or b"").decode("utf-8", "replace").strip()
            if status in (400, 401, 403, 404):
                self.refusal = ConnectRefused(f"server refused the connection: HTTP {status} {body}",
                                              status=status)
                log.warning("%s", safe(self.refusal))
            else:
                log.info("connect refused with HTTP %s (%s), will retry", status, safe(body))
            self._counts["connect_failures"] += 1
            return None
        except Exception as exc:
            log.debug("connect to %s failed: %s", redact_target(self.url), safe(exc))
            self._counts["connect_failures"] += 1
            return None
        ws.settimeout(None)
        return ws

    def _read(self, ws: websocket.WebSocket, attempt: int) -> Generator[List[tuple], None, int]:
        """Read frames until the socket ends, yielding each read's handler tasks.
        Returns the next backoff attempt number."""
        with self._send_lock:
            self._ws = ws
            self._session.connection_opened(time.monotonic())
        if self._stop.is_set():
            ws.abort()
        close_code: Optional[int] = None
        reader = _FrameReader(ws.sock)
        counts = self._counts
        coalesce = self.read_coalesce_ms / 1000.0
        next_read = 0.0
        try:
            while close_code is None:
                if coalesce:
                    wait = next_read - time.monotonic()
                    if wait > 0:  # the last read was less than read_coalesce_ms ago
                        time.sleep(wait)
                messages = reader.read()  # every whole message of one recv(), in order
                now = time.monotonic()
                next_read = now + coalesce
                counts["reads"] += 1
                tasks: List[tuple] = []  # this read's handler tasks, handed over at once
                failed: Optional[BaseException] = None
                try:
                    for opcode, payload in messages:
                        if opcode == _OP_TEXT or opcode == _OP_BINARY:
                            counts["frames_in"] += 1
                            if self._on_frame(payload, tasks, now):
                                attempt = 0
                        elif opcode == _OP_PING:
                            ws.pong(payload)
                        elif opcode == _OP_CLOSE:
                            close_code = (struct.unpack("!H", payload[:2])[0]
                                          if len(payload) >= 2 else 1005)
                            counts[f"closed_by_server_{close_code}"] += 1
                            try:
                                ws.send_close()  # answer the closing handshake, as websocket-client does
                            except (OSError, websocket.WebSocketException):
                                pass
                            break
                except (OSError, websocket.WebSocketException) as exc:
                    failed = exc
                if tasks:
                    yield tasks  # messages already read are handled even if the socket failed
                if failed is not None:
                    raise failed
        except (OSError, websocket.WebSocketException, ValueError) as exc:
            log.debug("connection lost: %s", safe(exc))
        finally:
            with self._send_lock:
                self._ws = None
                was_connected = self._status == CONNECTED
                failed = self._session.connection_lost()
            if was_connected and not self._stop.is_set():  # close() sets CLOSED itself
                self._apply(ss.ON_LOST if self.auto_reconnect else ss.ON_GIVE_UP)
            try:
                ws.shutdown()
            except Exception:
                pass
            _settle(failed)
            for sub in list(self._subs.values()):
                sub.acked.clear()
        if close_code == p.CLOSE_POLICY:
            self.refusal = ConnectRefused("server closed the connection with 1008 (policy)",
                                          close_code=close_code)
            log.warning("%s", self.refusal)
        return attempt

    def _fail_requests(self, exc: BaseException) -> None:
        """The client ends: every waiting caller gets ``exc``."""
        with self._send_lock:
            failed = self._session.fail_all(exc)
            self._queued.clear()
        _settle(failed)

    def _on_frame(self, raw: bytes, tasks: List[tuple], now: float) -> bool:
        """Handle one frame as it is read; handler work goes to ``tasks``.

        True when it was a handshake."""
        with self._send_lock:
            received = self._session.receive(raw, now)
            for frame in received.frames:
                if self._ws is not None:
                    self._write(frame, None)
            handshake = False
            for ev in received.events:
                kind = type(ev)
                if kind is ChannelMessage:
                    sub = self._subs.get(ev.channel_id)
                    if sub is not None and sub.handlers:
                        tasks.append(("channel", sub.handlers, ev))
                elif kind is ss.ReplyArrived or kind is ss.PublishAnswered:
                    _resolve(ev.waiter, ev.reply if kind is ss.PublishAnswered else ev.result,
                             ev.error)
                elif kind is ss.EventRequest:
                    tasks.append(("event", ev.event, ev.data, ev.cb_id))
                elif kind is ss.Subscribed:
                    self._on_subscribed(ev, tasks)
                elif kind is ss.Handshake:
                    handshake = True
                    self._on_handshake(ev)
                elif isinstance(ev, str):  # a status change
                    with self._status_cond:
                        self._status_cond.notify_all()
                    self._status_changed(ev)
            if handshake:
                self._after_handshake()
            return handshake

    def _on_handshake(self, hs: ss.Handshake) -> None:
        self.uid, self.csrf_token, self.handshake, self.first = (
            hs.uid, hs.csrf_token, hs.info, hs.first)
        self.conn_id = hs.info.get("conn-id")
        self.server_id = hs.info.get("server-id")

    def _after_handshake(self) -> None:
        """Renew every subscription (with ``since``), resend unacknowledged
        publishes, then the sends queued while disconnected. Caller holds ``_send_lock``."""
        for channel_id, sub in list(self._subs.items()):
            self._send_subscribe(channel_id, sub)
        for cb_id, frame in self._session.resend_unacked():
            if self._ws is None or not self._write(frame, cb_id):
                return
            self._counts["publishes_resent"] += 1
        while self._queued and self._ws is not None:
            frame, cb_id = self._queued[0]
            if cb_id is not None and not self._session.pending(cb_id):
                self._queued.popleft()  # its caller gave up (timeout)
                continue
            if not self._write(frame, cb_id):
                break
            self._queued.popleft()

    def _on_subscribed(self, ev: ss.Subscribed, tasks: List[tuple]) -> None:
        sub = self._subs.get(ev.channel_id)
        if sub is None:
            return
        if ev.error is not None:
            sub.error = ev.error
            if self._subs.get(ev.channel_id) is sub:
                del self._subs[ev.channel_id]
            log.warning("subscribe to %s refused: %s", safe(repr(ev.channel_id)), safe(ev.error))
        else:
            sub.reply = ev.reply
        if ev.recovery is not None and self._recovery_hooks:
            tasks.append(("recovery", self._recovery_hooks, ev.recovery))
        sub.acked.set()

    def _send_control(self, event: str) -> None:
        with self._send_lock:
            if self._ws is not None:
                self._write(p.encode(event).encode("utf-8"), None)

    def _add_tasks(self, tasks: List[tuple]) -> None:
        """Queue one read's tasks (caller holds ``_roles``). Tasks beyond
        ``max_handler_queue`` waiting ones are dropped, counted and logged."""
        room = self.max_handler_queue - (self._tasks_in - self._tasks_out)
        if len(tasks) > room:
            dropped = tasks[max(room, 0):]
            tasks = tasks[:max(room, 0)]
            self._counts["handler_queue_overflows"] += len(dropped)
            log.error("handler queue full (max_handler_queue=%d): dropped %d (%s)",
                      self.max_handler_queue, len(dropped),
                      ", ".join(sorted({t[0] for t in dropped})))
            if not tasks:
                return
        self._tasks.append(tasks)
        self._tasks_in += len(tasks)

    def _hand_off_reading(self) -> None:
        """Called before blocking on the reader (a reply, a subscribe answer): when
        the caller is a handler, wake the other thread to read meanwhile."""
        if self._runner == threading.get_ident():
            with self._roles:
                self._handoff = True
                self._roles.notify()

    # -- the two threads ------------------------------------------------------------
    def _serve(self) -> None:
        """Body of both threads: take the reading or the running role, or wait."""
        roles = self._roles
        stop = self._stop
        me = threading.get_ident()
        while True:
            batch: Optional[List[tuple]] = None
            role = ""
            with roles:
                while True:
                    now = time.monotonic()
                    stopping = stop.is_set()
                    running = self._running_since
                    if self._tasks and running is None and not stopping:
                        batch = self._tasks.popleft()
                        self._running_since, self._runner = now, me
                        role = _RUN
                        break
                    if not self._reading and not self._connection_done and (
                            running is None or stopping or self._handoff
                            or now - running >= HANDLER_HANDOFF_S):
                        self._reading, self._handoff = True, False
                        role = _READ
                        break
                    if stopping and (self._connection_done or self._reading):
                        return
                    wait = _IDLE_TICK_S
                    if running is not None and not self._reading:
                        wait = min(wait, max(0.001, running + HANDLER_HANDOFF_S - now))
                    if not roles.wait(wait):
                        break  # a quiet tick: check the server's liveness
            if role == _READ:
                batch = self._read_once(me)
            if batch is not None:
                self._run_batches(batch)
            self._check_liveness()

    def _read_once(self, me: int) -> Optional[List[tuple]]:
        """Advance the reading role by one read. Returns the tasks this thread runs
        now, when no handler is running; otherwise they wait in order."""
        tasks: Optional[List[tuple]] = None
        done = False
        try:
            tasks = next(self._connection)
        except StopIteration:
            done = True
        except Exception:  # pragma: no cover - a bug; end the client rather than spin
            log.exception("client reading failed")
            done = True
            self._stop.set()
        with self._roles:
            self._reading = False
            if done:
                self._connection_done = True
                self._roles.notify_all()
                return None
            if tasks:
                self._add_tasks(tasks)
            if self._tasks and self._running_since is None and not self._stop.is_set():
                self._running_since, self._runner = time.monotonic(), me
                return self._tasks.popleft()
            return None

    def _run_batches(self, batch: List[tuple]) -> None:
        """Run ``batch``, then every batch queued meanwhile, in order (the running role)."""
        stop = self._stop
        while True:
            for task in batch:
                if stop.is_set():
                    break
                self._tasks_out += 1
                self._run_task(task)
            with self._roles:
                if self._tasks and not stop.is_set():
                    batch = self._tasks.popleft()
                    continue
                self._running_since = self._runner = None
                if stop.is_set():
                    self._roles.notify_all()  # the other thread may wait for this to end
                return

    def _check_liveness(self) -> None:
        now = time.monotonic()
        with self._send_lock:
            late = self._session.expire(now)
            if self._status != CONNECTED or not self._session.dead(now):
                ws = None
            else:
                ws = self._ws
                silent = now - self._session.last_recv
                self._session.last_recv = now
        _settle(late)
        if ws is not None:
            self._counts["dead_server_detections"] += 1
            log.warning("server silent for %.1fs: dropping the connection", silent)
            ws.abort()

    def _run_task(self, task: tuple) -> None:
        kind = task[0]
        if kind == "channel" or kind == "recovery":
            _, handlers, msg = task
            for fn in list(handlers):
                try:
                    fn(msg)
                except Exception:
                    self._counts["handler_errors"] += 1
                    log.exception("%s handler for %r raised", kind, msg.channel_id)
            return
        _, event, data, cb_id = task
        handlers = list(self._handlers.get(event, ()))
        if not handlers:
            if cb_id is not None:
                self._reply_error(p.ERR_NO_HANDLER, f"no handler for {event}", cb_id)
            else:
                self._counts["unhandled_events"] += 1
            return
        result: Any = None
        for i, fn in enumerate(handlers):
            try:
                value = fn(data)
            except Exception as exc:
                self._counts["handler_errors"] += 1
                log.exception("handler for %s raised", event)
                if cb_id is not None and i == 0:
                    self._reply_error(p.ERR_HANDLER_ERROR,
                                      f"handler for {event} raised {type(exc).__name__}", cb_id)
                    cb_id = None
                continue
            if i == 0:
                result = value
        if cb_id is not None:
            frame, ok = p.encode_reply(event, result, cb_id)
            if not ok:
                self._counts["handler_errors"] += 1
                log.error("reply of handler for %s is not JSON-encodable", event)
            self._try_send(frame.encode("utf-8"))

    def _reply_error(self, code: str, message: str, cb_id: str) -> None:
        self._try_send(ss.error_frame(code, message, cb_id))

    def _try_send(self, frame: bytes) -> None:
        try:
            self._send_frame(frame, None)
        except (SendQueueFull, ClientClosed) as exc:
            log.warning("reply dropped: %s", safe(exc))


def _resolve(waiter: Any, result: Any, error: Optional[BaseException]) -> None:
    if waiter is None or waiter.done():
        return
    if error is not None:
        waiter.set_exception(error)
    else:
        waiter.set_result(result)


def _settle(failed: List[Tuple[Any, BaseException]]) -> None:
    for waiter, exc in failed:
        _resolve(waiter, None, exc)


__all__ = ["Client", "ChannelMessage", "Recovery", "backoff_delay", "CONNECTING", "CONNECTED",
           "RECONNECTING", "CLOSED"]
