"""The ASGI face: :class:`App`, a plain ASGI 3 application serving the sente_lite protocol.

The same protocol as the threaded :class:`sente_lite.Server`, from the same parts: each
connection's :class:`~sente_lite.session.ServerSession`, the
:class:`~sente_lite.core.dispatcher.ServerDispatcher`, the :class:`~sente_lite.core.hub.Hub`
and its broker, the admission :class:`~sente_lite.core.security.Gate` and the HTTP
:class:`~sente_lite.core.front.HttpFront`, all under one
:class:`~sente_lite.core.settings.ServerSettings`. What is the ASGI server's here: the
sockets, HTTP parsing, WebSocket framing, fragments, permessage-deflate, TLS and the
address it listens on. Everything runs on the event loop that serves the application,
but a plain ``def`` handler, an ``authenticate``/``authorize`` hook and, with Redis,
calls that wait on the broker, which run on worker threads (``max_handler_threads``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import inspect
import itertools
import logging
import time
import uuid
from typing import Any, AsyncIterator, Callable, Dict, List, Optional, Set

from ..core.dispatcher import ServerDispatcher
from ..core.front import HttpFront
from ..core.hub import Hub
from ..core.messaging import check_event_id
from ..core.metrics import LatencyHistogram, MetricsExporter
from ..core.settings import ServerSettings
from ..counters import Counter, Counters
from ..wire import protocol as p
from ..wire import tracing as tracing_mod
from .calls import CONN_TOTALS, CallsMixin, Face
from .connection import AsgiConnection
from .http import Receive, Scope, Send
from .lanes import Lanes
from .upgrade import Upgrades

log = logging.getLogger("sente_lite.server")

#: Settings of :class:`sente_lite.Server` that are the ASGI server's business here, and where
#: they go instead.
NOT_HERE = {
    "host": "the ASGI server's --host", "port": "the ASGI server's --port",
    "port_file": "the ASGI server", "ssl_context": "the ASGI server's TLS options",
    "accept_backlog": "the ASGI server's --backlog",
    "request_line_timeout": "the ASGI server", "max_pending_handshakes_per_address": "the ASGI server",
    "raise_fd_limit": "the ASGI server", "write_delay_ms": "the ASGI server",
    "compression": "the ASGI server (uvicorn: --ws-per-message-deflate)",
    "compression_min_bytes": "the ASGI server", "max_fragments": "the ASGI server",
    "fragment_timeout": "the ASGI server", "min_handler_threads": "max_handler_threads",
    "api_keys": "the threaded Server (the HTTP server API)", "api_insecure_ok": "the threaded Server",
    "api_max_body_bytes": "the threaded Server", "api_rate_limit": "the threaded Server",
}


def _identity_frame(payload: bytes, binary: bool, compressed: bool = False) -> bytes:
    """The hub's "whole frame" on this face: the payload itself (the ASGI server frames it)."""
    return payload


class App(CallsMixin):
    """A sente_lite server as an ASGI application.

    ``rt = App(...)`` takes the keywords of :class:`sente_lite.Server` that apply
    (``authenticate``, ``authorize``, ``allowed_origins``, ``allowed_hosts``, ``csrf``,
    limits, rate limits, heartbeats, history, publish ids, ``broker="redis://..."``,
    ``tracing``, ``max_handler_threads``, ...); the others are the ASGI server's and
    raise TypeError naming where they go (:data:`NOT_HERE`). ``path`` (default ``/chsk``)
    is relative to where the application is mounted: ``fastapi_app.mount("/rt", rt)``
    serves ``ws://host/rt/chsk`` and ``/rt/health``.

    Starts with the ASGI lifespan protocol, or ``await rt.start()`` / ``await rt.stop()``
    (``async with rt:``, ``FastAPI(lifespan=rt.lifespan)``) in a host application whose
    own lifespan runs; a request arriving first starts it too (mounted sub-applications
    get no lifespan of their own), then only ``stop`` closes its connections.
    """

    def __init__(self, *, path: str = "/chsk", **settings: Any) -> None:
        wrong = sorted(set(settings) & set(NOT_HERE))
        if wrong:
            raise TypeError("; ".join(f"{k} is not a setting of App: it is {NOT_HERE[k]}"
                                      for k in wrong))
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/', got {path!r}")
        self.settings = ServerSettings.with_defaults(dict(settings, path=path, host="asgi"))
        vars(self).update(self.settings.attributes())
        self.server_id = uuid.uuid4().hex[:16]
        self.counters = Counters()
        self.channels = self.settings.make_broker(self.server_id, self.counters)
        self._assemble(self.settings)

    def _assemble(self, settings: ServerSettings) -> None:
        self._gate = settings.gate()
        self._latency = LatencyHistogram()
        self._metrics = MetricsExporter(self.stats, self._latency)
        self._spans = tracing_mod.Spans(settings.tracing)
        self._face: Face = Face.__new__(Face)  # its hub is made next (the hub closes users through it)
        self._hub = Hub(self.channels, self.counters, settings.max_remembered_clients,
                        _identity_frame, self._spans, close_user=self._close_user_here)
        Face.__init__(self._face, self._hub, self.channels, self.counters,
                      settings.max_channel_id_chars)
        self._face.max_history_page = settings.max_history_page
        self._rules = settings.session_rules()
        self._handlers: Dict[str, Callable[..., Any]] = {}
        self._async_handlers: Set[Callable[..., Any]] = set()
        self._dispatcher = ServerDispatcher(
            self._hub, self._rules, self._handlers,
            settings.channel_gate(self.channels, self.counters),
            self._spans, settings.jwt)
        self._front = HttpFront(self)
        self._on_connect: List[Callable[..., Any]] = []
        self._on_disconnect: List[Callable[..., Any]] = []
        self._conn_seq = itertools.count(1)
        self._closes_by_code: Dict[int, int] = {}
        self._closed_totals: Dict[str, int] = dict.fromkeys(CONN_TOTALS, 0)
        self._executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._lanes: Optional[Lanes] = None
        self._upgrades: Optional[Upgrades] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._ticker: Optional["asyncio.Task[None]"] = None
        self._stopping = False
        self._stopped = False
        self._started_at = 0.0

    def _close_user_here(self, uid: str, code: int, reason: str) -> int:
        return self._face._disconnect_user_here(uid, code, reason)

    # -- what the front asks (core.front.FrontPort) -----------------------------------------
    def _pending_handshakes(self) -> int:
        return self._gate.stats()["pending_auth"]

    def _admit(self, link: Any, request: Any, client_id: str, client_id_given: bool) -> Any:
        return self._gate.admit(link, request, client_id, client_id_given)

    def _identify(self, link: Any, request: Any, client_id: str) -> Any:
        return self._gate.identify(link, request, client_id)

    # -- registration ---------------------------------------------------------------------
    def on(self, event: str, fn: Optional[Callable[..., Any]] = None) -> Any:
        """Register ``fn(conn, data)`` for ``event``; usable as a decorator. An
        ``async def`` handler is awaited on the event loop; a plain ``def`` one runs on a
        worker thread. A connection's events are handled one at a time, in order; a
        request's reply is the return value (an exception: ``handler-error``)."""
        check_event_id(event)
        if p.is_reserved(event):
            raise ValueError(f"{event!r} is in a reserved namespace "
                             f"({', '.join(sorted(p.RESERVED_NAMESPACES))})")

        def register(f: Callable[..., Any]) -> Callable[..., Any]:
            old = self._handlers.get(event)
            self._async_handlers.discard(old)
            if inspect.iscoroutinefunction(f):
                self._async_handlers.add(f)
            self._handlers[event] = f
            return f

        return register(fn) if fn is not None else register

    def off(self, event: str) -> None:
        """Remove the handler for ``event``."""
        self._async_handlers.discard(self._handlers.pop(event, None))

    def on_connect(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Call ``fn(conn)`` (plain or ``async``) after each handshake, before that
        connection's events."""
        self._on_connect.append(fn)
        return fn

    def on_disconnect(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Call ``fn(conn, close_code, reason)`` (plain or ``async``) once when a
        connection ends, after its last events."""
        self._on_disconnect.append(fn)
        return fn

    def csrf_token(self, client_id: str) -> Optional[str]:
        """The CSRF token of ``client_id`` (to embed in a page); None when ``csrf`` is off."""
        return self._gate.csrf_token_for(client_id)

    # -- lifecycle ----------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._loop is not None and not self._stopped

    async def start(self) -> "App":
        """Start on the running event loop: the broker, the heartbeat task, the worker
        threads. Called by the lifespan protocol, or by the first request."""
        if self._stopped:
            raise RuntimeError("this App was stopped: make a new one")
        if self._loop is not None:
            return self
        self._loop = loop = asyncio.get_running_loop()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            self.settings.max_handler_threads, thread_name_prefix="sente-lite-asgi")
        self._lanes = Lanes(self._dispatcher, self._async_handlers, self._executor,
                            self._latency, self.settings.max_message_bytes)
        self._upgrades = Upgrades(self, self._lanes)
        executor = self._executor  # a history read on Redis waits on it: not on the event loop
        self._dispatcher.history_reads.offload = lambda conn, task: executor.submit(task)
        # replays (and deliveries from other nodes) run on the event loop
        await self._call(self.channels.start, self._hub, loop.call_soon_threadsafe)
        self._started_at = time.monotonic()
        self._ticker = loop.create_task(self._tick())
        log.info("serving %s (ASGI, server-id %s)", self.path, self.server_id)
        return self

    async def stop(self) -> None:
        """Close every connection with 1001 (within ``close_timeout``), stop the
        heartbeat, the broker and the worker threads."""
        if self._loop is None or self._stopping:
            return
        self._stopping = True
        upgrades = self._upgrades
        assert upgrades is not None
        for conn in self._hub.snapshot():
            conn.close(p.CLOSE_GOING_AWAY, "server shutting down")
        await upgrades.wait_idle(self.close_timeout + 1.0)
        if self._ticker is not None:
            self._ticker.cancel()
        await self._call(self.channels.stop)
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        self._stopped = True
        log.info("stopped %s (server-id %s)", self.path, self.server_id)

    async def __aenter__(self) -> "App":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[None]:
        """For a host application's lifespan: ``FastAPI(lifespan=rt.lifespan)``."""
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    async def _tick(self) -> None:
        """The heartbeat (:meth:`ServerDispatcher.tick`): pings, silent peers, request
        deadlines, idle channels."""
        period = min(1.0, self.heartbeat_ms / 4000.0)
        due = time.monotonic() + period
        while True:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            now = time.monotonic()
            try:
                self._dispatcher.tick(now, max(0.0, now - due - period))
            except Exception:
                log.exception("heartbeat tick failed")
            due = max(due + period, now)

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``: on a worker thread when the broker may wait on I/O."""
        if self.channels.waits_on_io:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, functools.partial(fn, *args, **kwargs))
        return fn(*args, **kwargs)

    def _closed_conn(self, conn: AsgiConnection, code: int) -> None:
        self.counters.add(Counter.CONNECTIONS_CLOSED)
        self._closes_by_code[code] = self._closes_by_code.get(code, 0) + 1
        totals = self._closed_totals
        totals["frames_in"] += conn.frames_in
        totals["frames_out"] += conn.frames_out
        totals["bytes_in"] += conn.bytes_in
        totals["bytes_out"] += conn.bytes_out

    # -- ASGI ---------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if self._loop is None:
            await self.start()
        upgrades = self._upgrades
        assert upgrades is not None
        if kind == "websocket":
            await upgrades.websocket(scope, receive, send)
        elif kind == "http":
            await upgrades.http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as exc:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": repr(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


__all__ = ["App", "NOT_HERE"]
