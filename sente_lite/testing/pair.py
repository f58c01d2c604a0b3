"""Client sessions and the server's dispatcher joined in memory, for protocol tests.

:class:`SessionPair` moves frames between a :class:`~sente_lite.session.ClientSession`
and the server's :class:`~sente_lite.core.dispatcher.ServerDispatcher` (the same object
the threaded server drives) the way a socket would, with a clock the test sets, a real
:class:`~sente_lite.brokers.local.ChannelRegistry` behind a real
:class:`~sente_lite.core.hub.Hub`, and application handlers as plain functions of the
event's data. No socket, no thread. A connection can be cut (frames in flight are lost)
and opened again; :meth:`SessionPair.another` joins a second client to the same server.
"""

from __future__ import annotations

import collections.abc
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

from .. import session as ss
from ..brokers.local import ChannelRegistry, LocalBroker
from ..core.dispatcher import ServerDispatcher
from ..core.gate import ChannelGate
from ..core.hub import Hub
from ..core.namespaces import NamespaceSpec, make_namespaces
from ..core.ports import Handler
from ..counters import Counters
from ..wire import packers
from ..wire import protocol as p
from ..wire.packers import Packer

#: A pair's handler takes the event's data (the dispatcher passes the connection too).
PairHandler = Callable[[Any], Any]


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


def _payload(payload: bytes, binary: bool, compressed: bool = False) -> bytes:
    """The hub's "whole WebSocket frame" in memory: the payload itself."""
    return payload


class _Handlers(collections.abc.Mapping):
    """The pair's handlers as the dispatcher calls a server's, ``handler(conn, data)``:
    those registered with :meth:`SessionPair.on`, and those of ``handlers`` (data only)."""

    def __init__(self, full: Dict[str, Handler], data_only: Dict[str, PairHandler]) -> None:
        self._full = full
        self._data_only = data_only

    def __getitem__(self, event: str) -> Handler:
        fn = self._full.get(event)
        if fn is not None:
            return fn
        data_only = self._data_only[event]
        return lambda conn, data: data_only(data)

    def __iter__(self) -> Iterator[str]:
        return iter({**self._data_only, **self._full})

    def __len__(self) -> int:
        return len({**self._data_only, **self._full})


class MemoryServer:
    """The server side every pair joined to it shares: one hub, one dispatcher, one
    clock (``now``), handlers and channel policy."""

    def __init__(self, rules: ss.ServerRules, registry: Optional[ChannelRegistry], now: float,
                 max_subscriptions_per_conn: int = 1000,
                 authorize: Optional[Callable[[Any, str, str], bool]] = None,
                 namespaces: Optional[Mapping[str, NamespaceSpec]] = None) -> None:
        self.now = now
        self.rules = rules
        self.counters = Counters()
        self.handlers: Dict[str, PairHandler] = {}
        self.conn_handlers: Dict[str, Handler] = {}
        self.max_subscriptions_per_conn = max_subscriptions_per_conn
        self.authorize = authorize
        self.namespaces = make_namespaces(namespaces)
        self.conn_seq = 0
        self.registry = registry or ChannelRegistry("e", counters=self.counters,
                                                    clock=lambda: self.now)
        self.hub, self.dispatcher = self._build()

    def _build(self) -> Tuple[Hub, ServerDispatcher]:
        broker = LocalBroker.over(self.registry)
        if self.namespaces is not None and self.namespaces.own_history:
            broker.limit_history(self.namespaces.history_limits)
        hub = Hub(broker, self.counters, 1000, _payload)
        broker.start(hub)
        gate = ChannelGate(broker, self.counters, self.max_subscriptions_per_conn,
                           self.authorize, self.namespaces)
        return hub, ServerDispatcher(hub, self.rules, _Handlers(self.conn_handlers, self.handlers), gate)

    def use_broker(self, registry: ChannelRegistry) -> None:
        """Put ``registry`` behind a new hub and dispatcher (a restarted server); live
        connections stay registered."""
        live = self.hub.snapshot()
        self.registry = registry
        self.hub, self.dispatcher = self._build()
        for conn in live:
            self.hub.add(conn)


class PairConnection:
    """The server's end of one in-memory connection: the dispatcher's
    :class:`~sente_lite.core.ports.ConnectionPort`. What it sends goes to its pair's
    ``to_client``; ``close_code`` records a close."""

    def __init__(self, pair: "SessionPair", conn_id: str, uid: str,
                 session: ss.ServerSession, authenticated: bool = False) -> None:
        self.conn_id = conn_id
        self.uid = uid
        self.authenticated = authenticated
        self.client_id = pair.client.client_id
        self.remote_address = "memory"
        self.session = session
        self.packer: Packer = session.packer
        self.deflate_bits = 0
        self.input_paused = False
        self.close_code: Optional[int] = None
        self.close_reason = ""
        self.cut = False
        self._pair = pair

    @property
    def closing(self) -> bool:
        return self.close_code is not None

    def send_frame(self, frame: bytes) -> bool:
        if self.cut or self.close_code is not None:
            return False
        self._pair.to_client.append(frame)
        return True

    def deliver(self, wire: bytes, size: int) -> bool:
        return self.send_frame(wire)

    def ping(self) -> None:
        self.send_frame(self.packer.encode(p.EV_PING))

    def close(self, code: int, reason: str = "") -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason

    def settle(self, waiter: Any, result: Any, error: Optional[BaseException]) -> None:
        ss.resolve(waiter, result, error)


class SessionPair:
    """A client session and the server's dispatcher joined by an in-memory connection."""

    def __init__(self, rules: Optional[ss.ServerRules] = None, client_id: str = "c1",
                 registry: Optional[ChannelRegistry] = None, now: float = 0.0,
                 packer: str = "json", server: Optional[MemoryServer] = None,
                 **policy: Any) -> None:
        """``policy``: ``max_subscriptions_per_conn``, ``authorize`` and ``namespaces``, as a
        Server takes them."""
        self.side = server or MemoryServer(rules or ss.ServerRules(rate_limit=None), registry,
                                           now, **policy)
        self.packer = packers.get(packer)
        self.client = ss.ClientSession(client_id, packer=self.packer)
        self.to_server: List[bytes] = []
        self.to_client: List[bytes] = []
        self.client_events: List[Any] = []  # what the client session gave the application
        self.server_events: List[Any] = []  # what the server session gave the dispatcher
        self.conn: Optional[PairConnection] = None

    def another(self, client_id: str = "c2", packer: Optional[str] = None) -> "SessionPair":
        """A second client joined to this pair's server (same hub, dispatcher and clock)."""
        return SessionPair(client_id=client_id, packer=packer or self.packer.name, server=self.side)

    # -- the shared server side -------------------------------------------------------------
    @property
    def now(self) -> float:
        return self.side.now

    @now.setter
    def now(self, value: float) -> None:
        self.side.now = value

    @property
    def registry(self) -> ChannelRegistry:
        return self.side.registry

    @registry.setter
    def registry(self, registry: ChannelRegistry) -> None:
        self.side.use_broker(registry)

    @property
    def rules(self) -> ss.ServerRules:
        return self.side.rules

    @property
    def counters(self) -> Counters:
        return self.side.counters

    @property
    def handlers(self) -> Dict[str, PairHandler]:
        return self.side.handlers

    def on(self, event: str, handler: Handler) -> None:
        """Handle ``event`` with ``handler(conn, data)``, as ``Server.on`` registers it."""
        self.side.conn_handlers[event] = handler

    @property
    def dispatcher(self) -> ServerDispatcher:
        return self.side.dispatcher

    @property
    def server(self) -> Optional[ss.ServerSession]:
        """The server session of the open connection."""
        return self.conn.session if self.conn is not None else None

    @property
    def closed(self) -> Optional[Tuple[int, str]]:
        """(code, reason) of the close the server asked for on this connection, if any."""
        conn = self.conn
        return None if conn is None or conn.close_code is None else (conn.close_code,
                                                                     conn.close_reason)

    # -- connection ---------------------------------------------------------------------
    def connect(self, uid: str = "u1", authenticated: bool = False) -> None:
        """Open a connection: the server greets, the client renews its state
        (``authenticated``: as if an ``authenticate`` hook had named ``uid``)."""
        side = self.side
        side.conn_seq += 1
        conn_id = f"conn-{side.conn_seq}"
        first = side.hub.first_visit(self.client.client_id)
        session = side.dispatcher.new_session(conn_id, self.now, self.packer)
        self.conn = PairConnection(self, conn_id, uid, session, authenticated)
        self.client.connection_opened(self.now)
        side.dispatcher.open(self.conn, None, {"conn-id": conn_id, p.K_BYTES: True}, first)
        self.pump()

    def cut(self) -> List[Any]:
        """Drop the connection: frames in flight are lost. Returns the client's failed waiters."""
        conn = self.conn
        assert conn is not None
        conn.cut = True
        self.dispatcher.closed(conn)
        self.to_server.clear()
        self.to_client.clear()
        self.conn = None
        failed = self.client.connection_lost()
        self.client.transition(ss.ON_LOST)
        return failed

    def tick(self, stalled_s: float = 0.0) -> None:
        """The server's heartbeat at ``now`` (pings, silence, request deadlines)."""
        self.dispatcher.tick(self.now, stalled_s)

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

    def publish(self, channel_id: str, data: Any, exclude_sender: bool = False) -> _Waiter:
        waiter = _Waiter()
        cb_id, frame = self.client.publish(channel_id, data, exclude_sender, waiter, self.now)
        if self.conn is not None:
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

    def server_reads(self) -> None:
        """The server reads every frame in flight to it; the client reads nothing yet."""
        while self.to_server:
            self._server_receives(self.to_server.pop(0))

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
        """What the threaded server does with one message, in one go: admit, receive, act."""
        conn = self.conn
        assert conn is not None
        if conn.close_code is not None:
            return  # the server closed: nothing more is read
        text: Any = frame if conn.packer.binary else frame.decode("utf-8")
        session = conn.session
        received = session.admit(text, self.now) or session.receive(text)
        self.server_events.extend(received.events)
        self.dispatcher.apply(conn, received)

    def server_publish(self, channel_id: str, data: Any) -> None:
        """The server publishes on ``channel_id`` (``from`` null), as ``Server.publish`` does."""
        self.side.hub.publish(channel_id, p.encode_channel_data(data), None, None)

    def messages(self) -> List[ss.ChannelMessage]:
        """Channel messages the client session passed on, in order."""
        return [e for e in self.client_events if type(e) is ss.ChannelMessage]

    def recoveries(self) -> List[ss.Recovery]:
        return [e.recovery for e in self.client_events
                if type(e) is ss.Subscribed and e.recovery is not None]


__all__ = ["SessionPair", "MemoryServer", "PairConnection"]
