"""sente_lite's asyncio client on ``websockets.asyncio.client``: :class:`AsyncClient`.

The same protocol as the threaded :class:`sente_lite.Client` from the same
:class:`~sente_lite.session.ClientSession` (handshake, requests, channel offsets and
``since`` recovery, the publish outbox with ids, status machine), with the same names,
as coroutines on one event loop. Three tasks, all ended by :meth:`AsyncClient.close`:
the connection (connect, read, reconnect with full-jitter backoff), the handlers (one at
a time, in arrival order; plain or ``async``), and a 0.1 s tick (request deadlines, a
silent server, due resends).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
import time
import uuid
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple, Union

from .. import limits as lim
from .. import session as ss
from ..errors import ClientClosed, ConnectRefused, RequestTimeout
from ..session import CLOSED, CONNECTED, ChannelMessage, ClientSession, Recovery, ServerChannelsMixin
from ..wire import packers
from ..wire import protocol as p
from .channels import ChannelHandler, ChannelsMixin, RecoveryHandler, _Sub
from ..wire.token_expiry import RefreshSchedule
from .io import IoMixin
from .history import HistoryMixin
from .presence import PresenceMixin
from .refresh import RefreshMixin
from .sub_tokens import SubTokensMixin

log = logging.getLogger("sente_lite.client")

Token = Union[str, Callable[[], Optional[str]], None]
EventHandler = Callable[[Any], Any]


class AsyncClient(ChannelsMixin, PresenceMixin, RefreshMixin, IoMixin, HistoryMixin,
                  ServerChannelsMixin, SubTokensMixin):
    """An asyncio sente_lite client: ``async with AsyncClient(url) as c:``.

    Keywords as :class:`sente_lite.Client` takes them where they apply: ``client_id``,
    ``auto_reconnect``, ``token`` (sent as ``Authorization: Bearer``; a callable, plain or
    ``async``, is called at every connect and, with a server with feature ``refresh``, to
    refresh a JWT over the open socket before it expires; one that raises or gives None
    stops the client for good), ``csrf_token``, ``backoff_base``/``backoff_max``,
    ``max_pending_sends``, ``connect_timeout``, ``request_timeout``, ``headers``,
    ``origin``, ``ssl_context``, ``max_unacked_publishes``, ``publish_block_s``,
    ``packer``, ``batch``; ``url`` may be a list (failover, round-robin). Handlers
    (``on``, ``subscribe``, ``on_recovery``, ``on_status``) may be plain or ``async``.
    """

    def __init__(self, url: Union[str, Sequence[str]], *, client_id: Optional[str] = None,
                 auto_reconnect: bool = True, token: Token = None, csrf_token: Token = None,
                 backoff_base: float = 0.25, backoff_max: float = 10.0,
                 max_pending_sends: int = 1000, connect_timeout: float = 5.0,
                 request_timeout: float = 5.0, headers: Optional[Dict[str, str]] = None,
                 origin: Optional[str] = None, ssl_context: Optional[ssl.SSLContext] = None,
                 max_unacked_publishes: int = ss.DEFAULT_MAX_UNACKED_PUBLISHES,
                 publish_block_s: float = 5.0, packer: str = packers.JSON,
                 batch: bool = False) -> None:
        lim.check_settings(locals(), lim.CLIENT_BOUNDS)
        self.urls: Tuple[str, ...] = (url,) if isinstance(url, str) else tuple(url)
        if not self.urls:
            raise ValueError("url: give at least one URL")
        self.url = self.urls[0]
        self.client_id = client_id or str(uuid.uuid4())
        self.auto_reconnect, self.token, self.batch = auto_reconnect, token, batch
        self.backoff_base, self.backoff_max = backoff_base, backoff_max
        self.max_pending_sends, self.connect_timeout = max_pending_sends, connect_timeout
        self.request_timeout, self.publish_block_s = request_timeout, publish_block_s
        self.headers, self.origin, self.ssl_context = dict(headers or {}), origin, ssl_context
        self.csrf_token: Optional[str] = None if callable(csrf_token) else csrf_token
        self._csrf_source = csrf_token if callable(csrf_token) else None
        # what the last handshake told (None before the first)
        self.uid: Optional[str] = None
        self.conn_id: Optional[str] = None
        self.server_id: Optional[str] = None
        self.first: Optional[bool] = None
        self.handshake: Optional[dict] = None
        self.refusal: Optional[ConnectRefused] = None
        #: when to refresh the connection's token (feature ``refresh``)
        self._refresh = RefreshSchedule()
        self._token_used: Optional[str] = None
        self._token_at = 0.0
        self._session = ClientSession(self.client_id, max_unacked_publishes,
                                      packer=packers.get(packer))
        self._ws: Any = None
        self._closing = False
        self._counts: Dict[str, int] = collections.defaultdict(int)
        self._init_sub_tokens()  # subscribe(token=): sub_tokens.py
        self._queued: Deque[Tuple[bytes, Optional[str]]] = collections.deque()
        self._handlers: Dict[str, List[EventHandler]] = {}
        self._subs: Dict[str, _Sub] = {}
        self._recovery_hooks: List[RecoveryHandler] = []
        self._status_hooks: List[Callable[[str], Any]] = []
        self._running: List["asyncio.Task[Any]"] = []
        self._send_lock = asyncio.Lock()
        self._outbox_room = asyncio.Event()
        self._status_event = asyncio.Event()
        self._tasks: "asyncio.Queue[Optional[tuple]]" = asyncio.Queue()

    # -- lifecycle ------------------------------------------------------------------------
    async def __aenter__(self) -> "AsyncClient":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> "AsyncClient":
        """Start connecting (on the running event loop)."""
        if self._running or self._closing:
            return self
        loop = asyncio.get_running_loop()
        self._running = [loop.create_task(self._run(), name="sente-lite-aio-connection"),
                         loop.create_task(self._run_handlers(), name="sente-lite-aio-handlers"),
                         loop.create_task(self._tick(), name="sente-lite-aio-tick")]
        return self

    async def close(self, timeout: float = 1.0) -> None:
        """Close the connection (1000), stop the tasks, fail what waits (ClientClosed)."""
        if self._closing:
            return
        self._closing = True
        ws = self._ws
        if ws is not None:
            try:
                await asyncio.wait_for(ws.close(p.CLOSE_NORMAL), timeout)
            except Exception:  # noqa: BLE001 (closing anyway)
                pass
        for task in self._running:
            task.cancel()
        if self._running:
            await asyncio.wait(self._running, timeout=timeout)
        self._fail_all(ClientClosed("client closed"))
        self._apply(ss.ON_CLOSE)

    @property
    def status(self) -> str:
        """``connecting``, ``connected``, ``reconnecting`` or ``closed``."""
        return self._session.status

    @property
    def connected(self) -> bool:
        return self._session.status == CONNECTED

    def on_status(self, fn: Callable[[str], Any]) -> Callable[[str], Any]:
        """Call ``fn(new_status)`` on every status change (a coroutine is scheduled)."""
        self._status_hooks.append(fn)
        return fn

    async def wait_connected(self, timeout: float = 5.0) -> bool:
        """Await a handshake. False on timeout; raises ConnectRefused if refused."""
        return await self.wait_status(CONNECTED, timeout)

    async def wait_status(self, status: str, timeout: float) -> bool:
        """Await the status ``status``. False on timeout (or once closed, unless
        awaiting ``closed``); raises ConnectRefused when the server refused for good."""
        deadline = time.monotonic() + timeout
        while self.status != status:
            if self.refusal is not None and status != CLOSED:
                raise self.refusal
            left = deadline - time.monotonic()
            if left <= 0 or (self.status == CLOSED and status != CLOSED):
                return False
            event = self._status_event
            try:
                await asyncio.wait_for(event.wait(), left)
            except asyncio.TimeoutError:
                pass
        return True

    def _apply(self, on: str) -> None:
        status = self._session.transition(on)
        if status is not None:
            self._status_changed(status)

    def _status_changed(self, status: str) -> None:
        log.debug("client %s: %s", self.client_id, status)
        event, self._status_event = self._status_event, asyncio.Event()
        event.set()
        for hook in list(self._status_hooks):
            try:
                value = hook(status)
                if asyncio.iscoroutine(value):
                    asyncio.get_running_loop().create_task(value)
            except Exception:
                log.exception("status hook raised")

    def _on_handshake(self, hs: ss.Handshake) -> None:
        self.uid, self.csrf_token, self.handshake, self.first = (
            hs.uid, hs.csrf_token, hs.info, hs.first)
        self.conn_id = hs.info.get("conn-id")
        self.server_id = hs.info.get("server-id")
        features = hs.info.get(p.K_FEATURES)
        self._refresh.connected(self._token_used if callable(self.token) else None, hs.info,
                                features if isinstance(features, list) else (), self._token_at)

    # -- handlers ---------------------------------------------------------------------------
    def on(self, event: str, fn: EventHandler) -> EventHandler:
        """Call ``fn(data)`` (plain or ``async``) for each ``event`` from the server, one
        handler at a time, in arrival order; for a server request, the first handler's
        return value is the reply."""
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

    # -- sending ----------------------------------------------------------------------------
    async def send(self, event: str, data: Any = None, *, traceparent: Optional[str] = None) -> None:
        """Send an event (queued while disconnected, at most ``max_pending_sends``)."""
        if not p.is_valid_event_id(event):
            raise ValueError(f"invalid event-id {event!r}")
        frame = self._session.packer.encode(event, ss.with_traceparent(data, traceparent))
        ss.check_frame_size(frame, ss.message_limit(self._session.handshake_info))
        await self._send_frame(frame, None)

    async def request(self, event: str, data: Any = None, timeout: Optional[float] = None, *,
                      traceparent: Optional[str] = None) -> Any:
        """Send a request and await its reply. Raises ``RemoteError`` (its ``code``),
        ``RequestTimeout``, ``Disconnected``, ``SendQueueFull`` or ``ClientClosed``."""
        if not p.is_valid_event_id(event):
            raise ValueError(f"invalid event-id {event!r}")
        if self._closing:
            raise ClientClosed("client closed")
        timeout = self.request_timeout if timeout is None else timeout
        fut: "asyncio.Future[Any]" = asyncio.get_running_loop().create_future()
        cb_id, frame = self._session.request(event, ss.with_traceparent(data, traceparent), fut,
                                             time.monotonic(), timeout)
        try:
            await self._send_frame(frame, cb_id)
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise RequestTimeout(f"no reply to {event} within {timeout}s") from None
        finally:
            self._session.forget(cb_id)

    # -- inspection ---------------------------------------------------------------------------
    def stats(self) -> dict:
        """Counters: frames in/out, reconnects, gaps, duplicates, handler errors, queues."""
        out = dict(self._counts)
        for key, n in self._session.counts.items():
            out[key] = out.get(key, 0) + n
        out.update(status=self.status, pending_sends=len(self._queued),
                   outstanding_requests=len(self._session._requests),
                   unacked_publishes=self._session.unacked(), subscriptions=len(self._subs))
        return out


__all__ = ["AsyncClient", "ChannelMessage", "ChannelHandler", "Recovery", "RecoveryHandler"]
