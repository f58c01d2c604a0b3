"""The server's answers to its network loop: connections open, frames arrive, links close.

:class:`ServerCore` is the :class:`~sente_lite.server.netloop.LinkHandler` of a
:class:`~sente_lite.Server`. Protocol rules are the session's
(:class:`~sente_lite.session.ServerSession`); this runs what the session's events
ask for: application handlers (on the connection's worker lane), authorization,
channel operations through the hub, heartbeats, and the bookkeeping of closes.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable, List, Optional, Tuple

from websockets.http11 import Request, Response

from ..wire import protocol as p
from .. import session as ss
from ..wire import tracing
from ..wire.channels import Published, RecoveryResult
from ..counters import Counter
from .lanes import Dispatcher
from ..errors import BrokerCommandError, BrokerUnavailable, PublishOutcomeUnknown
from .front import Identity, Screened
from ..logsafe import safe
from .netloop import DEFER, Link
from ..core.security import report
from .workers import Lane

from .ports import ConnectionPort, ServerPort

log = logging.getLogger("sente_lite.server")

#: Broker failures answered with their own error code (unavailable, outcome-unknown, broker-error).
_BROKER_ANSWERS = (BrokerUnavailable, PublishOutcomeUnknown, BrokerCommandError)


class ChannelGate:
    """Whether a connection may subscribe or publish to a channel."""

    def __init__(self, server: ServerPort) -> None:
        self.server = server
        self.counters = server.counters

    def check(self, conn: ConnectionPort, action: str, channel_id: str) -> Optional[Tuple[str, str]]:
        """Checks of one subscribe/publish: None allows, (error code, message) refuses.

        ``max_subscriptions_per_conn`` (``limit-exceeded``), then the ``authorize``
        hook (``forbidden``; a hook that raises forbids).
        """
        srv = self.server
        if action == "subscribe":
            held = srv.channels.channels_of(conn.conn_id)
            if len(held) >= srv.max_subscriptions_per_conn and channel_id not in held:
                self.counters.add(Counter.SUBSCRIPTION_LIMIT)
                report(log, "refused-subscribe", "max-subscriptions", conn_id=conn.conn_id,
                       uid=conn.uid, remote=conn.remote_address, channel_id=channel_id)
                return p.ERR_LIMIT_EXCEEDED, (f"{len(held)} subscriptions already "
                                              f"(max_subscriptions_per_conn={srv.max_subscriptions_per_conn})")
        if srv.authorize is None:
            return None
        try:
            allowed = bool(srv.authorize(conn, action, channel_id))
        except Exception:
            self.counters.add(Counter.HOOK_ERRORS)
            log.exception("authorize hook raised for %s %r (conn %s): forbidden",
                          action, channel_id, conn.conn_id)
            allowed = False
        if allowed:
            return None
        self.counters.add(Counter.FORBIDDEN)
        report(log, f"refused-{action}", "forbidden", conn_id=conn.conn_id, uid=conn.uid,
               remote=conn.remote_address, channel_id=channel_id, level=logging.INFO)
        return p.ERR_FORBIDDEN, f"{action} to {channel_id!r} not allowed"


class ServerCore:
    """Handles the network loop's links for one server (all entry points but the
    handlers' own run on the network thread)."""

    def __init__(self, server: ServerPort) -> None:
        self.server = server
        self.counters = server.counters
        self._gate = ChannelGate(server)
        self._next_ping = 0.0
        self.dispatch = Dispatcher(self)

    # -- upgrades ----------------------------------------------------------------------
    def on_request(self, link: Link, request: Request) -> Any:
        """An HTTP request arrived: answer it, accept the upgrade, or run the
        ``authenticate`` hook on a worker (it may be slow; the network thread never
        waits for it). At most ``max_pending_auth`` upgrades wait for the hook."""
        srv = self.server
        front = srv._front
        screened = front.screen(link, request)
        if not isinstance(screened, Screened) or srv._gate.authenticate is None:
            return front.identify(link, request, screened)
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
        loop.decide(link, decision)

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
        first = srv._hub.first_visit(ident.client_id)
        conn = srv._new_connection(link, conn_id, ident, first)
        link.owner = conn
        srv._hub.add(conn)  # registered before the handshake goes out: a client holding it is known
        info = {"conn-id": conn_id, "client-id": ident.client_id, "server-id": srv.server_id,
                "max-message-bytes": srv.max_message_bytes}
        if conn.batching:
            info[p.K_BATCH] = True
        conn._enqueue(conn._session.handshake(ident.uid, ident.csrf_token, info, first))
        log.debug("open %s uid=%s remote=%s first=%s", conn_id, safe(conn.uid), conn.remote_address,
                  first)
        for hook in srv._on_connect:
            srv._pool.submit(conn._lane, functools.partial(self._call_hook, hook, conn))

    # -- frames ------------------------------------------------------------------------
    def on_message(self, conn: ConnectionPort, msg: Any, size: int) -> None:
        """One whole message from ``conn`` (network thread): see :class:`~sente_lite.server.lanes.Dispatcher`."""
        self.dispatch.on_message(conn, msg, size)

    def _apply(self, conn: ConnectionPort, received: ss.Received, msg: Any) -> None:
        """Send the session's frames, then act on its events."""
        for frame in received.frames:
            conn._enqueue(frame)
        for ev in received.events:
            kind = type(ev)
            if kind is ss.AppEvent:
                self._app_event(conn, ev)
            elif kind is ss.PublishRequest:
                self._publish(conn, ev)
            elif kind is ss.ReplyArrived:
                conn._settle(ev.waiter, ev.result, ev.error)
            elif kind is ss.SubscribeRequest:
                self._subscribe(conn, ev)
            elif kind is ss.UnsubscribeRequest:
                self.server.channels.unsubscribe(conn.conn_id, ev.channel_id)
                conn._enqueue(conn._session.unsubscribed(ev.channel_id, ev.cb_id))
            elif kind is ss.CloseConnection:
                report(log, "closed", ev.why, conn_id=conn.conn_id, uid=conn.uid,
                       remote=conn.remote_address, code=ev.code, message=ev.message)
                conn.close(ev.code, ev.reason)  # what was queued before it goes first

    def _app_event(self, conn: ConnectionPort, ev: ss.AppEvent) -> None:
        srv = self.server
        handler = srv._handlers.get(ev.event)
        if handler is None:
            for frame in conn._session.no_handler(ev.event, ev.cb_id):
                conn._enqueue(frame)
            return
        spans = self.server._spans
        try:
            with spans.span("request" if ev.cb_id is not None else "event", ev.traceparent,
                            {"sente_lite.event": ev.event, "sente_lite.conn_id": conn.conn_id}):
                result = handler(conn, ev.data)
        except Exception as exc:
            log.exception("handler for %s raised (conn %s)%s", ev.event, conn.conn_id,
                          tracing.log_suffix())
            for frame in conn._session.handler_failed(ev.event, ev.cb_id, exc):
                conn._enqueue(frame)
            return
        if ev.cb_id is not None:
            with spans.span("reply", ev.traceparent, {"sente_lite.event": ev.event}):
                conn._enqueue(conn._session.reply(ev.event, ev.cb_id, result, ev.traceparent))

    def _refused(self, conn: ConnectionPort, action: str, channel_id: str,
                 event: str, cb_id: Optional[str]) -> bool:
        refusal = self._gate.check(conn, action, channel_id)
        if refusal is None:
            return False
        conn._enqueue(conn._session.error(refusal[0], refusal[1], cb_id, event))
        return True

    def _subscribe(self, conn: ConnectionPort, ev: ss.SubscribeRequest) -> None:
        if self._refused(conn, "subscribe", ev.channel_id, p.EV_SUBSCRIBE, ev.cb_id):
            return

        session = conn._session
        answered: List[bool] = []

        def announce(offset: int, epoch: str, recovery: Optional[RecoveryResult]) -> None:
            # a second call is a notice (no cb-id): a paged replay lost its place
            cb_id = None if answered else ev.cb_id
            answered.append(True)
            if recovery is not None and recovery.replayed:
                session.charge_replay(recovery.replayed)
            conn._enqueue(session.subscribed(ev.channel_id, offset, epoch, recovery, cb_id))

        def refuse(exc: BaseException) -> None:  # the broker refused this channel
            code = exc.code if isinstance(exc, _BROKER_ANSWERS) else p.ERR_HANDLER_ERROR
            conn._enqueue(session.error(code, str(exc), ev.cb_id, p.EV_SUBSCRIBE))

        announce.refuse = refuse  # type: ignore[attr-defined]
        budget = session.replay_budget() if ev.since is not None else None
        self.server._hub.subscribe(conn, ev.channel_id, announce, ev.since, budget)

    def _publish(self, conn: ConnectionPort, ev: ss.PublishRequest) -> None:
        if self._refused(conn, "publish", ev.channel_id, p.EV_PUBLISH, ev.cb_id):
            return
        channel, cb_id, traceparent = ev.channel_id, ev.cb_id, ev.traceparent
        spans = self.server._spans

        def answer(result: Any) -> None:  # on the thread that ran the publish, in channel order
            if isinstance(result, _BROKER_ANSWERS):  # its code says whether it was published
                conn._enqueue(conn._session.error(result.code, str(result), cb_id, p.EV_PUBLISH))
            elif isinstance(result, BaseException):
                self.counters.add(Counter.INTERNAL_ERRORS)
                log.error("internal error publishing on %r (conn %s)", channel, conn.conn_id,
                          exc_info=result)
                conn._enqueue(conn._session.error(p.ERR_HANDLER_ERROR,
                                                  f"internal error handling {p.EV_PUBLISH}", cb_id,
                                                  p.EV_PUBLISH))
            elif isinstance(result, Published):
                if traceparent is not None:
                    spans.event("fan-out", traceparent, {
                        "sente_lite.channel": channel, "sente_lite.offset": result.offset,
                        "sente_lite.delivered": result.delivered})
                if cb_id is not None:
                    conn._enqueue(conn._session.published(result, cb_id, traceparent))

        # Never waits for a busy channel: its holder publishes this too, and answers.
        with spans.span("publish", traceparent, {"sente_lite.channel": channel}, kind="CONSUMER"):
            self.server._hub.publish(channel, ev.data_json, conn.uid,
                                     conn.conn_id if ev.exclude_sender else None, answer,
                                     ev.publish_id, traceparent)

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
        srv._hub.remove(conn)
        for waiter, exc in conn._session.fail_requests():
            conn._settle(waiter, None, exc)
        code, reason = self._close_outcome(conn, link)
        srv._closed_conn(conn, code)
        log.debug("closed %s code=%s reason=%s", conn.conn_id, code, safe(reason))

        def farewell() -> None:
            for hook in srv._on_disconnect:
                self._call_hook(hook, conn, code, reason)
            conn._closed.set()

        srv._pool.submit(conn._lane, farewell)

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
        if conn._close_code is not None:
            return conn._close_code, conn._close_reason
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
        """Heartbeat (on the network thread): ping every ``heartbeat_ms``, close silent
        connections with 4000, expire what idle channels keep
        (:meth:`~sente_lite.brokers.local.ChannelRegistry.sweep_idle`). A stretch in which this thread itself was stalled is not
        held against any peer: their frames may be waiting unread in the socket."""
        srv = self.server
        send_pings = now >= self._next_ping
        if send_pings:
            self._next_ping = now + srv.heartbeat_ms / 1000.0
        late: List[Tuple[ConnectionPort, Any, BaseException]] = []
        for conn in srv._hub.snapshot():
            session = conn._session
            if session.outstanding:
                late.extend((conn, w, e) for w, e in session.expire(now))
            if conn._close_code is not None:
                continue
            if conn._link.inflow.paused:  # not read meanwhile: its silence is the server's doing
                session.last_seen = now
            if session.heartbeat(now, stalled_s) == ss.HEARTBEAT_TIMEOUT:
                report(log, "closed", "heartbeat-timeout", conn_id=conn.conn_id, uid=conn.uid,
                       remote=conn.remote_address, code=p.CLOSE_HEARTBEAT_TIMEOUT,
                       message=f"silent for {now - session.last_seen:.1f}s", level=logging.INFO)
                srv.channels.remove_member(conn.conn_id)
                conn.close(p.CLOSE_HEARTBEAT_TIMEOUT, "heartbeat timeout")
            elif send_pings:
                conn._ping()
        for conn, waiter, exc in late:
            conn._settle(waiter, None, exc)
        srv.channels.sweep_idle()


__all__ = ["ServerCore", "ChannelGate"]
