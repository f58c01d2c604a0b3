"""The server's protocol actions, the same for every face: what a connection's frames
ask for, done through a small port.

A :class:`~sente_lite.session.ServerSession` turns received text into events and frames
to send; :class:`ServerDispatcher` acts on them: it sends the frames, runs the
application's handler, applies the channel policy (:class:`~sente_lite.core.gate.ChannelGate`),
hands subscribes, unsubscribes and publishes to the :class:`~sente_lite.core.hub.Hub`,
answers, settles the server's own requests and closes; :meth:`~ServerDispatcher.tick`
keeps the heartbeat. It acts on a connection only through its
:class:`~sente_lite.core.ports.ConnectionPort`, opens no socket, starts no thread and
reads no clock (time comes in as an argument). The threaded server
(:mod:`sente_lite.server`) and the in-memory test pair (``sente_lite.testing.pair``)
drive this same object.

Every call acts at once, on the calling thread: where each frame is handled is the
face's choice, told by the frame's :class:`~sente_lite.wire.protocol.FrameKind`
(application code runs only for kinds from :attr:`ServerDispatcher.app_code_from` up).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, ContextManager, Dict, List, Mapping, Optional, Sequence, Tuple

from .. import session as ss
from ..counters import Counter
from ..errors import BrokerCommandError, BrokerUnavailable, PublishOutcomeUnknown
from ..wire import protocol as p
from ..wire import tracing
from ..wire.channels import Published, RecoveryResult
from ..wire.packers import Packer
from .gate import ChannelGate
from .history_api import HistoryReads
from .server_subs import ServerSubs
from .hub import Hub
from .jwt_tokens import JWT, Grant
from .presence import ChannelPresence
from .refresh import Refresher, close_expired
from .sub_tokens import ChannelChecks, SubTokens
from .ports import ConnectionPort, Handler
from .security import report

# The server's log: operators already filter its refusals and closes by this name.
log = logging.getLogger("sente_lite.server")

#: Broker failures answered with their own error code (unavailable, outcome-unknown, broker-error).
_BROKER_ANSWERS = (BrokerUnavailable, PublishOutcomeUnknown, BrokerCommandError)
_NOTHING = ss.Received([], [])

Action = Callable[[ConnectionPort, Any], None]


class ServerDispatcher(ChannelChecks):
    """Acts on what the sessions of one server's connections receive (see the module)."""

    def __init__(self, hub: Hub, rules: ss.ServerRules, handlers: Mapping[str, Handler],
                 gate: ChannelGate, spans: Optional[tracing.Spans] = None,
                 tokens: Optional[JWT] = None) -> None:
        self.hub = hub
        #: how ``chsk/refresh`` tokens are checked (the server's ``jwt``; None: no tokens)
        self.tokens = tokens
        self.counters = hub.counters
        self.rules = rules
        #: event-id -> handler; read at each event (the application may add handlers later)
        self.handlers = handlers
        self.gate = gate
        self.spans = spans if spans is not None else tracing.Spans(False)
        #: The least kind of frame whose handling may run application code: channel
        #: operations too when an ``authorize`` hook is set.
        self.app_code_from = (p.FrameKind.CHANNEL if gate.runs_app_code
                              else p.FrameKind.APP)
        self._next_ping = 0.0
        # history reads (a face sets their ``offload`` for Redis), server-side subscriptions,
        # presence and join/leave of the namespaces that have them (the hub tells it moves)
        self.history_reads = HistoryReads(hub.broker, gate, self.counters, rules)
        self.server_subs = ServerSubs(hub, self.counters, rules.max_channel_id_chars)
        self.presence = ChannelPresence(hub, gate.namespaces)
        # One bound method per event type a server session gives, built once.
        self._actions: Dict[type, Action] = {
            ss.AppEvent: self._app_event,
            ss.PublishRequest: self._publish,
            ss.ReplyArrived: self._reply_arrived,
            ss.SubscribeRequest: self._subscribe,
            ss.UnsubscribeRequest: self._unsubscribe,
            ss.CloseConnection: self._close,
            ss.RefreshRequest: Refresher(tokens, self.counters),
            ss.HistoryRequest: self.history_reads,
            ss.PresenceRequest: self.presence.act,
        }
        self.sub_tokens = SubTokens(tokens, self.counters, hub.unsubscribe)
        self._actions[ss.SubRefreshRequest] = self.sub_tokens.refresh

    # -- connections -------------------------------------------------------------------
    def new_session(self, conn_id: str, now: float, packer: Packer) -> ss.ServerSession:
        """The protocol state of a new connection, under this server's rules."""
        return ss.ServerSession(conn_id, self.rules, now, self.counters, packer)

    def open(self, conn: ConnectionPort, csrf_token: Optional[str], info: Dict[str, Any],
             first: bool, grant: Optional[Grant] = None, channels: Sequence[str] = (),
             conn_info: Optional[Dict[str, Any]] = None) -> None:
        """Register ``conn`` with the hub, then greet it (registered first: a client
        that holds its handshake is known). ``grant``: its token's, whose ``exp`` bounds
        it (the handshake tells it as ``token-exp``). ``channels``: given at connect;
        ``conn_info``: the ``authenticate`` hook's ``Authenticated.info``."""
        if conn_info is not None:
            conn.session.token_info = conn_info
        if grant is not None:
            session = conn.session
            session.grant(session.last_seen + grant.deadline_in_s, grant.exp, grant.info)
            info = dict(info, **{p.K_TOKEN_EXP: grant.exp})
        self.hub.add(conn)
        conn.send_frame(conn.session.handshake(conn.uid, csrf_token, info, first))
        self.server_subs.opened(conn, channels)

    def closed(self, conn: ConnectionPort) -> None:
        """``conn`` ended: forget it and its subscriptions; the server's requests to
        it fail with :class:`~sente_lite.errors.Disconnected`."""
        self.hub.remove(conn)
        self.server_subs.closed(conn)
        for waiter, exc in conn.session.fail_requests():
            conn.settle(waiter, None, exc)

    # -- frames ------------------------------------------------------------------------
    def receive(self, conn: ConnectionPort, msg: Any) -> ss.Received:
        """Decode one message of ``conn`` (admitted already: ``session.admit``) and act
        on it; returns what its session made of it. Never raises: a bug costs one
        ``handler-error`` answer, not the connection."""
        received = self.decode(conn, msg)
        self.apply(conn, received)
        return received

    def decode(self, conn: ConnectionPort, msg: Any) -> ss.Received:
        """What ``conn``'s session makes of one message (admitted already), acting on
        nothing yet. Never raises (an internal error is answered, and nothing is left)."""
        try:
            return conn.session.receive(msg)
        except Exception:
            self._internal_error(conn, msg, None)
            return _NOTHING

    def apply(self, conn: ConnectionPort, received: ss.Received) -> None:
        """Send the frames ``received`` holds, then act on its events in order (while
        the first one's ``traceparent`` is current). Never raises (see :meth:`receive`)."""
        try:
            for frame in received.frames:
                conn.send_frame(frame)
            events = received.events
            if not events:
                return
            actions = self._actions
            traced = events[0].traceparent
            if traced is None:
                for ev in events:
                    actions[type(ev)](conn, ev)
                return
            with tracing.active(traced):
                for ev in events:
                    actions[type(ev)](conn, ev)
        except Exception:
            self._internal_error(conn, None, received)

    def _internal_error(self, conn: ConnectionPort, msg: Any,
                        received: Optional[ss.Received]) -> None:
        """Answer the frame whose handling failed with ``handler-error`` (counted, logged)."""
        self.counters.add(Counter.INTERNAL_ERRORS)
        log.exception("internal error handling a frame (conn %s)", conn.conn_id)
        cb_id: Optional[str] = None
        event: Optional[str] = None
        try:
            if received is not None:
                first = next((ev for ev in received.events if ev.cb_id is not None), None)
                if first is not None:
                    cb_id, event = first.cb_id, first.event
            else:
                event, _, cb_id = conn.session.packer.decode(msg)
        except p.FrameError as exc:
            cb_id = exc.cb_id
        try:
            conn.send_frame(conn.session.error(
                p.ERR_HANDLER_ERROR, f"internal error handling {event or 'a frame'}", cb_id, event))
        except Exception:
            log.exception("could not answer the internal error (conn %s)", conn.conn_id)

    # -- actions, one per event type ---------------------------------------------------
    def act(self, conn: ConnectionPort, ev: Any) -> None:
        """Act on one event of ``conn``'s session (its frames already sent), for a face
        that handles a frame's events one by one (:meth:`apply` does all of them).
        Never raises."""
        try:
            if ev.traceparent is None:
                self._actions[type(ev)](conn, ev)
                return
            with tracing.active(ev.traceparent):
                self._actions[type(ev)](conn, ev)
        except Exception:
            self._internal_error(conn, None, ss.Received([ev], []))

    def handler_span(self, conn: ConnectionPort, ev: ss.AppEvent) -> ContextManager[Any]:
        """The span an application handler of ``ev`` runs in (nothing when it carries no
        ``traceparent``)."""
        if ev.traceparent is None:
            return contextlib.nullcontext()
        return self.spans.span("request" if ev.cb_id is not None else "event", ev.traceparent,
                               {"sente_lite.event": ev.event, "sente_lite.conn_id": conn.conn_id})

    def _app_event(self, conn: ConnectionPort, ev: ss.AppEvent) -> None:
        handler = self.handlers.get(ev.event)
        if handler is None:
            for frame in conn.session.no_handler(ev.event, ev.cb_id):
                conn.send_frame(frame)
            return
        try:
            with self.handler_span(conn, ev):
                result = handler(conn, ev.data)
        except Exception as exc:
            self.handled(conn, ev, None, exc)
            return
        self.handled(conn, ev, result, None)

    def handled(self, conn: ConnectionPort, ev: ss.AppEvent, result: Any,
                exc: Optional[BaseException]) -> None:
        """Answer ``ev`` whose handler returned ``result`` or raised ``exc`` (logged; a
        ``handler-error`` answer). A face that runs handlers itself (awaits a coroutine,
        or runs one on another thread) calls this with the outcome."""
        session = conn.session
        if exc is not None:
            log.error("handler for %s raised (conn %s)%s", ev.event, conn.conn_id,
                      tracing.log_suffix(), exc_info=(type(exc), exc, exc.__traceback__))
            for frame in session.handler_failed(ev.event, ev.cb_id, exc):
                conn.send_frame(frame)
            return
        if ev.cb_id is None:
            return
        if ev.traceparent is None:
            conn.send_frame(session.reply(ev.event, ev.cb_id, result))
        else:
            with self.spans.span("reply", ev.traceparent, {"sente_lite.event": ev.event}):
                conn.send_frame(session.reply(ev.event, ev.cb_id, result, ev.traceparent))

    def _reply_arrived(self, conn: ConnectionPort, ev: ss.ReplyArrived) -> None:
        conn.settle(ev.waiter, ev.result, ev.error)

    def _close(self, conn: ConnectionPort, ev: ss.CloseConnection) -> None:
        report(log, "closed", ev.why, conn_id=conn.conn_id, uid=conn.uid,
               remote=conn.remote_address, code=ev.code, message=ev.message)
        conn.close(ev.code, ev.reason)  # what was queued before it goes first

    def _subscribe(self, conn: ConnectionPort, ev: ss.SubscribeRequest) -> None:
        # a channel the server holds for it is the client's from now on (the server chose it)
        if (not self.server_subs.take_over(conn, ev.channel_id)
                and self._refused(conn, "subscribe", ev.channel_id, ev.event, ev.cb_id, ev.token)):
            return
        session = conn.session
        answered: List[bool] = []

        def announce(offset: int, epoch: str, recovery: Optional[RecoveryResult]) -> None:
            # a second call is a notice (no cb-id): a paged replay lost its place
            cb_id = None if answered else ev.cb_id
            answered.append(True)
            if recovery is not None and recovery.replayed:
                session.charge_replay(recovery.replayed)
            conn.send_frame(session.subscribed(ev.channel_id, offset, epoch, recovery, cb_id))

        def refuse(exc: BaseException) -> None:  # the broker refused this channel
            code = exc.code if isinstance(exc, _BROKER_ANSWERS) else p.ERR_HANDLER_ERROR
            conn.send_frame(session.error(code, str(exc), ev.cb_id, p.EV_SUBSCRIBE))

        announce.refuse = refuse  # type: ignore[attr-defined]
        budget = session.replay_budget() if ev.since is not None else None
        self.hub.subscribe(conn, ev.channel_id, announce, ev.since, budget)

    def _publish(self, conn: ConnectionPort, ev: ss.PublishRequest) -> None:
        if self._refused(conn, "publish", ev.channel_id, p.EV_PUBLISH, ev.cb_id):
            return
        exclude = conn.conn_id if ev.exclude_sender else None
        answer = self._publish_answer(conn, ev)
        # Never waits for a busy channel: its holder publishes this too, and answers.
        if ev.traceparent is None:
            self.hub.publish(ev.channel_id, ev.data_json, conn.uid, exclude, answer,
                             ev.publish_id, None)
            return
        with self.spans.span("publish", ev.traceparent, {"sente_lite.channel": ev.channel_id},
                             kind="CONSUMER"):
            self.hub.publish(ev.channel_id, ev.data_json, conn.uid, exclude, answer,
                             ev.publish_id, ev.traceparent)

    def _publish_answer(self, conn: ConnectionPort,
                        ev: ss.PublishRequest) -> Callable[[Any], None]:
        """What answers ``ev`` once the hub has published it (on the thread that ran the
        publish, in channel order): the offset and epoch, or the broker's refusal."""
        cb_id, traceparent = ev.cb_id, ev.traceparent

        def answer(result: Any) -> None:
            if type(result) is Published:
                if traceparent is not None:
                    self.spans.event("fan-out", traceparent, {
                        "sente_lite.channel": ev.channel_id, "sente_lite.offset": result.offset,
                        "sente_lite.delivered": result.delivered})
                if cb_id is not None:
                    conn.send_frame(conn.session.published(result, cb_id, traceparent))
            elif isinstance(result, _BROKER_ANSWERS):  # its code says whether it was published
                conn.send_frame(conn.session.error(result.code, str(result), cb_id, p.EV_PUBLISH))
            elif isinstance(result, BaseException):
                self.counters.add(Counter.INTERNAL_ERRORS)
                log.error("internal error publishing on %r (conn %s)", ev.channel_id,
                          conn.conn_id, exc_info=result)
                conn.send_frame(conn.session.error(
                    p.ERR_HANDLER_ERROR, f"internal error handling {p.EV_PUBLISH}", cb_id,
                    p.EV_PUBLISH))

        return answer

    # -- time --------------------------------------------------------------------------
    def tick(self, now: float, stalled_s: float = 0.0) -> None:
        """The heartbeat, every so often: ping every connection each ``heartbeat_ms``,
        close those silent past ``heartbeat_timeout_ms`` with 4000 and those whose token
        expired (``exp`` + leeway, no valid refresh) with 4002 (channels whose token did:
        unsubscribed), fail requests past their deadline, let the broker expire idle channels.
        ``stalled_s``: a stretch in which the caller itself could not read (held
        against no peer: their frames may be waiting unread)."""
        send_pings = now >= self._next_ping
        if send_pings:
            self._next_ping = now + self.rules.heartbeat_ms / 1000.0
        late: List[Tuple[ConnectionPort, Any, BaseException]] = []
        for conn in self.hub.snapshot():
            session = conn.session
            if session.outstanding:
                late.extend((conn, w, e) for w, e in session.expire(now))
            if conn.closing:
                continue
            if conn.input_paused:  # not read meanwhile: its silence is the face's doing
                session.last_seen = now
            if session.heartbeat(now, stalled_s) == ss.HEARTBEAT_TIMEOUT:
                report(log, "closed", "heartbeat-timeout", conn_id=conn.conn_id, uid=conn.uid,
                       remote=conn.remote_address, code=p.CLOSE_HEARTBEAT_TIMEOUT,
                       message=f"silent for {now - session.last_seen:.1f}s", level=logging.INFO)
                self.hub.broker.remove_member(conn.conn_id)  # nothing more queues for it
                conn.close(p.CLOSE_HEARTBEAT_TIMEOUT, "heartbeat timeout")
            elif session.token_expired(now):
                close_expired(conn, self.hub.broker)
            elif send_pings:
                conn.ping()
            self.sub_tokens.sweep(conn, now)
        for conn, waiter, exc in late:
            conn.settle(waiter, None, exc)
        self.hub.broker.sweep_idle()


__all__ = ["ServerDispatcher"]
