"""The requests of an :class:`~sente_lite.asgi.App`: plain HTTP ones answered by the front,
and WebSocket upgrades checked by it (Host, path, client-id, packer, Origin, CSRF, then
``authenticate`` on a worker thread, then a connection slot), accepted, served and ended.
"""

from __future__ import annotations

import asyncio
import http
import inspect
import logging
from typing import Any, Dict, Optional, Protocol

from websockets.http11 import Response

from ..core.routing import route_of, routed_now
from ..core.front import Admit, HttpFront, Identity, Screened
from ..core.security import Gate, select_subprotocol
from ..core.dispatcher import ServerDispatcher
from ..core.hub import Hub
from ..counters import Counter, Counters
from ..logsafe import safe
from ..wire import protocol as p
from .connection import AsgiConnection
from .http import Receive, Scope, ScopeLink, Send, deny_upgrade, request_of, send_http
from .lanes import Lane, Lanes

log = logging.getLogger("sente_lite.server")


class AppPort(Protocol):
    """What the upgrades use of the App that owns them."""

    server_id: str
    max_message_bytes: int
    max_queued_bytes_per_conn: int
    close_timeout: float
    handshake_timeout: float
    inbound: Any
    counters: Counters
    _gate: Gate
    _hub: Hub
    _front: HttpFront
    _dispatcher: ServerDispatcher
    _on_connect: list
    _on_disconnect: list
    _conn_seq: Any
    _stopping: bool

    def _closed_conn(self, conn: AsgiConnection, code: int) -> None: ...


class Upgrades:
    """Answers one App's requests and serves its connections (on the event loop)."""

    def __init__(self, app: AppPort, lanes: Lanes) -> None:
        self.app = app
        self.lanes = lanes
        self.serving = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def wait_idle(self, timeout: float) -> None:
        """Until every connection ended, or ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            log.warning("%d connections still open after %.1fs", self.serving, timeout)

    # -- plain HTTP -----------------------------------------------------------------------
    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``/health``, ``/metrics``, ``/csrf-token``, the browser client's files, a probe
        of the WebSocket path; anything else 404 (a non-GET on a route: 405)."""
        app = self.app
        link = ScopeLink(scope)
        request = request_of(scope)
        try:
            if app._gate.checks_credentials:  # a probe runs the hook: not on the loop
                decision = await self.lanes.in_thread(app._front.decide, link, request)
            else:
                decision = app._front.decide(link, request)
        except Exception as exc:
            decision = self._internal_error(link, exc)
        if not isinstance(decision, Response):  # an upgrade's headers on a plain request
            decision = link.respond(http.HTTPStatus.BAD_REQUEST, "not a WebSocket upgrade\n")
        await send_http(send, decision)

    # -- WebSocket upgrades ------------------------------------------------------------------
    async def websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Admit the upgrade (or refuse it as the threaded face does), then serve it."""
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        link = ScopeLink(scope)
        try:
            decision = await self._decide(link, scope)
            await self._routed(decision)
            if isinstance(decision, Admit):
                decision = self.app._gate.take_slot(link, decision.identity.client_id) or decision
        except Exception as exc:
            decision = self._internal_error(link, exc)
        if not isinstance(decision, Admit):
            await deny_upgrade(scope, send, decision)
            return
        try:
            accept: Dict[str, Any] = {"type": "websocket.accept"}
            chosen = select_subprotocol(list(scope.get("subprotocols") or ()))
            if chosen is not None:  # a browser's token offer: answer sente-lite, never the token
                accept["subprotocol"] = chosen
            await send(accept)
        except BaseException:
            self.app._gate.release_slot(link)
            raise
        await self._serve(link, decision.identity, receive, send)

    async def _routed(self, decision: Any) -> None:
        """Until the broker routes the admitted user's messages here (at most
        ``handshake_timeout``; :mod:`~sente_lite.core.routing`)."""
        loop = asyncio.get_running_loop()
        routed: "asyncio.Future[None]" = loop.create_future()

        def later() -> None:
            loop.call_soon_threadsafe(lambda: routed.done() or routed.set_result(None))

        if not routed_now(route_of(self.app._hub.broker), decision, later):
            await asyncio.wait({routed}, timeout=self.app.handshake_timeout)

    async def _decide(self, link: ScopeLink, scope: Scope) -> Any:
        """The front's verdict: a Response, or :class:`Admit`; ``authenticate`` runs on a
        worker thread, at most ``max_pending_auth`` at once, within ``handshake_timeout``."""
        app = self.app
        front, gate = app._front, app._gate
        request = request_of(scope)
        screened = front.screen(link, request)
        if not isinstance(screened, Screened) or not gate.checks_credentials:
            return front.identify(link, request, screened)
        refusal = gate.begin_auth(link, screened.client_id)
        if refusal is not None:
            return refusal

        def identify() -> Any:
            try:
                return front.identify(link, request, screened)
            finally:
                gate.end_auth()

        try:
            return await asyncio.wait_for(self.lanes.in_thread(identify), app.handshake_timeout)
        except asyncio.TimeoutError:
            return gate.refuse(link, 503, "handshake-timeout",
                               f"upgrade not decided within {app.handshake_timeout:g}s "
                               "(handshake_timeout; a slow authenticate hook?)")

    def _internal_error(self, link: ScopeLink, exc: BaseException) -> Response:
        self.app.counters.add(Counter.INTERNAL_ERRORS)
        log.error("internal error handling a request from %s", link.remote,
                  exc_info=(type(exc), exc, exc.__traceback__))
        return link.respond(http.HTTPStatus.INTERNAL_SERVER_ERROR,
                            "internal server error: the upgrade failed (see the server's log)\n")

    # -- one connection ----------------------------------------------------------------------
    async def _serve(self, link: ScopeLink, ident: Identity, receive: Receive, send: Send) -> None:
        """Greet the connection, read it, run its lane and its writer, until it ends."""
        app = self.app
        loop = asyncio.get_running_loop()
        conn_id = f"{app.server_id}-{next(app._conn_seq)}"
        first = app._hub.first_visit(ident.client_id)
        conn = AsgiConnection(conn_id, ident, first, app._dispatcher.new_session, loop,
                              app.counters, app.max_queued_bytes_per_conn, app.inbound,
                              app.close_timeout)
        info = {"conn-id": conn_id, "client-id": ident.client_id, "server-id": app.server_id,
                "max-message-bytes": app.max_message_bytes}
        if ident.bytes:
            info[p.K_BYTES] = True
        self.serving += 1
        self._idle.clear()
        lane = Lane()
        writer = loop.create_task(self._write(conn, send))
        reader = loop.create_task(self.lanes.read(conn, lane, receive))
        conn.tasks = [reader, writer]
        app._dispatcher.open(conn, ident.csrf_token, info, first, ident.grant, ident.channels, ident.info)
        lane.task = loop.create_task(self._lane(conn, lane))
        log.debug("open %s uid=%s remote=%s first=%s", conn_id, safe(conn.uid),
                  conn.remote_address, first)
        peer_code: Optional[int] = None
        try:
            await asyncio.wait([reader])
            if not reader.cancelled() and reader.exception() is None:
                peer_code = reader.result()
        finally:
            if not reader.done():
                reader.cancel()
            await self._end(conn, link, lane, writer, peer_code)

    async def _end(self, conn: AsgiConnection, link: ScopeLink, lane: Lane,
                   writer: "asyncio.Task[None]", peer_code: Optional[int]) -> None:
        """The connection ended: forget it at once, let its lane finish what it holds,
        then run the disconnect hooks."""
        app = self.app
        app._dispatcher.closed(conn)
        app._gate.release_slot(link)
        conn.inflow.close()
        if not writer.done():
            writer.cancel()
        code = conn.close_code if conn.close_code is not None else (peer_code or 1006)
        reason = conn.close_reason
        app._closed_conn(conn, code)
        lane.items.append((None, 0))  # the end: the lane stops after what is queued
        lane.wake.set()
        if lane.task is not None:
            await asyncio.wait([lane.task])
        for hook in app._on_disconnect:
            await self._hook(hook, conn, code, reason)
        log.debug("closed %s code=%s reason=%s", conn.conn_id, code, safe(reason))
        self.serving -= 1
        if not self.serving:
            self._idle.set()

    async def _lane(self, conn: AsgiConnection, lane: Lane) -> None:
        for hook in self.app._on_connect:
            await self._hook(hook, conn)
        await self.lanes.run(conn, lane)

    async def _write(self, conn: AsgiConnection, send: Send) -> None:
        try:
            await conn.write(send)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the peer left: nothing more can go out
            log.debug("writing %s failed: %s", conn.conn_id, safe(exc))
            conn.close(1006, "", flush=False)

    async def _hook(self, hook: Any, *args: Any) -> None:
        try:
            if inspect.iscoroutinefunction(hook):
                await hook(*args)
            else:
                await self.lanes.in_thread(hook, *args)
        except Exception:
            self.app.counters.add(Counter.HOOK_ERRORS)
            log.exception("hook %r raised", hook)


__all__ = ["Upgrades", "AppPort"]
