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
:data:`sente_lite.client.io.HANDLER_HANDOFF_S`, or blocks on a reply (``request``, ``subscribe``,
``unsubscribe`` from a handler), the waiting thread takes over reading, so a slow
or raising handler delays or logs, never disconnects, and never deadlocks.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import ssl
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple, Union

import websocket  # websocket-client

from ..wire import packers
from ..wire import protocol as p
from .. import session as ss
from . import channels as client_channels
from .channels import ChannelHandler, ChannelsMixin, InboundMixin, RecoveryHandler, _Sub
from .send import MAX_SEND_BATCH_FRAMES, SendingMixin  # noqa: F401 (documented here)
from .io import Connector, Roles, backoff_delay, settle
from .history import HistoryMixin
from .refresh import RefreshMixin
from .presence import PresenceMixin
from .sub_tokens import SubTokensMixin
from .settings import (MAX_READ_COALESCE_MS, MAX_SEND_BUF_MS,  # noqa: F401 (documented here)
                       ClientSettings, Token)
from ..errors import ClientClosed, ConnectRefused, RequestTimeout
from ..session import (CLOSED, CONNECTED, CONNECTING, RECONNECTING, ChannelMessage, ClientSession,
                       Recovery, ServerChannelsMixin)

log = logging.getLogger("sente_lite.client")

DEFAULT_BACKOFF_BASE_S = 0.25
DEFAULT_BACKOFF_MAX_S = 10.0
DEFAULT_MAX_PENDING_SENDS = 1000
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_REQUEST_TIMEOUT_S = client_channels.DEFAULT_REQUEST_TIMEOUT_S
DEFAULT_MAX_HANDLER_QUEUE = 100_000
#: Reads closer together than this are merged: see ``Client(read_coalesce_ms=)``.
DEFAULT_READ_COALESCE_MS = 2.0
#: A server silent this long past 2 x heartbeat is dead (PROTOCOL 5).
DEAD_SERVER_SLACK_S = ss.DEAD_SERVER_SLACK_S
#: Publishes awaiting their ack (kept, and resent after a reconnect) before
#: ``publish`` raises :class:`SendQueueFull`.
DEFAULT_MAX_UNACKED_PUBLISHES = ss.DEFAULT_MAX_UNACKED_PUBLISHES
#: How long ``publish`` waits for room when ``max_unacked_publishes`` await their ack
#: (as Kafka's ``max.block.ms``); 0 raises :class:`SendQueueFull` at once.
DEFAULT_PUBLISH_BLOCK_S = client_channels.DEFAULT_PUBLISH_BLOCK_S

EventHandler = Callable[[Any], Any]




class Client(ChannelsMixin, PresenceMixin, InboundMixin, SendingMixin, RefreshMixin, HistoryMixin,
             ServerChannelsMixin, SubTokensMixin):
    """A sente_lite client. Use as ``with Client(url) as c:`` or call start()/close().

    ``client_id`` is kept across reconnects (a UUID4 when not given). ``origin``: the
    ``Origin`` header of every upgrade (e.g. ``"https://app.example.com"``, for a
    server whose ``allowed_origins`` expects one); by default none is sent, as from
    any client that is not a browser. ``token`` is
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
    (at most ``max_unacked_publishes``; a publish past it waits up to
    ``publish_block_s`` for room, 0 raises at once) until the server acknowledges it, and
    sent again after a reconnect: it lands in its channel exactly once.

    ``packer``: ``"json"`` (default, text frames) or ``"msgpack"`` (binary frames;
    needs ``pip install 'sente-lite[msgpack]'``, raises :class:`~sente_lite.wire.packers.MissingExtra`
    without it), negotiated with the server at every upgrade. ``batch``: ask the server
    to send the frames that wait for a busy connection as one ``chsk/batch`` frame.
    ``send_buf_ms`` (default 0: every frame goes at once): frames sent within this
    long of the first go to a server that reads batches as one ``chsk/batch`` frame
    (at most :data:`MAX_SEND_BATCH_FRAMES`), for this much added latency.

    ``url`` may be a list of URLs (servers sharing a broker): each connect attempt
    goes to the next one after a failure or a lost connection, round-robin, with
    the same backoff; ``url`` is the one in use.

    One client may be shared by many threads: every method is thread-safe.
    """

    def __init__(
        self, url: Union[str, Sequence[str]], *, client_id: Optional[str] = None,
        auto_reconnect: bool = True, token: Token = None, csrf_token: Token = None,
        backoff_base: float = DEFAULT_BACKOFF_BASE_S, backoff_max: float = DEFAULT_BACKOFF_MAX_S,
        max_pending_sends: int = DEFAULT_MAX_PENDING_SENDS,
        max_handler_queue: int = DEFAULT_MAX_HANDLER_QUEUE,
        read_coalesce_ms: float = DEFAULT_READ_COALESCE_MS,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT_S,
        headers: Optional[Dict[str, str]] = None, origin: Optional[str] = None,
        ssl_context: Optional[ssl.SSLContext] = None,
        max_unacked_publishes: int = DEFAULT_MAX_UNACKED_PUBLISHES,
        publish_block_s: float = DEFAULT_PUBLISH_BLOCK_S, packer: str = packers.JSON,
        batch: bool = False, send_buf_ms: float = 0.0, start: bool = True, console: Any = None,
    ) -> None:
        settings = self.settings = ClientSettings.from_keywords(locals())
        # each setting is also an attribute (c.backoff_max): the client's parts read them there
        vars(self).update(settings.attributes())
        # what the last handshake told (None before the first)
        self.uid: Optional[str] = None
        self.conn_id: Optional[str] = None
        self.server_id: Optional[str] = None
        self.first: Optional[bool] = None
        self.handshake: Optional[dict] = None
        self.csrf_token: Optional[str] = None if callable(csrf_token) else csrf_token
        self._csrf_source = csrf_token if callable(csrf_token) else None
        self.refusal: Optional[ConnectRefused] = None
        self._init_refresh()
        # Every protocol rule (status, requests, subscriptions and their offsets,
        # the publish outbox) is in the session; the rest of this class moves bytes
        # and runs handlers. The session is used under ``_send_lock``.
        self._session = ClientSession(self.client_id, settings.max_unacked_publishes,
                                      packer=packers.get(settings.packer))
        self._send_buf_s = self.send_buf_ms / 1000.0
        self._out_buf: List[Tuple[bytes, Optional[str]]] = []  # gathered frames, under _send_lock
        self._out_due = 0.0
        self._opcode = (websocket.ABNF.OPCODE_BINARY if self._session.packer.binary
                        else websocket.ABNF.OPCODE_TEXT)
        self._status_cond = threading.Condition()
        self._status_hooks: List[Callable[[str], None]] = []
        self._recovery_hooks: List[RecoveryHandler] = []
        self._handlers: Dict[str, List[EventHandler]] = {}
        self._subs: Dict[str, _Sub] = {}
        self._queued: Deque[tuple] = collections.deque()  # (frame bytes, cb_id or None)
        self._send_lock = threading.RLock()
        self._outbox_room = threading.Condition(self._send_lock)  # notified when a publish is answered
        self._ws: Optional[websocket.WebSocket] = None
        self._stop = threading.Event()
        self._counts: Dict[str, int] = collections.defaultdict(int)
        self._init_sub_tokens()
        # Connecting and reading (the connector), and which of the two threads reads
        # and which runs handlers (the roles): client_io.py.
        self._connector = Connector(self)
        self._roles = Roles(self, self._connector.connections(), self._connector.read_now)
        self._threads = tuple(threading.Thread(target=self._roles.serve, name=f"sente-lite-client-{i}",
                                               daemon=True) for i in (1, 2))
        #: a remote console (:class:`sente_lite.Console`) to serve once started: ``self.console``
        self.console_settings, self.console = attachable(console), None
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
            if self.console_settings is not None and self.console is None:
                self.console = self.console_settings.attach({"client": self})
            for t in self._threads:
                t.start()
        return self

    def close(self, timeout: float = 1.0) -> None:
        """Close the connection and stop both threads; fail outstanding requests."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self.console is not None:
            self.console.stop()
        ws = self._ws
        if ws is not None:
            if self._send_lock.acquire(timeout=0.2):  # a send blocked on a full socket holds it
                try:
                    self._flush_out()
                    ws.send_close(p.CLOSE_NORMAL)
                except Exception:
                    pass
                finally:
                    self._send_lock.release()
            ws.abort()
        self._roles.wake_all()
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

    # -- sending ----------------------------------------------------------------
    def send(self, event: str, data: Any = None, *, traceparent: Optional[str] = None) -> None:
        """Send an event. While disconnected it is queued (see ``max_pending_sends``).
        ``traceparent`` (W3C) is added to the data map (:mod:`sente_lite.wire.tracing`)."""
        if not p.is_valid_event_id(event):
            raise ValueError(f"invalid event-id {event!r}")
        data = _traced(data, traceparent)
        frame = self._session.packer.encode(event, data)
        ss.check_frame_size(frame, ss.message_limit(self._session.handshake_info))
        self._send_frame(frame, None)

    def request(self, event: str, data: Any = None, timeout: Optional[float] = None, *,
                traceparent: Optional[str] = None) -> Any:
        """Send a request and wait for its reply.

        Raises :class:`RemoteError` (with the protocol code), :class:`RequestTimeout`,
        :class:`Disconnected` or :class:`SendQueueFull`. ``traceparent`` (W3C) is
        added to the data map; the server keeps it on the reply map.
        """
        if not p.is_valid_event_id(event):
            raise ValueError(f"invalid event-id {event!r}")
        timeout = self.request_timeout if timeout is None else timeout
        cb_id, fut = self._start_request(event, _traced(data, traceparent))
        self._roles.hand_off_reading()
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

    # -- channels ---------------------------------------------------------------

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
                       handler_queue=self._roles.backlog)
        return out

    # -- frames read (called by the connector) -------------------------------------

    def _fail_requests(self, exc: BaseException) -> None:
        """The client ends: every waiting caller gets ``exc``."""
        with self._send_lock:
            failed = self._session.fail_all(exc)
            self._queued.clear()
        settle(failed)
















def attachable(console: Any) -> Any:
    """``console`` when it is None or can be attached (a :class:`sente_lite.Console`)."""
    if console is not None and not callable(getattr(console, "attach", None)):
        raise TypeError(f"console must be a sente_lite.Console(...) or None, got {type(console).__name__}")
    return console


#: ``data`` with ``traceparent`` added (the rule every client follows).
_traced = ss.with_traceparent


__all__ = ["Client", "ChannelMessage", "ChannelHandler", "Recovery", "RecoveryHandler",
           "backoff_delay", "CONNECTING", "CONNECTED", "RECONNECTING", "CLOSED"]
