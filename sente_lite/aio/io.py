"""The asyncio client's I/O: connecting, reading, reconnecting, liveness, and the task
that runs the application's handlers, for :class:`sente_lite.aio.AsyncClient`.

Every protocol rule is the client's :class:`~sente_lite.session.ClientSession` (the same
one the threaded client uses); this moves frames between it and a
``websockets.asyncio.client`` connection, all on one event loop.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .. import session as ss
from ..errors import ClientClosed, ConnectRefused, SendQueueFull
from ..logsafe import redact_target, safe
from ..session import CONNECTED, ChannelMessage
from ..wire.token_expiry import RefreshSchedule, TokenSourceRefused

log = logging.getLogger("sente_lite.client")

#: How often the client checks its requests' deadlines, due resends and the server's life.
TICK_S = 0.1
#: websockets >= 15 goes through an HTTP proxy named in the environment unless told not to.
_PROXY_KW: Dict[str, Any] = ({"proxy": None}
                             if "proxy" in inspect.signature(connect.__init__).parameters else {})


def settle(failed: List[Tuple[Any, BaseException]]) -> None:
    for waiter, exc in failed:
        ss.resolve(waiter, None, exc)


async def run_channel_handlers(kind: str, handlers: List[Any], msg: Any, counts: Dict[str, int]) -> None:
    """Run each of a channel's ``handlers`` (plain or ``async``) on ``msg`` (a delivery or a
    recovery); one that raises is logged and counted (``handler_errors``)."""
    for fn in list(handlers):
        try:
            value = fn(msg)
            if value is not None and inspect.isawaitable(value):
                await value
        except Exception:
            counts["handler_errors"] += 1
            log.exception("%s handler for %r raised", kind, msg.channel_id)


class IoMixin:
    """Connecting and reading for an :class:`~sente_lite.aio.AsyncClient`."""

    urls: Tuple[str, ...]
    url: str
    client_id: str
    auto_reconnect: bool
    token: Any
    csrf_token: Optional[str]
    backoff_base: float
    backoff_max: float
    connect_timeout: float
    headers: Dict[str, str]
    origin: Optional[str]
    ssl_context: Any
    batch: bool
    max_pending_sends: int
    refusal: Optional[ConnectRefused]
    _csrf_source: Optional[Callable[[], str]]
    _session: ss.ClientSession
    _ws: Optional[ClientConnection]
    _closing: bool
    _counts: Dict[str, int]
    _queued: Deque[Tuple[bytes, Optional[str]]]
    _send_lock: asyncio.Lock
    _tasks: "asyncio.Queue[Optional[tuple]]"
    _subs: Dict[str, Any]
    _handlers: Dict[str, List[Any]]
    _recovery_hooks: List[Any]
    _refresh: RefreshSchedule
    _token_used: Optional[str]
    _token_at: float

    def _apply(self, on: str) -> None: ...
    def _on_handshake(self, hs: ss.Handshake) -> None: ...
    def _on_subscribed(self, ev: Any) -> None: ...
    def _on_channel_msg(self, msg: ChannelMessage) -> None: ...
    def _on_presence_change(self, ev: ss.PresenceChange) -> None: ...
    def _publish_answered(self) -> None: ...
    def _status_changed(self, status: str) -> None: ...
    async def _send_subscribe(self, channel_id: str) -> None: ...
    async def _token_now(self) -> Optional[str]: ...
    async def _refresh_if_due(self, ws: ClientConnection) -> None: ...

    # -- connecting --------------------------------------------------------------------------
    async def _run(self) -> None:
        """Connect, read, reconnect with full-jitter backoff until closed or refused."""
        attempt = 0
        try:
            while not self._closing:
                ws = await self._open()
                if ws is not None:
                    attempt = await self._read(ws, attempt)
                if self._closing or self.refusal is not None or not self.auto_reconnect:
                    break
                if len(self.urls) > 1:  # failover: the next server, round-robin
                    self.url = self.urls[(self.urls.index(self.url) + 1) % len(self.urls)]
                self._apply(ss.ON_LOST)
                delay = ss.backoff_delay(attempt, self.backoff_base, self.backoff_max)
                attempt += 1
                self._counts["reconnect_attempts"] += 1
                await asyncio.sleep(delay)
        finally:
            self._fail_all(self.refusal or ClientClosed("client closed"))
            self._apply(ss.ON_GIVE_UP)

    async def _open(self) -> Optional[ClientConnection]:
        csrf = self._csrf_source() if self._csrf_source is not None else self.csrf_token
        url = ss.upgrade_url(self.url, self.client_id, self._session.packer.name, self.batch, csrf,
                             self.token is not None)
        try:
            token = await self._token_now()
        except TokenSourceRefused as exc:
            self.refusal = ConnectRefused(str(exc))
            log.warning("%s: the client stops", exc)
            return None
        self._token_used, self._token_at = token, time.time()
        headers = ss.upgrade_headers(self.headers, token)
        if any(c in v for v in headers.values() for c in "\r\n"):
            self.refusal = ConnectRefused("a header value (or the token) holds a line break: not sent")
            log.warning("%s", self.refusal)
            return None
        try:
            return await connect(url, additional_headers=headers, origin=self.origin,  # type: ignore[arg-type]
                                 compression=None, open_timeout=self.connect_timeout,
                                 ping_interval=None, max_size=None, ssl=self.ssl_context,
                                 **_PROXY_KW)
        except InvalidStatus as exc:
            status = exc.response.status_code
            body = (exc.response.body or b"").decode("utf-8", "replace").strip()
            if status in (400, 401, 403, 404):
                self.refusal = ConnectRefused(f"server refused the connection: HTTP {status} {body}",
                                              status=status)
                log.warning("%s", safe(self.refusal))
            else:
                log.info("connect refused with HTTP %s (%s), will retry", status, safe(body))
        except (OSError, asyncio.TimeoutError, Exception) as exc:  # noqa: B014 (any failure: retry)
            log.debug("connect to %s failed: %s", redact_target(self.url), safe(exc))
        self._counts["connect_failures"] += 1
        return None

    # -- reading -----------------------------------------------------------------------------
    async def _read(self, ws: ClientConnection, attempt: int) -> int:
        """Read ``ws`` until it ends; the next backoff attempt (0 once a handshake came)."""
        self._ws = ws
        self._session.connection_opened(time.monotonic())
        handshaken = False
        close_code: Optional[int] = None
        try:
            while True:
                message = await ws.recv()
                self._counts["frames_in"] += 1
                if await self._take(message):
                    handshaken = True
        except ConnectionClosed as exc:
            close_code = exc.rcvd.code if exc.rcvd is not None else None
            log.debug("connection lost: %s", safe(exc))
        except Exception as exc:  # a broken socket, a bug: drop it and reconnect
            log.debug("connection failed: %s", safe(exc))
        finally:
            await self._lost(ws)
        if close_code is not None:
            self._counts[f"closed_by_server_{close_code}"] += 1
        if close_code == 1008:
            self.refusal = ConnectRefused("server closed the connection with 1008 (policy)",
                                          close_code=close_code)
            log.warning("%s", self.refusal)
        return 0 if handshaken else attempt

    async def _take(self, message: Any) -> bool:
        """Act on one frame from the server; True when it was a handshake."""
        received = self._session.receive(message, time.monotonic(), isinstance(message, bytes))
        for frame in received.frames:  # pongs, errors to unknown reserved requests: at once
            await self._write(frame, None)
        handshake = False
        for ev in received.events:
            kind = type(ev)
            if kind is ChannelMessage:
                self._on_channel_msg(ev)
            elif kind is ss.ReplyArrived or kind is ss.PublishAnswered:
                ss.resolve(ev.waiter, ev.reply if kind is ss.PublishAnswered else ev.result, ev.error)
                if kind is ss.PublishAnswered:
                    self._publish_answered()
            elif kind is ss.EventRequest:
                self._tasks.put_nowait(("event", ev.event, ev.data, ev.cb_id))
            elif kind is ss.PresenceChange:
                self._on_presence_change(ev)
            elif kind is ss.Subscribed or kind is ss.ServerChannel or kind is ss.Unsubscribed:
                self._on_subscribed(ev)
            elif kind is ss.Handshake:
                handshake = True
                self._on_handshake(ev)
            elif isinstance(ev, str):  # a status change (the handshake's)
                self._status_changed(ev)
        if handshake:
            await self._after_handshake()
        return handshake

    async def _after_handshake(self) -> None:
        """Renew every subscription (with ``since``), resend unacknowledged publishes,
        then what was queued while disconnected, in that order."""
        async with self._send_lock:
            for channel_id in list(self._subs):
                await self._send_subscribe(channel_id)
            for cb_id, frame in self._session.resend_unacked():
                if not await self._write(frame, cb_id):
                    return
                self._counts["publishes_resent"] += 1
            while self._queued and self._ws is not None:
                frame, cb_id = self._queued[0]
                if cb_id is not None and not self._session.pending(cb_id):
                    self._queued.popleft()  # its caller gave up (timeout)
                    continue
                if not await self._write(frame, cb_id):
                    break
                self._queued.popleft()

    async def _lost(self, ws: ClientConnection) -> None:
        """``ws`` ended: its written requests fail, the status follows."""
        self._ws = None
        was_connected = self._session.status == CONNECTED
        failed = self._session.connection_lost()
        if was_connected and not self._closing:
            self._apply(ss.ON_LOST if self.auto_reconnect else ss.ON_GIVE_UP)
        settle(failed)
        for sub in self._subs.values():
            sub.acked.clear()
        ws.transport.abort()

    # -- writing -----------------------------------------------------------------------------
    async def _write(self, frame: bytes, cb_id: Optional[str]) -> bool:
        """Write ``frame`` on the current socket; False when there is none or it failed (a
        request written is then failed by the loss, a publish resent after the reconnect)."""
        ws = self._ws
        if ws is None:
            return False
        if cb_id is not None:
            self._session.mark_sent(cb_id)
        try:
            await ws.send(frame if self._session.packer.binary else frame.decode("utf-8"))
        except (ConnectionClosed, OSError) as exc:
            log.debug("send failed: %s", safe(exc))
            return False
        self._counts["frames_out"] += 1
        return True

    async def _send_frame(self, frame: bytes, cb_id: Optional[str]) -> None:
        """Write ``frame`` now when connected, else queue it for the next handshake
        (:class:`SendQueueFull` past ``max_pending_sends``)."""
        async with self._send_lock:
            if self._session.status == CONNECTED and self._ws is not None:
                if await self._write(frame, cb_id) or cb_id is not None:
                    return
            if self._closing:
                raise ClientClosed("client closed")
            if len(self._queued) >= self.max_pending_sends:
                raise SendQueueFull(f"{len(self._queued)} sends already wait for the connection "
                                    f"(max_pending_sends={self.max_pending_sends})")
            self._queued.append((frame, cb_id))

    def _fail_all(self, exc: BaseException) -> None:
        settle(self._session.fail_all(exc))
        self._queued.clear()

    # -- time --------------------------------------------------------------------------------
    async def _tick(self) -> None:
        """Request deadlines, due resends of ``outcome-unknown`` publishes, a silent server."""
        session = self._session
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            settle(session.expire(now))
            ws = self._ws
            if session.status != CONNECTED or ws is None:
                continue
            for cb_id, frame in session.due_resends(now):
                async with self._send_lock:
                    if not await self._write(frame, cb_id):
                        break
                self._counts["publishes_resent"] += 1
            await self._refresh_if_due(ws)
            if session.dead(now):
                self._counts["dead_server_detections"] += 1
                log.warning("server silent for %.1fs: dropping the connection",
                            now - session.last_recv)
                session.last_recv = now
                ws.transport.abort()

    # -- the handler task --------------------------------------------------------------------
    async def _run_handlers(self) -> None:
        """Run handler work one at a time, in arrival order (plain or ``async`` handlers)."""
        tasks = self._tasks
        while True:
            try:  # what is queued already is taken without a wait (the hot path of a burst)
                task = tasks.get_nowait()
            except asyncio.QueueEmpty:
                task = await tasks.get()
            if task is None:
                return
            try:
                await self._run_task(task)
            except Exception:  # pragma: no cover - a bug of this module
                log.exception("client handler task failed")

    async def _run_task(self, task: tuple) -> None:
        kind = task[0]
        if kind == "channel" or kind == "recovery":
            await run_channel_handlers(kind, task[1], task[2], self._counts)
            return
        _, event, data, cb_id = task
        session = self._session
        handlers = list(self._handlers.get(event, ()))
        if not handlers:
            for frame in session.no_handler(event, cb_id):
                await self._reply(frame)
            return
        result: Any = None
        for i, fn in enumerate(handlers):
            try:
                value = fn(data)
                if inspect.isawaitable(value):
                    value = await value
            except Exception as exc:
                log.exception("handler for %s raised", event)
                for frame in session.handler_failed(event, cb_id if i == 0 else None, exc):
                    await self._reply(frame)
                if i == 0:
                    cb_id = None
                continue
            if i == 0:
                result = value
        if cb_id is not None:
            await self._reply(session.reply(event, cb_id, result))

    async def _reply(self, frame: bytes) -> None:
        try:
            await self._send_frame(frame, None)
        except (SendQueueFull, ClientClosed) as exc:
            log.warning("reply dropped: %s", safe(exc))


__all__ = ["IoMixin", "TICK_S", "settle"]
