"""The server's answers to its network loop: upgrades, links opened and closed, limits
on a link's input, ticks.

:class:`ServerCore` is the :class:`~sente_lite.server.netloop.LinkHandler` of a
:class:`~sente_lite.Server`: what is about links and threads. What a connection's frames
ask for is the :class:`~sente_lite.core.dispatcher.ServerDispatcher`'s (on the thread
:class:`~sente_lite.server.lanes.Lanes` picks); application hooks run on the
connection's worker lane.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Optional, Tuple

from websockets.http11 import Request, Response

from ..wire import protocol as p
from ..counters import Counter
from ..core.dispatcher import ServerDispatcher
from ..core.front import Identity, Screened
from ..core.routing import route_of, routed_now
from .lanes import Lanes
from ..logsafe import safe
from .netloop import DEFER, Link
from ..core.security import report
from .workers import Lane

from .ports import ConnectionPort, ServerPort

log = logging.getLogger("sente_lite.server")


class ServerCore:
    """Handles the network loop's links for one server (all entry points but the
    handlers' own run on the network thread)."""

    def __init__(self, server: ServerPort, dispatcher: ServerDispatcher) -> None:
        self.server = server
        self.counters = server.counters
        self.dispatcher = dispatcher
        self.lanes = Lanes(dispatcher, server._pool, server._latency)
        self._route = route_of(dispatcher.hub.broker)

    # -- upgrades ----------------------------------------------------------------------
    def on_request(self, link: Link, request: Request) -> Any:
        """An HTTP request arrived: answer it, accept the upgrade, or run the
        ``authenticate`` hook on a worker (it may be slow; the network thread never
        waits for it). At most ``max_pending_auth`` upgrades wait for the hook."""
        srv = self.server
        front = srv._front
        screened = front.screen(link, request)
        if not isinstance(screened, Screened) or not srv._gate.checks_credentials:
            decision = front.identify(link, request, screened)
            return decision if self._routed(link, decision) else DEFER
        refusal = srv._gate.begin_auth(link, screened.client_id)
        if refusal is not None:
            return front.identify(link, request, refusal)
        try:
            srv._pool.submit(Lane(f"upgrade {link.remote}"),
                             lambda: self._decide_later(link, request, screened))
        except BaseException:
            srv._gate.end_auth()
            raise
        return DEFER

    def _decide_later(self, link: Link, request: Request, screened: Screened) -> None:
        """On a worker: the hook's verdict, handed back to the network thread. Marked
        blocking, so slow hooks never hold back handlers (``max_pending_auth`` bounds them)."""
        srv = self.server
        loop = srv._loop
        assert loop is not None
        try:
            with srv._pool.blocking():
                decision = srv._front.identify(link, request, screened)
        except Exception as exc:
            decision = loop._internal_error(link, exc)
        finally:
            srv._gate.end_auth()
        if self._routed(link, decision):
            loop.decide(link, decision)

    def _routed(self, link: Link, decision: Any) -> bool:
        """True: answer ``decision`` now; False: it is answered once the broker routes its
        user's messages here (:mod:`~sente_lite.core.routing`)."""
        loop = self.server._loop
        assert loop is not None
        return routed_now(self._route, decision, lambda: loop.decide(link, decision))

    def on_admit(self, link: Link, ident: Identity) -> Optional[Response]:
        """The upgrade is about to be answered 101 (network thread): take its
        connection slot, or refuse it 503 when ``max_connections`` are taken."""
        return self.server._gate.take_slot(link, ident.client_id)

    def on_unopened(self, link: Link) -> None:
        """The upgrade was answered without a 101, or never answered: its slot, if it
        took one, is given back at once."""
        self.server._gate.release_slot(link)

    def on_refused(self, link: Link, reason: str, status: Optional[int], message: str) -> None:
        """The network loop refused an upgrade itself (malformed, too large, too slow)."""
        self.server._gate.count_refusal(reason)
        report(log, "refused-upgrade", reason, remote=link.remote, status=status, message=message)

    def on_open(self, link: Link, ident: Identity) -> None:
        """The 101 went out: register the connection, greet it, then run on_connect hooks
        on its lane (before any of its events)."""
        srv = self.server
        conn_id = f"{srv.server_id}-{next(srv._conn_seq)}"
        first = self.dispatcher.hub.first_visit(ident.client_id)
        conn = srv._new_connection(link, conn_id, ident, first)
        link.owner = conn
        info = {"conn-id": conn_id, "client-id": ident.client_id, "server-id": srv.server_id,
                "max-message-bytes": srv.max_message_bytes}
        if conn.batching:
            info[p.K_BATCH] = True
        if ident.bytes:
            info[p.K_BYTES] = True
        self.dispatcher.open(conn, ident.csrf_token, info, first, ident.grant, ident.channels, ident.info)
        log.debug("open %s uid=%s remote=%s first=%s", conn_id, safe(conn.uid), conn.remote_address,
                  first)
        for hook in srv._on_connect:
            srv._pool.submit(conn.lane, functools.partial(self._call_hook, hook, conn))

    def _call_hook(self, hook: Callable[..., None], *args: Any) -> None:
        try:
            hook(*args)
        except Exception:
            self.counters.add(Counter.HOOK_ERRORS)
            log.exception("hook %r raised", hook)

    # -- ends --------------------------------------------------------------------------
    def on_link_closed(self, link: Link) -> None:
        """The socket is closed: forget the connection at once; its disconnect hooks run
        on its lane, after its last events."""
        srv = self.server
        srv._gate.release_slot(link)
        conn = link.owner
        if conn is None:
            return
        self.dispatcher.closed(conn)
        code, reason = self._close_outcome(conn, link)
        srv._closed_conn(conn, code)
        log.debug("closed %s code=%s reason=%s", conn.conn_id, code, safe(reason))

        def farewell() -> None:
            for hook in srv._on_disconnect:
                self._call_hook(hook, conn, code, reason)
            conn._closed.set()

        srv._pool.submit(conn.lane, farewell)

    def _close_outcome(self, conn: ConnectionPort, link: Link) -> Tuple[int, str]:
        """The close code and reason of a finished connection: the server's own close,
        a close websockets made itself (1009 too big, 1002/1007 protocol: counted and
        logged here), or the peer's."""
        try:
            exc = link.protocol.close_exc
        except Exception:  # not closed in websockets' eyes (socket dropped): abnormal
            exc = None
        sent = getattr(exc, "sent", None)
        rcvd = getattr(exc, "rcvd", None)
        if conn.close_code is not None:
            return conn.close_code, conn.close_reason
        if sent is not None and (rcvd is None or not exc.rcvd_then_sent):  # type: ignore[union-attr]
            code = int(sent.code)
            counter: Optional[Counter] = None
            if code == p.CLOSE_TOO_BIG:
                counter, why = Counter.TOO_LARGE_CLOSES, "max-message-bytes"
            elif code in (1002, 1003, 1007):
                counter, why = Counter.PROTOCOL_ERROR_CLOSES, "protocol-error"
            if counter is not None:
                self.counters.add(counter)
                report(log, "closed", why, conn_id=conn.conn_id, uid=conn.uid,
                       remote=conn.remote_address, code=code, message=sent.reason)
            return code, sent.reason
        if rcvd is not None:
            return int(rcvd.code), rcvd.reason
        return 1006, ""

    def on_input_limit(self, link: Link, counter: str, code: int, reason: str) -> None:
        """The network loop closes ``link`` for a limit on its input: count and log it."""
        self.counters.add(Counter(counter))
        conn = link.owner
        report(log, "closed", counter[:-len("_closes")].replace("_", "-"), conn_id=getattr(conn, "conn_id", None),
               uid=getattr(conn, "uid", None), remote=link.remote, code=code, message=reason)

    def on_input_paused(self, link: Link) -> None:
        """The network loop stopped reading ``link`` until its handler catches up."""
        self.counters.add(Counter.INBOUND_PAUSES)
        inflow = link.inflow
        conn = link.owner
        log.debug("paused reading %s: %d frames, %d bytes wait for its handler",
                  getattr(conn, "conn_id", link.remote), inflow.frames, inflow.bytes)

    def on_tick(self, now: float, stalled_s: float) -> None:
        """Heartbeats and deadlines (on the network thread): see
        :meth:`~sente_lite.core.dispatcher.ServerDispatcher.tick`."""
        self.dispatcher.tick(now, stalled_s)


__all__ = ["ServerCore"]
