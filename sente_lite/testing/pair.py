"""A client session and a server session joined in memory, for protocol tests.

:class:`SessionPair` moves frames between a :class:`~sente_lite.session.ClientSession`
and a :class:`~sente_lite.session.ServerSession` the way a socket would, with a
clock the test sets, a real :class:`~sente_lite.brokers.local.ChannelRegistry` behind
the server, and application handlers as plain functions. No socket, no thread.
A connection can be cut (frames in flight are lost) and opened again.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

from ..wire import packers
from ..wire import protocol as p
from .. import session as ss
from ..brokers.local import ChannelRegistry
from ..counters import Counters


class _Waiter:
    """What the adapters would wait on: records the outcome."""

    def __init__(self) -> None:
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.settled = False

    def done(self) -> bool:
        return self.settled

    def set_result(self, value: Any) -> None:
        self.result, self.settled = value, True

    def set_exception(self, exc: BaseException) -> None:
        self.error, self.settled = exc, True


class SessionPair:
    """A client and a server session joined by an in-memory connection."""

    def __init__(self, rules: Optional[ss.ServerRules] = None, client_id: str = "c1",
                 registry: Optional[ChannelRegistry] = None, now: float = 0.0,
                 packer: str = "json") -> None:
        self.now = now
        self.rules = rules or ss.ServerRules(rate_limit=None)
        self.counters = Counters()
        self.registry = registry or ChannelRegistry("e", counters=self.counters, clock=lambda: self.now)
        self.packer = packers.get(packer)
        self.client = ss.ClientSession(client_id, packer=self.packer)
        self.handlers: Dict[str, Callable[[Any], Any]] = {}
        self.to_server: List[bytes] = []
        self.to_client: List[bytes] = []
        self.client_events: List[Any] = []  # what the client session gave the application
        self.server_events: List[Any] = []
        self.closed: Optional[ss.CloseConnection] = None
        self.server: Optional[ss.ServerSession] = None
        self._conns = 0

    # -- connection ---------------------------------------------------------------------
    def connect(self, uid: str = "u1") -> None:
        """Open a connection: the server greets, the client renews its state."""
        self._conns += 1
        conn_id = f"conn-{self._conns}"
        self.server = ss.ServerSession(conn_id, self.rules, self.now, self.counters, self.packer)
        self.closed = None
        self.client.connection_opened(self.now)
        self.to_client.append(self.server.handshake(uid, None, {"conn-id": conn_id}, self._conns == 1))
        self.pump()

    def cut(self) -> List[Any]:
        """Drop the connection: frames in flight are lost. Returns the failed waiters."""
        assert self.server is not None
        self.registry.remove_member(self.server.conn_id)
        self.to_server.clear()
        self.to_client.clear()
        self.server.fail_requests()
        self.server = None
        failed = self.client.connection_lost()
        self.client.transition(ss.ON_LOST)
        return failed

    # -- the client's side ----------------------------------------------------------------
    def send(self, frame: bytes, cb_id: Optional[str] = None) -> None:
        """The client writes ``frame`` (a request ``cb_id`` is then marked sent)."""
        self.to_server.append(frame)
        if cb_id is not None:
            self.client.mark_sent(cb_id)

    def request(self, event: str, data: Any = None, timeout: float = 5.0) -> _Waiter:
        waiter = _Waiter()
        cb_id, frame = self.client.request(event, data, waiter, self.now, timeout)
        self.send(frame, cb_id)
        return waiter

    def subscribe(self, channel_id: str, since: Optional[ss.Since] = None) -> _Waiter:
        self.client.add_subscription(channel_id, since)
        waiter = _Waiter()
        cb_id, frame = self.client.subscribe_frame(channel_id, waiter, self.now, 5.0)
        self.send(frame, cb_id)
        return waiter

    def publish(self, channel_id: str, data: Any) -> _Waiter:
        waiter = _Waiter()
        cb_id, frame = self.client.publish(channel_id, data, False, waiter, self.now)
        if self.server is not None:
            self.send(frame, cb_id)
        return waiter

    # -- moving frames ----------------------------------------------------------------------
    def pump(self, limit: int = 10_000) -> None:
        """Deliver frames both ways until none is in flight."""
        for _ in range(limit):
            if self.to_server:
                self._server_receives(self.to_server.pop(0))
            elif self.to_client:
                self._client_receives(self.to_client.pop(0))
            else:
                return
        raise AssertionError("frames kept flowing")

    def _client_receives(self, frame: bytes) -> None:
        received = self.client.receive(frame, self.now, self.client.packer.binary)
        self.to_server.extend(received.frames)
        for ev in received.events:
            self.client_events.append(ev)
            if type(ev) is ss.ReplyArrived or type(ev) is ss.PublishAnswered:
                if ev.waiter is not None:
                    error = ev.error
                    (ev.waiter.set_exception(error) if error is not None
                     else ev.waiter.set_result(ev.result if type(ev) is ss.ReplyArrived else ev.reply))
            elif type(ev) is ss.Handshake:
                self._renew()

    def _renew(self) -> None:
        """After a handshake: resubscribe (with since) and resend unacknowledged publishes."""
        for channel_id in self.client.subscriptions():
            cb_id, frame = self.client.subscribe_frame(channel_id, None, self.now, 5.0)
            self.send(frame, cb_id)
        for cb_id, frame in self.client.resend_unacked():
            self.send(frame, cb_id)

    def _server_receives(self, frame: bytes) -> None:
        server = self.server
        assert server is not None
        text: Any = frame if server.packer.binary else frame.decode("utf-8")
        received = server.admit(text, self.now) or server.receive(text)
        self.to_client.extend(received.frames)
        for ev in received.events:
            self.server_events.append(ev)
            self._serve(server, ev)

    def _serve(self, server: ss.ServerSession, ev: Any) -> None:
        kind = type(ev)
        if kind is ss.AppEvent:
            fn = self.handlers.get(ev.event)
            if fn is None:
                self.to_client.extend(server.no_handler(ev.event, ev.cb_id))
                return
            try:
                result = fn(ev.data)
            except Exception as exc:
                self.to_client.extend(server.handler_failed(ev.event, ev.cb_id, exc))
                return
            if ev.cb_id is not None:
                self.to_client.append(server.reply(ev.event, ev.cb_id, result))
        elif kind is ss.SubscribeRequest:
            self.registry.subscribe(
                server.conn_id, ev.channel_id,
                lambda offset, epoch, rec: self.to_client.append(
                    server.subscribed(ev.channel_id, offset, epoch, rec, ev.cb_id)),
                ev.since, lambda member, frame: self.to_client.append(frame) or True)
        elif kind is ss.UnsubscribeRequest:
            self.registry.unsubscribe(server.conn_id, ev.channel_id)
            self.to_client.append(server.unsubscribed(ev.channel_id, ev.cb_id))
        elif kind is ss.PublishRequest:
            head = ev.data_json

            def make_frame(offset: int, epoch: str) -> bytes:
                body = {p.K_CHANNEL: ev.channel_id, p.K_DATA: p.loads(head), p.K_FROM: None,
                        p.K_OFFSET: offset, p.K_EPOCH: epoch}
                if ev.traceparent is not None:
                    body["traceparent"] = ev.traceparent
                return self.packer.encode(p.EV_CHANNEL_MSG, body)

            result = self.registry.publish(
                ev.channel_id, make_frame, lambda member, frame: self.to_client.append(frame) or True,
                publish_id=ev.publish_id)
            if ev.cb_id is not None and result is not None:
                self.to_client.append(server.published(result, ev.cb_id, ev.traceparent))
        elif kind is ss.CloseConnection:
            self.closed = ev

    def server_publish(self, channel_id: str, data: Any) -> None:
        """The server publishes on ``channel_id`` (delivered to this pair's client if subscribed)."""
        self._serve(self.server or ss.ServerSession("none", self.rules, self.now),
                    ss.PublishRequest(channel_id, p.encode_channel_data(data), None, False, None))

    def messages(self) -> List[ss.ChannelMessage]:
        """Channel messages the client session passed on, in order."""
        return [e for e in self.client_events if type(e) is ss.ChannelMessage]

    def recoveries(self) -> List[ss.Recovery]:
        return [e.recovery for e in self.client_events
                if type(e) is ss.Subscribed and e.recovery is not None]


__all__ = ["SessionPair"]
